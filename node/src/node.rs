//! The node: its state and the RPC handler (client requests, Raft, the
//! protocol), writes and read barriers, forwarding and joins. Start-up is in
//! `node/startup.rs`, client requests in `node/requests.rs`, the unwrap path
//! in `node/unwrap.rs`, the HTTPS API backend in `node/api_backend.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use openraft::error::ForwardToLeader;
use openraft::ServerState;
use qk_net::{Dialer, Peer, RpcHandler};
use qk_raft::{NodeId, PeerRequest, PeerResponse, QkNode, Raft};
use qk_state::proof::Credential;
use qk_state::{Command, Operation, Permission, RequestId};
use qk_types::NodeId as NodeIdT;
use qk_types::{ErrorKind, RequestError};

use qk_wire::{ClientRequest, ClientResponse, NodeStatus};

use crate::applied::{AppliedIndex, CLIENT_INDEX_WAIT};
use crate::io::now_ms;
use crate::quorum::Quorum;
use qk_storage::StateReader;
use tracing::{info, warn};

mod api_backend;
mod requests;
mod startup;
mod unwrap;

pub use startup::run;

/// Most audit records one request returns.
const MAX_AUDIT_PAGE: u32 = 1000;
/// How long a join waits for the new learner to catch up before promotion.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

pub struct Node {
    id: NodeId,
    raft: Raft,
    proposer: crate::proposer::Proposer,
    state: StateReader,
    peers: Dialer,
    quorum: Arc<Quorum>,
    audit: crate::audit::AuditQueue,
    applied: AppliedIndex,
    digest: DigestCache,
    /// This node's DKG public key (encoded), as it must be in the state.
    dkg_public_key: Vec<u8>,
    /// Woken when a snapshot from the leader replaced the applied state.
    snapshot_installed: Arc<tokio::sync::Notify>,
    /// This node's certificate and key: it signs its audit checkpoints.
    identity: qk_net::Credentials,
}

/// How often the state digest may be recomputed. It hashes the whole state,
/// and status, health and metrics (which need no credentials) report it, so
/// a flood of them must not hash the state once each.
const DIGEST_EVERY: Duration = Duration::from_secs(1);

/// The last state digest and the applied index it is of.
#[derive(Default)]
struct DigestCache(std::sync::Mutex<Option<(u64, [u8; 32], std::time::Instant)>>);

impl DigestCache {
    /// The digest at `index` when it is cached or may be computed now;
    /// otherwise the last one, with the index it is of.
    fn at(&self, index: u64, compute: impl FnOnce() -> [u8; 32]) -> (u64, [u8; 32]) {
        let Ok(mut cached) = self.0.lock() else {
            return (index, compute());
        };
        match *cached {
            Some((i, digest, _)) if i == index => (i, digest),
            Some((i, digest, at)) if at.elapsed() < DIGEST_EVERY => (i, digest),
            _ => {
                let digest = compute();
                *cached = Some((index, digest, std::time::Instant::now()));
                (index, digest)
            }
        }
    }
}

/// The protocol runtime's view of the node: send to peers, propose.
struct NodeIo(Arc<Node>);

impl crate::io::Io for NodeIo {
    fn send(&self, to: NodeIdT, bytes: Vec<u8>) -> qk_net::BoxFuture<'_, ()> {
        Box::pin(async move {
            let Some(addr) = self.0.member_addr(to.0) else {
                return warn!(%to, "no address for node; protocol message dropped");
            };
            match self
                .0
                .peers
                .node(to.0, &addr)
                .call(&PeerRequest::Protocol(bytes))
                .await
            {
                Ok(PeerResponse::ProtocolAccepted) => {}
                Ok(other) => warn!(%to, "protocol message not accepted: {other:?}"),
                Err(e) => warn!(%to, "protocol message not delivered: {e}"),
            }
        })
    }

    fn propose(&self, op: Operation) -> qk_net::BoxFuture<'_, bool> {
        Box::pin(async move {
            let name = op.name();
            match self.0.write_own(op).await {
                ClientResponse::Written { response, .. } => response.result.is_ok(),
                other => {
                    warn!(
                        operation = name,
                        "protocol proposal not committed: {other:?}"
                    );
                    false
                }
            }
        })
    }
}

