//! Applying access-control operations, authorizing commands, approvals,
//! token authentication, and the schedule (rotation, expiry, destruction).

use std::collections::{BTreeMap, BTreeSet};

use qk_types::RequestError;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::access::{
    check_access, is_node_principal, matches_principal, ApprovalRule, Decision, KeyPolicy,
    Permission, PrincipalRecord, Role, TokenRecord,
};
use crate::approval::{ApprovalRecord, ApprovalStatus};
use crate::command::{Applied, Command, Operation, PendingAction, StateError, PRUNE_AFTER_MS};
use crate::machine::{check_rotation_period, invalid, StateMachine};
use crate::model::VersionState;
use crate::proof::INTENT_MAX_AGE_MS;
use crate::refresh_schedule::MAX_SCHEDULED_AT_ONCE;

type Outcome = Result<Applied, StateError>;

/// Token text: `qkt.<id>.<secret>`; id 16 hex digits, secret 64.
pub const TOKEN_PREFIX: &str = "qkt.";
const TOKEN_ID_LEN: usize = 16;
const TOKEN_SECRET_LEN: usize = 64;
const MAX_PRINCIPALS: usize = 10_000;
const MAX_TOKENS: usize = 100_000;
const MAX_APPROVALS: usize = 100_000;
/// Most approval requests one principal may have pending at once, so one
/// caller repeating break-glass requests cannot fill the store for all.
pub const MAX_PENDING_APPROVALS_PER_PRINCIPAL: usize = 32;
const MAX_POLICY_RULES: usize = 64;
const MAX_RULE_PRINCIPALS: usize = 64;
const MAX_CONTEXT_CONDITIONS: usize = 16;
/// How long an approval request may wait: long enough to act on, short
/// enough to expire.
const MIN_APPROVAL_TTL_MS: u64 = 60_000;
const MAX_APPROVAL_TTL_MS: u64 = 30 * 24 * 3600 * 1000;
const MAX_REASON_LEN: usize = 512;
/// Longest token lifetime: one year.
pub const MAX_TOKEN_TTL_MS: u64 = 366 * 24 * 3600 * 1000;

/// The first 8 of the 16 hex digits of every AWS access key's token id
/// (`qk kms credentials create`): such a token is no bearer token, is
/// refused to principals that administer or approve, and is revoked when
/// its principal gains either role. Nodes draw bearer token ids that do not
/// start with it; a legacy id that did (one in 2^32) is treated alike.
pub const AWS_TOKEN_ID_MARKER: &str = "a3b5c7d9";

/// Whether token `id` is an AWS access key's.
pub fn is_aws_token_id(id: &str) -> bool {
    id.starts_with(AWS_TOKEN_ID_MARKER)
}

/// Roles that change access control or approve: a shared-secret credential
/// (one its verifying node could forge) never carries them.
fn administers(roles: &BTreeSet<Role>) -> Option<Role> {
    [Role::Admin, Role::Approver]
        .into_iter()
        .find(|r| roles.contains(r))
}

/// The text a caller presents for token `id` with `secret_hex`.
pub fn token_text(id: &str, secret_hex: &str) -> String {
    format!("{TOKEN_PREFIX}{id}.{secret_hex}")
}

/// Splits a token into its id and secret; `None` when it is malformed.
pub fn parse_token(token: &str) -> Option<(&str, &str)> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('.')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, TOKEN_ID_LEN) && hex(secret, TOKEN_SECRET_LEN)).then_some((id, secret))
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn check_principal_name(name: &str) -> Result<(), StateError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@'));
    if !ok {
        return Err(invalid(format!(
            "principal name {name:?} must be 1-128 characters of A-Z a-z 0-9 - _ . @"
        )));
    }
    if name.starts_with("node-") || name == "*" || name.starts_with("role:") {
        return Err(invalid(format!(
            "principal name {name:?} is reserved (node-*, role:*, *); choose another"
        )));
    }
    Ok(())
}

/// The permission a client command needs, and the key it is about.
fn permission_of(op: &Operation) -> Option<Permission> {
    use Operation as O;
    use Permission as P;
    Some(match op {
        O::CreateKey(_) => P::KeyCreate,
        O::SetTag { .. } | O::SetMinDecryptVersion { .. } | O::Refresh { .. } => P::KeyConfigure,
        O::SetAlias { .. } => P::KeyConfigure,
        O::SetSchedule { .. } => P::KeyConfigure,
        // Cluster-wide (no key's policy applies): administrators only.
        O::SetRefreshSchedule { .. } => P::PrincipalManage,
        O::Rotate { .. } => P::KeyRotate,
        O::Disable { .. } => P::KeyDisable,
        O::Enable { .. } => P::KeyEnable,
        O::MarkCompromised { .. } => P::KeyMarkCompromised,
        O::ScheduleDestruction { .. } | O::Destroy { .. } => P::KeyDestroy,
        O::CancelDestruction { .. } => P::KeyCancelDestroy,
        O::SetPolicy { .. } => P::KeySetPolicy,
        O::CreatePrincipal { .. } | O::UpdatePrincipal { .. } | O::DeletePrincipal { .. } => {
            P::PrincipalManage
        }
        O::IssueToken { .. } | O::RevokeToken { .. } => P::TokenManage,
        O::SetAccessRule { .. } | O::EnableRequestShares => P::PrincipalManage,
        O::Approve { .. } | O::Deny { .. } => P::Approve,
        O::RequestApproval { .. } => P::Decrypt,
        _ => return None,
    })
}

