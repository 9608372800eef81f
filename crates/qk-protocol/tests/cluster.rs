//! Whole-protocol runs over the in-process cluster: DKG, unwrap with any `t`
//! live holders (asking only `t` of them unless one fails to deliver),
//! failure after the deadline, destruction, a Byzantine holder.

mod common;

use common::*;
use qk_protocol::{
    holder_partial, partial_response, PartialRequest, ProtocolConfig, ProtocolMessage,
};
use qk_state::{DkgPhase, Operation, VersionState};
use qk_types::{Epoch, NodeId};
use rand::SeedableRng;

fn assert_enabled_everywhere(c: &Cluster, n: u64) {
    let first = c.node(1).replica.key(KEY).expect("key").clone();
    let v1 = first.version(V1).expect("v1");
    assert_eq!(v1.state, VersionState::Enabled);
    assert_eq!(v1.dkg.phase, DkgPhase::Finished);
    let keys = c.public_keys(V1);
    for i in 1..=n {
        let node = c.node(i);
        let replica = node.replica.key(KEY).expect("key").version(V1).expect("v1");
        assert_eq!(replica.public_keys, v1.public_keys, "replica {i} agrees");
        assert_eq!(node.replica.digest(), c.node(1).replica.digest());
        let share = node
            .store
            .get(&(first.id, V1, Epoch(0)))
            .expect("every holder persisted its share");
        keys.verify_share(share).expect("share matches the key set");
        assert!(node.erased.is_empty());
    }
}

fn assert_no_warnings(c: &Cluster) {
    for id in c.ids() {
        let w = &c.nodes[&id].warnings;
        assert!(w.is_empty(), "{id}: {w:?}");
    }
}

fn count_steps(c: &Cluster, name: &str) -> usize {
    c.log.iter().filter(|cmd| cmd.op.name() == name).count()
}

/// Counts audit records whose outcome starts with `refused`.
fn refused_records(c: &Cluster) -> usize {
    let sm = &c.node(1).replica;
    sm.audit_records(1, 100_000)
        .iter()
        .filter(|r| r.outcome.starts_with("refused"))
        .count()
}

/// Schedules destruction of v1 `after_ms` ahead, destroys it when due and
/// runs until idle.
fn destroy_v1(c: &mut Cluster, after_ms: u64) {
    c.admin(Operation::ScheduleDestruction {
        name: KEY.into(),
        version: V1,
        after_ms,
    });
    c.advance(after_ms, 100, |_| false);
    c.admin(Operation::Destroy {
        name: KEY.into(),
        version: V1,
    });
    c.run_until_idle();
}

fn subsets(n: u64, k: usize) -> Vec<Vec<u64>> {
    let mut out = Vec::new();
    for mask in 0u32..(1 << n) {
        if mask.count_ones() as usize == k {
            out.push((1..=n).filter(|i| mask & (1 << (i - 1)) != 0).collect());
        }
    }
    out
}

fn run_unwrap_checks(t: u16, n: u64, seed: u64) {
    let mut c = Cluster::generated(t, n, seed);
    // The honest path needs no timeout: every phase ends when its inputs are in.
    assert_eq!(c.now, 1_000, "DKG completed without waiting for a timeout");
    assert_enabled_everywhere(&c, n);
    assert_no_warnings(&c);
    assert_eq!(refused_records(&c), 0, "no duplicate phase proposals");
    // Every share travelled sealed inside a deal; no complaint was made.
    assert_eq!(count_steps(&c, "version.dkg.deal"), n as usize);
    assert_eq!(count_steps(&c, "version.dkg.complaints"), n as usize);
    assert_eq!(count_steps(&c, "version.dkg.close-dealing"), 0);
    assert_eq!(count_steps(&c, "version.dkg.finish"), 0);
    let ct = c.wrap(V1, b"data key");
    let hedge = ProtocolConfig::default().hedge_ms;
    let step = 10;

    for live in subsets(n, usize::from(t)) {
        for i in 1..=n {
            c.node_mut(i).dead = !live.contains(&i);
        }
        let via = live[0];
        let start = c.now;
        let op = c.start_unwrap(via, ct.clone(), "app");
        let first = c.asked(via, op);
        assert_eq!(first.len(), usize::from(t), "asks only t holders first");
        assert_eq!(first[0], NodeId(via), "asks itself first");
        let first_live = first.iter().all(|h| live.contains(&h.0));
        c.advance(5_000, step, |c| c.outcome(via, op).is_some());
        let (result, faulty) = c.outcome(via, op).expect("finished without a timeout");
        assert_eq!(
            result
                .as_ref()
                .expect("unwrap with t live holders")
                .as_slice(),
            b"data key",
            "live holders {live:?}"
        );
        assert!(faulty.is_empty());
        if first_live {
            assert_eq!(c.now, start, "no hedge needed, live {live:?}");
            assert_eq!(c.asked(via, op), first);
        } else {
            let waited = c.now - start;
            assert!(
                (hedge..=hedge + step).contains(&waited),
                "hedged after {waited} ms, live {live:?}"
            );
            assert_eq!(c.asked(via, op).len(), n as usize, "asked the rest");
        }
    }

    // t - 1 live holders: no answer until the timeout, then a clear error.
    let live: Vec<u64> = (1..u64::from(t)).collect();
    for i in 1..=n {
        c.node_mut(i).dead = !live.contains(&i);
    }
    let op = c.start_unwrap(1, ct.clone(), "app");
    c.run_until_idle();
    assert!(c.outcome(1, op).is_none(), "waits for more holders");
    c.advance(5_000, 500, |c| c.outcome(1, op).is_some());
    let (result, _) = c.outcome(1, op).expect("timed out");
    let msg = result
        .as_ref()
        .expect_err("t-1 holders cannot unwrap")
        .to_string();
    let expected = format!("needed {t} holders, {} of {n} answered", t - 1);
    assert!(msg.contains(&expected), "{msg}");
    assert!(msg.contains("timed out"), "{msg}");
}

#[test]
fn dkg_2_of_3_then_unwrap_with_any_2_and_not_with_1() {
    run_unwrap_checks(2, 3, 11);
}

#[test]
fn dkg_3_of_5_then_unwrap_with_any_3_and_not_with_2() {
    run_unwrap_checks(3, 5, 12);
}

#[test]
fn interleaved_delivery_still_generates_without_a_timeout() {
    let mut c = Cluster::new(3, 13);
    c.interleave = true;
    c.create_key(2, &[1, 2, 3]);
    c.advance(60_000, 100, |c| {
        c.version(V1).state != VersionState::Generating
    });
    assert_eq!(c.now, 1_000);
    assert_enabled_everywhere(&c, 3);
    assert_no_warnings(&c);
}

