//! Every command proves its author at apply: forged principals, tampered
//! operations, stale and replayed proofs, revoked tokens and another node's
//! name are refused, recorded as `unauthenticated`, and change nothing.

use qk_state::authn::{KeyRoster, UNAUTHENTICATED};
use qk_state::proof::{token_verify_key, Credential, INTENT_MAX_AGE_MS};
use qk_state::{Command, Operation, RequestId, Response, Role, StateError, StateMachine};
use sha2::{Digest, Sha256};

mod common;

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

struct Cluster {
    sm: StateMachine,
    roster: KeyRoster,
    node1: Credential,
    node2: Credential,
    admin: Credential,
    next: u64,
    now: u64,
}

impl Cluster {
    /// node-1 and node-2 enrolled; node-1 created `admin`, which holds a
    /// token (the admin's credential).
    fn new() -> Cluster {
        let mut roster = KeyRoster::new();
        let node1 = roster.enroll("node-1", [1; 32], DAY_MS).expect("node-1");
        let node2 = roster.enroll("node-2", [2; 32], DAY_MS).expect("node-2");
        let admin = Credential::from_token("00000000000000a1", "admin secret");
        let mut c = Cluster {
            sm: StateMachine::new(),
            roster,
            node1: node1.clone(),
            node2,
            admin: admin.clone(),
            next: 0,
            now: 1_000,
        };
        common::publish_dkg_keys(&mut c.sm);
        // As a bootstrap node does: shares on before the initial admin.
        c.signed(&node1, "node-1", Operation::EnableRequestShares)
            .result
            .expect("shares on");
        let create = Operation::CreatePrincipal {
            name: "admin".into(),
            roles: [Role::Admin].into(),
        };
        c.signed(&node1, "node-1", create).result.expect("admin");
        // The admin's client certificate (here its roster key) signs its
        // first token; the token's key signs from then on.
        let admin_cert = c.roster.enroll("admin", [3; 32], DAY_MS).expect("admin");
        c.signed(
            &admin_cert,
            "admin",
            issue("00000000000000a1", "admin", "admin secret"),
        )
        .result
        .expect("token issued");
        c
    }

    fn command(&mut self, principal: &str, op: Operation) -> Command {
        self.next += 1;
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&self.next.to_be_bytes());
        Command {
            request_id: RequestId(id),
            time_ms: self.now,
            principal: principal.into(),
            op,
            proof: None,
        }
    }

    /// node-1 and node-2 hold a key: their times are the ones vouched for.
    fn holders_of_a_key(&mut self) {
        let admin = self.admin.clone();
        let op = common::create_key("held", &[1, 2]);
        self.signed(&admin, "admin", op).result.expect("created");
    }

    /// Signs `cmd` with `credential` at the current time.
    fn sign(&self, credential: &Credential, cmd: &mut Command) {
        cmd.proof = Some(Box::new(
            credential.sign_command(cmd, self.now).expect("signs"),
        ));
    }

    /// The admin signs and applies `honest` (a key creation): it takes
    /// effect, not answered as a duplicate of anything before it.
    fn admin_creates(&mut self, mut honest: Command) {
        let admin = self.admin.clone();
        self.sign(&admin, &mut honest);
        let r = self.sm.apply_authenticated(&honest, &self.roster);
        assert!(!r.duplicate && r.result.is_ok(), "{r:?}");
        assert!(self.sm.key("k").is_some());
    }

    fn signed(&mut self, credential: &Credential, principal: &str, op: Operation) -> Response {
        let mut cmd = self.command(principal, op);
        self.sign(credential, &mut cmd);
        self.sm.apply_authenticated(&cmd, &self.roster)
    }

    fn last_record(&self) -> qk_state::AuditRecord {
        let n = self.sm.audit_len();
        self.sm.audit_records(n, 1)[0].clone()
    }

    /// The last command was refused as unauthenticated, naming `claimed`.
    fn assert_refused(&self, response: &Response, claimed: &str) {
        assert!(
            matches!(&response.result, Err(StateError::Denied(m)) if m.contains("not proven")),
            "{response:?}"
        );
        let record = self.last_record();
        assert_eq!(record.principal, UNAUTHENTICATED);
        assert!(
            record
                .outcome
                .contains(&format!("claims to come from {claimed}")),
            "{}",
            record.outcome
        );
    }
}