/// Operations only a node proposes.
fn is_node_only(op: &Operation) -> bool {
    matches!(
        op,
        Operation::Dkg { .. }
            | Operation::EraseReceipt { .. }
            | Operation::AbandonRefresh { .. }
            | Operation::FailGeneration { .. }
            | Operation::Audit { .. }
            | Operation::AuditBatch(_)
            | Operation::ScheduledRotate { .. }
            | Operation::ScheduledRefresh { .. }
            | Operation::Expire { .. }
            | Operation::ExpireApproval { .. }
            | Operation::PruneRecords
            | Operation::Attest
            | Operation::PublishDkgKey { .. }
    )
}

impl StateMachine {
    /// The cluster's access rule (principal and token management), if set.
    pub fn access_rule(&self) -> Option<&ApprovalRule> {
        self.access_rule.as_ref()
    }

    pub fn principal(&self, name: &str) -> Option<&PrincipalRecord> {
        self.principals.get(name)
    }

    pub fn principals(&self) -> impl Iterator<Item = &PrincipalRecord> {
        self.principals.values()
    }

    pub fn tokens(&self) -> impl Iterator<Item = &TokenRecord> {
        self.tokens.values()
    }

    pub fn token(&self, id: &str) -> Option<&TokenRecord> {
        self.tokens.get(id)
    }

    pub fn approvals(&self) -> impl Iterator<Item = &ApprovalRecord> {
        self.approvals.values()
    }

    pub fn approval(&self, id: &str) -> Option<&ApprovalRecord> {
        self.approvals.get(id)
    }

    /// Checks a bearer token at `now_ms` and names its principal.
    /// A bearer token (never an AWS access key's token).
    pub fn authenticate_token(
        &self,
        token: &str,
        now_ms: u64,
    ) -> Result<(&PrincipalRecord, &TokenRecord), RequestError> {
        if parse_token(token).is_some_and(|(id, _)| is_aws_token_id(id)) {
            return Err(RequestError::unauthenticated(
                "this is an AWS access key's secret, not a bearer token: sign AWS KMS requests \
                 with it (SigV4) at the node that issued it",
            ));
        }
        self.check_token(token, now_ms)
    }

    /// An AWS access key's token, given the secret its node derived.
    pub fn authenticate_aws_token(
        &self,
        token: &str,
        now_ms: u64,
    ) -> Result<(&PrincipalRecord, &TokenRecord), RequestError> {
        if !parse_token(token).is_some_and(|(id, _)| is_aws_token_id(id)) {
            return Err(RequestError::unauthenticated("not an AWS access key"));
        }
        self.check_token(token, now_ms)
    }

    fn check_token(
        &self,
        token: &str,
        now_ms: u64,
    ) -> Result<(&PrincipalRecord, &TokenRecord), RequestError> {
        let refused = || {
            RequestError::unauthenticated(
                "token not accepted; ask an administrator for a valid token (`qk token create`)",
            )
        };
        let (id, secret) = parse_token(token).ok_or_else(refused)?;
        let record = self.tokens.get(id).ok_or_else(refused)?;
        let matches: bool = sha256(secret.as_bytes())
            .ct_eq(&record.secret_sha256)
            .into();
        if !matches {
            return Err(refused());
        }
        let stale = |what: &str| {
            RequestError::unauthenticated(format!("token {id} {what}; ask for a new one"))
        };
        if record.revoked_ms.is_some() {
            return Err(stale("was revoked"));
        }
        if record.expires_at_ms <= now_ms {
            return Err(stale("expired"));
        }
        let principal = self.principals.get(&record.principal).ok_or_else(|| {
            RequestError::unauthenticated(format!("the principal of token {id} no longer exists"))
        })?;
        Ok((principal, record))
    }

