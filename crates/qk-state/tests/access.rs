//! Access control in the state machine: the role matrix, key policies with
//! context conditions, approvals, tokens, and the schedule.

use std::collections::BTreeMap;

use qk_state::proof::INTENT_MAX_AGE_MS;
use qk_state::{
    Applied, ApprovalRule, ApprovalStatus, Command, CreateKey, Decision, KeyPolicy, Operation,
    PendingAction, Permission, PolicyRule, RequestId, Role, StateError, StateMachine, VersionState,
};
use qk_types::{KeyVersion, NodeId};
use sha2::{Digest, Sha256};

mod common;

struct Log {
    sm: StateMachine,
    next: u64,
    now: u64,
}

impl Log {
    fn new() -> Log {
        let mut log = Log {
            sm: StateMachine::new(),
            next: 0,
            now: 1_000,
        };
        common::publish_dkg_keys(&mut log.sm);
        let admin = Operation::CreatePrincipal {
            name: "admin".into(),
            roles: [Role::Admin].into(),
        };
        log.run("node-1", admin).expect("initial admin");
        log
    }

    fn run(&mut self, principal: &str, op: Operation) -> Result<Applied, StateError> {
        self.next += 1;
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&self.next.to_be_bytes());
        self.run_with_id(principal, RequestId(id), op)
    }

    /// As `run`, with a request id the caller chose (an attacker may).
    fn run_with_id(
        &mut self,
        principal: &str,
        request_id: RequestId,
        op: Operation,
    ) -> Result<Applied, StateError> {
        let r = self.sm.apply(&Command {
            request_id,
            time_ms: self.now,
            principal: principal.into(),
            op,
            proof: None,
        });
        r.result
    }

    fn principal(&mut self, name: &str, roles: &[Role]) {
        let op = Operation::CreatePrincipal {
            name: name.into(),
            roles: roles.iter().copied().collect(),
        };
        self.run("admin", op).expect("principal created");
    }

    /// A key with one enabled version.
    fn key(&mut self, name: &str) {
        let op = common::create_key(name, &[1, 2, 3]);
        self.run("admin", op).expect("key created");
        self.generate(name, KeyVersion(1), &[1, 2, 3]);
    }

    /// Runs the version's DKG until every holder acked.
    fn generate(&mut self, name: &str, version: KeyVersion, holders: &[u64]) {
        for (from, op) in common::dkg_until_enabled(name, version, holders, &[1]) {
            self.run(&from, op).expect("DKG step");
        }
    }

    /// Nodes 1-3 vouch for the current time (`Attest`), as they do when a
    /// scheduled step waits for it.
    fn vouch(&mut self) {
        for n in 1..=3 {
            self.run(&format!("node-{n}"), Operation::Attest)
                .expect("attest");
        }
        assert_eq!(self.sm.vouched_ms(), self.now);
    }

    fn last_outcome(&self) -> String {
        let n = self.sm.audit_len();
        self.sm.audit_records(n, 1)[0].outcome.clone()
    }
}

fn no_context() -> BTreeMap<String, String> {
    BTreeMap::new()
}

#[test]
fn every_role_gets_exactly_its_permissions() {
    let mut log = Log::new();
    for role in Role::ALL {
        log.principal(&format!("p-{role}"), &[role]);
    }
    log.key("k");
    for role in Role::ALL {
        for perm in Permission::ALL {
            let decision = log
                .sm
                .authorize(&format!("p-{role}"), perm, Some("k"), &no_context());
            let expected = role.grants(perm);
            assert_eq!(
                decision == Decision::Allow,
                expected,
                "{role} × {perm}: {decision:?}"
            );
        }
    }
    // Spot checks of the table in docs/API.md.
    assert!(!Role::Admin.grants(Permission::Approve));
    assert!(!Role::Operator.grants(Permission::Decrypt));
    assert!(!Role::KeyUser.grants(Permission::KeyDestroy));
    assert!(Role::Auditor.grants(Permission::AuditRead));
}

#[test]
fn unknown_and_disabled_principals_are_denied_and_audited() {
    let mut log = Log::new();
    log.key("k");
    let refused = log.run(
        "stranger",
        Operation::Rotate {
            name: "k".into(),
            holders: vec![NodeId(1), NodeId(2), NodeId(3)],
            generation_timeout_ms: None,
        },
    );
    assert!(matches!(refused, Err(StateError::Denied(_))), "{refused:?}");
    assert!(
        log.last_outcome().contains("not known"),
        "{}",
        log.last_outcome()
    );
    log.principal("ops", &[Role::Operator]);
    let disable = Operation::UpdatePrincipal {
        name: "ops".into(),
        roles: [Role::Operator].into(),
        disabled: true,
    };
    log.run("admin", disable).expect("disabled");
    let d = log
        .sm
        .authorize("ops", Permission::KeyRead, Some("k"), &no_context());
    assert!(
        matches!(d, Decision::Deny(ref r) if r.contains("disabled")),
        "{d:?}"
    );
}

#[test]
fn clients_cannot_propose_protocol_steps_or_take_node_names() {
    let mut log = Log::new();
    log.key("k");
    let receipt = Operation::EraseReceipt {
        name: "k".into(),
        version: KeyVersion(1),
        node: NodeId(1),
    };
    assert!(matches!(
        log.run("admin", receipt),
        Err(StateError::Denied(_))
    ));
    let audit = Operation::Audit {
        operation: "decrypt".into(),
        key: Some("payroll".into()),
        version: None,
        outcome: "ok".into(),
    };
    assert!(matches!(
        log.run("admin", audit),
        Err(StateError::Denied(_))
    ));
    // The refusal is recorded in the state machine's words, not the caller's.
    let n = log.sm.audit_len();
    let record = &log.sm.audit_records(n, 1)[0];
    assert_eq!(record.operation, "audit");
    assert_eq!(record.key, None);
    assert!(record.outcome.starts_with("refused"), "{}", record.outcome);
    // A refused command's key name is bounded in its record.
    let long = Operation::Disable {
        name: "k".repeat(10_000),
        version: KeyVersion(1),
    };
    assert!(log.run("admin", long).is_err());
    let n = log.sm.audit_len();
    let key = log.sm.audit_records(n, 1)[0].key.clone().expect("key");
    assert!(key.len() <= 128, "{} bytes", key.len());
    let impostor = Operation::CreatePrincipal {
        name: "node-7".into(),
        roles: [Role::Admin].into(),
    };
    assert!(matches!(
        log.run("admin", impostor),
        Err(StateError::Invalid(_))
    ));
    // A node may create only the first principal.
    let second = Operation::CreatePrincipal {
        name: "eve".into(),
        roles: [Role::Admin].into(),
    };
    assert!(matches!(
        log.run("node-2", second),
        Err(StateError::Denied(_))
    ));
}

#[test]
fn a_key_policy_narrows_access_with_context_conditions() {
    let mut log = Log::new();
    log.principal("app", &[Role::KeyUser]);
    log.principal("other", &[Role::KeyUser]);
    log.principal("ann", &[Role::Approver]);
    log.key("k");
    let policy = KeyPolicy {
        rules: vec![PolicyRule {
            principals: vec!["app".into()],
            permissions: vec![Permission::Decrypt],
            context: [("tenant".to_string(), "blue".to_string())].into(),
        }],
        approval: None,
    };
    let set = Operation::SetPolicy {
        name: "k".into(),
        policy: Some(policy),
    };
    log.run("admin", set).expect("policy set");
    let blue: BTreeMap<String, String> = [("tenant".to_string(), "blue".to_string())].into();
    let red: BTreeMap<String, String> = [("tenant".to_string(), "red".to_string())].into();
    assert_eq!(
        log.sm
            .authorize("app", Permission::Decrypt, Some("k"), &blue),
        Decision::Allow
    );
    assert!(matches!(
        log.sm.authorize("app", Permission::Decrypt, Some("k"), &red),
        Decision::Deny(r) if r.contains("context")
    ));
    assert!(matches!(
        log.sm
            .authorize("other", Permission::Decrypt, Some("k"), &blue),
        Decision::Deny(_)
    ));
    // Encrypt is not governed by the policy: the role decides.
    assert_eq!(
        log.sm
            .authorize("other", Permission::Encrypt, Some("k"), &red),
        Decision::Allow
    );
    // A policy cannot grant what no role grants.
    let op = log
        .sm
        .authorize("app", Permission::KeyDestroy, Some("k"), &blue);
    assert!(matches!(op, Decision::Deny(_)));
}

