//! Shared by the state machine tests (each test file uses part of it).
#![allow(dead_code)]

use qk_state::{Command, CreateKey, DkgStep, Operation, RequestId, StateMachine};
use qk_types::{KeyVersion, NodeId};

/// Node `n`'s DKG public key in these tests.
pub fn dkg_public_key(n: u64) -> Vec<u8> {
    qk_crypto::DkgSecretKey::from_seed(&[n as u8; 64])
        .public_key()
        .to_bytes()
        .to_vec()
}

/// Nodes 1-8 publish their DKG keys, as every node does at start-up.
pub fn publish_dkg_keys(sm: &mut StateMachine) {
    for n in 1..=8u64 {
        let mut id = [0xd6u8; 16];
        id[8..].copy_from_slice(&n.to_be_bytes());
        let r = sm.apply(&Command {
            request_id: RequestId(id),
            time_ms: 0,
            principal: NodeId(n).to_string(),
            op: Operation::PublishDkgKey {
                node: NodeId(n),
                public_key: dkg_public_key(n),
            },
            proof: None,
        });
        assert!(r.result.is_ok(), "{r:?}");
    }
}

/// Creates key `name` (2-of-n over `holders`, no schedule).
pub fn create_key(name: &str, holders: &[u64]) -> Operation {
    Operation::CreateKey(CreateKey {
        name: name.into(),
        description: String::new(),
        owner: "team".into(),
        purpose: "encrypt".into(),
        rotation_period_ms: None,
        expires_at_ms: None,
        threshold: 2,
        holders: holders.iter().map(|h| NodeId(*h)).collect(),
    })
}

/// The log of an honest DKG that ends with every holder's ack of
/// `public_keys` (the only way a version becomes enabled): each holder
/// deals (the last deal closes dealing), posts no complaints (the last list
/// ends the complaint phase) and acks. Pairs of (principal, operation).
pub fn dkg_until_enabled(
    name: &str,
    version: KeyVersion,
    holders: &[u64],
    public_keys: &[u8],
) -> Vec<(String, Operation)> {
    let step = |from: u64, step: DkgStep| {
        (
            NodeId(from).to_string(),
            Operation::Dkg {
                name: name.into(),
                version,
                from: NodeId(from),
                step,
                session: Default::default(),
            },
        )
    };
    let mut log: Vec<_> = holders
        .iter()
        .map(|h| step(*h, DkgStep::Deal(vec![*h as u8; 40])))
        .collect();
    log.extend(
        holders
            .iter()
            .map(|h| step(*h, DkgStep::Complaints(vec![]))),
    );
    log.extend(holders.iter().map(|h| {
        step(
            *h,
            DkgStep::Ack {
                public_keys: public_keys.to_vec(),
            },
        )
    }));
    log
}