/// Operations only nodes propose (DKG steps, receipts, timeouts): a client
/// certificate may not; a node may only speak for itself.
fn authorize_write(peer: &Peer, cmd: &Command) -> std::result::Result<(), RequestError> {
    let protocol_op = matches!(
        cmd.op,
        Operation::Dkg { .. }
            | Operation::EraseReceipt { .. }
            | Operation::AbandonRefresh { .. }
            | Operation::FailGeneration { .. }
            | Operation::PublishDkgKey { .. }
    );
    match peer {
        Peer::Client(name) if protocol_op => Err(RequestError::denied(format!(
            "client {name} may not propose {}; only cluster nodes do",
            cmd.op.name()
        ))),
        Peer::Node(id) if protocol_op && cmd.principal != NodeIdT(*id).to_string() => {
            Err(RequestError::denied(format!(
                "node {id} may only propose protocol steps as itself"
            )))
        }
        _ => Ok(()),
    }
}

impl Node {
    /// Proposes `op` as this node (`node-N`), signed with its own session.
    async fn write_own(&self, op: Operation) -> ClientResponse {
        let cmd = Command {
            request_id: RequestId(rand::random()),
            time_ms: 0,
            principal: NodeIdT(self.id).to_string(),
            op,
            proof: None,
        };
        self.write(&Peer::Node(self.id), None, cmd).await
    }

    /// Runs a client request as `peer`; `credential` is the caller's signing
    /// key when it handed one over (every decrypt needs it).
    async fn handle_client(
        &self,
        peer: &Peer,
        credential: Option<&Credential>,
        req: ClientRequest,
    ) -> ClientResponse {
        if let Some(name) = requests::client_name(peer) {
            if name.starts_with("node-") {
                return self.denied(
                    peer,
                    "request",
                    None,
                    format!("client name {name} is reserved for cluster nodes; issue the client another name"),
                );
            }
        }
        match req {
            ClientRequest::Write(cmd) => self.write(peer, credential, cmd).await,
            ClientRequest::GetKey { name } => self.get_key(peer, &name).await,
            ClientRequest::ReadIndex => match peer {
                Peer::Node(_) => self.read_index().await,
                _ => self.denied(
                    peer,
                    "read-index",
                    None,
                    "only cluster nodes ask for the read index".to_owned(),
                ),
            },
            ClientRequest::ListKeys => self.list_keys(peer, false),
            ClientRequest::KeyInventory => self.list_keys(peer, true),
            ClientRequest::Audit { from_seq, limit } => {
                if let Err(denied) = self.require(peer, Permission::AuditRead, None, "audit.read") {
                    return denied;
                }
                self.read(|s| {
                    ClientResponse::Audit(
                        s.audit_records(from_seq, limit.min(MAX_AUDIT_PAGE) as usize)
                            .to_vec(),
                    )
                })
            }
            ClientRequest::AuditVerify => self.audit_verify(peer),
            ClientRequest::AuditCheckpoint { seq } => self.audit_checkpoint(peer, seq),
            ClientRequest::Status => ClientResponse::Status(self.status()),
            ClientRequest::ClusterHealth => self.cluster_health(peer).await,
            ClientRequest::Join { node_id, node } => self.admit(peer, node_id, node).await,
            ClientRequest::Encrypt {
                name,
                context,
                plaintext,
            } => self.encrypt_as(peer, "encrypt", &name, &context, &plaintext.0),
            ClientRequest::DataKey {
                name,
                bytes,
                context,
            } => self.data_key(peer, &name, bytes, &context),
            ClientRequest::Decrypt {
                ciphertext,
                context,
                approval,
            } => {
                self.decrypt_authorized(peer, credential, &ciphertext, context, approval)
                    .await
            }
            ClientRequest::Partial {
                ciphertext,
                context,
                ..
            } => self.partial_authorized(peer, &ciphertext, context).await,
            ClientRequest::Rewrap {
                ciphertext,
                context,
                to_key,
            } => {
                self.rewrap(peer, credential, &ciphertext, context, to_key)
                    .await
            }
            ClientRequest::IssueToken {
                principal,
                ttl_ms,
                description,
                kind,
            } => {
                let token = crate::node::requests::NewToken {
                    principal,
                    ttl_ms,
                    description,
                    kind,
                };
                self.issue_token(peer, credential, token).await
            }
            ClientRequest::GetKeyById { id } => self.get_key_by_id(peer, id).await,
            ClientRequest::GetKeyByAlias { alias } => self.get_key_by_alias(peer, &alias).await,
            ClientRequest::Authenticate { token } => self.authenticate(&token.0),
            ClientRequest::WhoAmI { token_id } => self.who_am_i(peer, token_id),
            req @ (ClientRequest::ListPrincipals
            | ClientRequest::ListTokens
            | ClientRequest::ListApprovals
            | ClientRequest::GetAccessRule) => self.list_access(peer, &req),
        }
    }

