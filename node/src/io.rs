//! What the node's runtimes (quorum, audit, maintenance) need from the node,
//! and the wall clock they read: a leaf module, so none of them imports
//! another for it.

use qk_state::Operation;
use qk_types::NodeId;

/// What the runtime needs from the node: sending to peers and proposing.
pub trait Io: Send + Sync + 'static {
    fn send(&self, to: NodeId, bytes: Vec<u8>) -> qk_net::BoxFuture<'_, ()>;
    /// `true` once `op` is committed and applied without error.
    fn propose(&self, op: Operation) -> qk_net::BoxFuture<'_, bool>;
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
