//! State machine behaviour: lifecycle transitions, idempotency, determinism,
//! and the audit chain.

use proptest::prelude::*;
use qk_state::{
    verify_chain, Applied, ChainError, Command, CreateKey, DkgStep, Operation, RequestId,
    StateError, StateMachine, VersionState, GENESIS_HASH, MAX_KEYS,
};
use qk_types::{KeyVersion, NodeId};

mod common;

fn rid(n: u64) -> RequestId {
    let mut id = [0u8; 16];
    id[8..].copy_from_slice(&n.to_be_bytes());
    RequestId(id)
}

/// Protocol steps come from nodes; everything else from the admin.
fn cmd(n: u64, time_ms: u64, op: Operation) -> Command {
    let from_node = matches!(
        op,
        Operation::FailGeneration { .. }
            | Operation::EraseReceipt { .. }
            | Operation::AuditBatch(_)
            | Operation::Audit { .. }
            | Operation::Dkg { .. }
    );
    let principal = match &op {
        // A receipt speaks for the node that erased.
        Operation::EraseReceipt { node, .. } => node.to_string(),
        // A DKG step speaks for its holder.
        Operation::Dkg { from, .. } => from.to_string(),
        _ if from_node => "node-1".into(),
        _ => "admin".into(),
    };
    Command {
        request_id: rid(n),
        time_ms,
        principal,
        op,
        proof: None,
    }
}

/// A state machine whose first entry created the `admin` principal, as a
/// bootstrapping node does.
fn machine() -> StateMachine {
    let mut sm = StateMachine::new();
    common::publish_dkg_keys(&mut sm);
    let r = sm.apply(&Command {
        request_id: rid(u64::MAX),
        time_ms: 0,
        principal: "node-1".into(),
        proof: None,
        op: Operation::CreatePrincipal {
            name: "admin".into(),
            roles: [qk_state::Role::Admin].into(),
        },
    });
    assert!(r.result.is_ok(), "{r:?}");
    sm
}

fn create(name: &str) -> Operation {
    Operation::CreateKey(CreateKey {
        name: name.into(),
        description: "test key".into(),
        owner: "team-a".into(),
        purpose: "encrypt".into(),
        rotation_period_ms: Some(86_400_000),
        expires_at_ms: None,
        threshold: 2,
        holders: vec![NodeId(1), NodeId(2), NodeId(3)],
    })
}

const V1: KeyVersion = KeyVersion(1);

fn generated(sm: &mut StateMachine, name: &str, n: &mut u64) {
    *n += 1;
    sm.apply(&cmd(*n, 10, create(name)));
    enable(sm, name, V1, &[1, 2, 3], 20);
}

/// Runs an honest DKG of the version until every holder acked (request
/// ids from their own range, apart from the tests' fixed ones).
fn enable(sm: &mut StateMachine, name: &str, version: KeyVersion, holders: &[u64], time_ms: u64) {
    for (from, op) in common::dkg_until_enabled(name, version, holders, &[1, 2, 3]) {
        let mut c = cmd(0, time_ms, op);
        c.request_id = rid(1_000_000 + sm.audit_len());
        assert_eq!(c.principal, from);
        let r = sm.apply(&c);
        assert!(r.result.is_ok(), "{r:?}");
    }
    let v = sm
        .key(name)
        .and_then(|k| k.version(version))
        .expect("version");
    assert_eq!(v.state, VersionState::Enabled);
}

#[test]
fn full_lifecycle_to_destroyed() {
    let mut sm = machine();
    let mut n = 0;
    generated(&mut sm, "payments", &mut n);
    let key = sm.key("payments").expect("key");
    assert_eq!(key.version(V1).expect("v1").state, VersionState::Enabled);
    assert_eq!(key.primary_version().expect("primary").version, V1);

    let step =
        |sm: &mut StateMachine, n: u64, t: u64, op: Operation| sm.apply(&cmd(n, t, op)).result;
    let name = || "payments".to_string();
    assert!(step(
        &mut sm,
        10,
        30,
        Operation::Disable {
            name: name(),
            version: V1
        }
    )
    .is_ok());
    assert!(step(
        &mut sm,
        11,
        40,
        Operation::ScheduleDestruction {
            name: name(),
            version: V1,
            after_ms: 1000
        }
    )
    .is_ok());
    assert_eq!(
        sm.key("payments").expect("k").version(V1).expect("v").state,
        VersionState::PendingDestruction { due_ms: 1040 }
    );
    // Too early: refused, and the refusal is audited.
    let early = step(
        &mut sm,
        12,
        500,
        Operation::Destroy {
            name: name(),
            version: V1,
        },
    );
    assert!(matches!(early, Err(StateError::InvalidTransition { .. })));
    assert!(sm
        .audit_records(1, 100)
        .iter()
        .any(|r| r.outcome.starts_with("refused")));
    assert!(step(
        &mut sm,
        13,
        1040,
        Operation::Destroy {
            name: name(),
            version: V1
        }
    )
    .is_ok());
    // n - t + 1 = 2 receipts needed; a non-holder's receipt is refused.
    assert!(step(
        &mut sm,
        14,
        1050,
        Operation::EraseReceipt {
            name: name(),
            version: V1,
            node: NodeId(9)
        }
    )
    .is_err());
    assert_eq!(
        step(
            &mut sm,
            15,
            1060,
            Operation::EraseReceipt {
                name: name(),
                version: V1,
                node: NodeId(1)
            }
        ),
        Ok(Applied::Done)
    );
    assert_eq!(
        step(
            &mut sm,
            16,
            1070,
            Operation::EraseReceipt {
                name: name(),
                version: V1,
                node: NodeId(3)
            }
        ),
        Ok(Applied::VersionDestroyed)
    );
    assert_eq!(
        sm.key("payments").expect("k").version(V1).expect("v").state,
        VersionState::Destroyed
    );
    verify_chain(sm.audit_records(1, 1000), GENESIS_HASH).expect("chain verifies");
}

