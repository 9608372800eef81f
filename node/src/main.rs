//! `qk-node`: one Quorumkey cluster member, plus PKI and local-cluster helpers.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use qk_node::{config, node, pki};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "qk-node", version, about = "Quorumkey cluster node")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node from its config file.
    ///
    /// Examples:
    ///   qk-node start --config node1.toml --bootstrap
    ///   qk-node start --config node2.toml --join 127.0.0.1:7101
    Start {
        #[arg(long)]
        config: PathBuf,
        /// Initialize a new one-node cluster with this node as its first member
        /// (ignored when the node's data directory already holds a cluster).
        #[arg(long, conflicts_with = "join")]
        bootstrap: bool,
        /// Ask the cluster at this address to add this node as a voter.
        #[arg(long)]
        join: Option<String>,
    },
    /// Create a cluster CA and certificates.
    #[command(subcommand)]
    Pki(pki::PkiCommand),
    /// Print an example config file.
    ConfigExample,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    qk_node::init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Start {
                config,
                bootstrap,
                join,
            } => node::run(&config, bootstrap, join).await,
            Command::Pki(cmd) => pki::run(cmd),
            Command::ConfigExample => {
                print!("{}", config::EXAMPLE);
                Ok(())
            }
        }
    })
}
