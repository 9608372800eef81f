//! The schedule: the leader proposes what the replicated state says is due
//! (rotations, expiries, destructions whose waiting period ended, approvals
//! that ran out). Apply checks each against the log's time again, so a
//! stale or duplicate proposal is refused, never applied twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use tokio::time::Instant;

use crate::node::Node;
use crate::quorum::{now_ms, Io};

/// How often the leader looks for due work.
const TICK: Duration = Duration::from_secs(1);
/// The same operation is not proposed again sooner than this (a refused one
/// would otherwise fill the audit trail).
const RETRY_AFTER: Duration = Duration::from_secs(30);

pub async fn run(node: Arc<Node>, io: Arc<dyn Io>) {
    let mut proposed: HashMap<String, Instant> = HashMap::new();
    let mut ticker = tokio::time::interval(TICK);
    loop {
        ticker.tick().await;
        if node.server_state() != ServerState::Leader {
            continue;
        }
        let now = Instant::now();
        proposed.retain(|_, at| now.duration_since(*at) < RETRY_AFTER);
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
