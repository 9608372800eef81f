//! openraft's network over [`Dialer`]: one pooled [`PeerClient`] per target.
//!
//! Failures to reach a node map to [`RPCError::Unreachable`] (openraft then
//! backs off with [`RaftNetwork::backoff`]); a malformed or unexpected answer
//! maps to [`RPCError::Network`]; an AppendEntries too large for one frame
//! maps to [`PayloadTooLarge`] so openraft splits it.

use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{Backoff, RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use qk_raft::{NodeId, PeerRequest, PeerResponse, QkNode, TypeConfig};

use crate::client::{Dialer, PeerClient};
use crate::config::NetConfig;
use crate::error::NetError;

/// openraft network factory: hands out clients from the dialer's pool, so
/// connections outlive openraft's per-replication network instances.
#[derive(Clone, Debug)]
pub struct NetworkFactory {
    dialer: Dialer,
}

impl NetworkFactory {
    pub fn new(dialer: Dialer) -> Self {
        Self { dialer }
    }

    pub fn dialer(&self) -> &Dialer {
        &self.dialer
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = RaftPeer;

    async fn new_client(&mut self, target: NodeId, node: &QkNode) -> RaftPeer {
        RaftPeer {
            target,
            node: node.clone(),
            client: self.dialer.node(target, &node.rpc_addr),
            cfg: self.dialer.config().clone(),
        }
    }
}

/// The network to one Raft peer.
#[derive(Clone, Debug)]
pub struct RaftPeer {
    target: NodeId,
    node: QkNode,
    client: PeerClient,
    cfg: NetConfig,
}

/// Why a response did not fit the request.
#[derive(Debug, thiserror::Error)]
#[error("node {target} answered a {request} request with {got}; check that all nodes run the same version")]
struct UnexpectedResponse {
    target: NodeId,
    request: &'static str,
    got: String,
}

/// The target refused the request before Raft saw it.
#[derive(Debug, thiserror::Error)]
#[error("node {target} refused the {request} request: {reason}")]
struct Refused {
    target: NodeId,
    request: &'static str,
    reason: String,
}

fn describe(resp: &PeerResponse) -> String {
    match resp {
        PeerResponse::AppendEntries(_) => "an AppendEntries response".to_owned(),
        PeerResponse::Vote(_) => "a Vote response".to_owned(),
        PeerResponse::InstallSnapshot(_) => "an InstallSnapshot response".to_owned(),
        PeerResponse::Client(_) => "a client response".to_owned(),
        PeerResponse::Refused(_) => "a refusal".to_owned(),
        PeerResponse::ProtocolAccepted => "a protocol acknowledgement".to_owned(),
    }
}

type RpcErr<E = openraft::error::Infallible> = RPCError<NodeId, QkNode, RaftError<NodeId, E>>;

impl RaftPeer {
    pub fn target(&self) -> NodeId {
        self.target
    }

    /// Runs one RPC, finishing before openraft's own hard deadline so our
    /// error (and its backoff) is what openraft sees.
    async fn call(&self, req: &PeerRequest, option: &RPCOption) -> Result<PeerResponse, NetError> {
        let timeout = option.soft_ttl().max(Duration::from_millis(1));
        self.client.call_with_timeout(req, timeout).await
    }

    /// An answer that does not fit the request: a refusal (the target will
    /// not take Raft RPCs from us, e.g. our certificate is not a node's) is
    /// treated as unreachable so openraft backs off; anything else is a
    /// protocol mismatch.
    fn bad_response<E: std::error::Error>(
        &self,
        request: &'static str,
        got: PeerResponse,
    ) -> RpcErr<E> {
        match got {
            PeerResponse::Refused(reason) => RPCError::Unreachable(Unreachable::new(&Refused {
                target: self.target,
                request,
                reason,
            })),
            other => RPCError::Network(NetworkError::new(&UnexpectedResponse {
                target: self.target,
                request,
                got: describe(&other),
            })),
        }
    }

    fn remote<E: std::error::Error>(&self, e: RaftError<NodeId, E>) -> RpcErr<E> {
        RPCError::RemoteError(RemoteError::new_with_node(
            self.target,
            self.node.clone(),
            e,
        ))
    }
}

fn map_net_error<E: std::error::Error>(e: NetError) -> RpcErr<E> {
    if e.is_unreachable() {
        RPCError::Unreachable(Unreachable::new(&e))
    } else {
        RPCError::Network(NetworkError::new(&e))
    }
}

impl RaftNetwork<TypeConfig> for RaftPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RpcErr> {
        let entries = rpc.entries.len() as u64;
        let req = PeerRequest::AppendEntries(rpc);
        match self.call(&req, &option).await {
            Ok(PeerResponse::AppendEntries(Ok(resp))) => Ok(resp),
            Ok(PeerResponse::AppendEntries(Err(e))) => Err(self.remote(e)),
            Ok(other) => Err(self.bad_response("AppendEntries", other)),
            // Too big for one frame: ask openraft to send half as many.
            Err(e) if e.is_too_large() && entries > 1 => Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(entries / 2),
            )),
            Err(e) => Err(map_net_error(e)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RpcErr<InstallSnapshotError>> {
        let req = PeerRequest::InstallSnapshot(rpc);
        match self.call(&req, &option).await.map_err(map_net_error)? {
            PeerResponse::InstallSnapshot(Ok(resp)) => Ok(resp),
            PeerResponse::InstallSnapshot(Err(e)) => Err(self.remote(e)),
            other => Err(self.bad_response("InstallSnapshot", other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RpcErr> {
        let req = PeerRequest::Vote(rpc);
        match self.call(&req, &option).await.map_err(map_net_error)? {
            PeerResponse::Vote(Ok(resp)) => Ok(resp),
            PeerResponse::Vote(Err(e)) => Err(self.remote(e)),
            other => Err(self.bad_response("Vote", other)),
        }
    }

    /// Capped exponential backoff while a peer is unreachable (same curve as
    /// the dialer's redial backoff).
    fn backoff(&self) -> Backoff {
        let cfg = self.cfg.clone();
        Backoff::new((1u32..).map(move |failures| cfg.backoff_delay(failures)))
    }
}