fn approval_policy(required: u16, permissions: Vec<Permission>) -> Operation {
    approval_policy_on("k", required, permissions)
}

fn approval_policy_on(key: &str, required: u16, permissions: Vec<Permission>) -> Operation {
    Operation::SetPolicy {
        name: key.into(),
        policy: Some(KeyPolicy {
            rules: Vec::new(),
            approval: Some(ApprovalRule {
                required,
                approvers: vec!["role:approver".into()],
                permissions,
                ttl_ms: 60_000,
            }),
        }),
    }
}

#[test]
fn approval_policies_are_checked_when_saved() {
    let mut log = Log::new();
    log.key("k");
    let zero = log.run("admin", approval_policy(0, vec![Permission::KeyDestroy]));
    assert!(
        matches!(zero, Err(StateError::Invalid(ref r)) if r.contains("at least 1")),
        "{zero:?}"
    );
    log.principal("ann", &[Role::Approver]);
    let two = log.run("admin", approval_policy(2, vec![Permission::KeyDestroy]));
    assert!(
        matches!(two, Err(StateError::Invalid(ref r)) if r.contains("only 1")),
        "{two:?}"
    );
    let encrypt = log.run("admin", approval_policy(1, vec![Permission::Encrypt]));
    assert!(matches!(encrypt, Err(StateError::Invalid(_))));
    log.principal("bob", &[Role::Approver]);
    log.run("admin", approval_policy(2, vec![Permission::KeyDestroy]))
        .expect("two eligible approvers");
}

#[test]
fn destroy_waits_for_m_distinct_approvers_never_the_requester() {
    let mut log = Log::new();
    log.principal("ops", &[Role::Operator, Role::Approver]);
    log.principal("ann", &[Role::Approver]);
    log.principal("bob", &[Role::Approver]);
    log.principal("carl", &[Role::Auditor]);
    log.key("k");
    log.run("admin", approval_policy(2, vec![Permission::KeyDestroy]))
        .expect("policy");
    let destroy = Operation::ScheduleDestruction {
        name: "k".into(),
        version: KeyVersion(1),
        after_ms: 0,
    };
    let Ok(Applied::ApprovalRequested { id, required }) = log.run("ops", destroy) else {
        panic!("destroy should wait for approval");
    };
    assert_eq!(required, 2);
    let state = |log: &Log| log.sm.key("k").expect("k").versions[0].state.clone();
    assert_eq!(
        state(&log),
        VersionState::Enabled,
        "nothing happens before approval"
    );
    let own = log.run("ops", Operation::Approve { id: id.clone() });
    assert!(
        matches!(own, Err(StateError::Denied(ref r)) if r.contains("cannot approve")),
        "{own:?}"
    );
    let auditor = log.run("carl", Operation::Approve { id: id.clone() });
    assert!(matches!(auditor, Err(StateError::Denied(_))));
    let first = log.run("ann", Operation::Approve { id: id.clone() });
    assert!(
        matches!(
            first,
            Ok(Applied::Approved {
                remaining: 1,
                outcome: None
            })
        ),
        "{first:?}"
    );
    let again = log.run("ann", Operation::Approve { id: id.clone() });
    assert!(again.is_err(), "one approver counts once");
    let second = log.run("bob", Operation::Approve { id: id.clone() });
    assert!(
        matches!(
            second,
            Ok(Applied::Approved {
                remaining: 0,
                outcome: Some(_)
            })
        ),
        "{second:?}"
    );
    assert!(matches!(
        state(&log),
        VersionState::PendingDestruction { .. }
    ));
    let record = log.sm.approval(&id).expect("approval");
    assert!(matches!(record.status, ApprovalStatus::Executed(ref o) if o.starts_with("ok")));
    let audit = log.sm.audit_records(1, 1000);
    assert!(audit
        .iter()
        .any(|r| r.principal == "ann" && r.operation == "approval.approve"));
}

#[test]
fn denied_and_expired_approvals_never_run() {
    let mut log = Log::new();
    log.principal("ops", &[Role::Operator]);
    log.principal("ann", &[Role::Approver]);
    log.key("k");
    log.run("admin", approval_policy(1, vec![Permission::KeyDisable]))
        .expect("policy");
    let disable = || Operation::Disable {
        name: "k".into(),
        version: KeyVersion(1),
    };
    let Ok(Applied::ApprovalRequested { id, .. }) = log.run("ops", disable()) else {
        panic!("disable waits");
    };
    log.run(
        "ann",
        Operation::Deny {
            id: id.clone(),
            reason: "not today".into(),
        },
    )
    .expect("denied");
    assert!(log
        .run("ann", Operation::Approve { id: id.clone() })
        .is_err());
    let Ok(Applied::ApprovalRequested { id: late, .. }) = log.run("ops", disable()) else {
        panic!("disable waits");
    };
    log.now += 60_001;
    let due = log.sm.maintenance_due(log.now);
    assert!(
        due.contains(&Operation::ExpireApproval { id: late.clone() }),
        "{due:?}"
    );
    assert!(
        !due.contains(&Operation::ExpireApproval { id: id.clone() }),
        "the denied one is over already: {due:?}"
    );
    assert!(log
        .run("ann", Operation::Approve { id: late.clone() })
        .is_err());
    assert_eq!(
        log.sm.approval(&late).expect("a").status,
        ApprovalStatus::Expired
    );
    assert_eq!(
        log.sm.key("k").expect("k").versions[0].state,
        VersionState::Enabled
    );
}

#[test]
fn break_glass_decrypt_is_approved_per_ciphertext_and_used_once() {
    let mut log = Log::new();
    log.principal("app", &[Role::KeyUser]);
    log.principal("ann", &[Role::Approver]);
    log.key("k");
    log.run("admin", approval_policy(1, vec![Permission::Decrypt]))
        .expect("policy");
    assert!(matches!(
        log.sm
            .authorize("app", Permission::Decrypt, Some("k"), &no_context()),
        Decision::NeedsApproval { required: 1, .. }
    ));
    let digest: [u8; 32] = Sha256::digest(b"ciphertext").into();
    let ask = Operation::RequestApproval {
        action: PendingAction::Decrypt {
            key: "k".into(),
            ciphertext_sha256: digest,
        },
    };
    let Ok(Applied::ApprovalRequested { id, .. }) = log.run("app", ask) else {
        panic!("request recorded");
    };
    let use_it = |id: &str, d: [u8; 32]| Operation::ConsumeApproval {
        id: id.into(),
        ciphertext_sha256: d,
    };
    assert!(
        log.run("app", use_it(&id, digest)).is_err(),
        "not approved yet"
    );
    log.run("ann", Operation::Approve { id: id.clone() })
        .expect("approved");
    let other: [u8; 32] = Sha256::digest(b"another").into();
    assert!(
        log.run("app", use_it(&id, other)).is_err(),
        "another ciphertext"
    );
    assert!(
        log.run("ann", use_it(&id, digest)).is_err(),
        "another requester"
    );
    log.run("app", use_it(&id, digest)).expect("used once");
    assert!(log.run("app", use_it(&id, digest)).is_err(), "not twice");
}

