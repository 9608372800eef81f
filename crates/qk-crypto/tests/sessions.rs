//! DKG, refresh and reshare sessions: honest runs, faulty dealers, epochs.

mod common;

use common::*;
use k256::Scalar;
use qk_crypto::{
    combine, wrap, CombineMode, KeyShare, Outgoing, PrivateShare, PublicMessage, SessionConfig,
    SessionKind,
};
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

/// Flips a byte of the secret encoding until it still decodes (stays canonical).
fn corrupt(share: PrivateShare) -> PrivateShare {
    let mut bytes = share.to_secret_bytes().to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    PrivateShare::from_secret_bytes(&bytes).expect("corrupted share still decodes")
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
fn dealer_with_wrong_share_and_no_answer_is_disqualified() {
    let bad = idx(2);
    let config = SessionConfig {
        session_id: [1; 32],
        kind: SessionKind::Generate,
        dealers: ShareIndex::first_n(5),
        receivers: ShareIndex::first_n(5),
        threshold: 3,
    };
    let mut tamper = |from: ShareIndex, m: Outgoing| match m {
        Outgoing::Send(s) if from == bad && s.receiver == idx(4) => {
            Some(Outgoing::Send(corrupt(s)))
        }
        Outgoing::Broadcast(PublicMessage::Justification(_)) if from == bad => None,
        other => Some(other),
    };
    let out = run_session(&config, &[], 22, &mut tamper);
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
fn dealer_with_bad_justification_is_disqualified() {
    let bad = idx(1);
    let config = SessionConfig {
        session_id: [2; 32],
        kind: SessionKind::Generate,
        dealers: ShareIndex::first_n(4),
        receivers: ShareIndex::first_n(4),
        threshold: 2,
    };
    let mut tamper = |from: ShareIndex, m: Outgoing| match m {
        Outgoing::Send(s) if from == bad && s.receiver == idx(3) => None,
        Outgoing::Broadcast(PublicMessage::Justification(mut j)) if from == bad => {
            j.value += Scalar::ONE;
            Some(Outgoing::Broadcast(PublicMessage::Justification(j)))
        }
        other => Some(other),
    };
    let out = run_session(&config, &[], 23, &mut tamper);
    for o in out.outputs.values() {
        assert_eq!(o.disqualified, vec![bad]);
    }
    assert!(decrypts(
        out.keys(),
        &out.shares()[1..3],
        &sample_ct(out.keys())
    ));
}

#[test]
fn dealer_that_justifies_correctly_stays_qualified() {
    let slow = idx(3);
    let config = SessionConfig {
        session_id: [3; 32],
        kind: SessionKind::Generate,
        dealers: ShareIndex::first_n(3),
        receivers: ShareIndex::first_n(3),
        threshold: 2,
    };
    // Dealer 3's private share to 1 is lost; it answers the complaint publicly.
    let mut tamper = |from: ShareIndex, m: Outgoing| match m {
        Outgoing::Send(s) if from == slow && s.receiver == idx(1) => None,
        other => Some(other),
    };
    let out = run_session(&config, &[], 24, &mut tamper);
    for o in out.outputs.values() {
        assert_eq!(o.qualified.len(), 3);
        assert!(o.disqualified.is_empty());
    }
    assert!(decrypts(
        out.keys(),
        &out.shares()[..2],
        &sample_ct(out.keys())
    ));
}

#[test]
fn silent_dealer_is_absent_and_the_rest_generate() {
    let silent = idx(5);
    let config = SessionConfig {
        session_id: [4; 32],
        kind: SessionKind::Generate,
        dealers: ShareIndex::first_n(5),
        receivers: ShareIndex::first_n(5),
        threshold: 3,
    };
    let mut tamper = |from: ShareIndex, m: Outgoing| if from == silent { None } else { Some(m) };
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
    let config = SessionConfig {
        session_id: [5; 32],
        kind: SessionKind::Refresh { old: keys.clone() },
        dealers: keys.holders().to_vec(),
        receivers: keys.holders().to_vec(),
        threshold: 3,
    };
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
        let config = SessionConfig {
            session_id: [6; 32],
            kind: SessionKind::Reshare { old: keys.clone() },
            dealers: vec![idx(1), idx(3)],
            receivers: ShareIndex::first_n(n2),
            threshold: t2,
        };
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

#[test]
fn reshare_to_disjoint_holders_with_one_bad_dealer() {
    let dkg = generate(2, 4, 30);
    let keys = dkg.keys().clone();
    let ct = sample_ct(&keys);
    let config = SessionConfig {
        session_id: [7; 32],
        kind: SessionKind::Reshare { old: keys.clone() },
        dealers: ShareIndex::first_n(4),
        receivers: vec![idx(5), idx(6), idx(7)],
        threshold: 2,
    };
    let mut tamper = |from: ShareIndex, m: Outgoing| match m {
        Outgoing::Send(s) if from == idx(2) => Some(Outgoing::Send(corrupt(s))),
        Outgoing::Broadcast(PublicMessage::Justification(_)) if from == idx(2) => None,
        other => Some(other),
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
    let config = SessionConfig {
        session_id: [8; 32],
        kind: SessionKind::Generate,
        dealers: ShareIndex::first_n(3),
        receivers: ShareIndex::first_n(3),
        threshold: 3,
    };
    let mut rng = rng(32);
    let mut p = qk_crypto::Participant::new(config, idx(1), None).expect("p");
    let out = p.start(&mut rng).expect("start");
    for m in out {
        if let Outgoing::Broadcast(msg) = m {
            p.handle_public(&msg).expect("own deal");
        }
    }
    p.close_dealing().expect("close");
    let err = p.finish().expect_err("only one dealer");
    assert!(
        err.to_string().contains("too few qualified dealers"),
        "{err}"
    );
}

#[test]
fn bad_parameters_and_foreign_messages_are_refused() {
    let mk = |t: u16, n: u16| SessionConfig {
        session_id: [9; 32],
        kind: SessionKind::Generate,
        dealers: ShareIndex::first_n(n),
        receivers: ShareIndex::first_n(n),
        threshold: t,
    };
    assert!(qk_crypto::Participant::new(mk(1, 3), idx(1), None).is_err());
    assert!(qk_crypto::Participant::new(mk(4, 3), idx(1), None).is_err());
    assert!(qk_crypto::Participant::new(mk(2, 3), idx(9), None).is_err());
    let mut a = qk_crypto::Participant::new(mk(2, 3), idx(1), None).expect("a");
    let mut other = mk(2, 3);
    other.session_id = [10; 32];
    let mut b = qk_crypto::Participant::new(other, idx(2), None).expect("b");
    let mut r = rng(33);
    a.start(&mut r).expect("start a");
    for m in b.start(&mut r).expect("start b") {
        match m {
            Outgoing::Broadcast(msg) => assert!(a.handle_public(&msg).is_err()),
            Outgoing::Send(s) if s.receiver == idx(1) => assert!(a.handle_private(s).is_err()),
            Outgoing::Send(_) => {}
        }
    }
}

#[test]
fn refresh_requires_a_matching_current_share() {
    let dkg = generate(2, 3, 34);
    let keys = dkg.keys().clone();
    let other = generate(2, 3, 35).shares();
    let config = SessionConfig {
        session_id: [11; 32],
        kind: SessionKind::Refresh { old: keys.clone() },
        dealers: keys.holders().to_vec(),
        receivers: keys.holders().to_vec(),
        threshold: 2,
    };
    assert!(qk_crypto::Participant::new(config.clone(), idx(1), None).is_err());
    let err = qk_crypto::Participant::new(config, idx(1), Some(other[0].clone()))
        .expect_err("foreign share");
    assert!(err.to_string().contains("does not match"), "{err}");
}
