//! Strict, bounded encoding of protocol messages. (No message carries a
//! DKG share: shares travel sealed inside deals in the log.)

use std::collections::BTreeMap;

use proptest::prelude::*;
use qk_protocol::message::{MAX_MESSAGE_LEN, MAX_REASON_LEN};
use qk_protocol::{MessageError, PartialRequest, ProtocolMessage};
use qk_types::{KeyId, KeyVersion};

fn request() -> PartialRequest {
    PartialRequest {
        op_id: 7,
        key: KeyId([3; 16]),
        name: "payments".into(),
        version: KeyVersion(2),
        ciphertext: vec![1, 2, 3, 4],
        context: BTreeMap::from([("tenant".to_string(), "acme".to_string())]),
        principal: "app".into(),
        epoch: Some(qk_types::Epoch(1)),
        min_applied: 12,
        proof: None,
    }
}

#[test]
fn messages_round_trip() {
    let msgs = [
        ProtocolMessage::PartialRequest(request()),
        ProtocolMessage::PartialResponse {
            op_id: 7,
            result: Ok(vec![5; qk_crypto::ecies::MAX_PARTIAL_LEN]),
        },
        ProtocolMessage::PartialResponse {
            op_id: 8,
            result: Err("version v1 of key \"k\" is destroyed".into()),
        },
    ];
    for m in msgs {
        let bytes = m.encode().expect("encode");
        assert_eq!(ProtocolMessage::decode(&bytes).expect("decode"), m);
    }
}

#[test]
fn decoding_is_strict() {
    let bytes = ProtocolMessage::PartialRequest(request())
        .encode()
        .expect("encode")
        .to_vec();
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert_eq!(
        ProtocolMessage::decode(&trailing),
        Err(MessageError::TrailingBytes(1))
    );
    assert!(matches!(
        ProtocolMessage::decode(&bytes[..bytes.len() - 1]),
        Err(MessageError::Malformed(_))
    ));
    assert!(matches!(
        ProtocolMessage::decode(&vec![0u8; MAX_MESSAGE_LEN + 1]),
        Err(MessageError::TooLarge { .. })
    ));
    // Field bounds hold on both sides.
    let long = ProtocolMessage::PartialResponse {
        op_id: 1,
        result: Err("x".repeat(MAX_REASON_LEN + 1)),
    };
    assert!(matches!(long.encode(), Err(MessageError::OutOfBounds(_))));
    let mut req = request();
    req.principal = "p".repeat(1_000);
    let encoded = postcard::to_allocvec(&ProtocolMessage::PartialRequest(req)).expect("raw");
    assert!(matches!(
        ProtocolMessage::decode(&encoded),
        Err(MessageError::OutOfBounds(_))
    ));
}

proptest! {
    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = ProtocolMessage::decode(&bytes);
    }
}

/// A request with every bounded field at its limit (no proof).
fn largest_request() -> PartialRequest {
    use qk_crypto::ecies::MAX_CIPHERTEXT_LEN;
    use qk_protocol::message::*;
    let context = (0..MAX_CONTEXT_ENTRIES)
        .map(|i| {
            let mut key = format!("{i:03}");
            key.push_str(&"k".repeat(MAX_CONTEXT_KEY_LEN - key.len()));
            (key, "v".repeat(MAX_CONTEXT_VALUE_LEN))
        })
        .collect();
    PartialRequest {
        name: "n".repeat(MAX_KEY_NAME_LEN),
        ciphertext: vec![9; MAX_CIPHERTEXT_LEN],
        context,
        principal: "p".repeat(MAX_PRINCIPAL_LEN),
        op_id: u64::MAX,
        min_applied: u64::MAX,
        ..request()
    }
}

