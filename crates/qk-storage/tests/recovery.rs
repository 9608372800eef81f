//! Restart recovery, snapshot transfer and the read handle, on real
//! directories.

use std::collections::{BTreeMap, BTreeSet};

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine, StorageHelper};
use openraft::{
    CommittedLeaderId, EntryPayload, LogId, Membership, RaftLogReader, RaftSnapshotBuilder, Vote,
};
use qk_raft::{Batch, BatchResponse, QkNode};
use qk_state::{Command, CreateKey, Operation, RequestId};
use qk_storage::{Entry, LogStore, NodeId, StateMachineStore, StoreError};

mod common;

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn request_id(i: u64) -> RequestId {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&i.to_be_bytes());
    RequestId(id)
}

/// The bootstrapping node's first command: the principal the rest run as.
fn initial_admin() -> Command {
    common::signed(Command {
        request_id: request_id(u64::MAX),
        time_ms: 1_700_000_000_000,
        principal: "node-1".to_string(),
        proof: None,
        op: Operation::CreatePrincipal {
            name: "admin".to_string(),
            roles: [qk_state::Role::Admin].into(),
        },
    })
}

fn create_key(i: u64) -> Command {
    common::signed(Command {
        request_id: request_id(i),
        time_ms: 1_700_000_000_000 + i,
        principal: "admin".to_string(),
        proof: None,
        op: Operation::CreateKey(CreateKey {
            name: format!("key-{i}"),
            description: "test key".to_string(),
            owner: "ops".to_string(),
            purpose: "signing".to_string(),
            rotation_period_ms: None,
            expires_at_ms: None,
            threshold: 2,
            holders: vec![
                qk_types::NodeId(1),
                qk_types::NodeId(2),
                qk_types::NodeId(3),
            ],
        }),
    })
}

fn set_tag(i: u64, key: u64, value: Vec<u8>) -> Command {
    common::signed(Command {
        request_id: request_id(i),
        time_ms: 1_700_000_000_000 + i,
        principal: "admin".to_string(),
        proof: None,
        op: Operation::SetTag {
            name: format!("key-{key}"),
            tag: format!("tag-{i}"),
            value: Some(value),
        },
    })
}

fn normal(term: u64, index: u64, cmd: Command) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Batch(vec![cmd])),
    }
}

/// The bootstrap: the initial admin, then nodes 1-3 publish DKG keys.
fn bootstrap() -> Vec<Command> {
    let mut commands = vec![initial_admin()];
    commands.extend(common::dkg_keys_published(1_700_000_000_000));
    commands
}

fn membership(term: u64, index: u64, voters: &[NodeId]) -> Entry {
    let nodes: BTreeMap<NodeId, QkNode> = voters
        .iter()
        .map(|&id| {
            (
                id,
                QkNode {
                    rpc_addr: format!("10.0.0.{id}:7000"),
                    api_url: String::new(),
                },
            )
        })
        .collect();
    let config: BTreeSet<NodeId> = voters.iter().copied().collect();
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Membership(Membership::new(vec![config], nodes)),
    }
}

/// Log indexes `0..=upto` as openraft writes them: index 0 is the initial
/// membership, 1 a new leader's blank entry, then key creations (odd indexes)
/// and tag updates (even indexes) alternate.
fn history(upto: u64) -> Vec<Entry> {
    (0..=upto)
        .map(|i| match i {
            0 => membership(1, 0, &[1, 2, 3]),
            1 => Entry {
                log_id: log_id(1, 1),
                payload: EntryPayload::Normal(Batch(bootstrap())),
            },
            i if i % 2 == 1 => normal(1, i, create_key(i)),
            i => normal(1, i, set_tag(i, i - 1, vec![i as u8; 8])),
        })
        .collect()
}

fn digest(sm: &StateMachineStore) -> [u8; 32] {
    sm.reader()
        .read(|s| s.machine().digest())
        .expect("read the state")
        .expect("encode the state")
}

/// Reopens `dir`, as the node does: sled releases the directory lock from
/// its flusher thread a moment after the previous handles were dropped.
async fn reopen(dir: &std::path::Path) -> (LogStore, StateMachineStore) {
    for _ in 0..50 {
        match qk_storage::open(dir, common::roster()) {
            Ok(stores) => return stores,
            Err(e) if e.to_string().contains("could not acquire lock") => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("reopen: {e}"),
        }
    }
    panic!("the directory stayed locked for 5 s after its stores were dropped")
}

async fn all_entries(log: &mut LogStore) -> Vec<Entry> {
    log.try_get_log_entries(..).await.expect("read the log")
}

