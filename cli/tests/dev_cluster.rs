//! `qk dev up|status|node stop|node start|down` with real node processes.
//! `--no-wait` skips the readiness probe (the e2e tests wait for a ready
//! cluster); this checks process management and the profile.

mod common;

use std::path::Path;
use std::process::Output;

/// `qk args --dir dir`, run in the directory that holds `dir`.
fn qk(dir: &Path, args: &[&str]) -> Output {
    let cwd = dir.parent().expect("the cluster dir has a parent");
    let dir_arg = dir.to_str().expect("a UTF-8 path");
    let out = common::qk(cwd, None, &[args, &["--dir", dir_arg]].concat(), None);
    if !out.status.success() {
        eprintln!("qk {args:?} failed: {}", common::stderr(&out));
    }
    out
}

fn alive(dir: &Path) -> Vec<(u64, bool)> {
    let out = qk(dir, &["dev", "status", "-o", "json"]);
    assert!(out.status.success());
    #[derive(serde::Deserialize)]
    struct Node {
        node_id: u64,
        alive: bool,
    }
    let nodes: Vec<Node> = serde_json::from_slice(&out.stdout).expect("status is JSON");
    nodes.into_iter().map(|n| (n.node_id, n.alive)).collect()
}

#[test]
fn dev_up_status_node_stop_start_and_down() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("cluster");
    let base = (20_000 + (std::process::id() % 400) * 10).to_string();
    let up = qk(
        &dir,
        &[
            "dev",
            "up",
            "--nodes",
            "2",
            "--base-port",
            &base,
            "--no-wait",
        ],
    );
    assert!(up.status.success());
    let summary = String::from_utf8_lossy(&up.stdout);
    assert!(summary.contains("2 nodes"), "{summary}");

    let profile = std::fs::read_to_string(dir.join("profile.toml")).expect("profile written");
    let api = format!(
        "https://127.0.0.1:{}",
        base.parse::<u16>().unwrap_or(0) + 100
    );
    assert!(profile.contains(&format!("addr = \"{api}\"")), "{profile}");
    assert!(profile.contains("client-admin.pem"), "{profile}");
    let config = std::fs::read_to_string(dir.join("node-2.toml")).expect("config");
    assert!(
        config.contains("api_listen") && config.contains("initial_admin"),
        "{config}"
    );

    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(
        alive(&dir),
        [(1, true), (2, true)],
        "see {}",
        dir.join("logs").display()
    );

    let again = qk(
        &dir,
        &[
            "dev",
            "up",
            "--nodes",
            "2",
            "--base-port",
            &base,
            "--no-wait",
        ],
    );
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already running"));

    assert!(qk(&dir, &["dev", "node", "stop", "2"]).status.success());
    assert_eq!(alive(&dir), [(1, true), (2, false)]);
    assert!(qk(&dir, &["dev", "node", "start", "2"]).status.success());
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(alive(&dir), [(1, true), (2, true)]);

    assert!(qk(&dir, &["dev", "down"]).status.success());
    assert_eq!(alive(&dir), [(1, false), (2, false)]);
}