    /// A key or version with no holders listed is held by every voter.
    fn default_holders(&self, op: &mut Operation) {
        let holders = match op {
            Operation::CreateKey(c) => &mut c.holders,
            Operation::Rotate { holders, .. } => holders,
            _ => return,
        };
        if holders.is_empty() {
            let m = self.raft.metrics().borrow().clone();
            *holders = m
                .membership_config
                .membership()
                .voter_ids()
                .map(NodeIdT)
                .collect();
        }
    }

    fn member_api_urls(&self) -> BTreeMap<NodeId, String> {
        let m = self.raft.metrics().borrow().clone();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.api_url.clone()))
            .collect()
    }

    fn member_addr(&self, id: NodeId) -> Option<String> {
        let m = self.raft.metrics().borrow().clone();
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.rpc_addr.clone())
    }

    /// Wraps under the newest enabled version: needs only its public key.
    fn encrypt(
        &self,
        name: &str,
        context: &BTreeMap<String, String>,
        plaintext: &[u8],
    ) -> ClientResponse {
        let found = self.state.read(|a| {
            let key = a.machine().key(name)?;
            let v = key.primary_version()?;
            Some((key.id, v.version, v.public_keys.clone()?))
        });
        let Ok(Some((id, version, keys))) = found else {
            return ClientResponse::Error(RequestError::conflict(format!(
                "key {name:?} does not exist or has no enabled version; create it or wait for its generation to finish"
            )));
        };
        let wrapped = qk_crypto::PublicKeySet::from_bytes(&keys)
            .map_err(|e| e.to_string())
            .and_then(|k| {
                qk_crypto::wrap(
                    &mut rand::rng(),
                    &k.public_key(),
                    id,
                    version,
                    context,
                    plaintext,
                )
                .map_err(|e| e.to_string())
            });
        match wrapped {
            Ok(ct) => ClientResponse::Ciphertext {
                text: ct.to_text(),
                version: version.0,
            },
            Err(e) => {
                ClientResponse::Error(RequestError::internal(format!("encryption failed: {e}")))
            }
        }
    }

    /// Once this node has caught up with the log, erase shares of versions
    /// destroyed or failed meanwhile and check every other share; again
    /// after every snapshot installed from the leader.
    async fn reconcile_shares(&self, io: Arc<dyn crate::io::Io>) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let m = self.raft.metrics().borrow().clone();
            let caught_up =
                m.current_leader.is_some() && m.last_applied.map(|l| l.index) >= m.last_log_index;
            if caught_up || tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        loop {
            match self.quorum.reconcile(&io).await {
                Ok(()) => info!("share store checked against the replicated commitments"),
                Err(e) => warn!("share store check failed: {e}"),
            }
            // The entries a snapshot covers never reach the apply hook: the
            // erasures they call for (destroyed versions, replaced epochs)
            // are found by checking the store against the new state.
            self.snapshot_installed.notified().await;
        }
    }

    fn read(&self, f: impl FnOnce(&qk_state::StateMachine) -> ClientResponse) -> ClientResponse {
        match self.state.read(|a| f(a.machine())) {
            Ok(r) => r,
            Err(e) => ClientResponse::Error(RequestError::internal(format!(
                "cannot read the local state: {e}"
            ))),
        }
    }

    fn status(&self) -> NodeStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let ((digest_index, digest), key_count, audit_len, dkg_keys) = self
            .state
            .read(|a| {
                let s = a.machine();
                let index = a.last_applied().map_or(0, |l| l.index);
                let digest = self.digest.at(index, || {
                    s.digest().unwrap_or_else(|e| {
                        tracing::error!("the state digest is unknown: {e}");
                        [0; 32]
                    })
                });
                let dkg_keys = s.dkg_key_nodes().map(|n| n.0).collect();
                (digest, s.key_count() as u64, s.audit_len(), dkg_keys)
            })
            .unwrap_or(((0, [0u8; 32]), 0, 0, Vec::new()));
        NodeStatus {
            node_id: self.id,
            leader: m.current_leader,
            term: m.current_term,
            last_applied: m.last_applied.map(|l| l.index),
            last_log_index: m.last_log_index,
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            addrs: membership
                .nodes()
                .map(|(id, n)| (*id, n.rpc_addr.clone()))
                .collect(),
            state_digest: digest,
            digest_index,
            key_count,
            audit_len,
            dkg_keys,
        }
    }

    /// Stamps the leader's time and the authenticated principal, has the
    /// author sign it, then proposes. Followers forward to the leader once;
    /// a forwarded command keeps its author's proof (every replica checks
    /// it at apply, so the forwarding node's word counts for nothing).
    async fn write(
        &self,
        peer: &Peer,
        credential: Option<&Credential>,
        mut cmd: Command,
    ) -> ClientResponse {
        if let Err(e) = authorize_write(peer, &cmd) {
            let key = cmd.op.key_name();
            self.audit.record(
                &requests::principal_name(peer),
                cmd.op.name(),
                key,
                None,
                format!("refused: {e}"),
            );
            return ClientResponse::Error(e);
        }
        cmd.principal = match peer {
            Peer::Client(name) => name.clone(),
            Peer::Node(id) if *id == self.id && cmd.principal.is_empty() => {
                NodeIdT(*id).to_string()
            }
            // A forwarded write keeps the principal the first node authenticated.
            Peer::Node(_) => cmd.principal,
        };
        cmd.time_ms = now_ms();
        self.default_holders(&mut cmd.op);
        if let Err(e) = self.sign(peer, credential, &mut cmd) {
            self.audit.record(
                &requests::principal_name(peer),
                cmd.op.name(),
                cmd.op.key_name(),
                None,
                format!("refused: {e}"),
            );
            return ClientResponse::Error(e);
        }
        let narrows = cmd.op.narrows_access();
        let written = self.propose_or_forward(peer, cmd).await;
        match written {
            ClientResponse::Written {
                log_index,
                response,
                ..
            } => {
                // Read-your-writes on this node too: a forwarded write is
                // applied here before its answer (bounded; the index travels
                // with the answer either way).
                let _ = self.applied.wait_for(log_index, CLIENT_INDEX_WAIT).await;
                let not_applied_on =
                    if narrows && response.result.is_ok() && matches!(peer, Peer::Client(_)) {
                        self.wait_members_applied(log_index).await
                    } else {
                        Vec::new()
                    };
                ClientResponse::Written {
                    log_index,
                    response,
                    not_applied_on,
                }
            }
            other => other,
        }
    }

    /// Signs `cmd` as its author: a client's command with the credential
    /// it handed over, this node's own with its node session. A command
    /// another node forwarded already carries its author's proof.
    fn sign(
        &self,
        peer: &Peer,
        credential: Option<&Credential>,
        cmd: &mut Command,
    ) -> std::result::Result<(), RequestError> {
        let credential = match peer {
            Peer::Node(id) if *id != self.id => return Ok(()),
            Peer::Node(_) => self.peers.session().map_err(|e| {
                RequestError::internal(format!(
                    "cannot sign this node's command: {e}; check the node certificate"
                ))
            })?,
            Peer::Client(name) => credential.cloned().ok_or_else(|| {
                RequestError::new(
                    ErrorKind::Unauthenticated,
                    format!(
                        "the write carries no credential of {name}: every write is signed by its \
                     author's own key; send a bearer token (`qk token create`), or use qk or \
                     qk-client, which sign with a session of the client certificate"
                    ),
                )
            })?,
        };
        let proof = credential
            .sign_command(cmd, cmd.time_ms)
            .map_err(|e| RequestError::invalid(format!("cannot sign the write: {e}")))?;
        cmd.proof = Some(Box::new(proof));
        Ok(())
    }

    /// Every member applied `index` (a revocation takes effect everywhere
    /// before it is acknowledged), or the members that did not within the wait.
    async fn wait_members_applied(&self, index: u64) -> Vec<NodeId> {
        let members = self.raft.metrics().borrow().clone();
        let peers: Vec<(NodeId, String)> = members
            .membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, n)| (*id, n.rpc_addr.clone()))
            .collect();
        let asks = peers.into_iter().map(|(id, addr)| async move {
            let request = PeerRequest::ClientAfter {
                min_applied: index,
                request: ClientRequest::Status,
            };
            let client = self.peers.node(id, &addr);
            let call = client.call(&request);
            match tokio::time::timeout(CLIENT_INDEX_WAIT + Duration::from_secs(1), call).await {
                Ok(Ok(PeerResponse::Client(ClientResponse::Status(s))))
                    if s.last_applied >= Some(index) =>
                {
                    None
                }
                _ => Some(id),
            }
        });
        let lagging: Vec<NodeId> = futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect();
        if !lagging.is_empty() {
            warn!(
                index,
                ?lagging,
                "a revocation is not yet applied on every member"
            );
        }
        lagging
    }

    /// Makes the next read of the applied state linearizable: learns the
    /// leader's read index (here when leading, else from the leader) and
    /// waits to have applied it. A partitioned or lagging node answers
    /// "unavailable" instead of serving a stale record.
    pub(super) async fn read_barrier(&self) -> Result<(), ClientResponse> {
        let index = match self.leader_read_index().await {
            Ok(index) => index,
            Err(e) => match e.forward_to_leader::<QkNode>() {
                Some(ForwardToLeader {
                    leader_id: Some(leader),
                    leader_node: Some(node),
                }) => match self.forward(*leader, node, ClientRequest::ReadIndex).await {
                    ClientResponse::ReadIndex(index) => index,
                    other => return Err(other),
                },
                _ => {
                    return Err(ClientResponse::Error(RequestError::unavailable(format!(
                        "cannot reach the leader to confirm this read ({e}); the cluster may \
                         be electing or lack a majority: retry shortly"
                    ))))
                }
            },
        };
        self.applied
            .wait_for(index, CLIENT_INDEX_WAIT)
            .await
            .map(|_| ())
            .map_err(|behind| {
                ClientResponse::Error(RequestError::unavailable(format!(
                    "this node is behind the leader ({behind}); retry shortly or ask another node"
                )))
            })
    }

    /// The read index when this node leads: the commit index once a
    /// majority has confirmed it still leads (bounded in time; the caller
    /// then waits to have applied it, also bounded).
    async fn leader_read_index(
        &self,
    ) -> Result<
        u64,
        openraft::error::RaftError<NodeId, openraft::error::CheckIsLeaderError<NodeId, QkNode>>,
    > {
        let check = tokio::time::timeout(CLIENT_INDEX_WAIT, self.raft.get_read_log_id()).await;
        match check {
            Ok(Ok((read_log_id, _applied))) => Ok(read_log_id.map_or(0, |l| l.index)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(openraft::error::RaftError::APIError(
                openraft::error::CheckIsLeaderError::QuorumNotEnough(
                    openraft::error::QuorumNotEnough {
                        cluster: "a majority did not confirm within the read wait".to_owned(),
                        got: Default::default(),
                    },
                ),
            )),
        }
    }

    /// Leader side of [`Self::read_barrier`], for member nodes.
    async fn read_index(&self) -> ClientResponse {
        match self.leader_read_index().await {
            Ok(index) => ClientResponse::ReadIndex(index),
            Err(e) => match e.forward_to_leader::<QkNode>() {
                Some(f) => ClientResponse::NotLeader {
                    leader: f.leader_id,
                    leader_addr: f.leader_node.as_ref().map(|n| n.rpc_addr.clone()),
                },
                None => ClientResponse::Error(RequestError::unavailable(format!(
                    "cannot reach a majority to confirm leadership for a read ({e}); retry shortly"
                ))),
            },
        }
    }

    async fn propose_or_forward(&self, peer: &Peer, cmd: Command) -> ClientResponse {
        match self.proposer.write(cmd.clone()).await {
            Ok((log_index, response)) => ClientResponse::Written {
                log_index,
                response,
                not_applied_on: Vec::new(),
            },
            Err(e) if e.forward_to_leader().is_some() => {
                let (leader_id, leader_node) = e.forward_to_leader().unwrap_or((None, None));
                match (leader_id, leader_node) {
                    (Some(leader), Some(node))
                        if matches!(peer, Peer::Client(_)) || *peer == Peer::Node(self.id) =>
                    {
                        self.forward(leader, &node, ClientRequest::Write(cmd)).await
                    }
                    (leader, node) => ClientResponse::NotLeader {
                        leader,
                        leader_addr: node.map(|n| n.rpc_addr),
                    },
                }
            }
            Err(e @ crate::proposer::WriteError::TooLarge { .. }) => {
                ClientResponse::Error(RequestError::new(ErrorKind::TooLarge, e.to_string()))
            }
            Err(e) => ClientResponse::Error(RequestError::unavailable(format!(
                "write not committed: {e}; retry with the same request id"
            ))),
        }
    }

    async fn forward(&self, leader: NodeId, node: &QkNode, req: ClientRequest) -> ClientResponse {
        match self
            .peers
            .node(leader, &node.rpc_addr)
            .call(&PeerRequest::Client(req))
            .await
        {
            Ok(PeerResponse::Client(r)) => r,
            Ok(other) => ClientResponse::Error(RequestError::internal(format!(
                "leader {leader} answered unexpectedly: {other:?}"
            ))),
            Err(e) => ClientResponse::Error(RequestError::unavailable(format!(
                "cannot reach leader {leader} at {}: {e}; retry shortly",
                node.rpc_addr
            ))),
        }
    }

    /// Leader side of a join: the caller must be the node itself.
    async fn admit(&self, peer: &Peer, node_id: NodeId, node: QkNode) -> ClientResponse {
        if *peer != Peer::Node(node_id) {
            return ClientResponse::Error(RequestError::denied(format!(
                "only node {node_id} itself (with its node certificate) may ask to join as {node_id}"
            )));
        }
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader {
            let leader = metrics.current_leader.and_then(|id| {
                let node = metrics
                    .membership_config
                    .membership()
                    .get_node(&id)
                    .cloned();
                node.map(|n| (id, n))
            });
            return match leader {
                Some((id, leader_node)) => {
                    self.forward(id, &leader_node, ClientRequest::Join { node_id, node })
                        .await
                }
                None => ClientResponse::NotLeader {
                    leader: metrics.current_leader,
                    leader_addr: None,
                },
            };
        }
        if let Err(e) = self.raft.add_learner(node_id, node, true).await {
            return ClientResponse::Error(RequestError::unavailable(format!(
                "cannot add node {node_id} as learner: {e}; retry the join"
            )));
        }
        let mut voters: BTreeSet<NodeId> =
            metrics.membership_config.membership().voter_ids().collect();
        voters.insert(node_id);
        match self.raft.change_membership(voters, false).await {
            Ok(_) => ClientResponse::Joined,
            Err(e) => ClientResponse::Error(RequestError::unavailable(format!(
                "cannot promote node {node_id} to voter: {e}; retry the join"
            ))),
        }
    }
}

