//! The DKG rules of the state machine: phases, per-holder bounds, acks,
//! the generation deadline. No cryptography here: payloads are opaque bytes.

use qk_state::{
    verify_chain, Applied, Command, DkgPhase, DkgSession, DkgStep, KeyVersionRecord, Operation,
    RequestId, StateError, StateMachine, VersionState, DEFAULT_GENERATION_TIMEOUT_MS, GENESIS_HASH,
    MAX_DKG_MESSAGE_LEN,
};
use qk_types::{Epoch, KeyVersion, NodeId};

mod common;

const V1: KeyVersion = KeyVersion(1);

struct Log {
    sm: StateMachine,
    next: u64,
}

impl Log {
    /// Starts as a bootstrapped cluster: node 1 created the `admin` principal.
    fn new() -> Self {
        let mut log = Log {
            sm: StateMachine::new(),
            next: 0,
        };
        common::publish_dkg_keys(&mut log.sm);
        let admin = Operation::CreatePrincipal {
            name: "admin".into(),
            roles: [qk_state::Role::Admin].into(),
        };
        log.apply("node-1", 0, admin).expect("initial admin");
        log
    }

    fn apply(
        &mut self,
        principal: &str,
        time_ms: u64,
        op: Operation,
    ) -> Result<Applied, StateError> {
        self.next += 1;
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&self.next.to_be_bytes());
        let before = self.sm.audit_len();
        let r = self.sm.apply(&Command {
            request_id: RequestId(id),
            time_ms,
            principal: principal.into(),
            op,
            proof: None,
        });
        assert_eq!(
            self.sm.audit_len(),
            before + 1,
            "one audit record per command"
        );
        r.result
    }

    fn step(&mut self, from: u64, time_ms: u64, step: DkgStep) -> Result<Applied, StateError> {
        self.apply(
            &NodeId(from).to_string(),
            time_ms,
            Operation::Dkg {
                name: "k".into(),
                version: V1,
                from: NodeId(from),
                step,
                session: Default::default(),
            },
        )
    }

    /// Every holder deals, reports ready, acks: v1 becomes enabled.
    fn enable(&mut self, time_ms: u64) {
        let holders: Vec<u64> = self.version().holders.iter().map(|h| h.0).collect();
        for (from, op) in common::dkg_until_enabled("k", V1, &holders, &[1; 100]) {
            self.apply(&from, time_ms, op).expect("DKG step");
        }
        assert_eq!(self.version().state, VersionState::Enabled);
    }

    fn version(&self) -> KeyVersionRecord {
        self.sm
            .key("k")
            .expect("key")
            .version(V1)
            .expect("v1")
            .clone()
    }

    fn last_outcome(&self) -> String {
        let n = self.sm.audit_len();
        self.sm.audit_records(n, 1)[0].outcome.clone()
    }
}

fn create(holders: &[u64]) -> Operation {
    common::create_key("k", holders)
}

fn created() -> Log {
    let mut log = Log::new();
    log.apply("admin", 1_000, create(&[3, 1, 2]))
        .expect("create");
    log
}

#[test]
fn create_sets_the_deadline_and_dealing_phase() {
    let log = created();
    let v = log.version();
    assert_eq!(v.state, VersionState::Generating);
    assert_eq!(v.dkg.phase, DkgPhase::Dealing);
    assert_eq!(
        v.generation_deadline_ms,
        1_000 + DEFAULT_GENERATION_TIMEOUT_MS
    );
    assert_eq!(v.sorted_holders(), vec![NodeId(1), NodeId(2), NodeId(3)]);
}