#[test]
fn cancel_destruction_and_compromise() {
    let mut sm = machine();
    let mut n = 0;
    generated(&mut sm, "k", &mut n);
    let name = || "k".to_string();
    sm.apply(&cmd(
        10,
        30,
        Operation::ScheduleDestruction {
            name: name(),
            version: V1,
            after_ms: 5,
        },
    ));
    assert!(sm
        .apply(&cmd(
            11,
            31,
            Operation::CancelDestruction {
                name: name(),
                version: V1
            }
        ))
        .result
        .is_ok());
    assert_eq!(
        sm.key("k").expect("k").version(V1).expect("v").state,
        VersionState::Disabled
    );
    assert!(sm
        .apply(&cmd(
            12,
            32,
            Operation::Enable {
                name: name(),
                version: V1
            }
        ))
        .result
        .is_ok());
    let r = sm.apply(&cmd(
        13,
        33,
        Operation::MarkCompromised {
            name: name(),
            version: V1,
            reason: "leaked laptop".into(),
            allow_decrypt: false,
        },
    ));
    assert!(r.result.is_ok());
    let v = sm.key("k").expect("k").version(V1).expect("v").clone();
    assert_eq!(v.state, VersionState::Disabled);
    assert_eq!(v.compromised.as_deref(), Some("leaked laptop"));
    // A compromised version cannot be silently re-enabled.
    assert!(sm
        .apply(&cmd(
            14,
            34,
            Operation::Enable {
                name: name(),
                version: V1
            }
        ))
        .result
        .is_err());
}

#[test]
fn rotation_creates_new_versions_and_primary_follows() {
    let mut sm = machine();
    let mut n = 0;
    generated(&mut sm, "k", &mut n);
    let r = sm.apply(&cmd(
        10,
        40,
        Operation::Rotate {
            name: "k".into(),
            holders: vec![NodeId(1), NodeId(2), NodeId(3)],
            generation_timeout_ms: None,
        },
    ));
    assert_eq!(
        r.result,
        Ok(Applied::VersionCreated {
            version: KeyVersion(2)
        })
    );
    // A second rotation while generating is refused.
    assert!(sm
        .apply(&cmd(
            11,
            41,
            Operation::Rotate {
                name: "k".into(),
                holders: vec![NodeId(1), NodeId(2)],
                generation_timeout_ms: None,
            }
        ))
        .result
        .is_err());
    assert_eq!(
        sm.key("k")
            .expect("k")
            .primary_version()
            .expect("p")
            .version,
        V1
    );
    enable(&mut sm, "k", KeyVersion(2), &[1, 2, 3], 42);
    assert_eq!(
        sm.key("k")
            .expect("k")
            .primary_version()
            .expect("p")
            .version,
        KeyVersion(2)
    );
}

#[test]
fn invalid_requests_are_refused_with_reasons() {
    let mut sm = machine();
    let bad_name = sm.apply(&cmd(1, 1, create("no spaces allowed")));
    assert!(matches!(bad_name.result, Err(StateError::Invalid(_))));
    let mut c = match create("ok") {
        Operation::CreateKey(c) => c,
        _ => unreachable!(),
    };
    c.threshold = 4;
    let r = sm.apply(&cmd(2, 2, Operation::CreateKey(c)));
    assert!(r
        .result
        .expect_err("threshold")
        .to_string()
        .contains("threshold"));
    sm.apply(&cmd(3, 3, create("dup")));
    assert_eq!(
        sm.apply(&cmd(4, 4, create("dup"))).result,
        Err(StateError::KeyExists("dup".into()))
    );
    let missing = sm.apply(&cmd(
        5,
        5,
        Operation::Disable {
            name: "nope".into(),
            version: V1,
        },
    ));
    assert!(missing
        .result
        .expect_err("missing")
        .to_string()
        .contains("does not exist"));
}

#[test]
fn retried_request_applies_once() {
    let mut sm = machine();
    let first = sm.apply(&cmd(1, 1, create("once")));
    let audit_len = sm.audit_len();
    let again = sm.apply(&cmd(1, 2, create("once")));
    assert!(again.duplicate);
    assert_eq!(again.result, first.result);
    assert_eq!(again.audit_seq, first.audit_seq);
    assert_eq!(sm.audit_len(), audit_len, "no second audit record");
}

