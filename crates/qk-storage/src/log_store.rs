//! The Raft log and vote: [`RaftLogStorage`] + [`RaftLogReader`] on sled.

use std::fmt;
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogId, LogState, OptionalSend, RaftLogId, RaftLogReader, StorageError, Vote};
use qk_raft::TypeConfig;

use crate::codec::{self, index_key, key_index, MAX_LOG_ENTRY_BYTES, MAX_META_BYTES};
use crate::error::{self, StoreError};
use crate::{Entry, NodeId};

/// Keys of the raft meta tree.
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// Soft byte budget of one [`RaftLogReader::limited_get_log_entries`] answer,
/// i.e. of the entries in one AppendEntries RPC. At least one entry is always
/// returned, so one RPC carries at most this plus one entry
/// ([`MAX_LOG_ENTRY_BYTES`](crate::MAX_LOG_ENTRY_BYTES)).
pub const MAX_REPLICATION_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// The Raft log (entries, vote, committed and purged pointers) of one node.
///
/// Cheap to clone: clones share the same sled trees. It is its own
/// [`RaftLogReader`].
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    logs: sled::Tree,
    meta: sled::Tree,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStore").finish_non_exhaustive()
    }
}

impl LogStore {
    pub(crate) fn new(db: sled::Db, logs: sled::Tree, meta: sled::Tree) -> Self {
        Self { db, logs, meta }
    }

    fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &'static [u8],
        what: &'static str,
    ) -> Result<Option<T>, StoreError> {
        let Some(bytes) = self
            .meta
            .get(key)
            .map_err(StoreError::io("reading Raft metadata"))?
        else {
            return Ok(None);
        };
        codec::decode(&bytes, MAX_META_BYTES)
            .map(Some)
            .map_err(|detail| StoreError::corrupt(what, detail))
    }

    fn write_meta<T: serde::Serialize>(
        &self,
        key: &'static [u8],
        what: &'static str,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = codec::encode(what, value, MAX_META_BYTES)?;
        self.meta
            .insert(key, bytes)
            .map_err(StoreError::io("writing Raft metadata"))?;
        Ok(())
    }

    fn decode_entry(key: &[u8], value: &[u8]) -> Result<Entry, StoreError> {
        let index = key_index(key)?;
        let entry: Entry = codec::decode(value, MAX_LOG_ENTRY_BYTES)
            .map_err(|detail| StoreError::corrupt(format!("log entry at index {index}"), detail))?;
        if entry.get_log_id().index != index {
            return Err(StoreError::corrupt(
                format!("log entry at index {index}"),
                format!("it claims index {}", entry.get_log_id().index),
            ));
        }
        Ok(entry)
    }

    fn last_purged(&self) -> Result<Option<LogId<NodeId>>, StoreError> {
        self.read_meta(KEY_LAST_PURGED, "last purged log id")
    }

    fn log_state(&self) -> Result<LogState<TypeConfig>, StoreError> {
        let last_purged_log_id = self.last_purged()?;
        let last = self
            .logs
            .last()
            .map_err(StoreError::io("reading the last log entry"))?;
        let last_log_id = match last {
            Some((key, value)) => Some(*Self::decode_entry(&key, &value)?.get_log_id()),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    /// Entries with index in `range`, stopping early once `byte_budget` bytes
    /// were read (never before the first entry).
    fn read_range<RB: RangeBounds<u64>>(
        &self,
        range: RB,
        byte_budget: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => match s.checked_add(1) {
                Some(s) => s,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        // Exclusive end; `None` is unbounded.
        let end = match range.end_bound() {
            Bound::Included(&e) => e.checked_add(1),
            Bound::Excluded(&e) => Some(e),
            Bound::Unbounded => None,
        };
        let iter = match end {
            Some(end) if end <= start => return Ok(Vec::new()),
            Some(end) => self.logs.range(index_key(start)..index_key(end)),
            None => self.logs.range(index_key(start)..),
        };
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        for item in iter {
            let (key, value) = item.map_err(StoreError::io("reading log entries"))?;
            entries.push(Self::decode_entry(&key, &value)?);
            bytes = bytes.saturating_add(value.len());
            if bytes >= byte_budget {
                break;
            }
        }
        Ok(entries)
    }

    fn read_committed_clamped(&self) -> Result<Option<LogId<NodeId>>, StoreError> {
        let committed: Option<LogId<NodeId>> = self.read_meta(KEY_COMMITTED, "committed log id")?;
        let Some(committed) = committed else {
            return Ok(None);
        };
        // `save_committed` does not flush (see the crate docs). Should a crash
        // keep the pointer but lose log entries it covers, never claim more
        // than the log holds: openraft would fail to re-apply the gap.
        let last = self.log_state()?.last_log_id;
        match last {
            Some(last) if last.index < committed.index => {
                tracing::warn!(
                    committed = %committed,
                    last_log_id = %last,
                    "committed log id is beyond the last log entry; using the last entry"
                );
                Ok(Some(last))
            }
            None => Ok(None),
            Some(_) => Ok(Some(committed)),
        }
    }

    fn append_entries<I>(&self, entries: I) -> Result<(), StoreError>
    where
        I: IntoIterator<Item = Entry>,
    {
        // One batch: sled applies it atomically, so a crash never leaves a
        // hole in the middle of an append.
        let mut batch = sled::Batch::default();
        for entry in entries {
            let index = entry.get_log_id().index;
            let bytes = codec::encode("log entry", &entry, MAX_LOG_ENTRY_BYTES)?;
            batch.insert(&index_key(index), bytes);
        }
        self.logs
            .apply_batch(batch)
            .map_err(StoreError::io("appending log entries"))
    }

    fn truncate_from(&self, index: u64) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for key in self.logs.range(index_key(index)..).keys() {
            batch.remove(key.map_err(StoreError::io("listing log entries to truncate"))?);
        }
        self.logs
            .apply_batch(batch)
            .map_err(StoreError::io("truncating the log"))
    }

    fn purge_upto(&self, log_id: &LogId<NodeId>) -> Result<(), StoreError> {
        let pointer = codec::encode("last purged log id", log_id, MAX_META_BYTES)?;
        let mut keys = Vec::new();
        for key in self.logs.range(..=index_key(log_id.index)).keys() {
            keys.push(key.map_err(StoreError::io("listing log entries to purge"))?);
        }
        // The pointer and the deletions commit together: a crash can leave
        // neither a purged pointer short of the deleted entries (a hole at the
        // start of the log) nor the reverse.
        use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
        (&self.logs, &self.meta)
            .transaction(|(logs, meta)| {
                meta.insert(KEY_LAST_PURGED, pointer.as_slice())?;
                for key in &keys {
                    logs.remove(key)?;
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                TransactionError::Storage(source) => StoreError::Io {
                    action: "purging the log",
                    source,
                },
                TransactionError::Abort(()) => StoreError::Io {
                    action: "purging the log",
                    source: sled::Error::ReportableBug("purge transaction aborted".to_string()),
                },
            })
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        self.read_range(range, usize::MAX).map_err(error::read_logs)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError<NodeId>> {
        self.read_range(start..end, MAX_REPLICATION_BATCH_BYTES)
            .map_err(error::read_logs)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        self.log_state().map_err(error::read_logs)
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.write_meta(KEY_VOTE, "vote", vote)
            .map_err(error::write_vote)?;
        self.db
            .flush_async()
            .await
            .map_err(StoreError::io("flushing the vote to disk"))
            .map_err(error::write_vote)?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.read_meta(KEY_VOTE, "vote").map_err(error::read_vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        let result = match committed {
            Some(c) => self.write_meta(KEY_COMMITTED, "committed log id", &c),
            None => self
                .meta
                .remove(KEY_COMMITTED)
                .map(|_| ())
                .map_err(StoreError::io("clearing the committed log id")),
        };
        result.map_err(error::write_logs)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        self.read_committed_clamped().map_err(error::read_logs)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        if let Err(e) = self.append_entries(entries) {
            callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
            return Err(error::write_logs(e));
        }
        // Acknowledge only what is on disk.
        match self.db.flush_async().await {
            Ok(_) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(source) => {
                let e = StoreError::Io {
                    action: "flushing appended log entries to disk",
                    source,
                };
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(error::write_logs(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        tracing::debug!(%log_id, "truncating the log");
        self.truncate_from(log_id.index).map_err(error::write_logs)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        tracing::debug!(%log_id, "purging the log");
        self.purge_upto(&log_id).map_err(error::write_logs)
    }
}