impl crate::maintenance::Schedule for Node {
    /// The `PublishDkgKey` this node still has to propose, if any: its key
    /// is missing from the state, or is another one (the node lost its disk
    /// and so its seal key).
    fn dkg_key_to_publish(&self) -> Option<Operation> {
        let node = NodeIdT(self.id);
        let published = self
            .state
            .read(|a| a.machine().dkg_key(node) == Some(self.dkg_public_key.as_slice()))
            .unwrap_or(false);
        (!published).then(|| Operation::PublishDkgKey {
            node,
            public_key: self.dkg_public_key.clone(),
        })
    }

    fn leads(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    fn maintenance_due(&self, now_ms: u64) -> Vec<Operation> {
        self.state
            .read(|a| {
                let m = a.machine();
                m.maintenance_due(m.schedule_time_ms(now_ms))
            })
            .unwrap_or_default()
    }

    fn needs_attestation(&self, now_ms: u64) -> bool {
        let me = NodeIdT(self.id).to_string();
        self.state
            .read(|a| a.machine().needs_attestation(&me, now_ms))
            .unwrap_or(false)
    }
}

impl RpcHandler for Node {
    fn handle(&self, peer: Peer, req: PeerRequest) -> qk_net::BoxFuture<'_, PeerResponse> {
        Box::pin(async move {
            if let (Some((kind, claimed)), Peer::Node(from)) = (raft_sender_claim(&req), &peer) {
                if let Err(reason) = self.check_raft_sender(*from, claimed) {
                    warn!(from, kind, "Raft message refused: {reason}");
                    self.audit.record(
                        &NodeIdT(*from).to_string(),
                        kind,
                        None,
                        None,
                        format!("refused: {reason}"),
                    );
                    return PeerResponse::Refused(format!("{kind} refused: {reason}"));
                }
            }
            match (req, &peer) {
                (PeerRequest::AppendEntries(r), Peer::Node(_)) => {
                    PeerResponse::AppendEntries(self.raft.append_entries(r).await)
                }
                (PeerRequest::Vote(r), Peer::Node(_)) => {
                    PeerResponse::Vote(self.raft.vote(r).await)
                }
                (PeerRequest::InstallSnapshot(r), Peer::Node(from)) => {
                    if r.offset == 0 {
                        info!(from, snapshot = %r.meta.snapshot_id, "installing snapshot from the leader");
                    }
                    PeerResponse::InstallSnapshot(self.raft.install_snapshot(r).await)
                }
                (PeerRequest::Client(r), _) => {
                    PeerResponse::Client(self.handle_client(&peer, None, r).await)
                }
                (
                    PeerRequest::ClientAfter {
                        min_applied,
                        request,
                    },
                    _,
                ) => match self.applied.wait_for(min_applied, CLIENT_INDEX_WAIT).await {
                    Ok(_) => PeerResponse::Client(self.handle_client(&peer, None, request).await),
                    Err(behind) => PeerResponse::Client(ClientResponse::Error(
                        RequestError::unavailable(behind.to_string()),
                    )),
                },
                (
                    PeerRequest::ClientProven {
                        min_applied,
                        credential,
                        request,
                    },
                    _,
                ) => match self.applied.wait_for(min_applied, CLIENT_INDEX_WAIT).await {
                    Ok(_) => PeerResponse::Client(
                        self.handle_client(&peer, Some(&credential), request).await,
                    ),
                    Err(behind) => PeerResponse::Client(ClientResponse::Error(
                        RequestError::unavailable(behind.to_string()),
                    )),
                },
                (PeerRequest::Protocol(bytes), Peer::Node(from)) => {
                    match self.quorum.on_message(NodeIdT(*from), &bytes) {
                        Ok(()) => PeerResponse::ProtocolAccepted,
                        Err(e) => PeerResponse::Refused(format!("protocol message refused: {e}")),
                    }
                }
                (_, Peer::Client(name)) => PeerResponse::Refused(format!(
                    "client {name} may not send Raft messages; only node certificates may"
                )),
            }
        })
    }
}

