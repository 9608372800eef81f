//! Damaged on-disk data must surface as errors, never as panics.
//!
//! These tests write into the sled trees directly (hence in-crate), between
//! closing and reopening the store.

use std::io::Cursor;
use std::path::Path;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{
    CommittedLeaderId, EntryPayload, LogId, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta,
    StoredMembership, Vote,
};

use super::*;
use crate::codec::{index_key, MAX_META_BYTES};

/// These tests apply blank entries only: no command needs a signer.
fn no_signers() -> std::sync::Arc<qk_state::authn::KeyRoster> {
    std::sync::Arc::new(qk_state::authn::KeyRoster::new())
}

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn blank(term: u64, index: u64) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Blank,
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build a tokio runtime")
}

/// Opens a store in `dir`, appends blank entries 1..=5 with a vote, closes.
fn seed(dir: &Path) {
    rt().block_on(async {
        let (mut log, _sm) = open_store(dir);
        log.blocking_append((1..=5).map(|i| blank(1, i)))
            .await
            .expect("append");
        log.save_vote(&Vote::new(1, 1)).await.expect("save vote");
    });
}

/// Opens the sled database once the store that had it open let go of its
/// file lock (sled's flusher thread releases it after the store is dropped,
/// later on a busy machine).
fn open_when_unlocked(dir: &Path) -> sled::Db {
    retry_while_locked(|| sled::open(dir))
}

/// Our store, opened as `open_when_unlocked` opens sled.
fn open_store(dir: &Path) -> (crate::LogStore, crate::StateMachineStore) {
    retry_while_locked(|| open(dir, no_signers()))
}

fn retry_while_locked<T, E: std::fmt::Display>(mut f: impl FnMut() -> Result<T, E>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if e.to_string().contains("lock") && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("cannot open the store: {e}"),
        }
    }
}

/// Runs `f` on the raw sled trees of a closed store.
fn tamper(dir: &Path, tree: &str, f: impl FnOnce(&sled::Tree)) {
    let db = open_when_unlocked(dir);
    let t = db.open_tree(tree).expect("open tree");
    f(&t);
    db.flush().expect("flush");
}

fn assert_corrupt_log(dir: &Path, needle: &str) {
    rt().block_on(async {
        // Opening succeeds: log entries are read lazily.
        let (mut log, _sm) = open_store(dir);
        let err = log
            .try_get_log_entries(1..=5)
            .await
            .expect_err("reading a damaged entry must fail");
        let msg = err.to_string();
        assert!(msg.contains(needle), "{msg:?} should mention {needle:?}");
    });
}

#[test]
fn garbage_entry_bytes_are_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    seed(dir.path());
    tamper(dir.path(), TREE_LOG, |t| {
        t.insert(index_key(3), &[0xff, 0xfe, 0x00, 0x17][..])
            .expect("insert");
    });
    assert_corrupt_log(dir.path(), "corrupt log entry at index 3");
}

#[test]
fn truncated_entry_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    seed(dir.path());
    tamper(dir.path(), TREE_LOG, |t| {
        let v = t.get(index_key(2)).expect("get").expect("entry 2 exists");
        t.insert(index_key(2), &v[..v.len() - 1]).expect("insert");
    });
    assert_corrupt_log(dir.path(), "corrupt log entry at index 2");
}

#[test]
fn trailing_bytes_after_entry_are_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    seed(dir.path());
    tamper(dir.path(), TREE_LOG, |t| {
        let mut v = t
            .get(index_key(4))
            .expect("get")
            .expect("entry 4 exists")
            .to_vec();
        v.push(0);
        t.insert(index_key(4), v).expect("insert");
    });
    assert_corrupt_log(dir.path(), "trailing bytes");
}

#[test]
fn entry_under_the_wrong_index_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    seed(dir.path());
    tamper(dir.path(), TREE_LOG, |t| {
        let v = t.get(index_key(5)).expect("get").expect("entry 5 exists");
        t.insert(index_key(4), v).expect("insert");
    });
    assert_corrupt_log(dir.path(), "claims index 5");
}

#[test]
fn malformed_log_key_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    seed(dir.path());
    tamper(dir.path(), TREE_LOG, |t| {
        // Sorts after every 8-byte index key, so it is "the last entry".
        t.insert([0xff; 9], &[0u8][..]).expect("insert");
    });
    rt().block_on(async {
        let (mut log, _sm) = open(dir.path(), no_signers()).expect("open");
        let err = log.get_log_state().await.expect_err("bad key must fail");
        assert!(err.to_string().contains("log key"), "{err}");
    });
}

#[test]
fn corrupt_vote_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    seed(dir.path());
    tamper(dir.path(), TREE_META, |t| {
        t.insert(b"vote", &[0xff; 3][..]).expect("insert");
    });
    rt().block_on(async {
        let (mut log, _sm) = open(dir.path(), no_signers()).expect("open");
        let err = log.read_vote().await.expect_err("bad vote must fail");
        assert!(err.to_string().contains("corrupt vote"), "{err}");
    });
}

#[test]
fn oversized_meta_record_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    seed(dir.path());
    tamper(dir.path(), TREE_META, |t| {
        t.insert(b"committed", vec![0u8; MAX_META_BYTES + 1])
            .expect("insert");
    });
    rt().block_on(async {
        let (mut log, _sm) = open(dir.path(), no_signers()).expect("open");
        let err = log.read_committed().await.expect_err("oversized must fail");
        assert!(err.to_string().contains("over the limit"), "{err}");
    });
}