fn issue(id: &str, principal: &str, secret: &str) -> Operation {
    Operation::IssueToken {
        id: id.into(),
        principal: principal.into(),
        description: String::new(),
        secret_sha256: Sha256::digest(secret.as_bytes()).into(),
        verify_key: token_verify_key(secret).expect("key"),
        expires_at_ms: DAY_MS,
    }
}

fn mallory() -> Operation {
    Operation::CreatePrincipal {
        name: "mallory".into(),
        roles: [Role::Admin].into(),
    }
}

#[test]
fn a_principal_signed_command_applies_as_that_principal() {
    let mut c = Cluster::new();
    let admin = c.admin.clone();
    c.signed(&admin, "admin", mallory())
        .result
        .expect("applied");
    assert!(c.sm.principal("mallory").is_some());
    assert_eq!(c.last_record().principal, "admin");
}

#[test]
fn a_node_cannot_write_as_a_principal_or_as_another_node() {
    let mut c = Cluster::new();
    let node2 = c.node2.clone();
    // node-2 signs with its own key but claims to be the admin...
    let r = c.signed(&node2, "admin", mallory());
    c.assert_refused(&r, "admin");
    // ...or node-1 (an EraseReceipt, a DKG step: anything a node files).
    let receipt = Operation::EraseReceipt {
        name: "k".into(),
        version: qk_types::KeyVersion(1),
        node: qk_types::NodeId(1),
    };
    let r = c.signed(&node2, "node-1", receipt);
    c.assert_refused(&r, "node-1");
    assert!(c.sm.principal("mallory").is_none());
}

#[test]
fn a_command_without_a_proof_is_refused() {
    let mut c = Cluster::new();
    let cmd = c.command("admin", mallory());
    let r = c.sm.apply_authenticated(&cmd, &c.roster);
    c.assert_refused(&r, "admin");
    assert!(c.sm.principal("mallory").is_none());
}

#[test]
fn a_tampered_operation_does_not_verify() {
    let mut c = Cluster::new();
    let mut cmd = c.command("admin", common::create_key("k", &[1, 2, 3]));
    c.sign(&c.admin.clone(), &mut cmd);
    cmd.op = mallory();
    let r = c.sm.apply_authenticated(&cmd, &c.roster);
    c.assert_refused(&r, "admin");
    assert!(c.sm.principal("mallory").is_none());
}

#[test]
fn a_stale_proof_is_refused_even_when_the_leader_stamps_an_old_time() {
    let mut c = Cluster::new();
    let mut old = c.command("admin", mallory());
    c.sign(&c.admin.clone(), &mut old);
    // The nodes move on past the proof's freshness...
    c.holders_of_a_key();
    c.now += INTENT_MAX_AGE_MS + 1;
    let (node1, node2) = (c.node1.clone(), c.node2.clone());
    c.signed(&node1, "node-1", Operation::Attest);
    c.signed(&node2, "node-2", Operation::Attest);
    assert_eq!(c.sm.vouched_ms(), c.now);
    // ...and a leader that replays the command with its original time
    // does not make the proof fresh again.
    let r = c.sm.apply_authenticated(&old, &c.roster);
    c.assert_refused(&r, "admin");
    assert!(c.sm.principal("mallory").is_none());
}

#[test]
fn a_revoked_token_signs_nothing_more() {
    let mut c = Cluster::new();
    let admin = c.admin.clone();
    c.signed(
        &admin,
        "admin",
        Operation::RevokeToken {
            id: "00000000000000a1".into(),
        },
    )
    .result
    .expect("revoked");
    let r = c.signed(&admin, "admin", mallory());
    c.assert_refused(&r, "admin");
}

#[test]
fn a_replayed_signed_command_is_a_duplicate_and_changes_nothing() {
    let mut c = Cluster::new();
    let mut cmd = c.command("admin", common::create_key("k", &[1, 2, 3]));
    c.sign(&c.admin.clone(), &mut cmd);
    c.sm.apply_authenticated(&cmd, &c.roster)
        .result
        .expect("created");
    let keys = c.sm.key_count();
    let again = c.sm.apply_authenticated(&cmd, &c.roster);
    assert!(again.duplicate);
    assert_eq!(c.sm.key_count(), keys);
}

