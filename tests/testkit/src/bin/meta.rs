//! `qk-bench-meta`: replicated metadata write throughput and p50/p99 latency
//! on a 3-node loopback Quorumkey cluster at concurrency 1 and 64, and the
//! same workload against a 3-node etcd cluster on loopback in the same run.
//! Prints one JSON document.
//!
//! Run: `cargo build --release -p qk-node -p qk-testkit && target/release/qk-bench-meta`
//! (needs `etcd` on PATH: `apt-get install etcd-server`).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine;
use qk_raft::{PeerRequest, PeerResponse};
use qk_state::{Command as SmCommand, Operation, RequestId};
use qk_testkit::bench::{cores, cpu_model, sibling_binary};
use qk_testkit::cluster::{create_key, free_port, Cluster};
use qk_testkit::stats::{load, LoadResult};
use qk_wire::{ClientRequest, ClientResponse};
use serde_json::json;

const VALUE_BYTES: usize = 256;
const TAGS: u64 = 64;
/// Client connections to the leader.
const CONNECTIONS: usize = 8;

fn ops_for(concurrency: usize) -> usize {
    if concurrency == 1 {
        1000
    } else {
        20_000
    }
}

fn request_id(n: u64) -> RequestId {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&0x5142_454e_4348_0000u64.to_be_bytes());
    id[8..].copy_from_slice(&n.to_be_bytes());
    RequestId(id)
}

/// One write by the harness's client, handing over its session so the node
/// signs the command as the client (every write is signed by its author).
async fn qk_write(
    client: &qk_net::PeerClient,
    session: &qk_state::proof::Credential,
    n: u64,
) -> bool {
    let cmd = SmCommand {
        request_id: request_id(n),
        time_ms: 0,
        principal: String::new(),
        proof: None,
        op: Operation::SetTag {
            name: "bench".into(),
            tag: format!("t{}", n % TAGS),
            value: Some(vec![(n % 251) as u8; VALUE_BYTES]),
        },
    };
    matches!(
        client
            .call(&PeerRequest::ClientProven {
                min_applied: 0,
                credential: session.clone(),
                request: ClientRequest::Write(cmd),
            })
            .await,
        Ok(PeerResponse::Client(ClientResponse::Written { .. }))
    )
}

async fn bench_quorumkey(bin: &Path) -> Result<Vec<LoadResult>> {
    // The production log level (the test harness default is chattier).
    let mut cluster = Cluster::prepare(bin, 3, 5000);
    cluster.log_filter = "info,openraft=warn".into();
    cluster.boot();
    let leader = cluster
        .wait_status(1, |s| s.leader.is_some())
        .leader
        .unwrap_or(1);
    cluster
        .write(leader, create_key("bench"), u64::MAX)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create the bench key: {e}"))?;
    // Like etcd's HTTP client pool: several connections, not one.
    let clients: Vec<qk_net::PeerClient> = (0..CONNECTIONS)
        .map(|_| cluster.pool.any_node(&cluster.addr(leader)))
        .collect();
    let clients = std::sync::Arc::new(clients);
    let session = std::sync::Arc::new(cluster.pool.session()?);
    let mut out = Vec::new();
    let mut base = 0u64;
    for concurrency in [1usize, 64] {
        let c = clients.clone();
        let s = session.clone();
        let offset = base;
        out.push(
            load(concurrency, ops_for(concurrency), move |n| {
                let (c, s) = (c.clone(), s.clone());
                async move { qk_write(&c[(n as usize) % c.len()], &s, offset + n).await }
            })
            .await,
        );
        base += 1_000_000;
    }
    Ok(out)
}

struct Etcd {
    children: Vec<Child>,
    client_urls: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for c in &mut self.children {
            c.kill().ok();
            c.wait().ok();
        }
    }
}

