//! DKG, refresh and reshare sessions: honest runs, faulty dealers, epochs.

mod common;

use common::*;
use qk_crypto::{combine, wrap, CombineMode, KeyShare, PublicMessage, SessionKind};
use qk_types::ShareIndex;

fn decrypts(
    keys: &qk_crypto::PublicKeySet,
    shares: &[KeyShare],
    ct: &qk_crypto::Ciphertext,
) -> bool {
    let c = ctx(&[("app", "sessions")]);
    let p = partials(keys, shares, ct, &c, 99);
    matches!(combine(keys, ct, &c, &p, CombineMode::VerifyAll), Ok(out) if out.plaintext.as_slice() == b"root-wrapped")
}

fn sample_ct(keys: &qk_crypto::PublicKeySet) -> qk_crypto::Ciphertext {
    wrap(
        &mut rng(5),
        &keys.public_key(),
        KEY,
        V1,
        &ctx(&[("app", "sessions")]),
        b"root-wrapped",
    )
    .expect("wrap")
}

/// A deal whose boxes for the receivers at `a` and `b` (0-based) are swapped:
/// each opens to garbage for its receiver.
fn swap_boxes(m: PublicMessage, a: usize, b: usize) -> PublicMessage {
    match m {
        PublicMessage::Deal(mut d) => {
            d.shares.swap(a, b);
            PublicMessage::Deal(d)
        }
        other => other,
    }
}

/// A generation among holders `1..=n` with threshold `t`, and the holders.
fn generation(id: u8, n: u16, t: u16) -> (qk_crypto::SessionConfig, Vec<ShareIndex>) {
    let holders = ShareIndex::first_n(n);
    let config = session(
        id,
        SessionKind::Generate,
        holders.clone(),
        holders.clone(),
        t,
    );
    (config, holders)
}

#[test]
fn honest_dkg_agrees_everywhere() {
    let out = generate(3, 5, 21);
    let first = out.keys().clone();
    for o in out.outputs.values() {
        assert_eq!(
            o.keys, first,
            "every participant derives the same public key set"
        );
        assert_eq!(o.qualified.len(), 5);
        assert!(o.disqualified.is_empty() && o.absent.is_empty());
        first
            .verify_share(o.share.as_ref().expect("share"))
            .expect("share matches commitments");
    }
    assert_eq!(first.commitments().len(), 3);
    assert_eq!(first.public_key(), first.commitments()[0]);
}

#[test]
fn dealer_sealing_a_wrong_share_is_disqualified_by_a_complaint_that_opens_only_that_box() {
    let bad = idx(2);
    let (config, holders) = generation(12, 5, 3);
    let mut r = rng(42);
    let mut tamper = |from: ShareIndex, m: PublicMessage| match m {
        PublicMessage::Deal(mut d) if from == bad => {
            qk_crypto::testing::seal_a_wrong_share(&mut r, &mut d, &holders, idx(4));
            Some(PublicMessage::Deal(d))
        }
        other => Some(other),
    };
    let out = run_session(&config, &[], 26, &mut tamper);
    let complaints: Vec<_> = out
        .transcript
        .complaints
        .iter()
        .filter_map(|m| match m {
            PublicMessage::Complaint(c) => Some(*c),
            PublicMessage::Deal(_) => None,
        })
        .collect();
    assert_eq!(complaints.len(), 1, "only receiver 4 complains");
    assert_eq!(
        (complaints[0].accuser, complaints[0].accused),
        (idx(4), bad)
    );
    assert!(
        complaints[0].reveal.is_some(),
        "a proven box is opened for all"
    );
    for o in out.outputs.values() {
        assert_eq!(o.disqualified, vec![bad]);
    }
}