#[test]
fn a_dealer_sealing_wrong_shares_is_disqualified_by_proof_without_waiting() {
    let mut c = Cluster::new(5, 21);
    c.cheating_dealers = vec![2];
    c.create_key(3, &[1, 2, 3, 4, 5]);
    c.advance(60_000, 100, |c| {
        c.version(V1).state != VersionState::Generating
    });
    // Holders 1 and 2 complain (node-2 about its own deal); each complaint
    // proves itself, so no phase waits for a timeout and nothing is
    // answered in public.
    assert_eq!(c.now, 1_000, "no timeout needed");
    assert_eq!(count_steps(&c, "version.dkg.complaints"), 5);
    assert_enabled_everywhere(&c, 5);
    for n in c.nodes.values() {
        assert!(
            n.warnings
                .iter()
                .any(|w| w.contains("disqualified: [node-2]")),
            "{:?}",
            n.warnings
        );
    }
    let ct = c.wrap(V1, b"after complaints");
    let op = c.start_unwrap(4, ct, "app");
    c.run_until_idle();
    let (result, _) = c.outcome(4, op).expect("done");
    assert_eq!(
        result.as_ref().expect("unwrap").as_slice(),
        b"after complaints"
    );
}

#[test]
fn silent_holder_fails_the_version_at_the_deadline_and_everyone_erases() {
    let mut c = Cluster::new(3, 14);
    c.node_mut(3).muted = true;
    c.create_key(2, &[1, 2, 3]);
    let deadline = {
        c.run_until_idle();
        c.version(V1).generation_deadline_ms
    };
    c.advance(deadline - c.now - 100, 100, |_| false);
    assert_eq!(c.version(V1).state, VersionState::Generating);
    // The live holders got as far as they could: shares stored, acks in.
    assert_eq!(c.version(V1).dkg.phase, DkgPhase::Finished);
    assert_eq!(c.version(V1).dkg.acks.len(), 2);
    c.advance(10_000, 100, |c| {
        c.version(V1).state != VersionState::Generating
    });
    let VersionState::Failed { reason } = c.version(V1).state else {
        panic!("expected Failed, got {:?}", c.version(V1).state);
    };
    assert!(reason.contains("no ack from node-3"), "{reason}");
    let id = c.key().id;
    for i in 1..=3 {
        let node = c.node(i);
        assert!(node.erased.contains(&(id, V1)), "node {i} erased");
        assert!(node.store.is_empty(), "node {i} holds no share");
    }
    assert!(c.node(1).persisted.contains(&(id, V1)));
    assert!(
        c.node(1)
            .warnings
            .iter()
            .any(|w| w.contains("absent: [node-3]")),
        "{:?}",
        c.node(1).warnings
    );
    // The failure is final; a later unwrap says so.
    let op = c.start_unwrap(1, vec![1, 2, 3], "app");
    assert!(c.outcome(1, op).is_some());
}