    /// The verdict for a request that is not a log operation (encrypt,
    /// decrypt, reads) or before proposing one.
    pub fn authorize(
        &self,
        principal: &str,
        permission: Permission,
        key: Option<&str>,
        context: &BTreeMap<String, String>,
    ) -> Decision {
        let Some(p) = self.principals.get(principal) else {
            return Decision::Deny(format!(
                "principal {principal} is not known to the cluster; an administrator adds it with `qk principal create`"
            ));
        };
        let policy = key.map(|k| (k, self.key(k).and_then(|r| r.policy.as_ref())));
        if let Err(reason) = check_access(p, permission, policy, context) {
            return Decision::Deny(reason);
        }
        match key
            .and_then(|k| self.key(k))
            .and_then(|r| r.policy.as_ref())
        {
            Some(KeyPolicy {
                approval: Some(rule),
                ..
            }) if rule.permissions.contains(&permission) => Decision::NeedsApproval {
                required: rule.required,
                ttl_ms: rule.ttl_ms,
            },
            _ => Decision::Allow,
        }
    }

    pub(crate) fn authorize_command(&self, cmd: &Command) -> Result<Decision, StateError> {
        if is_node_principal(&cmd.principal) {
            return Ok(self.authorize_node(cmd));
        }
        if is_node_only(&cmd.op) {
            return Ok(Decision::Deny(format!(
                "{} is proposed by cluster nodes only",
                cmd.op.name()
            )));
        }
        if let Some(d) = self.self_service(cmd) {
            return Ok(d);
        }
        let Some(permission) = permission_of(&cmd.op) else {
            return Ok(Decision::Deny(format!(
                "{} is not a client operation",
                cmd.op.name()
            )));
        };
        let key = match &cmd.op {
            Operation::CreateKey(_) => None,
            op if permission.is_key_scoped() => op.key_name(),
            _ => None,
        };
        let decision = self.authorize(&cmd.principal, permission, key, &BTreeMap::new());
        let decision = self.under_access_rule(decision, permission, cmd);
        Ok(match (decision, &cmd.op) {
            // A break-glass request is itself the ask for approval: it stays
            // NeedsApproval so that applying it records the request.
            (d @ Decision::NeedsApproval { .. }, Operation::RequestApproval { .. }) => d,
            (Decision::Allow, Operation::RequestApproval { .. }) => Decision::Deny(
                "this key's policy does not ask for approval of decrypt; decrypt directly".into(),
            ),
            // Approval covers the request to destroy (scheduling it); the
            // destroy that follows when the waiting period ends is its
            // consequence, and it must reach the holders' erasure.
            (Decision::NeedsApproval { .. }, Operation::Destroy { .. }) => Decision::Allow,
            (d, _) => d,
        })
    }

    /// A principal or token change the cluster's access rule covers waits
    /// for approval; so does any change to the rule itself while one is
    /// set. Revoking a token never waits (it only takes access away), nor
    /// does issuing a token for oneself.
    fn under_access_rule(
        &self,
        decision: Decision,
        permission: Permission,
        cmd: &Command,
    ) -> Decision {
        let (op, cmd_principal) = (&cmd.op, &cmd.principal);
        let Some(rule) = &self.access_rule else {
            return decision;
        };
        let covered = match op {
            Operation::SetAccessRule { .. } => true,
            Operation::RevokeToken { .. } => false,
            Operation::IssueToken { principal, .. } if principal == cmd_principal => false,
            _ => rule.permissions.contains(&permission),
        };
        match decision {
            Decision::Allow if covered => Decision::NeedsApproval {
                required: rule.required,
                ttl_ms: rule.ttl_ms,
            },
            d => d,
        }
    }

    /// Requests any principal may make about itself: revoking its own token,
    /// using its own approved break-glass decrypt.
    fn self_service(&self, cmd: &Command) -> Option<Decision> {
        match &cmd.op {
            Operation::RevokeToken { id } => {
                let own = self.tokens.get(id)?.principal == cmd.principal;
                own.then_some(Decision::Allow)
            }
            Operation::ConsumeApproval { .. } => Some(Decision::Allow),
            // An approver issues its own tokens (no one else may, see
            // `issue_token`), with its own credential.
            Operation::IssueToken { principal, .. }
                if *principal == cmd.principal && self.is_approver(principal) =>
            {
                Some(Decision::Allow)
            }
            _ => None,
        }
    }

    fn is_approver(&self, name: &str) -> bool {
        self.principals
            .get(name)
            .is_some_and(|p| p.roles.contains(&Role::Approver))
    }

    fn authorize_node(&self, cmd: &Command) -> Decision {
        match &cmd.op {
            op if is_node_only(op) => Decision::Allow,
            // The initial admin, once: a cluster whose principals were all
            // deleted is not bootstrapped again by a node.
            Operation::CreatePrincipal { .. } | Operation::EnableRequestShares
                if self.principals.is_empty() && !self.bootstrapped =>
            {
                Decision::Allow
            }
            Operation::Destroy { .. } => Decision::Allow,
            op => Decision::Deny(format!(
                "{} comes from clients; a node may not propose it",
                op.name()
            )),
        }
    }