#[test]
fn a_forged_copy_does_not_take_the_request_id_of_the_honest_command() {
    let mut c = Cluster::new();
    let honest = c.command("admin", common::create_key("k", &[1, 2, 3]));
    let mut forged = honest.clone();
    forged.op = mallory();
    let r = c.sm.apply_authenticated(&forged, &c.roster);
    c.assert_refused(&r, "admin");
    c.admin_creates(honest);
}

#[test]
fn a_roster_grant_checks_only_for_its_enrolled_key() {
    use qk_state::authn::GrantCheck;
    use qk_state::proof::Signer;
    let mut c = Cluster::new();
    let mut other = KeyRoster::new();
    let impostor = other.enroll("node-1", [9; 32], DAY_MS).expect("impostor");
    let Signer::Session(grant) = &impostor.signer else {
        panic!("a session credential");
    };
    assert!(c.roster.check_grant(grant, c.now).is_err());
    let r = c.signed(&impostor, "node-1", mallory());
    c.assert_refused(&r, "node-1");
    let node1 = c.node1.clone();
    let Signer::Session(grant) = &node1.signer else {
        panic!("a session credential");
    };
    assert!(c.roster.check_grant(grant, c.now).is_ok());
    assert!(c.roster.check_grant(grant, DAY_MS).is_err(), "expired");
    // A grant edited after signing (a longer life, another principal's
    // name on it) no longer verifies.
    let mut extended = grant.clone();
    extended.expires_ms += DAY_MS;
    assert!(c.roster.check_grant(&extended, c.now).is_err(), "extended");
    let mut renamed = grant.clone();
    renamed.principal = "node-2".into();
    let node2_key = match &c.node2.signer {
        Signer::Session(g) => g.session_key,
        Signer::Token { .. } => panic!("a session credential"),
    };
    renamed.session_key = node2_key;
    assert!(c.roster.check_grant(&renamed, c.now).is_err(), "renamed");
    // The enrolled key, properly signed, but with a certificate attached:
    // the roster vouches for bare keys only.
    let mut with_cert = grant.clone();
    with_cert.cert_der = vec![0x30, 0x00];
    let node1_key = ring::signature::Ed25519KeyPair::from_seed_unchecked(&[1; 32]).expect("seed");
    with_cert.signature = node1_key
        .sign(&with_cert.signed_message())
        .as_ref()
        .to_vec();
    let refused = c.roster.check_grant(&with_cert, c.now);
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("not node-1's enrolled key")),
        "{refused:?}"
    );
}

#[test]
fn a_lying_node_cannot_move_the_time_the_nodes_vouch_for() {
    let mut c = Cluster::new();
    c.holders_of_a_key();
    let (node1, node2) = (c.node1.clone(), c.node2.clone());
    c.signed(&node1, "node-1", Operation::Attest);
    c.signed(&node2, "node-2", Operation::Attest);
    let vouched = c.sm.vouched_ms();
    assert_eq!(vouched, c.now, "both holders vouch for now");
    // node-2 (the leader, say) signs and stamps a command a year ahead...
    let honest_now = c.now;
    c.now += 365 * DAY_MS;
    c.signed(&node2, "node-2", Operation::Attest);
    c.now = honest_now;
    assert_eq!(c.sm.vouched_ms(), vouched, "one node is outvoted");
    // ...and honest proofs made now still count.
    let admin = c.admin.clone();
    c.signed(&admin, "admin", mallory())
        .result
        .expect("applied");
}

#[test]
fn a_leader_cannot_stamp_a_time_far_from_the_signature() {
    let mut c = Cluster::new();
    c.now += 2 * INTENT_MAX_AGE_MS;
    let mut cmd = c.command("admin", mallory());
    c.sign(&c.admin.clone(), &mut cmd);
    cmd.time_ms = 0;
    let r = c.sm.apply_authenticated(&cmd, &c.roster);
    c.assert_refused(&r, "admin");
    cmd.time_ms = c.now + INTENT_MAX_AGE_MS + 1;
    let r = c.sm.apply_authenticated(&cmd, &c.roster);
    c.assert_refused(&r, "admin");
    assert!(c.sm.principal("mallory").is_none());
    // Exactly the largest age allowed still counts.
    cmd.time_ms = c.now + INTENT_MAX_AGE_MS;
    let r = c.sm.apply_authenticated(&cmd, &c.roster);
    r.result.expect("at the limit");
    assert!(c.sm.principal("mallory").is_some());
}