#[test]
fn destroy_erases_every_share_and_later_unwraps_fail() {
    let mut c = Cluster::generated(2, 3, 15);
    let ct = c.wrap(V1, b"secret");
    let id = c.key().id;
    let kept = c
        .node(1)
        .store
        .get(&(id, V1, Epoch(0)))
        .expect("share")
        .clone();
    destroy_v1(&mut c, 1_000);
    let v = c.version(V1);
    assert_eq!(v.state, VersionState::Destroyed);
    assert!(v.erase_receipts.len() >= 2, "n - t + 1 receipts");
    for i in 1..=3 {
        assert!(c.node(i).erased.contains(&(id, V1)));
        assert!(c.node(i).store.is_empty());
    }
    let op = c.start_unwrap(2, ct.clone(), "app");
    let (result, _) = c.outcome(2, op).expect("fails at once");
    let msg = result.as_ref().expect_err("destroyed").to_string();
    assert!(msg.contains("destroyed"), "{msg}");
    // A holder that still had its share refuses as well.
    let req = PartialRequest {
        op_id: 9,
        key: id,
        name: KEY.into(),
        version: V1,
        ciphertext: ct,
        context: ctx(),
        principal: "app".into(),
        epoch: None,
        min_applied: 0,
        proof: None,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let result = holder_partial(
        &c.node(1).replica,
        NodeId(1),
        Some(&kept),
        &req,
        c.now,
        &mut rng,
    );
    let reply = partial_response(&req, result);
    let ProtocolMessage::PartialResponse {
        result: Err(reason),
        ..
    } = reply
    else {
        panic!("expected a refusal, got {reply:?}");
    };
    assert!(reason.contains("destroyed"), "{reason}");
}

#[test]
fn healthy_cluster_asks_exactly_t_holders_spread_evenly() {
    let (t, n, per_node) = (3usize, 5u64, 8u64);
    let mut c = Cluster::generated(t as u16, n, 30);
    let ct = c.wrap(V1, b"spread");
    let start = c.now;
    let before = c.partial_requests.len();
    // Concurrent unwraps: all started before any message is delivered.
    let mut ops = Vec::new();
    for via in 1..=n {
        for _ in 0..per_node {
            ops.push((via, c.start_unwrap(via, ct.clone(), "app")));
        }
    }
    c.run_until_idle();
    assert_eq!(c.now, start, "no hedge or timeout needed");
    for (via, op) in &ops {
        let (result, faulty) = c.outcome(*via, *op).expect("done");
        assert_eq!(result.as_ref().expect("unwrap").as_slice(), b"spread");
        assert!(faulty.is_empty());
        let asked = c.asked(*via, *op);
        assert_eq!(asked.len(), t, "exactly t partial requests for op {op}");
        assert_eq!(asked[0], NodeId(*via), "itself first");
    }
    let sent = &c.partial_requests[before..];
    assert_eq!(sent.len(), t * ops.len(), "no request beyond the first t");
    // Each node asks itself every time and spreads the other t - 1 requests
    // round-robin over the other holders, so every holder does equal work.
    let mut load = std::collections::BTreeMap::new();
    for r in sent {
        *load.entry(r.to).or_insert(0usize) += 1;
    }
    let even = t * ops.len() / n as usize;
    assert_eq!(load.len(), n as usize, "{load:?}");
    assert!(load.values().all(|l| *l == even), "{load:?}");
}

#[test]
fn non_holder_asks_t_holders_only() {
    let mut c = Cluster::new(4, 31);
    c.create_key(2, &[1, 2, 3]);
    c.advance(60_000, 100, |c| {
        c.version(V1).state != VersionState::Generating
    });
    assert_eq!(c.version(V1).state, VersionState::Enabled);
    let ct = c.wrap(V1, b"from outside");
    let mut targets = std::collections::BTreeSet::new();
    for _ in 0..3 {
        let op = c.start_unwrap(4, ct.clone(), "app");
        c.run_until_idle();
        let (result, _) = c.outcome(4, op).expect("done");
        assert_eq!(result.as_ref().expect("unwrap").as_slice(), b"from outside");
        let asked = c.asked(4, op);
        assert_eq!(asked.len(), 2, "{asked:?}");
        assert!(!asked.contains(&NodeId(4)), "{asked:?}");
        targets.extend(asked);
    }
    assert_eq!(
        targets.len(),
        3,
        "successive unwraps start at different holders"
    );
}

#[test]
fn silent_holder_among_the_first_t_is_hedged_around() {
    let mut c = Cluster::generated(3, 5, 32);
    let ct = c.wrap(V1, b"hedged");
    let hedge = ProtocolConfig::default().hedge_ms;
    for via in 1..=5u64 {
        for i in 1..=5 {
            c.node_mut(i).dead = false;
        }
        let start = c.now;
        let op = c.start_unwrap(via, ct.clone(), "app");
        let first = c.asked(via, op);
        assert_eq!(first.len(), 3);
        // The request is queued; the holder dies before it arrives.
        let silent = first[1];
        c.node_mut(silent.0).dead = true;
        c.run_until_idle();
        assert!(c.outcome(via, op).is_none(), "waits for the hedge");
        c.advance(hedge - 10, 10, |_| false);
        assert!(c.outcome(via, op).is_none(), "no hedge before {hedge} ms");
        assert_eq!(c.asked(via, op), first, "nobody else asked yet");
        c.advance(1_000, 10, |c| c.outcome(via, op).is_some());
        assert_eq!(c.now - start, hedge, "hedged at {hedge} ms");
        let (result, faulty) = c.outcome(via, op).expect("done");
        assert_eq!(result.as_ref().expect("unwrap").as_slice(), b"hedged");
        assert!(faulty.is_empty());
        assert_eq!(c.asked(via, op).len(), 5, "asked the rest");
    }
}

#[test]
fn byzantine_holder_is_named_and_the_unwrap_still_succeeds() {
    for (t, n, seed) in [(2u16, 3u64, 16u64), (3, 5, 33)] {
        let mut c = Cluster::generated(t, n, seed);
        let ct = c.wrap(V1, b"payload");
        let decoy = c.decoy_ciphertext();
        for via in 1..=n {
            // A Byzantine peer among the first t, and the combining node
            // itself being Byzantine.
            for bad_pos in [1, 0] {
                for i in 1..=n {
                    c.node_mut(i).byzantine = None;
                }
                let start = c.now;
                let op = c.start_unwrap(via, ct.clone(), "app");
                let first = c.asked(via, op);
                assert_eq!(first.len(), usize::from(t));
                let bad = first[bad_pos];
                c.node_mut(bad.0).byzantine = Some(decoy.clone());
                c.run_until_idle();
                let (result, faulty) = c.outcome(via, op).expect("done without waiting");
                assert_eq!(
                    c.now, start,
                    "the rest were asked at once, not after the hedge"
                );
                assert_eq!(result.as_ref().expect("unwrap").as_slice(), b"payload");
                assert_eq!(faulty, &vec![bad], "via {via}");
                assert_eq!(c.asked(via, op).len(), n as usize);
            }
        }
    }
}

#[test]
fn byzantine_holder_with_too_few_honest_ones_is_named_in_the_error() {
    let mut c = Cluster::generated(2, 3, 17);
    let ct = c.wrap(V1, b"payload");
    let decoy = c.decoy_ciphertext();
    c.node_mut(1).byzantine = Some(decoy);
    c.node_mut(3).dead = true;
    let op = c.start_unwrap(2, ct, "app");
    c.run_until_idle();
    c.advance(6_000, 500, |c| c.outcome(2, op).is_some());
    let (result, faulty) = c.outcome(2, op).expect("done");
    let msg = result.as_ref().expect_err("one honest partial").to_string();
    assert!(msg.contains("needed 2 holders, 2 of 3 answered"), "{msg}");
    assert!(msg.contains("invalid partials: node-1"), "{msg}");
    assert_eq!(faulty, &vec![NodeId(1)]);
}

#[test]
fn refusals_end_the_unwrap_early_with_their_reasons() {
    let mut c = Cluster::generated(2, 3, 18);
    let ct = c.wrap(V1, b"payload");
    let op = c.start_unwrap(3, ct, MALLORY);
    c.run_until_idle();
    let (result, _) = c.outcome(3, op).expect("no timeout needed");
    let msg = result.as_ref().expect_err("refused").to_string();
    assert!(msg.contains("needed 2 holders"), "{msg}");
    assert!(msg.contains("refused: node-1"), "{msg}");
    assert!(msg.contains("not known to the cluster"), "{msg}");
    assert!(!msg.contains("timed out"), "{msg}");
    assert_eq!(c.asked(3, op).len(), 3, "a refusal makes it ask the rest");
}

#[test]
fn disabled_or_missing_versions_fail_at_once() {
    let mut c = Cluster::generated(2, 3, 19);
    let ct = c.wrap(V1, b"payload");
    c.admin(Operation::Disable {
        name: KEY.into(),
        version: V1,
    });
    c.run_until_idle();
    let op = c.start_unwrap(1, ct.clone(), "app");
    let msg = c
        .outcome(1, op)
        .expect("at once")
        .0
        .as_ref()
        .expect_err("disabled")
        .to_string();
    assert!(msg.contains("disabled"), "{msg}");
    let op = c.start_unwrap(1, vec![0, 1, 2], "app");
    let msg = c
        .outcome(1, op)
        .expect("at once")
        .0
        .as_ref()
        .expect_err("garbage")
        .to_string();
    assert!(msg.contains("does not decode"), "{msg}");
}

#[test]
fn a_ciphertext_bound_to_another_context_fails_at_once_without_asking_holders() {
    let mut c = Cluster::generated(2, 3, 41);
    let other = std::collections::BTreeMap::from([("tenant".to_owned(), "other".to_owned())]);
    let ct = c.wrap_for(V1, &other, b"payload");
    let op = c.start_unwrap(1, ct, "app");
    let (result, _) = c.outcome(1, op).expect("at once");
    assert_eq!(
        result.as_ref().expect_err("wrong context"),
        &qk_protocol::UnwrapError::ContextMismatch
    );
    assert!(c.asked(1, op).is_empty(), "no holder is asked");
    let ok = c.wrap(V1, b"payload");
    let op = c.start_unwrap(1, ok, "app");
    c.run_until_idle();
    assert!(c.outcome(1, op).expect("done").0.is_ok());
}

#[test]
fn runs_are_reproducible_from_the_seed() {
    let a = Cluster::generated(2, 3, 20);
    let b = Cluster::generated(2, 3, 20);
    assert_eq!(a.log, b.log);
    assert_eq!(a.node(1).replica.digest(), b.node(1).replica.digest());
}

#[test]
fn zero_hedge_asks_every_holder_at_once() {
    let mut c = Cluster::generated(2, 3, 34);
    let ct = c.wrap(V1, b"all at once");
    // No DKG or unwrap is in flight, so a fresh protocol instance loses nothing.
    let config = ProtocolConfig {
        hedge_ms: 0,
        ..ProtocolConfig::default()
    };
    c.node_mut(1).proto = qk_protocol::NodeProtocol::new(NodeId(1), config, dkg_key(NodeId(1)));
    let op = c.start_unwrap(1, ct, "app");
    assert_eq!(c.asked(1, op).len(), 3);
    c.run_until_idle();
    let (result, _) = c.outcome(1, op).expect("done");
    assert_eq!(result.as_ref().expect("unwrap").as_slice(), b"all at once");
}

fn refresh(c: &mut Cluster) {
    c.admin(Operation::Refresh {
        name: KEY.into(),
        version: V1,
        timeout_ms: None,
    });
}

fn run_refresh(t: u16, n: u64, seed: u64) {
    let mut c = Cluster::generated(t, n, seed);
    let before = c.version(V1);
    let ct = c.wrap(V1, b"before refresh");
    let id = c.key().id;
    refresh(&mut c);
    c.advance(60_000, 100, |c| c.version(V1).refresh.is_none());
    let v = c.version(V1);
    assert_eq!(v.state, VersionState::Enabled);
    assert_eq!(v.epoch, Epoch(1), "{:?}", v.last_refresh_failure);
    assert!(v.refresh.is_none());
    assert_ne!(v.public_keys, before.public_keys, "new commitments");
    let keys = c.public_keys(V1);
    let old = qk_crypto::PublicKeySet::from_bytes(before.public_keys.as_ref().expect("keys"))
        .expect("decodes");
    assert_eq!(keys.public_key(), old.public_key(), "same public key");
    for i in 1..=n {
        let node = c.node(i);
        assert_eq!(node.replica.digest(), c.node(1).replica.digest());
        let keys_in_store: Vec<_> = node.store.keys().copied().collect();
        assert_eq!(keys_in_store, vec![(id, V1, Epoch(1))], "node {i}");
        let share = &node.store[&(id, V1, Epoch(1))];
        keys.verify_share(share).expect("new share matches");
        assert_eq!(node.proto.active_refreshes(), 0);
    }
    assert_no_warnings(&c);
    assert_eq!(refused_records(&c), 0);
    // Old ciphertexts unwrap with the new shares, through any node.
    for via in 1..=n {
        let op = c.start_unwrap(via, ct.clone(), "app");
        c.run_until_idle();
        let (result, faulty) = c.outcome(via, op).expect("done");
        assert_eq!(
            result.as_ref().expect("unwrap").as_slice(),
            b"before refresh"
        );
        assert!(faulty.is_empty());
    }
    // A second refresh moves on to epoch 2.
    refresh(&mut c);
    c.advance(60_000, 100, |c| c.version(V1).refresh.is_none());
    assert_eq!(c.version(V1).epoch, Epoch(2));
    for i in 1..=n {
        let keys_in_store: Vec<_> = c.node(i).store.keys().copied().collect();
        assert_eq!(keys_in_store, vec![(id, V1, Epoch(2))], "node {i}");
    }
    let op = c.start_unwrap(1, ct, "app");
    c.run_until_idle();
    let (result, _) = c.outcome(1, op).expect("done");
    assert_eq!(
        result.as_ref().expect("unwrap").as_slice(),
        b"before refresh"
    );
}

#[test]
fn refresh_2_of_3_keeps_the_key_and_replaces_every_share() {
    run_refresh(2, 3, 40);
}

#[test]
fn refresh_3_of_5_keeps_the_key_and_replaces_every_share() {
    run_refresh(3, 5, 41);
}

#[test]
fn silent_holder_during_refresh_abandons_it_and_the_version_keeps_working() {
    for (t, n, seed) in [(2u16, 3u64, 42u64), (3, 5, 43)] {
        let mut c = Cluster::generated(t, n, seed);
        let ct = c.wrap(V1, b"still here");
        let id = c.key().id;
        let before = c.version(V1);
        c.node_mut(n).muted = true;
        refresh(&mut c);
        c.run_until_idle();
        let deadline = c.version(V1).refresh.expect("refresh running").deadline_ms;
        c.advance(deadline - c.now - 100, 100, |_| false);
        assert!(c.version(V1).refresh.is_some(), "waits for the deadline");
        c.advance(10_000, 100, |c| c.version(V1).refresh.is_none());
        let v = c.version(V1);
        assert_eq!(v.state, VersionState::Enabled);
        assert_eq!(v.epoch, Epoch(0));
        assert_eq!(v.public_keys, before.public_keys);
        let reason = v.last_refresh_failure.expect("reason kept");
        assert!(
            reason.contains(&format!("no ack from node-{n}")),
            "{reason}"
        );
        let audited = c
            .node(1)
            .replica
            .audit_records(1, 100_000)
            .iter()
            .any(|r| r.outcome.contains("refresh to epoch 1 abandoned"));
        assert!(audited, "abandon reason in the audit chain");
        c.node_mut(n).muted = false;
        for i in 1..=n {
            let node = c.node(i);
            assert!(
                !node.store.contains_key(&(id, V1, Epoch(1))),
                "node {i} erased its epoch-1 share"
            );
            assert!(node.store.contains_key(&(id, V1, Epoch(0))), "node {i}");
            assert_eq!(node.proto.active_refreshes(), 0);
        }
        let op = c.start_unwrap(1, ct.clone(), "app");
        c.run_until_idle();
        let (result, _) = c.outcome(1, op).expect("done");
        assert_eq!(result.as_ref().expect("unwrap").as_slice(), b"still here");
        // A retry with every holder back succeeds (a new session).
        refresh(&mut c);
        c.advance(60_000, 100, |c| c.version(V1).refresh.is_none());
        assert_eq!(c.version(V1).epoch, Epoch(1));
        assert_eq!(c.version(V1).refresh_attempts, 2);
        for i in 1..=n {
            let keys_in_store: Vec<_> = c.node(i).store.keys().copied().collect();
            assert_eq!(keys_in_store, vec![(id, V1, Epoch(1))], "node {i}");
        }
        let op = c.start_unwrap(2, ct, "app");
        c.run_until_idle();
        let (result, _) = c.outcome(2, op).expect("done");
        assert_eq!(result.as_ref().expect("unwrap").as_slice(), b"still here");
    }
}

#[test]
fn destroy_during_a_refresh_erases_the_new_epoch_shares_too() {
    let mut c = Cluster::generated(2, 3, 44);
    let id = c.key().id;
    // With node-3 silent the refresh cannot complete: nodes 1 and 2 finish
    // its DKG and persist epoch-1 shares, then wait for node-3's ack.
    c.node_mut(3).muted = true;
    refresh(&mut c);
    let new_share = |c: &Cluster, i: u64| c.node(i).store.contains_key(&(id, V1, Epoch(1)));
    c.advance(20_000, 100, |c| new_share(c, 1) && new_share(c, 2));
    assert!(
        new_share(&c, 1) && new_share(&c, 2),
        "epoch-1 shares persisted"
    );
    assert!(c.version(V1).refresh.is_some(), "refresh still running");

    c.node_mut(3).muted = false;
    destroy_v1(&mut c, 100);
    let v = c.version(V1);
    assert_eq!(v.state, VersionState::Destroyed);
    assert!(v.refresh.is_none());
    for i in 1..=3 {
        let node = c.node(i);
        let left = node.store.keys().filter(|(k, v, _)| (*k, *v) == (id, V1));
        let left: Vec<_> = left.collect();
        assert!(left.is_empty(), "node {i} still holds {left:?}");
        assert_eq!(node.proto.active_refreshes(), 0, "node {i}");
    }
}

#[test]
fn partial_request_for_another_epoch_is_refused_as_a_race_not_forged() {
    let mut c = Cluster::generated(2, 3, 45);
    refresh(&mut c);
    c.advance(60_000, 100, |c| c.version(V1).refresh.is_none());
    assert_eq!(c.version(V1).epoch, Epoch(1));
    let ct = c.wrap(V1, b"raced");
    let id = c.key().id;
    let share = c.node(2).store[&(id, V1, Epoch(1))].clone();
    let answer = |c: &Cluster, epoch: u64| {
        let req = PartialRequest {
            op_id: 7,
            key: id,
            name: KEY.into(),
            version: V1,
            ciphertext: ct.clone(),
            context: ctx(),
            principal: "app".into(),
            epoch: Some(Epoch(epoch)),
            min_applied: 0,
            proof: None,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let result = holder_partial(
            &c.node(2).replica,
            NodeId(2),
            Some(&share),
            &req,
            c.now,
            &mut rng,
        );
        let reply = partial_response(&req, result);
        let ProtocolMessage::PartialResponse { result, .. } = reply else {
            panic!("expected a partial response, got {reply:?}");
        };
        result
    };
    // The combiner still verifies against the epoch-0 key set.
    let Err(reason) = answer(&c, 0) else {
        panic!("a partial for epoch 0 was made from the epoch-1 share");
    };
    assert!(reason.contains("share epoch 1"), "{reason}");
    assert!(reason.contains("for epoch 0"), "{reason}");
    assert!(reason.contains("refresh completed meanwhile"), "{reason}");
    answer(&c, 1).expect("current epoch answered");
}

#[test]
fn one_valid_partial_short_of_t_ends_the_unwrap_once_every_holder_answered() {
    let mut c = Cluster::generated(2, 3, 19);
    let ct = c.wrap(V1, b"payload");
    let decoy = c.decoy_ciphertext();
    c.node_mut(1).byzantine = Some(decoy.clone());
    c.node_mut(3).byzantine = Some(decoy);
    let op = c.start_unwrap(2, ct, "app");
    c.run_until_idle();
    let (result, faulty) = c.outcome(2, op).expect("all answered: no timeout needed");
    let msg = result.as_ref().expect_err("one valid partial").to_string();
    assert!(msg.contains("invalid partials: node-1, node-3"), "{msg}");
    assert_eq!(faulty, &vec![NodeId(1), NodeId(3)]);
}

#[test]
fn a_holder_passing_off_another_holders_partial_is_blamed_not_counted() {
    let mut c = Cluster::generated(2, 3, 20);
    let ct = c.wrap(V1, b"payload");
    c.node_mut(2).dead = true;
    c.node_mut(3).answers_as = Some(2);
    let op = c.start_unwrap(1, ct, "app");
    c.run_until_idle();
    c.advance(6_000, 500, |c| c.outcome(1, op).is_some());
    let (result, faulty) = c.outcome(1, op).expect("done");
    let msg = result
        .as_ref()
        .expect_err("node 2's partial is no partial of node 3")
        .to_string();
    assert!(msg.contains("invalid partials: node-3"), "{msg}");
    assert_eq!(faulty, &vec![NodeId(3)]);
}

/// The first command in the log that is `from`'s DKG step of `kind`.
fn posted_step(c: &Cluster, from: u64, kind: &str) -> Operation {
    c.log
        .iter()
        .map(|cmd| &cmd.op)
        .find(|op| {
            matches!(op, Operation::Dkg { from: f, step, .. } if *f == NodeId(from) && step.name() == kind)
        })
        .cloned()
        .expect("step in the log")
}

#[test]
fn a_holder_posting_another_holders_deal_or_complaint_is_not_counted_as_its_own() {
    let mut c = Cluster::new(3, 21);
    c.node_mut(3).muted = true;
    c.cheating_dealers = vec![2]; // so node 1 has a complaint to copy
    c.create_key(2, &[1, 2, 3]);
    c.run_until_idle();
    let Operation::Dkg {
        name,
        version,
        step,
        session,
        ..
    } = posted_step(&c, 2, "version.dkg.deal")
    else {
        unreachable!("a DKG step")
    };
    // Node 3 posts node 2's deal as its own.
    c.propose(
        "node-3",
        Operation::Dkg {
            name: name.clone(),
            version,
            from: NodeId(3),
            step,
            session,
        },
    );
    c.run_until_idle();
    let warned = |c: &Cluster, what: &str| c.node(1).warnings.iter().any(|w| w.contains(what));
    assert!(
        warned(&c, "posted a deal that is not its own"),
        "{:?}",
        c.node(1).warnings
    );
    // Once dealing closed, node 3 posts node 1's complaint list as its own.
    c.node_mut(2).muted = true;
    c.advance(30_000, 500, |c| {
        c.version(V1).dkg.phase != DkgPhase::Dealing
    });
    let Operation::Dkg { step, .. } = posted_step(&c, 1, "version.dkg.complaints") else {
        unreachable!("a DKG step")
    };
    assert!(
        matches!(&step, qk_state::DkgStep::Complaints(list) if !list.is_empty()),
        "node 1 complained about dealer 2"
    );
    c.propose(
        "node-3",
        Operation::Dkg {
            name,
            version,
            from: NodeId(3),
            step,
            session,
        },
    );
    c.run_until_idle();
    assert!(
        warned(&c, "posted a complaint not its own"),
        "{:?}",
        c.node(1).warnings
    );
}

#[test]
fn work_in_flight_is_counted_and_nothing_is_left_once_it_ends() {
    let busy = |c: &Cluster, id: u64| {
        let p = &c.node(id).proto;
        (
            p.active_generations(),
            p.active_refreshes(),
            p.pending_unwraps(),
        )
    };
    // A generation waiting for a silent holder, then failed at its deadline.
    let mut c = Cluster::new(3, 23);
    c.node_mut(3).muted = true;
    c.create_key(2, &[1, 2, 3]);
    c.run_until_idle();
    assert_eq!(busy(&c, 1), (1, 0, 0));
    c.advance(120_000, 500, |c| {
        c.version(V1).state != VersionState::Generating
    });
    assert!(matches!(c.version(V1).state, VersionState::Failed { .. }));
    assert_eq!(busy(&c, 1), (0, 0, 0));

    // A completed generation, a refresh abandoned at its deadline and an
    // unwrap waiting for a partial.
    let mut c = Cluster::generated(2, 3, 24);
    assert_eq!(busy(&c, 1), (0, 0, 0));
    let ct = c.wrap(V1, b"payload");
    c.node_mut(3).muted = true;
    refresh(&mut c);
    c.run_until_idle();
    assert_eq!(busy(&c, 1), (1, 1, 0));
    c.node_mut(2).dead = true;
    let op = c.start_unwrap(1, ct, "app");
    c.run_until_idle();
    assert_eq!(busy(&c, 1).2, 1, "waiting for a second partial");
    c.advance(120_000, 500, |c| {
        c.version(V1).refresh.is_none() && c.outcome(1, op).is_some()
    });
    assert!(c.version(V1).refresh.is_none(), "refresh ended");
    assert_eq!(c.version(V1).epoch, Epoch(0), "abandoned");
    assert_eq!(busy(&c, 1), (0, 0, 0));
}

#[test]
fn refresh_steps_that_arrive_while_a_holder_loads_its_share_are_kept_for_it() {
    let mut c = Cluster::generated(2, 3, 25);
    let id = c.key().id;
    c.node_mut(1).slow_disk = true;
    refresh(&mut c);
    c.run_until_idle();
    assert_eq!(c.node(1).share_loads.len(), 1, "node 1 waits for its share");
    assert!(
        c.log.iter().any(|cmd| matches!(&cmd.op,
            Operation::Dkg { from, step: qk_state::DkgStep::Deal(_), .. } if *from != NodeId(1))),
        "the other holders dealt meanwhile"
    );
    c.node_mut(1).slow_disk = false;
    c.load_shares(1);
    c.advance(60_000, 100, |c| c.version(V1).refresh.is_none());
    assert_eq!(
        c.version(V1).epoch,
        Epoch(1),
        "{:?}",
        c.version(V1).last_refresh_failure
    );
    assert!(c.node(1).store.contains_key(&(id, V1, Epoch(1))));
    assert_no_warnings(&c);
}

/// Node `id`'s actions for a tick at `now_ms`.
fn tick_at(c: &mut Cluster, id: u64, now_ms: u64) -> Vec<qk_protocol::Action> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(now_ms);
    let node = c.node_mut(id);
    let tick = qk_protocol::Event::Tick { now_ms };
    node.proto.handle(&node.replica, tick, &mut rng)
}

/// Whether node `id`, ticked at `now_ms`, proposes an operation `pick` likes.
fn proposes_at(c: &mut Cluster, id: u64, now_ms: u64, pick: impl Fn(&Operation) -> bool) -> bool {
    tick_at(c, id, now_ms)
        .iter()
        .any(|a| matches!(a, qk_protocol::Action::Propose(op) if pick(op)))
}

/// The first refresh deal in the log from a holder `from` picks.
fn refresh_deal(c: &Cluster, from: impl Fn(NodeId) -> bool) -> qk_state::Command {
    c.log
        .iter()
        .find(|cmd| {
            matches!(&cmd.op,
            Operation::Dkg {
                from: f,
                step: qk_state::DkgStep::Deal(_),
                session: qk_state::DkgSession::Refresh { .. },
                ..
            } if from(*f))
        })
        .expect("a refresh deal in the log")
        .clone()
}

/// Node `id`'s actions for `command` applied and accepted (the answer the
/// state machine gives an accepted step, whatever the replica would say).
fn apply_as_accepted(
    c: &mut Cluster,
    id: u64,
    command: qk_state::Command,
    index: u64,
) -> Vec<qk_protocol::Action> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(index);
    let node = c.node_mut(id);
    let response = qk_state::Response {
        result: Ok(qk_state::Applied::Done),
        audit_seq: 0,
        duplicate: false,
    };
    let applied = qk_protocol::Event::Applied {
        index,
        command,
        response,
    };
    node.proto.handle(&node.replica, applied, &mut rng)
}

