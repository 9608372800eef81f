//! Test helpers over `qk_crypto::testing` (the in-process session driver).
#![allow(dead_code)]

use std::collections::BTreeMap;

use qk_crypto::testing::{self, Transcript};
use qk_crypto::{
    Ciphertext, KeyShare, PartialDecryption, PublicKeySet, SessionConfig, SessionKind,
    SessionOutput,
};
use qk_types::{KeyId, KeyVersion, ShareIndex};
use rand::rngs::StdRng;
use rand::SeedableRng;

pub use qk_crypto::testing::{honest, Tamper};

pub const KEY: KeyId = KeyId([7u8; 16]);
pub const V1: KeyVersion = KeyVersion(1);

pub fn idx(i: u16) -> ShareIndex {
    ShareIndex::new(i).expect("valid index")
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

pub struct Outcome {
    pub outputs: BTreeMap<ShareIndex, SessionOutput>,
    pub transcript: Transcript,
}

impl Outcome {
    pub fn keys(&self) -> &PublicKeySet {
        &self.outputs.values().next().expect("one output").keys
    }
    pub fn shares(&self) -> Vec<KeyShare> {
        self.outputs
            .values()
            .filter_map(|o| o.share.clone())
            .collect()
    }
}

/// A config whose receivers use `qk_crypto::testing::dkg_key`.
pub fn session(
    id: u8,
    kind: SessionKind,
    dealers: Vec<ShareIndex>,
    receivers: Vec<ShareIndex>,
    threshold: u16,
) -> SessionConfig {
    testing::config([id; 32], kind, dealers, receivers, threshold)
}

pub fn run_session(
    config: &SessionConfig,
    old_shares: &[KeyShare],
    seed: u64,
    tamper: &mut Tamper<'_>,
) -> Outcome {
    let (outputs, transcript) = testing::run_session(config, old_shares, &mut rng(seed), tamper);
    Outcome {
        outputs,
        transcript,
    }
}

pub fn generate(t: u16, n: u16, seed: u64) -> Outcome {
    let holders = ShareIndex::first_n(n);
    let config = session(
        seed as u8,
        SessionKind::Generate,
        holders.clone(),
        holders,
        t,
    );
    run_session(&config, &[], seed, &mut honest)
}

pub fn partials(
    keys: &PublicKeySet,
    shares: &[KeyShare],
    ct: &Ciphertext,
    context: &qk_crypto::EncryptionContext,
    seed: u64,
) -> Vec<PartialDecryption> {
    let mut rng = rng(seed);
    shares
        .iter()
        .map(|s| {
            let hk = keys.holder_key(s.index()).expect("holder");
            qk_crypto::partial_decrypt(&mut rng, s, &hk, ct.key_id, ct.version, ct, context)
                .expect("partial")
        })
        .collect()
}

pub fn ctx(pairs: &[(&str, &str)]) -> qk_crypto::EncryptionContext {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