#[test]
fn tokens_are_stored_hashed_expire_and_revoke() {
    let mut log = Log::new();
    log.principal("svc", &[Role::KeyUser]);
    let secret = "ab".repeat(32);
    let token = qk_state::token_text("0123456789abcdef", &secret);
    let issue = Operation::IssueToken {
        id: "0123456789abcdef".into(),
        principal: "svc".into(),
        description: "ci".into(),
        secret_sha256: Sha256::digest(secret.as_bytes()).into(),
        verify_key: qk_state::proof::token_verify_key(&secret).expect("key"),
        expires_at_ms: log.now + 10_000,
    };
    log.run("admin", issue).expect("issued");
    let snapshot = log.sm.to_bytes().expect("encodes");
    assert!(
        !snapshot
            .windows(secret.len())
            .any(|w| w == secret.as_bytes()),
        "the secret is not in the state"
    );
    let (p, _) = log.sm.authenticate_token(&token, log.now).expect("valid");
    assert_eq!(p.name, "svc");
    let wrong = qk_state::token_text("0123456789abcdef", &"cd".repeat(32));
    assert!(log.sm.authenticate_token(&wrong, log.now).is_err());
    assert!(log.sm.authenticate_token("qkt.garbage", log.now).is_err());
    assert!(
        log.sm.authenticate_token(&token, log.now + 10_000).is_err(),
        "expired"
    );
    let revoke = Operation::RevokeToken {
        id: "0123456789abcdef".into(),
    };
    log.run("svc", revoke)
        .expect("a principal may revoke its own token");
    let e = log
        .sm
        .authenticate_token(&token, log.now)
        .expect_err("revoked");
    assert!(e.message.contains("revoked"), "{e}");
    assert_eq!(e.kind, qk_types::ErrorKind::Unauthenticated);
    let Some(t) = log.sm.tokens().next() else {
        panic!("token kept")
    };
    assert!(!format!("{t:?}").contains("secret_sha256"));
}

#[test]
fn rotation_and_expiry_follow_the_log_time() {
    let mut log = Log::new();
    let op = Operation::CreateKey(CreateKey {
        name: "k".into(),
        description: String::new(),
        owner: String::new(),
        purpose: String::new(),
        rotation_period_ms: Some(10_000),
        expires_at_ms: Some(log.now + 100_000),
        threshold: 2,
        holders: vec![NodeId(1), NodeId(2)],
    });
    log.run("admin", op).expect("created");
    log.generate("k", KeyVersion(1), &[1, 2]);
    assert!(log.sm.maintenance_due(log.now + 9_999).is_empty());
    let rotate = Operation::ScheduledRotate {
        name: "k".into(),
        holders: vec![NodeId(1), NodeId(2)],
    };
    assert!(log.run("node-1", rotate.clone()).is_err(), "not due yet");
    log.now += 10_000;
    log.vouch();
    let other_holders = Operation::ScheduledRotate {
        name: "k".into(),
        holders: vec![NodeId(1), NodeId(3)],
    };
    assert!(
        log.run("node-1", other_holders).is_err(),
        "a node does not choose a scheduled version's holders"
    );
    assert_eq!(log.sm.maintenance_due(log.now), vec![rotate.clone()]);
    assert!(matches!(
        log.run("node-1", rotate.clone()),
        Ok(Applied::VersionCreated { .. })
    ));
    assert!(
        log.run("admin", rotate).is_err(),
        "clients cannot propose schedule steps"
    );
    log.now += 100_000;
    let due = log.sm.maintenance_due(log.now);
    assert!(
        due.contains(&Operation::Expire { name: "k".into() }),
        "{due:?}"
    );
    log.vouch();
    log.run("node-1", Operation::Expire { name: "k".into() })
        .expect("expired");
    let key = log.sm.key("k").expect("k");
    assert!(
        key.expired && key.primary_version().is_none(),
        "no encryption after expiry"
    );
    assert!(key.next_rotation_ms().is_none(), "no rotation after expiry");
}

/// Key `k` (holders 1-3) with version 1 scheduled for destruction.
fn destruction_scheduled(after_ms: u64) -> Log {
    let mut log = Log::new();
    log.key("k");
    log.run(
        "admin",
        Operation::ScheduleDestruction {
            name: "k".into(),
            version: KeyVersion(1),
            after_ms,
        },
    )
    .expect("scheduled");
    log
}

#[test]
fn destruction_is_committed_by_the_schedule_when_due() {
    let mut log = destruction_scheduled(5_000);
    assert!(log.sm.maintenance_due(log.now + 4_999).is_empty());
    let destroy = Operation::Destroy {
        name: "k".into(),
        version: KeyVersion(1),
    };
    assert_eq!(
        log.sm.maintenance_due(log.now + 5_000),
        vec![destroy.clone()]
    );
    log.now += 5_000;
    log.vouch();
    log.run("node-1", destroy).expect("committed");
    assert_eq!(
        log.sm.key("k").expect("k").versions[0].state,
        VersionState::Destroying
    );
}

#[test]
fn a_lying_leader_cannot_destroy_early_by_stamping_a_later_time() {
    let mut log = destruction_scheduled(86_400_000);
    log.vouch();
    let honest_now = log.now;
    // node-1 (the leader) stamps and signs a time a day and more ahead.
    log.now += 2 * 86_400_000;
    let destroy = Operation::Destroy {
        name: "k".into(),
        version: KeyVersion(1),
    };
    let early = log.run("node-1", destroy.clone());
    assert!(early.is_err(), "{early:?}");
    assert!(matches!(
        log.sm.key("k").expect("k").versions[0].state,
        VersionState::PendingDestruction { .. }
    ));
    // Its own word moved nothing: the vouched time is the other holders'.
    assert_eq!(log.sm.vouched_ms(), honest_now);
    // Nor does the state ask the leader's clock: nothing is due yet at the
    // vouched time, so honest leaders propose nothing.
    assert!(log
        .sm
        .maintenance_due(log.sm.schedule_time_ms(log.now))
        .is_empty());
    // Once the other holders vouch for the day, it applies.
    log.run("node-2", Operation::Attest).expect("attest");
    log.run("node-3", Operation::Attest).expect("attest");
    log.run("node-1", destroy).expect("due by the vouched time");
}

#[test]
fn nodes_vouch_for_their_clock_while_a_scheduled_step_waits_for_it() {
    let mut log = destruction_scheduled(5_000);
    log.vouch();
    assert!(!log.sm.needs_attestation("node-2", log.now + 4_999));
    assert!(log.sm.needs_attestation("node-2", log.now + 5_000));
    // A node that holds no live version has no say, so it never attests.
    assert!(!log.sm.needs_attestation("node-7", log.now + 5_000));
    log.now += 5_000;
    let remembered = log.sm.remembered_requests();
    log.run("node-2", Operation::Attest).expect("attest");
    assert_eq!(
        log.sm.remembered_requests(),
        remembered,
        "an attestation is idempotent and never remembered"
    );
    // Vouched for now: node-2 waits at least ATTEST_WAIT_MS before again.
    assert!(!log.sm.needs_attestation("node-2", log.now + 1));
    assert!(log.sm.needs_attestation("node-3", log.now));
    log.run("node-3", Operation::Attest).expect("attest");
    assert!(
        !log.sm.needs_attestation("node-1", log.now),
        "nothing waits"
    );
}

fn requested_id(outcome: Result<Applied, StateError>) -> String {
    match outcome {
        Ok(Applied::ApprovalRequested { id, .. }) => id,
        other => panic!("expected an approval request: {other:?}"),
    }
}

#[test]
fn approval_ids_are_unique_and_never_overwrite_a_pending_approval() {
    let mut log = Log::new();
    log.key("k");
    log.key("m");
    log.principal("mallory", &[Role::Admin]);
    log.principal("ann", &[Role::Approver]);
    log.principal("bob", &[Role::Approver]);
    for key in ["k", "m"] {
        let policy = approval_policy_on(key, 2, vec![Permission::KeyDestroy]);
        log.run("admin", policy).expect("policy");
    }
    let schedule = |key: &str| Operation::ScheduleDestruction {
        name: key.into(),
        version: KeyVersion(1),
        after_ms: 0,
    };
    // The victim's request, then the attacker's with a request id that
    // shares its first 8 bytes (the old approval id) and differs after.
    let victim = RequestId([7; 16]);
    let mut colliding = [7u8; 16];
    colliding[15] = 8;
    let first = requested_id(log.run_with_id("admin", victim, schedule("k")));
    let second = requested_id(log.run_with_id("mallory", RequestId(colliding), schedule("m")));
    assert_ne!(first, second, "two requests, two approvals");
    let kept = log.sm.approval(&first).expect("the first approval is kept");
    assert_eq!(kept.requester, "admin");
    assert_eq!(kept.key, "k");
    assert_eq!(
        log.sm.approval(&second).expect("second").requester,
        "mallory"
    );
}