#[test]
fn a_dealer_copying_an_honest_box_learns_nothing_and_is_disqualified() {
    // The attack a box proof stops: dealer 3 copies honest dealer 1's box
    // for receiver 2 into its own deal. Were receiver 2 to reveal `d·E` for
    // it, dealer 1's share to 2 would be public.
    let (thief, honest_dealer, victim) = (idx(3), idx(1), idx(2));
    let (config, _) = generation(13, 3, 2);
    let mut honest_box = None;
    let mut tamper = |from: ShareIndex, m: PublicMessage| match m {
        PublicMessage::Deal(d) if from == honest_dealer => {
            honest_box = Some(d.shares[1]);
            Some(PublicMessage::Deal(d))
        }
        PublicMessage::Deal(mut d) if from == thief => {
            d.shares[1] = honest_box.expect("dealer 1 deals first");
            Some(PublicMessage::Deal(d))
        }
        other => Some(other),
    };
    let out = run_session(&config, &[], 27, &mut tamper);
    for m in &out.transcript.complaints {
        if let PublicMessage::Complaint(c) = m {
            assert_eq!((c.accuser, c.accused), (victim, thief));
            assert!(c.reveal.is_none(), "nothing is revealed for a copied box");
        }
    }
    assert_eq!(out.transcript.complaints.len(), 1);
    for o in out.outputs.values() {
        assert_eq!(o.disqualified, vec![thief]);
        assert!(o.qualified.contains(&honest_dealer));
    }
}

#[test]
fn dealer_with_swapped_boxes_is_disqualified_without_any_reveal() {
    let bad = idx(2);
    let config = session(
        1,
        SessionKind::Generate,
        ShareIndex::first_n(5),
        ShareIndex::first_n(5),
        3,
    );
    let mut tamper = |from: ShareIndex, m: PublicMessage| {
        Some(if from == bad { swap_boxes(m, 2, 3) } else { m })
    };
    let out = run_session(&config, &[], 22, &mut tamper);
    assert_eq!(
        out.transcript.complaints.len(),
        2,
        "receivers 3 and 4 complain"
    );
    for (id, o) in &out.outputs {
        assert_eq!(o.disqualified, vec![bad], "{id} disqualifies the cheater");
        assert!(!o.qualified.contains(&bad));
        assert_eq!(&o.keys, out.keys(), "all agree on the key");
    }
    let shares = out.shares();
    assert!(decrypts(out.keys(), &shares[..3], &sample_ct(out.keys())));
    assert!(decrypts(out.keys(), &shares[2..], &sample_ct(out.keys())));
}

#[test]
fn a_false_complaint_cannot_disqualify_an_honest_dealer() {
    let liar = idx(3);
    let (config, holders) = generation(2, 4, 2);
    let (mut parts, deals) = dealt(&config, 23);
    // The liar complains about an honest dealer, with a valid reveal of
    // its own (correct) box.
    let PublicMessage::Deal(honest_deal) = &deals[0] else {
        panic!("a deal");
    };
    let forged = qk_crypto::testing::complaint_against(&mut rng(40), honest_deal, &holders, liar)
        .expect("liar is a receiver");
    for p in parts.values_mut() {
        let err = p
            .handle_public(&PublicMessage::Complaint(forged))
            .expect_err("false complaint refused");
        assert!(err.to_string().contains("false complaint"), "{err}");
    }
    for mut p in parts.into_values() {
        let o = p.finish().expect("finish");
        assert_eq!(o.qualified.len(), 4, "the honest dealer stays qualified");
        assert!(o.disqualified.is_empty());
    }
}

/// Participants of `config` after every honest deal and an empty
/// complaint round; returns them and the deals.
fn dealt(
    config: &qk_crypto::SessionConfig,
    seed: u64,
) -> (
    std::collections::BTreeMap<ShareIndex, qk_crypto::Participant>,
    Vec<PublicMessage>,
) {
    let mut r = rng(seed);
    let mut parts: std::collections::BTreeMap<_, _> = config
        .receivers
        .iter()
        .map(|i| {
            let key = qk_crypto::testing::dkg_key(*i);
            let p = qk_crypto::Participant::new(config.clone(), *i, None, Some(key)).expect("p");
            (*i, p)
        })
        .collect();
    let deals: Vec<PublicMessage> = parts
        .values_mut()
        .filter_map(|p| p.start(&mut r).expect("start"))
        .map(PublicMessage::Deal)
        .collect();
    for d in &deals {
        for p in parts.values_mut() {
            p.handle_public(d).expect("honest deal");
        }
    }
    for p in parts.values_mut() {
        assert!(p.close_dealing(&mut r).expect("close").is_empty());
    }
    (parts, deals)
}

