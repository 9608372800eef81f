//! Real `qk-node` processes on 127.0.0.1: election, replication, leader loss,
//! restart from disk, snapshot catch-up, and refusal of foreign certificates.

use std::collections::BTreeSet;
use std::time::Duration;

use qk_raft::PeerRequest;
use qk_testkit::cluster::*;
use qk_wire::{ClientRequest, ClientResponse};

const BIN: &str = env!("CARGO_BIN_EXE_qk-node");

fn bin() -> &'static std::path::Path {
    std::path::Path::new(BIN)
}

const WRITES: u64 = 1000;
const CONCURRENCY: u64 = 16;

async fn agreed_leader(c: &Cluster, live: &[u64]) -> u64 {
    wait_until("all live nodes to agree on one leader", || {
        let leaders: BTreeSet<Option<u64>> = live
            .iter()
            .map(|id| {
                tokio::task::block_in_place(|| {
                    tokio::runtime::Handle::current().block_on(c.status(*id))
                })
                .and_then(|s| s.leader)
            })
            .collect();
        match leaders.iter().next() {
            Some(Some(l)) if leaders.len() == 1 && live.contains(l) => Some(*l),
            _ => None,
        }
    })
}

const KEYS_PER_ROUND: u64 = 16;

/// The keys the tag writes land on; created (and generated) up front so the
/// replicated writes below are pure metadata writes.
async fn setup_keys(c: &Cluster) {
    for prefix in ["a", "b"] {
        for j in 0..KEYS_PER_ROUND {
            c.create(1, &format!("{prefix}-k{j}"), 2, &[1, 2, 3])
                .await
                .expect("create");
        }
    }
    for prefix in ["a", "b"] {
        for j in 0..KEYS_PER_ROUND {
            c.wait_key(1, &format!("{prefix}-k{j}"), |k| {
                k.versions
                    .iter()
                    .all(|v| v.state == qk_state::VersionState::Enabled)
            });
        }
    }
}

fn tag_write(prefix: &str, i: u64) -> (String, String, qk_state::Operation) {
    let key = format!("{prefix}-k{}", i % KEYS_PER_ROUND);
    let tag = format!("t{}", i / KEYS_PER_ROUND);
    let op = qk_state::Operation::SetTag {
        name: key.clone(),
        tag: tag.clone(),
        value: Some(i.to_be_bytes().to_vec()),
    };
    (key, tag, op)
}

/// `WRITES` metadata writes, `CONCURRENCY` at a time, spread over `nodes`.
async fn write_tags(c: &Cluster, nodes: &[u64], prefix: &str, first_request: u64) -> u64 {
    let mut max_index = 0;
    for batch in 0..WRITES / CONCURRENCY + 1 {
        let mut tasks = Vec::new();
        for k in 0..CONCURRENCY {
            let i = batch * CONCURRENCY + k;
            if i >= WRITES {
                break;
            }
            let via = nodes[(i as usize) % nodes.len()];
            tasks.push(c.write(via, tag_write(prefix, i).2, first_request + i));
        }
        for r in futures::future::join_all(tasks).await {
            let (index, response) = r.expect("write acknowledged");
            assert!(response.result.is_ok(), "{response:?}");
            max_index = max_index.max(index);
        }
    }
    max_index
}

async fn assert_replicas_identical(c: &Cluster, nodes: &[u64], min_index: u64, prefix: &str) {
    let statuses: Vec<_> = nodes
        .iter()
        .map(|id| c.wait_status(*id, |s| s.last_applied.unwrap_or(0) >= min_index))
        .collect();
    let digests: BTreeSet<[u8; 32]> = nodes
        .iter()
        .map(|id| {
            let target = statuses.iter().map(|s| s.last_applied).max().flatten();
            c.wait_status(*id, |s| {
                s.last_applied == target && Some(s.digest_index) == target
            })
            .state_digest
        })
        .collect();
    assert_eq!(digests.len(), 1, "replicas differ");
    // Every acknowledged write reads back from every node.
    for id in nodes {
        let mut keys = std::collections::BTreeMap::new();
        for j in 0..KEYS_PER_ROUND {
            let name = format!("{prefix}-k{j}");
            let Ok(ClientResponse::Key(Some(k))) = c
                .request(*id, ClientRequest::GetKey { name: name.clone() })
                .await
            else {
                panic!("node {id} lacks {name}");
            };
            keys.insert(name, k);
        }
        for i in 0..WRITES {
            let (key, tag, _) = tag_write(prefix, i);
            let got = keys.get(&key).and_then(|k| k.tags.get(&tag));
            assert_eq!(
                got.map(|v| v.as_slice()),
                Some(&i.to_be_bytes()[..]),
                "node {id}: write {i} ({key}/{tag})"
            );
        }
    }
}

