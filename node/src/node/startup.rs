//! Start-up: loading credentials, opening storage, starting Raft, the
//! network and the HTTPS API, bootstrapping or joining a cluster, and
//! shutting down.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use openraft::SnapshotPolicy;
use qk_net::{CaCert, Credentials, Dialer, NetConfig, NetworkFactory, Peer, RpcHandler, Server};
use qk_raft::{PeerRequest, PeerResponse, QkNode, Raft};
use qk_state::Operation;
use qk_types::NodeId as NodeIdT;
use qk_wire::{ClientRequest, ClientResponse};
use tracing::{info, warn};

use super::{api_backend, DigestCache, Node, NodeIo, JOIN_TIMEOUT};
use crate::applied::AppliedIndex;
use crate::config::Config;
use crate::maintenance::Schedule;
use crate::quorum::{Quorum, QuorumCore};

/// Loads the cluster CA and this process's credentials.
pub fn load_tls(ca: &Path, cert: &Path, key: &Path) -> Result<(CaCert, Credentials)> {
    let ca =
        CaCert::load(ca).with_context(|| format!("cannot load the cluster CA {}", ca.display()))?;
    let creds = Credentials::load(cert, key).with_context(|| {
        format!(
            "cannot load certificate {} and key {}",
            cert.display(),
            key.display()
        )
    })?;
    Ok((ca, creds))
}

pub fn net_config(request_timeout: Duration) -> NetConfig {
    let mut cfg = NetConfig::default();
    cfg.request_timeout = request_timeout;
    cfg
}

