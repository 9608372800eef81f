//! The AWS KMS endpoint spoken from outside Rust: `qk dev up` a real 3-node
//! cluster, create AWS access keys with `qk kms credentials create`, and run
//! tests/kms/kms_test.py with boto3 and the AWS Encryption SDK, installed
//! into a fresh venv by this test. Then the audit must show every call under
//! the principal the access key belongs to.
//!
//! Needs `python3` (with the venv module) and the Python package index; without
//! either the test fails with a message saying so rather than skipping.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{ok_output, Cluster};
use serde_json::Value;

const BOTO3: &str = "boto3==1.44.18";
const ENCRYPTION_SDK: &str = "aws-encryption-sdk==4.0.7";

fn venv(root: &Path) -> PathBuf {
    let venv = root.join("venv");
    for package in [BOTO3, ENCRYPTION_SDK] {
        common::venv_with(&venv, package).unwrap_or_else(|e| {
            panic!("{e}; this test needs python3 and the Python package index and does not skip")
        });
    }
    venv.join("bin").join("python")
}

/// `qk kms credentials create` as admin; its JSON answer.
fn credential(c: &Cluster, admin: &str, principal: &str, ttl: &str) -> Value {
    let out = c.run(
        Some(admin),
        &[
            "kms",
            "credentials",
            "create",
            "--principal",
            principal,
            "--ttl",
            ttl,
            "-o",
            "json",
        ],
        None,
    );
    let out = ok_output("qk kms credentials create", out);
    serde_json::from_slice(&out.stdout).expect("qk kms credentials create prints JSON")
}

/// `<access key id>:<secret>` of a created credential.
fn pair(v: &Value) -> String {
    format!(
        "{}:{}",
        v["access_key_id"].as_str().expect("access key id"),
        v["secret_access_key"].as_str().expect("secret")
    )
}

/// A key `gated` whose decryption needs one approver's approval, and a
/// token of principal `approver` (self-issued with its client certificate).
fn gated_key_and_approver(c: &Cluster) -> String {
    let ok = |what: &str, args: &[&str]| ok_output(what, c.run(None, args, None));
    ok(
        "principal create",
        &["principal", "create", "approver", "--role", "approver"],
    );
    let token = c.self_issued_token("approver", "1h");
    ok("key create", &["key", "create", "gated"]);
    let rule = r#"{"rules": [], "approval": {"required": 1, "approvers": ["role:approver"], "permissions": ["decrypt"]}}"#;
    let file = c.cwd().join("gated.json");
    std::fs::write(&file, rule).expect("policy file");
    ok(
        "policy set",
        &["policy", "set", "gated", "--file", &file.to_string_lossy()],
    );
    token
}

/// The API URL of the dev cluster's second node (the profile names node 1).
fn second_node_url(first: &str) -> String {
    let (host, port) = first.rsplit_once(':').expect("url with a port");
    let port: u16 = port.trim_end_matches('/').parse().expect("port");
    format!("{host}:{}", port + 1)
}

