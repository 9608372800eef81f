//! The node's TOML configuration. Every field is documented in
//! `docs/OPERATIONS.md`; `qk-node config-example` prints a commented example.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// This node's id; must match the id in its certificate. Never reuse an id.
    pub node_id: u64,
    /// Directory for the Raft log, state and snapshots (created if missing).
    pub data_dir: PathBuf,
    /// Address the QUIC endpoint binds (Raft and cluster RPCs).
    pub listen: SocketAddr,
    /// Address other nodes dial; defaults to `listen`.
    #[serde(default)]
    pub advertise: Option<String>,
    /// Address the HTTPS API binds (native API, Vault Transit, metrics);
    /// none: no HTTPS API on this node.
    #[serde(default)]
    pub api_listen: Option<SocketAddr>,
    /// URL clients and other nodes use for the HTTPS API; defaults to
    /// `https://<api_listen>`.
    #[serde(default)]
    pub api_advertise: Option<String>,
    pub tls: TlsConfig,
    #[serde(default)]
    pub seal: SealSettings,
    #[serde(default)]
    pub raft: RaftSettings,
    #[serde(default)]
    pub auth: AuthSettings,
    #[serde(default)]
    pub start: StartSettings,
}

/// How the node finds its cluster when `start` has neither `--bootstrap`
/// nor `--join`: for orchestrators (a Kubernetes StatefulSet) that give
/// every node the same command line and each its own config file.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StartSettings {
    /// As `--bootstrap`: a new one-node cluster when the data directory is
    /// empty (ignored when it holds one).
    pub bootstrap: bool,
    /// As `--join ADDR`: ask the node at ADDR to add this one.
    pub join: Option<String>,
}

/// Access control bootstrap.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// The principal the bootstrapping node creates with the admin role
    /// (authenticate as it with a client certificate of this name).
    pub initial_admin: String,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            initial_admin: "admin".into(),
        }
    }
}

/// Where the node seal key comes from. With neither field set, the key file
/// is `<data_dir>/seal.key`, created (mode 0600) when the node first starts
/// with an empty data directory.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealSettings {
    /// A 32-byte key file, mode 0600.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// A file holding a passphrase; the key is derived with Argon2id (the salt
    /// is kept in `<data_dir>/seal.salt`).
    #[serde(default)]
    pub passphrase_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The cluster CA certificate (PEM). Only peers it signed are accepted.
    pub ca_cert: PathBuf,
    /// This node's certificate (PEM), issued by the cluster CA for `node_id`.
    pub cert: PathBuf,
    /// This node's private key (PEM); must not be readable by group or others.
    pub key: PathBuf,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSettings {
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_after_entries: u64,
    /// Entries kept in the log behind a snapshot (for slow followers).
    pub keep_entries_after_snapshot: u64,
    /// Upper bound on one Raft RPC, after which the peer counts as unreachable.
    pub rpc_timeout_ms: u64,
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 400,
            election_timeout_max_ms: 800,
            snapshot_after_entries: 5000,
            keep_entries_after_snapshot: 1000,
            rpc_timeout_ms: 2000,
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let mut config: Config = toml::from_str(&text).with_context(|| {
            format!(
                "config file {} is not valid; see docs/OPERATIONS.md for the fields",
                path.display()
            )
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_relative_paths(base);
        config.validate()?;
        Ok(config)
    }

    fn resolve_relative_paths(&mut self, base: &Path) {
        let optional = [&mut self.seal.key_file, &mut self.seal.passphrase_file];
        for p in optional.into_iter().flatten() {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        for p in [
            &mut self.data_dir,
            &mut self.tls.ca_cert,
            &mut self.tls.cert,
            &mut self.tls.key,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.node_id == 0 {
            bail!("node_id must be 1 or more");
        }
        let r = &self.raft;
        if r.heartbeat_interval_ms == 0 || r.election_timeout_min_ms <= r.heartbeat_interval_ms {
            bail!(
                "raft.election_timeout_min_ms must be larger than raft.heartbeat_interval_ms (> 0)"
            );
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            bail!("raft.election_timeout_max_ms must be larger than raft.election_timeout_min_ms");
        }
        if self.seal.key_file.is_some() && self.seal.passphrase_file.is_some() {
            bail!("set either seal.key_file or seal.passphrase_file, not both");
        }
        if self.start.bootstrap && self.start.join.is_some() {
            bail!("set either start.bootstrap or start.join, not both");
        }
        if r.snapshot_after_entries == 0 {
            bail!("raft.snapshot_after_entries must be 1 or more");
        }
        Ok(())
    }

    pub fn advertise_addr(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }

    pub fn api_url(&self) -> String {
        match (&self.api_advertise, self.api_listen) {
            (Some(url), _) => url.clone(),
            (None, Some(addr)) => format!("https://{addr}"),
            (None, None) => String::new(),
        }
    }

    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).context("cannot render config as TOML")
    }
}

/// A commented example, printed by `qk-node config-example`.
pub const EXAMPLE: &str = r#"# Quorumkey node configuration (TOML). Relative paths are relative to this file.

# This node's id. It must match the id in the node certificate and never be reused.
node_id = 1
# Raft log, state machine and snapshots live here (created if missing).
data_dir = "data/node1"
# QUIC endpoint for Raft and cluster RPCs.
listen = "127.0.0.1:7101"
# Address other nodes dial (defaults to `listen`).
# advertise = "10.0.0.1:7101"
# HTTPS API (native JSON API, Vault Transit, /metrics); omit to serve none.
api_listen = "127.0.0.1:7201"
# URL others use for it (defaults to https://<api_listen>).
# api_advertise = "https://kms1.example.com:7201"

[tls]
# Cluster CA certificate: only peers it signed are accepted.
ca_cert = "pki/ca.pem"
# This node's certificate and key, issued with `qk-node pki issue-node --id 1`.
cert = "pki/node-1.pem"
key = "pki/node-1.key"

[seal]
# The node seal key that seals every share at rest. Default: <data_dir>/seal.key,
# created with mode 0600 when the node first starts. Or derive it from a passphrase
# (the file must be mode 0600, like the key file):
# passphrase_file = "/run/secrets/qk-seal-passphrase"

[raft]
heartbeat_interval_ms = 100
election_timeout_min_ms = 400
election_timeout_max_ms = 800
# Snapshot after this many applied entries; keep this many entries behind it.
snapshot_after_entries = 5000
keep_entries_after_snapshot = 1000
# A Raft RPC slower than this counts as a lost message.
rpc_timeout_ms = 2000

[auth]
# Created with the admin role when the cluster is bootstrapped; authenticate as
# it with a client certificate of this name (`qk pki issue --client admin`).
initial_admin = "admin"

# [start]
# What `qk-node start` does without --bootstrap or --join (the flags win):
# bootstrap = true                    # a new cluster on an empty data directory
# join = "kms1.example.com:7101"      # or ask this node to add this one
"#;