#[test]
fn a_holder_loading_its_share_keeps_at_most_136_early_refresh_steps() {
    let mut c = Cluster::generated(2, 3, 26);
    c.node_mut(1).slow_disk = true;
    refresh(&mut c);
    c.run_until_idle();
    let deal = refresh_deal(&c, |from| from != NodeId(1));
    let kept = c.node(1).proto.steps_waiting_for_shares();
    assert!(kept > 0, "the deals applied meanwhile are kept");
    // However many steps the log accepts while the share loads, the buffer
    // must not grow the buffer past one deal and one complaint
    // list per possible holder (64) plus 8 timed closes.
    assert_eq!(qk_types::MAX_HOLDERS, 64);
    for i in 0..300 {
        // Accepted each time (the replica here would refuse the repeat).
        let actions = apply_as_accepted(&mut c, 1, deal.clone(), 10_000 + i);
        assert!(actions.is_empty(), "{actions:?}");
    }
    assert_eq!(c.node(1).proto.steps_waiting_for_shares(), 136);
}

#[test]
fn a_step_of_an_abandoned_refresh_attempt_is_not_taken_for_the_retry() {
    let mut c = Cluster::generated(2, 3, 27);
    c.node_mut(3).muted = true;
    refresh(&mut c);
    c.run_until_idle();
    let old_deal = refresh_deal(&c, |from| from == NodeId(1));
    c.advance(120_000, 500, |c| c.version(V1).refresh.is_none());
    assert_eq!(
        c.version(V1).epoch,
        Epoch(0),
        "the first attempt was abandoned"
    );
    c.node_mut(3).muted = false;
    c.node_mut(1).muted = true; // the retry waits for node 1's deal
    refresh(&mut c);
    c.run_until_idle();
    assert_eq!(
        c.node(2).proto.active_refreshes(),
        1,
        "the retry runs at node 2"
    );
    // Even if the log handed node 2 the first attempt's deal as accepted,
    // the retry's DKG must not see it (its session differs).
    let actions = apply_as_accepted(&mut c, 2, old_deal, 10_000);
    assert!(actions.is_empty(), "{actions:?}");
    c.node_mut(1).muted = false;
    c.advance(60_000, 100, |c| c.version(V1).refresh.is_none());
    assert_eq!(c.version(V1).epoch, Epoch(1));
}

