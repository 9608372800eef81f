//! Known-answer checks of CRYPTO.md for labelled threshold ECIES.

mod common;

use common::*;
use qk_crypto::{combine, wrap, CombineMode, CryptoError, PartialDecryption};

const MODES: [CombineMode; 2] = [CombineMode::VerifyAll, CombineMode::Optimistic];

#[test]
fn any_t_of_n_decrypt_and_t_minus_one_do_not() {
    for (t, n) in [(2u16, 3u16), (3, 5), (4, 7), (5, 9)] {
        let out = generate(t, n, u64::from(t * 100 + n));
        let keys = out.keys();
        let shares = out.shares();
        assert_eq!(shares.len(), usize::from(n));
        let context = ctx(&[("tenant", "acme")]);
        let ct = wrap(
            &mut rng(1),
            &keys.public_key(),
            KEY,
            V1,
            &context,
            b"data key bytes",
        )
        .expect("wrap");
        let all = partials(keys, &shares, &ct, &context, 2);
        // Every window of t consecutive holders (wrapping) decrypts.
        for start in 0..usize::from(n) {
            let subset: Vec<PartialDecryption> = (0..usize::from(t))
                .map(|k| all[(start + k) % usize::from(n)].clone())
                .collect();
            for mode in MODES {
                let got = combine(keys, &ct, &context, &subset, mode).expect("t partials decrypt");
                assert_eq!(got.plaintext.as_slice(), b"data key bytes");
                assert!(got.invalid.is_empty());
            }
            let short = &subset[..usize::from(t) - 1];
            for mode in MODES {
                match combine(keys, &ct, &context, short, mode) {
                    Err(CryptoError::NotEnoughPartials { needed, valid, .. }) => {
                        assert_eq!((needed, valid), (usize::from(t), usize::from(t) - 1));
                    }
                    other => panic!("t-1 partials must not decrypt: {other:?}"),
                }
            }
        }
    }
}

#[test]
fn duplicated_partials_do_not_count_twice() {
    let out = generate(3, 5, 11);
    let (keys, shares) = (out.keys(), out.shares());
    let context = ctx(&[]);
    let ct = wrap(&mut rng(1), &keys.public_key(), KEY, V1, &context, b"x").expect("wrap");
    let p = partials(keys, &shares[..2], &ct, &context, 3);
    let dup = vec![p[0].clone(), p[1].clone(), p[0].clone()];
    for mode in MODES {
        assert!(matches!(
            combine(keys, &ct, &context, &dup, mode),
            Err(CryptoError::NotEnoughPartials { valid: 2, .. })
        ));
    }
}

#[test]
fn a_forged_partial_that_claims_an_index_first_does_not_crowd_out_the_honest_one() {
    let out = generate(2, 3, 13);
    let (keys, shares) = (out.keys(), out.shares());
    let context = ctx(&[]);
    let ct = wrap(&mut rng(1), &keys.public_key(), KEY, V1, &context, b"kept").expect("wrap");
    let honest = partials(keys, &shares, &ct, &context, 5);
    // Holder 3 answers first, claiming holder 1's index with its own image.
    let claim = PartialDecryption::from_bytes(&{
        let mut bytes = honest[2].to_bytes();
        let one = honest[0].to_bytes();
        bytes[..24].copy_from_slice(&one[..24]);
        bytes
    })
    .expect("well-formed");
    assert_eq!(claim.index, idx(1));
    let arrived = vec![claim, honest[0].clone(), honest[1].clone()];
    for mode in MODES {
        let got = combine(keys, &ct, &context, &arrived, mode).expect("the honest 1 and 2 decrypt");
        assert_eq!(got.plaintext.as_slice(), b"kept");
        assert!(
            got.invalid.is_empty(),
            "index 1 has a valid partial: its honest holder is not blamed ({mode:?})"
        );
    }
}