#[test]
fn tampered_audit_record_is_detected() {
    let mut sm = machine();
    for i in 0..5 {
        sm.apply(&cmd(i, i, create(&format!("k{i}"))));
    }
    let records = sm.audit_records(1, 100).to_vec();
    verify_chain(&records, GENESIS_HASH).expect("intact");
    let mut edited = records.clone();
    edited[2].principal = "someone-else".into();
    assert_eq!(
        verify_chain(&edited, GENESIS_HASH),
        Err(ChainError::HashMismatch { seq: 3 })
    );
    let mut rehashed = edited.clone();
    rehashed[2].hash = rehashed[2].compute_hash();
    assert_eq!(
        verify_chain(&rehashed, GENESIS_HASH),
        Err(ChainError::BrokenLink { seq: 4 })
    );
    let mut dropped = records.clone();
    dropped.remove(1);
    assert!(verify_chain(&dropped, GENESIS_HASH).is_err());
}

#[test]
fn snapshot_round_trips() {
    let mut sm = machine();
    let mut n = 0;
    generated(&mut sm, "snap", &mut n);
    let back = StateMachine::from_bytes(&sm.to_bytes().expect("encodes")).expect("decode");
    assert_eq!(back, sm);
    assert_eq!(back.digest(), sm.digest());
    assert!(StateMachine::from_bytes(&[0xff, 0xff, 0xff]).is_err());
}

fn arb_op() -> impl Strategy<Value = Operation> {
    let name = prop_oneof![Just("a".to_string()), Just("b".to_string())];
    let version = (1u32..3).prop_map(KeyVersion);
    prop_oneof![
        name.clone().prop_map(|n| create(&n)),
        (name.clone(), version.clone(), 1u64..4).prop_map(|(name, version, from)| {
            Operation::Dkg {
                name,
                version,
                from: NodeId(from),
                step: DkgStep::Ack {
                    public_keys: vec![1],
                },
                session: Default::default(),
            }
        }),
        (name.clone(), version.clone())
            .prop_map(|(name, version)| Operation::Disable { name, version }),
        (name.clone(), version.clone())
            .prop_map(|(name, version)| Operation::Enable { name, version }),
        (name.clone(), version.clone(), 0u64..50).prop_map(|(name, version, after_ms)| {
            Operation::ScheduleDestruction {
                name,
                version,
                after_ms,
            }
        }),
        (name.clone(), version.clone())
            .prop_map(|(name, version)| Operation::Destroy { name, version }),
        (name.clone(), version.clone(), 1u64..4).prop_map(|(name, version, node)| {
            Operation::EraseReceipt {
                name,
                version,
                node: NodeId(node),
            }
        }),
        name.prop_map(|name| Operation::Rotate {
            name,
            holders: vec![NodeId(1), NodeId(2), NodeId(3)],
            generation_timeout_ms: None,
        }),
    ]
}

proptest! {
    #[test]
    fn replicas_applying_the_same_log_agree(ops in proptest::collection::vec((arb_op(), 0u64..8), 1..60)) {
        let log: Vec<Command> = ops.into_iter().enumerate()
            .map(|(i, (op, retry))| cmd(if retry == 0 { 0 } else { i as u64 }, i as u64 * 10, op))
            .collect();
        let mut a = machine();
        let mut b = machine();
        let mut ra = Vec::new();
        for c in &log {
            let before: Vec<qk_state::KeyRecord> = a.keys().cloned().collect();
            let r = a.apply(c);
            if r.result.is_err() {
                let after: Vec<qk_state::KeyRecord> = a.keys().cloned().collect();
                prop_assert_eq!(before, after, "a refused command changed the keys");
            }
            ra.push(r);
        }
        let rb: Vec<_> = log.iter().map(|c| b.apply(c)).collect();
        prop_assert_eq!(ra, rb);
        prop_assert_eq!(a.digest(), b.digest());
        prop_assert!(verify_chain(a.audit_records(1, 10_000), GENESIS_HASH).is_ok());
        // A destroyed version never comes back.
        for key in a.keys() {
            for v in &key.versions {
                if v.state == VersionState::Destroyed {
                    prop_assert!(v.erase_receipts.len() > v.holders.len() - usize::from(v.threshold));
                }
            }
        }
    }
}

#[test]
fn audit_batch_appends_one_chained_record_per_event() {
    let mut sm = machine();
    sm.apply(&cmd(1, 1, create("k")));
    let events: Vec<qk_state::AuditEvent> = (0..3)
        .map(|i| qk_state::AuditEvent {
            principal: format!("svc-{i}"),
            operation: "decrypt".into(),
            key: Some("k".into()),
            version: Some(V1),
            outcome: if i == 1 {
                "refused: wrong context".into()
            } else {
                "ok".into()
            },
        })
        .collect();
    let r = sm.apply(&cmd(2, 2, Operation::AuditBatch(events)));
    assert!(r.result.is_ok());
    // Records: 8 DKG keys, the initial admin, the key, then one per event.
    assert_eq!(r.audit_seq, 13);
    let records = sm.audit_records(1, 20);
    assert_eq!(records.len(), 13);
    assert_eq!(records[11].principal, "svc-1");
    assert!(records[11].outcome.starts_with("refused"));
    verify_chain(records, GENESIS_HASH).expect("chain verifies");
    let empty = sm.apply(&cmd(3, 3, Operation::AuditBatch(Vec::new())));
    assert!(
        empty.result.is_err(),
        "empty batches are refused (and audited as refused)"
    );
}

