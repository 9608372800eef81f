//! The holder's rules: a partial only for the principal's own proof of
//! exactly this request, and what a restarted node does with each stored
//! share.

mod common;

use common::*;
use qk_protocol::{
    authorize_partial, check_intent_proof, holder_partial, stored_share, PartialRequest,
    StoredShare,
};
use qk_state::authn::KeyRoster;
use qk_state::proof::{Credential, Intent, ProofError};
use qk_state::{ApprovalRule, KeyPolicy, Operation, PendingAction, Permission, Role};
use qk_types::{Epoch, KeyVersion, NodeId};
use rand::SeedableRng;
use sha2::{Digest, Sha256};

const NOW_MS: u64 = 1_700_000_000_000;

fn request(ciphertext: &[u8], principal: &str) -> PartialRequest {
    PartialRequest {
        op_id: 1,
        key: qk_types::KeyId([7; 16]),
        name: KEY.into(),
        version: V1,
        ciphertext: ciphertext.to_vec(),
        context: ctx(),
        principal: principal.into(),
        epoch: None,
        min_applied: 0,
        proof: None,
    }
}

/// `request` with `credential`'s proof for node `requester` at `time_ms`.
fn signed(credential: &Credential, mut req: PartialRequest, requester: u64) -> PartialRequest {
    let intent = Intent {
        principal: &req.principal,
        ciphertext: &req.ciphertext,
        context: &req.context,
    };
    let proof = credential.prove(&intent, requester, NOW_MS).expect("signs");
    req.proof = Some(Box::new(proof));
    req
}

fn roster() -> (KeyRoster, Credential, Credential) {
    let mut roster = KeyRoster::new();
    let app = roster.enroll("app", [1; 32], u64::MAX).expect("enrol");
    let admin = roster.enroll("admin", [2; 32], u64::MAX).expect("enrol");
    (roster, app, admin)
}

fn check(roster: &KeyRoster, from: u64, req: &PartialRequest) -> Result<(), String> {
    let no_tokens = |id: &str| Err(ProofError::Signer(format!("no token {id}")));
    check_intent_proof(NodeId(from), req, NOW_MS, roster, no_tokens).map_err(|e| e.to_string())
}

#[test]
fn a_partial_needs_the_principals_own_proof_of_exactly_this_request() {
    let (roster, app, admin) = roster();
    let honest = signed(&app, request(b"ct", "app"), 2);
    check(&roster, 2, &honest).expect("the principal's own proof for its node");

    let missing = check(&roster, 2, &request(b"ct", "app")).expect_err("no proof");
    assert!(missing.contains("app"), "{missing}");

    let relayed = check(&roster, 3, &honest).expect_err("another node replays it");
    assert!(relayed.contains('3') && relayed.contains('2'), "{relayed}");

    let mut other_ciphertext = honest.clone();
    other_ciphertext.ciphertext = b"another".to_vec();
    check(&roster, 2, &other_ciphertext).expect_err("the proof covers one ciphertext");

    let mut other_context = honest.clone();
    other_context
        .context
        .insert("tenant".into(), "other".into());
    check(&roster, 2, &other_context).expect_err("the proof covers one context");

    let mut renamed = honest.clone();
    renamed.principal = "admin".into();
    check(&roster, 2, &renamed).expect_err("app's proof does not speak for admin");

    let as_admin = signed(&app, request(b"ct", "admin"), 2);
    let wrong = check(&roster, 2, &as_admin).expect_err("app signs in admin's name");
    assert!(wrong.contains("admin"), "{wrong}");
    check(&roster, 2, &signed(&admin, request(b"ct", "admin"), 2)).expect("admin's own");

    let made_up = KeyRoster::new()
        .enroll("app", [9; 32], u64::MAX)
        .expect("enrol");
    check(&roster, 2, &signed(&made_up, request(b"ct", "app"), 2))
        .expect_err("a grant the cluster never issued");

    let stale = check_intent_proof(
        NodeId(2),
        &honest,
        NOW_MS + 3_600_000,
        &roster,
        |_: &str| Err(ProofError::Signer("no tokens".into())),
    )
    .expect_err("an hour-old proof");
    assert!(matches!(stale, ProofError::Stale { .. }), "{stale}");
    assert!(stale.to_string().contains("clock"), "{stale}");
}

#[test]
fn a_token_proof_is_checked_against_the_tokens_own_key() {
    let (roster, _, _) = roster();
    let token = Credential::from_token("t1", "secret-of-app");
    let req = signed(&token, request(b"ct", "app"), 2);
    let key = qk_state::proof::token_verify_key("secret-of-app").expect("key");
    let app_token = |_: &str| Ok(("app".to_string(), key));
    check_intent_proof(NodeId(2), &req, NOW_MS, &roster, app_token).expect("app's token");
    let someone_elses = |_: &str| Ok(("ops".to_string(), key));
    check_intent_proof(NodeId(2), &req, NOW_MS, &roster, someone_elses)
        .expect_err("the token belongs to another principal");
    let other_key = qk_state::proof::token_verify_key("another").expect("key");
    let rotated = |_: &str| Ok(("app".to_string(), other_key));
    check_intent_proof(NodeId(2), &req, NOW_MS, &roster, rotated)
        .expect_err("signed with another token's secret");
}

