//! `qk dev`: a real local cluster of `qk node start` processes on 127.0.0.1,
//! detached so it outlives the command. Layout of DIR: `pki/`, `node-N.toml`,
//! `data/node-N/`, `logs/node-N.log`, `pids/node-N.pid`, `profile.toml`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use qk_client::http::{ApiClient, ApiConfig};
use qk_node::config::{AuthSettings, Config, RaftSettings, TlsConfig};
use serde::Serialize;

use crate::args::{DevDirArgs, DevUpArgs};
use crate::output::{emit, yes_no, OutputFormat, Table};
use crate::settings::Profile;
use crate::spinner::with_spinner;
use crate::util::parse_duration_ms;

const MAX_NODES: u64 = 9;

fn config_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("node-{id}.toml"))
}

fn pid_path(dir: &Path, id: u64) -> PathBuf {
    dir.join("pids").join(format!("node-{id}.pid"))
}

fn log_path(dir: &Path, id: u64) -> PathBuf {
    dir.join("logs").join(format!("node-{id}.log"))
}

fn api_url(config: &Config) -> Option<String> {
    config.api_listen.map(|a| format!("https://{a}"))
}

/// Node ids with a config file in `dir`, ascending.
fn node_ids(dir: &Path) -> Vec<u64> {
    (1..=MAX_NODES)
        .filter(|id| config_path(dir, *id).exists())
        .collect()
}

