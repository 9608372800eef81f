//! Errors of the storage layer, and their mapping into openraft's
//! [`StorageError`](openraft::StorageError).

use std::path::PathBuf;

use openraft::{AnyError, ErrorSubject, ErrorVerb, StorageIOError};

use crate::NodeId;

/// What went wrong in the node's storage.
///
/// Every message names what failed and what an operator can do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error(
        "could not open the Raft storage at {path}: {source}; check that the directory is \
         writable and that no other qk-node process is using it"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },

    #[error(
        "storage I/O failed while {action}: {source}; check free disk space and the health of \
         the disk, then restart the node"
    )]
    Io {
        action: &'static str,
        #[source]
        source: sled::Error,
    },

    #[error(
        "corrupt {what} in the Raft storage: {detail}; the data directory is damaged: restore \
         it from a backup, or wipe it and let the node catch up from the cluster"
    )]
    Corrupt { what: String, detail: String },

    #[error(
        "{what} is {len} bytes, over the limit of {max} bytes; reject oversized commands before \
         proposing them"
    )]
    TooLarge {
        what: String,
        len: usize,
        max: usize,
    },

    #[error("could not encode {what}: {detail}; this is a bug in qk-storage, please report it")]
    Encode { what: &'static str, detail: String },

    #[error(
        "{what} has format version {found}, this build understands version {expected}; run a \
         qk-node build that matches the data directory and the other nodes of the cluster"
    )]
    UnsupportedFormat {
        what: String,
        found: u8,
        expected: u8,
    },

    #[error(
        "the received snapshot does not match its metadata: {detail}; the snapshot is rejected and \
         the leader will send it again"
    )]
    SnapshotMismatch { detail: String },

    #[error(
        "the in-memory state machine is unusable because an earlier apply panicked; restart the \
         node so it rebuilds the state from disk"
    )]
    Poisoned,
}

impl StoreError {
    pub(crate) fn io(action: &'static str) -> impl FnOnce(sled::Error) -> StoreError {
        move |source| StoreError::Io { action, source }
    }

    pub(crate) fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            what: what.into(),
            detail: detail.into(),
        }
    }

    /// Converts into openraft's error, tagged with what was being accessed.
    pub(crate) fn into_raft(
        self,
        subject: ErrorSubject<NodeId>,
        verb: ErrorVerb,
    ) -> openraft::StorageError<NodeId> {
        StorageIOError::new(subject, verb, AnyError::new(&self)).into()
    }
}

/// Shorthands for the subjects openraft reports.
pub(crate) fn read_logs(e: StoreError) -> openraft::StorageError<NodeId> {
    e.into_raft(ErrorSubject::Logs, ErrorVerb::Read)
}

pub(crate) fn write_logs(e: StoreError) -> openraft::StorageError<NodeId> {
    e.into_raft(ErrorSubject::Logs, ErrorVerb::Write)
}

pub(crate) fn read_vote(e: StoreError) -> openraft::StorageError<NodeId> {
    e.into_raft(ErrorSubject::Vote, ErrorVerb::Read)
}

pub(crate) fn write_vote(e: StoreError) -> openraft::StorageError<NodeId> {
    e.into_raft(ErrorSubject::Vote, ErrorVerb::Write)
}

pub(crate) fn read_sm(e: StoreError) -> openraft::StorageError<NodeId> {
    e.into_raft(ErrorSubject::StateMachine, ErrorVerb::Read)
}

pub(crate) fn write_sm(e: StoreError) -> openraft::StorageError<NodeId> {
    e.into_raft(ErrorSubject::StateMachine, ErrorVerb::Write)
}

pub(crate) fn read_snapshot(e: StoreError) -> openraft::StorageError<NodeId> {
    e.into_raft(ErrorSubject::Snapshot(None), ErrorVerb::Read)
}

pub(crate) fn write_snapshot(e: StoreError) -> openraft::StorageError<NodeId> {
    e.into_raft(ErrorSubject::Snapshot(None), ErrorVerb::Write)
}
