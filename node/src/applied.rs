//! Read-your-writes: waiting until this node has applied a log index.
//!
//! Every answer to a write carries the log index it was applied at; a client
//! sends back the highest index it has seen, and the node (and every holder
//! it asks for a partial) decides only once it has applied that index. The
//! wait is bounded: a node that stays behind answers "behind, retry".

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Semaphore};

/// Longest a request waits for its node to apply the index it names.
pub const CLIENT_INDEX_WAIT: Duration = Duration::from_secs(5);
/// Longest a holder waits for the index a partial request names; shorter
/// than the unwrap's own deadline so the requester can still ask another.
pub const HOLDER_INDEX_WAIT: Duration = Duration::from_secs(3);
/// Most requests waiting for an index at once; more are answered "behind"
/// at once, so requests naming indexes far ahead cannot pile up.
pub const MAX_INDEX_WAITERS: usize = 4096;
/// An index this far beyond the applied one is answered "behind" without
/// waiting: no replication lag is that long, so the wait would be wasted.
pub const MAX_INDEX_AHEAD: u64 = 10_000;

/// The node's last applied log index, as openraft reports it (after the
/// entry is visible to readers of the state).
#[derive(Clone, Debug)]
pub struct AppliedIndex {
    applied: watch::Receiver<u64>,
    waiters: Arc<Semaphore>,
    /// Holders' waits have their own pool: clients naming far indexes
    /// cannot make holders refuse partials for lack of a permit.
    holder_waiters: Arc<Semaphore>,
}

/// The node had not applied the index a request needs within the wait.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "node is behind: it has applied log index {applied}, the request needs {needed}; \
     retry shortly or send the request to another node"
)]
pub struct Behind {
    pub applied: u64,
    pub needed: u64,
}

impl AppliedIndex {
    /// A channel the node feeds from Raft metrics, and its reader.
    pub fn channel() -> (watch::Sender<u64>, AppliedIndex) {
        let (tx, rx) = watch::channel(0);
        let waiters = Arc::new(Semaphore::new(MAX_INDEX_WAITERS));
        let holder_waiters = Arc::new(Semaphore::new(MAX_INDEX_WAITERS));
        (
            tx,
            AppliedIndex {
                applied: rx,
                waiters,
                holder_waiters,
            },
        )
    }

    pub fn get(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Returns once the node has applied `needed`, or `Behind` after `wait`.
    pub async fn wait_for(&self, needed: u64, wait: Duration) -> Result<u64, Behind> {
        self.wait_in(&self.waiters, needed, wait).await
    }

    /// As [`AppliedIndex::wait_for`] for a holder deciding on a partial
    /// request ([`HOLDER_INDEX_WAIT`]), from its own pool of waiters.
    pub async fn wait_for_holder(&self, needed: u64) -> Result<u64, Behind> {
        self.wait_in(&self.holder_waiters, needed, HOLDER_INDEX_WAIT)
            .await
    }

    async fn wait_in(&self, pool: &Semaphore, needed: u64, wait: Duration) -> Result<u64, Behind> {
        let now = self.get();
        if now >= needed {
            return Ok(now);
        }
        let behind = Behind {
            applied: now,
            needed,
        };
        if needed - now > MAX_INDEX_AHEAD {
            return Err(behind);
        }
        let Ok(_permit) = pool.try_acquire() else {
            return Err(behind);
        };
        let mut rx = self.applied.clone();
        let reached = tokio::time::timeout(wait, rx.wait_for(|a| *a >= needed))
            .await
            .map(|r| r.map(|applied| *applied));
        match reached {
            Ok(Ok(applied)) => Ok(applied),
            _ => Err(Behind {
                applied: self.get(),
                needed,
            }),
        }
    }
}

/// Feeds the applied index from openraft's metrics until Raft stops.
pub fn follow_raft(raft: &qk_raft::Raft, tx: watch::Sender<u64>) {
    let mut metrics = raft.metrics();
    tokio::spawn(async move {
        loop {
            let applied = metrics
                .borrow_and_update()
                .last_applied
                .map(|l| l.index)
                .unwrap_or(0);
            tx.send_if_modified(|a| {
                let newer = applied > *a;
                if newer {
                    *a = applied;
                }
                newer
            });
            if metrics.changed().await.is_err() {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_until_applied_or_reports_behind() {
        let (tx, applied) = AppliedIndex::channel();
        assert_eq!(applied.wait_for(0, Duration::ZERO).await, Ok(0));
        let behind = applied.wait_for(5, Duration::from_millis(50)).await;
        assert_eq!(
            behind,
            Err(Behind {
                applied: 0,
                needed: 5
            })
        );
        assert!(behind.expect_err("behind").to_string().contains("retry"));
        let waiter = {
            let applied = applied.clone();
            tokio::spawn(async move { applied.wait_for(5, Duration::from_secs(30)).await })
        };
        tx.send_replace(4);
        tokio::task::yield_now().await;
        tx.send_replace(7);
        assert_eq!(waiter.await.expect("joined"), Ok(7));
    }

    #[tokio::test]
    async fn far_ahead_indexes_and_too_many_waiters_are_answered_at_once() {
        let (_tx, applied) = AppliedIndex::channel();
        let far = applied.wait_for(MAX_INDEX_AHEAD + 1, Duration::from_secs(3600));
        let answered = tokio::time::timeout(Duration::from_secs(60), far).await;
        assert!(matches!(answered, Ok(Err(Behind { .. }))), "{answered:?}");
        let hold: Vec<_> = (0..MAX_INDEX_WAITERS)
            .map(|_| applied.waiters.clone().try_acquire_owned().expect("permit"))
            .collect();
        let one_more = applied.wait_for(1, Duration::from_secs(3600));
        let answered = tokio::time::timeout(Duration::from_secs(60), one_more).await;
        assert!(matches!(answered, Ok(Err(Behind { .. }))), "{answered:?}");
        // Holders still get a permit of their own (and wait their 3 s).
        let holder = applied.wait_for_holder(1);
        let answered = tokio::time::timeout(Duration::from_secs(60), holder).await;
        assert!(matches!(answered, Ok(Err(Behind { .. }))), "{answered:?}");
        assert_eq!(
            applied.holder_waiters.available_permits(),
            MAX_INDEX_WAITERS
        );
        drop(hold);
    }
}