async fn scenario(n: u64) {
    let mut c = Cluster::start(bin(), n, 100_000);
    let all: Vec<u64> = (1..=n).collect();
    let leader = agreed_leader(&c, &all).await;

    setup_keys(&c).await;
    let index = write_tags(&c, &all, "a", 0).await;
    assert_replicas_identical(&c, &all, index, "a").await;

    // Kill the leader: a new one is elected and nothing acknowledged is lost.
    c.kill(leader);
    let live: Vec<u64> = all.iter().copied().filter(|id| *id != leader).collect();
    let new_leader = agreed_leader(&c, &live).await;
    assert_ne!(new_leader, leader);
    let index = write_tags(&c, &live, "b", 10_000).await;
    assert_replicas_identical(&c, &live, index, "a").await;

    // The old leader restarts from its disk and catches up.
    c.restart(leader);
    assert_replicas_identical(&c, &all, index, "b").await;

    // Every node restarts: the state comes back from disk.
    let before = c
        .wait_status(1, |s| s.last_applied == Some(s.digest_index))
        .state_digest;
    for id in &all {
        c.stop(*id);
    }
    for id in &all {
        c.restart(*id);
    }
    agreed_leader(&c, &all).await;
    for id in &all {
        let s = c.wait_status(*id, |s| s.state_digest == before);
        assert_eq!(s.key_count, 2 * KEYS_PER_ROUND);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_and_survive_leader_loss() {
    scenario(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_replicate_and_survive_leader_loss() {
    scenario(5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_node_catches_up_by_snapshot() {
    let mut c = Cluster::start(bin(), 3, 100);
    c.stop(3);
    let mut last = 0;
    for i in 0..400u64 {
        let (index, _) = c.write(1, tag_or_create(i), i).await.expect("write");
        last = index;
    }
    c.restart(3);
    let digest = c
        .wait_status(1, |s| {
            s.last_applied >= Some(last) && s.last_applied == Some(s.digest_index)
        })
        .state_digest;
    c.wait_status(3, |s| s.state_digest == digest);
    let log = std::fs::read_to_string(c.log_path(3)).expect("log");
    assert!(
        log.contains("installing snapshot"),
        "node 3 should catch up by snapshot:\n{}",
        c.log_tail(3)
    );
}

fn tag_or_create(i: u64) -> qk_state::Operation {
    if i == 0 {
        create_key("snap")
    } else {
        tag("snap", i)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_another_ca_cannot_join_or_send_raft_messages() {
    let mut c = Cluster::start(bin(), 3, 100_000);
    // A node 4 whose certificate comes from another CA.
    let evil = c.dir.path().join("evil");
    let evil_s = path_str(&evil);
    qk(bin(), &["pki", "init", "--dir", &evil_s]);
    qk(bin(), &["pki", "issue-node", "--dir", &evil_s, "--id", "4"]);
    qk(
        bin(),
        &["pki", "issue-client", "--dir", &evil_s, "--name", "mallory"],
    );
    let port = free_port();
    std::fs::write(
        c.dir.path().join("node-4.toml"),
        format!("node_id = 4\ndata_dir = \"data/node-4\"\nlisten = \"127.0.0.1:{port}\"\n\n[tls]\nca_cert = \"evil/ca.pem\"\ncert = \"evil/node-4.pem\"\nkey = \"evil/node-4.key\"\n"),
    )
    .expect("config");
    c.ports.push(port);
    c.procs.push(None);
    c.spawn(4, &["--join".into(), c.addr(1)]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = c.wait_status(1, |_| true);
    assert!(
        !s.voters.contains(&4) && !s.learners.contains(&4),
        "foreign node admitted: {s:?}"
    );

    // Raft messages signed by the foreign CA are refused at the handshake.
    let pool = dialer(
        &evil.join("ca.pem"),
        &evil.join("node-4.pem"),
        &evil.join("node-4.key"),
    );
    let vote = openraft::raft::VoteRequest::new(openraft::Vote::new(99, 4), None);
    let r = pool
        .node(1, &c.addr(1))
        .call(&PeerRequest::Vote(vote))
        .await;
    assert!(
        r.is_err(),
        "a foreign node's vote must not be delivered: {r:?}"
    );
    let term = c.wait_status(1, |_| true).term;
    assert!(term < 99, "the foreign vote must not have changed the term");
}

/// Concurrent writes at the leader are committed together (group commit):
/// the log grows by fewer entries than there were writes, yet every write
/// gets its own response and audit record, and a request id sent twice at
/// once applies once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_log_entries_and_keep_their_own_responses() {
    const BURST: u64 = 512;
    let c = Cluster::start(bin(), 3, 100_000);
    let leader = agreed_leader(&c, &[1, 2, 3]).await;
    const KEYS: u64 = 8; // 512 tags over 8 keys: a key has at most 64
    for j in 0..KEYS {
        let name = format!("group-{j}");
        c.create(leader, &name, 2, &[1, 2, 3])
            .await
            .expect("create");
        c.wait_key(leader, &name, |k| {
            k.versions
                .iter()
                .all(|v| v.state == qk_state::VersionState::Enabled)
        });
    }
    let before = c
        .wait_status(leader, |s| s.last_applied == s.last_log_index)
        .last_log_index
        .unwrap_or(0);

    let op = |i: u64| qk_state::Operation::SetTag {
        name: format!("group-{}", i % KEYS),
        tag: format!("t{}", i / KEYS),
        value: Some(i.to_be_bytes().to_vec()),
    };
    let mut writes: Vec<_> = (0..BURST)
        .map(|i| c.write(leader, op(i), 50_000 + i))
        .collect();
    // The same request id as write 0, sent in the same burst.
    writes.push(c.write(leader, op(0), 50_000));
    let answers: Vec<_> = futures::future::join_all(writes)
        .await
        .into_iter()
        .map(|r| r.expect("write acknowledged"))
        .collect();

    assert!(
        answers.iter().all(|(_, r)| r.result.is_ok()),
        "every write applied"
    );
    let duplicates = answers.iter().filter(|(_, r)| r.duplicate).count();
    assert_eq!(duplicates, 1, "the repeated request id applied once");
    let seqs: BTreeSet<u64> = answers
        .iter()
        .filter(|(_, r)| !r.duplicate)
        .map(|(_, r)| r.audit_seq)
        .collect();
    assert_eq!(seqs.len() as u64, BURST, "one audit record per write");
    let last = answers.iter().map(|(i, _)| *i).max().unwrap_or(0);
    let entries = last - before;
    assert!(
        entries < BURST,
        "{BURST} concurrent writes took {entries} log entries: no batching"
    );
    c.wait_status(2, |s| s.last_applied >= Some(last));
    for j in 0..KEYS {
        let name = format!("group-{j}");
        let Ok(ClientResponse::Key(Some(k))) = c
            .request(2, ClientRequest::GetKey { name: name.clone() })
            .await
        else {
            panic!("node 2 lacks {name}");
        };
        for i in (j..BURST).step_by(KEYS as usize) {
            let value = k.tags.get(&format!("t{}", i / KEYS));
            assert_eq!(
                value,
                Some(&i.to_be_bytes().to_vec()),
                "write {i} on node 2"
            );
        }
    }
}