    pub(crate) fn request_approval(
        &mut self,
        cmd: &Command,
        required: u16,
        ttl_ms: u64,
    ) -> Outcome {
        if self.approvals.len() >= MAX_APPROVALS {
            return Err(invalid("too many approval requests are stored"));
        }
        let pending = self
            .approvals
            .values()
            .filter(|a| a.status == ApprovalStatus::Pending && a.requester == cmd.principal)
            .count();
        if pending >= MAX_PENDING_APPROVALS_PER_PRINCIPAL {
            return Err(invalid(format!(
                "{} already has {pending} approval requests pending (at most \
                 {MAX_PENDING_APPROVALS_PER_PRINCIPAL}); wait until approvers decide or they expire",
                cmd.principal
            )));
        }
        let (key, permission, action) = match &cmd.op {
            Operation::RequestApproval { action } => {
                let PendingAction::Decrypt { key, .. } = action else {
                    return Err(invalid("only a decrypt is requested for approval directly"));
                };
                (key.clone(), Permission::Decrypt, action.clone())
            }
            op => (
                op.key_name().unwrap_or_default().to_string(),
                permission_of(op).unwrap_or(Permission::KeyConfigure),
                PendingAction::Operation(Box::new(op.clone())),
            ),
        };
        let id = self.unique_approval_id(cmd)?;
        self.approvals.insert(
            id.clone(),
            ApprovalRecord {
                id: id.clone(),
                requester: cmd.principal.clone(),
                key,
                permission,
                action,
                required,
                approvers: BTreeSet::new(),
                created_ms: cmd.time_ms,
                expires_at_ms: cmd.time_ms.saturating_add(ttl_ms),
                status: ApprovalStatus::Pending,
            },
        );
        Ok(Applied::ApprovalRequested { id, required })
    }

    pub(crate) fn execute_access_op(&mut self, cmd: &Command) -> Outcome {
        let now = cmd.time_ms;
        match &cmd.op {
            Operation::CreatePrincipal { name, roles } => self.create_principal(name, roles, now),
            Operation::UpdatePrincipal {
                name,
                roles,
                disabled,
            } => {
                let before = self
                    .principals
                    .get(name)
                    .cloned()
                    .ok_or_else(|| no_principal(name))?;
                let becomes_approver =
                    roles.contains(&Role::Approver) && !before.roles.contains(&Role::Approver);
                let gains_admin =
                    administers(roles).is_some() && administers(&before.roles).is_none();
                let mut after = before.clone();
                after.roles = roles.clone();
                after.disabled = *disabled;
                self.change_principal(name, Some(after))?;
                if becomes_approver {
                    // Tokens someone else issued must not carry the new
                    // approver's vote: the approver issues its own.
                    for t in self.tokens.values_mut().filter(|t| &t.principal == name) {
                        t.revoked_ms.get_or_insert(now);
                    }
                }
                if gains_admin {
                    // Its AWS access keys' issuing nodes could act with them.
                    let aws = |t: &&mut TokenRecord| &t.principal == name && is_aws_token_id(&t.id);
                    for t in self.tokens.values_mut().filter(aws) {
                        t.revoked_ms.get_or_insert(now);
                    }
                }
                Ok(Applied::Done)
            }
            Operation::DeletePrincipal { name } => {
                if !self.principals.contains_key(name) {
                    return Err(no_principal(name));
                }
                self.change_principal(name, None)?;
                for t in self.tokens.values_mut().filter(|t| &t.principal == name) {
                    t.revoked_ms.get_or_insert(now);
                }
                Ok(Applied::Done)
            }
            Operation::IssueToken {
                id,
                principal,
                description,
                secret_sha256,
                verify_key,
                expires_at_ms,
            } => self.issue_token(
                &cmd.principal,
                id,
                principal,
                description,
                (*secret_sha256, *verify_key),
                *expires_at_ms,
                now,
            ),
            Operation::RevokeToken { id } => {
                let t = self.tokens.get_mut(id).ok_or_else(|| {
                    StateError::NotFound(format!("no token {id}; list tokens with `qk token list`"))
                })?;
                t.revoked_ms.get_or_insert(now);
                Ok(Applied::Done)
            }
            Operation::SetPolicy { name, policy } => self.set_policy(name, policy.as_ref()),
            Operation::SetAccessRule { rule } => self.set_access_rule(rule.as_ref()),
            Operation::EnableRequestShares => {
                self.shares.activate();
                Ok(Applied::Done)
            }
            Operation::SetRefreshSchedule { every_ms } => {
                self.refresh_schedule
                    .set_every(*every_ms)
                    .map_err(invalid)?;
                Ok(Applied::Done)
            }
            Operation::ScheduledRefresh { name, version } => {
                // Started at the leader's stamp, but never more than a
                // proof's lifetime past the vouched time: a far-future
                // stamp cannot give the refresh a deadline no honest node
                // reaches.
                let latest = self.vouched_ms().saturating_add(INTENT_MAX_AGE_MS);
                let start_ms = cmd.time_ms.min(latest);
                self.scheduled_refresh(name, *version, self.trigger_ms(cmd), start_ms)
            }
            Operation::SetSchedule {
                name,
                rotation_period_ms,
                expires_at_ms,
            } => {
                check_rotation_period(*rotation_period_ms)?;
                let key = self.key_mut(name)?;
                key.rotation_period_ms = *rotation_period_ms;
                key.expires_at_ms = *expires_at_ms;
                if expires_at_ms.is_none_or(|e| e > now) {
                    key.expired = false;
                }
                Ok(Applied::Done)
            }
            Operation::Approve { id } => self.approve(cmd, id),
            Operation::Deny { id, reason } => {
                let by = cmd.principal.clone();
                let reason = reason.chars().take(MAX_REASON_LEN).collect();
                let a = self.pending_approval(id, &by, now)?;
                a.status = ApprovalStatus::Denied { by, reason };
                Ok(Applied::Done)
            }
            Operation::ConsumeApproval {
                id,
                ciphertext_sha256,
            } => self.consume_approval(cmd, id, ciphertext_sha256),
            Operation::ScheduledRotate { name, holders } => {
                let due = self.key(name).and_then(|k| k.next_rotation_ms());
                if due.is_none_or(|d| d > self.trigger_ms(cmd)) {
                    return Err(invalid(format!("key {name:?} is not due for rotation")));
                }
                // A node does not choose who holds a key: a scheduled
                // rotation keeps the holders of the version before it.
                let last = self.key(name).and_then(|k| k.versions.last());
                if last.is_none_or(|v| v.holders != *holders) {
                    return Err(invalid(format!(
                        "a scheduled rotation of {name:?} keeps the last version's holders; an administrator rotates to others"
                    )));
                }
                self.rotate(name, holders, None, now)
            }
            Operation::Expire { name } => {
                let trigger = self.trigger_ms(cmd);
                let key = self.key_mut(name)?;
                if key.expires_at_ms.is_none_or(|e| e > trigger) {
                    return Err(invalid(format!("key {name:?} has not expired")));
                }
                key.expired = true;
                Ok(Applied::Done)
            }
            Operation::ExpireApproval { id } => {
                let trigger = self.trigger_ms(cmd);
                let a = self.approvals.get_mut(id).ok_or_else(|| no_approval(id))?;
                if a.status != ApprovalStatus::Pending || a.expires_at_ms > trigger {
                    return Err(invalid(format!(
                        "approval {id} is not pending past its expiry"
                    )));
                }
                a.status = ApprovalStatus::Expired;
                Ok(Applied::Done)
            }
            Operation::PruneRecords => self.prune_records(self.trigger_ms(cmd)),
            Operation::Attest => Ok(Applied::Done),
            Operation::RequestApproval { .. } => Err(invalid(
                "a decrypt approval is only requested for a break-glass key",
            )),
            op => Err(invalid(format!("{} is not an access operation", op.name()))),
        }
    }

