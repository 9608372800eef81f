//! In-memory openraft storage for simulated nodes, with the durability rules
//! of `qk-storage`: log entries and the vote are durable once acknowledged;
//! the state machine lives in memory and is persisted only as a snapshot
//! (which is also the restart checkpoint). A crash keeps the [`RaftDisk`]
//! and loses the applied state; on restart openraft re-applies the log from
//! the checkpoint to the committed id, as it does on a real node.
//!
//! sled cannot be used here: its flushes complete on its own threads, which a
//! paused-clock runtime sees as idle time, so virtual time would depend on
//! the host's scheduling.

use std::fmt::{self, Debug};
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    Entry, ErrorSubject, ErrorVerb, LogId, LogState, OptionalSend, RaftLogId, RaftLogReader,
    RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
    Vote,
};
use qk_raft::{BatchResponse, NodeId, QkNode, TypeConfig};
use qk_state::authn::GrantCheck;
use qk_state::{Command, Response, StateMachine};
use qk_storage::{apply_entry, decode_payload, encode_payload, AppliedState};
use sha2::{Digest, Sha256};

type LogEntry = Entry<TypeConfig>;
type Membership = StoredMembership<NodeId, QkNode>;
type Meta = SnapshotMeta<NodeId, QkNode>;

/// What survives a crash: the log, the vote, the committed pointer and the
/// last snapshot. Lost whole on a disk loss.
#[derive(Debug, Default)]
pub struct RaftDisk {
    log: std::collections::BTreeMap<u64, LogEntry>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
    snapshot: Option<(Meta, Vec<u8>)>,
}

impl RaftDisk {
    pub fn last_index(&self) -> u64 {
        self.log
            .keys()
            .next_back()
            .copied()
            .or(self.last_purged.map(|l| l.index))
            .unwrap_or(0)
    }

    /// Every byte image on this disk, for the checker's secret search.
    pub fn images(&self) -> Vec<Vec<u8>> {
        let mut out: Vec<Vec<u8>> = self
            .log
            .values()
            .map(|e| postcard::to_allocvec(e).unwrap_or_default())
            .collect();
        if let Some((_, data)) = &self.snapshot {
            out.push(data.clone());
        }
        out
    }
}

pub type SharedDisk = Arc<Mutex<RaftDisk>>;

fn io_err(subject: ErrorSubject<NodeId>, verb: ErrorVerb, what: &str) -> StorageError<NodeId> {
    StorageError::IO {
        source: StorageIOError::new(subject, verb, openraft::AnyError::error(what)),
    }
}

fn poisoned() -> StorageError<NodeId> {
    io_err(
        ErrorSubject::Store,
        ErrorVerb::Read,
        "simulated disk lock poisoned",
    )
}

/// Entries appended but not yet flushed: lost if the node crashes first.
pub type Pending = Arc<Mutex<std::collections::BTreeMap<u64, LogEntry>>>;

/// The log store of one incarnation of a simulated node.
///
/// An append is acknowledged (openraft's `LogFlushed`) only after a
/// simulated fsync of `fsync_ms`; flushes run one after another, and each
/// makes everything appended before it durable (as sled's flush does). A
/// crash stops the flusher: what was not flushed is gone.
#[derive(Clone)]
pub struct MemLog {
    disk: SharedDisk,
    pending: Pending,
    flusher: tokio::sync::mpsc::UnboundedSender<LogFlushed<TypeConfig>>,
}

impl Debug for MemLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemLog").finish_non_exhaustive()
    }
}

/// Moves every pending entry to the disk (one fsync).
fn flush(disk: &SharedDisk, pending: &Pending) {
    let (Ok(mut d), Ok(mut p)) = (disk.lock(), pending.lock()) else {
        return;
    };
    d.log.append(&mut p);
}

impl MemLog {
    /// Opens the log of a (re)starting node. `alive` turns false when this
    /// incarnation crashes; its flusher then flushes nothing more.
    pub fn new(disk: SharedDisk, fsync_ms: u64, alive: Arc<std::sync::atomic::AtomicBool>) -> Self {
        let pending: Pending = Arc::default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<LogFlushed<TypeConfig>>();
        let (d, p) = (disk.clone(), pending.clone());
        tokio::spawn(async move {
            while let Some(callback) = rx.recv().await {
                tokio::time::sleep(std::time::Duration::from_millis(fsync_ms)).await;
                if !alive.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                flush(&d, &p);
                callback.log_io_completed(Ok(()));
            }
        });
        MemLog {
            disk,
            pending,
            flusher: tx,
        }
    }

    /// The entries not yet flushed (for the crash statistics).
    pub fn pending(&self) -> Pending {
        self.pending.clone()
    }

    /// The last entry's id, flushed or not (`Err` if a lock is poisoned).
    fn last_log_id(&self) -> Result<Option<LogId<NodeId>>, ()> {
        let disk = self.disk.lock().map_err(|_| ())?;
        let pending = self.pending.lock().map_err(|_| ())?;
        let last = pending
            .values()
            .next_back()
            .or(disk.log.values().next_back())
            .map(|e| *e.get_log_id());
        Ok(last.or(disk.last_purged))
    }
}