fn fate(c: &Cluster, node: u64, epoch: u64, share_of: u64) -> StoredShare {
    let id = c.key().id;
    let share = c.node(share_of).store.get(&(id, V1, Epoch(epoch))).cloned();
    stored_share(c.state(), NodeId(node), (id, V1, Epoch(epoch)), || {
        Ok::<_, String>(share)
    })
}

#[test]
fn a_restarted_holder_keeps_good_shares_and_refuses_foreign_ones() {
    let c = Cluster::generated(2, 3, 41);
    assert_eq!(fate(&c, 1, 0, 1), StoredShare::Keep);
    let StoredShare::Refuse(reason) = fate(&c, 1, 0, 2) else {
        panic!("node 2's share passed as node 1's");
    };
    assert!(reason.contains("index 2, not this node's"), "{reason}");
    assert!(reason.contains("restore"), "{reason}");
    let mut c = c;
    let id = c.key().id;
    // Node 1's index over node 2's secret (the encoding ends in the scalar).
    let own = c.node(1).store[&(id, V1, Epoch(0))].to_secret_bytes();
    let other = c.node(2).store[&(id, V1, Epoch(0))].to_secret_bytes();
    let mut bytes = own.to_vec();
    let at = bytes.len() - 32;
    bytes[at..].copy_from_slice(&other[at..]);
    let forged = qk_crypto::KeyShare::from_secret_bytes(&bytes).expect("decodes");
    c.node_mut(1).store.insert((id, V1, Epoch(0)), forged);
    let StoredShare::Refuse(reason) = fate(&c, 1, 0, 1) else {
        panic!("a share off the commitments passed");
    };
    assert!(
        reason.contains("does not match the replicated commitments"),
        "{reason}"
    );
    assert_eq!(
        fate(&c, 1, 1, 1),
        StoredShare::Keep,
        "a later epoch: its refresh may not be applied here yet"
    );
}

#[test]
fn a_restarted_holder_erases_replaced_epochs_and_files_its_receipt_once() {
    let refresh = Operation::Refresh {
        name: KEY.into(),
        version: V1,
        timeout_ms: None,
    };
    // Node 3 says nothing: the refresh waits, and its epoch's shares are kept.
    let mut waiting = Cluster::generated(2, 3, 43);
    waiting.node_mut(3).muted = true;
    waiting.admin(refresh.clone());
    waiting.run_until_idle();
    assert!(waiting.version(V1).refresh.is_some(), "the refresh waits");
    assert_eq!(
        fate(&waiting, 1, 1, 1),
        StoredShare::Keep,
        "a refresh under way"
    );

    let mut c = Cluster::generated(2, 3, 42);
    c.admin(refresh);
    c.advance(60_000, 100, |c| c.version(V1).refresh.is_none());
    assert_eq!(c.version(V1).epoch, Epoch(1));
    let old = stored_share(
        c.state(),
        NodeId(1),
        (c.key().id, V1, Epoch(0)),
        || -> Result<Option<qk_crypto::KeyShare>, String> {
            panic!("an obsolete share needs no check")
        },
    );
    assert_eq!(old, StoredShare::Erase { receipt: None });

    c.admin(Operation::ScheduleDestruction {
        name: KEY.into(),
        version: V1,
        after_ms: 1_000,
    });
    c.advance(1_000, 100, |_| false);
    // Two of three holders away: node 1's receipt alone does not destroy it.
    c.node_mut(2).dead = true;
    c.node_mut(3).dead = true;
    c.admin(Operation::Destroy {
        name: KEY.into(),
        version: V1,
    });
    c.run_until_idle();
    let receipt = Operation::EraseReceipt {
        name: KEY.into(),
        version: V1,
        node: NodeId(3),
    };
    assert_eq!(
        fate(&c, 3, 1, 3),
        StoredShare::Erase {
            receipt: Some(receipt)
        },
        "the node that was away files its receipt"
    );
    assert_eq!(
        fate(&c, 1, 1, 1),
        StoredShare::Erase { receipt: None },
        "node 1 already filed its receipt"
    );
}

/// Puts the cluster's key under break-glass: each decrypt needs one
/// approver's yes for exactly its ciphertext. "bob" is a second key user,
/// "ann" the approver.
fn break_glass(c: &mut Cluster) {
    for (name, role) in [("ann", Role::Approver), ("bob", Role::KeyUser)] {
        c.admin(Operation::CreatePrincipal {
            name: name.into(),
            roles: [role].into(),
        });
    }
    c.admin(Operation::SetPolicy {
        name: KEY.into(),
        policy: Some(KeyPolicy {
            rules: Vec::new(),
            approval: Some(ApprovalRule {
                required: 1,
                approvers: vec!["role:approver".into()],
                permissions: vec![Permission::Decrypt],
                ttl_ms: 60_000,
            }),
        }),
    });
    c.run_until_idle();
}