#[test]
fn a_reveal_made_with_another_key_is_ignored() {
    let (config, holders) = generation(3, 3, 2);
    let (mut parts, deals) = dealt(&config, 24);
    // Holder 2 reveals its own box from dealer 1 and claims to be holder 3.
    let PublicMessage::Deal(deal) = &deals[0] else {
        panic!("a deal");
    };
    let mut forged =
        qk_crypto::testing::complaint_against(&mut rng(41), deal, &holders, idx(2)).expect("2");
    forged.accuser = idx(3);
    for p in parts.values_mut() {
        let err = p
            .handle_public(&PublicMessage::Complaint(forged))
            .expect_err("forged reveal refused");
        assert!(err.to_string().contains("does not verify"), "{err}");
    }
}

#[test]
fn no_message_carries_a_share_in_clear() {
    // Every message a session publishes is a deal (commitments and sealed
    // boxes) or a complaint (a reveal of one box); an honest run has no
    // complaint at all, so an honest share is never opened in public.
    let out = generate(3, 5, 25);
    assert_eq!(out.transcript.deals.len(), 5);
    assert!(out.transcript.complaints.is_empty());
    let shares = out.shares();
    for m in &out.transcript.deals {
        let bytes = m.to_bytes();
        for s in &shares {
            let secret = s.to_secret_bytes();
            let value = &secret[secret.len() - 32..];
            assert!(
                !bytes.windows(32).any(|w| w == value),
                "a final share appears in a deal"
            );
        }
    }
}

#[test]
fn silent_dealer_is_absent_and_the_rest_generate() {
    let silent = idx(5);
    let config = session(
        4,
        SessionKind::Generate,
        ShareIndex::first_n(5),
        ShareIndex::first_n(5),
        3,
    );
    let mut tamper =
        |from: ShareIndex, m: PublicMessage| if from == silent { None } else { Some(m) };
    let out = run_session(&config, &[], 25, &mut tamper);
    for o in out.outputs.values() {
        assert_eq!(o.absent, vec![silent]);
        assert_eq!(o.qualified.len(), 4);
    }
    assert!(decrypts(
        out.keys(),
        &out.shares()[2..],
        &sample_ct(out.keys())
    ));
}

#[test]
fn refresh_keeps_the_key_and_old_shares_do_not_mix_with_new() {
    let dkg = generate(3, 5, 26);
    let keys = dkg.keys().clone();
    let old_shares = dkg.shares();
    let ct = sample_ct(&keys);
    let config = session(
        5,
        SessionKind::Refresh { old: keys.clone() },
        keys.holders().to_vec(),
        keys.holders().to_vec(),
        3,
    );
    let refreshed = run_session(&config, &old_shares, 27, &mut honest);
    let new_keys = refreshed.keys().clone();
    let new_shares = refreshed.shares();
    assert_eq!(new_keys.public_key(), keys.public_key(), "same public key");
    for (a, b) in old_shares.iter().zip(&new_shares) {
        assert_ne!(
            keys.holder_key(a.index()).expect("old"),
            new_keys.holder_key(b.index()).expect("new")
        );
    }
    assert!(
        decrypts(&new_keys, &new_shares[..3], &ct),
        "new epoch decrypts old ciphertexts"
    );
    let mixed = vec![
        old_shares[0].clone(),
        new_shares[1].clone(),
        new_shares[2].clone(),
    ];
    // Mixed epochs: old share 1 fails its proof against the new commitments...
    assert!(!decrypts(&new_keys, &mixed, &ct));
    // ...and even a combiner that skipped proofs gets a wrong key.
    let c = ctx(&[("app", "sessions")]);
    let p = partials(&new_keys, &mixed, &ct, &c, 7);
    assert!(combine(&new_keys, &ct, &c, &p, CombineMode::Optimistic).is_err());
}