#[test]
fn wrong_partial_or_forged_proof_is_rejected_and_named() {
    let out = generate(3, 5, 12);
    let (keys, shares) = (out.keys(), out.shares());
    let context = ctx(&[("purpose", "test")]);
    let ct = wrap(
        &mut rng(1),
        &keys.public_key(),
        KEY,
        V1,
        &context,
        b"secret",
    )
    .expect("wrap");
    let mut all = partials(keys, &shares, &ct, &context, 4);
    // Holder 1 sends holder 2's image (a wrong D_i) with its own proof.
    let wrong_image = PartialDecryption::from_bytes(&{
        let mut bytes = all[0].to_bytes();
        let other = all[1].to_bytes();
        bytes[24..57].copy_from_slice(&other[24..57]);
        bytes
    })
    .expect("well-formed");
    // Holder 2 forges a proof by flipping a byte of z.
    let forged = {
        let mut bytes = all[1].to_bytes();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        PartialDecryption::from_bytes(&bytes).expect("still canonical")
    };
    all[0] = wrong_image;
    all[1] = forged;
    for mode in MODES {
        let got = combine(keys, &ct, &context, &all, mode).expect("3 honest holders remain");
        assert_eq!(got.plaintext.as_slice(), b"secret");
        assert_eq!(
            got.invalid,
            vec![idx(1), idx(2)],
            "cheaters named in {mode:?}"
        );
    }
    for mode in MODES {
        match combine(keys, &ct, &context, &all[..3], mode) {
            Err(CryptoError::NotEnoughPartials {
                needed: 3,
                valid: 1,
                invalid,
            }) => {
                assert_eq!(invalid, vec![idx(1), idx(2)]);
            }
            other => panic!("expected blame, got {other:?}"),
        }
    }
    let msg = combine(keys, &ct, &context, &all[..3], CombineMode::VerifyAll)
        .expect_err("blame")
        .to_string();
    assert!(msg.contains("invalid proofs from holders 1, 2"), "{msg}");
}

#[test]
fn changed_context_is_refused_before_any_partial() {
    let out = generate(2, 3, 13);
    let (keys, shares) = (out.keys(), out.shares());
    let context = ctx(&[("tenant", "a")]);
    let ct = wrap(&mut rng(1), &keys.public_key(), KEY, V1, &context, b"k").expect("wrap");
    for other in [
        ctx(&[("tenant", "b")]),
        ctx(&[]),
        ctx(&[("tenant", "a"), ("x", "y")]),
    ] {
        for s in &shares {
            let hk = keys.holder_key(s.index()).expect("hk");
            let err = qk_crypto::partial_decrypt(&mut rng(2), s, &hk, KEY, V1, &ct, &other)
                .expect_err("changed context must be refused");
            assert_eq!(err, CryptoError::InvalidCiphertextProof);
        }
    }
}

#[test]
fn moved_r_or_proof_is_refused_before_any_partial() {
    let out = generate(2, 3, 14);
    let (keys, shares) = (out.keys(), out.shares());
    let ctx_a = ctx(&[("tenant", "a")]);
    let ctx_b = ctx(&[("tenant", "b")]);
    let a = wrap(&mut rng(1), &keys.public_key(), KEY, V1, &ctx_a, b"for a").expect("wrap");
    let b = wrap(&mut rng(2), &keys.public_key(), KEY, V1, &ctx_b, b"for b").expect("wrap");
    // Layout: version, tag, key id (16), version (4), R (33), c (32), z (32), ...
    let r_range = 22..55;
    let proof_range = 55..119;
    let splice = |dst: &qk_crypto::Ciphertext,
                  src: &qk_crypto::Ciphertext,
                  range: std::ops::Range<usize>| {
        let mut bytes = dst.to_bytes();
        bytes[range.clone()].copy_from_slice(&src.to_bytes()[range]);
        qk_crypto::Ciphertext::from_bytes(&bytes).expect("well-formed")
    };
    let moved_r_and_proof = splice(&splice(&b, &a, r_range.clone()), &a, proof_range.clone());
    let moved_proof = splice(&b, &a, proof_range);
    let moved_r = splice(&b, &a, r_range);
    for forged in [&moved_r_and_proof, &moved_proof, &moved_r] {
        for s in &shares {
            let hk = keys.holder_key(s.index()).expect("hk");
            let err = qk_crypto::partial_decrypt(&mut rng(3), s, &hk, KEY, V1, forged, &ctx_b)
                .expect_err("moved R or proof must be refused");
            assert_eq!(err, CryptoError::InvalidCiphertextProof);
        }
    }
}