#[test]
fn boto3_and_the_aws_encryption_sdk_use_the_kms_endpoint() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/kms/kms_test.py");
    assert!(script.is_file(), "missing {}", script.display());
    let work = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let python = venv(work.path());
    eprintln!(
        "venv with {BOTO3} and {ENCRYPTION_SDK} ready in {:?}",
        started.elapsed()
    );

    // 35000+: the other tests use 20000-34600.
    let base = 35_000 + (std::process::id() % 150) * 10;
    let c = Cluster::up(3, u16::try_from(base).expect("port"));
    let admin = c.admin_token();
    for (name, role) in [("svc", "operator"), ("reader", "auditor")] {
        let mut args = vec!["principal", "create", name, "--role", role];
        if name == "svc" {
            args.extend(["--role", "key-user"]);
        }
        ok_output("qk principal create", c.run(Some(&admin), &args, None));
    }
    let refused = c.run(
        Some(&admin),
        &[
            "kms",
            "credentials",
            "create",
            "--principal",
            "admin",
            "--ttl",
            "1h",
        ],
        None,
    );
    assert!(
        !refused.status.success() && common::stderr(&refused).contains("has the admin role"),
        "an AWS key for an admin must be refused: {}",
        common::stderr(&refused)
    );
    let svc = credential(&c, &admin, "svc", "1h");
    assert_eq!(svc["node"], 1, "bound to the profile's first node: {svc}");
    let expired = credential(&c, &admin, "svc", "1s");
    let revoked = credential(&c, &admin, "svc", "1h");
    let revoked_id = revoked["access_key_id"].as_str().expect("id").to_owned();
    ok_output(
        "qk kms credentials revoke",
        c.run(
            Some(&admin),
            &["kms", "credentials", "revoke", &revoked_id],
            None,
        ),
    );
    let reader = credential(&c, &admin, "reader", "1h");
    let approver = gated_key_and_approver(&c);
    std::thread::sleep(Duration::from_secs(2));

    let env: BTreeMap<String, String> =
        serde_json::from_value(svc["env"].clone()).expect("env printed");
    let url = c.api_url();
    assert_eq!(env["AWS_ENDPOINT_URL_KMS"], url.trim_end_matches('/'));
    let mut cmd = Command::new(&python);
    for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("AWS_")) {
        cmd.env_remove(name);
    }
    cmd.arg(&script)
        .envs(&env)
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("QK_EXPIRED_KEY", pair(&expired))
        .env("QK_REVOKED_KEY", pair(&revoked))
        .env("QK_READER_KEY", pair(&reader))
        .env("QK_OTHER_NODE_URL", second_node_url(&url))
        .env("QK_BIN", env!("CARGO_BIN_EXE_qk"))
        .env("QK_CWD", c.cwd())
        .env("QK_APPROVER_TOKEN", &approver);
    common::run_script(cmd, "kms_test.py", &c, "ALL CHECKS PASSED");
    audit_names_the_principal(&c, &admin);
    no_bearer_use(&c, &svc, &url);
}

/// The secret access key is no bearer token, at its node or any other.
fn no_bearer_use(c: &Cluster, svc: &Value, url: &str) {
    let id = svc["record"]["id"].as_str().expect("token id");
    let secret = svc["secret_access_key"].as_str().expect("secret");
    let token = format!("qkt.{id}.{secret}");
    for node in [url.to_owned(), second_node_url(url)] {
        let out = c.run(Some(&token), &["--addr", &node, "token", "whoami"], None);
        assert!(
            !out.status.success() && common::stderr(&out).contains("not a bearer token"),
            "the AWS secret worked as a bearer token at {node}: {}",
            common::stderr(&out)
        );
    }
}

/// The KMS calls are in the audit as `svc`'s, as the native API's would be.
fn audit_names_the_principal(c: &Cluster, admin: &str) {
    let out = ok_output(
        "qk audit export",
        c.run(Some(admin), &["audit", "export"], None),
    );
    let records: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("audit record"))
        .collect();
    let by = |principal: &str, operation: &str| {
        records
            .iter()
            .filter(|r| r["principal"] == principal && r["operation"] == operation)
            .count()
    };
    let changes = [
        "key.create",
        "key.set-tag",
        "key.set-schedule",
        "key.rotate",
        "version.disable",
        "version.enable",
        "version.schedule-destruction",
        "version.cancel-destruction",
    ];
    for operation in changes {
        assert!(
            by("svc", operation) > 0,
            "no {operation} by svc in the audit"
        );
    }
    let decrypts = records
        .iter()
        .filter(|r| {
            r["principal"] == "svc"
                && r["operation"]
                    .as_str()
                    .is_some_and(|o| o.contains("decrypt"))
        })
        .count();
    assert!(
        decrypts >= 5,
        "only {decrypts} decrypt records by svc in the audit"
    );
    let refused = records.iter().any(|r| {
        r["principal"] == "reader"
            && r["outcome"]
                .as_str()
                .is_some_and(|o| o.starts_with("refused"))
    });
    assert!(refused, "the reader's refused decrypt is not in the audit");
}