#[test]
fn a_reused_request_id_never_gives_a_new_key_an_existing_id() {
    let mut log = Log::new();
    let create = |name: &str| common::create_key(name, &[1, 2, 3]);
    let reused = RequestId([9; 16]);
    log.run_with_id("admin", reused, create("first"))
        .expect("first");
    // A flood of requests within a proof's freshness window does not push
    // the id out (a replay of a signed command stays a duplicate)...
    for i in 0..qk_state::MAX_REMEMBERED_REQUESTS as u64 {
        let tag = Operation::SetTag {
            name: "first".into(),
            tag: "n".into(),
            value: Some(i.to_be_bytes().to_vec()),
        };
        log.run("admin", tag).expect("tag");
    }
    let replay = log.sm.apply(&Command {
        request_id: reused,
        time_ms: log.now,
        principal: "admin".into(),
        op: create("second"),
        proof: None,
    });
    assert!(replay.duplicate, "a fresh request id is still remembered");
    // With more remembered than kept in the long run, a node whose vouched
    // time falls a minute behind is asked to attest.
    let every = qk_state::ATTEST_EVERY_MS;
    assert!(!log.sm.needs_attestation("node-1", log.now));
    assert!(log.sm.needs_attestation("node-1", log.now + every + 1));
    assert!(log.sm.key("second").is_none());
    // ...once no proof of it can be fresh (the nodes vouch for a later
    // time), it is forgotten...
    log.now += qk_state::proof::INTENT_MAX_AGE_MS + 1;
    for node in ["node-1", "node-2"] {
        let _ = log.run(node, Operation::Attest);
    }
    log.run(
        "admin",
        Operation::SetTag {
            name: "first".into(),
            tag: "n".into(),
            value: None,
        },
    )
    .expect("tag");
    // ...and used again for another key.
    log.run_with_id("admin", reused, create("second"))
        .expect("second");
    let id = |name: &str| log.sm.key(name).expect("key").id;
    assert_ne!(
        id("first"),
        id("second"),
        "key ids are unique by construction"
    );
}

#[test]
fn a_node_files_erase_receipts_only_for_itself() {
    let mut log = Log::new();
    log.key("k");
    let v1 = KeyVersion(1);
    log.run(
        "admin",
        Operation::ScheduleDestruction {
            name: "k".into(),
            version: v1,
            after_ms: 0,
        },
    )
    .expect("scheduled");
    log.run(
        "node-1",
        Operation::Destroy {
            name: "k".into(),
            version: v1,
        },
    )
    .expect("destroying");
    // Node 2 alone tries to file the two receipts that would mark the
    // version destroyed while nodes 1 and 3 still hold their shares.
    for node in [1, 3] {
        let forged = Operation::EraseReceipt {
            name: "k".into(),
            version: v1,
            node: NodeId(node),
        };
        let refused = log.run("node-2", forged).expect_err("forged receipt");
        assert!(refused.to_string().contains("itself"), "{refused}");
    }
    let v = log.sm.key("k").expect("k").version(v1).expect("v1").clone();
    assert_eq!(v.state, VersionState::Destroying);
    assert!(v.erase_receipts.is_empty());
    assert!(
        log.last_outcome().starts_with("refused"),
        "audited as refused"
    );
}

#[test]
fn a_policy_with_an_unknown_field_is_refused_and_the_field_named() {
    let misspelled = r#"{"aproval": {"required": 2, "approvers": ["role:approver"], "permissions": ["key-destroy"]}}"#;
    let err = serde_json::from_str::<KeyPolicy>(misspelled).expect_err("unknown field");
    assert!(err.to_string().contains("aproval"), "{err}");
    let nested = r#"{"approval": {"required": 2, "approvers": [], "permissions": [], "ttl": 5}}"#;
    let err = serde_json::from_str::<KeyPolicy>(nested).expect_err("unknown nested field");
    assert!(err.to_string().contains("ttl"), "{err}");
    let rule = r#"{"rules": [{"principals": ["*"], "permissions": ["decrypt"], "contxt": {}}]}"#;
    let err = serde_json::from_str::<KeyPolicy>(rule).expect_err("unknown rule field");
    assert!(err.to_string().contains("contxt"), "{err}");
}

fn issue_for(principal: &str, id: &str, now: u64) -> Operation {
    Operation::IssueToken {
        id: id.into(),
        principal: principal.into(),
        description: "test".into(),
        secret_sha256: Sha256::digest(id.as_bytes()).into(),
        verify_key: [3; 32],
        expires_at_ms: now + 60_000,
    }
}

#[test]
fn a_token_lives_at_most_366_days() {
    let mut log = Log::new();
    log.principal("sock", &[Role::KeyUser]);
    let year_ms: u64 = 366 * 24 * 3600 * 1000;
    let issue = |id: &str, expires: u64| {
        let mut op = issue_for("sock", id, 0);
        if let Operation::IssueToken { expires_at_ms, .. } = &mut op {
            *expires_at_ms = expires;
        }
        op
    };
    let too_long = log.run("admin", issue("00000000000000c1", log.now + year_ms + 1));
    assert!(
        matches!(&too_long, Err(StateError::Invalid(m)) if m.contains("one year from now")),
        "{too_long:?}"
    );
    log.run("admin", issue("00000000000000c2", log.now + year_ms))
        .expect("a token of exactly 366 days");
}

#[test]
fn one_admin_cannot_mint_approver_tokens_or_keep_tokens_across_an_approver_grant() {
    let mut log = Log::new();
    log.principal("ann", &[Role::Approver]);
    log.principal("sock", &[Role::KeyUser]);
    // No one but ann issues ann's tokens...
    let minted = log.run("admin", issue_for("ann", "00000000000000a1", log.now));
    assert!(
        matches!(&minted, Err(StateError::Denied(m)) if m.contains("only ann itself")),
        "{minted:?}"
    );
    // ...ann does, with her own credential.
    log.run("ann", issue_for("ann", "00000000000000a2", log.now))
        .expect("an approver issues its own token");
    // A token minted before the approver role was granted dies with the grant.
    log.run("admin", issue_for("sock", "00000000000000b1", log.now))
        .expect("a key-user's token");
    let grant = Operation::UpdatePrincipal {
        name: "sock".into(),
        roles: [Role::Approver].into(),
        disabled: false,
    };
    log.run("admin", grant).expect("granted");
    let token = log
        .sm
        .tokens()
        .find(|t| t.id == "00000000000000b1")
        .expect("token");
    assert!(token.revoked_ms.is_some(), "revoked at the approver grant");
    // Non-approvers still get tokens from an administrator.
    log.principal("svc", &[Role::KeyUser]);
    log.run("admin", issue_for("svc", "00000000000000c1", log.now))
        .expect("a service token");
    let own = log.run("svc", issue_for("svc", "00000000000000c2", log.now));
    assert!(matches!(own, Err(StateError::Denied(_))), "{own:?}");
}

#[test]
fn mark_compromised_can_wait_for_approval() {
    let mut log = Log::new();
    log.key("k");
    log.principal("ann", &[Role::Approver]);
    let policy = approval_policy(1, vec![Permission::KeyMarkCompromised]);
    log.run("admin", policy).expect("policy");
    let mark = Operation::MarkCompromised {
        name: "k".into(),
        version: KeyVersion(1),
        reason: "seen in a dump".into(),
        allow_decrypt: false,
    };
    let id = requested_id(log.run("admin", mark));
    let v = log
        .sm
        .key("k")
        .expect("k")
        .version(KeyVersion(1))
        .expect("v1")
        .clone();
    assert!(v.compromised.is_none(), "nothing happens before approval");
    log.run("ann", Operation::Approve { id }).expect("approved");
    let v = log
        .sm
        .key("k")
        .expect("k")
        .version(KeyVersion(1))
        .expect("v1")
        .clone();
    assert!(v.compromised.is_some(), "executed once approved");
}