#[test]
fn a_node_cannot_take_a_principals_request_id() {
    let mut c = Cluster::new();
    let node2 = c.node2.clone();
    let honest = c.command("admin", common::create_key("k", &[1, 2, 3]));
    // node-2 files its own (valid) command under the admin's request id...
    let mut squat = honest.clone();
    squat.principal = "node-2".into();
    squat.op = Operation::PruneRecords;
    c.sign(&node2, &mut squat);
    let _ = c.sm.apply_authenticated(&squat, &c.roster);
    // ...and the admin's command is not answered as its duplicate.
    c.admin_creates(honest);
}

#[test]
fn a_node_bootstraps_the_initial_admin_once() {
    let mut c = Cluster::new();
    let admin = c.admin.clone();
    let node1 = c.node1.clone();
    c.signed(&admin, "admin", mallory())
        .result
        .expect("mallory");
    for name in ["mallory", "admin"] {
        let op = Operation::DeletePrincipal { name: name.into() };
        c.signed(&admin, "admin", op).result.expect("deleted");
    }
    assert_eq!(c.sm.principals().count(), 0);
    let again = Operation::CreatePrincipal {
        name: "eve".into(),
        roles: [Role::Admin].into(),
    };
    let r = c.signed(&node1, "node-1", again);
    assert!(matches!(r.result, Err(StateError::Denied(_))), "{r:?}");
    assert!(c.sm.principal("eve").is_none());
}

#[test]
fn a_node_that_holds_nothing_has_no_say_in_the_time() {
    let mut c = Cluster::new();
    // Before any key, and for a node that holds none, a far-future
    // signature moves nothing: honest proofs keep working.
    let node2 = c.node2.clone();
    let honest_now = c.now;
    c.now += 365 * DAY_MS;
    c.signed(&node2, "node-2", Operation::Attest);
    c.now = honest_now;
    assert_eq!(c.sm.vouched_ms(), 0);
    let admin = c.admin.clone();
    c.signed(&admin, "admin", mallory())
        .result
        .expect("applied");
}

#[test]
fn the_vouched_time_never_moves_back() {
    let mut c = Cluster::new();
    c.holders_of_a_key();
    let (node1, node2) = (c.node1.clone(), c.node2.clone());
    c.now += INTENT_MAX_AGE_MS;
    c.signed(&node1, "node-1", Operation::Attest);
    c.signed(&node2, "node-2", Operation::Attest);
    let vouched = c.sm.vouched_ms();
    // A new key with a holder that never signed would lower the median.
    let admin = c.admin.clone();
    c.signed(&admin, "admin", common::create_key("more", &[1, 2, 3]))
        .result
        .expect("created");
    c.signed(&node1, "node-1", Operation::Attest);
    assert_eq!(c.sm.vouched_ms(), vouched);
}

#[test]
fn attestations_at_the_limit_do_not_grow_the_request_store() {
    let mut c = Cluster::new();
    let admin = c.admin.clone();
    let mut n = 0u64;
    while c.sm.remembered_requests() < qk_state::MAX_FRESH_REQUESTS {
        n += 1;
        let mut cmd = c.command("admin", mallory());
        cmd.request_id = RequestId([(n % 251) as u8; 16]);
        cmd.request_id.0[..8].copy_from_slice(&n.to_be_bytes());
        let _ = c.sm.apply(&cmd);
    }
    let full = c.sm.remembered_requests();
    // Ordinary commands are refused at the limit; a node's attestations go
    // through, but a flood of them leaves the store as it was.
    let r = c.signed(&admin, "admin", mallory());
    c.assert_refused(&r, "admin");
    let node1 = c.node1.clone();
    for _ in 0..10 {
        c.signed(&node1, "node-1", Operation::Attest)
            .result
            .expect("attested");
    }
    assert_eq!(c.sm.remembered_requests(), full);
}