#[test]
fn a_key_creation_seen_at_or_after_its_generation_deadline_starts_no_dkg() {
    for past_ms in [0, 1_000_000_000] {
        let mut c = Cluster::new(3, 28);
        c.run_until_idle();
        // Node 3's clock is already at (or long past) the deadline the
        // entry will carry, as for a node replaying an old entry.
        let deadline_ms = c.now + qk_state::DEFAULT_GENERATION_TIMEOUT_MS;
        let actions = tick_at(&mut c, 3, deadline_ms + past_ms);
        assert!(actions.is_empty(), "{actions:?}");
        c.create_key(2, &[1, 2, 3]);
        c.run_until_idle();
        let v = c.version(V1);
        assert_eq!(v.generation_deadline_ms, deadline_ms);
        assert_eq!(v.state, VersionState::Generating);
        assert_eq!(c.node(3).proto.active_generations(), 0);
        assert_eq!(c.node(1).proto.active_generations(), 1, "node 1 is on time");
        let dealt_by_3 = c
            .log
            .iter()
            .any(|cmd| matches!(&cmd.op, Operation::Dkg { from, .. } if *from == NodeId(3)));
        assert!(
            !dealt_by_3,
            "node 3 started a DKG {past_ms} ms past its deadline"
        );
    }
}