pub async fn run(config_path: &Path, bootstrap: bool, join: Option<String>) -> Result<()> {
    let config = Config::load(config_path)?;
    let (bootstrap, join) = if bootstrap || join.is_some() {
        (bootstrap, join)
    } else {
        (config.start.bootstrap, config.start.join.clone())
    };
    let (ca, creds) = load_tls(&config.tls.ca_cert, &config.tls.cert, &config.tls.key)?;
    if creds.peer() != &Peer::Node(config.node_id) {
        bail!(
            "certificate {} is for {}, not node {}; issue one with `qk-node pki issue-node --id {}`",
            config.tls.cert.display(),
            creds.peer(),
            config.node_id,
            config.node_id
        );
    }
    let (node, actions, audit_rx) = Node::start(&config, &ca, &creds).await?;
    let node = Arc::new(node);
    let io: Arc<dyn crate::io::Io> = Arc::new(NodeIo(node.clone()));
    tokio::spawn(node.quorum.clone().run(io.clone(), actions));
    tokio::spawn(crate::audit::run(audit_rx, io.clone()));
    if bootstrap {
        node.bootstrap(&config).await?;
    }
    let handler: Arc<dyn RpcHandler> = node.clone();
    let server = Server::bind(
        config.listen,
        &ca,
        &creds,
        net_config(Duration::from_secs(30)),
        handler,
    )
    .await
    .with_context(|| format!("cannot listen on {}", config.listen))?;
    info!(node_id = config.node_id, listen = %config.listen, "node started");
    let api = match config.api_listen {
        Some(addr) => {
            let backend = Arc::new(api_backend::ApiBackend(node.clone()));
            let api = qk_api::ApiServer::bind(addr, &creds, &ca, backend)
                .await
                .with_context(|| format!("cannot serve the HTTPS API on {addr}"))?;
            info!(api = %config.api_url(), "HTTPS API listening");
            Some(api)
        }
        None => None,
    };
    if let Some(seed) = join {
        node.join_cluster(&config, &seed).await?;
    }
    tokio::spawn(crate::maintenance::run(node.clone(), io.clone()));
    {
        let node = node.clone();
        tokio::spawn(async move { node.reconcile_shares(io).await });
    }
    shutdown_signal().await;
    info!("shutting down");
    if let Some(api) = api {
        api.shutdown().await;
    }
    server.shutdown().await;
    if let Err(e) = node.raft.shutdown().await {
        warn!("raft shutdown: {e}");
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn raft_config(config: &Config) -> Result<Arc<openraft::Config>> {
    let r = &config.raft;
    let c = openraft::Config {
        cluster_name: "quorumkey".into(),
        heartbeat_interval: r.heartbeat_interval_ms,
        election_timeout_min: r.election_timeout_min_ms,
        election_timeout_max: r.election_timeout_max_ms,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(r.snapshot_after_entries),
        max_in_snapshot_log_to_keep: r.keep_entries_after_snapshot,
        max_payload_entries: crate::proposer::MAX_ENTRIES_PER_APPEND,
        ..Default::default()
    };
    Ok(Arc::new(c.validate().context("invalid [raft] settings")?))
}

/// Opens storage, retrying briefly: a previous process may still hold the lock.
async fn open_storage(
    path: &Path,
    grants: Arc<qk_net::GrantVerifier>,
) -> Result<(qk_storage::LogStore, qk_storage::StateMachineStore)> {
    let mut attempt = 0;
    loop {
        let p = path.to_path_buf();
        let g = grants.clone();
        match tokio::task::spawn_blocking(move || qk_storage::open(&p, g)).await? {
            Ok(stores) => return Ok(stores),
            Err(e) if attempt < 20 => {
                attempt += 1;
                warn!("storage not ready ({e}); retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot open storage in {}", path.display()))
            }
        }
    }
}

/// Opens the sealed share store with the node seal key.
fn open_share_store(config: &Config, fresh: bool) -> Result<qk_storage::ShareStore> {
    use qk_storage::SealKey;
    let seal = match (&config.seal.passphrase_file, &config.seal.key_file) {
        (Some(pass), _) => SealKey::from_passphrase_file(pass, &config.data_dir.join("seal.salt"))?,
        (None, Some(file)) => SealKey::load_key_file(file)?,
        (None, None) => {
            let file = config.data_dir.join("seal.key");
            if !file.exists() && fresh {
                info!(path = %file.display(), "created the node seal key");
                SealKey::create_key_file(&file)?
            } else {
                SealKey::load_key_file(&file).with_context(|| {
                    format!(
                        "cannot load the seal key {}; restore it from backup",
                        file.display()
                    )
                })?
            }
        }
    };
    Ok(qk_storage::ShareStore::open(
        &config.data_dir.join("shares"),
        NodeIdT(config.node_id),
        seal,
    )?)
}

impl Node {
    async fn start(
        config: &Config,
        ca: &CaCert,
        creds: &Credentials,
    ) -> Result<(
        Node,
        tokio::sync::mpsc::UnboundedReceiver<Vec<qk_protocol::Action>>,
        tokio::sync::mpsc::Receiver<crate::audit::Queued>,
    )> {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("cannot create data directory {}", config.data_dir.display())
        })?;
        let fresh = !config.data_dir.join("raft").exists();
        let grants =
            Arc::new(qk_net::GrantVerifier::new(ca).context("cannot load the cluster CA")?);
        let (log_store, sm_store) =
            open_storage(&config.data_dir.join("raft"), grants.clone()).await?;
        let state = sm_store.reader();
        let shares = open_share_store(config, fresh)?;
        let dkg_key = shares
            .dkg_key()
            .context("cannot derive this node's DKG key from its seal key")?;
        let dkg_public_key = dkg_key.public_key().to_bytes().to_vec();
        let replay_upto = {
            use openraft::storage::RaftLogStorage;
            let mut reader = log_store.clone();
            let state = reader
                .get_log_state()
                .await
                .context("cannot read the local Raft log")?;
            state.last_log_id.map(|l| l.index).unwrap_or(0)
        };
        let (core, actions) = QuorumCore::new(NodeIdT(config.node_id), replay_upto, dkg_key);
        let hook_core = core.clone();
        sm_store.set_apply_hook(Box::new(move |s, index, cmd, resp| {
            hook_core.on_applied(s, index, cmd, resp)
        }));
        let snapshot_installed = Arc::new(tokio::sync::Notify::new());
        let installed = snapshot_installed.clone();
        sm_store.set_install_hook(Box::new(move |_| installed.notify_one()));
        let (applied_tx, applied) = AppliedIndex::channel();
        let (audit, audit_rx) = crate::audit::AuditQueue::new();
        let quorum = Arc::new(Quorum::new(
            core,
            state.clone(),
            shares,
            applied.clone(),
            (grants, audit.clone()),
        ));
        let peers = Dialer::new(
            ca,
            creds,
            net_config(Duration::from_millis(config.raft.rpc_timeout_ms)),
        )
        .context("cannot create the QUIC client endpoint")?;
        let network = NetworkFactory::new(peers.clone());
        let raft = Raft::new(
            config.node_id,
            raft_config(config)?,
            network,
            log_store,
            sm_store,
        )
        .await
        .context("cannot start Raft")?;
        crate::applied::follow_raft(&raft, applied_tx);
        Ok((
            Node {
                id: config.node_id,
                proposer: crate::proposer::Proposer::spawn(raft.clone()),
                raft,
                state,
                peers,
                quorum,
                audit,
                applied,
                digest: DigestCache::default(),
                dkg_public_key,
                snapshot_installed,
                identity: creds.clone(),
            },
            actions,
            audit_rx,
        ))
    }

    /// Initializes a one-node cluster and creates the initial admin, before
    /// the node accepts any client (so no request can race the admin).
    async fn bootstrap(&self, config: &Config) -> Result<()> {
        if self.raft.is_initialized().await.unwrap_or(false) {
            info!("cluster already initialized; --bootstrap ignored");
        } else {
            let mut members = BTreeMap::new();
            members.insert(
                self.id,
                QkNode {
                    rpc_addr: config.advertise_addr(),
                    api_url: config.api_url(),
                },
            );
            self.raft
                .initialize(members)
                .await
                .context("cannot initialize the cluster")?;
            info!("bootstrapped a new cluster");
        }
        self.ensure_initial_admin(&config.auth.initial_admin)
            .await?;
        self.publish_dkg_key().await
    }

    /// Publishes this node's DKG key before the bootstrap node serves
    /// clients, so a key can be created at once. (Joining nodes publish
    /// from the maintenance loop.)
    async fn publish_dkg_key(&self) -> Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while let Some(op) = self.dkg_key_to_publish() {
            match self.write_own(op).await {
                ClientResponse::Written { response, .. } => {
                    if let Err(e) = response.result {
                        bail!("cannot publish this node's DKG key: {e}; check the node log");
                    }
                    info!("published this node's DKG key");
                }
                other if tokio::time::Instant::now() > deadline => {
                    bail!("cannot publish this node's DKG key: {other:?}; check the node log")
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        Ok(())
    }

    async fn ensure_initial_admin(&self, name: &str) -> Result<()> {
        let has_principals = |node: &Node| {
            node.state
                .read(|a| a.machine().principals().next().is_some())
                .unwrap_or(false)
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        if !has_principals(self) {
            self.enable_request_shares(deadline).await?;
        }
        while !has_principals(self) {
            let op = Operation::CreatePrincipal {
                name: name.to_string(),
                roles: [qk_state::Role::Admin].into(),
            };
            let me = Peer::Node(self.id);
            match self.write_as(&me, None, op).await {
                ClientResponse::Written { response, .. } => match response.result {
                    Ok(_) => info!(principal = name, "created the initial admin"),
                    Err(e) => bail!(
                        "cannot create the initial admin {name:?}: {e}; fix [auth] initial_admin"
                    ),
                },
                other if tokio::time::Instant::now() > deadline => {
                    bail!("cannot create the initial admin {name:?}: {other:?}; check the node log")
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        Ok(())
    }

    /// A new cluster counts each principal's share of the request memory
    /// from its first entries: written before the initial admin, the only
    /// time a node may (and idempotent if the bootstrap is run again).
    async fn enable_request_shares(&self, deadline: tokio::time::Instant) -> Result<()> {
        loop {
            match self.write_own(Operation::EnableRequestShares).await {
                ClientResponse::Written { response, .. } => {
                    // Refused on a cluster bootstrapped before (its principals
                    // all deleted): the initial admin's own refusal, next,
                    // says what to do.
                    if let Err(e) = response.result {
                        warn!("request shares were not turned on at bootstrap: {e}");
                    }
                    return Ok(());
                }
                other if tokio::time::Instant::now() > deadline => {
                    bail!("cannot turn on request shares: {other:?}; check the node log")
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Asks the node at `seed` (forwarded to the leader) to add us as a voter.
    async fn join_cluster(&self, config: &Config, seed: &str) -> Result<()> {
        if self.is_member().await {
            info!("already a member; --join ignored");
            return Ok(());
        }
        let request = ClientRequest::Join {
            node_id: self.id,
            node: QkNode {
                rpc_addr: config.advertise_addr(),
                api_url: config.api_url(),
            },
        };
        let mut delay = Duration::from_millis(200);
        let deadline = tokio::time::Instant::now() + JOIN_TIMEOUT;
        loop {
            match self
                .peers
                .any_node(seed)
                .call(&PeerRequest::Client(request.clone()))
                .await
            {
                Ok(PeerResponse::Client(ClientResponse::Joined)) => {
                    info!(seed, "joined the cluster");
                    return Ok(());
                }
                Ok(other) => warn!(seed, "join not accepted yet: {other:?}"),
                Err(e) => warn!(seed, "join attempt failed: {e}"),
            }
            if tokio::time::Instant::now() + delay > deadline {
                bail!("could not join the cluster through {seed} within {JOIN_TIMEOUT:?}; check that it runs and that this node's certificate is from the cluster CA");
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(3));
        }
    }

    async fn is_member(&self) -> bool {
        let metrics = self.raft.metrics().borrow().clone();
        metrics
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == self.id)
    }
}