#[test]
fn a_leader_cannot_apply_an_administrators_early_destroy_by_stamping_it_later() {
    let mut c = Cluster::new();
    let admin = c.admin.clone();
    let (node1, node2) = (c.node1.clone(), c.node2.clone());
    c.holders_of_a_key();
    for (from, op) in common::dkg_until_enabled("held", qk_types::KeyVersion(1), &[1, 2], &[1]) {
        let credential = if from == "node-1" { &node1 } else { &node2 };
        c.signed(credential, &from, op).result.expect("DKG step");
    }
    let version = qk_types::KeyVersion(1);
    let schedule = Operation::ScheduleDestruction {
        name: "held".into(),
        version,
        after_ms: 60_000,
    };
    c.signed(&admin, "admin", schedule)
        .result
        .expect("scheduled");
    let destroy = Operation::Destroy {
        name: "held".into(),
        version,
    };
    // The administrator sends the Destroy a second early; the leader holds
    // it and stamps it two minutes later, within the 5 allowed.
    c.now += 59_000;
    let mut early = c.command("admin", destroy.clone());
    c.sign(&admin, &mut early);
    early.time_ms = c.now + 120_000;
    let r = c.sm.apply_authenticated(&early, &c.roster);
    assert!(
        matches!(&r.result, Err(StateError::InvalidTransition { .. })),
        "{r:?}"
    );
    // Signed once the waiting period is over, it applies.
    c.now += 1_000;
    c.signed(&admin, "admin", destroy).result.expect("due");
}

#[test]
fn a_node_signs_only_while_it_is_a_member_and_principals_whatever_the_membership() {
    let mut c = Cluster::new();
    let node2 = c.node2.clone();
    let receipt = || Operation::EraseReceipt {
        name: "k".into(),
        version: qk_types::KeyVersion(1),
        node: qk_types::NodeId(2),
    };
    let only_node_1 = |n: qk_types::NodeId| n == qk_types::NodeId(1);
    let mut cmd = c.command("node-2", receipt());
    c.sign(&node2, &mut cmd);
    let r = c.sm.apply_from_members(&cmd, &c.roster, &only_node_1);
    let refused = format!("{:?}", r.result);
    assert!(refused.contains("not a member"), "{refused}");
    // As a member, its signature is judged as usual (no such key here).
    let mut cmd = c.command("node-2", receipt());
    c.sign(&node2, &mut cmd);
    let r = c.sm.apply_from_members(&cmd, &c.roster, &|_| true);
    assert!(!format!("{:?}", r.result).contains("not a member"), "{r:?}");
    // A principal is no node: membership does not apply to it.
    let mut cmd = c.command("admin", mallory());
    c.sign(&c.admin.clone(), &mut cmd);
    let r = c.sm.apply_from_members(&cmd, &c.roster, &|_| false);
    r.result.expect("the admin's command applies");
}

/// Sends `op()` signed by `credential` until it is refused for its share of
/// the request memory; that refusal.
fn flood_until_refused(
    c: &mut Cluster,
    credential: &Credential,
    principal: &str,
    op: impl Fn() -> Operation,
) -> StateError {
    loop {
        let r = c.signed(credential, principal, op());
        match r.result {
            Err(e) if e.to_string().contains("one principal may hold while") => return e,
            _ => assert!(
                c.sm.remembered_requests() < qk_state::MAX_FRESH_REQUESTS,
                "{principal} filled the request memory alone: {:?}",
                r.result
            ),
        }
    }
}

/// The attacker holds a real node's credentials (node-2) and floods the log
/// with commands of its own (audit batches, which every node may send):
/// before each principal had a share of the request memory, 400,000 of them
/// made every replica refuse every other principal's writes and every
/// node's audit of a partial (so no decrypt either) for five minutes.
#[test]
fn a_node_flooding_its_own_commands_cannot_stop_other_principals_writes() {
    let mut c = Cluster::new();
    let (node1, node2, admin) = (c.node1.clone(), c.node2.clone(), c.admin.clone());
    let batch = || {
        Operation::AuditBatch(vec![qk_state::AuditEvent::new(
            "node-2",
            "key.decrypt.partial",
            Some("k"),
            None,
            "ok",
        )])
    };
    let refusal = flood_until_refused(&mut c, &node2, "node-2", batch);
    assert_shares_held(&c, "node-2", &refusal);

    // Everyone else is served: the admin's write, node-1's audit batch.
    c.signed(&admin, "admin", mallory())
        .result
        .expect("the admin's write applies");
    c.signed(&node1, "node-1", batch())
        .result
        .expect("another node's audit batch applies");

    // Once node-2's commands are stale (five minutes of vouched time) they
    // are forgotten as new ones come, and it is served again.
    c.holders_of_a_key();
    c.now += INTENT_MAX_AGE_MS + 1;
    for (credential, name) in [(&node1, "node-1"), (&node2, "node-2")] {
        c.signed(credential, name, Operation::Attest)
            .result
            .expect("attests");
    }
    for _ in 0..1_000 {
        c.signed(&node2, "node-2", batch())
            .result
            .expect("node-2 is served again once its commands went stale");
    }
    assert_eq!(
        c.sm.remembered_requests(),
        qk_state::MAX_REMEMBERED_REQUESTS
    );
}

