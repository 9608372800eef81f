//! Read-your-writes: waiting until this node has applied a log index.
//!
//! Every answer to a write carries the log index it was applied at; a client
//! sends back the highest index it has seen, and the node (and every holder
//! it asks for a partial) decides only once it has applied that index. The
//! wait is bounded: a node that stays behind answers "behind, retry".

use std::time::Duration;

use tokio::sync::watch;

/// Longest a request waits for its node to apply the index it names.
pub const CLIENT_INDEX_WAIT: Duration = Duration::from_secs(5);
/// Longest a holder waits for the index a partial request names; shorter
/// than the unwrap's own deadline so the requester can still ask another.
pub const HOLDER_INDEX_WAIT: Duration = Duration::from_secs(3);

/// The node's last applied log index, as openraft reports it (after the
/// entry is visible to readers of the state).
#[derive(Clone, Debug)]
pub struct AppliedIndex(watch::Receiver<u64>);

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
        (tx, AppliedIndex(rx))
    }

    pub fn get(&self) -> u64 {
        *self.0.borrow()
    }

    /// Returns once the node has applied `needed`, or `Behind` after `wait`.
    pub async fn wait_for(&self, needed: u64, wait: Duration) -> Result<u64, Behind> {
        let now = self.get();
        if now >= needed {
            return Ok(now);
        }
        let mut rx = self.0.clone();
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
}
