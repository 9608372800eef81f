//! Batched audit of operations that do not otherwise go through the log
//! (encrypt, decrypt, partials, refused requests): events are collected for
//! up to `FLUSH_AFTER` or `MAX_AUDIT_BATCH` events and proposed as one entry.

use std::sync::Arc;
use std::time::Duration;

use qk_state::{AuditEvent, Operation, MAX_AUDIT_BATCH};
use qk_types::KeyVersion;
use tokio::sync::mpsc;
use tracing::error;

use crate::quorum::Io;

/// How long an event may wait for companions before its batch is proposed.
const FLUSH_AFTER: Duration = Duration::from_millis(20);
/// Events buffered before callers see backpressure (then: an error log).
const QUEUE_LEN: usize = 65_536;

#[derive(Clone)]
pub struct AuditQueue {
    tx: mpsc::Sender<AuditEvent>,
}

impl AuditQueue {
    pub fn new() -> (AuditQueue, mpsc::Receiver<AuditEvent>) {
        let (tx, rx) = mpsc::channel(QUEUE_LEN);
        (AuditQueue { tx }, rx)
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
        let queued = self.tx.try_send(event).is_ok();
        if !queued {
            error!(
                operation,
                "audit queue full or closed: an audit event was lost"
            );
        }
        queued
    }
}

pub async fn run(mut rx: mpsc::Receiver<AuditEvent>, io: Arc<dyn Io>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + FLUSH_AFTER;
        while batch.len() < MAX_AUDIT_BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(e)) => batch.push(e),
                _ => break,
            }
        }
        io.propose(Operation::AuditBatch(batch)).await;
    }
}
