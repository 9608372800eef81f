//! In-process session driver for tests, benchmarks and fuzz seeds (feature
//! `testing`): delivers every broadcast to every participant in one order,
//! as the Raft log would. Never part of a node.

use std::collections::BTreeMap;

use qk_types::ShareIndex;
use rand_core::CryptoRng;

use crate::messages::PublicMessage;
use crate::secret::KeyShare;
use crate::session::{Participant, SessionConfig, SessionKind, SessionOutput};
use crate::share_box::{DkgPublicKey, DkgSecretKey};
use crate::PublicKeySet;

/// A fixed DKG key per index (test data only).
pub fn dkg_key(index: ShareIndex) -> DkgSecretKey {
    let mut seed = [0x5au8; 64];
    seed[..2].copy_from_slice(&index.get().to_be_bytes());
    DkgSecretKey::from_seed(&seed)
}

/// The public keys of [`dkg_key`] for `receivers`.
pub fn receiver_keys(receivers: &[ShareIndex]) -> BTreeMap<ShareIndex, DkgPublicKey> {
    receivers
        .iter()
        .map(|r| (*r, dkg_key(*r).public_key()))
        .collect()
}

/// A config with [`receiver_keys`].
pub fn config(
    session_id: [u8; 32],
    kind: SessionKind,
    dealers: Vec<ShareIndex>,
    receivers: Vec<ShareIndex>,
    threshold: u16,
) -> SessionConfig {
    SessionConfig {
        session_id,
        kind,
        receiver_keys: receiver_keys(&receivers),
        dealers,
        receivers,
        threshold,
    }
}

/// What a faulty participant does to a message it broadcasts; `None` drops it.
pub type Tamper<'a> = dyn FnMut(ShareIndex, PublicMessage) -> Option<PublicMessage> + 'a;

/// Leaves every message as it is.
pub fn honest(_: ShareIndex, m: PublicMessage) -> Option<PublicMessage> {
    Some(m)
}

/// Every broadcast of one run, in log order.
#[derive(Debug, Default)]
pub struct Transcript {
    pub deals: Vec<PublicMessage>,
    pub complaints: Vec<PublicMessage>,
}

/// Runs one session: every participant deals, every deal reaches everyone,
/// every participant complains, every complaint reaches everyone, then all
/// finish. Panics when a participant cannot be built or cannot finish.
pub fn run_session<R: CryptoRng + ?Sized>(
    config: &SessionConfig,
    old_shares: &[KeyShare],
    rng: &mut R,
    tamper: &mut Tamper<'_>,
) -> (BTreeMap<ShareIndex, SessionOutput>, Transcript) {
    let mut everyone: Vec<ShareIndex> = config.dealers.clone();
    everyone.extend(config.receivers.iter().copied());
    everyone.sort();
    everyone.dedup();
    let mut parts: BTreeMap<ShareIndex, Participant> = everyone
        .iter()
        .map(|i| {
            let old = old_shares.iter().find(|s| s.index() == *i).cloned();
            let key = config.receiver_keys.contains_key(i).then(|| dkg_key(*i));
            let p = Participant::new(config.clone(), *i, old, key).expect("participant");
            (*i, p)
        })
        .collect();
    let mut transcript = Transcript::default();
    for (i, p) in parts.iter_mut() {
        if let Some(deal) = p.start(rng).expect("start") {
            transcript
                .deals
                .extend(tamper(*i, PublicMessage::Deal(deal)));
        }
    }
    deliver(&mut parts, &transcript.deals);
    for (i, p) in parts.iter_mut() {
        for c in p.close_dealing(rng).expect("close_dealing") {
            transcript
                .complaints
                .extend(tamper(*i, PublicMessage::Complaint(c)));
        }
    }
    deliver(&mut parts, &transcript.complaints);
    let outputs = parts
        .into_iter()
        .map(|(i, mut p)| (i, p.finish().expect("finish")))
        .collect();
    (outputs, transcript)
}

fn deliver(parts: &mut BTreeMap<ShareIndex, Participant>, log: &[PublicMessage]) {
    for m in log {
        for p in parts.values_mut() {
            // A refused message changes nothing; the tests look at outputs.
            let _ = p.handle_public(m);
        }
    }
}

/// A `t`-of-`n` key from an honest in-process DKG: its key set and shares.
pub fn generate<R: CryptoRng + ?Sized>(
    t: u16,
    n: u16,
    rng: &mut R,
) -> (PublicKeySet, Vec<KeyShare>) {
    let holders = ShareIndex::first_n(n);
    let config = config(
        [0x42; 32],
        SessionKind::Generate,
        holders.clone(),
        holders,
        t,
    );
    let (outputs, _) = run_session(&config, &[], rng, &mut honest);
    keys_and_shares(outputs)
}

/// The key set every participant agreed on, and the receivers' shares.
pub fn keys_and_shares(
    outputs: BTreeMap<ShareIndex, SessionOutput>,
) -> (PublicKeySet, Vec<KeyShare>) {
    let keys = outputs
        .values()
        .next()
        .expect("at least one participant")
        .keys
        .clone();
    let shares = outputs.into_values().filter_map(|o| o.share).collect();
    (keys, shares)
}

/// The complaint `accuser` (with its [`dkg_key`]) would file against the
/// dealer of `deal`, whatever the share holds: what a lying receiver can
/// post. `None` when `accuser` is not among `receivers`.
pub fn complaint_against<R: CryptoRng + ?Sized>(
    rng: &mut R,
    deal: &crate::messages::Deal,
    receivers: &[ShareIndex],
    accuser: ShareIndex,
) -> Option<crate::messages::Complaint> {
    let position = receivers.iter().position(|r| *r == accuser)?;
    let sealed = deal.shares.get(position)?;
    let slot = crate::share_box::BoxSlot {
        session_id: deal.session_id,
        dealer: deal.dealer,
        receiver: accuser,
    };
    Some(crate::messages::Complaint {
        session_id: deal.session_id,
        accuser,
        accused: deal.dealer,
        reveal: Some(sealed.reveal(rng, &dkg_key(accuser), &slot)),
    })
}

/// Replaces the box `receiver` finds in `deal` with a properly sealed (and
/// proven) random value: what a dealer that deals a wrong share posts.
pub fn seal_a_wrong_share<R: CryptoRng + ?Sized>(
    rng: &mut R,
    deal: &mut crate::messages::Deal,
    receivers: &[ShareIndex],
    receiver: ShareIndex,
) {
    let Some(position) = receivers.iter().position(|r| *r == receiver) else {
        return;
    };
    let slot = crate::share_box::BoxSlot {
        session_id: deal.session_id,
        dealer: deal.dealer,
        receiver,
    };
    let wrong = crate::secret::SecretScalar::random(rng);
    if let Some(sealed) = deal.shares.get_mut(position) {
        *sealed = crate::share_box::SealedShare::seal(
            rng,
            &dkg_key(receiver).public_key(),
            &slot,
            &wrong,
        );
    }
}