#[tokio::test]
async fn restart_keeps_log_vote_and_pointers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (entries, vote, state) = {
        let (mut log, _sm) = qk_storage::open(dir.path(), common::roster()).expect("open");
        log.blocking_append(history(30)).await.expect("append");
        log.save_vote(&Vote::new_committed(3, 2))
            .await
            .expect("vote");
        log.save_committed(Some(log_id(1, 25)))
            .await
            .expect("committed");
        log.purge(log_id(1, 4)).await.expect("purge");
        log.truncate(log_id(1, 28)).await.expect("truncate");
        let state = log.get_log_state().await.expect("log state");
        (
            all_entries(&mut log).await,
            log.read_vote().await.expect("vote"),
            state,
        )
    };
    assert_eq!(entries.len(), 23, "5..=27 remain");
    assert_eq!(entries.first().map(|e| e.log_id.index), Some(5));
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 4)));
    assert_eq!(state.last_log_id, Some(log_id(1, 27)));

    let (mut log, _sm) = reopen(dir.path()).await;
    assert_eq!(all_entries(&mut log).await, entries);
    assert_eq!(log.read_vote().await.expect("vote"), vote);
    assert_eq!(vote, Some(Vote::new_committed(3, 2)));
    assert_eq!(log.get_log_state().await.expect("log state"), state);
    assert_eq!(
        log.read_committed().await.expect("committed"),
        Some(log_id(1, 25))
    );
}

#[tokio::test]
async fn restart_rebuilds_state_by_reapplying_the_committed_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let entries = history(40);
    let (before, responses_after_snapshot) = {
        let (mut log, mut sm) = qk_storage::open(dir.path(), common::roster()).expect("open");
        log.blocking_append(entries.clone()).await.expect("append");
        sm.apply(entries[..=20].to_vec())
            .await
            .expect("apply 0..=20");
        let snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .expect("snapshot at 20");
        assert_eq!(snap.meta.last_log_id, Some(log_id(1, 20)));
        // openraft purges what the snapshot covers.
        log.purge(log_id(1, 15)).await.expect("purge");
        let responses = sm
            .apply(entries[21..].to_vec())
            .await
            .expect("apply 21..=40");
        log.save_committed(Some(log_id(1, 40)))
            .await
            .expect("committed");
        (digest(&sm), responses)
    };

    // A crash loses the in-memory state: the store comes back at the snapshot.
    let (mut log, mut sm) = reopen(dir.path()).await;
    let (applied, mem) = sm.applied_state().await.expect("applied state");
    assert_eq!(applied, Some(log_id(1, 20)));
    assert_eq!(mem.log_id(), &Some(log_id(1, 0)));
    assert_ne!(digest(&sm), before);

    // Re-applying the tail gives the very same responses.
    let other = tempfile::tempdir().expect("tempdir");
    let (_l, mut replica) = qk_storage::open(other.path(), common::roster()).expect("open");
    replica.apply(entries[..=20].to_vec()).await.expect("apply");
    let again: Vec<BatchResponse> = replica
        .apply(entries[21..].to_vec())
        .await
        .expect("re-apply");
    assert_eq!(again, responses_after_snapshot);
    assert_eq!(digest(&replica), before);

    // openraft's own startup path re-applies up to the saved committed id.
    let initial = StorageHelper::new(&mut log, &mut sm)
        .get_initial_state()
        .await
        .expect("initial state");
    assert_eq!(initial.committed, Some(log_id(1, 40)));
    assert_eq!(
        sm.applied_state().await.expect("applied state").0,
        Some(log_id(1, 40))
    );
    assert_eq!(digest(&sm), before, "state rebuilt exactly");
}

#[tokio::test]
async fn snapshot_transfer_preserves_the_digest() {
    let leader_dir = tempfile::tempdir().expect("tempdir");
    let follower_dir = tempfile::tempdir().expect("tempdir");
    let (_ll, mut leader) =
        qk_storage::open(leader_dir.path(), common::roster()).expect("open leader");
    leader.apply(history(25)).await.expect("apply");
    let leader_digest = digest(&leader);
    let keys = leader
        .reader()
        .read(|s| s.machine().keys().count())
        .expect("read");
    assert_eq!(keys, 12, "odd indexes 3..=25 create keys");

    let snap = leader
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");
    let bytes = snap.snapshot.get_ref().clone();

    {
        let (_fl, mut follower) =
            qk_storage::open(follower_dir.path(), common::roster()).expect("open follower");
        let mut incoming = follower.begin_receiving_snapshot().await.expect("begin");
        incoming.get_mut().extend_from_slice(&bytes);
        follower
            .install_snapshot(&snap.meta, incoming)
            .await
            .expect("install");
        assert_eq!(digest(&follower), leader_digest);
        assert_eq!(
            follower.applied_state().await.expect("state"),
            leader.applied_state().await.expect("state")
        );
        let current = follower
            .get_current_snapshot()
            .await
            .expect("read")
            .expect("installed snapshot is current");
        assert_eq!(current.meta, snap.meta);
        assert_eq!(current.snapshot.get_ref(), &bytes);
    }

    // The installed state is durable.
    let (_fl, mut follower) =
        qk_storage::open(follower_dir.path(), common::roster()).expect("reopen follower");
    assert_eq!(digest(&follower), leader_digest);
    assert_eq!(
        follower.applied_state().await.expect("state").0,
        Some(log_id(1, 25))
    );
    let reader = follower.reader();
    let (last, key) = reader
        .read(|s| {
            (
                s.last_applied(),
                s.machine().key("key-25").map(|k| k.name.clone()),
            )
        })
        .expect("read");
    assert_eq!(last, Some(log_id(1, 25)));
    assert_eq!(key.as_deref(), Some("key-25"));
}

