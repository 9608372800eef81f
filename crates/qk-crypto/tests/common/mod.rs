//! Test driver: runs sessions in process, delivering broadcasts in one order
//! to everyone (as the Raft log would) and private shares point to point.
#![allow(dead_code)]

use std::collections::BTreeMap;

use qk_crypto::{
    Ciphertext, KeyShare, Outgoing, PartialDecryption, Participant, PublicKeySet, PublicMessage,
    SessionConfig, SessionKind, SessionOutput,
};
use qk_types::{KeyId, KeyVersion, ShareIndex};
use rand::rngs::StdRng;
use rand::SeedableRng;

pub const KEY: KeyId = KeyId([7u8; 16]);
pub const V1: KeyVersion = KeyVersion(1);

pub fn idx(i: u16) -> ShareIndex {
    ShareIndex::new(i).expect("valid index")
}

pub fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

/// What a faulty participant does to its outgoing messages. `None` drops it.
pub type Tamper<'a> = dyn FnMut(ShareIndex, Outgoing) -> Option<Outgoing> + 'a;

pub struct Outcome {
    pub outputs: BTreeMap<ShareIndex, SessionOutput>,
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

fn deliver(
    parts: &mut BTreeMap<ShareIndex, Participant>,
    from: ShareIndex,
    out: Vec<Outgoing>,
    log: &mut Vec<PublicMessage>,
    tamper: &mut Tamper<'_>,
) {
    for msg in out {
        match tamper(from, msg) {
            Some(Outgoing::Broadcast(m)) => log.push(m),
            Some(Outgoing::Send(share)) => {
                if let Some(p) = parts.get_mut(&share.receiver) {
                    p.handle_private(share).expect("private share accepted");
                }
            }
            None => {}
        }
    }
}

/// Hands every logged message to every participant, in order, until quiet.
fn drain_log(
    parts: &mut BTreeMap<ShareIndex, Participant>,
    log: &mut Vec<PublicMessage>,
    tamper: &mut Tamper<'_>,
) {
    let mut next = 0;
    while next < log.len() {
        let msg = log[next].clone();
        next += 1;
        let ids: Vec<ShareIndex> = parts.keys().copied().collect();
        for id in ids {
            let p = parts.get_mut(&id).expect("participant");
            if let Ok(out) = p.handle_public(&msg) {
                let mut fresh = Vec::new();
                deliver(parts, id, out, &mut fresh, tamper);
                log.extend(fresh);
            }
        }
    }
    log.clear();
}

pub fn run_session(
    config: &SessionConfig,
    old_shares: &[KeyShare],
    seed: u64,
    tamper: &mut Tamper<'_>,
) -> Outcome {
    let mut rng = rng(seed);
    let mut members: Vec<ShareIndex> = config.dealers.clone();
    members.extend(config.receivers.iter().copied());
    members.sort();
    members.dedup();
    let mut parts = BTreeMap::new();
    for m in &members {
        let old = old_shares.iter().find(|s| s.index() == *m).cloned();
        parts.insert(
            *m,
            Participant::new(config.clone(), *m, old).expect("participant"),
        );
    }
    let mut log = Vec::new();
    for m in &members {
        let out = parts.get_mut(m).expect("p").start(&mut rng).expect("start");
        deliver(&mut parts, *m, out, &mut log, tamper);
    }
    drain_log(&mut parts, &mut log, tamper);
    for m in &members {
        let out = parts.get_mut(m).expect("p").close_dealing().expect("close");
        deliver(&mut parts, *m, out, &mut log, tamper);
    }
    drain_log(&mut parts, &mut log, tamper);
    let outputs = parts
        .into_iter()
        .map(|(id, mut p)| (id, p.finish().expect("finish")))
        .collect();
    Outcome { outputs }
}

pub fn honest(_: ShareIndex, m: Outgoing) -> Option<Outgoing> {
    Some(m)
}

pub fn generate(t: u16, n: u16, seed: u64) -> Outcome {
    let config = SessionConfig {
        session_id: [seed as u8; 32],
        kind: SessionKind::Generate,
        dealers: ShareIndex::first_n(n),
        receivers: ShareIndex::first_n(n),
        threshold: t,
    };
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
