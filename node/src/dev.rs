//! `qk-node dev`: a real local cluster of qk-node processes on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use qk_raft::{ClientRequest, ClientResponse};
use tokio::process::{Child, Command};

use crate::config::{Config, RaftSettings, TlsConfig};

#[derive(Args, Debug)]
pub struct DevArgs {
    /// Number of nodes (1 to 9).
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Directory for PKI, configs, data and logs (reused if it exists).
    #[arg(long, default_value = ".qk-dev")]
    pub dir: PathBuf,
    /// Port of node 1; node N listens on base_port + N - 1.
    #[arg(long, default_value_t = 7101)]
    pub base_port: u16,
}

/// Address of node 1 of a dev cluster directory.
pub fn first_addr(dir: &Path) -> Result<String> {
    let config = Config::load(&dir.join("node-1.toml")).with_context(|| {
        format!(
            "no dev cluster in {}; start one with `qk-node dev`",
            dir.display()
        )
    })?;
    Ok(config.advertise_addr())
}

fn prepare(args: &DevArgs) -> Result<Vec<PathBuf>> {
    if args.nodes == 0 || args.nodes > 9 {
        bail!("--nodes must be between 1 and 9");
    }
    let pki = args.dir.join("pki");
    if !pki.join("ca.pem").exists() {
        crate::pki::init(&pki)?;
        crate::pki::issue_client(&pki, "admin")?;
    }
    let mut paths = Vec::new();
    for id in 1..=args.nodes {
        if !pki.join(format!("node-{id}.pem")).exists() {
            crate::pki::issue_node(
                &pki,
                id,
                &["127.0.0.1".to_string(), "localhost".to_string()],
            )?;
        }
        let path = args.dir.join(format!("node-{id}.toml"));
        let port = args.base_port + u16::try_from(id - 1).unwrap_or(0);
        let config = Config {
            node_id: id,
            data_dir: PathBuf::from(format!("data/node-{id}")),
            listen: format!("127.0.0.1:{port}").parse()?,
            advertise: None,
            tls: TlsConfig {
                ca_cert: "pki/ca.pem".into(),
                cert: format!("pki/node-{id}.pem").into(),
                key: format!("pki/node-{id}.key").into(),
            },
            seal: Default::default(),
            raft: RaftSettings::default(),
            api_listen: None,
            auth: Default::default(),
        };
        std::fs::write(&path, config.to_toml()?)
            .with_context(|| format!("cannot write {}", path.display()))?;
        paths.push(path);
    }
    std::fs::create_dir_all(args.dir.join("logs"))?;
    Ok(paths)
}

fn spawn(dir: &Path, config: &Path, id: usize, extra: &[String]) -> Result<Child> {
    let log = std::fs::File::create(dir.join("logs").join(format!("node-{id}.log")))?;
    let exe = std::env::current_exe().context("cannot find the qk-node executable")?;
    Command::new(exe)
        .arg("start")
        .arg("--config")
        .arg(config)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .context("cannot start a qk-node process")
}

async fn wait_for_voters(target: &crate::ctl::Target, count: usize) -> Result<qk_raft::NodeStatus> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(ClientResponse::Status(s)) = crate::ctl::call(target, ClientRequest::Status).await
        {
            if s.leader.is_some() && s.voters.len() >= count {
                return Ok(s);
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "the cluster did not become healthy within 60 s; see the logs in the logs/ folder"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn run(args: DevArgs) -> Result<()> {
    let configs = prepare(&args)?;
    let first = format!("127.0.0.1:{}", args.base_port);
    let mut children = vec![spawn(&args.dir, &configs[0], 1, &["--bootstrap".into()])?];
    for (i, path) in configs.iter().enumerate().skip(1) {
        children.push(spawn(
            &args.dir,
            path,
            i + 1,
            &["--join".into(), first.clone()],
        )?);
    }
    let ctl = crate::ctl::CtlArgs {
        dir: args.dir.clone(),
        addr: Some(first.clone()),
        ca: None,
        cert: None,
        key: None,
        command: crate::ctl::CtlCommand::Status,
    };
    let target = crate::ctl::connect(&ctl)?;
    let status = wait_for_voters(&target, configs.len()).await?;
    println!(
        "quorumkey dev cluster is up: {} nodes, leader node {}, term {} (dir {})",
        status.voters.len(),
        status.leader.unwrap_or(0),
        status.term,
        args.dir.display()
    );
    println!("try: cargo run -p qk-node -- ctl status   (Ctrl-C here stops the cluster)");
    tokio::signal::ctrl_c().await.ok();
    for child in &mut children {
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
    }
    for child in &mut children {
        let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
    }
    println!("cluster stopped; data kept in {}", args.dir.display());
    Ok(())
}