#[test]
fn honest_run_enables_the_version_when_every_holder_acked_the_same_set() {
    let mut log = created();
    log.step(1, 1_010, DkgStep::Deal(vec![1; 40]))
        .expect("deal");
    // One deal per holder.
    let again = log.step(1, 1_011, DkgStep::Deal(vec![9; 40]));
    assert!(again
        .expect_err("second deal")
        .to_string()
        .contains("already dealt"));
    // Complaints, acks and the end of the complaint phase wait.
    assert!(log.step(1, 1_012, DkgStep::Complaints(vec![])).is_err());
    assert!(log
        .step(
            1,
            1_012,
            DkgStep::Ack {
                public_keys: vec![7; 100]
            }
        )
        .is_err());
    assert!(log.step(1, 1_012, DkgStep::Finish).is_err());
    // One holder cannot close dealing early: every holder must have dealt,
    // or the dealing timeout must have passed in log time.
    let early = log.step(1, 1_020, DkgStep::CloseDealing);
    assert!(early
        .expect_err("early close")
        .to_string()
        .contains("1 did"));
    assert_eq!(log.version().dkg.phase, DkgPhase::Dealing);
    log.step(2, 1_021, DkgStep::Deal(vec![2; 40]))
        .expect("deal");
    assert_eq!(log.version().dkg.phase, DkgPhase::Dealing);
    // The last holder's deal closes dealing, at its log time.
    log.step(3, 1_022, DkgStep::Deal(vec![3; 40]))
        .expect("deal");
    assert_eq!(log.version().dkg.phase, DkgPhase::Complaints);
    assert_eq!(log.version().dkg.closed_ms, Some(1_022));
    // Later closes are refused no-ops, audited as refused.
    let second = log.step(2, DEALING_DUE, DkgStep::CloseDealing);
    assert!(second.is_err());
    assert!(
        log.last_outcome().starts_with("refused"),
        "{}",
        log.last_outcome()
    );
    assert!(log.step(3, 1_023, DkgStep::Deal(vec![1; 40])).is_err());

    log.step(1, 1_030, DkgStep::Complaints(vec![vec![5; 38]]))
        .expect("complaints");
    log.step(2, 1_030, DkgStep::Complaints(vec![]))
        .expect("none");
    assert!(log.step(2, 1_031, DkgStep::Complaints(vec![])).is_err());
    // One holder cannot end the complaint phase before its timeout.
    let early = log.step(3, 1_040, DkgStep::Finish);
    assert!(early
        .expect_err("early finish")
        .to_string()
        .contains("2 did"));
    // Complaints prove themselves: the last list ends the phase.
    log.step(3, 1_041, DkgStep::Complaints(vec![]))
        .expect("none");
    assert_eq!(log.version().dkg.phase, DkgPhase::Finished);
    assert!(log.step(1, FINISH_DUE + 1, DkgStep::Finish).is_err());

    let keys = vec![0x42; 200];
    for h in [2, 3] {
        assert_eq!(
            log.step(
                h,
                1_050,
                DkgStep::Ack {
                    public_keys: keys.clone()
                }
            ),
            Ok(Applied::Done)
        );
        assert_eq!(log.version().state, VersionState::Generating);
    }
    assert!(log
        .step(
            2,
            1_051,
            DkgStep::Ack {
                public_keys: keys.clone()
            }
        )
        .expect_err("second ack")
        .to_string()
        .contains("already acked"));
    assert_eq!(
        log.step(
            1,
            1_060,
            DkgStep::Ack {
                public_keys: keys.clone()
            }
        ),
        Ok(Applied::VersionEnabled)
    );
    let v = log.version();
    assert_eq!(v.state, VersionState::Enabled);
    assert_eq!(v.public_keys.as_deref(), Some(keys.as_slice()));
    assert_eq!(v.dkg.acked_keys, None, "the copy is dropped once stored");
    // Nothing more is accepted for the finished DKG.
    assert!(log.step(1, 1_070, DkgStep::CloseDealing).is_err());
    verify_chain(log.sm.audit_records(1, 1_000), GENESIS_HASH).expect("chain");
}

/// Log time at which dealing of a DKG created at 1 000 ms may close by
/// timeout, and the complaint phase that closed then may end.
const DEALING_DUE: u64 = 1_000 + qk_state::DKG_DEALING_TIMEOUT_MS;
const FINISH_DUE: u64 = DEALING_DUE + qk_state::DKG_COMPLAINT_TIMEOUT_MS;

/// Closes both phases by timeout (no holder dealt or complained).
fn to_finished(log: &mut Log) {
    log.step(1, DEALING_DUE, DkgStep::CloseDealing)
        .expect("close");
    log.step(1, FINISH_DUE, DkgStep::Finish).expect("finish");
}