#[test]
fn wrong_key_version_is_refused() {
    let out = generate(2, 3, 15);
    let (keys, shares) = (out.keys(), out.shares());
    let c = ctx(&[]);
    let ct = wrap(&mut rng(1), &keys.public_key(), KEY, V1, &c, b"k").expect("wrap");
    let hk = keys.holder_key(shares[0].index()).expect("hk");
    let err = qk_crypto::partial_decrypt(
        &mut rng(2),
        &shares[0],
        &hk,
        KEY,
        qk_types::KeyVersion(2),
        &ct,
        &c,
    )
    .expect_err("version mismatch");
    assert!(matches!(err, CryptoError::WrongKey { .. }), "{err}");
}

#[test]
fn tampered_body_fails_in_both_modes() {
    let out = generate(2, 3, 16);
    let (keys, shares) = (out.keys(), out.shares());
    let c = ctx(&[]);
    let ct = wrap(&mut rng(1), &keys.public_key(), KEY, V1, &c, b"payload").expect("wrap");
    let mut bytes = ct.to_bytes();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x80;
    let tampered = qk_crypto::Ciphertext::from_bytes(&bytes).expect("well-formed");
    let p = partials(keys, &shares, &tampered, &c, 2);
    for mode in MODES {
        assert_eq!(
            combine(keys, &tampered, &c, &p, mode)
                .expect_err("aead")
                .to_string(),
            CryptoError::AeadFailure.to_string()
        );
    }
}

#[test]
fn text_form_round_trips_and_is_strict() {
    let out = generate(2, 3, 17);
    let c = ctx(&[]);
    let ct = wrap(&mut rng(1), &out.keys().public_key(), KEY, V1, &c, b"abc").expect("wrap");
    let text = ct.to_text();
    assert!(text.starts_with("qk:v1:"));
    assert_eq!(qk_crypto::Ciphertext::from_text(&text).expect("decode"), ct);
    assert!(qk_crypto::Ciphertext::from_text(&text.replacen("qk:v1:", "qk:v2:", 1)).is_err());
    assert!(qk_crypto::Ciphertext::from_text(&format!("{text}=")).is_err());
    assert!(qk_crypto::Ciphertext::from_text("qk:v1:!!!").is_err());
}

#[test]
fn oversized_inputs_are_refused_with_a_clear_error() {
    let out = generate(2, 3, 18);
    let pk = out.keys().public_key();
    let big = vec![0u8; qk_crypto::ecies::MAX_PLAINTEXT_LEN + 1];
    let err = wrap(&mut rng(1), &pk, KEY, V1, &ctx(&[]), &big).expect_err("too big");
    assert!(err.to_string().contains("envelope encryption"), "{err}");
    let long_value = "v".repeat(1025);
    let err = wrap(&mut rng(1), &pk, KEY, V1, &ctx(&[("k", &long_value)]), b"x").expect_err("ctx");
    assert!(matches!(err, CryptoError::ContextTooLarge(_)));
}

#[test]
fn the_size_bounds_are_exact_for_the_largest_plaintext_and_a_partial() {
    use qk_crypto::ecies::{MAX_CIPHERTEXT_LEN, MAX_PARTIAL_LEN, MAX_PLAINTEXT_LEN};
    let out = generate(2, 3, 77);
    let keys = out.keys();
    let context = ctx(&[("tenant", "acme")]);
    let largest = vec![7u8; MAX_PLAINTEXT_LEN];
    let ct =
        wrap(&mut rng(2), &keys.public_key(), KEY, V1, &context, &largest).expect("at the bound");
    let bytes = ct.to_bytes();
    assert_eq!(
        bytes.len(),
        MAX_CIPHERTEXT_LEN,
        "the bound is the largest ciphertext"
    );
    assert_eq!(
        qk_crypto::Ciphertext::from_bytes(&bytes).expect("decodes"),
        ct
    );
    let text = ct.to_text();
    assert_eq!(
        qk_crypto::Ciphertext::from_text(&text).expect("text decodes"),
        ct
    );
    let padded = format!("{text}{}", "A".repeat(8));
    assert!(matches!(
        qk_crypto::Ciphertext::from_text(&padded),
        Err(qk_crypto::DecodeError::TooLarge {
            what: "ciphertext text",
            ..
        })
    ));
    // An empty plaintext: a body of exactly the AEAD tag decodes.
    let empty = wrap(&mut rng(8), &keys.public_key(), KEY, V1, &context, b"").expect("wrap");
    let decoded = qk_crypto::Ciphertext::from_bytes(&empty.to_bytes()).expect("tag-only body");
    assert_eq!(decoded, empty);
    let over = vec![7u8; MAX_PLAINTEXT_LEN + 1];
    assert!(matches!(
        wrap(&mut rng(3), &keys.public_key(), KEY, V1, &context, &over),
        Err(CryptoError::PlaintextTooLarge { .. })
    ));
    let small = wrap(&mut rng(4), &keys.public_key(), KEY, V1, &context, b"k").expect("wrap");
    let partial = &partials(keys, &out.shares(), &small, &context, 5)[0];
    let bytes = partial.to_bytes();
    assert_eq!(bytes.len(), MAX_PARTIAL_LEN, "a partial has one size");
    assert_eq!(
        PartialDecryption::from_bytes(&bytes).expect("decodes"),
        *partial
    );
}