/// A Raft RPC's kind and the node it claims to come from: the leader of its
/// vote for AppendEntries and InstallSnapshot, the candidate for a Vote.
fn raft_sender_claim(req: &PeerRequest) -> Option<(&'static str, Option<NodeId>)> {
    match req {
        PeerRequest::AppendEntries(r) => {
            Some(("raft.append-entries", r.vote.leader_id().voted_for()))
        }
        PeerRequest::InstallSnapshot(r) => {
            Some(("raft.install-snapshot", r.vote.leader_id().voted_for()))
        }
        PeerRequest::Vote(r) => Some(("raft.vote", r.vote.leader_id().voted_for())),
        _ => None,
    }
}

impl Node {
    /// A Raft RPC speaks only for the node whose certificate sent it (no
    /// node can stand in for the leader or a candidate), and only members
    /// send them once this node belongs to a cluster.
    fn check_raft_sender(&self, from: NodeId, claimed: Option<NodeId>) -> Result<(), String> {
        if claimed != Some(from) {
            return Err(format!(
                "node {from} sent a message on behalf of {}; a node speaks only for itself",
                claimed.map_or("nobody".to_string(), |c| format!("node {c}"))
            ));
        }
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let has_members = membership.nodes().next().is_some();
        if has_members && membership.get_node(&from).is_none() {
            return Err(format!(
                "node {from} is not a member of this cluster; add it with a join first"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod digest_tests {
    use super::*;

    #[test]
    fn the_digest_is_hashed_at_most_once_per_interval() {
        let cache = DigestCache::default();
        let mut hashed = 0;
        let mut hash = |d: u8| {
            hashed += 1;
            [d; 32]
        };
        assert_eq!(cache.at(5, || hash(5)), (5, [5; 32]));
        assert_eq!(cache.at(5, || hash(9)), (5, [5; 32]), "same index: cached");
        assert_eq!(
            cache.at(6, || hash(6)),
            (5, [5; 32]),
            "a newer index within the interval gets the last digest and its index"
        );
        let long_ago = std::time::Instant::now()
            .checked_sub(DIGEST_EVERY * 2)
            .expect("a clock this old");
        *cache.0.lock().expect("lock") = Some((5, [5; 32], long_ago));
        assert_eq!(cache.at(6, || hash(6)), (6, [6; 32]));
        assert_eq!(hashed, 2);
    }
}