#[test]
fn a_refresh_seen_at_or_after_its_deadline_starts_nothing_at_that_holder() {
    for past_ms in [0, 1_000_000_000] {
        let mut c = Cluster::generated(2, 3, 29);
        let deadline_ms = c.now + 60_000;
        tick_at(&mut c, 3, deadline_ms + past_ms);
        c.admin(Operation::Refresh {
            name: KEY.into(),
            version: V1,
            timeout_ms: Some(60_000),
        });
        c.run_until_idle();
        let refresh = c.version(V1).refresh.expect("refresh running");
        assert_eq!(refresh.deadline_ms, deadline_ms);
        assert_eq!(c.node(3).proto.active_refreshes(), 0);
        assert!(c.node(3).share_loads.is_empty());
        assert_eq!(c.node(1).proto.active_refreshes(), 1, "node 1 is on time");
        let dealt_by_3 = c.log.iter().any(|cmd| {
            matches!(&cmd.op, Operation::Dkg {
                from,
                session: qk_state::DkgSession::Refresh { .. },
                ..
            } if *from == NodeId(3))
        });
        assert!(
            !dealt_by_3,
            "node 3 refreshed {past_ms} ms past the deadline"
        );
    }
}

/// Whether node `id`, ticked at `now_ms`, proposes to fail V1's generation.
fn proposes_fail_at(c: &mut Cluster, id: u64, now_ms: u64) -> bool {
    proposes_at(
        c,
        id,
        now_ms,
        |op| matches!(op, Operation::FailGeneration { version, .. } if *version == V1),
    )
}

