//! The storage tests' PKI: node-1 and admin enrolled in a key roster (the
//! state machine refuses any command its author did not sign).
#![allow(dead_code)]

use std::sync::Arc;

use qk_state::authn::KeyRoster;
use qk_state::proof::Credential;
use qk_state::Command;

const NODE_1_SEED: [u8; 32] = [1; 32];
const ADMIN_SEED: [u8; 32] = [2; 32];

fn enrolled() -> (KeyRoster, Credential, Credential) {
    let mut roster = KeyRoster::new();
    let node = roster
        .enroll("node-1", NODE_1_SEED, u64::MAX)
        .expect("enroll node-1");
    let admin = roster
        .enroll("admin", ADMIN_SEED, u64::MAX)
        .expect("enroll admin");
    (roster, node, admin)
}

pub fn roster() -> Arc<KeyRoster> {
    Arc::new(enrolled().0)
}

/// `cmd` signed by its principal (node-1 or admin) at its own time.
pub fn signed(mut cmd: Command) -> Command {
    let (_, node, admin) = enrolled();
    let credential = match cmd.principal.as_str() {
        "node-1" => node,
        "admin" => admin,
        other => panic!("no test credential for {other}"),
    };
    let proof = credential
        .sign_command(&cmd, cmd.time_ms)
        .expect("sign the command");
    cmd.proof = Some(Box::new(proof));
    cmd
}