#[test]
fn one_principal_cannot_fill_the_approval_store() {
    let mut log = Log::new();
    log.principal("app", &[Role::KeyUser]);
    log.principal("other", &[Role::KeyUser]);
    log.principal("ann", &[Role::Approver]);
    log.key("k");
    log.run("admin", approval_policy(1, vec![Permission::Decrypt]))
        .expect("policy");
    let ask = |i: u32| Operation::RequestApproval {
        action: PendingAction::Decrypt {
            key: "k".into(),
            ciphertext_sha256: Sha256::digest(i.to_be_bytes()).into(),
        },
    };
    let cap = qk_state::MAX_PENDING_APPROVALS_PER_PRINCIPAL as u32;
    for i in 0..cap {
        log.run("app", ask(i)).expect("within the cap");
    }
    let err = log.run("app", ask(cap)).expect_err("over the cap");
    assert!(err.to_string().contains("pending"), "{err}");
    log.run("other", ask(0))
        .expect("another principal is not held back");
}

#[test]
fn old_tokens_and_finished_approvals_are_pruned_by_log_time() {
    let mut log = Log::new();
    log.principal("app", &[Role::KeyUser]);
    log.principal("ann", &[Role::Approver]);
    log.key("k");
    log.run("admin", approval_policy(1, vec![Permission::Decrypt]))
        .expect("policy");
    log.run("admin", issue_for("app", "00000000000000aa", log.now))
        .expect("token that will be revoked");
    log.run("admin", issue_for("app", "00000000000000bb", log.now))
        .expect("token that stays");
    log.run(
        "admin",
        Operation::RevokeToken {
            id: "00000000000000aa".into(),
        },
    )
    .expect("revoked");
    let ask = Operation::RequestApproval {
        action: PendingAction::Decrypt {
            key: "k".into(),
            ciphertext_sha256: Sha256::digest(b"ct").into(),
        },
    };
    let Ok(Applied::ApprovalRequested { id, .. }) = log.run("app", ask) else {
        panic!("request recorded");
    };
    log.run(
        "ann",
        Operation::Deny {
            id: id.clone(),
            reason: "no".into(),
        },
    )
    .expect("denied");
    assert!(!log
        .sm
        .maintenance_due(log.now)
        .contains(&Operation::PruneRecords));
    assert!(
        log.run("node-1", Operation::PruneRecords).is_err(),
        "nothing old yet"
    );

    // The live token expires one minute after issue (`issue_for`); a week
    // after the approval's expiry everything above is old enough.
    log.now += 30 * 24 * 60 * 60 * 1000;
    assert!(log
        .sm
        .maintenance_due(log.now)
        .contains(&Operation::PruneRecords));
    assert!(
        log.run("admin", Operation::PruneRecords).is_err(),
        "node-only"
    );
    log.vouch();
    log.run("node-1", Operation::PruneRecords).expect("pruned");
    assert_eq!(log.sm.tokens().count(), 0);
    assert!(log.sm.approval(&id).is_none());
    assert!(log.run("node-1", Operation::PruneRecords).is_err(), "once");
}

fn access_rule(required: u16, permissions: Vec<Permission>) -> Operation {
    Operation::SetAccessRule {
        rule: Some(ApprovalRule {
            required,
            approvers: vec!["role:approver".into()],
            permissions,
            ttl_ms: 60_000,
        }),
    }
}

#[test]
fn under_the_access_rule_one_admin_cannot_grant_roles_mint_tokens_or_drop_the_rule_alone() {
    let mut log = Log::new();
    log.principal("ann", &[Role::Approver]);
    log.principal("bob", &[Role::Approver]);
    log.principal("svc", &[Role::KeyUser]);
    let both = vec![Permission::PrincipalManage, Permission::TokenManage];
    log.run("admin", access_rule(2, both)).expect("rule set");

    // A new approver, a role grant, a token for another: each only asked.
    let sock = Operation::CreatePrincipal {
        name: "sock".into(),
        roles: [Role::Approver].into(),
    };
    let created = requested_id(log.run("admin", sock));
    assert!(
        log.sm.principal("sock").is_none(),
        "nothing before approval"
    );
    let grant = Operation::UpdatePrincipal {
        name: "svc".into(),
        roles: [Role::Approver].into(),
        disabled: false,
    };
    requested_id(log.run("admin", grant));
    assert!(!log
        .sm
        .principal("svc")
        .expect("svc")
        .roles
        .contains(&Role::Approver));
    requested_id(log.run("admin", issue_for("svc", "00000000000000d1", log.now)));
    assert!(log.sm.tokens().all(|t| t.id != "00000000000000d1"));

    // Dropping the rule is itself under the rule.
    let drop = requested_id(log.run("admin", Operation::SetAccessRule { rule: None }));
    assert!(log.sm.access_rule().is_some());

    // The admin cannot approve its own request, nor can one approver finish it.
    let own = log.run(
        "admin",
        Operation::Approve {
            id: created.clone(),
        },
    );
    assert!(matches!(own, Err(StateError::Denied(_))), "{own:?}");
    log.run(
        "ann",
        Operation::Approve {
            id: created.clone(),
        },
    )
    .expect("first approval");
    assert!(log.sm.principal("sock").is_none(), "one approval of two");
    log.run("bob", Operation::Approve { id: created })
        .expect("second approval");
    assert!(
        log.sm.principal("sock").is_some(),
        "created once two approved"
    );

    // Revoking a token, and issuing one's own, never wait.
    log.run("admin", issue_for("admin", "00000000000000e1", log.now))
        .expect("an admin's own token");
    log.run(
        "admin",
        Operation::RevokeToken {
            id: "00000000000000e1".into(),
        },
    )
    .expect("revocation is immediate");

    log.run("ann", Operation::Approve { id: drop.clone() })
        .expect("one");
    log.run("bob", Operation::Approve { id: drop })
        .expect("two");
    assert!(log.sm.access_rule().is_none(), "dropped with two approvals");
}

#[test]
fn the_access_rule_is_checked_when_saved() {
    let mut log = Log::new();
    let key_permission = log.run("admin", access_rule(1, vec![Permission::KeyDestroy]));
    assert!(
        matches!(&key_permission, Err(StateError::Invalid(m)) if m.contains("key-destroy") && m.contains("key policy")),
        "{key_permission:?}"
    );
    let no_approvers = log.run("admin", access_rule(1, vec![Permission::PrincipalManage]));
    assert!(
        matches!(&no_approvers, Err(StateError::Invalid(m)) if m.contains("add approvers first")),
        "{no_approvers:?}"
    );
    log.principal("op", &[Role::Operator]);
    log.principal("ann", &[Role::Approver]);
    let tokens_only = log.run("admin", access_rule(1, vec![Permission::TokenManage]));
    assert!(
        matches!(&tokens_only, Err(StateError::Invalid(m)) if m.contains("must cover principal-manage")),
        "{tokens_only:?}"
    );
    let both = vec![Permission::PrincipalManage, Permission::TokenManage];
    const THIRTY_DAYS_MS: u64 = 30 * 24 * 3600 * 1000;
    for ttl_ms in [0, 59_999, THIRTY_DAYS_MS + 1] {
        let Operation::SetAccessRule {
            rule: Some(mut rule),
        } = access_rule(1, both.clone())
        else {
            unreachable!("access_rule builds a rule")
        };
        rule.ttl_ms = ttl_ms;
        let op = Operation::SetAccessRule { rule: Some(rule) };
        let refused = log.run("admin", op);
        assert!(
            matches!(&refused, Err(StateError::Invalid(m)) if m.contains("ttl_ms")),
            "ttl {ttl_ms}: {refused:?}"
        );
    }
    let by_operator = log.run("op", access_rule(1, both.clone()));
    assert!(
        matches!(by_operator, Err(StateError::Denied(_))),
        "{by_operator:?}"
    );
    log.run("admin", access_rule(1, both))
        .expect("a rule that can be met");
}