#[tokio::test]
async fn limited_reads_stay_near_the_byte_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _sm) = qk_storage::open(dir.path(), common::roster()).expect("open");
    // Ten entries of about 1 MiB each.
    let big: Vec<Entry> = (1..=10)
        .map(|i| normal(1, i, set_tag(i, 1, vec![0xab; 1024 * 1024])))
        .collect();
    log.blocking_append(big).await.expect("append");
    let first = log.limited_get_log_entries(1, 11).await.expect("read");
    assert!(!first.is_empty() && first.len() < 10, "{}", first.len());
    assert_eq!(first.len(), 4, "stops once 4 MiB were read");
    let one = log.limited_get_log_entries(10, 11).await.expect("read");
    assert_eq!(one.len(), 1);
    assert_eq!(
        log.try_get_log_entries(1..11).await.expect("read").len(),
        10,
        "unlimited reads return the whole range"
    );
}

#[tokio::test]
async fn oversized_entry_is_refused_not_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _sm) = qk_storage::open(dir.path(), common::roster()).expect("open");
    let huge = normal(
        1,
        1,
        set_tag(1, 1, vec![0; qk_storage::MAX_LOG_ENTRY_BYTES]),
    );
    let err = log
        .blocking_append([huge])
        .await
        .expect_err("over the limit");
    assert!(err.to_string().contains("over the limit"), "{err}");
    assert_eq!(log.get_log_state().await.expect("state").last_log_id, None);
}

#[tokio::test]
async fn second_open_of_a_directory_fails() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _first = qk_storage::open(dir.path(), common::roster()).expect("open");
    let err = qk_storage::open(dir.path(), common::roster()).expect_err("the directory is locked");
    assert!(matches!(err, StoreError::Open { .. }), "{err}");
    assert!(
        err.to_string().contains("no other qk-node process"),
        "{err}"
    );
}

/// A batch entry applies its commands in order, each with its own response and
/// audit record, to the same state as one entry per command; a request id
/// repeated inside the batch applies once.
#[tokio::test]
async fn batch_entry_applies_like_one_entry_per_command() {
    let mut commands = bootstrap();
    commands.extend([create_key(3), set_tag(4, 3, vec![4; 8])]);

    let single_dir = tempfile::tempdir().expect("tempdir");
    let (_l, mut single) = qk_storage::open(single_dir.path(), common::roster()).expect("open");
    let one_each: Vec<Entry> = (1u64..)
        .zip(&commands)
        .map(|(i, c)| normal(1, i, c.clone()))
        .collect();
    let singles = single.apply(one_each).await.expect("apply");

    let batch_dir = tempfile::tempdir().expect("tempdir");
    let (_l, mut batched) = qk_storage::open(batch_dir.path(), common::roster()).expect("open");
    let mut with_retry = commands.clone();
    with_retry.push(create_key(3));
    let entry = Entry {
        log_id: log_id(1, 1),
        payload: EntryPayload::Normal(Batch(with_retry)),
    };
    let answer = batched.apply([entry]).await.expect("apply");

    assert_eq!(answer.len(), 1, "one response set per entry");
    let responses = &answer[0].0;
    assert_eq!(responses.len(), 7, "one response per command");
    for (batched, single) in responses.iter().zip(singles.iter().map(|r| &r.0[0])) {
        assert!(batched.result.is_ok(), "{batched:?}");
        assert_eq!(batched.result, single.result);
        assert_eq!(batched.audit_seq, single.audit_seq);
    }
    assert!(
        responses[6].duplicate,
        "the repeated request id applies once"
    );
    assert_eq!(digest(&batched), digest(&single));
}

/// A node's command counts only while the node is a member at that point of
/// the log: once removed (or before it was added), its certificate signs
/// nothing, whatever the certificate says.
#[tokio::test]
async fn a_non_member_node_signs_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_l, mut sm) = qk_storage::open(dir.path(), common::roster()).expect("open");
    let published = common::dkg_keys_published(1_700_000_000_000);
    let node_2 = published[1].clone();
    let node_3 = published[2].clone();
    let entries = vec![
        membership(1, 1, &[1, 2]),
        normal(1, 2, node_3.clone()),
        normal(1, 3, node_2),
        membership(1, 4, &[1, 2, 3]),
        normal(1, 5, node_3),
    ];
    let answers = sm.apply(entries).await.expect("apply");
    let refused = &answers[1].0[0];
    let err = refused
        .result
        .as_ref()
        .expect_err("node-3 is no member yet");
    assert!(err.to_string().contains("not a member"), "{err}");
    assert!(answers[2].0[0].result.is_ok(), "node-2 is a member");
    assert!(answers[4].0[0].result.is_ok(), "node-3 once added");
    let audit = sm
        .reader()
        .read(|s| s.machine().audit_records(1, 10).to_vec())
        .expect("state");
    assert_eq!(audit[0].principal, "unauthenticated");
    assert!(audit[0].outcome.contains("claims to come from node-3"));
}