#[test]
fn an_audit_batch_holds_up_to_its_limit() {
    let mut sm = machine();
    let event = qk_state::AuditEvent {
        principal: "svc".into(),
        operation: "decrypt".into(),
        key: None,
        version: None,
        outcome: "ok".into(),
    };
    let full = vec![event.clone(); qk_state::MAX_AUDIT_BATCH];
    let r = sm.apply(&cmd(1, 1, Operation::AuditBatch(full.clone())));
    assert!(r.result.is_ok(), "{r:?}");
    let mut over = full;
    over.push(event);
    let r = sm.apply(&cmd(2, 2, Operation::AuditBatch(over)));
    assert!(r.result.is_err(), "{r:?}");
}

#[test]
fn dkg_steps_have_their_names() {
    let steps = [
        DkgStep::Deal(vec![]),
        DkgStep::Complaints(vec![]),
        DkgStep::CloseDealing,
        DkgStep::Finish,
        DkgStep::Ack {
            public_keys: vec![],
        },
    ];
    let names = steps.iter().map(DkgStep::name).collect::<Vec<_>>();
    assert_eq!(
        names,
        [
            "version.dkg.deal",
            "version.dkg.complaints",
            "version.dkg.close-dealing",
            "version.dkg.finish",
            "version.dkg.ack"
        ]
    );
}

#[test]
fn dkg_phases_have_their_names() {
    use qk_state::DkgPhase;
    let names = [DkgPhase::Dealing, DkgPhase::Complaints, DkgPhase::Finished].map(DkgPhase::name);
    assert_eq!(names, ["dealing", "complaints", "finished"]);
}

#[test]
fn one_overlong_audit_field_is_cut_and_never_drops_its_neighbours() {
    let mut sm = machine();
    let long_key = "k".repeat(300);
    let events = vec![
        qk_state::AuditEvent::new("svc-a", "decrypt", Some("k"), Some(V1), "ok"),
        qk_state::AuditEvent {
            principal: "svc-b".into(),
            operation: "decrypt".into(),
            key: Some(long_key.clone()),
            version: None,
            outcome: "refused: no such key".repeat(100),
        },
        qk_state::AuditEvent::new("svc-c", "decrypt", Some("k"), Some(V1), "ok"),
    ];
    let r = sm.apply(&cmd(2, 2, Operation::AuditBatch(events)));
    assert!(r.result.is_ok(), "{:?}", r.result);
    let records = sm.audit_records(1, 20);
    let principals: Vec<&str> = records.iter().map(|r| r.principal.as_str()).collect();
    assert!(
        principals.ends_with(&["svc-a", "svc-b", "svc-c"]),
        "{principals:?}"
    );
    let cut = &records[records.len() - 2];
    assert_eq!(cut.key.as_deref(), Some(&long_key[..128]));
    assert!(cut.outcome.len() <= 1024);
    let built = qk_state::AuditEvent::new("p", "decrypt", Some(&long_key), None, "ok");
    assert_eq!(built.key.map(|k| k.len()), Some(128));
}

fn from_node(n: u64, time_ms: u64, op: Operation) -> Command {
    Command {
        principal: "node-1".into(),
        ..cmd(n, time_ms, op)
    }
}

#[test]
fn the_minimum_decryption_version_takes_effect_up_to_the_primary_and_no_further() {
    let mut sm = machine();
    let mut n = 0;
    generated(&mut sm, "k", &mut n);
    let set = |v: u32| Operation::SetMinDecryptVersion {
        name: "k".into(),
        version: KeyVersion(v),
    };
    let past_primary = sm.apply(&cmd(100, 30, set(2))).result;
    assert!(
        matches!(&past_primary, Err(StateError::Invalid(_))),
        "{past_primary:?}"
    );
    sm.apply(&cmd(101, 31, set(1)))
        .result
        .expect("the primary itself");
    let key = sm.key("k").expect("key");
    assert_eq!(key.min_decrypt_version, V1);
}

#[test]
fn a_rotation_period_of_at_least_five_seconds_is_taken() {
    let mut sm = machine();
    for (i, (period_ms, ok)) in [(4_999u64, false), (5_000, true)].into_iter().enumerate() {
        let Operation::CreateKey(mut c) = create(&format!("r{i}")) else {
            unreachable!("create builds a CreateKey")
        };
        c.rotation_period_ms = Some(period_ms);
        let r = sm
            .apply(&cmd(10 + i as u64, 1, Operation::CreateKey(c)))
            .result;
        assert_eq!(r.is_ok(), ok, "{period_ms} ms: {r:?}");
    }
}

