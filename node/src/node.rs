//! Wiring: storage, network, Raft, and the RPC handler.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use openraft::error::ForwardToLeader;
use openraft::{ServerState, SnapshotPolicy};
use qk_net::{CaCert, Credentials, Dialer, NetConfig, NetworkFactory, Peer, RpcHandler, Server};
use qk_raft::{
    ClientRequest, ClientResponse, NodeId, NodeStatus, PeerRequest, PeerResponse, QkNode, Raft,
};
use qk_state::proof::Credential;
use qk_state::{Command, Operation, Permission, RequestId};
use qk_types::NodeId as NodeIdT;

use crate::applied::{AppliedIndex, CLIENT_INDEX_WAIT};
use crate::quorum::{now_ms, Quorum, QuorumCore};
use qk_storage::StateReader;
use tracing::{info, warn};

use crate::config::Config;

mod api_backend;
mod requests;

/// Most audit records one request returns.
const MAX_AUDIT_PAGE: u32 = 1000;
/// How long a join waits for the new learner to catch up before promotion.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

pub struct Node {
    id: NodeId,
    raft: Raft,
    proposer: crate::proposer::Proposer,
    state: StateReader,
    peers: Dialer,
    quorum: Arc<Quorum>,
    audit: crate::audit::AuditQueue,
    applied: AppliedIndex,
    digest: DigestCache,
    /// This node's DKG public key (encoded), as it must be in the state.
    dkg_public_key: Vec<u8>,
    /// Woken when a snapshot from the leader replaced the applied state.
    snapshot_installed: Arc<tokio::sync::Notify>,
}

/// How often the state digest may be recomputed. It hashes the whole state,
/// and status, health and metrics (which need no credentials) report it, so
/// a flood of them must not hash the state once each.
const DIGEST_EVERY: Duration = Duration::from_secs(1);

/// The last state digest and the applied index it is of.
#[derive(Default)]
struct DigestCache(std::sync::Mutex<Option<(u64, [u8; 32], std::time::Instant)>>);

impl DigestCache {
    /// The digest at `index` when it is cached or may be computed now;
    /// otherwise the last one, with the index it is of.
    fn at(&self, index: u64, compute: impl FnOnce() -> [u8; 32]) -> (u64, [u8; 32]) {
        let Ok(mut cached) = self.0.lock() else {
            return (index, compute());
        };
        match *cached {
            Some((i, digest, _)) if i == index => (i, digest),
            Some((i, digest, at)) if at.elapsed() < DIGEST_EVERY => (i, digest),
            _ => {
                let digest = compute();
                *cached = Some((index, digest, std::time::Instant::now()));
                (index, digest)
            }
        }
    }
}

/// The protocol runtime's view of the node: send to peers, propose.
struct NodeIo(Arc<Node>);

impl crate::quorum::Io for NodeIo {
    fn send(&self, to: NodeIdT, bytes: Vec<u8>) -> qk_net::BoxFuture<'_, ()> {
        Box::pin(async move {
            let Some(addr) = self.0.member_addr(to.0) else {
                return warn!(%to, "no address for node; protocol message dropped");
            };
            match self
                .0
                .peers
                .node(to.0, &addr)
                .call(&PeerRequest::Protocol(bytes))
                .await
            {
                Ok(PeerResponse::ProtocolAccepted) => {}
                Ok(other) => warn!(%to, "protocol message not accepted: {other:?}"),
                Err(e) => warn!(%to, "protocol message not delivered: {e}"),
            }
        })
    }

    fn propose(&self, op: Operation) -> qk_net::BoxFuture<'_, bool> {
        Box::pin(async move {
            let name = op.name();
            match self.0.write_own(op).await {
                ClientResponse::Written { response, .. } => response.result.is_ok(),
                other => {
                    warn!(
                        operation = name,
                        "protocol proposal not committed: {other:?}"
                    );
                    false
                }
            }
        })
    }
}

/// Loads the cluster CA and this process's credentials.
pub fn load_tls(ca: &Path, cert: &Path, key: &Path) -> Result<(CaCert, Credentials)> {
    let ca =
        CaCert::load(ca).with_context(|| format!("cannot load the cluster CA {}", ca.display()))?;
    let creds = Credentials::load(cert, key).with_context(|| {
        format!(
            "cannot load certificate {} and key {}",
            cert.display(),
            key.display()
        )
    })?;
    Ok((ca, creds))
}

pub fn net_config(request_timeout: Duration) -> NetConfig {
    let mut cfg = NetConfig::default();
    cfg.request_timeout = request_timeout;
    cfg
}

