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
