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

use qk_state::Operation;
use tokio::time::Instant;

use crate::io::{now_ms, Io};

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

/// What the schedule reads from its node: every answer comes from the
/// replicated state (or, for leadership, from Raft), never from the clock
/// alone.
pub trait Schedule: Send + Sync + 'static {
    /// The `PublishDkgKey` this node still has to propose, if any.
    fn dkg_key_to_publish(&self) -> Option<Operation>;
    /// The state asks this node to vouch for its clock.
    fn needs_attestation(&self, now_ms: u64) -> bool;
    /// This node leads (only the leader proposes due work).
    fn leads(&self) -> bool;
    /// The work due by the vouched time.
    fn maintenance_due(&self, now_ms: u64) -> Vec<Operation>;
}

pub async fn run(node: Arc<dyn Schedule>, io: Arc<dyn Io>) {
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
        if !node.leads() {
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use qk_types::KeyVersion;

    use super::*;

    /// A node whose answers the test sets, and an Io that records proposals.
    #[derive(Default)]
    struct Fake {
        leads: Mutex<bool>,
        attest: Mutex<bool>,
        due: Mutex<Vec<Operation>>,
        proposed: Mutex<Vec<Operation>>,
    }

    impl Schedule for Fake {
        fn dkg_key_to_publish(&self) -> Option<Operation> {
            None
        }
        fn needs_attestation(&self, _now_ms: u64) -> bool {
            *self.attest.lock().expect("lock")
        }
        fn leads(&self) -> bool {
            *self.leads.lock().expect("lock")
        }
        fn maintenance_due(&self, _now_ms: u64) -> Vec<Operation> {
            self.due.lock().expect("lock").clone()
        }
    }

    impl Io for Fake {
        fn send(&self, _to: qk_types::NodeId, _bytes: Vec<u8>) -> qk_net::BoxFuture<'_, ()> {
            Box::pin(async {})
        }
        fn propose(&self, op: Operation) -> qk_net::BoxFuture<'_, bool> {
            self.proposed.lock().expect("lock").push(op);
            Box::pin(async { true })
        }
    }

    fn destroy() -> Operation {
        Operation::Destroy {
            name: "k".into(),
            version: KeyVersion(1),
        }
    }

    async fn proposals_after(fake: &Arc<Fake>, secs: u64) -> Vec<Operation> {
        tokio::time::sleep(Duration::from_secs(secs)).await;
        std::mem::take(&mut *fake.proposed.lock().expect("lock"))
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_leader_proposes_due_work_and_not_again_within_the_retry_period() {
        let fake = Arc::new(Fake::default());
        *fake.due.lock().expect("lock") = vec![destroy()];
        tokio::spawn(run(fake.clone(), fake.clone()));
        assert!(
            proposals_after(&fake, 5).await.is_empty(),
            "a follower proposed"
        );
        *fake.leads.lock().expect("lock") = true;
        assert_eq!(proposals_after(&fake, 2).await, vec![destroy()]);
        assert!(
            proposals_after(&fake, 20).await.is_empty(),
            "proposed again within 30 s"
        );
        assert_eq!(proposals_after(&fake, 10).await, vec![destroy()]);
    }

    #[tokio::test(start_paused = true)]
    async fn every_node_vouches_for_its_clock_when_asked_at_most_every_two_seconds() {
        let fake = Arc::new(Fake::default());
        *fake.attest.lock().expect("lock") = true;
        tokio::spawn(run(fake.clone(), fake.clone()));
        let proposed = proposals_after(&fake, 10).await;
        assert!(
            proposed.iter().all(|op| *op == Operation::Attest),
            "{proposed:?}"
        );
        assert!(
            (4..=6).contains(&proposed.len()),
            "{} attestations in 10 s",
            proposed.len()
        );
    }
}