pub async fn run(config_path: &Path, bootstrap: bool, join: Option<String>) -> Result<()> {
    let config = Config::load(config_path)?;
    let (bootstrap, join) = if bootstrap || join.is_some() {
        (bootstrap, join)
    } else {
        (config.start.bootstrap, config.start.join.clone())
    };
    let (ca, creds) = load_tls(&config.tls.ca_cert, &config.tls.cert, &config.tls.key)?;
    if creds.peer() != &Peer::Node(config.node_id) {
        bail!(
            "certificate {} is for {}, not node {}; issue one with `qk-node pki issue-node --id {}`",
            config.tls.cert.display(),
            creds.peer(),
            config.node_id,
            config.node_id
        );
    }
    let (node, actions, audit_rx) = Node::start(&config, &ca, &creds).await?;
    let node = Arc::new(node);
    let io: Arc<dyn crate::quorum::Io> = Arc::new(NodeIo(node.clone()));
    tokio::spawn(node.quorum.clone().run(io.clone(), actions));
    tokio::spawn(crate::audit::run(audit_rx, io.clone()));
    if bootstrap {
        node.bootstrap(&config).await?;
    }
    let handler: Arc<dyn RpcHandler> = node.clone();
    let server = Server::bind(
        config.listen,
        &ca,
        &creds,
        net_config(Duration::from_secs(30)),
        handler,
    )
    .await
    .with_context(|| format!("cannot listen on {}", config.listen))?;
    info!(node_id = config.node_id, listen = %config.listen, "node started");
    let api = match config.api_listen {
        Some(addr) => {
            let backend = Arc::new(api_backend::ApiBackend(node.clone()));
            let api = qk_api::ApiServer::bind(addr, &creds, &ca, backend)
                .await
                .with_context(|| format!("cannot serve the HTTPS API on {addr}"))?;
            info!(api = %config.api_url(), "HTTPS API listening");
            Some(api)
        }
        None => None,
    };
    if let Some(seed) = join {
        node.join_cluster(&config, &seed).await?;
    }
    tokio::spawn(crate::maintenance::run(node.clone(), io.clone()));
    {
        let node = node.clone();
        tokio::spawn(async move { node.reconcile_shares(io).await });
    }
    shutdown_signal().await;
    info!("shutting down");
    if let Some(api) = api {
        api.shutdown().await;
    }
    server.shutdown().await;
    if let Err(e) = node.raft.shutdown().await {
        warn!("raft shutdown: {e}");
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn raft_config(config: &Config) -> Result<Arc<openraft::Config>> {
    let r = &config.raft;
    let c = openraft::Config {
        cluster_name: "quorumkey".into(),
        heartbeat_interval: r.heartbeat_interval_ms,
        election_timeout_min: r.election_timeout_min_ms,
        election_timeout_max: r.election_timeout_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(r.snapshot_after_entries),
        max_in_snapshot_log_to_keep: r.keep_entries_after_snapshot,
        max_payload_entries: crate::proposer::MAX_ENTRIES_PER_APPEND,
        ..Default::default()
    };
    Ok(Arc::new(c.validate().context("invalid [raft] settings")?))
}

/// Opens storage, retrying briefly: a previous process may still hold the lock.
async fn open_storage(
    path: &Path,
    grants: Arc<qk_net::GrantVerifier>,
) -> Result<(qk_storage::LogStore, qk_storage::StateMachineStore)> {
    let mut attempt = 0;
    loop {
        let p = path.to_path_buf();
        let g = grants.clone();
        match tokio::task::spawn_blocking(move || qk_storage::open(&p, g)).await? {
            Ok(stores) => return Ok(stores),
            Err(e) if attempt < 20 => {
                attempt += 1;
                warn!("storage not ready ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot open storage in {}", path.display()))
            }
        }
    }
}

/// Opens the sealed share store with the node seal key.
fn open_share_store(config: &Config, fresh: bool) -> Result<qk_storage::ShareStore> {
    use qk_storage::SealKey;
    let seal = match (&config.seal.passphrase_file, &config.seal.key_file) {
        (Some(pass), _) => SealKey::from_passphrase_file(pass, &config.data_dir.join("seal.salt"))?,
        (None, Some(file)) => SealKey::load_key_file(file)?,
        (None, None) => {
            let file = config.data_dir.join("seal.key");
            if !file.exists() && fresh {
                info!(path = %file.display(), "created the node seal key");
                SealKey::create_key_file(&file)?
            } else {
                SealKey::load_key_file(&file).with_context(|| {
                    format!(
                        "cannot load the seal key {}; restore it from backup",
                        file.display()
                    )
                })?
            }
        }
    };
    Ok(qk_storage::ShareStore::open(
        &config.data_dir.join("shares"),
        NodeIdT(config.node_id),
        seal,
    )?)
}

/// Operations only nodes propose (DKG steps, receipts, timeouts): a client
/// certificate may not; a node may only speak for itself.
fn authorize_write(peer: &Peer, cmd: &Command) -> std::result::Result<(), String> {
    let protocol_op = matches!(
        cmd.op,
        Operation::Dkg { .. }
            | Operation::EraseReceipt { .. }
            | Operation::AbandonRefresh { .. }
            | Operation::FailGeneration { .. }
            | Operation::PublishDkgKey { .. }
    );
    match peer {
        Peer::Client(name) if protocol_op => Err(format!(
            "client {name} may not propose {}; only cluster nodes do",
            cmd.op.name()
        )),
        Peer::Node(id) if protocol_op && cmd.principal != NodeIdT(*id).to_string() => Err(format!(
            "node {id} may only propose protocol steps as itself"
        )),
        _ => Ok(()),
    }
}

impl Node {
    async fn start(
        config: &Config,
        ca: &CaCert,
        creds: &Credentials,
    ) -> Result<(
        Node,
        tokio::sync::mpsc::UnboundedReceiver<Vec<qk_protocol::Action>>,
        tokio::sync::mpsc::Receiver<crate::audit::Queued>,
    )> {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("cannot create data directory {}", config.data_dir.display())
        })?;
        let fresh = !config.data_dir.join("raft").exists();
        let grants =
            Arc::new(qk_net::GrantVerifier::new(ca).context("cannot load the cluster CA")?);
        let (log_store, sm_store) =
            open_storage(&config.data_dir.join("raft"), grants.clone()).await?;
        let state = sm_store.reader();
        let shares = open_share_store(config, fresh)?;
        let dkg_key = shares
            .dkg_key()
            .context("cannot derive this node's DKG key from its seal key")?;
        let dkg_public_key = dkg_key.public_key().to_bytes().to_vec();
        let replay_upto = {
            use openraft::storage::RaftLogStorage;
            let mut reader = log_store.clone();
            let state = reader
                .get_log_state()
                .await
                .context("cannot read the local Raft log")?;
            state.last_log_id.map(|l| l.index).unwrap_or(0)
        };
        let (core, actions) = QuorumCore::new(NodeIdT(config.node_id), replay_upto, dkg_key);
        let hook_core = core.clone();
        sm_store.set_apply_hook(Box::new(move |s, index, cmd, resp| {
            hook_core.on_applied(s, index, cmd, resp)
        }));
        let snapshot_installed = Arc::new(tokio::sync::Notify::new());
        let installed = snapshot_installed.clone();
        sm_store.set_install_hook(Box::new(move |_| installed.notify_one()));
        let (applied_tx, applied) = AppliedIndex::channel();
        let (audit, audit_rx) = crate::audit::AuditQueue::new();
        let quorum = Arc::new(Quorum::new(
            core,
            state.clone(),
            shares,
            applied.clone(),
            (grants, audit.clone()),
        ));
        let peers = Dialer::new(
            ca,
            creds,
            net_config(Duration::from_millis(config.raft.rpc_timeout_ms)),
        )
        .context("cannot create the QUIC client endpoint")?;
        let network = NetworkFactory::new(peers.clone());
        let raft = Raft::new(
            config.node_id,
            raft_config(config)?,
            network,
            log_store,
            sm_store,
        )
        .await
        .context("cannot start Raft")?;
        crate::applied::follow_raft(&raft, applied_tx);
        Ok((
            Node {
                id: config.node_id,
                proposer: crate::proposer::Proposer::spawn(raft.clone()),
                raft,
                state,
                peers,
                quorum,
                audit,
                applied,
                digest: DigestCache::default(),
                dkg_public_key,
                snapshot_installed,
            },
            actions,
            audit_rx,
        ))
    }

    /// Initializes a one-node cluster and creates the initial admin, before
    /// the node accepts any client (so no request can race the admin).
    async fn bootstrap(&self, config: &Config) -> Result<()> {
        if self.raft.is_initialized().await.unwrap_or(false) {
            info!("cluster already initialized; --bootstrap ignored");
        } else {
            let mut members = BTreeMap::new();
            members.insert(
                self.id,
                QkNode {
                    rpc_addr: config.advertise_addr(),
                    api_url: config.api_url(),
                },
            );
            self.raft
                .initialize(members)
                .await
                .context("cannot initialize the cluster")?;
            info!("bootstrapped a new cluster");
        }
        self.ensure_initial_admin(&config.auth.initial_admin)
            .await?;
        self.publish_dkg_key().await
    }

    /// Publishes this node's DKG key before the bootstrap node serves
    /// clients, so a key can be created at once. (Joining nodes publish
    /// from the maintenance loop.)
    async fn publish_dkg_key(&self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while let Some(op) = self.dkg_key_to_publish() {
            match self.write_own(op).await {
                ClientResponse::Written { response, .. } => {
                    if let Err(e) = response.result {
                        bail!("cannot publish this node's DKG key: {e}; check the node log");
                    }
                    info!("published this node's DKG key");
                }
                other if tokio::time::Instant::now() > deadline => {
                    bail!("cannot publish this node's DKG key: {other:?}; check the node log")
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        Ok(())
    }

    /// Proposes `op` as this node (`node-N`), signed with its own session.
    async fn write_own(&self, op: Operation) -> ClientResponse {
        let cmd = Command {
            request_id: RequestId(rand::random()),
            time_ms: 0,
            principal: NodeIdT(self.id).to_string(),
            op,
            proof: None,
        };
        self.write(&Peer::Node(self.id), None, cmd).await
    }

    /// The `PublishDkgKey` this node still has to propose, if any: its key
    /// is missing from the state, or is another one (the node lost its disk
    /// and so its seal key).
    pub(crate) fn dkg_key_to_publish(&self) -> Option<Operation> {
        let node = NodeIdT(self.id);
        let published = self
            .state
            .read(|a| a.machine().dkg_key(node) == Some(self.dkg_public_key.as_slice()))
            .unwrap_or(false);
        (!published).then(|| Operation::PublishDkgKey {
            node,
            public_key: self.dkg_public_key.clone(),
        })
    }

    async fn ensure_initial_admin(&self, name: &str) -> Result<()> {
        let has_principals = |node: &Node| {
            node.state
                .read(|a| a.machine().principals().next().is_some())
                .unwrap_or(false)
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !has_principals(self) {
            let op = Operation::CreatePrincipal {
                name: name.to_string(),
                roles: [qk_state::Role::Admin].into(),
            };
            let me = Peer::Node(self.id);
            match self.write_as(&me, None, op).await {
                ClientResponse::Written { response, .. } => match response.result {
                    Ok(_) => info!(principal = name, "created the initial admin"),
                    Err(e) => bail!(
                        "cannot create the initial admin {name:?}: {e}; fix [auth] initial_admin"
                    ),
                },
                other if tokio::time::Instant::now() > deadline => {
                    bail!("cannot create the initial admin {name:?}: {other:?}; check the node log")
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        Ok(())
    }

    /// Asks the node at `seed` (forwarded to the leader) to add us as a voter.
    async fn join_cluster(&self, config: &Config, seed: &str) -> Result<()> {
        if self.is_member().await {
            info!("already a member; --join ignored");
            return Ok(());
        }
        let request = ClientRequest::Join {
            node_id: self.id,
            node: QkNode {
                rpc_addr: config.advertise_addr(),
                api_url: config.api_url(),
            },
        };
        let mut delay = Duration::from_millis(200);
        let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
        loop {
            match self
                .peers
                .any_node(seed)
                .call(&PeerRequest::Client(request.clone()))
                .await
            {
                Ok(PeerResponse::Client(ClientResponse::Joined)) => {
                    info!(seed, "joined the cluster");
                    return Ok(());
                }
                Ok(other) => warn!(seed, "join not accepted yet: {other:?}"),
                Err(e) => warn!(seed, "join attempt failed: {e}"),
            }
            if tokio::time::Instant::now() + delay > deadline {
                bail!("could not join the cluster through {seed} within {JOIN_TIMEOUT:?}; check that it runs and that this node's certificate is from the cluster CA");
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(3));
        }
    }

    async fn is_member(&self) -> bool {
        let metrics = self.raft.metrics().borrow().clone();
        metrics
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == self.id)
    }

    /// Runs a client request as `peer`; `credential` is the caller's signing
    /// key when it handed one over (every decrypt needs it).
    async fn handle_client(
        &self,
        peer: &Peer,
        credential: Option<&Credential>,
        req: ClientRequest,
    ) -> ClientResponse {
        if let Some(name) = requests::client_name(peer) {
            if name.starts_with("node-") {
                return self.denied(
                    peer,
                    "request",
                    None,
                    format!("client name {name} is reserved for cluster nodes; issue the client another name"),
                );
            }
        }
        match req {
            ClientRequest::Write(cmd) => self.write(peer, credential, cmd).await,
            ClientRequest::GetKey { name } => self.get_key(peer, &name).await,
            ClientRequest::ReadIndex => match peer {
                Peer::Node(_) => self.read_index().await,
                _ => self.denied(
                    peer,
                    "read-index",
                    None,
                    "only cluster nodes ask for the read index".to_owned(),
                ),
            },
            ClientRequest::ListKeys => self.list_keys(peer, false),
            ClientRequest::KeyInventory => self.list_keys(peer, true),
            ClientRequest::Audit { from_seq, limit } => {
                if let Err(denied) = self.require(peer, Permission::AuditRead, None, "audit.read") {
                    return denied;
                }
                self.read(|s| {
                    ClientResponse::Audit(
                        s.audit_records(from_seq, limit.min(MAX_AUDIT_PAGE) as usize)
                            .to_vec(),
                    )
                })
            }
            ClientRequest::AuditVerify => self.audit_verify(peer),
            ClientRequest::Status => ClientResponse::Status(self.status()),
            ClientRequest::ClusterHealth => self.cluster_health(peer).await,
            ClientRequest::Join { node_id, node } => self.admit(peer, node_id, node).await,
            ClientRequest::Encrypt {
                name,
                context,
                plaintext,
            } => self.encrypt_as(peer, "encrypt", &name, &context, &plaintext.0),
            ClientRequest::DataKey {
                name,
                bytes,
                context,
            } => self.data_key(peer, &name, bytes, &context),
            ClientRequest::Decrypt {
                ciphertext,
                context,
                approval,
            } => {
                self.decrypt_authorized(peer, credential, &ciphertext, context, approval)
                    .await
            }
            ClientRequest::Partial {
                ciphertext,
                context,
                ..
            } => self.partial_authorized(peer, &ciphertext, context).await,
            ClientRequest::Rewrap {
                ciphertext,
                context,
                to_key,
            } => {
                self.rewrap(peer, credential, &ciphertext, context, to_key)
                    .await
            }
            ClientRequest::IssueToken {
                principal,
                ttl_ms,
                description,
            } => {
                self.issue_token(peer, credential, principal, ttl_ms, description)
                    .await
            }
            ClientRequest::Authenticate { token } => self.authenticate(&token.0),
            ClientRequest::WhoAmI { token_id } => self.who_am_i(peer, token_id),
            req @ (ClientRequest::ListPrincipals
            | ClientRequest::ListTokens
            | ClientRequest::ListApprovals
            | ClientRequest::GetAccessRule) => self.list_access(peer, &req),
        }
    }

    /// A key or version with no holders listed is held by every voter.
    fn default_holders(&self, op: &mut Operation) {
        let holders = match op {
            Operation::CreateKey(c) => &mut c.holders,
            Operation::Rotate { holders, .. } => holders,
            _ => return,
        };
        if holders.is_empty() {
            let m = self.raft.metrics().borrow().clone();
            *holders = m
                .membership_config
                .membership()
                .voter_ids()
                .map(NodeIdT)
                .collect();
        }
    }

    pub(crate) fn server_state(&self) -> ServerState {
        self.raft.metrics().borrow().state
    }

    pub(crate) fn maintenance_due(&self, now_ms: u64) -> Vec<Operation> {
        self.state
            .read(|a| {
                let m = a.machine();
                m.maintenance_due(m.schedule_time_ms(now_ms))
            })
            .unwrap_or_default()
    }

    /// This node should vouch for its clock (see `Operation::Attest`).
    pub(crate) fn needs_attestation(&self, now_ms: u64) -> bool {
        let me = NodeIdT(self.id).to_string();
        self.state
            .read(|a| a.machine().needs_attestation(&me, now_ms))
            .unwrap_or(false)
    }

    fn member_api_urls(&self) -> BTreeMap<NodeId, String> {
        let m = self.raft.metrics().borrow().clone();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.api_url.clone()))
            .collect()
    }

    fn member_addr(&self, id: NodeId) -> Option<String> {
        let m = self.raft.metrics().borrow().clone();
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.rpc_addr.clone())
    }

    /// Wraps under the newest enabled version: needs only its public key.
    fn encrypt(
        &self,
        name: &str,
        context: &BTreeMap<String, String>,
        plaintext: &[u8],
    ) -> ClientResponse {
        let found = self.state.read(|a| {
            let key = a.machine().key(name)?;
            let v = key.primary_version()?;
            Some((key.id, v.version, v.public_keys.clone()?))
        });
        let Ok(Some((id, version, keys))) = found else {
            return ClientResponse::Error(format!(
                "key {name:?} does not exist or has no enabled version; create it or wait for its generation to finish"
            ));
        };
        let wrapped = qk_crypto::PublicKeySet::from_bytes(&keys)
            .map_err(|e| e.to_string())
            .and_then(|k| {
                qk_crypto::wrap(
                    &mut rand::rng(),
                    &k.public_key(),
                    id,
                    version,
                    context,
                    plaintext,
                )
                .map_err(|e| e.to_string())
            });
        match wrapped {
            Ok(ct) => ClientResponse::Ciphertext {
                text: ct.to_text(),
                version: version.0,
            },
            Err(e) => ClientResponse::Error(format!("encryption failed: {e}")),
        }
    }

    /// The caller's signature over this decrypt, made with the credential it
    /// handed to this node (which must be its own).
    fn prove(
        &self,
        principal: &str,
        credential: Option<&Credential>,
        ciphertext: &[u8],
        context: &BTreeMap<String, String>,
    ) -> std::result::Result<qk_state::proof::IntentProof, String> {
        use qk_state::proof::{ProofError, Signer};
        let credential =
            credential.ok_or_else(|| ProofError::Missing(principal.to_string()).to_string())?;
        let signer = match &credential.signer {
            Signer::Token { id } => self
                .state
                .read(|a| a.machine().token(id).map(|t| t.principal.clone()))
                .ok()
                .flatten()
                .unwrap_or_default(),
            Signer::Session(grant) => grant.principal.clone(),
        };
        qk_state::proof::check_signer(signer, principal).map_err(|e| e.to_string())?;
        let intent = qk_state::proof::Intent {
            principal,
            ciphertext,
            context,
        };
        credential
            .prove(&intent, self.id, now_ms())
            .map_err(|e| e.to_string())
    }

    /// Decodes a `qk:v1:` ciphertext and names the key it was made under.
    fn resolve_ciphertext(
        &self,
        text: &str,
    ) -> std::result::Result<(qk_crypto::Ciphertext, String), String> {
        let ct = qk_crypto::Ciphertext::from_text(text)
            .map_err(|e| format!("ciphertext does not decode: {e}"))?;
        let name = self
            .key_name_for(&ct)
            .ok_or_else(|| format!("no key with id {} in this cluster", ct.key_id))?;
        Ok((ct, name))
    }

    fn key_name_for(&self, ct: &qk_crypto::Ciphertext) -> Option<String> {
        self.state
            .read(|a| {
                a.machine()
                    .keys()
                    .find(|k| k.id == ct.key_id)
                    .map(|k| k.name.clone())
            })
            .ok()
            .flatten()
    }

    async fn decrypt(
        &self,
        peer: &Peer,
        credential: Option<&Credential>,
        text: &str,
        context: BTreeMap<String, String>,
    ) -> ClientResponse {
        let (ct, name) = match self.resolve_ciphertext(text) {
            Ok(found) => found,
            Err(e) => return ClientResponse::Error(e),
        };
        let principal = requests::principal_name(peer);
        let ciphertext = ct.to_bytes();
        let proof = match self.prove(&principal, credential, &ciphertext, &context) {
            Ok(proof) => proof,
            Err(e) => return self.denied(peer, "decrypt", Some(&name), e),
        };
        let (outcome, faulty) = self
            .quorum
            .unwrap(name.clone(), ciphertext, context, principal, proof)
            .await;
        let blame = if faulty.is_empty() {
            String::new()
        } else {
            let names: Vec<String> = faulty.iter().map(|n| n.to_string()).collect();
            format!("; invalid partials from {}", names.join(", "))
        };
        let (resp, outcome) = match outcome {
            Ok(plain) => (
                ClientResponse::Plaintext(qk_raft::Redacted(plain.expose().to_vec())),
                format!("ok{blame}"),
            ),
            Err(e) => (
                ClientResponse::Error(format!("decryption failed: {e}")),
                format!("refused: {e}{blame}"),
            ),
        };
        self.audit.record(
            &requests::principal_name(peer),
            "decrypt",
            Some(&name),
            Some(ct.version),
            outcome,
        );
        resp
    }

    async fn partial(
        &self,
        peer: &Peer,
        text: &str,
        context: BTreeMap<String, String>,
    ) -> ClientResponse {
        let (ct, name) = match self.resolve_ciphertext(text) {
            Ok(found) => found,
            Err(e) => return ClientResponse::Error(e),
        };
        let request = qk_protocol::PartialRequest {
            op_id: 0,
            key: ct.key_id,
            name,
            version: ct.version,
            ciphertext: ct.to_bytes(),
            context,
            principal: requests::principal_name(peer),
            epoch: None,
            min_applied: self.applied.get(),
            // This node authenticated the caller itself (client-side combining).
            proof: None,
        };
        match self.quorum.recorded_partial(None, &request).await {
            Ok(bytes) => ClientResponse::Partial(bytes),
            Err(reason) => {
                ClientResponse::Error(format!("node {} refused a partial: {reason}", self.id))
            }
        }
    }

    /// Once this node has caught up with the log, erase shares of versions
    /// destroyed or failed meanwhile and check every other share; again
    /// after every snapshot installed from the leader.
    async fn reconcile_shares(&self, io: Arc<dyn crate::quorum::Io>) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let m = self.raft.metrics().borrow().clone();
            let caught_up =
                m.current_leader.is_some() && m.last_applied.map(|l| l.index) >= m.last_log_index;
            if caught_up || tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        loop {
            match self.quorum.reconcile(&io).await {
                Ok(()) => info!("share store checked against the replicated commitments"),
                Err(e) => warn!("share store check failed: {e}"),
            }
            // The entries a snapshot covers never reach the apply hook: the
            // erasures they call for (destroyed versions, replaced epochs)
            // are found by checking the store against the new state.
            self.snapshot_installed.notified().await;
        }
    }

    fn read(&self, f: impl FnOnce(&qk_state::StateMachine) -> ClientResponse) -> ClientResponse {
        match self.state.read(|a| f(a.machine())) {
            Ok(r) => r,
            Err(e) => ClientResponse::Error(format!("cannot read the local state: {e}")),
        }
    }

    fn status(&self) -> NodeStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let ((digest_index, digest), key_count, audit_len, dkg_keys) = self
            .state
            .read(|a| {
                let s = a.machine();
                let index = a.last_applied().map_or(0, |l| l.index);
                let digest = self.digest.at(index, || s.digest());
                let dkg_keys = s.dkg_key_nodes().map(|n| n.0).collect();
                (digest, s.key_count() as u64, s.audit_len(), dkg_keys)
            })
            .unwrap_or(((0, [0u8; 32]), 0, 0, Vec::new()));
        NodeStatus {
            node_id: self.id,
            leader: m.current_leader,
            term: m.current_term,
            last_applied: m.last_applied.map(|l| l.index),
            last_log_index: m.last_log_index,
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            addrs: membership
                .nodes()
                .map(|(id, n)| (*id, n.rpc_addr.clone()))
                .collect(),
            state_digest: digest,
            digest_index,
            key_count,
            audit_len,
            dkg_keys,
        }
    }

    /// Stamps the leader's time and the authenticated principal, has the
    /// author sign it, then proposes. Followers forward to the leader once;
    /// a forwarded command keeps its author's proof (every replica checks
    /// it at apply, so the forwarding node's word counts for nothing).
    async fn write(
        &self,
        peer: &Peer,
        credential: Option<&Credential>,
        mut cmd: Command,
    ) -> ClientResponse {
        if let Err(e) = authorize_write(peer, &cmd) {
            let key = cmd.op.key_name();
            self.audit.record(
                &requests::principal_name(peer),
                cmd.op.name(),
                key,
                None,
                format!("refused: {e}"),
            );
            return ClientResponse::Error(e);
        }
        cmd.principal = match peer {
            Peer::Client(name) => name.clone(),
            Peer::Node(id) if *id == self.id && cmd.principal.is_empty() => {
                NodeIdT(*id).to_string()
            }
            // A forwarded write keeps the principal the first node authenticated.
            Peer::Node(_) => cmd.principal,
        };
        cmd.time_ms = now_ms();
        self.default_holders(&mut cmd.op);
        if let Err(e) = self.sign(peer, credential, &mut cmd) {
            self.audit.record(
                &requests::principal_name(peer),
                cmd.op.name(),
                cmd.op.key_name(),
                None,
                format!("refused: {e}"),
            );
            return ClientResponse::Error(e);
        }
        let narrows = cmd.op.narrows_access();
        let written = self.propose_or_forward(peer, cmd).await;
        match written {
            ClientResponse::Written {
                log_index,
                response,
                ..
            } => {
                // Read-your-writes on this node too: a forwarded write is
                // applied here before its answer (bounded; the index travels
                // with the answer either way).
                let _ = self.applied.wait_for(log_index, CLIENT_INDEX_WAIT).await;
                let not_applied_on =
                    if narrows && response.result.is_ok() && matches!(peer, Peer::Client(_)) {
                        self.wait_members_applied(log_index).await
                    } else {
                        Vec::new()
                    };
                ClientResponse::Written {
                    log_index,
                    response,
                    not_applied_on,
                }
            }
            other => other,
        }
    }

    /// Signs `cmd` as its author: a client's command with the credential
    /// it handed over, this node's own with its node session. A command
    /// another node forwarded already carries its author's proof.
    fn sign(
        &self,
        peer: &Peer,
        credential: Option<&Credential>,
        cmd: &mut Command,
    ) -> std::result::Result<(), String> {
        let credential = match peer {
            Peer::Node(id) if *id != self.id => return Ok(()),
            Peer::Node(_) => self.peers.session().map_err(|e| {
                format!("cannot sign this node's command: {e}; check the node certificate")
            })?,
            Peer::Client(name) => credential.cloned().ok_or_else(|| {
                format!(
                    "the write carries no credential of {name}: every write is signed by its \
                     author's own key; send a bearer token (`qk token create`), or use qk or \
                     qk-client, which sign with a session of the client certificate"
                )
            })?,
        };
        let proof = credential
            .sign_command(cmd, cmd.time_ms)
            .map_err(|e| format!("cannot sign the write: {e}"))?;
        cmd.proof = Some(Box::new(proof));
        Ok(())
    }

    /// Every member applied `index` (a revocation takes effect everywhere
    /// before it is acknowledged), or the members that did not within the wait.
    async fn wait_members_applied(&self, index: u64) -> Vec<NodeId> {
        let members = self.raft.metrics().borrow().clone();
        let peers: Vec<(NodeId, String)> = members
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, n)| (*id, n.rpc_addr.clone()))
            .collect();
        let asks = peers.into_iter().map(|(id, addr)| async move {
            let request = PeerRequest::ClientAfter {
                min_applied: index,
                request: ClientRequest::Status,
            };
            let client = self.peers.node(id, &addr);
            let call = client.call(&request);
            match tokio::time::timeout(CLIENT_INDEX_WAIT + Duration::from_secs(1), call).await {
                Ok(Ok(PeerResponse::Client(ClientResponse::Status(s))))
                    if s.last_applied >= Some(index) =>
                {
                    None
                }
                _ => Some(id),
            }
        });
        let lagging: Vec<NodeId> = futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect();
        if !lagging.is_empty() {
            warn!(
                index,
                ?lagging,
                "a revocation is not yet applied on every member"
            );
        }
        lagging
    }

    /// Makes the next read of the applied state linearizable: learns the
    /// leader's read index (here when leading, else from the leader) and
    /// waits to have applied it. A partitioned or lagging node answers
    /// "unavailable" instead of serving a stale record.
    pub(super) async fn read_barrier(&self) -> Result<(), ClientResponse> {
        let index = match self.leader_read_index().await {
            Ok(index) => index,
            Err(e) => match e.forward_to_leader::<QkNode>() {
                Some(ForwardToLeader {
                    leader_id: Some(leader),
                    leader_node: Some(node),
                }) => match self.forward(*leader, node, ClientRequest::ReadIndex).await {
                    ClientResponse::ReadIndex(index) => index,
                    other => return Err(other),
                },
                _ => {
                    return Err(ClientResponse::Error(format!(
                        "cannot reach the leader to confirm this read ({e}); the cluster may \
                         be electing or lack a majority: retry shortly"
                    )))
                }
            },
        };
        self.applied
            .wait_for(index, CLIENT_INDEX_WAIT)
            .await
            .map(|_| ())
            .map_err(|behind| {
                ClientResponse::Error(format!(
                    "this node is behind the leader ({behind}); retry shortly or ask another node"
                ))
            })
    }

    /// The read index when this node leads: the commit index once a
    /// majority has confirmed it still leads (bounded in time; the caller
    /// then waits to have applied it, also bounded).
    async fn leader_read_index(
        &self,
    ) -> Result<
        u64,
        openraft::error::RaftError<NodeId, openraft::error::CheckIsLeaderError<NodeId, QkNode>>,
    > {
        let check = tokio::time::timeout(CLIENT_INDEX_WAIT, self.raft.get_read_log_id()).await;
        match check {
            Ok(Ok((read_log_id, _applied))) => Ok(read_log_id.map_or(0, |l| l.index)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(openraft::error::RaftError::APIError(
                openraft::error::CheckIsLeaderError::QuorumNotEnough(
                    openraft::error::QuorumNotEnough {
                        cluster: "a majority did not confirm within the read wait".to_owned(),
                        got: Default::default(),
                    },
                ),
            )),
        }
    }

    /// Leader side of [`Self::read_barrier`], for member nodes.
    async fn read_index(&self) -> ClientResponse {
        match self.leader_read_index().await {
            Ok(index) => ClientResponse::ReadIndex(index),
            Err(e) => match e.forward_to_leader::<QkNode>() {
                Some(f) => ClientResponse::NotLeader {
                    leader: f.leader_id,
                    leader_addr: f.leader_node.as_ref().map(|n| n.rpc_addr.clone()),
                },
                None => ClientResponse::Error(format!(
                    "cannot reach a majority to confirm leadership for a read ({e}); retry shortly"
                )),
            },
        }
    }

    async fn propose_or_forward(&self, peer: &Peer, cmd: Command) -> ClientResponse {
        match self.proposer.write(cmd.clone()).await {
            Ok((log_index, response)) => ClientResponse::Written {
                log_index,
                response,
                not_applied_on: Vec::new(),
            },
            Err(e) if e.forward_to_leader().is_some() => {
                let (leader_id, leader_node) = e.forward_to_leader().unwrap_or((None, None));
                match (leader_id, leader_node) {
                    (Some(leader), Some(node))
                        if matches!(peer, Peer::Client(_)) || *peer == Peer::Node(self.id) =>
                    {
                        self.forward(leader, &node, ClientRequest::Write(cmd)).await
                    }
                    (leader, node) => ClientResponse::NotLeader {
                        leader,
                        leader_addr: node.map(|n| n.rpc_addr),
                    },
                }
            }
            Err(e @ crate::proposer::WriteError::TooLarge { .. }) => {
                ClientResponse::Error(e.to_string())
            }
            Err(e) => ClientResponse::Error(format!(
                "write not committed: {e}; retry with the same request id"
            )),
        }
    }

    async fn forward(&self, leader: NodeId, node: &QkNode, req: ClientRequest) -> ClientResponse {
        match self
            .peers
            .node(leader, &node.rpc_addr)
            .call(&PeerRequest::Client(req))
            .await
        {
            Ok(PeerResponse::Client(r)) => r,
            Ok(other) => {
                ClientResponse::Error(format!("leader {leader} answered unexpectedly: {other:?}"))
            }
            Err(e) => ClientResponse::Error(format!(
                "cannot reach leader {leader} at {}: {e}; retry shortly",
                node.rpc_addr
            )),
        }
    }

    /// Leader side of a join: the caller must be the node itself.
    async fn admit(&self, peer: &Peer, node_id: NodeId, node: QkNode) -> ClientResponse {
        if *peer != Peer::Node(node_id) {
            return ClientResponse::Error(format!(
                "only node {node_id} itself (with its node certificate) may ask to join as {node_id}"
            ));
        }
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader {
            let leader = metrics.current_leader.and_then(|id| {
                let node = metrics
                    .membership_config
                    .membership()
                    .get_node(&id)
                    .cloned();
                node.map(|n| (id, n))
            });
            return match leader {
                Some((id, leader_node)) => {
                    self.forward(id, &leader_node, ClientRequest::Join { node_id, node })
                        .await
                }
                None => ClientResponse::NotLeader {
                    leader: metrics.current_leader,
                    leader_addr: None,
                },
            };
        }
        if let Err(e) = self.raft.add_learner(node_id, node, true).await {
            return ClientResponse::Error(format!("cannot add node {node_id} as learner: {e}"));
        }
        let mut voters: BTreeSet<NodeId> =
            metrics.membership_config.membership().voter_ids().collect();
        voters.insert(node_id);
        match self.raft.change_membership(voters, false).await {
            Ok(_) => ClientResponse::Joined,
            Err(e) => ClientResponse::Error(format!(
                "cannot promote node {node_id} to voter: {e}; retry the join"
            )),
        }
    }
}

