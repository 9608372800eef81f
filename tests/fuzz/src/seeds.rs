//! Seed inputs for the fuzz targets: `cargo test --lib` (re)writes
//! `seeds/<target>/*` from a deterministic in-process DKG, refresh and
//! reshare, and checks that every seed passes its target's round trip.

use std::fs;
use std::path::{Path, PathBuf};

use qk_crypto::testing::{self, honest, Transcript};
use qk_crypto::{
    partial_decrypt, wrap, Ciphertext, EncryptionContext, KeyShare, PublicKeySet, PublicMessage,
    SessionConfig, SessionKind,
};
use qk_types::{KeyId, KeyVersion, ShareIndex};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn idx(i: u16) -> ShareIndex {
    ShareIndex::new(i).expect("index in 1..=64")
}

/// Everything one honest in-process session produced.
struct Run {
    keys: PublicKeySet,
    shares: Vec<KeyShare>,
    transcript: Transcript,
}

/// One honest session through `qk_crypto::testing::run_session`.
fn run(rng: &mut StdRng, config: &SessionConfig, old: &[KeyShare]) -> Run {
    let (outputs, transcript) = testing::run_session(config, old, rng, &mut honest);
    assert!(
        transcript.complaints.is_empty(),
        "honest run has no complaints"
    );
    let (keys, shares) = testing::keys_and_shares(outputs);
    Run {
        keys,
        shares,
        transcript,
    }
}

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8], check: fn(&[u8])) {
    check(bytes);
    let dir = dir.join(target);
    fs::create_dir_all(&dir).expect("create seed directory");
    fs::write(dir.join(name), bytes).expect("write seed");
}

#[test]
fn write_seeds() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let mut rng = StdRng::seed_from_u64(0x716b_6675_7a7a);
    let holders = |n: u16| (1..=n).map(idx).collect::<Vec<_>>();

    // Generation (2, 3).
    let gen = testing::config([1; 32], SessionKind::Generate, holders(3), holders(3), 2);
    let dkg = run(&mut rng, &gen, &[]);
    let keys = dkg.keys.clone();
    let shares = &dkg.shares;

    // Refresh (2, 3) and reshare (2, 3) -> (3, 5).
    let refresh = testing::config(
        [2; 32],
        SessionKind::Refresh { old: keys.clone() },
        holders(3),
        holders(3),
        2,
    );
    let refreshed = run(&mut rng, &refresh, shares);
    let reshare = testing::config(
        [3; 32],
        SessionKind::Reshare { old: keys.clone() },
        holders(3),
        holders(5),
        3,
    );
    let reshared = run(&mut rng, &reshare, shares);
    assert_eq!(reshared.keys.public_key(), keys.public_key());

    // Ciphertexts and partials.
    let key_id = KeyId([7; 16]);
    let version = KeyVersion(1);
    let mut context = EncryptionContext::new();
    context.insert("tenant".into(), "acme".into());
    context.insert("purpose".into(), "fuzz-seed".into());
    let cases: [(&str, EncryptionContext, Vec<u8>); 3] = [
        ("ctx_32b", context.clone(), vec![0x42; 32]),
        ("noctx_0b", EncryptionContext::new(), Vec::new()),
        ("ctx_100b", context.clone(), (0..100u8).collect()),
    ];
    let mut first: Option<Ciphertext> = None;
    for (name, ctx, plaintext) in &cases {
        let ct = wrap(
            &mut rng,
            &keys.public_key(),
            key_id,
            version,
            ctx,
            plaintext,
        )
        .expect("wrap");
        write(
            &dir,
            "ciphertext_from_bytes",
            &format!("{name}.bin"),
            &ct.to_bytes(),
            crate::ciphertext_from_bytes,
        );
        write(
            &dir,
            "ciphertext_from_text",
            &format!("{name}.txt"),
            ct.to_text().as_bytes(),
            crate::ciphertext_from_text,
        );
        first.get_or_insert(ct);
    }
    let ct = first.expect("one ciphertext");
    for share in shares {
        let i = share.index();
        let holder_key = keys.holder_key(i).expect("holder key");
        let p = partial_decrypt(&mut rng, share, &holder_key, key_id, version, &ct, &context)
            .expect("partial");
        write(
            &dir,
            "partial_from_bytes",
            &format!("holder{}.bin", i.get()),
            &p.to_bytes(),
            crate::partial_from_bytes,
        );
    }

    // Key sets.
    write(
        &dir,
        "public_key_set_from_bytes",
        "t2_n3.bin",
        &keys.to_bytes(),
        crate::public_key_set_from_bytes,
    );
    write(
        &dir,
        "public_key_set_from_bytes",
        "t2_n3_refreshed.bin",
        &refreshed.keys.to_bytes(),
        crate::public_key_set_from_bytes,
    );
    write(
        &dir,
        "public_key_set_from_bytes",
        "t3_n5.bin",
        &reshared.keys.to_bytes(),
        crate::public_key_set_from_bytes,
    );

    // Public messages: a generation deal (with proof), refresh and reshare
    // deals (without), each with its sealed shares, and a complaint (with
    // its share reveal) against the first generation deal.
    let msg = "public_message_from_bytes";
    write(
        &dir,
        msg,
        "deal_generate.bin",
        &dkg.transcript.deals[0].to_bytes(),
        crate::public_message_from_bytes,
    );
    write(
        &dir,
        msg,
        "deal_refresh.bin",
        &refreshed.transcript.deals[0].to_bytes(),
        crate::public_message_from_bytes,
    );
    write(
        &dir,
        msg,
        "deal_reshare.bin",
        &reshared.transcript.deals[0].to_bytes(),
        crate::public_message_from_bytes,
    );
    let PublicMessage::Deal(deal) = &dkg.transcript.deals[0] else {
        panic!("the transcript's deals are deals");
    };
    let complaint = testing::complaint_against(&mut rng, deal, &holders(3), idx(2))
        .expect("holder 2 receives in generation");
    write(
        &dir,
        msg,
        "complaint.bin",
        &PublicMessage::Complaint(complaint).to_bytes(),
        crate::public_message_from_bytes,
    );

    // DKG public keys (the fixed test keys of `qk_crypto::testing::dkg_key`).
    for i in [1, 2, 5] {
        write(
            &dir,
            "dkg_public_key_from_bytes",
            &format!("holder{i}.bin"),
            &testing::dkg_key(idx(i)).public_key().to_bytes(),
            crate::dkg_public_key_from_bytes,
        );
    }

    // Secret encodings (test values only).
    for s in shares {
        let name = format!("t2_holder{}.bin", s.index().get());
        write(
            &dir,
            "key_share_from_bytes",
            &name,
            &s.to_secret_bytes(),
            crate::key_share_from_bytes,
        );
    }
    for s in reshared.shares.iter().skip(3) {
        let name = format!("t3_holder{}.bin", s.index().get());
        write(
            &dir,
            "key_share_from_bytes",
            &name,
            &s.to_secret_bytes(),
            crate::key_share_from_bytes,
        );
    }
}
