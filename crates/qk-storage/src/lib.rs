//! sled-backed openraft storage for Quorumkey: the Raft log store
//! ([`LogStore`]) and the state-machine store ([`StateMachineStore`]).
//!
//! # Layout
//!
//! One sled database per node directory, opened by [`open`], with four trees:
//!
//! | tree            | keys                                   | values (postcard)              |
//! |-----------------|----------------------------------------|--------------------------------|
//! | `raft_log`      | log index, 8 bytes big-endian          | `openraft::Entry<TypeConfig>`  |
//! | `raft_meta`     | `vote`, `committed`, `last_purged`, `layout` | `Vote`, `LogId`, `LogId`, version byte |
//! | `state_machine` | `applied`                              | checkpoint: snapshot payload   |
//! | `snapshot`      | `meta`, `data`                         | `SnapshotMeta`, snapshot payload |
//!
//! A snapshot payload is a format byte followed by the last applied log id,
//! the last membership and the [`qk_state::StateMachine`]. Everything read
//! back is decoded strictly (no trailing bytes), after a size check
//! ([`MAX_LOG_ENTRY_BYTES`], [`MAX_META_BYTES`], [`MAX_SNAPSHOT_BYTES`]);
//! log entries must also sit under their own index. Damaged data surfaces as
//! a [`StoreError`] (or an openraft `StorageError` wrapping one), never as a
//! panic.
//!
//! # Durability
//!
//! - **Log entries** are written in one atomic sled batch per `append`, then
//!   the database is flushed (`fsync`) before openraft's `LogFlushed`
//!   callback runs. An entry is acknowledged only once it is on disk.
//! - **The vote** is flushed before `save_vote` returns.
//! - **Truncate** is one atomic batch; **purge** is one transaction covering
//!   the deletions and the `last_purged` pointer, so neither can leave a hole.
//!   Neither flushes: sled's flush makes all earlier writes durable, so the
//!   next flushed append or vote carries them, and losing one in a crash only
//!   brings back entries Raft handles anyway (uncommitted ones are truncated
//!   again, purged ones lie below the snapshot).
//! - **The state machine is kept in memory** and persisted only as a whole,
//!   at snapshot time: `build_snapshot` and `install_snapshot` write the
//!   payload both as the current snapshot and as the state-machine checkpoint
//!   and flush before returning. `apply` does no disk I/O, so applying is
//!   O(entry), not O(state size).
//! - **The committed log id** is saved by `save_committed` (not flushed; it
//!   rides on the next flush, and sled flushes in the background every
//!   500 ms).
//!
//! On restart, [`open`] loads the checkpoint (or the snapshot, if that is
//! newer), so `applied_state()` reports the snapshot's last log id. openraft
//! then reads `read_committed()` and re-applies the log from there to the
//! committed id. Since `apply` is deterministic, the re-applied state and
//! responses equal the ones given before the crash; the log entries it needs
//! were flushed before they could be committed, and openraft purges only
//! entries covered by a persisted snapshot. If the committed pointer itself
//! was lost, the node restarts from the snapshot and re-applies the rest once
//! the leader tells it the commit index; a committed pointer that is ahead of
//! the log after a crash is clamped to the last entry. Work to re-apply on
//! restart is bounded by openraft's snapshot policy (a snapshot every
//! `LogsSinceLast(n)` entries).
//!
//! Consequences for the node: after a restart the applied state can be
//! briefly behind what this node applied before the crash, and entries in
//! that gap are applied a second time into the rebuilt state. Code that reacts
//! to applied entries (e.g. share erasure in `qk-protocol`) must be
//! idempotent, and reads that need freshness must go through Raft
//! (`ensure_linearizable`), not only [`StateReader`].
#![forbid(unsafe_code)]

mod codec;
mod error;
mod log_store;
pub mod shares;
mod state_machine;

#[cfg(test)]
mod tests;

use std::path::Path;

pub use codec::{MAX_LOG_ENTRY_BYTES, MAX_META_BYTES, MAX_SNAPSHOT_BYTES};
pub use error::StoreError;
pub use log_store::{LogStore, MAX_REPLICATION_BATCH_BYTES};
pub use shares::{SealKey, ShareSlot, ShareStore, ShareStoreError};
pub use state_machine::{
    apply_entry, decode_payload, encode_payload, AppliedState, ApplyHook, InstallHook,
    SnapshotBuilder, StateMachineStore, StateReader,
};

pub type NodeId = qk_raft::NodeId;
pub type Entry = openraft::Entry<qk_raft::TypeConfig>;

/// Tree names. Changing one is a layout change.
const TREE_LOG: &str = "raft_log";
const TREE_META: &str = "raft_meta";
const TREE_STATE_MACHINE: &str = "state_machine";
const TREE_SNAPSHOT: &str = "snapshot";

/// Version of the on-disk layout, stored under `layout` in `raft_meta`.
/// 2: every command carries its author's proof (log entries, state and
/// snapshots of layout 1 do not decode as layout 2).
/// 3: DKG shares travel sealed inside deals; no `Ready` or
/// `Justification` step; nodes publish DKG keys.
/// 4: the state carries the cluster's access rule (snapshots of layout 3
/// do not decode).
const LAYOUT_VERSION: u8 = 4;
const KEY_LAYOUT: &[u8] = b"layout";

/// Opens (or creates) the node's storage in directory `path`.
///
/// Blocking: call it before starting Raft (or from `spawn_blocking`). Fails
/// if another process holds the directory, if it was written by an
/// incompatible layout, or if the persisted state machine does not decode.
/// `grants` checks the session grants that commands are signed under (every
/// applied command must prove its author, see [`qk_state::authn`]).
pub fn open(
    path: impl AsRef<Path>,
    grants: std::sync::Arc<dyn qk_state::authn::GrantCheck>,
) -> Result<(LogStore, StateMachineStore), StoreError> {
    let path = path.as_ref();
    let db = sled::Config::new()
        .path(path)
        .open()
        .map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    let tree = |name: &str| db.open_tree(name).map_err(StoreError::io("opening a tree"));
    let logs = tree(TREE_LOG)?;
    let meta = tree(TREE_META)?;
    let sm_tree = tree(TREE_STATE_MACHINE)?;
    let snapshots = tree(TREE_SNAPSHOT)?;

    match meta
        .get(KEY_LAYOUT)
        .map_err(StoreError::io("reading the layout version"))?
    {
        Some(v) => match v.as_ref() {
            [LAYOUT_VERSION] => {}
            [other] => {
                return Err(StoreError::UnsupportedFormat {
                    what: format!("the Raft storage at {}", path.display()),
                    found: *other,
                    expected: LAYOUT_VERSION,
                })
            }
            bytes => {
                return Err(StoreError::corrupt(
                    "layout version",
                    format!("expected 1 byte, found {}", bytes.len()),
                ))
            }
        },
        None => {
            meta.insert(KEY_LAYOUT, &[LAYOUT_VERSION])
                .map_err(StoreError::io("writing the layout version"))?;
            db.flush()
                .map_err(StoreError::io("flushing the new storage"))?;
        }
    }

    let applied = state_machine::load_applied(&sm_tree, &snapshots)?;
    tracing::info!(
        path = %path.display(),
        last_applied = ?applied.last_applied(),
        "opened Raft storage"
    );
    Ok((
        LogStore::new(db.clone(), logs, meta),
        StateMachineStore::new(db, sm_tree, snapshots, applied, grants),
    ))
}