impl RpcHandler for Node {
    fn handle(&self, peer: Peer, req: PeerRequest) -> qk_net::BoxFuture<'_, PeerResponse> {
        Box::pin(async move {
            if let (Some((kind, claimed)), Peer::Node(from)) = (raft_sender_claim(&req), &peer) {
                if let Err(reason) = self.check_raft_sender(*from, claimed) {
                    warn!(from, kind, "Raft message refused: {reason}");
                    self.audit.record(
                        &NodeIdT(*from).to_string(),
                        kind,
                        None,
                        None,
                        format!("refused: {reason}"),
                    );
                    return PeerResponse::Refused(format!("{kind} refused: {reason}"));
                }
            }
            match (req, &peer) {
                (PeerRequest::AppendEntries(r), Peer::Node(_)) => {
                    PeerResponse::AppendEntries(self.raft.append_entries(r).await)
                }
                (PeerRequest::Vote(r), Peer::Node(_)) => {
                    PeerResponse::Vote(self.raft.vote(r).await)
                }
                (PeerRequest::InstallSnapshot(r), Peer::Node(from)) => {
                    if r.offset == 0 {
                        info!(from, snapshot = %r.meta.snapshot_id, "installing snapshot from the leader");
                    }
                    PeerResponse::InstallSnapshot(self.raft.install_snapshot(r).await)
                }
                (PeerRequest::Client(r), _) => {
                    PeerResponse::Client(self.handle_client(&peer, None, r).await)
                }
                (
                    PeerRequest::ClientAfter {
                        min_applied,
                        request,
                    },
                    _,
                ) => match self.applied.wait_for(min_applied, CLIENT_INDEX_WAIT).await {
                    Ok(_) => PeerResponse::Client(self.handle_client(&peer, None, request).await),
                    Err(behind) => PeerResponse::Client(ClientResponse::Error(behind.to_string())),
                },
                (
                    PeerRequest::ClientProven {
                        min_applied,
                        credential,
                        request,
                    },
                    _,
                ) => match self.applied.wait_for(min_applied, CLIENT_INDEX_WAIT).await {
                    Ok(_) => PeerResponse::Client(
                        self.handle_client(&peer, Some(&credential), request).await,
                    ),
                    Err(behind) => PeerResponse::Client(ClientResponse::Error(behind.to_string())),
                },
                (PeerRequest::Protocol(bytes), Peer::Node(from)) => {
                    match self.quorum.on_message(NodeIdT(*from), &bytes) {
                        Ok(()) => PeerResponse::ProtocolAccepted,
                        Err(e) => PeerResponse::Refused(format!("protocol message refused: {e}")),
                    }
                }
                (_, Peer::Client(name)) => PeerResponse::Refused(format!(
                    "client {name} may not send Raft messages; only node certificates may"
                )),
            }
        })
    }
}

