//! The Vault Transit API spoken from outside Rust: `qk dev up` a real 3-node
//! cluster, create a token, and run tests/vault/transit_test.py with hvac
//! (Vault's Python client) installed into a fresh venv by this test.
//!
//! Needs `python3` (with the venv module) and access to the Python package
//! index for `pip install hvac==2.4.0`; without either the test fails with a
//! message saying so rather than skipping.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use common::Cluster;

const HVAC: &str = "hvac==2.4.0";

fn ok(what: &str, out: Output) -> Output {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A venv under `root` with hvac installed; returns its python.
fn venv_with_hvac(root: &Path) -> PathBuf {
    let venv = root.join("venv");
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .unwrap_or_else(|e| panic!("cannot run python3 (needed for the hvac test): {e}"));
    ok("python3 -m venv", made);
    let python = venv.join("bin").join("python");
    let pip = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--timeout",
            "30",
            HVAC,
        ])
        .output()
        .expect("the venv's python runs");
    assert!(
        pip.status.success(),
        "pip install {HVAC} failed — is the Python package index reachable (proxy, \
         PIP_INDEX_URL)? This test needs it and does not skip.\nstderr:\n{}",
        String::from_utf8_lossy(&pip.stderr)
    );
    python
}

impl Cluster {
    fn api_url(&self) -> String {
        let profile =
            std::fs::read_to_string(self.dir.join("profile.toml")).expect("profile.toml written");
        profile
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim() == "addr").then(|| v.trim().trim_matches('"').to_owned())
            })
            .unwrap_or_else(|| panic!("no addr in profile.toml:\n{profile}"))
    }

    fn admin_token(&self) -> String {
        let out = ok(
            "qk token create",
            self.run(
                None,
                &[
                    "token",
                    "create",
                    "--principal",
                    "admin",
                    "--ttl",
                    "1h",
                    "--output",
                    "json",
                ],
                None,
            ),
        );
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("token create prints JSON");
        let token = v["token"].as_str().unwrap_or_default().to_owned();
        assert!(token.starts_with("qkt."), "token create printed {v}");
        token
    }
}

#[test]
fn hvac_speaks_vault_transit_to_a_dev_cluster() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/vault/transit_test.py");
    assert!(script.is_file(), "missing {}", script.display());

    let work = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let python = venv_with_hvac(work.path());
    eprintln!("venv with {HVAC} ready in {:?}", started.elapsed());

    let started = Instant::now();
    // 25000+: the other tests use 20000-24000.
    let base = 25_000 + (std::process::id() % 300) * 10;
    let cluster = Cluster::up(3, u16::try_from(base).expect("port"));
    let url = cluster.api_url();
    let token = cluster.admin_token();
    eprintln!("cluster up at {url} in {:?}", started.elapsed());

    let started = Instant::now();
    let out = Command::new(&python)
        .arg(&script)
        .env("QK_VAULT_URL", &url)
        .env("QK_VAULT_TOKEN", &token)
        .env("QK_VAULT_CA", cluster.dir.join("pki").join("ca.pem"))
        // hvac (requests) must use the given CA and talk to 127.0.0.1 directly.
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("VAULT_ADDR")
        .env_remove("VAULT_TOKEN")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .env("PYTHONUNBUFFERED", "1")
        .output()
        .expect("the venv's python runs the script");
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("transit_test.py ran in {:?}", started.elapsed());
    if !out.status.success() {
        print_logs(&cluster.dir.join("logs"));
    }
    assert!(
        out.status.success(),
        "transit_test.py failed ({}); the node logs are above",
        out.status
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("ALL CHECKS PASSED"));
}

/// The last lines of each node log (the tempdir is gone after the test).
fn print_logs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        eprintln!("---- {} (last 40 lines)", entry.path().display());
        for line in &lines[lines.len().saturating_sub(40)..] {
            eprintln!("{line}");
        }
    }
}
