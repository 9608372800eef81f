//! The Vault Transit API spoken from outside Rust: `qk dev up` a real 3-node
//! cluster, create a token, and run tests/vault/transit_test.py with hvac
//! (Vault's Python client) installed into a fresh venv by this test.
//!
//! Needs `python3` (with the venv module) and access to the Python package
//! index for `pip install hvac==2.4.0`; without either the test fails with a
//! message saying so rather than skipping.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use common::Cluster;

const HVAC: &str = "hvac==2.4.0";

/// A venv under `root` with hvac installed; returns its python.
fn venv_with_hvac(root: &Path) -> PathBuf {
    common::venv_with(&root.join("venv"), HVAC).unwrap_or_else(|e| {
        panic!("{e}; this test needs python3 and the Python package index and does not skip")
    })
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

    let mut cmd = Command::new(&python);
    cmd.arg(&script)
        .env("QK_VAULT_URL", &url)
        .env("QK_VAULT_TOKEN", &token)
        .env("QK_VAULT_CA", cluster.dir.join("pki").join("ca.pem"))
        // hvac (requests) must use the given CA and talk to 127.0.0.1 directly.
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("VAULT_ADDR")
        .env_remove("VAULT_TOKEN");
    common::run_script(cmd, "transit_test.py", &cluster, "ALL CHECKS PASSED");
}
