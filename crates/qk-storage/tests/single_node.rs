//! A real openraft node on this storage: writes, snapshots by policy, purges,
//! shuts down, and comes back with the same state.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{Config, SnapshotPolicy};
use qk_raft::{Batch, QkNode, Raft, TypeConfig};
use qk_state::{Command, CreateKey, Operation, RequestId};
use qk_storage::{LogStore, NodeId, StateMachineStore, StoreError};

mod common;

/// A one-node cluster never sends an RPC; any attempt is an error.
struct NoPeers;

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = NoPeers;

    async fn new_client(&mut self, _target: NodeId, _node: &QkNode) -> NoPeers {
        NoPeers
    }
}

fn unreachable<E: std::error::Error>() -> RPCError<NodeId, QkNode, E> {
    RPCError::Unreachable(Unreachable::new(&io::Error::other(
        "the single-node test has no peers",
    )))
}

impl RaftNetwork<TypeConfig> for NoPeers {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, QkNode, RaftError<NodeId>>> {
        Err(unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, QkNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        Err(unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, QkNode, RaftError<NodeId>>> {
        Err(unreachable())
    }
}

fn create_key(i: u64) -> Command {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&i.to_be_bytes());
    common::signed(Command {
        request_id: RequestId(id),
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

fn config() -> Arc<Config> {
    let config = Config {
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(10),
        max_in_snapshot_log_to_keep: 0,
        ..Default::default()
    };
    Arc::new(config.validate().expect("valid raft config"))
}

/// Tasks of a shut-down Raft (state-machine worker, snapshot builder) may
/// still hold the database for a moment; retry while the lock is held.
async fn reopen(path: &Path) -> (LogStore, StateMachineStore) {
    let mut last_err = None;
    for _ in 0..100 {
        match qk_storage::open(path, common::roster()) {
            Ok(stores) => return stores,
            Err(e @ StoreError::Open { .. }) => last_err = Some(e),
            Err(e) => panic!("reopen failed: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("storage still locked after 5 s: {last_err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_writes_snapshots_and_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let timeout = Some(Duration::from_secs(10));

    let (digest, last_index, keys) = {
        let (log, sm) = qk_storage::open(dir.path(), common::roster()).expect("open");
        let reader = sm.reader();
        let raft = Raft::new(1, config(), NoPeers, log, sm)
            .await
            .expect("start raft");
        let members = BTreeMap::from([(
            1,
            QkNode {
                rpc_addr: "127.0.0.1:7000".to_string(),
                api_url: String::new(),
            },
        )]);
        raft.initialize(members).await.expect("initialize");
        let admin = common::signed(Command {
            request_id: RequestId([0xff; 16]),
            time_ms: 1_700_000_000_000,
            principal: "node-1".to_string(),
            proof: None,
            op: Operation::CreatePrincipal {
                name: "admin".to_string(),
                roles: [qk_state::Role::Admin].into(),
            },
        });
        raft.wait(timeout)
            .metrics(|m| m.current_leader == Some(1), "elected")
            .await
            .expect("elected");
        // Nodes 2 and 3 hold the keys below: members (learners here, never
        // reached), so that their signed DKG keys count.
        for id in [2, 3] {
            let node = QkNode {
                rpc_addr: format!("127.0.0.1:700{id}"),
                api_url: String::new(),
            };
            raft.add_learner(id, node, false)
                .await
                .expect("add learner");
        }
        let mut bootstrap = vec![admin];
        bootstrap.extend(common::dkg_keys_published(1_700_000_000_000));
        let created = raft.client_write(Batch(bootstrap)).await.expect("write");
        assert!(
            created.data.0.iter().all(|r| r.result.is_ok()),
            "{:?}",
            created.data
        );

        let mut last_index = 0;
        for i in 0..35 {
            let written = raft
                .client_write(Batch(vec![create_key(i)]))
                .await
                .expect("write");
            assert!(written.data.0[0].result.is_ok(), "{:?}", written.data);
            assert!(!written.data.0[0].duplicate);
            last_index = written.log_id.index;
        }
        // A duplicate request id is answered from memory.
        let again = raft
            .client_write(Batch(vec![create_key(7)]))
            .await
            .expect("write");
        assert!(again.data.0[0].duplicate);
        last_index = last_index.max(again.log_id.index);

        let m = raft
            .wait(timeout)
            .metrics(
                |m| m.snapshot.map(|s| s.index) >= Some(20) && m.purged.is_some(),
                "snapshot built and log purged",
            )
            .await
            .expect("snapshot by policy");
        assert!(m.purged.map(|p| p.index) >= Some(20), "{:?}", m.purged);
        raft.wait(timeout)
            .applied_index_at_least(Some(last_index), "all applied")
            .await
            .expect("applied");

        raft.shutdown().await.expect("shutdown");
        let (digest, keys) = reader
            .read(|s| (s.machine().digest(), s.machine().keys().count()))
            .expect("read");
        (digest, last_index, keys)
    };
    assert_eq!(keys, 35);

    let (log, sm) = reopen(dir.path()).await;
    let reader = sm.reader();
    let raft = Raft::new(1, config(), NoPeers, log, sm)
        .await
        .expect("restart raft");
    raft.wait(timeout)
        .applied_index_at_least(Some(last_index), "log tail re-applied")
        .await
        .expect("re-applied after restart");
    let (digest_after, keys_after) = reader
        .read(|s| (s.machine().digest(), s.machine().keys().count()))
        .expect("read");
    assert_eq!(keys_after, 35);
    assert_eq!(digest_after, digest, "same state after restart");

    // And it keeps working.
    raft.wait(timeout)
        .metrics(|m| m.current_leader == Some(1), "leader again")
        .await
        .expect("re-elected");
    let written = raft
        .client_write(Batch(vec![create_key(100)]))
        .await
        .expect("write");
    assert!(written.data.0[0].result.is_ok());
    raft.shutdown().await.expect("shutdown");
}