impl RaftLogReader<TypeConfig> for MemLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<LogEntry>, StorageError<NodeId>> {
        let disk = self.disk.lock().map_err(|_| poisoned())?;
        let pending = self.pending.lock().map_err(|_| poisoned())?;
        let mut out: std::collections::BTreeMap<u64, LogEntry> = disk
            .log
            .range(range.clone())
            .map(|(i, e)| (*i, e.clone()))
            .collect();
        out.extend(pending.range(range).map(|(i, e)| (*i, e.clone())));
        Ok(out.into_values().collect())
    }
}

impl RaftLogStorage<TypeConfig> for MemLog {
    type LogReader = MemLog;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged = self.disk.lock().map_err(|_| poisoned())?.last_purged;
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: self.last_log_id().map_err(|()| poisoned())?,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        // Flushed before returning, which makes earlier appends durable too.
        flush(&self.disk, &self.pending);
        self.disk.lock().map_err(|_| poisoned())?.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.disk.lock().map_err(|_| poisoned())?.vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.disk.lock().map_err(|_| poisoned())?.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        let committed = self.disk.lock().map_err(|_| poisoned())?.committed;
        // As qk-storage: a committed pointer ahead of the log is clamped.
        Ok(
            match (committed, self.last_log_id().map_err(|()| poisoned())?) {
                (Some(c), Some(l)) if c.index > l.index => Some(l),
                (c, _) => c,
            },
        )
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = LogEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let mut pending = self.pending.lock().map_err(|_| poisoned())?;
            for e in entries {
                pending.insert(e.get_log_id().index, e);
            }
        }
        // A stopped flusher drops the callback: openraft sees the I/O fail.
        let _ = self.flusher.send(callback);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let _ = self
            .pending
            .lock()
            .map_err(|_| poisoned())?
            .split_off(&log_id.index);
        let _ = self
            .disk
            .lock()
            .map_err(|_| poisoned())?
            .log
            .split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        flush(&self.disk, &self.pending);
        let mut disk = self.disk.lock().map_err(|_| poisoned())?;
        let keep = disk.log.split_off(&(log_id.index + 1));
        disk.log = keep;
        disk.last_purged = Some(log_id);
        Ok(())
    }
}

/// What the state machine reports while applying.
pub enum Applied<'a> {
    /// Every log entry, blank and membership ones included: its hash.
    Entry { index: u64, hash: [u8; 32] },
    /// Every command, with the state right after it (the node's apply hook).
    Command {
        state: &'a StateMachine,
        index: u64,
        command: &'a Command,
        response: &'a Response,
    },
    /// A snapshot from the leader replaced the state (the node's install
    /// hook): the commands it covers are never applied one by one here.
    SnapshotInstalled { index: u64 },
}

/// The planted reordering: the index held back, and the entry once seen.
type HeldBack = (u64, Option<LogEntry>);

pub type Hook = Box<dyn FnMut(Applied<'_>) + Send>;

/// The state-machine store of one simulated node.
#[derive(Clone)]
pub struct MemSm {
    /// Planted bug: the entry at this index is held back and applied after
    /// the next one.
    swap: Arc<Mutex<Option<HeldBack>>>,
    disk: SharedDisk,
    state: Arc<RwLock<AppliedState>>,
    hook: Arc<Mutex<Option<Hook>>>,
    /// The simulated cluster's PKI: what the node's CA check is.
    grants: Arc<dyn GrantCheck>,
}

impl Debug for MemSm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemSm").finish_non_exhaustive()
    }
}

pub fn entry_hash(e: &LogEntry) -> [u8; 32] {
    Sha256::digest(postcard::to_allocvec(e).unwrap_or_default()).into()
}

impl MemSm {
    /// The state a (re)starting node has: its last snapshot, or nothing.
    pub fn open(disk: SharedDisk, hook: Hook, grants: Arc<dyn GrantCheck>) -> Self {
        let state = disk
            .lock()
            .ok()
            .and_then(|d| d.snapshot.as_ref().map(|(_, data)| data.clone()))
            .and_then(|data| decode_payload("simulated checkpoint", &data).ok())
            .unwrap_or_default();
        MemSm {
            swap: Arc::new(Mutex::new(None)),
            disk,
            state: Arc::new(RwLock::new(state)),
            hook: Arc::new(Mutex::new(Some(hook))),
            grants,
        }
    }

    /// Runs `f` on the applied state.
    pub fn read<T>(&self, f: impl FnOnce(&AppliedState) -> T) -> Option<T> {
        self.state.read().ok().map(|s| f(&s))
    }

    /// Plants the reordering bug: entry `index` is applied after `index + 1`.
    pub fn plant_swap(&mut self, index: u64) {
        if let Ok(mut s) = self.swap.lock() {
            *s = Some((index, None));
        }
    }