#[test]
fn an_access_rule_takes_a_ttl_of_exactly_one_minute_or_thirty_days() {
    for ttl_ms in [60_000, 30 * 24 * 3600 * 1000] {
        let mut log = Log::new();
        log.principal("ann", &[Role::Approver]);
        let both = vec![Permission::PrincipalManage, Permission::TokenManage];
        let Operation::SetAccessRule {
            rule: Some(mut rule),
        } = access_rule(1, both)
        else {
            unreachable!("access_rule builds a rule")
        };
        rule.ttl_ms = ttl_ms;
        log.run("admin", Operation::SetAccessRule { rule: Some(rule) })
            .unwrap_or_else(|e| panic!("ttl {ttl_ms} is within 1 minute to 30 days: {e}"));
        let set = log.sm.access_rule().map(|r| r.ttl_ms);
        assert_eq!(set, Some(ttl_ms), "the rule took effect at once");
    }
}

#[test]
fn no_principal_change_leaves_an_approval_rule_without_enough_approvers() {
    let mut log = Log::new();
    log.key("k");
    log.principal("ann", &[Role::Approver]);
    log.principal("bob", &[Role::Approver]);
    log.run("admin", approval_policy(2, vec![Permission::KeyDestroy]))
        .expect("a two-approver rule on k");
    let demote = Operation::UpdatePrincipal {
        name: "bob".into(),
        roles: [Role::KeyUser].into(),
        disabled: false,
    };
    let refused = log.run("admin", demote);
    assert!(
        matches!(&refused, Err(StateError::Invalid(m)) if m.contains("bob") && m.contains("key \"k\"") && m.contains("add another approver first")),
        "{refused:?}"
    );
    assert!(log
        .sm
        .principal("bob")
        .expect("bob")
        .roles
        .contains(&Role::Approver));
    let deleted = log.run("admin", Operation::DeletePrincipal { name: "ann".into() });
    assert!(
        matches!(deleted, Err(StateError::Invalid(_))),
        "{deleted:?}"
    );
    let disabled = Operation::UpdatePrincipal {
        name: "ann".into(),
        roles: [Role::Approver].into(),
        disabled: true,
    };
    assert!(
        log.run("admin", disabled).is_err(),
        "disabling ann breaks k's rule"
    );
    // With a third approver, one may go.
    log.principal("cat", &[Role::Approver]);
    log.run("admin", Operation::DeletePrincipal { name: "ann".into() })
        .expect("two approvers remain");
}

#[test]
fn permission_names_parse_back_and_unknown_names_do_not() {
    for p in Permission::ALL {
        assert_eq!(Permission::parse(p.name()), Some(p));
    }
    assert_eq!(Permission::parse("decrypt-everything"), None);
}

#[test]
fn a_refusal_names_the_principals_roles_and_the_roles_that_would_do() {
    let mut log = Log::new();
    log.principal("auditor-1", &[Role::Auditor]);
    log.principal("nobody", &[]);
    log.key("k");
    let refusal =
        |who: &str| match log
            .sm
            .authorize(who, Permission::Decrypt, Some("k"), &no_context())
        {
            Decision::Deny(reason) => reason,
            other => panic!("{who} may not decrypt: {other:?}"),
        };
    let reason = refusal("auditor-1");
    assert!(reason.contains("roles [auditor]"), "{reason}");
    assert!(reason.contains("admin, key-user"), "{reason}");
    let reason = refusal("nobody");
    assert!(reason.contains("no roles"), "{reason}");
}

#[test]
fn a_token_record_never_shows_its_secret_hash_or_key_in_debug() {
    let record = qk_state::TokenRecord {
        id: "0123456789abcdef".into(),
        principal: "svc".into(),
        description: "ci".into(),
        secret_sha256: [0xab; 32],
        verify_key: [0xcd; 32],
        created_ms: 1,
        expires_at_ms: 2,
        revoked_ms: None,
    };
    let shown = format!("{record:?}");
    assert!(
        shown.contains("0123456789abcdef") && shown.contains("svc"),
        "{shown}"
    );
    assert!(!shown.contains("171") && !shown.contains("205"), "{shown}");
    assert!(
        !shown.contains("secret") && !shown.contains("verify_key"),
        "{shown}"
    );
}

#[test]
fn an_approval_rule_saved_without_a_ttl_waits_a_day() {
    let rule: ApprovalRule = serde_json::from_str(
        r#"{"required": 1, "approvers": ["role:approver"], "permissions": ["decrypt"]}"#,
    )
    .expect("an older rule without ttl_ms");
    assert_eq!(rule.ttl_ms, 24 * 3600 * 1000);
}

#[test]
fn only_node_followed_by_digits_speaks_as_a_node() {
    let mut log = Log::new();
    for name in ["node-", "node-x", "node-1x"] {
        let r = log.run(name, Operation::Attest);
        assert!(
            matches!(&r, Err(StateError::Denied(m)) if m.contains("proposed by cluster nodes only")),
            "{name}: {r:?}"
        );
    }
}

#[test]
fn a_token_id_is_sixteen_hex_digits() {
    let mut log = Log::new();
    log.principal("sock", &[Role::KeyUser]);
    for id in ["zzzzzzzzzzzzzzzz", "00000000000000a", "00000000000000a10"] {
        let r = log.run("admin", issue_for("sock", id, log.now));
        assert!(
            matches!(&r, Err(StateError::Invalid(m)) if m.contains("16 new hex digits")),
            "{id}: {r:?}"
        );
    }
    log.run("admin", issue_for("sock", "00000000000000aF", log.now))
        .expect("sixteen hex digits");
}

#[test]
fn a_policy_takes_64_rules_of_64_principals_each() {
    let mut log = Log::new();
    log.key("k");
    let rule = |i: usize| PolicyRule {
        principals: (0..64).map(|p| format!("p{i}-{p}")).collect(),
        permissions: vec![Permission::Decrypt],
        context: BTreeMap::new(),
    };
    let policy = KeyPolicy {
        rules: (0..64).map(rule).collect(),
        approval: None,
    };
    let set = |policy: KeyPolicy| Operation::SetPolicy {
        name: "k".into(),
        policy: Some(policy),
    };
    log.run("admin", set(policy.clone()))
        .expect("at the limits");
    let mut too_many_rules = policy.clone();
    too_many_rules.rules.push(rule(64));
    assert!(log.run("admin", set(too_many_rules)).is_err());
    let mut too_many_principals = policy;
    too_many_principals.rules[0]
        .principals
        .push("one-more".into());
    assert!(log.run("admin", set(too_many_principals)).is_err());
}

#[test]
fn an_approval_is_expired_at_its_expiry_and_not_a_millisecond_before() {
    let mut log = Log::new();
    log.principal("ann", &[Role::Approver]);
    log.principal("bob", &[Role::Approver]);
    log.run("admin", access_rule(1, vec![Permission::PrincipalManage]))
        .expect("rule set");
    let sock = Operation::CreatePrincipal {
        name: "sock".into(),
        roles: [Role::KeyUser].into(),
    };
    let id = requested_id(log.run("admin", sock));
    let expires_at_ms = log.sm.approval(&id).expect("approval").expires_at_ms;
    let expire = || Operation::ExpireApproval { id: id.clone() };
    log.now = expires_at_ms - 1;
    let early = log.run("node-1", expire());
    assert!(
        matches!(&early, Err(StateError::Invalid(m)) if m.contains("not pending past its expiry")),
        "{early:?}"
    );
    log.now = expires_at_ms;
    log.run("node-1", expire()).expect("at its expiry");
    assert_eq!(
        log.sm.approval(&id).expect("approval").status,
        ApprovalStatus::Expired
    );
}

#[test]
fn a_denied_approval_is_not_expired_later() {
    let mut log = Log::new();
    log.principal("ann", &[Role::Approver]);
    log.principal("bob", &[Role::Approver]);
    log.run("admin", access_rule(1, vec![Permission::PrincipalManage]))
        .expect("rule set");
    let sock = Operation::CreatePrincipal {
        name: "sock".into(),
        roles: [Role::KeyUser].into(),
    };
    let id = requested_id(log.run("admin", sock));
    let deny = Operation::Deny {
        id: id.clone(),
        reason: "no".into(),
    };
    log.run("ann", deny).expect("denied");
    log.now = log.sm.approval(&id).expect("approval").expires_at_ms + 1;
    let late = log.run("node-1", Operation::ExpireApproval { id: id.clone() });
    assert!(late.is_err(), "{late:?}");
    assert!(matches!(
        log.sm.approval(&id).expect("approval").status,
        ApprovalStatus::Denied { .. }
    ));
}

