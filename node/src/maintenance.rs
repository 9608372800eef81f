//! The schedule: the leader proposes what the replicated state says is due
//! (rotations, expiries, destructions whose waiting period ended, approvals
//! that ran out). Apply checks each against the log's time again, so a
//! stale or duplicate proposal is refused, never applied twice. Every node,
//! leader or not, vouches for its own clock when the state asks for it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use qk_state::Operation;
use tokio::time::Instant;

use crate::node::Node;
use crate::quorum::{now_ms, Io};

/// How often the leader looks for due work.
const TICK: Duration = Duration::from_secs(1);
/// The same operation is not proposed again sooner than this (a refused one
/// would otherwise fill the audit trail).
const RETRY_AFTER: Duration = Duration::from_secs(30);
/// The key of this node's own attestation among the proposals made.
const ATTEST: &str = "attest";

pub async fn run(node: Arc<Node>, io: Arc<dyn Io>) {
    let mut proposed: HashMap<String, Instant> = HashMap::new();
    let mut ticker = tokio::time::interval(TICK);
    loop {
        ticker.tick().await;
        let now = Instant::now();
        proposed.retain(|_, at| now.duration_since(*at) < RETRY_AFTER);
        if node.needs_attestation(now_ms()) && !proposed.contains_key(ATTEST) {
            proposed.insert(ATTEST.to_string(), now);
            io.propose(Operation::Attest).await;
        }
        if node.server_state() != ServerState::Leader {
            continue;
        }
        for op in node.maintenance_due(now_ms()) {
            let key = format!("{op:?}");
            if proposed.contains_key(&key) {
                continue;
            }
            proposed.insert(key, now);
            io.propose(op).await;
        }
    }
}