#[test]
fn reshare_moves_the_key_to_new_holders_and_threshold() {
    let dkg = generate(2, 3, 28);
    let keys = dkg.keys().clone();
    let ct = sample_ct(&keys);
    for (t2, n2) in [(3u16, 5u16), (2, 2), (4, 4)] {
        let config = session(
            6,
            SessionKind::Reshare { old: keys.clone() },
            vec![idx(1), idx(3)],
            ShareIndex::first_n(n2),
            t2,
        );
        let moved = run_session(&config, &dkg.shares(), 29, &mut honest);
        let new_keys = moved.keys().clone();
        assert_eq!(new_keys.public_key(), keys.public_key());
        assert_eq!(new_keys.threshold(), t2);
        let new_shares = moved.shares();
        assert_eq!(new_shares.len(), usize::from(n2));
        assert!(
            decrypts(&new_keys, &new_shares[usize::from(n2 - t2)..], &ct),
            "({t2},{n2})"
        );
        let c = ctx(&[("app", "sessions")]);
        let p = partials(&new_keys, &new_shares[..usize::from(t2) - 1], &ct, &c, 8);
        assert!(combine(&new_keys, &ct, &c, &p, CombineMode::VerifyAll).is_err());
    }
}

/// How the cluster refreshes: a reshare onto the same holders and
/// threshold. A holder that lost its share does not deal (it is absent) but
/// receives a new share of the same key from the others.
#[test]
fn a_holder_that_lost_its_share_gets_a_new_one_from_a_reshare_onto_the_same_holders() {
    let dkg = generate(2, 3, 33);
    let keys = dkg.keys().clone();
    let ct = sample_ct(&keys);
    let old_shares = dkg.shares();
    let kept: Vec<KeyShare> = old_shares
        .iter()
        .filter(|s| s.index() != idx(3))
        .cloned()
        .collect();
    let config = session(
        9,
        SessionKind::Reshare { old: keys.clone() },
        keys.holders().to_vec(),
        keys.holders().to_vec(),
        2,
    );
    let fresh = run_session(&config, &kept, 34, &mut honest);
    let out = fresh.outputs.get(&idx(3)).expect("holder 3 took part");
    assert_eq!(
        out.absent,
        vec![idx(3)],
        "the holder without a share dealt nothing"
    );
    let new_keys = fresh.keys().clone();
    assert_eq!(new_keys.public_key(), keys.public_key(), "same public key");
    let new_shares = fresh.shares();
    assert_eq!(new_shares.len(), 3, "every holder has a share again");
    let pair = [new_shares[0].clone(), new_shares[2].clone()];
    assert_eq!(pair[1].index(), idx(3));
    assert!(
        decrypts(&new_keys, &pair, &ct),
        "holder 3's new share works"
    );
    let mixed = [old_shares[0].clone(), new_shares[2].clone()];
    assert!(
        !decrypts(&new_keys, &mixed, &ct),
        "old shares do not mix with new"
    );
}

#[test]
fn reshare_to_disjoint_holders_with_one_bad_dealer() {
    let dkg = generate(2, 4, 30);
    let keys = dkg.keys().clone();
    let ct = sample_ct(&keys);
    let config = session(
        7,
        SessionKind::Reshare { old: keys.clone() },
        ShareIndex::first_n(4),
        vec![idx(5), idx(6), idx(7)],
        2,
    );
    let mut tamper = |from: ShareIndex, m: PublicMessage| {
        Some(if from == idx(2) {
            swap_boxes(m, 0, 1)
        } else {
            m
        })
    };
    let moved = run_session(&config, &dkg.shares(), 31, &mut tamper);
    let out = moved.outputs.get(&idx(5)).expect("receiver");
    assert_eq!(out.disqualified, vec![idx(2)]);
    assert!(moved.outputs.get(&idx(1)).expect("dealer").share.is_none());
    let new_keys = moved.keys().clone();
    assert_eq!(new_keys.public_key(), keys.public_key());
    assert!(decrypts(&new_keys, &moved.shares()[1..], &ct));
}

