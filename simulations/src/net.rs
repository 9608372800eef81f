//! openraft's network inside the simulation: each RPC crosses the simulated
//! network twice (request and response), each way with a seeded delay, loss
//! and the current partitions, and reaches the target's real `Raft`.
//!
//! A lost message looks to openraft like a peer that does not answer: the
//! call fails after the RPC's time budget with a network error. (The node's
//! QUIC network reports an unreachable peer instead, which makes openraft
//! back off; that path is not simulated because its `select!` is not
//! seeded. See docs/SIMULATION.md.)

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use qk_raft::{QkNode, Raft, TypeConfig};
use qk_types::NodeId;

use crate::world::World;

type RpcErr<E = openraft::error::Infallible> = RPCError<u64, QkNode, RaftError<u64, E>>;

/// Hands out one [`SimPeer`] per target.
#[derive(Clone, Debug)]
pub struct SimNetwork {
    pub(crate) world: Weak<Mutex<World>>,
    pub(crate) me: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for SimNetwork {
    type Network = SimPeer;

    async fn new_client(&mut self, target: u64, node: &QkNode) -> SimPeer {
        SimPeer {
            world: self.world.clone(),
            me: self.me,
            target: NodeId(target),
            node: node.clone(),
        }
    }
}

#[derive(Debug)]
pub struct SimPeer {
    world: Weak<Mutex<World>>,
    me: NodeId,
    target: NodeId,
    node: QkNode,
}

#[derive(Debug, thiserror::Error)]
#[error("simulated network: no answer from node {0}")]
struct Lost(u64);

impl SimPeer {
    fn world(&self) -> Option<Arc<Mutex<World>>> {
        self.world.upgrade()
    }

    fn lost<E: std::error::Error>(&self) -> RpcErr<E> {
        RPCError::Network(NetworkError::new(&Lost(self.target.0)))
    }

    /// One way of an RPC: the delay (or a loss), counted and checked for
    /// secrets. Returns the target's `Raft` if the message arrives.
    async fn hop(&self, from: NodeId, to: NodeId, body: &[u8], ttl: Duration) -> Option<Raft> {
        let delay = {
            let world = self.world()?;
            let mut w = world.lock().ok()?;
            w.stats.raft_messages += 1;
            if !body.is_empty() {
                w.check_secret_free("Raft message", body);
            }
            w.link(from, to)
        };
        let Some(d) = delay else {
            tokio::time::sleep(ttl).await;
            return None;
        };
        tokio::time::sleep(Duration::from_millis(d)).await;
        let world = self.world()?;
        let w = world.lock().ok()?;
        w.reachable_raft(from, to)
    }

    async fn there(&self, body: &[u8], option: &RPCOption) -> Option<Raft> {
        self.hop(self.me, self.target, body, option.hard_ttl())
            .await
    }

    async fn back(&self, option: &RPCOption) -> bool {
        self.hop(self.target, self.me, &[], option.hard_ttl())
            .await
            .is_some()
    }

    fn maybe_duplicate<Req, Fut, F>(&self, req: Req, call: F)
    where
        Req: Send + 'static,
        Fut: std::future::Future + Send + 'static,
        F: FnOnce(Raft, Req) -> Fut + Send + 'static,
    {
        let Some(world) = self.world() else { return };
        let Some(delay) = world.lock().ok().and_then(|mut w| w.duplicate_delay()) else {
            return;
        };
        let (from, to) = (self.me, self.target);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(delay)).await;
            let raft = world.lock().ok().and_then(|w| w.reachable_raft(from, to));
            if let Some(raft) = raft {
                let _ = call(raft, req).await;
            }
        });
    }

    fn remote<E: std::error::Error>(&self, e: RaftError<u64, E>) -> RpcErr<E> {
        RPCError::RemoteError(RemoteError::new_with_node(
            self.target.0,
            self.node.clone(),
            e,
        ))
    }
}

impl SimPeer {
    /// One RPC: the request crosses the network, the target's `Raft`
    /// handles it, the response crosses back.
    /// A duplicated request reaches the target again later; its answer is
    /// dropped (openraft must treat the copy as stale or idempotent).
    async fn rpc<Req, Resp, E, Fut, F>(
        &self,
        body: &[u8],
        option: &RPCOption,
        req: Req,
        call: F,
    ) -> Result<Resp, RpcErr<E>>
    where
        Req: Clone + Send + 'static,
        Resp: Send + 'static,
        E: std::error::Error + Send + 'static,
        Fut: std::future::Future<Output = Result<Resp, RaftError<u64, E>>> + Send + 'static,
        F: Fn(Raft, Req) -> Fut + Clone + Send + 'static,
    {
        let Some(raft) = self.there(body, option).await else {
            return Err(self.lost());
        };
        self.maybe_duplicate(req.clone(), call.clone());
        let result = call(raft, req).await;
        if !self.back(option).await {
            return Err(self.lost());
        }
        result.map_err(|e| self.remote(e))
    }
}

impl RaftNetwork<TypeConfig> for SimPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RpcErr> {
        let body = if rpc.entries.is_empty() {
            Vec::new()
        } else {
            postcard::to_allocvec(&rpc.entries).unwrap_or_default()
        };
        self.rpc(&body, &option, rpc, |raft, rpc| async move {
            raft.append_entries(rpc).await
        })
        .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<u64>, RpcErr<InstallSnapshotError>> {
        let body = rpc.data.clone();
        self.rpc(&body, &option, rpc, |raft, rpc| async move {
            raft.install_snapshot(rpc).await
        })
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RpcErr> {
        self.rpc(&[], &option, rpc, |raft, rpc| async move {
            raft.vote(rpc).await
        })
        .await
    }
}