#[test]
fn a_token_description_and_a_rules_context_are_taken_at_their_limits() {
    let mut log = Log::new();
    log.principal("sock", &[Role::KeyUser]);
    let mut issue = issue_for("sock", "00000000000000d1", log.now);
    if let Operation::IssueToken { description, .. } = &mut issue {
        *description = "d".repeat(512);
    }
    log.run("admin", issue).expect("a 512-byte description");
    log.key("k");
    let rule = PolicyRule {
        principals: vec!["sock".into()],
        permissions: vec![Permission::Decrypt],
        context: (0..16).map(|i| (format!("c{i}"), "v".into())).collect(),
    };
    let policy = KeyPolicy {
        rules: vec![rule],
        approval: None,
    };
    let set = Operation::SetPolicy {
        name: "k".into(),
        policy: Some(policy.clone()),
    };
    log.run("admin", set).expect("16 context conditions");
    let mut over = policy;
    over.rules[0].context.insert("c16".into(), "v".into());
    let set = Operation::SetPolicy {
        name: "k".into(),
        policy: Some(over),
    };
    assert!(log.run("admin", set).is_err(), "17 conditions");
}

#[test]
fn an_ended_token_is_pruned_a_week_after_it_ended_and_not_before() {
    let mut log = Log::new();
    log.principal("sock", &[Role::KeyUser]);
    log.run("admin", issue_for("sock", "00000000000000b7", log.now))
        .expect("issued");
    let ended_ms = log.now + 60_000; // issue_for's expiry
    let week_ms: u64 = 7 * 24 * 3600 * 1000;
    let prunes = |log: &Log, at: u64| {
        log.sm
            .maintenance_due(at)
            .contains(&Operation::PruneRecords)
    };
    assert!(!prunes(&log, ended_ms + week_ms - 1));
    assert!(prunes(&log, ended_ms + week_ms));
}

#[test]
fn a_token_text_parses_only_with_a_16_digit_id_and_a_64_digit_secret() {
    let (id, secret) = ("00000000000000a1", "ab".repeat(32));
    let text = qk_state::token_text(id, &secret);
    assert_eq!(qk_state::parse_token(&text), Some((id, secret.as_str())));
    for bad in [
        qk_state::token_text("00000000000000a", &secret),
        qk_state::token_text("00000000000000zz", &secret),
        qk_state::token_text(id, &"ab".repeat(31)),
        qk_state::token_text(id, &format!("{}zz", "ab".repeat(31))),
    ] {
        assert_eq!(qk_state::parse_token(&bad), None, "{bad}");
    }
}

#[test]
fn a_principal_name_is_1_to_128_plain_characters() {
    let mut log = Log::new();
    let create = |name: &str| Operation::CreatePrincipal {
        name: name.into(),
        roles: [Role::KeyUser].into(),
    };
    for bad in ["", "has space", "semi;colon", &"p".repeat(129)] {
        let r = log.run("admin", create(bad));
        assert!(
            matches!(&r, Err(StateError::Invalid(m)) if m.contains("must be 1-128 characters")),
            "{bad:?}: {r:?}"
        );
    }
    log.run("admin", create(&"p".repeat(128)))
        .expect("128 characters");
    log.run("admin", create("svc-1_a.b@example"))
        .expect("the allowed punctuation");
}

#[test]
fn the_principal_list_names_every_principal() {
    let mut log = Log::new();
    log.principal("ann", &[Role::Approver]);
    log.principal("svc", &[Role::KeyUser]);
    let names: Vec<&str> = log.sm.principals().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["admin", "ann", "svc"]);
    log.run("admin", issue_for("svc", "00000000000000c9", log.now))
        .expect("issued");
    let tokens: Vec<&str> = log.sm.tokens().map(|t| t.id.as_str()).collect();
    assert_eq!(tokens, ["00000000000000c9"]);
    let token = log
        .sm
        .token("00000000000000c9")
        .map(|t| t.principal.as_str());
    assert_eq!(token, Some("svc"));
    log.run("admin", access_rule(1, vec![Permission::PrincipalManage]))
        .expect("rule set");
    let id = requested_id(log.run("admin", Operation::DeletePrincipal { name: "svc".into() }));
    let approvals: Vec<&str> = log.sm.approvals().map(|a| a.id.as_str()).collect();
    assert_eq!(approvals, [id.as_str()]);
}

/// Only a grant of the approver role revokes the tokens others issued: a
/// role change that grants no approver keeps them.
#[test]
fn a_role_change_without_the_approver_role_keeps_the_tokens() {
    let mut log = Log::new();
    log.principal("svc", &[Role::KeyUser]);
    log.run("admin", issue_for("svc", "00000000000000f1", log.now))
        .expect("a service token");
    let change = Operation::UpdatePrincipal {
        name: "svc".into(),
        roles: [Role::KeyUser, Role::Auditor].into(),
        disabled: false,
    };
    log.run("admin", change).expect("roles changed");
    let token = log
        .sm
        .tokens()
        .find(|t| t.id == "00000000000000f1")
        .expect("token");
    assert!(
        token.revoked_ms.is_none(),
        "still live: no approver role was granted"
    );
}

#[test]
fn aliases_are_unique_never_a_key_name_and_moving_one_needs_both_keys() {
    use qk_state::AliasChange::{Create, Delete, Move};
    let mut log = Log::new();
    log.key("a");
    log.key("b");
    log.principal("ops", &[Role::Operator]);
    let alias = |name: &str, alias: &str, change| Operation::SetAlias {
        name: name.into(),
        alias: alias.into(),
        change,
    };
    log.run("ops", alias("a", "orders", Create))
        .expect("created");
    let on_a: Vec<&str> = log.sm.key("a").expect("a").aliases().collect();
    assert_eq!(on_a, ["orders"]);
    assert_eq!(
        log.sm.key_by_alias("orders").map(|k| k.name.as_str()),
        Some("a")
    );
    let taken = log.run("ops", alias("b", "orders", Create));
    assert_eq!(taken, Err(StateError::AliasExists("orders".into())));
    let a_name = log.run("ops", alias("a", "b", Create));
    assert_eq!(
        a_name,
        Err(StateError::AliasExists("b".into())),
        "a key's name is no alias"
    );
    let key_named_alias = log.run("admin", common::create_key("orders", &[1, 2, 3]));
    assert_eq!(
        key_named_alias,
        Err(StateError::AliasExists("orders".into()))
    );
    // Tags make no aliases: any name is an ordinary tag, and the empty name
    // that holds a key's aliases is refused to SetTag.
    let tag = |tag: &str| Operation::SetTag {
        name: "a".into(),
        tag: tag.into(),
        value: Some(b"other".to_vec()),
    };
    log.run("admin", tag("alias/other"))
        .expect("an ordinary tag");
    assert!(log.sm.key_by_alias("other").is_none());
    assert!(matches!(
        log.run("admin", tag("")),
        Err(StateError::Invalid(_))
    ));
    for bad in ["", "aws/x", "a b", &"x".repeat(200)] {
        let refused = log.run("ops", alias("a", bad, Create));
        assert!(matches!(refused, Err(StateError::Invalid(_))), "{bad:?}");
    }

    // Only the admin may configure "a" now: ops cannot take the alias off it.
    let policy = KeyPolicy {
        rules: vec![PolicyRule {
            principals: vec!["admin".into()],
            permissions: vec![Permission::KeyConfigure],
            context: BTreeMap::new(),
        }],
        approval: None,
    };
    let set = Operation::SetPolicy {
        name: "a".into(),
        policy: Some(policy),
    };
    log.run("admin", set).expect("policy set");
    let moved = log.run("ops", alias("b", "orders", Move));
    assert!(matches!(moved, Err(StateError::Denied(_))), "{moved:?}");
    assert_eq!(
        log.sm.key_by_alias("orders").map(|k| k.name.as_str()),
        Some("a")
    );
    log.run("admin", alias("b", "orders", Move)).expect("moved");
    assert_eq!(
        log.sm.key_by_alias("orders").map(|k| k.name.as_str()),
        Some("b")
    );
    assert!(!log
        .sm
        .key("a")
        .expect("a")
        .tags
        .contains_key("alias/orders"));

    let decoded = StateMachine::from_bytes(&log.sm.to_bytes().expect("encode")).expect("decode");
    assert_eq!(
        decoded.key_by_alias("orders").map(|k| k.name.as_str()),
        Some("b")
    );
    let wrong_key = log.run("admin", alias("a", "orders", Delete));
    assert!(
        matches!(wrong_key, Err(StateError::NotFound(_))),
        "{wrong_key:?}"
    );
    let unknown = log.run("ops", alias("b", "none", Move));
    assert!(
        matches!(unknown, Err(StateError::NotFound(_))),
        "{unknown:?}"
    );
    log.run("ops", alias("b", "orders", Delete))
        .expect("deleted");
    assert!(log.sm.key_by_alias("orders").is_none());
    assert!(log.sm.key("b").expect("b").tags.is_empty());
}