/// `requester` asks to decrypt `ciphertext`; ann approves unless told not
/// to. Returns the approval's expiry.
fn ask_approval(c: &mut Cluster, requester: &str, ciphertext: &[u8], approve: bool) -> u64 {
    let digest: [u8; 32] = Sha256::digest(ciphertext).into();
    c.propose(
        requester,
        Operation::RequestApproval {
            action: PendingAction::Decrypt {
                key: KEY.into(),
                ciphertext_sha256: digest,
            },
        },
    );
    c.run_until_idle();
    let approval = c
        .state()
        .approvals()
        .find(|a| a.requester == requester && matches!(&a.action, PendingAction::Decrypt { ciphertext_sha256, .. } if *ciphertext_sha256 == digest))
        .expect("approval recorded")
        .clone();
    if approve {
        c.propose("ann", Operation::Approve { id: approval.id });
        c.run_until_idle();
    }
    approval.expires_at_ms
}

#[test]
fn a_break_glass_partial_needs_an_approval_of_this_requester_for_this_ciphertext_still_valid() {
    let mut c = Cluster::generated(2, 3, 61);
    break_glass(&mut c);
    let key = c.key().id;
    let ct = c.wrap(V1, b"payroll");
    let other = c.wrap(V1, b"pension");
    let ask = |principal: &str, ciphertext: &[u8]| PartialRequest {
        key,
        ..request(ciphertext, principal)
    };
    let now = c.now;
    let refused = authorize_partial(c.state(), &ask("app", &ct), now).expect_err("no approval");
    assert!(refused.message.contains("no approval"), "{refused}");
    assert_eq!(refused.kind, qk_types::ErrorKind::Denied);

    // bob's approved request and app's unapproved one do not count for app.
    ask_approval(&mut c, "bob", &ct, true);
    ask_approval(&mut c, "app", &ct, false);
    assert!(authorize_partial(c.state(), &ask("app", &ct), now).is_err());
    assert!(authorize_partial(c.state(), &ask("bob", &ct), now).is_ok());

    let expires = ask_approval(&mut c, "app", &ct, true);
    assert!(authorize_partial(c.state(), &ask("app", &ct), now).is_ok());
    assert!(authorize_partial(c.state(), &ask("app", &ct), expires - 1).is_ok());
    assert!(
        authorize_partial(c.state(), &ask("app", &ct), expires).is_err(),
        "expired at its expiry"
    );
    assert!(
        authorize_partial(c.state(), &ask("app", &other), now).is_err(),
        "another ciphertext"
    );
}

#[test]
fn the_holders_usability_rules_follow_state_and_minimum_version() {
    let mut c = Cluster::generated(2, 3, 62);
    c.admin(Operation::Rotate {
        name: KEY.into(),
        holders: vec![NodeId(1), NodeId(2), NodeId(3)],
        generation_timeout_ms: None,
    });
    c.run_until_idle();
    let v2 = KeyVersion(2);
    let key = c.key().id;
    let old = c.wrap(V1, b"old");
    let new = c.wrap(v2, b"new");
    let answer = |c: &mut Cluster, ct: &[u8], version: KeyVersion| {
        let req = PartialRequest {
            key,
            version,
            epoch: Some(c.version(version).epoch),
            ..request(ct, "app")
        };
        let share = c
            .node(1)
            .store
            .get(&(key, version, c.version(version).epoch))
            .cloned();
        let (now, mut rng) = (c.now, rand::rngs::StdRng::seed_from_u64(7));
        holder_partial(c.state(), NodeId(1), share.as_ref(), &req, now, &mut rng)
            .map_err(|e| e.message)
    };
    assert!(answer(&mut c, &old, V1).is_ok());

    // The minimum decryption version itself still decrypts; below it not.
    c.admin(Operation::SetMinDecryptVersion {
        name: KEY.into(),
        version: v2,
    });
    c.run_until_idle();
    assert!(answer(&mut c, &new, v2).is_ok(), "at the minimum");
    let below = answer(&mut c, &old, V1).expect_err("below the minimum");
    assert!(below.contains("minimum decryption version"), "{below}");

    // Compromised with decryption allowed: still decrypts; without: not.
    c.admin(Operation::MarkCompromised {
        name: KEY.into(),
        version: v2,
        reason: "test".into(),
        allow_decrypt: true,
    });
    c.run_until_idle();
    assert!(
        answer(&mut c, &new, v2).is_ok(),
        "compromised, decrypt allowed"
    );
}
