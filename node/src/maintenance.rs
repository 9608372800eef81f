//! The schedule: the leader proposes what the replicated state says is due
//! (rotations, expiries, destructions whose waiting period ended, approvals
//! that ran out) by the time the nodes vouch for, not by its own clock.
//! Apply checks each against that time again, so a stale, early or
//! duplicate proposal is refused, never applied twice, and a lying leader
//! cannot make anything happen early. Every node, leader or not, vouches
//! for its own clock when the state asks for it (a step is due by the
//! node's clock but not yet by the vouched time, or many request ids are
//! remembered).

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
/// A node vouches for its clock at most this often (the state says when).
const ATTEST_RETRY: Duration = Duration::from_secs(2);
/// A joining node retries publishing its DKG key this often until the
/// state has it (it is not a member, or no leader is known, at first).
const DKG_KEY_RETRY: Duration = Duration::from_secs(2);

pub async fn run(node: Arc<Node>, io: Arc<dyn Io>) {
    let mut proposed: HashMap<String, Instant> = HashMap::new();
    let mut dkg_key_proposed: Option<Instant> = None;
    let mut attested: Option<Instant> = None;
    let mut ticker = tokio::time::interval(TICK);
    loop {
        ticker.tick().await;
        let now = Instant::now();
        proposed.retain(|_, at| now.duration_since(*at) < RETRY_AFTER);
        let retry_due = dkg_key_proposed.is_none_or(|at| now.duration_since(at) >= DKG_KEY_RETRY);
        if let Some(op) = node.dkg_key_to_publish().filter(|_| retry_due) {
            dkg_key_proposed = Some(now);
            io.propose(op).await;
        }
        let attest_due = attested.is_none_or(|at| now.duration_since(at) >= ATTEST_RETRY);
        if attest_due && node.needs_attestation(now_ms()) {
            attested = Some(now);
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
