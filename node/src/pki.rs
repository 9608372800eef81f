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
    /// One-shot PKI of a whole cluster, for containers: a CA, node
    /// certificates 1..=NODES (host PREFIX<id>, 127.0.0.1 and localhost) and
    /// a client certificate. When DIR already holds the CA, it checks that
    /// every file is there and changes nothing, so it can run on every start.
    ///
    /// Example: qk-node pki cluster --dir /pki --nodes 3 --host-prefix qk --client admin
    Cluster {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=64))]
        nodes: u64,
        #[arg(long, default_value = "qk")]
        host_prefix: String,
        #[arg(long, default_value = "admin")]
        client: String,
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
        PkiCommand::Cluster {
            dir,
            nodes,
            host_prefix,
            client,
        } => cluster(&dir, nodes, &host_prefix, &client)?,
    }
    Ok(())
}

/// The files `pki cluster` writes into its directory.
fn cluster_files(nodes: u64, client: &str) -> Vec<String> {
    let mut files = vec!["ca.pem".to_owned(), "ca.key".to_owned()];
    for id in 1..=nodes {
        files.push(format!("node-{id}.pem"));
        files.push(format!("node-{id}.key"));
    }
    files.push(format!("client-{client}.pem"));
    files.push(format!("client-{client}.key"));
    files
}

fn cluster(dir: &Path, nodes: u64, host_prefix: &str, client: &str) -> Result<()> {
    if dir.join("ca.pem").exists() {
        let missing: Vec<String> = cluster_files(nodes, client)
            .into_iter()
            .filter(|f| !dir.join(f).is_file())
            .collect();
        if !missing.is_empty() {
            bail!(
                "{} holds a CA but not {}; issue them with `qk-node pki issue-node` and \
                 `issue-client`, or start from an empty directory",
                dir.display(),
                missing.join(", ")
            );
        }
        println!("{} already holds the cluster PKI; kept", dir.display());
        return Ok(());
    }
    init(dir)?;
    for id in 1..=nodes {
        let hosts = [
            format!("{host_prefix}{id}"),
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
        ];
        issue_node(dir, id, &hosts)?;
    }
    issue_client(dir, client)?;
    println!(
        "cluster PKI for nodes 1..={nodes} and client {client} written to {}",
        dir.display()
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_pki_is_written_once_then_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = dir.path().join("pki");
        cluster(&pki, 3, "qk", "admin").expect("first run writes");
        let files = cluster_files(3, "admin");
        assert_eq!(files.len(), 10);
        for f in &files {
            assert!(pki.join(f).is_file(), "{f}");
        }
        let ca = std::fs::read(pki.join("ca.pem")).expect("ca");
        cluster(&pki, 3, "qk", "admin").expect("second run keeps");
        assert_eq!(std::fs::read(pki.join("ca.pem")).expect("ca"), ca);
        std::fs::remove_file(pki.join("node-2.key")).expect("remove");
        let e = cluster(&pki, 3, "qk", "admin").expect_err("a missing file is named");
        assert!(e.to_string().contains("node-2.key"), "{e}");
    }
}