#[test]
fn a_generation_past_its_deadline_is_failed_at_the_deadline_and_retried_on_schedule() {
    let mut c = Cluster::new(4, 30);
    c.node_mut(3).dead = true; // the version can never be enabled
    c.create_key(2, &[1, 2, 3]);
    c.run_until_idle();
    let deadline_ms = c.version(V1).generation_deadline_ms;
    let config = ProtocolConfig::default();
    // A holder proposes at the deadline, then again every retry interval.
    assert!(!proposes_fail_at(&mut c, 1, deadline_ms - 1));
    assert!(proposes_fail_at(&mut c, 1, deadline_ms));
    let retry_ms = config.retry_interval_ms;
    assert!(!proposes_fail_at(&mut c, 1, deadline_ms + retry_ms - 1));
    assert!(proposes_fail_at(&mut c, 1, deadline_ms + retry_ms));
    // A node that holds no share of it waits a grace period longer.
    let grace_ms = config.fail_grace_ms;
    assert!(!proposes_fail_at(&mut c, 4, deadline_ms + grace_ms - 1));
    assert!(proposes_fail_at(&mut c, 4, deadline_ms + grace_ms));
}

#[test]
fn an_unwrap_with_too_few_holders_ends_exactly_at_its_deadline() {
    let mut c = Cluster::generated(2, 3, 31);
    let ct = c.wrap(V1, b"late");
    c.node_mut(2).dead = true;
    c.node_mut(3).dead = true;
    let started_ms = c.now;
    let op = c.start_unwrap(1, ct, "app");
    c.run_until_idle();
    assert!(c.outcome(1, op).is_none(), "waiting for a second partial");
    let timeout_ms = ProtocolConfig::default().unwrap_timeout_ms;
    let mut tick = |now_ms: u64| {
        tick_at(&mut c, 1, now_ms)
            .into_iter()
            .find_map(|a| match a {
                qk_protocol::Action::UnwrapDone { op_id, result, .. } if op_id == op => {
                    Some(result)
                }
                _ => None,
            })
    };
    assert!(tick(started_ms + timeout_ms - 1).is_none());
    let done = tick(started_ms + timeout_ms).expect("ends at the deadline");
    assert!(
        matches!(
            &done,
            Err(qk_protocol::UnwrapError::NotEnoughHolders {
                timed_out: true,
                ..
            })
        ),
        "{done:?}"
    );
}

/// Whether node `id`, ticked at `now_ms`, proposes DKG `step`.
fn proposes_dkg_step_at(c: &mut Cluster, id: u64, now_ms: u64, step: &qk_state::DkgStep) -> bool {
    proposes_at(
        c,
        id,
        now_ms,
        |op| matches!(op, Operation::Dkg { step: s, .. } if s == step),
    )
}

#[test]
fn a_dkg_closes_dealing_and_finishes_at_its_timeouts_and_retries_on_schedule() {
    use qk_state::DkgStep::{CloseDealing, Finish};
    let mut c = Cluster::new(3, 32);
    c.node_mut(3).dead = true; // its deal never comes, so only the timeouts move on
    c.create_key(2, &[1, 2, 3]);
    c.run_until_idle();
    let config = ProtocolConfig::default();
    let retry_ms = config.retry_interval_ms;
    let close_ms = c.version(V1).dkg.started_ms + config.dealing_timeout_ms;
    assert!(!proposes_dkg_step_at(
        &mut c,
        1,
        close_ms - 1,
        &CloseDealing
    ));
    assert!(proposes_dkg_step_at(&mut c, 1, close_ms, &CloseDealing));
    assert!(!proposes_dkg_step_at(
        &mut c,
        1,
        close_ms + retry_ms - 1,
        &CloseDealing
    ));
    assert!(proposes_dkg_step_at(
        &mut c,
        1,
        close_ms + retry_ms,
        &CloseDealing
    ));
    // Node 2 closes dealing through the log; node 1 then waits for the
    // complaint timeout, counted from the entry that closed dealing.
    c.advance(60_000, 100, |c| {
        c.version(V1).dkg.phase == DkgPhase::Complaints
    });
    assert_eq!(c.version(V1).dkg.phase, DkgPhase::Complaints);
    let closed_ms = c.version(V1).dkg.closed_ms.expect("dealing closed");
    let finish_ms = closed_ms + config.complaint_timeout_ms;
    assert!(!proposes_dkg_step_at(&mut c, 1, finish_ms - 1, &Finish));
    assert!(proposes_dkg_step_at(&mut c, 1, finish_ms, &Finish));
    assert!(!proposes_dkg_step_at(
        &mut c,
        1,
        finish_ms + retry_ms - 1,
        &Finish
    ));
    assert!(proposes_dkg_step_at(
        &mut c,
        1,
        finish_ms + retry_ms,
        &Finish
    ));
}