#[test]
fn aws_access_keys_are_no_bearer_tokens_and_never_carry_admin_or_approver_roles() {
    let mut log = Log::new();
    log.principal("svc", &[Role::Operator, Role::KeyUser]);
    let secret = "cd".repeat(32);
    let aws_id = format!("{}00000001", qk_state::AWS_TOKEN_ID_MARKER);
    let issue = |principal: &str, id: &str, now: u64| Operation::IssueToken {
        id: id.into(),
        principal: principal.into(),
        description: "aws".into(),
        secret_sha256: Sha256::digest(secret.as_bytes()).into(),
        verify_key: qk_state::proof::token_verify_key(&secret).expect("key"),
        expires_at_ms: now + 60_000,
    };
    let refused = log.run("admin", issue("admin", &aws_id, log.now));
    assert!(
        matches!(refused, Err(StateError::Denied(ref m)) if m.contains("admin role")),
        "{refused:?}"
    );
    log.run("admin", issue("svc", &aws_id, log.now))
        .expect("issued to a service");
    let bearer_id = "0123456789abcdef";
    log.run("admin", issue("svc", bearer_id, log.now))
        .expect("a bearer token");

    let aws = qk_state::token_text(&aws_id, &secret);
    let bearer = qk_state::token_text(bearer_id, &secret);
    assert!(
        log.sm.authenticate_token(&aws, log.now).is_err(),
        "no bearer use"
    );
    assert!(log.sm.authenticate_aws_token(&aws, log.now).is_ok());
    assert!(
        log.sm.authenticate_aws_token(&bearer, log.now).is_err(),
        "no SigV4 use"
    );
    assert!(log.sm.authenticate_token(&bearer, log.now).is_ok());

    // Gaining the admin role revokes the principal's AWS keys, not its
    // bearer tokens.
    let promote = Operation::UpdatePrincipal {
        name: "svc".into(),
        roles: [Role::Admin].into(),
        disabled: false,
    };
    log.run("admin", promote).expect("promoted");
    assert!(
        log.sm.authenticate_aws_token(&aws, log.now).is_err(),
        "revoked"
    );
    assert!(log.sm.authenticate_token(&bearer, log.now).is_ok());
}

#[test]
fn the_refresh_schedule_starts_due_refreshes_and_waits_after_an_abandoned_one() {
    let mut log = Log::new();
    log.key("k");
    let too_short = Operation::SetRefreshSchedule {
        every_ms: Some(qk_state::MIN_REFRESH_PERIOD_MS - 1),
    };
    assert!(log.run("admin", too_short).is_err());
    assert!(log.sm.refresh_schedule().every_ms().is_none());
    let every = 20_000;
    let set = Operation::SetRefreshSchedule {
        every_ms: Some(every),
    };
    log.run("admin", set).expect("schedule set");
    let refresh = Operation::ScheduledRefresh {
        name: "k".into(),
        version: KeyVersion(1),
    };
    let created = log.sm.key("k").expect("k").versions[0].created_ms;
    log.now = created + every - 1;
    log.vouch();
    assert!(log.sm.maintenance_due(log.now).is_empty());
    assert!(log.run("node-1", refresh.clone()).is_err(), "not due yet");

    log.now = created + every;
    log.vouch();
    assert_eq!(log.sm.maintenance_due(log.now), vec![refresh.clone()]);
    assert!(
        log.run("admin", refresh.clone()).is_err(),
        "clients cannot propose schedule steps"
    );
    let started = log.run("node-1", refresh.clone());
    assert!(
        matches!(started, Ok(Applied::RefreshStarted { attempt: 1, .. })),
        "{started:?}"
    );
    assert!(
        log.sm.maintenance_due(log.now).is_empty(),
        "not again while it runs"
    );

    // The refresh is abandoned at its deadline: tried again one period
    // after the attempt, not at every tick.
    let deadline = log.sm.key("k").expect("k").versions[0]
        .refresh
        .as_ref()
        .expect("running")
        .deadline_ms;
    log.now = deadline;
    let abandon = Operation::AbandonRefresh {
        name: "k".into(),
        version: KeyVersion(1),
        attempt: 1,
        reason: "node-3 dealt nothing".into(),
    };
    log.run("node-1", abandon).expect("abandoned");
    let attempted = created + every;
    let retry = attempted + every;
    log.now = retry - 1;
    log.vouch();
    assert!(log.sm.maintenance_due(log.now).is_empty(), "waits");
    log.now = retry;
    log.vouch();
    assert_eq!(log.sm.maintenance_due(log.now), vec![refresh.clone()]);

    let off = Operation::SetRefreshSchedule { every_ms: None };
    log.run("admin", off).expect("schedule removed");
    assert!(log.sm.maintenance_due(log.now).is_empty());
    assert!(
        log.run("node-1", refresh).is_err(),
        "no schedule, nothing due"
    );
}

/// Only an administrator sets the schedule; a schedule that makes many
/// versions due at once starts at most `MAX_SCHEDULED_AT_ONCE`; a leader's
/// far-future stamp neither times the refresh it starts nor its deadline.
#[test]
fn the_refresh_schedule_is_an_administrators_starts_few_at_once_and_bounds_the_leaders_stamp() {
    let mut log = Log::new();
    log.principal("olga", &[Role::Operator]);
    let names: Vec<String> = (0..6).map(|n| format!("k{n}")).collect();
    for name in &names {
        log.key(name);
    }
    let every = 20_000;
    let set = Operation::SetRefreshSchedule {
        every_ms: Some(every),
    };
    assert!(log.run("olga", set.clone()).is_err(), "an operator may not");
    log.run("admin", set).expect("schedule set");
    log.now += every;
    log.vouch();
    let due = log.sm.maintenance_due(log.now);
    assert_eq!(due.len(), qk_state::MAX_SCHEDULED_AT_ONCE, "{due:?}");

    // The leader stamps its own command an hour ahead: the refresh starts no
    // later than a proof's lifetime past the vouched time.
    let vouched = log.sm.vouched_ms();
    log.now += 3_600_000;
    for op in due {
        log.run("node-1", op).expect("started");
    }
    log.now -= 3_600_000;
    for name in &names[..qk_state::MAX_SCHEDULED_AT_ONCE] {
        let v = &log.sm.key(name).expect("key").versions[0];
        let started = v.refresh.as_ref().expect("running").started_ms;
        assert_eq!(started, vouched + INTENT_MAX_AGE_MS, "the stamp is bounded");
    }
    assert!(log.sm.maintenance_due(log.now).is_empty(), "no slot left");
    let fifth = Operation::ScheduledRefresh {
        name: names[qk_state::MAX_SCHEDULED_AT_ONCE].clone(),
        version: KeyVersion(1),
    };
    let refused = log.run("node-1", fifth);
    assert!(
        matches!(&refused, Err(e) if e.to_string().contains("waits its turn")),
        "{refused:?}"
    );
}