/// A key user floods commands it is not allowed (each refusal is
/// remembered, as a refused break-glass request is): it fills its own share
/// and nothing more.
#[test]
fn a_user_flooding_refused_commands_fills_only_its_own_share() {
    let mut c = Cluster::new();
    let admin = c.admin.clone();
    c.holders_of_a_key();
    let create = Operation::CreatePrincipal {
        name: "eve".into(),
        roles: [Role::KeyUser].into(),
    };
    c.signed(&admin, "admin", create).result.expect("eve");
    let token = issue("00000000000000e1", "eve", "eve secret");
    c.signed(&admin, "admin", token)
        .result
        .expect("eve's token");
    let eve = Credential::from_token("00000000000000e1", "eve secret");
    let tag = || Operation::SetTag {
        name: "held".into(),
        tag: "owner".into(),
        value: Some("eve".into()),
    };
    let denied = c.signed(&eve, "eve", tag());
    assert!(
        matches!(denied.result, Err(StateError::Denied(_))),
        "{denied:?}"
    );
    let refusal = flood_until_refused(&mut c, &eve, "eve", tag);
    assert_shares_held(&c, "eve", &refusal);
    c.signed(&admin, "admin", tag())
        .result
        .expect("the admin's write applies");
}

/// `principal` was refused for its share, recorded under its own name, with
/// the memory no fuller than one principal can make it.
fn assert_shares_held(c: &Cluster, principal: &str, refusal: &StateError) {
    assert!(
        refusal.to_string().contains("one principal may hold while"),
        "{refusal}"
    );
    let record = c.last_record();
    assert_eq!(record.principal, principal);
    assert!(record.outcome.starts_with("refused:"), "{}", record.outcome);
    assert_eq!(
        c.sm.remembered_requests(),
        qk_state::MAX_REMEMBERED_REQUESTS + 1,
        "refused as soon as the memory is crowded"
    );
    assert!(c.sm.request_shares().remembered_by(principal) >= qk_state::MAX_REQUESTS_PER_PRINCIPAL);
}

/// Shares are on from an entry an older release never wrote, so replicas
/// replaying the log and replicas restored from a checkpoint agree: a
/// bootstrap without that entry (an older release's) leaves them off, a
/// node may send it only before the initial admin exists, and afterwards
/// only an administrator turns them on.
#[test]
fn request_shares_turn_on_only_by_their_own_entry() {
    let mut roster = KeyRoster::new();
    let node1 = roster.enroll("node-1", [1; 32], DAY_MS).expect("node-1");
    let mut c = Cluster::new();
    assert!(
        c.sm.request_shares().is_active(),
        "a new cluster's bootstrap"
    );

    let mut old = StateMachine::new();
    let mut cmd = c.command("node-1", mallory());
    c.sign(&node1, &mut cmd);
    old.apply_authenticated(&cmd, &roster)
        .result
        .expect("an older release's bootstrap");
    assert!(!old.request_shares().is_active());
    let mut cmd = c.command("node-1", Operation::EnableRequestShares);
    c.sign(&node1, &mut cmd);
    let r = old.apply_authenticated(&cmd, &roster);
    assert!(
        matches!(&r.result, Err(StateError::Denied(m)) if m.contains("a node may not propose it")),
        "{r:?}"
    );
    assert!(!old.request_shares().is_active());
    let admin = c.node1.clone();
    let r = c.signed(&admin, "node-1", Operation::EnableRequestShares);
    assert!(r.result.is_err(), "not after the bootstrap either: {r:?}");
    let admin = c.admin.clone();
    c.signed(&admin, "admin", Operation::EnableRequestShares)
        .result
        .expect("an administrator may, again");
}