#[test]
fn names_texts_and_tags_are_taken_at_their_limits_and_refused_past_them() {
    let mut sm = machine();
    let long = |n: usize| "n".repeat(n);
    assert!(sm.apply(&cmd(1, 1, create(&long(128)))).result.is_ok());
    assert!(sm.apply(&cmd(2, 1, create(&long(129)))).result.is_err());
    let Operation::CreateKey(mut c) = create("texts") else {
        unreachable!("create builds a CreateKey")
    };
    c.description = "d".repeat(1024);
    assert!(sm
        .apply(&cmd(3, 1, Operation::CreateKey(c.clone())))
        .result
        .is_ok());
    c.name = "texts2".into();
    c.description.push('d');
    assert!(sm
        .apply(&cmd(4, 1, Operation::CreateKey(c)))
        .result
        .is_err());
    let tag = |value: usize| Operation::SetTag {
        name: "texts".into(),
        tag: "t".into(),
        value: Some(vec![7; value]),
    };
    assert!(sm.apply(&cmd(5, 1, tag(4096))).result.is_ok());
    assert!(sm.apply(&cmd(6, 1, tag(4097))).result.is_err());
}

#[test]
fn key_count_and_digest_follow_the_state() {
    let mut sm = machine();
    assert_eq!(sm.key_count(), 0);
    let empty = sm.digest();
    assert_eq!(empty, machine().digest(), "same log, same digest");
    sm.apply(&cmd(1, 1, create("a")));
    sm.apply(&cmd(2, 1, create("b")));
    assert_eq!(sm.key_count(), 2);
    assert_ne!(sm.digest(), empty);
}

#[test]
fn only_the_running_refresh_attempt_can_be_abandoned() {
    let mut sm = machine();
    let mut n = 0;
    generated(&mut sm, "k", &mut n);
    let refresh = Operation::Refresh {
        name: "k".into(),
        version: V1,
        timeout_ms: None,
    };
    sm.apply(&cmd(100, 30, refresh))
        .result
        .expect("refresh starts");
    let abandon = |attempt: u32| Operation::AbandonRefresh {
        name: "k".into(),
        version: V1,
        attempt,
        reason: "deadline".into(),
    };
    let stale = sm.apply(&from_node(101, 40_000, abandon(2))).result;
    assert!(stale.is_err(), "{stale:?}");
    assert!(sm
        .key("k")
        .and_then(|k| k.version(V1))
        .is_some_and(|v| v.refresh.is_some()));
    sm.apply(&from_node(102, 40_001, abandon(1)))
        .result
        .expect("the running attempt");
    assert!(sm
        .key("k")
        .and_then(|k| k.version(V1))
        .is_some_and(|v| v.refresh.is_none()));
}

#[test]
fn an_empty_acked_key_set_is_refused() {
    let mut sm = machine();
    sm.apply(&cmd(1, 1, create("k")));
    let log = common::dkg_until_enabled("k", V1, &[1, 2, 3], &[]);
    let mut refused = None;
    for (i, (from, op)) in log.into_iter().enumerate() {
        let r = sm.apply(&Command {
            principal: from,
            ..cmd(10 + i as u64, 2, op.clone())
        });
        if matches!(
            op,
            Operation::Dkg {
                step: DkgStep::Ack { .. },
                ..
            }
        ) {
            refused = Some(r.result);
            break;
        }
    }
    let refused = refused.expect("an ack was tried");
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("1-")),
        "{refused:?}"
    );
}

#[test]
fn narrowing_operations_are_the_ones_that_can_take_access_away() {
    let (name, version) = (String::from("k"), V1);
    let narrowing = [
        Operation::Disable {
            name: name.clone(),
            version,
        },
        Operation::SetMinDecryptVersion {
            name: name.clone(),
            version,
        },
        Operation::RevokeToken {
            id: "00000000000000a1".into(),
        },
        Operation::DeletePrincipal { name: "p".into() },
    ];
    for op in &narrowing {
        assert!(op.narrows_access(), "{op:?}");
    }
    let widening = [
        Operation::Enable {
            name: name.clone(),
            version,
        },
        create("k"),
        Operation::CreatePrincipal {
            name: "p".into(),
            roles: Default::default(),
        },
    ];
    for op in &widening {
        assert!(!op.narrows_access(), "{op:?}");
    }
}

#[test]
fn an_operation_names_its_version_only_when_it_has_one() {
    let disable = Operation::Disable {
        name: "k".into(),
        version: KeyVersion(3),
    };
    assert_eq!(disable.version(), Some(KeyVersion(3)));
    assert_eq!(create("k").version(), None);
    let audit = Operation::Audit {
        operation: "decrypt".into(),
        key: Some("k".into()),
        version: None,
        outcome: "ok".into(),
    };
    assert_eq!(audit.key_name(), Some("k"));
}

