//! Batched audit of operations that do not otherwise go through the log
//! (encrypt, decrypt, partials, refused requests): events are collected for
//! up to `FLUSH_AFTER` or `MAX_AUDIT_BATCH` events and proposed as one entry.
//! A partial waits until its event is committed (`record_durable`); its
//! batch goes as soon as the pacing (`MIN_GAP`) allows.

use std::sync::Arc;
use std::time::Duration;

use qk_state::{AuditEvent, Operation, MAX_AUDIT_BATCH};
use qk_types::KeyVersion;
use tokio::sync::{mpsc, oneshot};
use tracing::error;

use crate::io::Io;

/// How long an event may wait for companions before its batch is proposed.
const FLUSH_AFTER: Duration = Duration::from_millis(20);
/// The shortest gap between two batches that a waiting caller may cause:
/// at most 200 signed batches a second from one node, whatever the load.
const MIN_GAP: Duration = Duration::from_millis(5);
/// How long a caller waits for its event to be committed.
const COMMIT_WAIT: Duration = Duration::from_secs(5);
/// The pause before a batch is proposed again after a refused proposal (no
/// leader during an election, a leader that just stepped down).
const PROPOSE_RETRY: Duration = Duration::from_millis(100);
/// Events buffered before callers see backpressure (then: an error log).
const QUEUE_LEN: usize = 65_536;

/// An event for the trail, and who waits to know it is committed.
pub struct Queued {
    event: AuditEvent,
    committed: Option<oneshot::Sender<bool>>,
}

#[derive(Clone)]
pub struct AuditQueue {
    tx: mpsc::Sender<Queued>,
}

impl AuditQueue {
    pub fn new() -> (AuditQueue, mpsc::Receiver<Queued>) {
        let (tx, rx) = mpsc::channel(QUEUE_LEN);
        (AuditQueue { tx }, rx)
    }

    /// Queues one event and waits until the batch that carries it is
    /// committed: `false` when it was not within [`COMMIT_WAIT`] (no leader,
    /// no quorum, the queue full), and then the caller must not release
    /// what the event records.
    pub async fn record_durable(
        &self,
        principal: &str,
        operation: &str,
        (key, version): (Option<&str>, Option<KeyVersion>),
        outcome: String,
    ) -> bool {
        let event = AuditEvent::new(principal, operation, key, version, &outcome);
        let (tx, rx) = oneshot::channel();
        let queued = Queued {
            event,
            committed: Some(tx),
        };
        if self.tx.try_send(queued).is_err() {
            error!(operation, "audit queue full or closed: nothing released");
            return false;
        }
        matches!(tokio::time::timeout(COMMIT_WAIT, rx).await, Ok(Ok(true)))
    }

    /// Queues one event for the trail; `false` (and an error log) when the
    /// queue is full or closed and the event is lost.
    pub fn record(
        &self,
        principal: &str,
        operation: &str,
        key: Option<&str>,
        version: Option<KeyVersion>,
        outcome: String,
    ) -> bool {
        let event = AuditEvent::new(principal, operation, key, version, &outcome);
        let queued = Queued {
            event,
            committed: None,
        };
        let queued = self.tx.try_send(queued).is_ok();
        if !queued {
            error!(
                operation,
                "audit queue full or closed: an audit event was lost"
            );
        }
        queued
    }
}

pub async fn run(mut rx: mpsc::Receiver<Queued>, io: Arc<dyn Io>) {
    // At most one batch in flight and one per MIN_GAP from this node: every
    // batch is a signed command that every replica verifies, and counts
    // among the requests the state remembers.
    let mut last_flush = tokio::time::Instant::now() - FLUSH_AFTER;
    while let Some(first) = rx.recv().await {
        // A waiting caller (a partial held until its record commits) goes
        // as soon as the rate allows; other events wait for companions.
        let soonest = |q: &Queued| {
            let now = tokio::time::Instant::now();
            match q.committed {
                Some(_) => now.max(last_flush + MIN_GAP),
                None => now + FLUSH_AFTER,
            }
        };
        let mut deadline = soonest(&first);
        let mut batch = vec![first];
        while batch.len() < MAX_AUDIT_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(q)) => {
                    deadline = deadline.min(soonest(&q));
                    batch.push(q);
                }
                _ => break,
            }
        }
        last_flush = tokio::time::Instant::now();
        let (events, waiters): (Vec<AuditEvent>, Vec<Option<oneshot::Sender<bool>>>) =
            batch.into_iter().map(|q| (q.event, q.committed)).unzip();
        let committed = commit_within(io.as_ref(), events, COMMIT_WAIT).await;
        for waiter in waiters.into_iter().flatten() {
            let _ = waiter.send(committed);
        }
    }
}

/// Proposes `events` as one batch until it is committed or `wait` has
/// passed. A refused proposal (no leader yet) is tried again, so a partial
/// asked for during an election waits for the new leader instead of being
/// refused at once; a leader without a majority never answers, and then the
/// waiters are given up rather than stall every later batch behind this
/// one. A batch whose commit was not reported (a leader change between
/// append and answer) may be proposed twice: the trail then shows its
/// events twice, never not at all.
async fn commit_within(io: &dyn Io, events: Vec<AuditEvent>, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let proposed = io.propose(Operation::AuditBatch(events.clone()));
        match tokio::time::timeout_at(deadline, proposed).await {
            Ok(true) => return true,
            Err(_) => return false,
            Ok(false) if tokio::time::Instant::now() + PROPOSE_RETRY >= deadline => return false,
            Ok(false) => tokio::time::sleep(PROPOSE_RETRY).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// Refuses the first `refusals` proposals (no leader), then commits.
    struct Election {
        refusals: u32,
        proposals: AtomicU32,
    }

    impl Io for Election {
        fn send(&self, _: qk_types::NodeId, _: Vec<u8>) -> qk_net::BoxFuture<'_, ()> {
            Box::pin(async {})
        }

        fn propose(&self, _: Operation) -> qk_net::BoxFuture<'_, bool> {
            let n = self.proposals.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move { n >= self.refusals })
        }
    }

    fn event() -> Vec<AuditEvent> {
        vec![AuditEvent::new(
            "app",
            "key.decrypt.partial",
            Some("k"),
            None,
            "ok",
        )]
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_refused_during_an_election_is_committed_by_the_next_leader() {
        let io = Election {
            refusals: 5,
            proposals: AtomicU32::new(0),
        };
        assert!(commit_within(&io, event(), COMMIT_WAIT).await);
        assert_eq!(io.proposals.load(Ordering::SeqCst), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_no_leader_takes_within_the_wait_is_given_up() {
        let io = Election {
            refusals: u32::MAX,
            proposals: AtomicU32::new(0),
        };
        let started = tokio::time::Instant::now();
        assert!(!commit_within(&io, event(), COMMIT_WAIT).await);
        assert!(started.elapsed() <= COMMIT_WAIT);
        let tries = io.proposals.load(Ordering::SeqCst);
        assert!((40..=51).contains(&tries), "{tries} proposals in 5 s");
    }
}