/// A Raft RPC's kind and the node it claims to come from: the leader of its
/// vote for AppendEntries and InstallSnapshot, the candidate for a Vote.
fn raft_sender_claim(req: &PeerRequest) -> Option<(&'static str, Option<NodeId>)> {
    match req {
        PeerRequest::AppendEntries(r) => {
            Some(("raft.append-entries", r.vote.leader_id().voted_for()))
        }
        PeerRequest::InstallSnapshot(r) => {
            Some(("raft.install-snapshot", r.vote.leader_id().voted_for()))
        }
        PeerRequest::Vote(r) => Some(("raft.vote", r.vote.leader_id().voted_for())),
        _ => None,
    }
}

impl Node {
    /// A Raft RPC speaks only for the node whose certificate sent it (no
    /// node can stand in for the leader or a candidate), and only members
    /// send them once this node belongs to a cluster.
    fn check_raft_sender(&self, from: NodeId, claimed: Option<NodeId>) -> Result<(), String> {
        if claimed != Some(from) {
            return Err(format!(
                "node {from} sent a message on behalf of {}; a node speaks only for itself",
                claimed.map_or("nobody".to_string(), |c| format!("node {c}"))
            ));
        }
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let has_members = membership.nodes().next().is_some();
        if has_members && membership.get_node(&from).is_none() {
            return Err(format!(
                "node {from} is not a member of this cluster; add it with a join first"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod digest_tests {
    use super::*;

    #[test]
    fn the_digest_is_hashed_at_most_once_per_interval() {
        let cache = DigestCache::default();
        let mut hashed = 0;
        let mut hash = |d: u8| {
            hashed += 1;
            [d; 32]
        };
        assert_eq!(cache.at(5, || hash(5)), (5, [5; 32]));
        assert_eq!(cache.at(5, || hash(9)), (5, [5; 32]), "same index: cached");
        assert_eq!(
            cache.at(6, || hash(6)),
            (5, [5; 32]),
            "a newer index within the interval gets the last digest and its index"
        );
        let long_ago = std::time::Instant::now()
            .checked_sub(DIGEST_EVERY * 2)
            .expect("a clock this old");
        *cache.0.lock().expect("lock") = Some((5, [5; 32], long_ago));
        assert_eq!(cache.at(6, || hash(6)), (6, [6; 32]));
        assert_eq!(hashed, 2);
    }
}
