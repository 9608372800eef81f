//! Seed inputs for the fuzz targets: `cargo test --lib` (re)writes
//! `seeds/<target>/*` from a deterministic in-process DKG, refresh and
//! reshare, and checks that every seed passes its target's round trip.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use k256::elliptic_curve::Field;
use k256::Scalar;
use qk_crypto::{
    partial_decrypt, wrap, Ciphertext, Complaint, EncryptionContext, Justification, KeyShare,
    Outgoing, Participant, PrivateShare, PublicKeySet, PublicMessage, SessionConfig, SessionKind,
    SessionOutput,
};
use qk_types::{KeyId, KeyVersion, ShareIndex};
use rand::rngs::StdRng;
use rand::SeedableRng;

fn idx(i: u16) -> ShareIndex {
    ShareIndex::new(i).expect("index in 1..=64")
}

/// Everything one honest in-process session produced.
struct Run {
    outputs: BTreeMap<ShareIndex, SessionOutput>,
    public: Vec<PublicMessage>,
    private: Vec<PrivateShare>,
}

impl Run {
    fn keys(&self) -> &PublicKeySet {
        &self
            .outputs
            .values()
            .next()
            .expect("at least one participant")
            .keys
    }

    fn shares(&self) -> BTreeMap<ShareIndex, KeyShare> {
        self.outputs
            .iter()
            .filter_map(|(i, o)| o.share.clone().map(|s| (*i, s)))
            .collect()
    }
}

fn run_session(
    rng: &mut StdRng,
    config: &SessionConfig,
    old: &BTreeMap<ShareIndex, KeyShare>,
) -> Run {
    let mut everyone: Vec<ShareIndex> = config
        .dealers
        .iter()
        .chain(&config.receivers)
        .copied()
        .collect();
    everyone.sort();
    everyone.dedup();
    let mut parts: BTreeMap<ShareIndex, Participant> = everyone
        .iter()
        .map(|i| {
            let p = Participant::new(config.clone(), *i, old.get(i).cloned()).expect("participant");
            (*i, p)
        })
        .collect();
    let mut public = Vec::new();
    let mut private = Vec::new();
    for p in parts.values_mut() {
        for out in p.start(rng).expect("start") {
            match out {
                Outgoing::Broadcast(m) => public.push(m),
                Outgoing::Send(s) => private.push(s),
            }
        }
    }
    for s in &private {
        parts
            .get_mut(&s.receiver)
            .expect("receiver")
            .handle_private(s.clone())
            .expect("private share");
    }
    for m in &public {
        for p in parts.values_mut() {
            assert!(p.handle_public(m).expect("deal").is_empty());
        }
    }
    for p in parts.values_mut() {
        assert!(
            p.close_dealing().expect("close_dealing").is_empty(),
            "honest run has no complaints"
        );
    }
    let outputs = parts
        .iter_mut()
        .map(|(i, p)| (*i, p.finish().expect("finish")))
        .collect();
    Run {
        outputs,
        public,
        private,
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
    let gen = SessionConfig {
        session_id: [1; 32],
        kind: SessionKind::Generate,
        dealers: holders(3),
        receivers: holders(3),
        threshold: 2,
    };
    let dkg = run_session(&mut rng, &gen, &BTreeMap::new());
    let keys = dkg.keys().clone();
    let shares = dkg.shares();

    // Refresh (2, 3) and reshare (2, 3) -> (3, 5).
    let refresh = SessionConfig {
        session_id: [2; 32],
        kind: SessionKind::Refresh { old: keys.clone() },
        dealers: holders(3),
        receivers: holders(3),
        threshold: 2,
    };
    let refreshed = run_session(&mut rng, &refresh, &shares);
    let reshare = SessionConfig {
        session_id: [3; 32],
        kind: SessionKind::Reshare { old: keys.clone() },
        dealers: holders(3),
        receivers: holders(5),
        threshold: 3,
    };
    let reshared = run_session(&mut rng, &reshare, &shares);
    assert_eq!(reshared.keys().public_key(), keys.public_key());

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
    for (i, share) in &shares {
        let holder_key = keys.holder_key(*i).expect("holder key");
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
        &refreshed.keys().to_bytes(),
        crate::public_key_set_from_bytes,
    );
    write(
        &dir,
        "public_key_set_from_bytes",
        "t3_n5.bin",
        &reshared.keys().to_bytes(),
        crate::public_key_set_from_bytes,
    );

    // Public messages: a generation deal (with proof), refresh and reshare
    // deals (without), a complaint and a justification.
    let msg = "public_message_from_bytes";
    write(
        &dir,
        msg,
        "deal_generate.bin",
        &dkg.public[0].to_bytes(),
        crate::public_message_from_bytes,
    );
    write(
        &dir,
        msg,
        "deal_refresh.bin",
        &refreshed.public[0].to_bytes(),
        crate::public_message_from_bytes,
    );
    write(
        &dir,
        msg,
        "deal_reshare.bin",
        &reshared.public[0].to_bytes(),
        crate::public_message_from_bytes,
    );
    let complaint = PublicMessage::Complaint(Complaint {
        session_id: [1; 32],
        accuser: idx(2),
        accused: idx(1),
    });
    write(
        &dir,
        msg,
        "complaint.bin",
        &complaint.to_bytes(),
        crate::public_message_from_bytes,
    );
    let justification = PublicMessage::Justification(Justification {
        session_id: [1; 32],
        dealer: idx(1),
        accuser: idx(2),
        value: Scalar::random(&mut rng),
    });
    write(
        &dir,
        msg,
        "justification.bin",
        &justification.to_bytes(),
        crate::public_message_from_bytes,
    );

    // Secret encodings (test values only).
    for s in dkg
        .private
        .iter()
        .take(2)
        .chain(reshared.private.iter().take(1))
    {
        let name = format!(
            "s{:02x}_d{}_r{}.bin",
            s.session_id[0],
            s.dealer.get(),
            s.receiver.get()
        );
        write(
            &dir,
            "private_share_from_bytes",
            &name,
            &s.to_secret_bytes(),
            crate::private_share_from_bytes,
        );
    }
    for (i, s) in &shares {
        let name = format!("t2_holder{}.bin", i.get());
        write(
            &dir,
            "key_share_from_bytes",
            &name,
            &s.to_secret_bytes(),
            crate::key_share_from_bytes,
        );
    }
    for (i, s) in reshared.shares().iter().skip(3) {
        let name = format!("t3_holder{}.bin", i.get());
        write(
            &dir,
            "key_share_from_bytes",
            &name,
            &s.to_secret_bytes(),
            crate::key_share_from_bytes,
        );
    }
}
