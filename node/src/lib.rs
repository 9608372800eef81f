//! The Quorumkey node: one cluster member (Raft, storage, quorum protocols,
//! the QUIC RPC server and the HTTPS API), plus PKI and local-cluster helpers.
//! The `qk-node` binary and the `qk` CLI (`qk node start`) both run it.
#![forbid(unsafe_code)]

mod applied;
mod audit;
pub mod config;
mod io;
mod maintenance;
pub mod node;
pub mod pki;
mod proposer;
mod quorum;

pub use node::run;

/// Logs to stderr, filtered by `QK_LOG` (default `info,openraft=warn`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("QK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