#[test]
fn too_few_qualified_dealers_fail_the_session() {
    let config = session(
        8,
        SessionKind::Generate,
        ShareIndex::first_n(3),
        ShareIndex::first_n(3),
        3,
    );
    let mut rng = rng(32);
    let key = qk_crypto::testing::dkg_key(idx(1));
    let mut p = qk_crypto::Participant::new(config, idx(1), None, Some(key)).expect("p");
    let deal = p.start(&mut rng).expect("start").expect("deal");
    p.handle_public(&PublicMessage::Deal(deal))
        .expect("own deal");
    assert!(p.close_dealing(&mut rng).expect("close").is_empty());
    let err = p.finish().expect_err("only one dealer");
    assert!(
        err.to_string().contains("too few qualified dealers"),
        "{err}"
    );
}

#[test]
fn bad_parameters_and_foreign_messages_are_refused() {
    let mk = |t: u16, n: u16| {
        session(
            9,
            SessionKind::Generate,
            ShareIndex::first_n(n),
            ShareIndex::first_n(n),
            t,
        )
    };
    let key = |i: u16| Some(qk_crypto::testing::dkg_key(idx(i)));
    assert!(qk_crypto::Participant::new(mk(1, 3), idx(1), None, key(1)).is_err());
    assert!(qk_crypto::Participant::new(mk(4, 3), idx(1), None, key(1)).is_err());
    assert!(qk_crypto::Participant::new(mk(2, 3), idx(9), None, key(9)).is_err());
    // A receiver without its key, or with another node's key, cannot join.
    assert!(qk_crypto::Participant::new(mk(2, 3), idx(1), None, None).is_err());
    assert!(qk_crypto::Participant::new(mk(2, 3), idx(1), None, key(2)).is_err());
    let mut missing = mk(2, 3);
    missing.receiver_keys.remove(&idx(3));
    assert!(qk_crypto::Participant::new(missing, idx(1), None, key(1)).is_err());
    let mut a = qk_crypto::Participant::new(mk(2, 3), idx(1), None, key(1)).expect("a");
    let mut other = mk(2, 3);
    other.session_id = [10; 32];
    let mut b = qk_crypto::Participant::new(other, idx(2), None, key(2)).expect("b");
    let mut r = rng(33);
    a.start(&mut r).expect("start a");
    let deal = b.start(&mut r).expect("start b").expect("deal");
    assert!(a.handle_public(&PublicMessage::Deal(deal)).is_err());
}

#[test]
fn refresh_requires_a_matching_current_share() {
    let dkg = generate(2, 3, 34);
    let keys = dkg.keys().clone();
    let other = generate(2, 3, 35).shares();
    let config = session(
        11,
        SessionKind::Refresh { old: keys.clone() },
        keys.holders().to_vec(),
        keys.holders().to_vec(),
        2,
    );
    let key = Some(qk_crypto::testing::dkg_key(idx(1)));
    assert!(qk_crypto::Participant::new(config.clone(), idx(1), None, key.clone()).is_err());
    let err = qk_crypto::Participant::new(config, idx(1), Some(other[0].clone()), key)
        .expect_err("foreign share");
    assert!(err.to_string().contains("does not match"), "{err}");
}