/// `peer_tls`: encrypt member-to-member traffic (auto-generated certificates),
/// as Quorumkey always does between nodes.
fn start_etcd(peer_tls: bool) -> Result<Etcd> {
    let scheme = if peer_tls { "https" } else { "http" };
    let dir = tempfile::tempdir()?;
    let client: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peer: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let initial: Vec<String> = (0..3)
        .map(|i| format!("e{i}={scheme}://127.0.0.1:{}", peer[i]))
        .collect();
    let mut children = Vec::new();
    for i in 0..3 {
        let child = Command::new("etcd")
            .args(["--name", &format!("e{i}")])
            .arg("--data-dir")
            .arg(dir.path().join(format!("e{i}")))
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{}", client[i]),
            ])
            .args([
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{}", client[i]),
            ])
            .args([
                "--listen-peer-urls",
                &format!("{scheme}://127.0.0.1:{}", peer[i]),
            ])
            .args([
                "--initial-advertise-peer-urls",
                &format!("{scheme}://127.0.0.1:{}", peer[i]),
            ])
            .args(if peer_tls {
                &["--peer-auto-tls"][..]
            } else {
                &[][..]
            })
            .args(["--initial-cluster", &initial.join(",")])
            .args([
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "qk-bench",
            ])
            .args(["--logger", "zap", "--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(
                dir.path().join(format!("e{i}.log")),
            )?))
            .spawn()
            .context("cannot start etcd; install it with `apt-get install etcd-server`")?;
        children.push(child);
    }
    Ok(Etcd {
        children,
        client_urls: client
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect(),
        _dir: dir,
    })
}

/// The client URL of etcd's current leader (waits for one).
async fn etcd_leader(http: &reqwest::Client, etcd: &Etcd) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        for url in &etcd.client_urls {
            let resp = http
                .post(format!("{url}/v3/maintenance/status"))
                .json(&json!({}))
                .send()
                .await;
            if let Ok(r) = resp {
                if let Ok(v) = r.json::<serde_json::Value>().await {
                    let me = v["header"]["member_id"].as_str().unwrap_or("");
                    if !me.is_empty() && v["leader"].as_str() == Some(me) {
                        return Ok(url.clone());
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = std::fs::read_to_string(etcd._dir.path().join("e0.log")).unwrap_or_default();
    bail!("etcd elected no leader within 30 s; member e0 logged:\n{log}")
}

async fn bench_etcd(peer_tls: bool) -> Result<Vec<LoadResult>> {
    eprintln!("starting etcd (peer TLS: {peer_tls})");
    let etcd = start_etcd(peer_tls)?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(128)
        .build()?;
    let leader = etcd_leader(&http, &etcd).await?;
    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
    let mut out = Vec::new();
    for concurrency in [1usize, 64] {
        let http = http.clone();
        let url = format!("{leader}/v3/kv/put");
        out.push(
            load(concurrency, ops_for(concurrency), move |n| {
                let body = json!({
                    "key": B64.encode(format!("bench/t{}", n % TAGS)),
                    "value": B64.encode(vec![(n % 251) as u8; VALUE_BYTES]),
                });
                let req = http.post(url.clone()).json(&body);
                async move { matches!(req.send().await, Ok(r) if r.status().is_success()) }
            })
            .await,
        );
    }
    Ok(out)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let bin = sibling_binary("qk-node")?;
    let qk = bench_quorumkey(&bin).await?;
    let etcd = bench_etcd(false).await?;
    let etcd_tls = bench_etcd(true).await?;
    let ratio = |e: &[LoadResult], i: usize| {
        qk[i].ops_per_second / e[i].ops_per_second.max(f64::MIN_POSITIVE)
    };
    let report = json!({
        "benchmark": "replicated metadata writes, 3 nodes on loopback, fsync on",
        "value_bytes": VALUE_BYTES,
        "cpu": cpu_model(),
        "cores": cores(),
        "quorumkey": { "c1": qk[0], "c64": qk[1] },
        "etcd": { "version": etcd_version(), "api": "v3 JSON gateway over HTTP/1.1", "c1": etcd[0], "c64": etcd[1] },
        "etcd_peer_tls": { "api": "v3 JSON gateway over HTTP/1.1, members over TLS", "c1": etcd_tls[0], "c64": etcd_tls[1] },
        "throughput_ratio_qk_over_etcd": { "c1": ratio(&etcd, 0), "c64": ratio(&etcd, 1) },
        "throughput_ratio_qk_over_etcd_peer_tls": { "c1": ratio(&etcd_tls, 0), "c64": ratio(&etcd_tls, 1) },
        "target_c64_at_least_etcd": ratio(&etcd, 1) >= 1.0,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn etcd_version() -> String {
    Command::new("etcd")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_default()
}