#[test]
fn corrupt_state_checkpoint_fails_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    seed(dir.path());
    tamper(dir.path(), TREE_STATE_MACHINE, |t| {
        t.insert(b"applied", &[1, 0xff, 0xff, 0xff, 0xff, 0xff][..])
            .expect("insert");
    });
    let err = open(dir.path(), no_signers()).expect_err("a damaged checkpoint must fail open");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains("state-machine checkpoint"),
        "{err}"
    );
}

#[test]
fn unknown_snapshot_format_fails_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    seed(dir.path());
    tamper(dir.path(), TREE_STATE_MACHINE, |t| {
        t.insert(b"applied", &[9, 0][..]).expect("insert");
    });
    let err = open(dir.path(), no_signers()).expect_err("unknown format must fail open");
    assert!(matches!(err, StoreError::UnsupportedFormat { .. }), "{err}");
}

#[test]
fn unknown_layout_version_fails_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    seed(dir.path());
    tamper(dir.path(), TREE_META, |t| {
        t.insert(KEY_LAYOUT, &[LAYOUT_VERSION + 1][..])
            .expect("insert");
    });
    let err = open(dir.path(), no_signers()).expect_err("unknown layout must fail open");
    assert!(matches!(err, StoreError::UnsupportedFormat { .. }), "{err}");
}

#[test]
fn corrupt_snapshot_meta_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    rt().block_on(async {
        let (_log, mut sm) = open(dir.path(), no_signers()).expect("open");
        sm.apply([blank(1, 1)]).await.expect("apply");
        sm.get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("build");
    });
    tamper(dir.path(), TREE_SNAPSHOT, |t| {
        t.insert(b"meta", &[0xff, 0xff][..]).expect("insert");
    });
    // The checkpoint is intact, but open compares it with the snapshot.
    let err = open(dir.path(), no_signers()).expect_err("damaged snapshot metadata must fail open");
    assert!(err.to_string().contains("snapshot metadata"), "{err}");
}

#[test]
fn garbage_snapshot_is_rejected_and_state_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    rt().block_on(async {
        let (_log, mut sm) = open(dir.path(), no_signers()).expect("open");
        sm.apply([blank(1, 1)]).await.expect("apply");
        let meta = SnapshotMeta {
            last_log_id: Some(log_id(2, 9)),
            last_membership: StoredMembership::default(),
            snapshot_id: "bogus".to_string(),
        };
        for data in [vec![], vec![1, 0xff, 0xff], vec![7; 32]] {
            let err = sm
                .install_snapshot(&meta, Box::new(Cursor::new(data)))
                .await
                .expect_err("garbage must be rejected");
            assert!(err.to_string().contains("received snapshot"), "{err}");
        }
        let (applied, _) = sm.applied_state().await.expect("applied state");
        assert_eq!(applied, Some(log_id(1, 1)), "the old state stays");
        assert!(sm.get_current_snapshot().await.expect("read").is_none());
    });
}

/// A snapshot of a store that applied two blank entries, with the stores
/// (kept open while the snapshot is used).
async fn snapshot_of_two_entries(
    dir: &Path,
) -> (
    (crate::LogStore, crate::StateMachineStore),
    openraft::Snapshot<qk_raft::TypeConfig>,
) {
    let (log, mut sm) = open(dir, no_signers()).expect("open");
    sm.apply([blank(1, 1), blank(1, 2)]).await.expect("apply");
    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");
    ((log, sm), snap)
}

#[test]
fn snapshot_with_mismatched_meta_is_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    rt().block_on(async {
        let (_stores, snap) = snapshot_of_two_entries(dir.path()).await;
        let mut meta = snap.meta.clone();
        meta.last_log_id = Some(log_id(1, 7));
        let other = tempfile::tempdir().expect("tempdir");
        let (_log2, mut sm2) = open(other.path(), no_signers()).expect("open");
        let err = sm2
            .install_snapshot(&meta, snap.snapshot)
            .await
            .expect_err("mismatch must be rejected");
        assert!(err.to_string().contains("does not match"), "{err}");
    });
}

#[test]
fn an_installed_snapshot_is_reported_to_the_install_hook_after_the_state_switched() {
    let dir = tempfile::tempdir().expect("tempdir");
    rt().block_on(async {
        let (_stores, snap) = snapshot_of_two_entries(dir.path()).await;
        let other = tempfile::tempdir().expect("tempdir");
        let (_log2, mut sm2) = open(other.path(), no_signers()).expect("open");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (record, reader) = (seen.clone(), sm2.reader());
        sm2.set_install_hook(Box::new(move |index| {
            let applied = reader
                .read(|a| a.last_applied().map(|l| l.index))
                .ok()
                .flatten();
            if let Ok(mut v) = record.lock() {
                v.push((index, applied));
            }
        }));
        sm2.install_snapshot(&snap.meta, snap.snapshot)
            .await
            .expect("install");
        let seen = seen.lock().expect("lock").clone();
        assert_eq!(seen, vec![(2, Some(2))], "once, with the new state visible");
    });
}

#[test]
fn decode_checks_size_before_parsing() {
    let err = codec::decode::<u64>(&[0u8; 17], 16).expect_err("over the limit");
    assert!(err.contains("over the limit"), "{err}");
    assert_eq!(codec::decode::<u64>(&[5], 16), Ok(5));
}