#[test]
fn disagreeing_acks_fail_the_version_and_name_the_holders() {
    let mut log = created();
    to_finished(&mut log);
    log.step(
        1,
        1_040,
        DkgStep::Ack {
            public_keys: vec![1; 100],
        },
    )
    .expect("ack");
    let r = log.step(
        3,
        1_041,
        DkgStep::Ack {
            public_keys: vec![2; 100],
        },
    );
    let Ok(Applied::GenerationFailed { reason }) = r else {
        panic!("expected failure, got {r:?}");
    };
    assert!(reason.contains("disagree"), "{reason}");
    assert!(
        reason.contains("node-1") && reason.contains("node-3"),
        "{reason}"
    );
    assert!(matches!(log.version().state, VersionState::Failed { .. }));
    assert_eq!(log.version().public_keys, None);
}

#[test]
fn fail_generation_only_after_the_deadline_and_names_missing_acks() {
    let mut log = created();
    to_finished(&mut log);
    log.step(
        2,
        1_040,
        DkgStep::Ack {
            public_keys: vec![1; 100],
        },
    )
    .expect("ack");
    let deadline = log.version().generation_deadline_ms;
    let op = || Operation::FailGeneration {
        name: "k".into(),
        version: V1,
        reason: "timed out at node-2".into(),
    };
    let early = log.apply("node-2", deadline - 1, op());
    assert!(early.expect_err("early").to_string().contains("deadline"));
    assert_eq!(log.version().state, VersionState::Generating);
    let r = log.apply("node-2", deadline, op()).expect("at deadline");
    let Applied::GenerationFailed { reason } = r else {
        panic!("expected GenerationFailed, got {r:?}");
    };
    assert!(reason.contains("no ack from node-1, node-3"), "{reason}");
    assert!(reason.contains("timed out at node-2"), "{reason}");
    assert_eq!(log.version().state, VersionState::Failed { reason });
    // Late steps are refused.
    assert!(log
        .step(
            1,
            deadline + 1,
            DkgStep::Ack {
                public_keys: vec![1; 100]
            }
        )
        .is_err());
}

#[test]
fn dkg_steps_are_bounded_and_attributed() {
    let mut log = created();
    // The principal must be the node the step speaks for.
    let forged = log.apply(
        "admin",
        1_010,
        Operation::Dkg {
            name: "k".into(),
            version: V1,
            from: NodeId(1),
            step: DkgStep::Deal(vec![1; 40]),
            session: Default::default(),
        },
    );
    let forged = forged.expect_err("forged").to_string();
    assert!(forged.contains("nodes only"), "{forged}");
    // A node cannot speak for another node either.
    let impostor = log.apply(
        "node-2",
        1_010,
        Operation::Dkg {
            name: "k".into(),
            version: V1,
            from: NodeId(1),
            step: DkgStep::Deal(vec![1; 40]),
            session: Default::default(),
        },
    );
    assert!(impostor
        .expect_err("impostor")
        .to_string()
        .contains("node-1"));
    // Non-holders cannot post.
    let outsider = log.step(9, 1_010, DkgStep::Deal(vec![1; 40]));
    assert!(outsider
        .expect_err("outsider")
        .to_string()
        .contains("not a holder"));
    // Sizes are bounded.
    assert!(log
        .step(1, 1_010, DkgStep::Deal(vec![1; MAX_DKG_MESSAGE_LEN + 1]))
        .is_err());
    assert!(log.step(1, 1_010, DkgStep::Deal(Vec::new())).is_err());
    log.step(1, DEALING_DUE, DkgStep::CloseDealing)
        .expect("close");
    assert!(log
        .step(1, 1_021, DkgStep::Complaints(vec![vec![1; 38]; 4]))
        .expect_err("too many")
        .to_string()
        .contains("at most one per holder"));
    // A complaint is bounded by its own size, not a deal's.
    let max = qk_crypto::messages::MAX_COMPLAINT_LEN;
    assert!(log
        .step(1, 1_021, DkgStep::Complaints(vec![vec![1; max + 1]]))
        .expect_err("oversized complaint")
        .to_string()
        .contains(&format!("1-{max} bytes")));
    // Unknown version or key.
    let missing = log.apply(
        "node-1",
        1_030,
        Operation::Dkg {
            name: "k".into(),
            version: KeyVersion(7),
            from: NodeId(1),
            step: DkgStep::Finish,
            session: Default::default(),
        },
    );
    assert!(matches!(missing, Err(StateError::NoSuchVersion { .. })));
}