fn read_pid(dir: &Path, id: u64) -> Option<u32> {
    std::fs::read_to_string(pid_path(dir, id))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` runs (a zombie does not count) and is node `id` of a dev cluster.
fn is_node_process(pid: u32, id: u64) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if !Path::new("/proc/self").exists() {
        return signal(pid, "-0");
    }
    let Ok(stat) = std::fs::read_to_string(proc_dir.join("stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    let cmdline = std::fs::read(proc_dir.join("cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    state != Some('Z') && cmdline.contains(&format!("node-{id}.toml"))
}

fn signal(pid: u32, sig: &str) -> bool {
    std::process::Command::new("kill")
        .arg(sig)
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn running_pid(dir: &Path, id: u64) -> Option<u32> {
    read_pid(dir, id).filter(|pid| is_node_process(*pid, id))
}

fn write_config(dir: &Path, id: u64, base_port: u16) -> Result<Config> {
    let offset = u16::try_from(id - 1)?;
    let config = Config {
        node_id: id,
        data_dir: PathBuf::from(format!("data/node-{id}")),
        listen: format!("127.0.0.1:{}", base_port + offset).parse()?,
        advertise: None,
        api_listen: Some(format!("127.0.0.1:{}", base_port + 100 + offset).parse()?),
        api_advertise: None,
        tls: TlsConfig {
            ca_cert: "pki/ca.pem".into(),
            cert: format!("pki/node-{id}.pem").into(),
            key: format!("pki/node-{id}.key").into(),
        },
        seal: Default::default(),
        raft: RaftSettings::default(),
        auth: AuthSettings::default(),
        start: Default::default(),
    };
    let path = config_path(dir, id);
    std::fs::write(&path, config.to_toml()?)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(config)
}

/// PKI (kept if present), configs, folders.
fn prepare(args: &DevUpArgs, dir: &Path) -> Result<Vec<Config>> {
    if args.nodes == 0 || args.nodes > MAX_NODES {
        bail!("--nodes must be between 1 and {MAX_NODES}");
    }
    if u32::from(args.base_port) + 100 + args.nodes as u32 > 65535 || args.base_port < 1024 {
        bail!("--base-port must leave room for the API ports (base-port + 100 + nodes <= 65535) and be 1024 or more");
    }
    if let Some(t) = args.threshold {
        if t == 0 || u64::from(t) > args.nodes {
            bail!("--threshold must be between 1 and --nodes ({})", args.nodes);
        }
    }
    let pki = dir.join("pki");
    if !pki.join("ca.pem").exists() {
        qk_node::pki::init(&pki)?;
        qk_node::pki::issue_client(&pki, "admin")?;
    }
    for sub in ["logs", "pids"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    let hosts = ["127.0.0.1".to_string(), "localhost".to_string()];
    (1..=args.nodes)
        .map(|id| {
            if !pki.join(format!("node-{id}.pem")).exists() {
                qk_node::pki::issue_node(&pki, id, &hosts)?;
            }
            write_config(dir, id, args.base_port)
        })
        .collect()
}

/// Starts `qk node start` for node `id`, detached, logging to logs/node-N.log.
fn spawn(dir: &Path, config: &Config, first_addr: &str) -> Result<u32> {
    let id = config.node_id;
    let fresh = !dir.join(&config.data_dir).exists();
    let mut extra: Vec<String> = Vec::new();
    if id == 1 {
        extra.push("--bootstrap".into());
    } else if fresh {
        extra.extend(["--join".into(), first_addr.to_string()]);
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log_path(dir, id))
        .with_context(|| format!("cannot open {}", log_path(dir, id).display()))?;
    let exe = std::env::current_exe().context("cannot find the qk executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("node")
        .arg("start")
        .arg("--config")
        .arg(config_path(dir, id))
        .args(&extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    #[cfg(unix)]
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start node {id}"))?;
    let pid = child.id();
    std::fs::write(pid_path(dir, id), format!("{pid}\n"))?;
    Ok(pid)
}

fn absolute(path: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(path).with_context(|| format!("cannot resolve {}", path.display()))
}

fn write_profile(dir: &Path, configs: &[Config], threshold: Option<u16>) -> Result<PathBuf> {
    let pki = absolute(&dir.join("pki"))?;
    let nodes: Vec<String> = configs.iter().filter_map(api_url).collect();
    let profile = Profile {
        addr: nodes.first().cloned(),
        nodes,
        ca_cert: Some(pki.join("ca.pem")),
        client_cert: Some(pki.join("client-admin.pem")),
        client_key: Some(pki.join("client-admin.key")),
        token: None,
        threshold,
    };
    let path = dir.join("profile.toml");
    let text = toml::to_string_pretty(&profile).context("cannot render the profile")?;
    std::fs::write(
        &path,
        format!("# Written by `qk dev up`: the admin client of this dev cluster.\n{text}"),
    )?;
    Ok(path)
}

/// An API client with the dev cluster's admin certificate.
fn dev_client(dir: &Path, configs: &[Config], timeout_ms: u64) -> Result<ApiClient> {
    let pki = dir.join("pki");
    let config = ApiConfig {
        urls: configs.iter().filter_map(api_url).collect(),
        ca_cert: pki.join("ca.pem"),
        client_identity: Some((pki.join("client-admin.pem"), pki.join("client-admin.key"))),
        token: None,
        timeout_ms,
    };
    Ok(ApiClient::new(&config)?)
}

fn load_configs(dir: &Path) -> Result<Vec<Config>> {
    let ids = node_ids(dir);
    if ids.is_empty() {
        bail!(
            "no dev cluster in {}; start one with `qk dev up --dir {}`",
            dir.display(),
            dir.display()
        );
    }
    ids.iter()
        .map(|id| Config::load(&config_path(dir, *id)))
        .collect()
}

pub async fn up(args: DevUpArgs, format: OutputFormat) -> Result<()> {
    let dir = args.dir.dir.clone();
    let running: Vec<u64> = node_ids(&dir)
        .into_iter()
        .filter(|id| running_pid(&dir, *id).is_some())
        .collect();
    if !running.is_empty() {
        eprintln!(
            "a dev cluster is already running in {} (nodes {running:?}); `qk dev down` stops it",
            dir.display()
        );
        return status(DevDirArgs { dir }, format).await;
    }
    let configs = prepare(&args, &dir)?;
    let first = configs[0].advertise_addr();
    for c in &configs {
        spawn(&dir, c, &first)?;
    }
    let profile = write_profile(&dir, &configs, args.threshold)?;
    if !args.no_wait {
        let timeout_ms = parse_duration_ms(&args.ready_timeout)?;
        let client = dev_client(&dir, &configs, 2000)?;
        let fut = wait_ready(&client, &configs, timeout_ms);
        if let Err(e) = with_spinner("waiting for every node to be ready", fut).await {
            print_log_tails(&dir, &configs, &client).await;
            return Err(e.context("the dev cluster is started but not ready; see the logs above, then `qk dev status` or `qk dev down`"));
        }
    }
    summary(&dir, &configs, &profile, args.no_wait, format)
}

async fn wait_ready(client: &ApiClient, configs: &[Config], timeout_ms: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    loop {
        let mut not_ready = Vec::new();
        for c in configs {
            let url = api_url(c).unwrap_or_default();
            if client.ready_at(&url).await.is_err() {
                not_ready.push(c.node_id);
            }
        }
        if not_ready.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nodes {not_ready:?} were not ready (GET /api/v1/health/ready) within {timeout_ms} ms");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn print_log_tails(dir: &Path, configs: &[Config], client: &ApiClient) {
    for c in configs {
        if client
            .ready_at(&api_url(c).unwrap_or_default())
            .await
            .is_ok()
        {
            continue;
        }
        let text = std::fs::read_to_string(log_path(dir, c.node_id)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        eprintln!(
            "--- node {} ({}), last lines:",
            c.node_id,
            log_path(dir, c.node_id).display()
        );
        for l in &lines[lines.len().saturating_sub(15)..] {
            eprintln!("{l}");
        }
    }
}

#[derive(Serialize)]
struct UpSummary {
    dir: PathBuf,
    profile: PathBuf,
    ready: bool,
    nodes: Vec<NodeStatus>,
}

fn summary(
    dir: &Path,
    configs: &[Config],
    profile: &Path,
    no_wait: bool,
    format: OutputFormat,
) -> Result<()> {
    let nodes = configs
        .iter()
        .map(|c| node_status(dir, c, !no_wait))
        .collect();
    let out = UpSummary {
        dir: absolute(dir)?,
        profile: absolute(profile)?,
        ready: !no_wait,
        nodes,
    };
    emit(format, &out, |s| {
        let mut text = format!(
            "quorumkey dev cluster {}: {} nodes in {}\n\n",
            if s.ready { "is up" } else { "is starting" },
            s.nodes.len(),
            s.dir.display()
        );
        text.push_str(&status_table(&s.nodes));
        text.push_str(&format!(
            "\nprofile: {} (admin client certificate; qk commands run here use it)\n\nnext:\n  qk cluster status\n  qk key create demo\n  echo hello | qk encrypt demo | qk decrypt\n  qk dev node stop 2     # see the quorum at work\n  qk dev down\n",
            s.profile.display()
        ));
        text
    })
}

#[derive(Serialize)]
struct NodeStatus {
    node_id: u64,
    pid: Option<u32>,
    alive: bool,
    ready: bool,
    quic: String,
    api: Option<String>,
    log: PathBuf,
}

fn node_status(dir: &Path, c: &Config, ready: bool) -> NodeStatus {
    let pid = read_pid(dir, c.node_id);
    NodeStatus {
        node_id: c.node_id,
        pid,
        alive: pid.is_some_and(|p| is_node_process(p, c.node_id)),
        ready,
        quic: c.advertise_addr(),
        api: api_url(c),
        log: log_path(dir, c.node_id),
    }
}

fn status_table(nodes: &[NodeStatus]) -> String {
    let mut t = Table::new(&["node", "pid", "alive", "ready", "api", "quic", "log"]);
    for n in nodes {
        t.row(vec![
            n.node_id.to_string(),
            n.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            yes_no(n.alive),
            yes_no(n.ready),
            n.api.clone().unwrap_or_else(|| "-".into()),
            n.quic.clone(),
            n.log.display().to_string(),
        ]);
    }
    t.render()
}

pub async fn status(args: DevDirArgs, format: OutputFormat) -> Result<()> {
    let configs = load_configs(&args.dir)?;
    let client = dev_client(&args.dir, &configs, 2000)?;
    let mut nodes = Vec::new();
    for c in &configs {
        let mut n = node_status(&args.dir, c, false);
        n.ready = n.alive
            && client
                .ready_at(&n.api.clone().unwrap_or_default())
                .await
                .is_ok();
        nodes.push(n);
    }
    emit(format, &nodes, |n| status_table(n))
}

/// SIGTERM, wait up to 15 s, then SIGKILL. Returns whether it was running.
async fn stop_node(dir: &Path, id: u64) -> Result<bool> {
    let Some(pid) = running_pid(dir, id) else {
        let _ = std::fs::remove_file(pid_path(dir, id));
        return Ok(false);
    };
    signal(pid, "-TERM");
    let deadline = Instant::now() + Duration::from_secs(15);
    while is_node_process(pid, id) {
        if Instant::now() > deadline {
            signal(pid, "-KILL");
            tokio::time::sleep(Duration::from_millis(200)).await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if is_node_process(pid, id) {
        bail!("node {id} (pid {pid}) does not stop; kill it by hand");
    }
    let _ = std::fs::remove_file(pid_path(dir, id));
    Ok(true)
}

pub async fn down(args: DevDirArgs, format: OutputFormat) -> Result<()> {
    let ids = node_ids(&args.dir);
    if ids.is_empty() {
        bail!("no dev cluster in {}", args.dir.display());
    }
    let mut stopped = Vec::new();
    for id in ids {
        if stop_node(&args.dir, id).await? {
            stopped.push(id);
        }
    }
    #[derive(Serialize)]
    struct Down {
        stopped: Vec<u64>,
    }
    emit(format, &Down { stopped }, |d| {
        format!(
            "stopped nodes {:?}; data kept in {} (`qk dev up` restarts, `rm -rf {}` starts over)\n",
            d.stopped,
            args.dir.display(),
            args.dir.display()
        )
    })
}

pub async fn node_stop(id: u64, args: DevDirArgs, format: OutputFormat) -> Result<()> {
    if !config_path(&args.dir, id).exists() {
        bail!(
            "no node {id} in {}; see `qk dev status`",
            args.dir.display()
        );
    }
    let was_running = stop_node(&args.dir, id).await?;
    let message = if was_running {
        format!("node {id} stopped")
    } else {
        format!("node {id} was not running")
    };
    emit(
        format,
        &NodeAction {
            node_id: id,
            running: false,
            message,
        },
        |a| format!("{}\n", a.message),
    )
}

#[derive(Serialize)]
struct NodeAction {
    node_id: u64,
    running: bool,
    message: String,
}

pub async fn node_start(id: u64, args: DevDirArgs, format: OutputFormat) -> Result<()> {
    let configs = load_configs(&args.dir)?;
    let config = configs.iter().find(|c| c.node_id == id).with_context(|| {
        format!(
            "no node {id} in {}; see `qk dev status`",
            args.dir.display()
        )
    })?;
    let message = match running_pid(&args.dir, id) {
        Some(pid) => format!("node {id} is already running (pid {pid})"),
        None => {
            let pid = spawn(&args.dir, config, &configs[0].advertise_addr())?;
            format!(
                "node {id} started (pid {pid}); log: {}",
                log_path(&args.dir, id).display()
            )
        }
    };
    emit(
        format,
        &NodeAction {
            node_id: id,
            running: true,
            message,
        },
        |a| format!("{}\n", a.message),
    )
}