#[test]
fn an_encryption_context_is_bounded_in_entries_key_and_value_length() {
    let out = generate(2, 3, 78);
    let pk = out.keys().public_key();
    let try_wrap = |context: &qk_crypto::EncryptionContext| {
        wrap(&mut rng(6), &pk, KEY, V1, context, b"k").map(|_| ())
    };
    let entries = |n: usize| -> qk_crypto::EncryptionContext {
        (0..n).map(|i| (format!("k{i}"), "v".to_string())).collect()
    };
    assert!(try_wrap(&entries(64)).is_ok());
    assert!(matches!(
        try_wrap(&entries(65)),
        Err(CryptoError::ContextTooLarge(_))
    ));
    let one = |k: usize, v: usize| -> qk_crypto::EncryptionContext {
        [("k".repeat(k), "v".repeat(v))].into()
    };
    assert!(try_wrap(&one(256, 1024)).is_ok());
    assert!(matches!(
        try_wrap(&one(257, 1)),
        Err(CryptoError::ContextTooLarge(_))
    ));
    assert!(matches!(
        try_wrap(&one(1, 1025)),
        Err(CryptoError::ContextTooLarge(_))
    ));
}

#[test]
fn verify_all_reports_every_bad_partial_and_optimistic_stops_at_t_good_ones() {
    let out = generate(2, 3, 79);
    let keys = out.keys();
    let context = ctx(&[("tenant", "acme")]);
    let ct = wrap(&mut rng(9), &keys.public_key(), KEY, V1, &context, b"dk").expect("wrap");
    let all = partials(keys, &out.shares(), &ct, &context, 10);
    let bad = {
        let mut bytes = all[2].to_bytes();
        let last = bytes.len() - 1;
        bytes[last] ^= 1; // a proof that no longer verifies
        PartialDecryption::from_bytes(&bytes).expect("still canonical")
    };
    // Two good partials first (one of them twice), then a bad one.
    let given = [all[0].clone(), all[0].clone(), all[1].clone(), bad];
    let verified = combine(keys, &ct, &context, &given, CombineMode::VerifyAll).expect("decrypts");
    assert_eq!(verified.plaintext.as_slice(), b"dk");
    assert_eq!(verified.invalid, vec![all[2].index]);
    let fast = combine(keys, &ct, &context, &given, CombineMode::Optimistic).expect("decrypts");
    assert_eq!(fast.plaintext.as_slice(), b"dk");
    assert!(
        fast.invalid.is_empty(),
        "the first t distinct partials opened it"
    );
}

#[test]
fn a_partial_naming_another_key_or_version_is_refused() {
    let out = generate(2, 3, 80);
    let keys = out.keys();
    let context = ctx(&[("tenant", "acme")]);
    let ct = wrap(&mut rng(11), &keys.public_key(), KEY, V1, &context, b"dk").expect("wrap");
    let label = ct.verify(&context).expect("label");
    let good = partials(keys, &out.shares(), &ct, &context, 12)[0].clone();
    qk_crypto::verify_partial(keys, &ct, &label, &good).expect("valid");
    let mut other_version = good.clone();
    other_version.version = qk_types::KeyVersion(2);
    assert!(qk_crypto::verify_partial(keys, &ct, &label, &other_version).is_err());
    let mut other_key = good;
    other_key.key_id = qk_types::KeyId([9; 16]);
    assert!(qk_crypto::verify_partial(keys, &ct, &label, &other_key).is_err());
}