    fn create_principal(&mut self, name: &str, roles: &BTreeSet<Role>, now: u64) -> Outcome {
        check_principal_name(name)?;
        if self.principals.contains_key(name) {
            return Err(invalid(format!(
                "principal {name} already exists; update it instead"
            )));
        }
        if self.principals.len() >= MAX_PRINCIPALS {
            return Err(invalid(format!("at most {MAX_PRINCIPALS} principals")));
        }
        self.bootstrapped = true;
        self.principals.insert(
            name.to_string(),
            PrincipalRecord {
                name: name.to_string(),
                roles: roles.clone(),
                created_ms: now,
                disabled: false,
            },
        );
        Ok(Applied::Done)
    }

    #[allow(clippy::too_many_arguments)]
    fn issue_token(
        &mut self,
        issuer: &str,
        id: &str,
        principal: &str,
        description: &str,
        (secret_sha256, verify_key): ([u8; 32], [u8; 32]),
        expires_at_ms: u64,
        now: u64,
    ) -> Outcome {
        if !self.principals.contains_key(principal) {
            return Err(no_principal(principal));
        }
        if issuer != principal && self.is_approver(principal) {
            // Otherwise one administrator mints tokens for M approvers and
            // satisfies an M-of-N rule alone.
            return Err(StateError::Denied(format!(
                "{principal} is an approver: only {principal} itself issues its tokens \
                 (`qk token create` with its own client certificate), so that every \
                 approval comes from the approver's own credential"
            )));
        }
        if let Some(role) = self
            .principals
            .get(principal)
            .filter(|_| is_aws_token_id(id))
            .and_then(|p| administers(&p.roles))
        {
            return Err(StateError::Denied(format!(
                "{principal} has the {role} role: AWS access keys are shared secrets their \
                 issuing node could use, so principals that administer or approve get none; \
                 issue the key to a service principal (for example operator and key-user)"
            )));
        }
        let id_ok = id.len() == TOKEN_ID_LEN && id.bytes().all(|b| b.is_ascii_hexdigit());
        if !id_ok || self.tokens.contains_key(id) {
            return Err(invalid("token id must be 16 new hex digits"));
        }
        if expires_at_ms <= now || expires_at_ms - now > MAX_TOKEN_TTL_MS {
            return Err(invalid(
                "a token must expire between now and one year from now",
            ));
        }
        if self.tokens.len() >= MAX_TOKENS || description.len() > MAX_REASON_LEN {
            return Err(invalid("too many tokens, or the description is too long"));
        }
        self.tokens.insert(
            id.to_string(),
            TokenRecord {
                id: id.to_string(),
                principal: principal.to_string(),
                description: description.to_string(),
                secret_sha256,
                verify_key,
                created_ms: now,
                expires_at_ms,
                revoked_ms: None,
            },
        );
        Ok(Applied::Done)
    }

