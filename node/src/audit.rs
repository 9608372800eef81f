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

use crate::quorum::Io;

/// How long an event may wait for companions before its batch is proposed.
const FLUSH_AFTER: Duration = Duration::from_millis(20);
/// The shortest gap between two batches that a waiting caller may cause:
/// at most 200 signed batches a second from one node, whatever the load.
const MIN_GAP: Duration = Duration::from_millis(5);
/// How long a caller waits for its event to be committed.
const COMMIT_WAIT: Duration = Duration::from_secs(5);
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
        // A leader without a majority never answers: give up with the
        // waiters rather than stall every later batch behind this one.
        let proposed = io.propose(Operation::AuditBatch(events));
        let committed = matches!(tokio::time::timeout(COMMIT_WAIT, proposed).await, Ok(true));
        for waiter in waiters.into_iter().flatten() {
            let _ = waiter.send(committed);
        }
    }
}
