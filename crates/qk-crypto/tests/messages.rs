//! DKG messages on the wire: the largest deal and complaint fill their
//! bounds exactly, one byte more is refused unread, and every count and
//! flag a deal carries is checked on decode.

use qk_crypto::messages::{MAX_COMPLAINT_LEN, MAX_DEAL_LEN};
use qk_crypto::share_box::SEALED_SHARE_LEN;
use qk_crypto::testing::{complaint_against, config, dkg_key};
use qk_crypto::{Complaint, Deal, DecodeError, Participant, SessionKind};
use qk_types::{ShareIndex, MAX_HOLDERS};
use rand::rngs::StdRng;
use rand::SeedableRng;

/// Dealer 1's deal in a generation of `t` of `n`.
fn deal(t: u16, n: u16, rng: &mut StdRng) -> (Deal, Vec<ShareIndex>) {
    let holders = ShareIndex::first_n(n);
    let cfg = config(
        [9; 32],
        SessionKind::Generate,
        holders.clone(),
        holders.clone(),
        t,
    );
    let first = holders[0];
    let mut dealer = Participant::new(cfg, first, None, Some(dkg_key(first))).expect("participant");
    let deal = dealer
        .start(rng)
        .expect("start")
        .expect("a generation dealer deals");
    (deal, holders)
}

fn too_large(e: Result<impl std::fmt::Debug, DecodeError>) -> bool {
    matches!(e, Err(DecodeError::TooLarge { .. }))
}

#[test]
fn the_largest_deal_and_complaint_fill_their_bounds_and_one_byte_more_is_refused() {
    let mut rng = StdRng::seed_from_u64(1);
    let (largest, holders) = deal(MAX_HOLDERS, MAX_HOLDERS, &mut rng);
    let mut bytes = largest.to_bytes();
    assert_eq!(bytes.len(), MAX_DEAL_LEN);
    assert_eq!(Deal::from_bytes(&bytes).expect("decodes"), largest);
    bytes.push(0);
    assert!(too_large(Deal::from_bytes(&bytes)));

    let complaint = complaint_against(&mut rng, &largest, &holders, holders[1]).expect("complaint");
    let mut bytes = complaint.to_bytes();
    assert_eq!(bytes.len(), MAX_COMPLAINT_LEN);
    assert_eq!(Complaint::from_bytes(&bytes).expect("decodes"), complaint);
    bytes.push(0);
    assert!(too_large(Complaint::from_bytes(&bytes)));
}

#[test]
fn a_deal_with_counts_or_a_proof_flag_out_of_range_is_refused() {
    let mut rng = StdRng::seed_from_u64(2);
    let (small, _) = deal(2, 3, &mut rng);
    let bytes = small.to_bytes();
    // version, tag, session id (32), dealer (2), then the commitment count.
    let count_at = 2 + 32 + 2;
    let flag_at = count_at + 2 + 2 * 33;
    let share_count_at = bytes.len() - 3 * SEALED_SHARE_LEN - 2;
    let with = |at: usize, value: &[u8]| {
        let mut b = bytes.clone();
        b[at..at + value.len()].copy_from_slice(value);
        Deal::from_bytes(&b)
    };
    let invalid = |r: Result<Deal, DecodeError>, what: &str| {
        assert!(
            matches!(&r, Err(DecodeError::InvalidField { reason, .. }) if reason.contains(what)),
            "{what}: {r:?}"
        );
    };
    for count in [0u16, MAX_HOLDERS + 1] {
        invalid(with(count_at, &count.to_be_bytes()), "commitment count");
        invalid(
            with(share_count_at, &count.to_be_bytes()),
            "sealed share count",
        );
    }
    invalid(with(flag_at, &[2]), "proof flag");
    assert_eq!(
        with(count_at, &2u16.to_be_bytes()).expect("as dealt"),
        small
    );
}

/// A refresh deal carries no proof of knowledge (flag 0); it must decode,
/// alone and as a `PublicMessage`, to the same deal.
#[test]
fn a_refresh_deal_without_a_proof_of_knowledge_round_trips() {
    let mut rng = StdRng::seed_from_u64(31);
    let (keys, shares) = qk_crypto::testing::generate(2, 3, &mut rng);
    let holders = keys.holders().to_vec();
    let cfg = config(
        [7; 32],
        SessionKind::Refresh { old: keys.clone() },
        holders.clone(),
        holders.clone(),
        2,
    );
    let first = holders[0];
    let mut dealer = Participant::new(cfg, first, Some(shares[0].clone()), Some(dkg_key(first)))
        .expect("participant");
    let deal = dealer
        .start(&mut rng)
        .expect("start")
        .expect("a refresh dealer deals");
    assert!(
        deal.pok.is_none(),
        "a refresh deal has no proof of knowledge"
    );
    let bytes = deal.to_bytes();
    assert_eq!(Deal::from_bytes(&bytes).expect("decodes"), deal);
    let message = qk_crypto::PublicMessage::Deal(deal.clone());
    assert_eq!(message.to_bytes(), bytes);
    assert_eq!(
        qk_crypto::PublicMessage::from_bytes(&bytes).expect("decodes"),
        message
    );
}
