//! `qk-node pki`: cluster CA and certificates.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use qk_net::pki::ClusterCa;

#[derive(Subcommand, Debug)]
pub enum PkiCommand {
    /// Create a new cluster CA in DIR (ca.pem, ca.key).
    ///
    /// Example: qk-node pki init --dir pki
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a node certificate (node-ID.pem, node-ID.key) from the CA in DIR.
    ///
    /// Example: qk-node pki issue-node --dir pki --id 2 --host 10.0.0.2
    IssueNode {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        id: u64,
        /// Host names or IP addresses the node is reached at (repeatable).
        #[arg(long = "host", default_value = "127.0.0.1")]
        hosts: Vec<String>,
    },
    /// Issue a client certificate (client-NAME.pem, client-NAME.key).
    ///
    /// Example: qk-node pki issue-client --dir pki --name admin
    IssueClient {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        name: String,
    },
}

pub fn run(cmd: PkiCommand) -> Result<()> {
    match cmd {
        PkiCommand::Init { dir } => {
            init(&dir)?;
            println!("cluster CA written to {}", dir.join("ca.pem").display());
        }
        PkiCommand::IssueNode { dir, id, hosts } => {
            let (cert, key) = issue_node(&dir, id, &hosts)?;
            println!("node {id}: {} {}", cert.display(), key.display());
        }
        PkiCommand::IssueClient { dir, name } => {
            let (cert, key) = issue_client(&dir, &name)?;
            println!("client {name}: {} {}", cert.display(), key.display());
        }
    }
    Ok(())
}

pub fn init(dir: &Path) -> Result<()> {
    if dir.join("ca.pem").exists() {
        bail!(
            "{} already holds a CA; refusing to overwrite it",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ca = ClusterCa::generate("quorumkey cluster CA").context("cannot generate the CA")?;
    ca.save(&dir.join("ca.pem"), &dir.join("ca.key"))
        .context("cannot save the CA")?;
    Ok(())
}

fn load_ca(dir: &Path) -> Result<ClusterCa> {
    ClusterCa::load(&dir.join("ca.pem"), &dir.join("ca.key")).with_context(|| {
        format!(
            "cannot load the CA from {}; create one with `qk-node pki init --dir {}`",
            dir.display(),
            dir.display()
        )
    })
}

pub fn issue_node(dir: &Path, id: u64, hosts: &[String]) -> Result<(PathBuf, PathBuf)> {
    let ca = load_ca(dir)?;
    let issued = ca
        .issue_node(id, hosts)
        .context("cannot issue the node certificate")?;
    let cert = dir.join(format!("node-{id}.pem"));
    let key = dir.join(format!("node-{id}.key"));
    issued
        .save(&cert, &key)
        .context("cannot save the node certificate")?;
    Ok((cert, key))
}

pub fn issue_client(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
    let ca = load_ca(dir)?;
    let issued = ca
        .issue_client(name)
        .context("cannot issue the client certificate")?;
    let cert = dir.join(format!("client-{name}.pem"));
    let key = dir.join(format!("client-{name}.key"));
    issued
        .save(&cert, &key)
        .context("cannot save the client certificate")?;
    Ok((cert, key))
}