    /// The entries to apply now, in the (possibly buggy) order.
    fn reorder(&self, entries: Vec<LogEntry>) -> Vec<LogEntry> {
        let Ok(mut swap) = self.swap.lock() else {
            return entries;
        };
        let Some((at, held)) = swap.as_mut() else {
            return entries;
        };
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let i = e.log_id.index;
            if i == *at {
                *held = Some(e);
            } else if i == *at + 1 {
                out.push(e);
                out.extend(held.take());
            } else {
                out.push(e);
            }
        }
        out
    }

    /// A crashed node's store must not report anything any more.
    pub fn detach(&self) {
        if let Ok(mut h) = self.hook.lock() {
            *h = None;
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for MemSm {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let (data, meta) = {
            let s = self.state.read().map_err(|_| poisoned())?;
            let data = encode_payload(&s).map_err(|e| {
                io_err(
                    ErrorSubject::Snapshot(None),
                    ErrorVerb::Write,
                    &e.to_string(),
                )
            })?;
            let id = s
                .last_applied()
                .map_or_else(|| "empty".to_string(), |l| l.to_string());
            let meta = SnapshotMeta {
                last_log_id: s.last_applied(),
                last_membership: s.last_membership().clone(),
                snapshot_id: id,
            };
            (data, meta)
        };
        let mut disk = self.disk.lock().map_err(|_| poisoned())?;
        let newer = disk
            .snapshot
            .as_ref()
            .is_none_or(|(m, _)| m.last_log_id <= meta.last_log_id);
        if newer {
            disk.snapshot = Some((meta.clone(), data.clone()));
        }
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for MemSm {
    type SnapshotBuilder = MemSm;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        let s = self.state.read().map_err(|_| poisoned())?;
        Ok((s.last_applied(), s.last_membership().clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchResponse>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = LogEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut state = self.state.write().map_err(|_| poisoned())?;
        let mut hook = self.hook.lock().map_err(|_| poisoned())?;
        let mut out = Vec::new();
        let entries: Vec<LogEntry> = entries.into_iter().collect();
        let count = entries.len();
        for entry in self.reorder(entries) {
            // The position in apply order (the entry's own index unless the
            // planted reordering bug is on).
            let index = state.last_applied().map_or(0, |l| l.index + 1);
            let Some(h) = hook.as_mut() else {
                out.push(apply_entry(
                    &mut state,
                    entry,
                    self.grants.as_ref(),
                    &mut |_, _, _, _| {},
                ));
                continue;
            };
            h(Applied::Entry {
                index,
                hash: entry_hash(&entry),
            });
            out.push(apply_entry(
                &mut state,
                entry,
                self.grants.as_ref(),
                &mut |state, index, command, response| {
                    h(Applied::Command {
                        state,
                        index,
                        command,
                        response,
                    })
                },
            ));
        }
        // One response per entry openraft passed in (only the planted bug
        // makes these differ).
        out.resize(count, BatchResponse::default());
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &Meta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let new_state = decode_payload("received snapshot", &data).map_err(|e| {
            io_err(
                ErrorSubject::Snapshot(Some(meta.signature())),
                ErrorVerb::Read,
                &e.to_string(),
            )
        })?;
        self.disk.lock().map_err(|_| poisoned())?.snapshot = Some((meta.clone(), data));
        *self.state.write().map_err(|_| poisoned())? = new_state;
        let index = meta.last_log_id.map_or(0, |l| l.index);
        if let Some(h) = self.hook.lock().map_err(|_| poisoned())?.as_mut() {
            h(Applied::SnapshotInstalled { index });
        }
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let disk = self.disk.lock().map_err(|_| poisoned())?;
        Ok(disk.snapshot.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(data.clone())),
        }))
    }
}

#[cfg(test)]
mod suite {
    //! openraft's storage test suite, run against the simulator's stores (as
    //! `qk-storage/tests/suite.rs` runs it against the node's).

    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    use openraft::testing::{StoreBuilder, Suite};
    use openraft::StorageError;
    use qk_raft::{NodeId, TypeConfig};
    use qk_state::authn::KeyRoster;

    use super::{MemLog, MemSm, SharedDisk};

    /// Every test of the suite gets a fresh simulated disk; flushes take no
    /// virtual time.
    struct MemBuilder;

    impl StoreBuilder<TypeConfig, MemLog, MemSm, ()> for MemBuilder {
        async fn build(&self) -> Result<((), MemLog, MemSm), StorageError<NodeId>> {
            let disk = SharedDisk::default();
            let alive = Arc::new(AtomicBool::new(true));
            let log = MemLog::new(disk.clone(), 0, alive);
            let sm = MemSm::open(disk, Box::new(|_| {}), Arc::new(KeyRoster::new()));
            Ok(((), log, sm))
        }
    }

    #[test]
    fn openraft_storage_suite() {
        if let Err(e) = Suite::test_all(MemBuilder) {
            panic!("openraft storage suite failed on the simulator's stores: {e}");
        }
    }
}