#[test]
fn rotate_carries_a_bounded_generation_timeout() {
    let mut log = created();
    log.enable(2_000);
    let rotate = |t| Operation::Rotate {
        name: "k".into(),
        holders: vec![NodeId(1), NodeId(2), NodeId(3)],
        generation_timeout_ms: Some(t),
    };
    assert!(log
        .apply("admin", 3_000, rotate(10))
        .expect_err("too short")
        .to_string()
        .contains("generation timeout"));
    log.apply("admin", 3_000, rotate(5_000)).expect("rotate");
    let v2 = log
        .sm
        .key("k")
        .expect("k")
        .version(KeyVersion(2))
        .expect("v2")
        .clone();
    assert_eq!(v2.generation_deadline_ms, 8_000);
    assert_eq!(v2.dkg.phase, DkgPhase::Dealing);
}

#[test]
fn replicas_agree_on_dkg_logs() {
    let mut a = created();
    let mut b = created();
    let steps = [
        (1, DkgStep::Deal(vec![1; 40])),
        (2, DkgStep::CloseDealing),
        (3, DkgStep::CloseDealing),
        (1, DkgStep::Complaints(vec![])),
        (2, DkgStep::Finish),
        (
            1,
            DkgStep::Ack {
                public_keys: vec![3; 50],
            },
        ),
    ];
    for (from, s) in steps {
        let ra = a.step(from, 1_100, s.clone());
        let rb = b.step(from, 1_100, s);
        assert_eq!(ra, rb);
    }
    assert_eq!(a.sm.digest(), b.sm.digest());
}

#[test]
fn destroying_a_version_drops_its_refresh_in_progress() {
    let mut log = created();
    log.enable(1_100);
    let refresh = Operation::Refresh {
        name: "k".into(),
        version: V1,
        timeout_ms: None,
    };
    let started = log.apply("admin", 2_000, refresh).expect("refresh");
    let Applied::RefreshStarted { epoch, attempt } = started else {
        panic!("expected RefreshStarted, got {started:?}");
    };
    let session = DkgSession::Refresh { epoch, attempt };
    let refresh_step = |log: &mut Log, from: u64, time_ms: u64| {
        let op = Operation::Dkg {
            name: "k".into(),
            version: V1,
            from: NodeId(from),
            step: DkgStep::Deal(vec![from as u8; 40]),
            session,
        };
        log.apply(&NodeId(from).to_string(), time_ms, op)
    };
    refresh_step(&mut log, 1, 2_010).expect("the refresh runs");

    let schedule = Operation::ScheduleDestruction {
        name: "k".into(),
        version: V1,
        after_ms: 100,
    };
    log.apply("admin", 2_020, schedule).expect("scheduled");
    let destroy = Operation::Destroy {
        name: "k".into(),
        version: V1,
    };
    log.apply("admin", 2_120, destroy).expect("destroy");
    let v = log.version();
    assert_eq!(v.state, VersionState::Destroying);
    assert!(v.refresh.is_none(), "{:?}", v.refresh);
    let reason = v.last_refresh_failure.expect("reason kept");
    assert!(reason.contains("destroyed during the refresh"), "{reason}");
    // The refresh DKG cannot go on to deal shares of the destroyed version.
    let late = refresh_step(&mut log, 2, 2_130).expect_err("refresh ended");
    assert!(late.to_string().contains("not in progress"), "{late}");
    assert_eq!(log.version().epoch, Epoch(0));
}