/// Encodes `req` within the message bound, decodes it back, and gives its
/// encoded length.
fn fits_and_round_trips(req: &PartialRequest) -> usize {
    let bytes = ProtocolMessage::PartialRequest(req.clone())
        .encode()
        .expect("at the limits");
    assert!(bytes.len() <= MAX_MESSAGE_LEN, "{} bytes", bytes.len());
    assert_eq!(
        ProtocolMessage::decode(&bytes),
        Ok(ProtocolMessage::PartialRequest(req.clone()))
    );
    bytes.len()
}

fn refused(req: PartialRequest) -> bool {
    matches!(
        ProtocolMessage::PartialRequest(req).encode(),
        Err(MessageError::OutOfBounds(_))
    )
}

#[test]
fn the_largest_legal_request_fits_and_one_more_byte_in_any_field_is_refused() {
    let max = largest_request();
    fits_and_round_trips(&max);
    let one_more = |edit: &dyn Fn(&mut PartialRequest)| {
        let mut r = max.clone();
        edit(&mut r);
        refused(r)
    };
    assert!(one_more(&|r| r.ciphertext.push(0)));
    assert!(one_more(&|r| r.name.push('n')));
    assert!(one_more(&|r| r.principal.push('p')));
    assert!(one_more(&|r| {
        r.context.pop_first();
        r.context.insert("k".repeat(257), "v".into());
    }));
    assert!(one_more(&|r| {
        r.context.pop_first();
        r.context.insert("k".into(), "v".repeat(1025));
    }));
    assert!(one_more(&|r| {
        r.context.pop_first();
        r.context.insert("a".into(), "b".into());
        r.context.insert("c".into(), "d".into());
    }));
}

#[test]
fn a_response_at_its_limits_encodes_and_one_byte_more_is_refused() {
    use qk_crypto::ecies::MAX_PARTIAL_LEN;
    let partial = |len: usize| ProtocolMessage::PartialResponse {
        op_id: 1,
        result: Ok(vec![1; len]),
    };
    let reason = |len: usize| ProtocolMessage::PartialResponse {
        op_id: 1,
        result: Err("r".repeat(len)),
    };
    assert!(partial(MAX_PARTIAL_LEN).encode().is_ok());
    assert!(partial(MAX_PARTIAL_LEN + 1).encode().is_err());
    assert!(reason(MAX_REASON_LEN).encode().is_ok());
    assert!(reason(MAX_REASON_LEN + 1).encode().is_err());
}

#[test]
fn only_bytes_over_the_limit_are_refused_before_parsing() {
    let at_limit = vec![0xff; MAX_MESSAGE_LEN];
    assert!(matches!(
        ProtocolMessage::decode(&at_limit),
        Err(MessageError::Malformed(_))
    ));
    let over = vec![0xff; MAX_MESSAGE_LEN + 1];
    assert!(matches!(
        ProtocolMessage::decode(&over),
        Err(MessageError::TooLarge { .. })
    ));
}

/// The largest proof the bounds allow: a session grant with the largest
/// certificate, principal and signatures.
fn largest_proof() -> qk_state::proof::IntentProof {
    use qk_state::proof::{IntentProof, SessionGrant, Signer};
    IntentProof {
        signer: Signer::Session(SessionGrant {
            cert_der: vec![7; 4 * 1024],
            principal: "p".repeat(128),
            session_key: [5; 32],
            expires_ms: u64::MAX,
            signature: vec![6; 160],
        }),
        requester: u64::MAX,
        time_ms: u64::MAX,
        signature: vec![4; 160],
    }
}

#[test]
fn the_largest_request_with_the_largest_proof_fits_the_message_bound_closely() {
    let mut max = largest_request();
    max.proof = Some(Box::new(largest_proof()));
    max.epoch = Some(qk_types::Epoch(u64::MAX));
    max.version = KeyVersion(u32::MAX);
    let len = fits_and_round_trips(&max);
    // The bound is the largest legal message plus a little slack, no more:
    // a looser bound would let a peer make every node buffer more.
    let slack = MAX_MESSAGE_LEN - len;
    assert!(slack < 256, "{slack} bytes of slack over {len} bytes");
}