#[test]
fn a_refresh_must_keep_the_dealers_receivers_and_threshold_of_the_version() {
    let dkg = generate(2, 3, 31);
    let keys = dkg.keys().clone();
    let shares = dkg.shares();
    let holders = keys.holders().to_vec();
    let refused = |dealers: Vec<ShareIndex>, receivers: Vec<ShareIndex>, t: u16| {
        let config = session(
            6,
            SessionKind::Refresh { old: keys.clone() },
            dealers,
            receivers,
            t,
        );
        let me = config.receivers[0];
        let share = shares.iter().find(|s| s.index() == me).cloned();
        let key = Some(qk_crypto::testing::dkg_key(me));
        qk_crypto::Participant::new(config, me, share, key).is_err()
    };
    let fewer: Vec<ShareIndex> = holders[..2].to_vec();
    assert!(
        !refused(holders.clone(), holders.clone(), 2),
        "same holders and t"
    );
    assert!(refused(fewer.clone(), holders.clone(), 2), "other dealers");
    assert!(refused(holders.clone(), fewer, 2), "other receivers");
    assert!(refused(holders.clone(), holders, 3), "another threshold");
}

/// Holder 1 of `config`, started (its own deal made).
fn started(config: &qk_crypto::SessionConfig, old: Option<KeyShare>) -> qk_crypto::Participant {
    let me = config.receivers[0];
    let key = Some(qk_crypto::testing::dkg_key(me));
    let mut p = qk_crypto::Participant::new(config.clone(), me, old, key).expect("participant");
    p.start(&mut rng(40)).expect("start");
    p
}

/// Holder 2's honest deal in `config`.
fn deal_of_holder_2(config: &qk_crypto::SessionConfig, old: Option<KeyShare>) -> qk_crypto::Deal {
    let me = config.receivers[1];
    let key = Some(qk_crypto::testing::dkg_key(me));
    let mut p = qk_crypto::Participant::new(config.clone(), me, old, key).expect("participant");
    p.start(&mut rng(41))
        .expect("start")
        .expect("a dealer deals")
}

#[test]
fn a_deal_counts_only_in_its_session_once_started_and_in_its_shape() {
    let (config, _) = generation(7, 3, 2);
    let (other, _) = generation(8, 3, 2);
    let deal = deal_of_holder_2(&config, None);
    let msg = |d: &qk_crypto::Deal| PublicMessage::Deal(d.clone());

    let me = config.receivers[0];
    let key = Some(qk_crypto::testing::dkg_key(me));
    let mut idle = qk_crypto::Participant::new(config.clone(), me, None, key).expect("new");
    assert!(idle.handle_public(&msg(&deal)).is_err(), "before start");

    let refused = |d: &qk_crypto::Deal| started(&config, None).handle_public(&msg(d)).is_err();
    let foreign = deal_of_holder_2(&other, None);
    assert!(refused(&foreign), "another session");
    let mut relabeled = deal.clone();
    relabeled.session_id = other.session_id;
    assert!(
        refused(&relabeled),
        "this session's deal, labelled with another"
    );
    let mut short = deal.clone();
    short.commitments.pop();
    assert!(refused(&short), "t - 1 commitments");
    let mut unproven = deal.clone();
    unproven.pok = deal_of_holder_2(&other, None).pok;
    assert!(refused(&unproven), "a foreign proof");
    assert!(!refused(&deal), "the honest deal");
}

#[test]
fn a_refresh_deal_carries_t_minus_one_commitments_and_no_proof() {
    let dkg = generate(2, 3, 42);
    let keys = dkg.keys().clone();
    let shares = dkg.shares();
    let holders = keys.holders().to_vec();
    let config = session(
        9,
        SessionKind::Refresh { old: keys },
        holders.clone(),
        holders,
        2,
    );
    let deal = deal_of_holder_2(&config, Some(shares[1].clone()));
    let mine = Some(shares[0].clone());
    let msg = |d: &qk_crypto::Deal| PublicMessage::Deal(d.clone());
    let (gen_config, _) = generation(9, 3, 2);
    let mut with_proof = deal.clone();
    with_proof.pok = deal_of_holder_2(&gen_config, None).pok;
    assert!(started(&config, mine.clone())
        .handle_public(&msg(&with_proof))
        .is_err());
    let mut long = deal.clone();
    long.commitments.push(long.commitments[0]);
    assert!(started(&config, mine.clone())
        .handle_public(&msg(&long))
        .is_err());
    assert!(started(&config, mine).handle_public(&msg(&deal)).is_ok());
}