    fn set_policy(&mut self, name: &str, policy: Option<&KeyPolicy>) -> Outcome {
        if let Some(p) = policy {
            self.check_policy(p)?;
        }
        self.key_mut(name)?.policy = policy.cloned();
        Ok(Applied::Done)
    }

    /// Replaces (or with `None` deletes) principal `name`, unless that
    /// leaves an approval rule that could be met before with too few
    /// eligible approvers: one approved change must not freeze everything
    /// the rule covers, the rule itself included.
    fn change_principal(
        &mut self,
        name: &str,
        record: Option<PrincipalRecord>,
    ) -> Result<(), StateError> {
        // Only an eligible approver's change can leave a rule short; the
        // common change (any other principal) skips the scan of every rule.
        if !self.principals.get(name).is_some_and(may_approve) {
            self.put_principal(name, record);
            return Ok(());
        }
        let met_before = self.unmet_approval_rules();
        let previous = self.put_principal(name, record);
        let broken: Vec<String> = self
            .unmet_approval_rules()
            .into_iter()
            .filter(|rule| !met_before.contains(rule))
            .collect();
        if broken.is_empty() {
            return Ok(());
        }
        self.put_principal(name, previous);
        Err(invalid(format!(
            "this change to {name} would leave too few eligible approvers for {}; add another approver first",
            broken.join(", ")
        )))
    }

    /// Stores (or with `None` removes) principal `name`; returns what was there.
    fn put_principal(
        &mut self,
        name: &str,
        record: Option<PrincipalRecord>,
    ) -> Option<PrincipalRecord> {
        match record {
            Some(r) => self.principals.insert(name.to_string(), r),
            None => self.principals.remove(name),
        }
    }

    /// The approval rules that too few eligible approvers could meet today.
    fn unmet_approval_rules(&self) -> BTreeSet<String> {
        let unmet = |r: &ApprovalRule| {
            self.eligible_approvers(&r.approvers).len() < usize::from(r.required)
        };
        let keys = self.keys().filter_map(|k| {
            let rule = k.policy.as_ref()?.approval.as_ref()?;
            unmet(rule).then(|| format!("the approval rule of key {:?}", k.name))
        });
        let cluster = self
            .access_rule
            .as_ref()
            .filter(|r| unmet(r))
            .map(|_| "the cluster's access rule".to_string());
        keys.chain(cluster).collect()
    }

    fn set_access_rule(&mut self, rule: Option<&ApprovalRule>) -> Outcome {
        if let Some(rule) = rule {
            if let Some(bad) = rule
                .permissions
                .iter()
                .find(|p| !p.may_need_cluster_approval())
            {
                return Err(invalid(format!(
                    "{bad} cannot be in the cluster's access rule (only principal-manage, token-manage); key permissions go in a key policy"
                )));
            }
            if !rule.permissions.contains(&Permission::PrincipalManage) {
                return Err(invalid(
                    "the cluster's access rule must cover principal-manage: who may approve is decided by principals' roles",
                ));
            }
            self.check_approval_rule(rule)?;
        }
        self.access_rule = rule.cloned();
        Ok(Applied::Done)
    }

    fn check_policy(&self, p: &KeyPolicy) -> Result<(), StateError> {
        if p.rules.len() > MAX_POLICY_RULES {
            return Err(invalid(format!(
                "a policy has at most {MAX_POLICY_RULES} rules"
            )));
        }
        for r in &p.rules {
            if r.principals.is_empty() || r.principals.len() > MAX_RULE_PRINCIPALS {
                return Err(invalid("each rule names 1 to 64 principals"));
            }
            if r.context.len() > MAX_CONTEXT_CONDITIONS {
                return Err(invalid("a rule has at most 16 context conditions"));
            }
            if let Some(bad) = r.permissions.iter().find(|p| !p.is_key_scoped()) {
                return Err(invalid(format!(
                    "{bad} is cluster-wide; a key policy cannot grant it"
                )));
            }
        }
        let Some(a) = &p.approval else { return Ok(()) };
        if let Some(bad) = a.permissions.iter().find(|p| !p.may_need_approval()) {
            return Err(invalid(format!(
                "{bad} cannot require approval (only key-destroy, key-disable, key-set-policy, decrypt)"
            )));
        }
        self.check_approval_rule(a)
    }