#[test]
fn a_failed_generation_keeps_at_most_512_bytes_of_the_reporters_note() {
    let mut sm = machine();
    sm.apply(&cmd(1, 10, create("k")));
    let note = "é".repeat(400); // 800 bytes, two per char
    let fail = Operation::FailGeneration {
        name: "k".into(),
        version: V1,
        reason: note,
    };
    sm.apply(&cmd(2, 40_000, fail))
        .result
        .expect("past the deadline");
    let state = sm
        .key("k")
        .and_then(|k| k.version(V1))
        .map(|v| v.state.clone());
    let Some(VersionState::Failed { reason }) = state else {
        panic!("{state:?}")
    };
    let reported = reason.split("reported: ").nth(1).expect("the note");
    assert_eq!(
        reported,
        "é".repeat(256),
        "cut to 512 bytes on a char boundary"
    );
}

/// The log of an honest refresh DKG of `name` v1 (attempt 1, epoch 1)
/// whose holders ack `acks[i]`.
fn refresh_log(name: &str, acks: &[Vec<u8>]) -> Vec<(String, Operation)> {
    let session = qk_state::DkgSession::Refresh {
        epoch: qk_types::Epoch(1),
        attempt: 1,
    };
    let mut log = common::dkg_until_enabled(name, V1, &[1, 2, 3], &[]);
    let mut acked = acks.iter();
    for (_, op) in &mut log {
        if let Operation::Dkg {
            session: s, step, ..
        } = op
        {
            *s = session;
            if let DkgStep::Ack { public_keys } = step {
                *public_keys = acked.next().cloned().unwrap_or_default();
            }
        }
    }
    log
}

#[test]
fn a_refresh_completes_on_the_last_ack_of_the_same_public_key_and_not_before() {
    // A key set long enough to hold a header, three indices and `C_0`.
    let key_set: Vec<u8> = (0..90).collect();
    for (label, last_ack) in [
        ("same key", {
            let mut k = key_set.clone();
            k[60] ^= 1; // a commitment past `C_0` changes, as a refresh does
            k
        }),
        ("another key", {
            let mut k = key_set.clone();
            k[44] ^= 1; // `C_0`, the public key, changes
            k
        }),
    ] {
        let mut sm = machine();
        sm.apply(&cmd(1, 10, create("k")));
        for (i, (from, op)) in common::dkg_until_enabled("k", V1, &[1, 2, 3], &key_set)
            .into_iter()
            .enumerate()
        {
            let r = sm.apply(&Command {
                principal: from,
                ..cmd(100 + i as u64, 20, op)
            });
            assert!(r.result.is_ok(), "{r:?}");
        }
        let refresh = Operation::Refresh {
            name: "k".into(),
            version: V1,
            timeout_ms: None,
        };
        sm.apply(&cmd(200, 30, refresh))
            .result
            .expect("refresh starts");
        // Every ack carries the same refreshed key set.
        let acks = vec![last_ack.clone(); 3];
        let mut outcomes = Vec::new();
        for (i, (from, op)) in refresh_log("k", &acks).into_iter().enumerate() {
            let is_ack = matches!(
                op,
                Operation::Dkg {
                    step: DkgStep::Ack { .. },
                    ..
                }
            );
            let r = sm.apply(&Command {
                principal: from,
                ..cmd(300 + i as u64, 40, op)
            });
            if is_ack {
                outcomes.push(r.result);
            }
        }
        let v = sm.key("k").and_then(|k| k.version(V1)).expect("v1").clone();
        if label == "same key" {
            assert!(
                matches!(
                    outcomes[..],
                    [
                        Ok(Applied::Done),
                        Ok(Applied::Done),
                        Ok(Applied::RefreshCompleted { .. })
                    ]
                ),
                "{label}: {outcomes:?}"
            );
            assert_eq!(v.epoch, qk_types::Epoch(1));
            assert_eq!(v.public_keys, Some(last_ack));
        } else {
            assert!(v.refresh.is_none(), "{label}: abandoned");
            assert_eq!(v.epoch, qk_types::Epoch(0), "{label}");
            assert_eq!(v.public_keys, Some(key_set.clone()), "{label}");
        }
    }
}

#[test]
fn a_key_expires_at_its_expiry_and_a_later_expiry_revives_it() {
    let mut sm = machine();
    let Operation::CreateKey(mut c) = create("k") else {
        unreachable!("create builds a CreateKey")
    };
    c.expires_at_ms = Some(1_000);
    sm.apply(&cmd(1, 10, Operation::CreateKey(c)))
        .result
        .expect("created");
    // The holders vouch for the time, then node 1 proposes the expiry.
    let expire_at = |sm: &mut StateMachine, n: u64, time_ms: u64| {
        for node in 1..=3u64 {
            let attest = Command {
                principal: format!("node-{node}"),
                ..cmd(n * 10 + node, time_ms, Operation::Attest)
            };
            assert!(sm.apply(&attest).result.is_ok());
        }
        let expire = Operation::Expire { name: "k".into() };
        sm.apply(&from_node(n * 10, time_ms, expire)).result
    };
    assert!(expire_at(&mut sm, 2, 999).is_err(), "not yet");
    expire_at(&mut sm, 3, 1_000).expect("at its expiry");
    assert!(sm.key("k").is_some_and(|k| k.expired));
    let reschedule = |expires_at_ms: u64| Operation::SetSchedule {
        name: "k".into(),
        rotation_period_ms: None,
        expires_at_ms: Some(expires_at_ms),
    };
    sm.apply(&cmd(4, 2_000, reschedule(1_500)))
        .result
        .expect("set");
    assert!(sm.key("k").is_some_and(|k| k.expired), "still in the past");
    sm.apply(&cmd(6, 2_000, reschedule(2_000)))
        .result
        .expect("set");
    assert!(
        sm.key("k").is_some_and(|k| k.expired),
        "an expiry of now is past"
    );
    sm.apply(&cmd(5, 2_000, reschedule(5_000)))
        .result
        .expect("set");
    assert!(sm.key("k").is_some_and(|k| !k.expired), "revived");
}

