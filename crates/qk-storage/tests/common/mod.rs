//! The storage tests' PKI: node-1..node-3 and admin enrolled in a key
//! roster (the state machine refuses any command its author did not sign).
#![allow(dead_code)]

use std::sync::Arc;

use qk_state::authn::KeyRoster;
use qk_state::proof::Credential;
use qk_state::{Command, Operation, RequestId};
use qk_types::NodeId;

const ENROLLED: [(&str, u8); 4] = [("node-1", 1), ("admin", 2), ("node-2", 3), ("node-3", 4)];

fn enrolled() -> (KeyRoster, Vec<(&'static str, Credential)>) {
    let mut roster = KeyRoster::new();
    let credentials = ENROLLED
        .iter()
        .map(|(name, seed)| {
            let c = roster.enroll(name, [*seed; 32], u64::MAX).expect("enroll");
            (*name, c)
        })
        .collect();
    (roster, credentials)
}

pub fn roster() -> Arc<KeyRoster> {
    Arc::new(enrolled().0)
}

/// Nodes 1-3 publish their DKG keys (keys are generated only over nodes
/// that did), signed, at `time_ms`.
pub fn dkg_keys_published(time_ms: u64) -> Vec<Command> {
    (1..=3u64)
        .map(|n| {
            let mut id = [0xd6u8; 16];
            id[8..].copy_from_slice(&n.to_be_bytes());
            let public_key = qk_crypto::DkgSecretKey::from_seed(&[n as u8; 64])
                .public_key()
                .to_bytes()
                .to_vec();
            signed(Command {
                request_id: RequestId(id),
                time_ms,
                principal: NodeId(n).to_string(),
                proof: None,
                op: Operation::PublishDkgKey {
                    node: NodeId(n),
                    public_key,
                },
            })
        })
        .collect()
}

/// `cmd` signed by its principal (node-1..3 or admin) at its own time.
pub fn signed(mut cmd: Command) -> Command {
    let (_, credentials) = enrolled();
    let credential = credentials
        .into_iter()
        .find(|(name, _)| *name == cmd.principal)
        .map(|(_, c)| c)
        .unwrap_or_else(|| panic!("no test credential for {}", cmd.principal));
    let proof = credential
        .sign_command(&cmd, cmd.time_ms)
        .expect("sign the command");
    cmd.proof = Some(Box::new(proof));
    cmd
}
