//! End to end through the HTTPS API: `qk dev up` a 3-node cluster, create a
//! key, encrypt, decrypt client- and server-side (with one node down too),
//! rotate, rewrap, audit export + offline verify, destroy, `qk dev down`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

struct Cluster {
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = run(&self.dir, &["dev", "down", "--dir"], Some(&self.dir), None);
    }
}

fn run(cwd: &Path, args: &[&str], dir_arg: Option<&Path>, stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qk"));
    cmd.current_dir(cwd).args(args);
    if let Some(d) = dir_arg {
        cmd.arg(d);
    }
    cmd.env_remove("QK_ADDR")
        .env_remove("QK_TOKEN")
        .env_remove("QK_PROFILE");
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("qk runs");
    if let Some(mut pipe) = child.stdin.take() {
        let _ = pipe.write_all(stdin.unwrap_or_default());
    }
    child.wait_with_output().expect("qk finishes")
}

impl Cluster {
    fn up(nodes: &str) -> Cluster {
        let tmp = tempfile::tempdir().expect("tempdir");
        // `qk` run in tmp finds ./.qk-dev/profile.toml by itself.
        let dir = tmp.path().join(".qk-dev");
        // Distinct ports per test of this process (they run in parallel).
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let slot = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = (21_000 + (std::process::id() % 150) * 20 + slot * 10).to_string();
        let out = run(
            tmp.path(),
            &["dev", "up", "--nodes", nodes, "--base-port", &base],
            None,
            None,
        );
        assert!(
            out.status.success(),
            "dev up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Cluster { dir, _tmp: tmp }
    }

    fn cwd(&self) -> &Path {
        self._tmp.path()
    }

    /// Runs `qk args` in the cluster's working directory; asserts success.
    fn ok(&self, args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
        let out = run(self.cwd(), args, None, stdin);
        assert!(
            out.status.success(),
            "qk {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).expect("utf-8")
}

#[test]
fn key_lifecycle_and_data_through_the_cli() {
    let c = Cluster::up("3");
    let status = text(c.ok(&["cluster", "status", "-o", "json"], None));
    assert!(status.contains("\"leader\""), "{status}");

    c.ok(
        &[
            "key",
            "create",
            "payments",
            "--description",
            "e2e",
            "--threshold",
            "2",
            "--rotate-every",
            "30d",
        ],
        None,
    );
    let list = text(c.ok(&["key", "list"], None));
    assert!(
        list.contains("payments") && list.contains("enabled"),
        "{list}"
    );

    let ct = text(c.ok(
        &["encrypt", "payments", "--context", "tenant=acme"],
        Some(b"card 4111"),
    ));
    assert!(ct.starts_with("qk:v1:"), "{ct}");
    let client_side = c.ok(
        &["decrypt", "--context", "tenant=acme"],
        Some(ct.as_bytes()),
    );
    assert_eq!(client_side, b"card 4111");
    let server_side = c.ok(
        &["decrypt", "--server-side", "--context", "tenant=acme"],
        Some(ct.as_bytes()),
    );
    assert_eq!(server_side, b"card 4111");

    // Wrong context: refused with a nonzero exit.
    let bad = run(
        c.cwd(),
        &["decrypt", "--context", "tenant=evil"],
        None,
        Some(ct.as_bytes()),
    );
    assert_eq!(bad.status.code(), Some(1));

    // One holder down: 2 of 3 still decrypt.
    c.ok(
        &[
            "dev",
            "node",
            "stop",
            "3",
            "--dir",
            c.dir.to_str().unwrap_or_default(),
        ],
        None,
    );
    let degraded = c.ok(
        &["decrypt", "--context", "tenant=acme"],
        Some(ct.as_bytes()),
    );
    assert_eq!(degraded, b"card 4111");
    c.ok(
        &[
            "dev",
            "node",
            "start",
            "3",
            "--dir",
            c.dir.to_str().unwrap_or_default(),
        ],
        None,
    );

    c.ok(&["key", "rotate", "payments"], None);
    let show = text(c.ok(&["key", "show", "payments", "-o", "json"], None));
    assert!(show.contains("\"primary_version\": 2"), "{show}");
    let rewrapped = text(c.ok(&["rewrap", "--context", "tenant=acme"], Some(ct.as_bytes())));
    let again = c.ok(
        &["decrypt", "--context", "tenant=acme"],
        Some(rewrapped.as_bytes()),
    );
    assert_eq!(again, b"card 4111");

    let dk = text(c.ok(&["datakey", "payments", "-o", "json"], None));
    assert!(
        dk.contains("\"plaintext\"") && dk.contains("\"ciphertext\""),
        "{dk}"
    );

    let export = c.cwd().join("audit.jsonl");
    c.ok(
        &[
            "audit",
            "export",
            "--out",
            export.to_str().unwrap_or_default(),
        ],
        None,
    );
    c.ok(
        &[
            "audit",
            "verify",
            "--file",
            export.to_str().unwrap_or_default(),
        ],
        None,
    );
    c.ok(&["audit", "verify"], None);

    let destroyed = text(c.ok(
        &["key", "destroy", "payments", "--after", "1s", "-o", "json"],
        None,
    ));
    assert!(
        destroyed.contains("pending-destruction") || destroyed.contains("destroy"),
        "{destroyed}"
    );
}

#[test]
fn tokens_principals_and_whoami() {
    let c = Cluster::up("1");
    c.ok(
        &["principal", "create", "alice", "--role", "key-user"],
        None,
    );
    let token = text(c.ok(
        &["token", "create", "--principal", "alice", "--ttl", "1h"],
        None,
    ));
    let token = token.trim();
    assert!(token.starts_with("qkt."), "the token line");
    let me = text(c.ok(&["token", "whoami", "--token", token, "-o", "json"], None));
    assert!(me.contains("\"alice\""), "{me}");
    // key-user may not create keys.
    let denied = run(
        c.cwd(),
        &["key", "create", "nope", "--token", token],
        None,
        None,
    );
    assert_eq!(denied.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&denied.stderr).contains("denied"));
}