#[test]
fn a_node_publishes_only_its_own_dkg_key_and_keys_gate_generation() {
    let mut sm = StateMachine::new();
    let publish = |sm: &mut StateMachine, principal: &str, node: u64, key: Vec<u8>, id: u8| {
        sm.apply(&Command {
            request_id: RequestId([id; 16]),
            time_ms: 0,
            principal: principal.into(),
            op: Operation::PublishDkgKey {
                node: NodeId(node),
                public_key: key,
            },
            proof: None,
        })
        .result
    };
    // Another node cannot publish (or replace) node-2's key.
    let forged = publish(&mut sm, "node-1", 2, common::dkg_public_key(1), 1);
    assert!(forged
        .expect_err("forged")
        .to_string()
        .contains("by node-2 itself"));
    // Junk is refused.
    assert!(publish(&mut sm, "node-2", 2, vec![0; 33], 2).is_err());
    publish(&mut sm, "node-2", 2, common::dkg_public_key(2), 3).expect("publish");
    assert_eq!(sm.dkg_key(NodeId(2)), Some(&common::dkg_public_key(2)[..]));
    // After a disk loss the node publishes its new key, replacing the old.
    publish(&mut sm, "node-2", 2, common::dkg_public_key(9), 4).expect("new key");
    assert_eq!(sm.dkg_key(NodeId(2)), Some(&common::dkg_public_key(9)[..]));
    // Still nobody else may replace it.
    assert!(publish(&mut sm, "node-3", 2, common::dkg_public_key(2), 5).is_err());
    assert_eq!(sm.dkg_key(NodeId(2)), Some(&common::dkg_public_key(9)[..]));
    // A key over holders that have not all published is refused, naming them.
    let admin = Operation::CreatePrincipal {
        name: "admin".into(),
        roles: [qk_state::Role::Admin].into(),
    };
    let boot = sm.apply(&Command {
        request_id: RequestId([6; 16]),
        time_ms: 0,
        principal: "node-1".into(),
        op: admin,
        proof: None,
    });
    assert!(boot.result.is_ok());
    let refused = sm.apply(&Command {
        request_id: RequestId([7; 16]),
        time_ms: 0,
        principal: "admin".into(),
        op: create(&[1, 2, 3]),
        proof: None,
    });
    let err = refused.result.expect_err("holders without keys");
    assert!(
        err.to_string()
            .contains("no DKG key published yet by node-1, node-3"),
        "{err}"
    );
}

/// How a failure reason names an acked key set: the first 6 bytes of its
/// ack digest, in hex.
fn short_hex(public_keys: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(b"qk/ack")
        .chain_update(public_keys)
        .finalize();
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_generation_failed_on_disagreeing_acks_names_each_key_set_and_its_holders() {
    let mut log = created();
    to_finished(&mut log);
    let ack = |keys: u8| DkgStep::Ack {
        public_keys: vec![keys; 100],
    };
    log.step(1, 1_040, ack(1)).expect("ack");
    let r = log.step(3, 1_041, ack(2));
    let Ok(Applied::GenerationFailed { reason }) = r else {
        panic!("expected failure, got {r:?}");
    };
    // Listed in the order of the key sets' digests.
    let mut sets = [
        (short_hex(&[1; 100]), "node-1"),
        (short_hex(&[2; 100]), "node-3"),
    ];
    sets.sort();
    let groups: Vec<String> = sets
        .iter()
        .map(|(hex, node)| format!("{node} acked key set {hex}"))
        .collect();
    assert!(
        reason.contains(&format!("({})", groups.join("; "))),
        "{reason}"
    );
}

#[test]
fn the_cluster_keeps_dkg_keys_of_up_to_1024_nodes() {
    let mut sm = StateMachine::new();
    let mut publish = |node: u64, attempt: u8| {
        let mut id = [attempt; 16];
        id[8..].copy_from_slice(&node.to_be_bytes());
        sm.apply(&Command {
            request_id: RequestId(id),
            time_ms: 0,
            principal: NodeId(node).to_string(),
            op: Operation::PublishDkgKey {
                node: NodeId(node),
                public_key: common::dkg_public_key(1),
            },
            proof: None,
        })
        .result
    };
    for node in 1..=1024 {
        publish(node, 0).expect("below the limit");
    }
    let refused = publish(1025, 0).expect_err("past the limit");
    assert!(refused.to_string().contains("limit"), "{refused}");
    publish(7, 1).expect("a known node replaces its key at the limit");
}
