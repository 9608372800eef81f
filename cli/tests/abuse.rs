//! Abuse against a real 3-node `qk dev up` cluster (issue: no input wedges
//! or starves the cluster): slow headers, a body over the limit, garbage
//! instead of TLS, 10,000 unauthenticated health and metrics requests,
//! random datagrams at every node's QUIC port, 2,000 idle TLS connections
//! from eight addresses, a break-glass decrypt flood — each while an honest
//! client keeps encrypting, decrypting and writing. The attacks are
//! `tests/abuse/abuse.py` (Python's standard library only); it prints what
//! each did, the honest client's p50/p99 per attack against its idle
//! figures (reported, not asserted), and what broke.

mod common;

use std::path::Path;
use std::process::Command;

use common::{print_logs, Cluster};

#[test]
fn no_abuse_by_one_client_wedges_the_cluster_or_starves_an_honest_client() {
    // 33000-34490 (APIs at +100): the other CLI tests use 20000-32590.
    let base = 33_000 + (std::process::id() % 150) * 10;
    let cluster = Cluster::up(3, u16::try_from(base).expect("port"));
    let token = cluster.admin_token();
    let rpc_ports: Vec<String> = (0..3).map(|i| (base + i).to_string()).collect();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/abuse/abuse.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(cluster.api_url())
        .arg(cluster.dir.join("pki").join("ca.pem"))
        .arg(rpc_ports.join(","))
        .env("QK_ABUSE_TOKEN", &token)
        .env("PYTHONUNBUFFERED", "1")
        .output()
        .expect("python3 runs the abuse script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = match serde_json::from_str(&stdout) {
        Ok(v) => v,
        Err(e) => {
            print_logs(&cluster.dir.join("logs"));
            panic!("abuse.py printed no report ({e}); exit {}", out.status);
        }
    };
    let failures = report["failures"].as_array().cloned().unwrap_or_default();
    if !failures.is_empty() {
        print_logs(&cluster.dir.join("logs"));
    }
    assert!(failures.is_empty(), "broken by abuse: {failures:#?}");
    let closed = report["slow_headers"]["closed_by_server"].as_u64();
    assert_eq!(
        closed,
        Some(100),
        "every slow-header connection closed: {report}"
    );
    assert_eq!(report["oversized_body"]["status"].as_u64(), Some(413));
}