    /// A rule that can be met: at least one approval, covering something,
    /// with enough eligible approvers today.
    fn check_approval_rule(&self, a: &ApprovalRule) -> Result<(), StateError> {
        if a.required == 0 {
            return Err(invalid(
                "an approval rule needs at least 1 approver (required = 0 would approve nothing)",
            ));
        }
        if a.permissions.is_empty() {
            return Err(invalid("an approval rule must name what it covers"));
        }
        if !(MIN_APPROVAL_TTL_MS..=MAX_APPROVAL_TTL_MS).contains(&a.ttl_ms) {
            return Err(invalid(format!(
                "an approval rule's ttl_ms must be {MIN_APPROVAL_TTL_MS}-{MAX_APPROVAL_TTL_MS} (1 minute to 30 days), so that approvers can act in time"
            )));
        }
        let eligible = self.eligible_approvers(&a.approvers).len();
        if eligible < usize::from(a.required) {
            return Err(invalid(format!(
                "the approval rule needs {} approvers but only {eligible} principals match its approvers and hold the approver role; add approvers first",
                a.required
            )));
        }
        Ok(())
    }

    fn eligible_approvers(&self, patterns: &[String]) -> Vec<&str> {
        self.principals
            .values()
            .filter(|p| may_approve(p))
            .filter(|p| patterns.iter().any(|pat| matches_principal(pat, p)))
            .map(|p| p.name.as_str())
            .collect()
    }

    fn pending_approval(
        &mut self,
        id: &str,
        by: &str,
        now: u64,
    ) -> Result<&mut ApprovalRecord, StateError> {
        let eligible = {
            let a = self.approvals.get(id).ok_or_else(|| no_approval(id))?;
            let rule = if a.permission.is_key_scoped() {
                self.key(&a.key)
                    .and_then(|k| k.policy.as_ref())
                    .and_then(|p| p.approval.as_ref())
            } else {
                self.access_rule.as_ref()
            };
            let patterns = rule.map(|r| r.approvers.clone()).unwrap_or_default();
            self.eligible_approvers(&patterns).contains(&by)
        };
        let a = self.approvals.get_mut(id).ok_or_else(|| no_approval(id))?;
        if a.status != ApprovalStatus::Pending {
            return Err(invalid(format!(
                "approval {id} is no longer pending ({:?})",
                a.status
            )));
        }
        if a.expires_at_ms <= now {
            a.status = ApprovalStatus::Expired;
            return Err(invalid(format!("approval {id} expired; ask again")));
        }
        if a.requester == by {
            return Err(StateError::Denied(format!(
                "{by} requested approval {id} and cannot approve or deny it"
            )));
        }
        if !eligible {
            let of = if a.permission.is_key_scoped() {
                format!("key {:?}", a.key)
            } else {
                "the cluster's access rule".to_string()
            };
            return Err(StateError::Denied(format!(
                "{by} is not an eligible approver under {of}"
            )));
        }
        Ok(a)
    }

    fn approve(&mut self, cmd: &Command, id: &str) -> Outcome {
        let by = cmd.principal.clone();
        let a = self.pending_approval(id, &by, cmd.time_ms)?;
        if !a.approvers.insert(by.clone()) {
            return Err(invalid(format!("{by} already approved {id}")));
        }
        let remaining = a.required.saturating_sub(a.approvers.len() as u16);
        if remaining > 0 {
            return Ok(Applied::Approved {
                remaining,
                outcome: None,
            });
        }
        let requester = a.requester.clone();
        let PendingAction::Operation(op) = a.action.clone() else {
            a.status = ApprovalStatus::Approved;
            return Ok(Applied::Approved {
                remaining: 0,
                outcome: Some("approved; the requester may now decrypt once".into()),
            });
        };
        let approved = Command {
            request_id: cmd.request_id,
            time_ms: cmd.time_ms,
            principal: requester,
            op: *op,
            proof: None,
        };
        // The requester's roles are checked again: they may have changed.
        let outcome = match self.authorize_command(&approved)? {
            Decision::Deny(reason) => format!("refused: permission denied: {reason}"),
            _ => match self.execute_op(&approved) {
                Ok(applied) => format!("ok: {applied:?}"),
                Err(e) => format!("refused: {e}"),
            },
        };
        if let Some(a) = self.approvals.get_mut(id) {
            a.status = ApprovalStatus::Executed(outcome.clone());
        }
        Ok(Applied::Approved {
            remaining: 0,
            outcome: Some(outcome),
        })
    }