#[test]
fn a_share_loaded_for_another_key_or_epoch_does_not_start_the_waiting_refresh() {
    let mut c = Cluster::generated(2, 3, 33);
    let id = c.key().id;
    c.node_mut(1).slow_disk = true;
    refresh(&mut c);
    c.run_until_idle();
    assert_eq!(c.node(1).share_loads, vec![(id, V1, Epoch(0))]);
    let share = c.node(1).store.get(&(id, V1, Epoch(0))).cloned();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for (key, version, epoch) in [
        (qk_types::KeyId([9; 16]), V1, Epoch(0)),
        (id, V1, Epoch(7)),
        (id, qk_types::KeyVersion(2), Epoch(0)),
    ] {
        let node = c.node_mut(1);
        let loaded = qk_protocol::Event::ShareLoaded {
            key,
            version,
            epoch,
            share: share.clone(),
        };
        let actions = node.proto.handle(&node.replica, loaded, &mut rng);
        assert!(
            actions.is_empty(),
            "{key:?} {version} {epoch:?}: {actions:?}"
        );
        assert_eq!(
            node.proto.active_refreshes(),
            0,
            "still waiting for its own share"
        );
    }
    c.node_mut(1).slow_disk = false;
    c.load_shares(1);
    c.advance(60_000, 100, |c| c.version(V1).refresh.is_none());
    assert_eq!(c.version(V1).epoch, Epoch(1));
}

/// Whether node `id`, ticked at `now_ms`, proposes to abandon V1's refresh.
fn proposes_abandon_at(c: &mut Cluster, id: u64, now_ms: u64) -> bool {
    proposes_at(
        c,
        id,
        now_ms,
        |op| matches!(op, Operation::AbandonRefresh { version, .. } if *version == V1),
    )
}

#[test]
fn a_refresh_past_its_deadline_is_abandoned_at_the_deadline_and_retried_on_schedule() {
    let mut c = Cluster::new(4, 34);
    c.create_key(2, &[1, 2, 3]);
    c.advance(60_000, 100, |c| {
        c.version(V1).state == VersionState::Enabled
    });
    c.node_mut(3).dead = true; // the refresh can never complete
    refresh(&mut c);
    c.run_until_idle();
    let deadline_ms = c.version(V1).refresh.expect("refresh running").deadline_ms;
    let config = ProtocolConfig::default();
    let retry_ms = config.retry_interval_ms;
    assert!(!proposes_abandon_at(&mut c, 1, deadline_ms - 1));
    assert!(proposes_abandon_at(&mut c, 1, deadline_ms));
    assert!(!proposes_abandon_at(&mut c, 1, deadline_ms + retry_ms - 1));
    assert!(proposes_abandon_at(&mut c, 1, deadline_ms + retry_ms));
    // Node 4 holds no share of it: it waits a grace period longer.
    let grace_ms = config.fail_grace_ms;
    assert!(!proposes_abandon_at(&mut c, 4, deadline_ms + grace_ms - 1));
    assert!(proposes_abandon_at(&mut c, 4, deadline_ms + grace_ms));
}

#[test]
fn a_share_that_loads_after_its_refresh_attempt_was_replaced_starts_nothing() {
    let mut c = Cluster::generated(2, 3, 35);
    c.node_mut(1).slow_disk = true;
    refresh(&mut c);
    c.run_until_idle();
    assert_eq!(c.node(1).share_loads.len(), 1, "node 1 waits for its share");
    // Node 1's protocol misses what follows (its replica still applies it,
    // as after a snapshot install): attempt 1 is abandoned, attempt 2 runs.
    c.node_mut(1).dead = true;
    c.advance(120_000, 500, |c| c.version(V1).refresh.is_none());
    refresh(&mut c);
    c.run_until_idle();
    let running = c
        .node(1)
        .replica
        .key(KEY)
        .and_then(|k| k.version(V1).cloned());
    assert_eq!(
        running.and_then(|v| v.refresh).map(|r| r.attempt),
        Some(2),
        "node 1's replica sees attempt 2"
    );
    c.node_mut(1).dead = false;
    c.node_mut(1).slow_disk = false;
    c.load_shares(1);
    assert_eq!(
        c.node(1).proto.active_refreshes(),
        0,
        "the share asked for attempt 1 must not start a DKG under its session"
    );
}

#[test]
fn a_holder_that_missed_the_refresh_completing_erases_the_old_epoch_at_its_next_tick() {
    let mut c = Cluster::generated(2, 3, 36);
    let id = c.key().id;
    c.node_mut(3).muted = true; // its ack is lost: the refresh waits for it
    refresh(&mut c);
    c.advance(20_000, 100, |c| {
        c.node(1).store.contains_key(&(id, V1, Epoch(1)))
            && c.node(2).store.contains_key(&(id, V1, Epoch(1)))
    });
    let acked = c.log.iter().find_map(|cmd| match &cmd.op {
        Operation::Dkg {
            step: qk_state::DkgStep::Ack { public_keys },
            session: session @ qk_state::DkgSession::Refresh { .. },
            ..
        } => Some((public_keys.clone(), *session)),
        _ => None,
    });
    let (public_keys, session) = acked.expect("nodes 1 and 2 acked");
    assert!(c.version(V1).refresh.is_some(), "waiting for node 3's ack");
    // Node 3's ack arrives while node 1's protocol is down (its replica
    // still applies the entry, as a snapshot install would bring it).
    c.node_mut(3).muted = false;
    c.node_mut(1).dead = true;
    c.propose(
        "node-3",
        Operation::Dkg {
            name: KEY.into(),
            version: V1,
            from: NodeId(3),
            step: qk_state::DkgStep::Ack { public_keys },
            session,
        },
    );
    c.run_until_idle();
    assert_eq!(c.version(V1).epoch, Epoch(1), "the refresh completed");
    c.node_mut(1).dead = false;
    c.advance(1_000, 100, |_| false);
    let kept: Vec<_> = c.node(1).store.keys().copied().collect();
    assert_eq!(
        kept,
        vec![(id, V1, Epoch(1))],
        "node 1 keeps only the new epoch"
    );
}

#[test]
fn a_holder_that_missed_the_failure_entry_erases_its_share_on_the_next_tick() {
    // Node 3 never acks, so the generation fails at its deadline; node 1
    // stored its share, then applies the failure without seeing the entry
    // (as after a snapshot install) and must still erase the share.
    let mut c = Cluster::new(3, 31);
    c.node_mut(3).muted = true;
    c.create_key(2, &[1, 2, 3]);
    c.run_until_idle();
    let id = c.key().id;
    c.advance(60_000, 100, |c| c.node(1).persisted.contains(&(id, V1)));
    assert!(
        c.node(1).persisted.contains(&(id, V1)),
        "node 1 stored its share"
    );
    c.node_mut(1).dead = true;
    c.advance(120_000, 500, |c| {
        matches!(c.version(V1).state, VersionState::Failed { .. })
    });
    assert!(matches!(c.version(V1).state, VersionState::Failed { .. }));
    assert!(
        !c.node(1).erased.contains(&(id, V1)),
        "node 1 saw nothing yet"
    );
    c.node_mut(1).dead = false;
    c.advance(1_000, 100, |c| c.node(1).erased.contains(&(id, V1)));
    assert!(
        c.node(1).erased.contains(&(id, V1)),
        "the failed generation's share stays on node 1's disk"
    );
}
