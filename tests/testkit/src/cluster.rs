//! Real-process cluster harness: PKI from the qk-node binary, one process per
//! node on 127.0.0.1, requests over mutual-TLS QUIC with an admin certificate.
//! Used by the node's end-to-end tests and by the benchmark binaries.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qk_net::{CaCert, Credentials, Dialer, NetConfig};
use qk_raft::{PeerRequest, PeerResponse};
use qk_state::{Command as SmCommand, CreateKey, Operation, RequestId};
use qk_types::NodeId;
use qk_wire::{ClientRequest, ClientResponse, NodeStatus};

/// Runs `qk-node` with `args` and asserts success.
pub fn qk(bin: &Path, args: &[&str]) {
    let out = Command::new(bin).args(args).output().expect("run qk-node");
    assert!(
        out.status.success(),
        "qk-node {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A free UDP port (QUIC), chosen by binding port 0 and releasing it.
pub fn free_port() -> u16 {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = sock.local_addr().expect("addr").port();
    // Also make sure the TCP side is free for later API listeners.
    drop(TcpListener::bind(("127.0.0.1", port)));
    port
}

#[derive(Debug)]
pub struct Cluster {
    pub bin: PathBuf,
    pub dir: tempfile::TempDir,
    pub ports: Vec<u16>,
    pub procs: Vec<Option<Child>>,
    pub pool: Dialer,
    pub snapshot_after: u64,
    /// `QK_LOG` for spawned nodes.
    pub log_filter: String,
    /// The highest log index a write through this harness was applied at;
    /// every request sends it, so no node answers from older state.
    pub seen_index: std::sync::atomic::AtomicU64,
}

impl Cluster {
    pub fn pki(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    pub fn config_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}.toml"))
    }

    pub fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}.log"))
    }

    pub fn addr(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.ports[(id - 1) as usize])
    }

    fn write_config(&self, id: u64) {
        let text = format!(
            "node_id = {id}\ndata_dir = \"data/node-{id}\"\nlisten = \"{}\"\n\n[tls]\nca_cert = \"pki/ca.pem\"\ncert = \"pki/node-{id}.pem\"\nkey = \"pki/node-{id}.key\"\n\n[raft]\nheartbeat_interval_ms = 100\nelection_timeout_min_ms = 500\nelection_timeout_max_ms = 1000\nsnapshot_after_entries = {}\nkeep_entries_after_snapshot = 20\nrpc_timeout_ms = 1000\n",
            self.addr(id),
            self.snapshot_after
        );
        std::fs::write(self.config_path(id), text).expect("config");
    }

    /// PKI and configs for `n` nodes; nothing started.
    pub fn prepare(bin: &Path, n: u64, snapshot_after: u64) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = dir.path().join("pki");
        let pki_s = pki.to_str().unwrap().to_string();
        qk(bin, &["pki", "init", "--dir", &pki_s]);
        qk(
            bin,
            &["pki", "issue-client", "--dir", &pki_s, "--name", "admin"],
        );
        for id in 1..=n {
            qk(
                bin,
                &[
                    "pki",
                    "issue-node",
                    "--dir",
                    &pki_s,
                    "--id",
                    &id.to_string(),
                ],
            );
        }
        let pool = dialer(
            &pki.join("ca.pem"),
            &pki.join("client-admin.pem"),
            &pki.join("client-admin.key"),
        );
        let ports = (0..n).map(|_| free_port()).collect();
        let c = Cluster {
            bin: bin.to_path_buf(),
            dir,
            ports,
            procs: (0..n).map(|_| None).collect(),
            pool,
            snapshot_after,
            log_filter: "info,openraft=info".into(),
            seen_index: Default::default(),
        };
        for id in 1..=n {
            c.write_config(id);
        }
        c
    }

    pub fn spawn(&mut self, id: u64, extra: &[String]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .expect("log");
        let child = Command::new(&self.bin)
            .arg("start")
            .arg("--config")
            .arg(self.config_path(id))
            .args(extra)
            .env("QK_LOG", &self.log_filter)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn qk-node");
        self.procs[(id - 1) as usize] = Some(child);
    }

    /// Starts `n` nodes: node 1 bootstraps, the others join through it.
    pub fn start(bin: &Path, n: u64, snapshot_after: u64) -> Cluster {
        let mut c = Cluster::prepare(bin, n, snapshot_after);
        c.boot();
        c
    }

    /// Starts every prepared node: node 1 bootstraps, the others join.
    pub fn boot(&mut self) {
        let n = self.ports.len() as u64;
        let c = self;
        c.spawn(1, &["--bootstrap".into()]);
        c.wait_status(1, |s| s.leader == Some(1));
        for id in 2..=n {
            c.spawn(id, &["--join".into(), c.addr(1)]);
            c.wait_status(1, |s| s.voters.contains(&id));
        }
        // Keys are generated only over nodes whose DKG key is published.
        c.wait_status(1, |s| s.dkg_keys.len() == n as usize);
    }

    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.procs[(id - 1) as usize].take() {
            child.kill().ok();
            child.wait().ok();
        }
    }

    /// SIGTERM and wait (graceful shutdown).
    pub fn stop(&mut self, id: u64) {
        if let Some(mut child) = self.procs[(id - 1) as usize].take() {
            Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status()
                .ok();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            child.kill().ok();
            child.wait().ok();
        }
    }

    pub fn restart(&mut self, id: u64) {
        self.spawn(id, &[]);
    }

    /// Sends a request that node `id` decides only once it applied every
    /// write this harness has seen acknowledged.
    pub async fn request(&self, id: u64, req: ClientRequest) -> Result<ClientResponse, String> {
        let seen = self.seen_index.load(std::sync::atomic::Ordering::Acquire);
        let request = PeerRequest::client_proven(seen, req, || self.pool.session().ok());
        let resp = self.send(id, request).await?;
        if let Some(index) = resp.log_index() {
            self.seen_index
                .fetch_max(index, std::sync::atomic::Ordering::AcqRel);
        }
        Ok(resp)
    }

    /// Sends as a client that has seen nothing (no read-your-writes wait):
    /// what a second, unrelated client would get.
    pub async fn request_fresh(
        &self,
        id: u64,
        req: ClientRequest,
    ) -> Result<ClientResponse, String> {
        let request = PeerRequest::client_proven(0, req, || self.pool.session().ok());
        self.send(id, request).await
    }

    async fn send(&self, id: u64, req: PeerRequest) -> Result<ClientResponse, String> {
        match self.pool.node(id, &self.addr(id)).call(&req).await {
            Ok(PeerResponse::Client(r)) => Ok(r),
            Ok(other) => Err(format!("{other:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Node `id`'s own view, as it is now (no read-your-writes wait).
    pub async fn status(&self, id: u64) -> Option<NodeStatus> {
        match self.request_fresh(id, ClientRequest::Status).await {
            Ok(ClientResponse::Status(s)) => Some(s),
            _ => None,
        }
    }

    /// Polls node `id` until `pred` holds (60 s limit: a hang, not a timing test).
    pub fn wait_status(&self, id: u64, pred: impl Fn(&NodeStatus) -> bool) -> NodeStatus {
        let rt = tokio::runtime::Handle::try_current();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = match &rt {
                Ok(h) => tokio::task::block_in_place(|| h.block_on(self.status(id))),
                Err(_) => tokio::runtime::Runtime::new()
                    .unwrap()
                    .block_on(self.status(id)),
            };
            if let Some(s) = status {
                if pred(&s) {
                    return s;
                }
            }
            assert!(
                Instant::now() < deadline,
                "node {id} did not reach the expected state; log:\n{}",
                self.log_tail(id)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_tail(&self, id: u64) -> String {
        let text = std::fs::read_to_string(self.log_path(id)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Writes through any reachable node (followers forward to the leader).
    pub async fn write(
        &self,
        via: u64,
        op: Operation,
        request: u64,
    ) -> Result<(u64, qk_state::Response), String> {
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&request.to_be_bytes());
        let cmd = SmCommand {
            request_id: RequestId(id),
            time_ms: 0,
            principal: String::new(),
            op,
            proof: None,
        };
        match self.request(via, ClientRequest::Write(cmd)).await? {
            ClientResponse::Written {
                log_index,
                response,
                ..
            } => Ok((log_index, response)),
            other => Err(format!("{other:?}")),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for p in self.procs.iter_mut() {
            if let Some(child) = p.as_mut() {
                child.kill().ok();
                child.wait().ok();
            }
        }
    }
}

/// A client endpoint with the given credentials (needs a tokio runtime).
pub fn dialer(ca: &Path, cert: &Path, key: &Path) -> Dialer {
    let ca = CaCert::load(ca).expect("ca");
    let creds = Credentials::load(cert, key).expect("creds");
    let mut cfg = NetConfig::default();
    cfg.request_timeout = Duration::from_secs(15);
    Dialer::new(&ca, &creds, cfg).expect("dialer")
}

pub fn create_key(name: &str) -> Operation {
    Operation::CreateKey(CreateKey {
        name: name.into(),
        description: String::new(),
        owner: "tests".into(),
        purpose: "encrypt".into(),
        rotation_period_ms: None,
        expires_at_ms: None,
        threshold: 2,
        holders: vec![NodeId(1), NodeId(2), NodeId(3)],
    })
}

pub fn tag(name: &str, i: u64) -> Operation {
    Operation::SetTag {
        name: name.into(),
        tag: format!("t{}", i % 50),
        value: Some(i.to_be_bytes().to_vec()),
    }
}

pub fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn path_str(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// Key operations over the client protocol.
impl Cluster {
    pub async fn key(&self, via: u64, name: &str) -> Option<qk_state::KeyRecord> {
        match self
            .request(via, ClientRequest::GetKey { name: name.into() })
            .await
        {
            Ok(ClientResponse::Key(k)) => k,
            _ => None,
        }
    }

    /// Waits until `pred` holds for the key as node `via` sees it.
    pub fn wait_key(
        &self,
        via: u64,
        name: &str,
        pred: impl Fn(&qk_state::KeyRecord) -> bool,
    ) -> qk_state::KeyRecord {
        let h = tokio::runtime::Handle::current();
        wait_until(&format!("key {name} on node {via}"), || {
            tokio::task::block_in_place(|| h.block_on(self.key(via, name))).filter(|k| pred(k))
        })
    }

    pub async fn create(
        &self,
        via: u64,
        name: &str,
        threshold: u16,
        holders: &[u64],
    ) -> Result<(), String> {
        let op = Operation::CreateKey(CreateKey {
            name: name.into(),
            description: "test key".into(),
            owner: "tests".into(),
            purpose: "encrypt".into(),
            rotation_period_ms: None,
            expires_at_ms: None,
            threshold,
            holders: holders.iter().map(|h| NodeId(*h)).collect(),
        });
        let (_, response) = self.write(via, op, rand_request()).await?;
        response.result.map(|_| ()).map_err(|e| e.to_string())
    }

    pub async fn op(&self, via: u64, op: Operation) -> Result<(), String> {
        let (_, response) = self.write(via, op, rand_request()).await?;
        response.result.map(|_| ()).map_err(|e| e.to_string())
    }

    pub async fn encrypt(
        &self,
        via: u64,
        name: &str,
        context: &[(&str, &str)],
        plaintext: &[u8],
    ) -> Result<(String, u32), String> {
        let req = ClientRequest::Encrypt {
            name: name.into(),
            context: ctx(context),
            plaintext: qk_wire::Redacted(plaintext.to_vec()),
        };
        match self.request(via, req).await? {
            ClientResponse::Ciphertext { text, version } => Ok((text, version)),
            other => Err(format!("{other:?}")),
        }
    }

    /// Server-side combining at node `via`.
    pub async fn decrypt(
        &self,
        via: u64,
        ciphertext: &str,
        context: &[(&str, &str)],
    ) -> Result<Vec<u8>, String> {
        let req = ClientRequest::Decrypt {
            approval: None,
            ciphertext: ciphertext.into(),
            context: ctx(context),
        };
        match self.request(via, req).await? {
            ClientResponse::Plaintext(p) => Ok(p.0.clone()),
            ClientResponse::Error(e) => Err(e.message),
            other => Err(format!("{other:?}")),
        }
    }

    /// Client-side combining through `qk-client`, via the first running node.
    pub async fn decrypt_client_side(
        &self,
        _name: &str,
        ciphertext: &str,
        context: &[(&str, &str)],
    ) -> Result<Vec<u8>, String> {
        let via = (1..=self.ports.len() as u64)
            .find(|id| self.procs[(*id - 1) as usize].is_some())
            .ok_or("no node is running")?;
        let client = qk_client::Client::from_dialer(self.pool.clone(), &self.addr(via));
        client.observe_index(self.seen_index.load(std::sync::atomic::Ordering::Acquire));
        client
            .decrypt_client_side(ciphertext, ctx(context))
            .await
            .map(|p| p.to_vec())
            .map_err(|e| e.to_string())
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("data/node-{id}"))
    }
}

pub fn ctx(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn rand_request() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1 << 40);
    let pid = u64::from(std::process::id());
    (pid << 48) ^ NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Every file under `dir`, recursively, with its bytes.
pub fn read_tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                out.push((p, bytes));
            }
        }
    }
    out
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