    fn consume_approval(&mut self, cmd: &Command, id: &str, digest: &[u8; 32]) -> Outcome {
        let a = self.approvals.get_mut(id).ok_or_else(|| no_approval(id))?;
        let matches = match &a.action {
            PendingAction::Decrypt {
                ciphertext_sha256, ..
            } => ciphertext_sha256 == digest,
            PendingAction::Operation(_) => false,
        };
        if a.requester != cmd.principal || !matches {
            return Err(StateError::Denied(format!(
                "approval {id} is for another requester or another ciphertext"
            )));
        }
        if a.status != ApprovalStatus::Approved {
            return Err(StateError::Denied(format!(
                "approval {id} is not approved or was already used ({:?})",
                a.status
            )));
        }
        if a.expires_at_ms <= cmd.time_ms {
            a.status = ApprovalStatus::Expired;
            return Err(StateError::Denied(format!(
                "approval {id} expired; ask again"
            )));
        }
        a.status = ApprovalStatus::Consumed;
        Ok(Applied::Done)
    }

    /// Operations the schedule calls for at `now_ms`: due rotations, passed
    /// expiries, destructions whose waiting period is over, approvals that
    /// ran out. The leader proposes them; apply checks each again.
    pub fn maintenance_due(&self, now_ms: u64) -> Vec<Operation> {
        let mut ops = Vec::new();
        let mut refresh_slots = MAX_SCHEDULED_AT_ONCE.saturating_sub(self.refreshes_running());
        for key in self.keys() {
            let generating = key
                .versions
                .iter()
                .any(|v| v.state == VersionState::Generating);
            if key.expires_at_ms.is_some_and(|e| e <= now_ms) && !key.expired {
                ops.push(Operation::Expire {
                    name: key.name.clone(),
                });
            } else if key.next_rotation_ms().is_some_and(|d| d <= now_ms) && !generating {
                let holders = key.versions.last().map(|v| v.holders.clone());
                ops.push(Operation::ScheduledRotate {
                    name: key.name.clone(),
                    holders: holders.unwrap_or_default(),
                });
            }
            for v in &key.versions {
                let schedule = &self.refresh_schedule;
                if refresh_slots > 0 && schedule.due_ms(key.id, v).is_some_and(|d| d <= now_ms) {
                    refresh_slots -= 1;
                    ops.push(Operation::ScheduledRefresh {
                        name: key.name.clone(),
                        version: v.version,
                    });
                }
                if matches!(v.state, VersionState::PendingDestruction { due_ms } if due_ms <= now_ms)
                {
                    ops.push(Operation::Destroy {
                        name: key.name.clone(),
                        version: v.version,
                    });
                }
            }
        }
        for a in self.approvals.values() {
            if a.status == ApprovalStatus::Pending && a.expires_at_ms <= now_ms {
                ops.push(Operation::ExpireApproval { id: a.id.clone() });
            }
        }
        if self.prunable(now_ms) {
            ops.push(Operation::PruneRecords);
        }
        ops
    }

    fn token_prunable(t: &TokenRecord, now: u64) -> bool {
        let ended = t.revoked_ms.unwrap_or(t.expires_at_ms).min(t.expires_at_ms);
        ended.saturating_add(PRUNE_AFTER_MS) <= now
    }

    /// A finished approval (pending ones expire first) whose time is long over.
    fn approval_prunable(a: &ApprovalRecord, now: u64) -> bool {
        a.status != ApprovalStatus::Pending && a.expires_at_ms.saturating_add(PRUNE_AFTER_MS) <= now
    }

    fn prunable(&self, now: u64) -> bool {
        self.tokens.values().any(|t| Self::token_prunable(t, now))
            || self
                .approvals
                .values()
                .any(|a| Self::approval_prunable(a, now))
    }

    fn prune_records(&mut self, now: u64) -> Outcome {
        if !self.prunable(now) {
            return Err(invalid("no token or approval is old enough to prune"));
        }
        self.tokens.retain(|_, t| !Self::token_prunable(t, now));
        self.approvals
            .retain(|_, a| !Self::approval_prunable(a, now));
        Ok(Applied::Done)
    }
}

impl StateMachine {
    /// Approval ids never repeat and never replace a stored approval.
    fn unique_approval_id(&mut self, cmd: &Command) -> Result<String, StateError> {
        let digest = self.fresh_id_bytes(b"qk/approval-id", cmd.request_id);
        let id: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        if self.approvals.contains_key(&id) {
            return Err(invalid("an approval id collided with a stored one; retry"));
        }
        Ok(id)
    }
}

fn no_principal(name: &str) -> StateError {
    StateError::NotFound(format!(
        "no principal {name}; list principals with `qk principal list`"
    ))
}

fn no_approval(id: &str) -> StateError {
    StateError::NotFound(format!(
        "no approval {id}; list approvals with `qk approval list`"
    ))
}

/// Whether `p` may approve at all: enabled and holding the approver role.
fn may_approve(p: &PrincipalRecord) -> bool {
    !p.disabled && p.roles.contains(&Role::Approver)
}