#[test]
fn a_key_takes_64_tags_with_names_up_to_128_bytes() {
    let mut sm = machine();
    sm.apply(&cmd(1, 1, create("k")));
    let tag = |n: u64, name: String| {
        cmd(
            n,
            2,
            Operation::SetTag {
                name: "k".into(),
                tag: name,
                value: Some(vec![1]),
            },
        )
    };
    assert!(sm.apply(&tag(2, "t".repeat(128))).result.is_ok());
    assert!(sm.apply(&tag(3, "t".repeat(129))).result.is_err());
    for i in 0..63 {
        let r = sm.apply(&tag(10 + i, format!("tag{i}"))).result;
        assert!(r.is_ok(), "tag {i}: {r:?}");
    }
    let r = sm.apply(&tag(100, "one-too-many".into())).result;
    assert!(r.is_err(), "a 65th tag: {r:?}");
    let r = sm.apply(&tag(101, "tag0".into())).result;
    assert!(r.is_ok(), "changing one of the 64: {r:?}");
}

#[test]
fn a_disabled_version_is_not_refreshed_and_a_refresh_is_not_abandoned_early() {
    let mut sm = machine();
    let mut n = 0;
    generated(&mut sm, "k", &mut n);
    let refresh = || Operation::Refresh {
        name: "k".into(),
        version: V1,
        timeout_ms: None,
    };
    let disable = Operation::Disable {
        name: "k".into(),
        version: V1,
    };
    sm.apply(&cmd(100, 30, disable)).result.expect("disabled");
    assert!(sm.apply(&cmd(101, 31, refresh())).result.is_err());
    let enable = Operation::Enable {
        name: "k".into(),
        version: V1,
    };
    sm.apply(&cmd(102, 32, enable)).result.expect("enabled");
    sm.apply(&cmd(103, 33, refresh()))
        .result
        .expect("refresh starts");
    let abandon = Operation::AbandonRefresh {
        name: "k".into(),
        version: V1,
        attempt: 1,
        reason: "too early".into(),
    };
    let early = sm.apply(&from_node(104, 100, abandon)).result;
    assert!(early.is_err(), "{early:?}");
}

#[test]
fn every_node_that_published_a_dkg_key_is_listed_and_oversized_acks_are_refused() {
    let sm = machine();
    let nodes: Vec<u64> = sm.dkg_key_nodes().map(|n| n.0).collect();
    assert_eq!(nodes, (1..=8).collect::<Vec<u64>>());
    let mut sm = machine();
    sm.apply(&cmd(1, 1, create("k")));
    let oversized = vec![1u8; qk_state::MAX_PUBLIC_KEYS_LEN + 1];
    let log = common::dkg_until_enabled("k", V1, &[1, 2, 3], &oversized);
    for (i, (from, op)) in log.into_iter().enumerate() {
        let is_ack = matches!(
            op,
            Operation::Dkg {
                step: DkgStep::Ack { .. },
                ..
            }
        );
        let r = sm.apply(&Command {
            principal: from,
            ..cmd(10 + i as u64, 2, op)
        });
        if is_ack {
            assert!(r.result.is_err(), "{r:?}");
            break;
        }
    }
}

fn last_record(sm: &StateMachine) -> qk_state::AuditRecord {
    sm.audit_records(sm.audit_len(), 1)[0].clone()
}

#[test]
fn a_refused_key_creation_or_approval_request_is_recorded_under_its_key() {
    let mut sm = machine();
    sm.apply(&cmd(1, 1, create("k"))).result.expect("created");
    let again = sm.apply(&cmd(2, 2, create("k")));
    assert!(matches!(again.result, Err(StateError::KeyExists(_))));
    assert_eq!(last_record(&sm).key.as_deref(), Some("k"));
    let decrypt = qk_state::PendingAction::Decrypt {
        key: "k".into(),
        ciphertext_sha256: [0; 32],
    };
    let disable = qk_state::PendingAction::Operation(Box::new(Operation::Disable {
        name: "other".into(),
        version: V1,
    }));
    for (n, (action, key)) in [(decrypt, "k"), (disable, "other")].into_iter().enumerate() {
        let ask = Operation::RequestApproval { action };
        let r = sm.apply(&cmd(3 + n as u64, 3, ask));
        assert!(r.result.is_err(), "{r:?}");
        let record = last_record(&sm);
        assert_eq!(record.operation, "approval.request");
        assert_eq!(record.key.as_deref(), Some(key));
    }
}

