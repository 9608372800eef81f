//! Shared by the CLI integration tests: run the `qk` binary in a directory
//! with no credential or address leaking in from the environment, and a
//! `qk dev up` cluster in a tempdir that `qk dev down` stops on drop.

// Each test crate uses its own subset of these helpers.
#![allow(dead_code)]

pub mod docker;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Variables that would point `qk` at another cluster or hand it a credential.
const QK_ENV: [&str; 6] = [
    "QK_ADDR",
    "QK_TOKEN",
    "QK_PROFILE",
    "QK_CA_CERT",
    "QK_CLIENT_CERT",
    "QK_CLIENT_KEY",
];

/// Runs `qk args` in `cwd` with `--token` appended when given and `stdin`
/// (none: empty) on its standard input; the `QK_*` environment is removed.
pub fn qk(cwd: &Path, token: Option<&str>, args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qk"));
    cmd.current_dir(cwd).args(args);
    if let Some(t) = token {
        cmd.args(["--token", t]);
    }
    for var in QK_ENV {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("qk runs");
    if let Some(mut pipe) = child.stdin.take() {
        let _ = pipe.write_all(stdin.unwrap_or_default());
    }
    child.wait_with_output().expect("qk finishes")
}

/// `qk`'s exit codes for a refusal, by its kind (docs/API.md, "Exit codes").
pub const EXIT_INVALID: i32 = 4;
pub const EXIT_UNAUTHENTICATED: i32 = 5;
pub const EXIT_DENIED: i32 = 6;

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `qk dev up` cluster in a tempdir (its profile in `./.qk-dev`, so `qk`
/// run in [`Cluster::cwd`] finds it by itself); `qk dev down` on drop.
pub struct Cluster {
    pub dir: PathBuf,
    tmp: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let dir = self.dir.to_string_lossy().into_owned();
        let out = qk(self.cwd(), None, &["dev", "down", "--dir", &dir], None);
        if !out.status.success() {
            eprintln!("qk dev down failed: {}", stderr(&out));
        }
    }
}

impl Cluster {
    /// `qk dev up --nodes <nodes> --base-port <base_port>`; each test picks
    /// its own port block so that parallel tests never share a port.
    pub fn up(nodes: u32, base_port: u16) -> Cluster {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join(".qk-dev");
        let (nodes, base) = (nodes.to_string(), base_port.to_string());
        let out = qk(
            tmp.path(),
            None,
            &["dev", "up", "--nodes", &nodes, "--base-port", &base],
            None,
        );
        // Built before the check, so that a half-started cluster is stopped.
        let cluster = Cluster { dir, tmp };
        assert!(
            out.status.success(),
            "qk dev up failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            stdout(&out),
            stderr(&out)
        );
        cluster
    }

    /// The tempdir `qk` runs in (it holds `.qk-dev/profile.toml`).
    pub fn cwd(&self) -> &Path {
        self.tmp.path()
    }

    /// Runs `qk args` in [`Cluster::cwd`], with `--token` when given.
    pub fn run(&self, token: Option<&str>, args: &[&str], stdin: Option<&[u8]>) -> Output {
        qk(self.cwd(), token, args, stdin)
    }
}

#[allow(unused_imports)] // used by the Vault tests only
pub use qk_testkit::python::venv_with;

/// `out`, or a panic showing what failed and its output.
pub fn ok_output(what: &str, out: Output) -> Output {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Cluster {
    /// The HTTPS API address `qk dev up` wrote into the profile.
    pub fn api_url(&self) -> String {
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

    /// A fresh one-hour token of the `admin` principal.
    pub fn admin_token(&self) -> String {
        token_printed(self.run(None, &ADMIN_TOKEN_ARGS, None))
    }
}

impl Cluster {
    /// A token of `name` (an approver's, say) issued by `name` itself with a
    /// client certificate of its own, checked with whoami: no one else may
    /// issue an approver's tokens.
    pub fn self_issued_token(&self, name: &str, ttl: &str) -> String {
        let pki = self.dir.join("pki");
        let pki_s = pki.to_string_lossy().into_owned();
        let issue = ["pki", "issue", "--dir", &pki_s, "--client", name];
        ok_output("qk pki issue", self.run(None, &issue, None));
        let cert = pki.join(format!("client-{name}.pem"));
        let key = pki.join(format!("client-{name}.key"));
        let (cert, key) = (cert.to_string_lossy(), key.to_string_lossy());
        let args = [
            "--client-cert",
            &cert,
            "--client-key",
            &key,
            "token",
            "create",
            "--principal",
            name,
            "--ttl",
            ttl,
            "-o",
            "json",
        ];
        let token = token_printed(self.run(None, &args, None));
        let me = ok_output(
            "qk token whoami",
            self.run(Some(&token), &["token", "whoami", "-o", "json"], None),
        );
        let me: serde_json::Value = serde_json::from_slice(&me.stdout).expect("whoami prints JSON");
        assert_eq!(me["principal"]["name"], name, "{me}");
        token
    }
}

/// Runs a check script (`cmd`, its environment set) against `cluster`:
/// prints its output and how long it took, the node logs when it failed,
/// and asserts it passed and printed `passed_line`.
pub fn run_script(mut cmd: Command, name: &str, cluster: &Cluster, passed_line: &str) {
    let started = std::time::Instant::now();
    let out = cmd
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .env("PYTHONUNBUFFERED", "1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    println!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    eprintln!("{name} ran in {:?}", started.elapsed());
    if !out.status.success() {
        print_logs(&cluster.dir.join("logs"));
    }
    assert!(
        out.status.success(),
        "{name} failed ({}); its output and the node logs are above",
        out.status
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(passed_line),
        "{name} did not print {passed_line:?}"
    );
}

/// `qk` arguments that mint a one-hour token of `admin`, printed as JSON.
pub const ADMIN_TOKEN_ARGS: [&str; 8] = [
    "token",
    "create",
    "--principal",
    "admin",
    "--ttl",
    "1h",
    "--output",
    "json",
];

/// The token text a successful `qk token create --output json` printed.
pub fn token_printed(out: Output) -> String {
    let out = ok_output("qk token create", out);
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("token create prints JSON");
    let token = v["token"].as_str().unwrap_or_default().to_owned();
    assert!(token.starts_with("qkt."), "token create printed {v}");
    token
}

/// The last lines of each node log (the tempdir is gone after the test).
pub fn print_logs(dir: &Path) {
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
