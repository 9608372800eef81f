//! Property tests: random (t, n) up to 16 and random holder subsets; decoders
//! never panic on arbitrary bytes.

mod common;

use common::*;
use proptest::prelude::*;
use qk_crypto::{combine, wrap, CombineMode, PartialDecryption};

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn random_subsets_of_t_decrypt_and_fewer_do_not(
        n in 2u16..=16,
        t_seed in any::<u16>(),
        subset_seed in any::<u64>(),
        seed in any::<u64>(),
        plaintext in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let t = 2 + t_seed % (n - 1);
        let out = generate(t, n, seed);
        let keys = out.keys();
        let c = ctx(&[("p", "q")]);
        let ct = wrap(&mut rng(seed ^ 1), &keys.public_key(), KEY, V1, &c, &plaintext).expect("wrap");
        let all = partials(keys, &out.shares(), &ct, &c, seed ^ 2);
        // A seeded shuffle picks the subset.
        let mut order: Vec<usize> = (0..usize::from(n)).collect();
        let mut s = subset_seed;
        for i in (1..order.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            order.swap(i, (s >> 33) as usize % (i + 1));
        }
        let pick = |k: usize| -> Vec<PartialDecryption> { order[..k].iter().map(|i| all[*i].clone()).collect() };
        let mode = if subset_seed % 2 == 0 { CombineMode::Optimistic } else { CombineMode::VerifyAll };
        let got = combine(keys, &ct, &c, &pick(usize::from(t)), mode).expect("t decrypt");
        prop_assert_eq!(got.plaintext.as_slice(), plaintext.as_slice());
        prop_assert!(combine(keys, &ct, &c, &pick(usize::from(t) - 1), mode).is_err());
    }

    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = qk_crypto::Ciphertext::from_bytes(&bytes);
        let _ = qk_crypto::Ciphertext::from_text(&String::from_utf8_lossy(&bytes));
        let _ = qk_crypto::PartialDecryption::from_bytes(&bytes);
        let _ = qk_crypto::PublicKeySet::from_bytes(&bytes);
        let _ = qk_crypto::PublicMessage::from_bytes(&bytes);
        let _ = qk_crypto::DkgPublicKey::from_bytes(&bytes);
        let _ = qk_crypto::KeyShare::from_secret_bytes(&bytes);
    }

    #[test]
    fn decoders_never_panic_on_mutated_valid_values(
        which in 0usize..5, pos in any::<usize>(), byte in any::<u8>(), cut in any::<bool>()
    ) {
        let valid = sample_encodings();
        let mut bytes = valid[which % valid.len()].clone();
        let at = pos % bytes.len();
        if cut { bytes.truncate(at); } else { bytes[at] = byte; }
        let _ = qk_crypto::Ciphertext::from_bytes(&bytes);
        let _ = qk_crypto::PartialDecryption::from_bytes(&bytes);
        let _ = qk_crypto::PublicKeySet::from_bytes(&bytes);
        let _ = qk_crypto::PublicMessage::from_bytes(&bytes);
        let _ = qk_crypto::KeyShare::from_secret_bytes(&bytes);
    }
}

fn sample_encodings() -> Vec<Vec<u8>> {
    let out = generate(2, 3, 77);
    let keys = out.keys();
    let c = ctx(&[]);
    let ct = wrap(&mut rng(1), &keys.public_key(), KEY, V1, &c, b"abc").expect("wrap");
    let p = partials(keys, &out.shares(), &ct, &c, 2);
    vec![
        ct.to_bytes(),
        p[0].to_bytes(),
        keys.to_bytes(),
        out.shares()[0].to_secret_bytes().to_vec(),
        out.transcript.deals[0].to_bytes(),
        qk_crypto::testing::complaint_against(
            &mut rng(3),
            match &out.transcript.deals[1] {
                qk_crypto::PublicMessage::Deal(d) => d,
                qk_crypto::PublicMessage::Complaint(_) => panic!("deals first"),
            },
            keys.holders(),
            idx(1),
        )
        .expect("holder 1 is a receiver")
        .to_bytes(),
    ]
}

#[test]
fn every_encoding_round_trips() {
    let out = generate(3, 4, 78);
    let keys = out.keys();
    let c = ctx(&[("a", "b")]);
    let ct = wrap(&mut rng(1), &keys.public_key(), KEY, V1, &c, b"round").expect("wrap");
    assert_eq!(
        qk_crypto::Ciphertext::from_bytes(&ct.to_bytes()).expect("ct"),
        ct
    );
    let p = &partials(keys, &out.shares(), &ct, &c, 2)[0];
    assert_eq!(
        &PartialDecryption::from_bytes(&p.to_bytes()).expect("partial"),
        p
    );
    assert_eq!(
        &qk_crypto::PublicKeySet::from_bytes(&keys.to_bytes()).expect("keys"),
        keys
    );
    let share = &out.shares()[0];
    let back = qk_crypto::KeyShare::from_secret_bytes(&share.to_secret_bytes()).expect("share");
    assert_eq!(back.to_secret_bytes(), share.to_secret_bytes());
    let mut bytes = ct.to_bytes();
    bytes.push(0);
    assert!(
        qk_crypto::Ciphertext::from_bytes(&bytes).is_err(),
        "trailing bytes refused"
    );
}

#[test]
fn debug_output_never_shows_secret_bytes() {
    let out = generate(2, 3, 79);
    for share in out.shares() {
        let secret = share.to_secret_bytes();
        let scalar_hex: String = secret[4..].iter().map(|b| format!("{b:02x}")).collect();
        let debug = format!("{share:?} {:?}", out.outputs.values().next().expect("o"));
        assert!(debug.contains("redacted"));
        assert!(
            !debug.to_lowercase().contains(&scalar_hex),
            "share bytes leaked in Debug"
        );
        assert!(
            !debug.contains(&format!("{:?}", &secret[4..])),
            "share bytes leaked in Debug"
        );
    }
}