#[test]
fn a_nodes_audit_event_is_recorded_as_reported() {
    let mut sm = machine();
    let audit = Operation::Audit {
        operation: "decrypt".into(),
        key: Some("k".into()),
        version: Some(KeyVersion(2)),
        outcome: "ok: 3 partials".into(),
    };
    let r = sm.apply(&cmd(1, 1, audit.clone()));
    assert_eq!(r.result, Ok(Applied::Done));
    let record = last_record(&sm);
    assert_eq!(record.principal, "node-1");
    assert_eq!(record.operation, "decrypt");
    assert_eq!(record.key.as_deref(), Some("k"));
    assert_eq!(record.version, Some(KeyVersion(2)));
    assert_eq!(record.outcome, "ok: 3 partials");
    let refused = sm.apply(&Command {
        principal: "admin".into(),
        ..cmd(2, 2, audit)
    });
    assert!(matches!(refused.result, Err(StateError::Denied(_))));
    let record = last_record(&sm);
    assert_eq!((record.operation.as_str(), record.key), ("audit", None));
    assert_eq!(record.version, Some(KeyVersion(2)));
}

#[test]
fn a_note_is_cut_at_a_character_boundary_and_one_at_the_limit_is_kept_whole() {
    let reported = |note: String| {
        let mut sm = machine();
        sm.apply(&cmd(1, 10, create("k")));
        let fail = Operation::FailGeneration {
            name: "k".into(),
            version: V1,
            reason: note,
        };
        let r = sm.apply(&cmd(2, 40_000, fail)).result;
        let Ok(Applied::GenerationFailed { reason }) = r else {
            panic!("{r:?}")
        };
        reason
            .split("reported: ")
            .nth(1)
            .expect("the note")
            .to_string()
    };
    let across = format!("a{}", "é".repeat(400)); // byte 512 splits an é
    assert_eq!(reported(across), format!("a{}", "é".repeat(255)));
    let at_limit = format!("ab{}", "é".repeat(255)); // 512 bytes
    assert_eq!(reported(at_limit.clone()), at_limit);
}

#[test]
fn version_states_have_their_names() {
    let states = [
        VersionState::Generating,
        VersionState::Enabled,
        VersionState::Disabled,
        VersionState::PendingDestruction { due_ms: 1 },
        VersionState::Destroying,
        VersionState::Destroyed,
        VersionState::Failed { reason: "r".into() },
    ];
    let names = states.iter().map(VersionState::name).collect::<Vec<_>>();
    assert_eq!(
        names,
        [
            "generating",
            "enabled",
            "disabled",
            "pending-destruction",
            "destroying",
            "destroyed",
            "failed"
        ]
    );
}

#[test]
fn a_three_of_five_version_is_destroyed_by_exactly_three_erase_receipts() {
    let mut sm = machine();
    let holders = [1, 2, 3, 4, 5];
    let Operation::CreateKey(mut c) = create("k") else {
        unreachable!("a key creation")
    };
    c.threshold = 3;
    c.holders = holders.iter().map(|h| NodeId(*h)).collect();
    sm.apply(&cmd(1, 10, Operation::CreateKey(c)))
        .result
        .expect("created");
    enable(&mut sm, "k", V1, &holders, 20);
    let schedule = Operation::ScheduleDestruction {
        name: "k".into(),
        version: V1,
        after_ms: 1000,
    };
    sm.apply(&cmd(2, 30, schedule)).result.expect("scheduled");
    let destroy = Operation::Destroy {
        name: "k".into(),
        version: V1,
    };
    sm.apply(&cmd(3, 1030, destroy)).result.expect("destroying");
    let receipt = |node: u64| Operation::EraseReceipt {
        name: "k".into(),
        version: V1,
        node: NodeId(node),
    };
    for node in [5, 2] {
        let r = sm.apply(&cmd(10 + node, 1040, receipt(node))).result;
        assert_eq!(r, Ok(Applied::Done), "receipt of node-{node}");
    }
    let state = |sm: &StateMachine| {
        sm.key("k")
            .and_then(|k| k.version(V1))
            .map(|v| v.state.clone())
    };
    assert_eq!(state(&sm), Some(VersionState::Destroying));
    let r = sm.apply(&cmd(20, 1050, receipt(4))).result;
    assert_eq!(r, Ok(Applied::VersionDestroyed));
    assert_eq!(state(&sm), Some(VersionState::Destroyed));
}

#[test]
fn the_key_count_is_bounded_and_the_refusal_says_what_to_do() {
    let mut sm = machine();
    for n in 0..MAX_KEYS as u64 {
        let r = sm.apply(&cmd(n + 1, 1_000, create(&format!("k{n}"))));
        assert!(r.result.is_ok(), "key {n}: {r:?}");
    }
    let r = sm.apply(&cmd(u64::MAX - 1, 1_000, create("one-too-many")));
    let Err(StateError::Invalid(message)) = &r.result else {
        panic!("a key past the limit must be refused as invalid: {r:?}");
    };
    assert!(
        message.contains("100000 keys") && message.contains("rotate"),
        "{message}"
    );
    assert!(r.audit_seq > 0, "the refusal is audited");
    assert_eq!(sm.key_count(), MAX_KEYS);
}
