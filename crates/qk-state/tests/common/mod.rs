//! Shared by the state machine tests (each test file uses part of it).
#![allow(dead_code)]

use qk_state::{CreateKey, DkgStep, Operation};
use qk_types::{KeyVersion, NodeId};

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
/// deals, reports ready, posts no complaints and acks; the first holder
/// closes the phases. Pairs of (principal, operation).
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
    let first = holders[0];
    let mut log: Vec<_> = holders
        .iter()
        .map(|h| step(*h, DkgStep::Deal(vec![*h as u8; 40])))
        .collect();
    log.extend(holders.iter().map(|h| step(*h, DkgStep::Ready)));
    log.push(step(first, DkgStep::CloseDealing));
    log.extend(
        holders
            .iter()
            .map(|h| step(*h, DkgStep::Complaints(vec![]))),
    );
    log.push(step(first, DkgStep::Finish));
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
