//! The deterministic state machine.

use std::collections::{BTreeMap, BTreeSet};

use qk_types::{Epoch, KeyId, KeyVersion, NodeId, ThresholdParams};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::access::{Decision, Permission};
use crate::audit::{AuditRecord, GENESIS_HASH};
use crate::command::{
    AliasChange, Applied, AuditEvent, Command, CreateKey, DkgStep, Operation, RequestId, Response,
    StateError, DEFAULT_GENERATION_TIMEOUT_MS, DKG_COMPLAINT_TIMEOUT_MS, DKG_DEALING_TIMEOUT_MS,
    MAX_AUDIT_BATCH, MAX_DKG_MESSAGE_LEN, MAX_GENERATION_TIMEOUT_MS, MIN_GENERATION_TIMEOUT_MS,
};
use crate::key_table::KeyTable;
use crate::lifecycle::LifecycleChange;
use crate::limits::{
    bounded, MAX_FRESH_REQUESTS, MAX_NAME_LEN, MAX_REMEMBERED_REQUESTS, MAX_TEXT_LEN,
};
use crate::model::{
    DkgPhase, DkgRecord, DkgSession, KeyRecord, KeyVersionRecord, RefreshRecord, VersionState,
};
use crate::proof::INTENT_MAX_AGE_MS;
use crate::refresh_schedule::{RefreshSchedule, MAX_SCHEDULED_AT_ONCE};
use crate::request_shares::RequestShares;

/// How far a node's vouched time may fall behind before it attests.
pub const ATTEST_EVERY_MS: u64 = 60_000;
/// While a scheduled step waits for the vouched time, a node vouches for its
/// clock at most this often.
pub const ATTEST_WAIT_MS: u64 = 2_000;
/// Most nodes whose signing times are kept (far more than any cluster has).
const MAX_NODE_TIMES: usize = 256;

/// Between an audit event's outcome and the node that reported it.
const REPORTED_BY: &str = "; reported by ";

/// What deduplicates a command: its request id under its principal, so a
/// command in one principal's name never answers for another's request id.
fn dedup_key(cmd: &Command) -> RequestId {
    let digest = Sha256::new()
        .chain_update(b"quorumkey request id v1\0")
        .chain_update((cmd.principal.len() as u64).to_be_bytes())
        .chain_update(cmd.principal.as_bytes())
        .chain_update(cmd.request_id.0)
        .finalize();
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    RequestId(key)
}
const MAX_TAGS: usize = 64;
const MAX_TAG_VALUE_LEN: usize = 4096;
/// Largest encoded public key set a version stores (64 holders: 2246 bytes).
pub const MAX_PUBLIC_KEYS_LEN: usize = 4096;
/// Longest operator-supplied note kept in a failure reason.
const MAX_REASON_LEN: usize = 512;
const MAX_VERSIONS: usize = 10_000;
/// Shortest rotation period: each rotation is a DKG across the holders.
pub const MIN_ROTATION_PERIOD_MS: u64 = 5_000;

pub(crate) fn check_rotation_period(period: Option<u64>) -> Result<(), StateError> {
    match period {
        Some(p) if p < MIN_ROTATION_PERIOD_MS => Err(invalid(format!(
            "a rotation period must be at least {MIN_ROTATION_PERIOD_MS} ms"
        ))),
        _ => Ok(()),
    }
}

/// Most keys the cluster holds, so no caller can grow the replicated state
/// (and every snapshot) without end. A key whose versions are all destroyed
/// still counts: its record stays in the inventory and the audit.
pub const MAX_KEYS: usize = 100_000;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMachine {
    keys: KeyTable,
    requests: BTreeMap<RequestId, Response>,
    /// Each remembered dedup key with the log time until which a proof of
    /// its command can be fresh.
    /// (fresh until, arrival number, key): forgotten stalest first, and in
    /// order of arrival among equally stale ones.
    request_order: BTreeSet<(u64, u64, RequestId)>,
    /// How many requests were remembered so far (the arrival numbers).
    #[serde(default)]
    requests_seen: u64,
    audit: Vec<AuditRecord>,
    pub(crate) principals: BTreeMap<String, crate::access::PrincipalRecord>,
    pub(crate) tokens: BTreeMap<String, crate::access::TokenRecord>,
    pub(crate) approvals: BTreeMap<String, crate::approval::ApprovalRecord>,
    /// Ids handed out so far (key ids, approval ids). Each id hashes this
    /// counter, so ids are unique by construction: a client's request id
    /// (reused, or chosen to collide) never decides them.
    #[serde(default)]
    ids_issued: u64,
    /// Each node's latest authenticated signing time (`node-N` → ms). Their
    /// lower median is the time the nodes vouch for ([`Self::vouched_ms`]):
    /// no single node, the leader included, can move it.
    #[serde(default)]
    node_times: BTreeMap<String, u64>,
    /// The time the nodes vouch for: never moves back (see `attest`).
    #[serde(default)]
    vouched_ms: u64,
    /// A principal was created once: a node may no longer create the
    /// initial admin, even if every principal was deleted since.
    #[serde(default)]
    pub(crate) bootstrapped: bool,
    /// Each node's DKG encryption key (encoded `qk_crypto::DkgPublicKey`),
    /// published by the node itself (again after it lost its disk); at most
    /// [`MAX_DKG_KEYS`].
    #[serde(default)]
    dkg_keys: BTreeMap<NodeId, Vec<u8>>,
    /// The cluster's access rule: which principal and token changes need
    /// M-of-N approval (`Operation::SetAccessRule`).
    #[serde(default)]
    pub(crate) access_rule: Option<crate::access::ApprovalRule>,
    /// Who sent each remembered command, per principal. Encoded after the
    /// rest (see [`Self::to_bytes`]) so that a snapshot of the release
    /// before it still decodes.
    #[serde(skip)]
    pub(crate) shares: RequestShares,
    /// The cluster's refresh schedule, encoded after the rest too.
    #[serde(skip)]
    pub(crate) refresh_schedule: crate::refresh_schedule::RefreshSchedule,
    /// The signing time of the command being applied: not state, only
    /// read while that command runs.
    #[serde(skip)]
    applying: SigningTime,
}

/// The author's signing time of the command being applied. Never part of
/// the state: it is not serialized and never makes two states differ.
#[derive(Clone, Copy, Debug, Default)]
struct SigningTime(u64);

impl PartialEq for SigningTime {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for SigningTime {}

/// Nodes whose DKG key the state keeps (node ids are never reused).
pub const MAX_DKG_KEYS: usize = 1024;

type Outcome = Result<Applied, StateError>;

pub(crate) fn invalid(msg: impl Into<String>) -> StateError {
    StateError::Invalid(msg.into())
}

fn transition_error(name: &str, v: &KeyVersionRecord, action: &str) -> StateError {
    transition_error_at(name, v.version, v.state.name(), action)
}

fn transition_error_at(name: &str, version: KeyVersion, state: &str, action: &str) -> StateError {
    StateError::InvalidTransition {
        name: name.to_string(),
        version: version.0,
        state: state.to_string(),
        action: action.to_string(),
    }
}

/// Most aliases on one key (they share one tag value).
const MAX_ALIASES_PER_KEY: usize = 16;

/// Aliases are AWS's: letters, digits, `/`, `_` and `-`, not `aws/…`, and
/// with `alias/` in front at most a key name's length.
fn check_alias(alias: &str) -> Result<(), StateError> {
    let max = MAX_NAME_LEN - "alias/".len();
    let ok_chars = alias
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '/'));
    if alias.is_empty() || alias.len() > max || !ok_chars || alias.starts_with("aws/") {
        return Err(invalid(format!(
            "alias {alias:?} must be 1-{max} characters of A-Z a-z 0-9 / _ - and not begin \
             with aws/"
        )));
    }
    Ok(())
}

pub(crate) fn check_name(name: &str) -> Result<(), StateError> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'));
    if name.is_empty() || name.len() > MAX_NAME_LEN || !ok_chars {
        return Err(invalid(format!(
            "key name {name:?} must be 1-{MAX_NAME_LEN} characters of A-Z a-z 0-9 - _ . /"
        )));
    }
    Ok(())
}

fn check_holders(threshold: u16, holders: &[NodeId]) -> Result<(), StateError> {
    let distinct: BTreeSet<&NodeId> = holders.iter().collect();
    if distinct.len() != holders.len() {
        return Err(invalid("holder list contains a node twice"));
    }
    let n = u16::try_from(holders.len()).unwrap_or(u16::MAX);
    ThresholdParams::new(threshold, n).map_err(|e| invalid(e.to_string()))?;
    Ok(())
}

impl StateMachine {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one committed command. Deterministic: the same commands in the
    /// same order give the same state and responses on every node.
    /// Trusts `cmd.principal`: only for commands already authenticated
    /// ([`StateMachine::apply_authenticated`] is what replicas run) and
    /// for tests of the state logic itself.
    pub fn apply(&mut self, cmd: &Command) -> Response {
        self.apply_signed_at(cmd, cmd.time_ms)
    }

    /// Applies `cmd`, whose author signed it at `signed_ms`.
    pub(crate) fn apply_signed_at(&mut self, cmd: &Command, signed_ms: u64) -> Response {
        self.applying = SigningTime(signed_ms);
        if crate::access::is_node_principal(&cmd.principal) {
            self.attest(&cmd.principal, signed_ms);
        }
        let key = dedup_key(cmd);
        if let Some(previous) = self.requests.get(&key) {
            let mut r = previous.clone();
            r.duplicate = true;
            return r;
        }
        let result = self.execute(cmd);
        let audit_seq = match (&cmd.op, &result) {
            (Operation::AuditBatch(events), Ok(_)) => self.append_events(cmd, events),
            _ => self.append_audit(cmd, &result),
        };
        debug_assert_eq!(
            self.audit.last().map(|r| r.seq),
            Some(audit_seq),
            "every applied command ends with its own audit record"
        );
        let response = Response {
            result,
            audit_seq,
            duplicate: false,
        };
        // An attestation is idempotent, so it is never remembered: a flood
        // of them cannot grow the store, and at the limit one is let
        // through to forget old ids.
        if !matches!(cmd.op, Operation::Attest) {
            self.remember(key, &cmd.principal, signed_ms, response.clone());
        } else if self.remembers_too_many() {
            self.forget_stale_requests();
        }
        response
    }

    /// Remembers an answer under its dedup key. A key is forgotten only
    /// once more than [`MAX_REMEMBERED_REQUESTS`] are kept and no proof of
    /// it can be fresh any more (signed longer than a proof's lifetime
    /// before the time the nodes vouch for), so a signed command cannot be
    /// replayed by flooding the log; past [`MAX_FRESH_REQUESTS`] new
    /// commands are refused instead (see `apply_authenticated`).
    fn remember(&mut self, key: RequestId, principal: &str, signed_ms: u64, response: Response) {
        self.shares.remembered(key, principal);
        self.requests.insert(key, response);
        let fresh_until_ms = signed_ms.saturating_add(INTENT_MAX_AGE_MS);
        self.requests_seen += 1;
        self.request_order
            .insert((fresh_until_ms, self.requests_seen, key));
        self.forget_stale_requests();
    }

    /// Forgets the requests whose proofs went stale first (ordered by
    /// freshness, so one far-future entry does not hold the rest back),
    /// while more than [`MAX_REMEMBERED_REQUESTS`] are kept.
    pub(crate) fn forget_stale_requests(&mut self) {
        while self.request_order.len() > MAX_REMEMBERED_REQUESTS {
            match self.request_order.first() {
                Some(&(fresh_until_ms, seen, old)) if fresh_until_ms < self.vouched_ms => {
                    self.request_order.remove(&(fresh_until_ms, seen, old));
                    self.requests.remove(&old);
                    self.shares.forgot(&old);
                }
                _ => break,
            }
        }
    }

    /// Whether `cmd`'s request is remembered (a retry of it is answered
    /// with the remembered outcome).
    pub(crate) fn requests_contains(&self, cmd: &Command) -> bool {
        self.requests.contains_key(&dedup_key(cmd))
    }

    /// How many request ids are remembered for deduplication.
    pub fn remembered_requests(&self) -> usize {
        self.request_order.len()
    }

    /// True when as many requests as may be remembered are all still fresh.
    pub(crate) fn remembers_too_many(&self) -> bool {
        self.request_order.len() >= MAX_FRESH_REQUESTS
    }

    /// The time the nodes vouch for: the lower median of the latest signing
    /// times of the nodes that hold a live key version (one that never
    /// signed counts as 0), never moving back; 0 before any key exists. A
    /// node that lies about the time is outvoted while fewer than half of
    /// the holders lie, and a node that holds nothing has no say.
    pub fn vouched_ms(&self) -> u64 {
        self.vouched_ms
    }

    /// The nodes whose clocks count: holders of a live key version.
    fn live_holders(&self) -> BTreeSet<NodeId> {
        self.keys
            .values()
            .flat_map(|k| k.versions.iter())
            .filter(|v| {
                !matches!(
                    v.state,
                    VersionState::Destroyed | VersionState::Failed { .. }
                )
            })
            .flat_map(|v| v.holders.iter().copied())
            .collect()
    }

    fn holders_median_ms(&self) -> u64 {
        let holders = self.live_holders();
        let mut times: Vec<u64> = holders
            .iter()
            .map(|h| self.node_times.get(&h.to_string()).copied().unwrap_or(0))
            .collect();
        times.sort_unstable();
        times
            .get(times.len().saturating_sub(1) / 2)
            .copied()
            .unwrap_or(0)
    }

    /// Node `node` should vouch for its clock now ([`Operation::Attest`]):
    /// more requests are remembered than are kept in the long run, and its
    /// last signing time is more than [`ATTEST_EVERY_MS`] behind `now_ms`; or a
    /// scheduled step is due by `now_ms` but not yet by the vouched time,
    /// and its last signing time is [`ATTEST_WAIT_MS`] behind.
    pub fn needs_attestation(&self, node: &str, now_ms: u64) -> bool {
        let last = self.node_times.get(node).copied();
        let behind = |gap: u64| last.is_none_or(|t| t.saturating_add(gap) <= now_ms);
        let ids = self.request_order.len() > MAX_REMEMBERED_REQUESTS && behind(ATTEST_EVERY_MS + 1);
        // Only a node whose clock counts (a live holder) vouches for the
        // schedule, at most every ATTEST_WAIT_MS.
        let counts = || {
            crate::access::node_of_principal(node).is_some_and(|n| self.live_holders().contains(&n))
        };
        ids || (behind(ATTEST_WAIT_MS) && self.schedule_waits_for_vouched_time(now_ms) && counts())
    }

    /// Some scheduled step is due by `now_ms` and not by the vouched time.
    fn schedule_waits_for_vouched_time(&self, now_ms: u64) -> bool {
        self.vouched_ms < now_ms
            && self.maintenance_due(now_ms).len()
                > self.maintenance_due(self.schedule_time_ms(now_ms)).len()
    }

    /// The time a node's clock `now_ms` may trigger scheduled steps at: no
    /// later than the time the nodes vouch for, so that no single node, the
    /// leader included, can make a destruction, an expiry or a rotation
    /// happen early by stamping a later time.
    pub fn schedule_time_ms(&self, now_ms: u64) -> u64 {
        if self.live_holders().is_empty() {
            // No key is live, so no clock counts: nothing is left to destroy
            // or rotate early, and approvals and tokens can still expire.
            return now_ms;
        }
        now_ms.min(self.vouched_ms)
    }

    /// The time a command's time-triggered step is checked against: a
    /// node's command (the maintenance the leader proposes) counts only up
    /// to the vouched time; a principal's at the earlier of the leader's
    /// stamp and the principal's own signing time.
    pub(crate) fn trigger_ms(&self, cmd: &Command) -> u64 {
        if crate::access::is_node_principal(&cmd.principal) {
            self.schedule_time_ms(cmd.time_ms)
        } else {
            // A principal's step counts from when the principal signed it:
            // the leader may stamp it up to 5 minutes later, never earlier
            // in its effect.
            cmd.time_ms.min(self.applying.0)
        }
    }

    /// Records node `node`'s signing time (never moving it back). At most
    /// [`MAX_NODE_TIMES`] nodes are kept; the one heard from longest ago
    /// goes first.
    fn attest(&mut self, node: &str, signed_ms: u64) {
        let time = self.node_times.entry(node.to_string()).or_insert(0);
        *time = (*time).max(signed_ms);
        while self.node_times.len() > MAX_NODE_TIMES {
            let oldest = self
                .node_times
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(n, _)| n.clone());
            match oldest {
                Some(n) => self.node_times.remove(&n),
                None => break,
            };
        }
        self.vouched_ms = self.vouched_ms.max(self.holders_median_ms());
    }

    fn append_events(&mut self, cmd: &Command, events: &[AuditEvent]) -> u64 {
        let mut seq = 0;
        for e in events {
            seq = self.push_record(AuditRecord {
                seq: 0,
                time_ms: cmd.time_ms,
                request_id: cmd.request_id,
                // Bounded one by one: a long field is cut, never the
                // neighbouring events dropped.
                principal: bounded(&e.principal, MAX_NAME_LEN),
                operation: bounded(&e.operation, MAX_NAME_LEN),
                key: e.key.as_deref().map(|k| bounded(k, MAX_NAME_LEN)),
                version: e.version,
                // The node that reports an event is part of it: events are
                // that node's word, not the principal's.
                outcome: format!(
                    "{}{REPORTED_BY}{}",
                    bounded(&e.outcome, MAX_TEXT_LEN - REPORTED_BY.len() - MAX_NAME_LEN),
                    bounded(&cmd.principal, MAX_NAME_LEN)
                ),
                prev_hash: GENESIS_HASH,
                hash: [0u8; 32],
            });
        }
        seq
    }

    /// Links `record` to the chain (sequence number, previous hash, hash).
    pub(crate) fn push_record(&mut self, mut record: AuditRecord) -> u64 {
        let (prev_hash, seq) = match self.audit.last() {
            Some(last) => (last.hash, last.seq + 1),
            None => (GENESIS_HASH, 1),
        };
        record.seq = seq;
        record.prev_hash = prev_hash;
        record.hash = record.compute_hash();
        self.audit.push(record);
        seq
    }

    fn append_audit(&mut self, cmd: &Command, result: &Outcome) -> u64 {
        // A refused command is recorded by the state machine's words only:
        // never the operation, key or outcome text its sender chose.
        let outcome = match (&cmd.op, result) {
            (Operation::Audit { outcome, .. }, Ok(_)) => outcome.clone(),
            (_, Ok(Applied::RefreshAbandoned { epoch, reason })) => {
                format!("ok; refresh to epoch {} abandoned: {reason}", epoch.0)
            }
            (_, Ok(_)) => "ok".to_string(),
            (_, Err(e)) => format!("refused: {e}"),
        };
        let record = AuditRecord {
            seq: 0,
            time_ms: cmd.time_ms,
            request_id: cmd.request_id,
            principal: cmd.principal.clone(),
            operation: match (&cmd.op, result) {
                (Operation::Audit { operation, .. }, Ok(_)) => operation.clone(),
                (op, _) => op.name().to_string(),
            },
            key: match (&cmd.op, result) {
                (Operation::Audit { .. }, Err(_)) => None,
                (op, _) => op.key_name().map(|k| bounded(k, MAX_NAME_LEN)),
            },
            version: cmd.op.version(),
            outcome,
            prev_hash: GENESIS_HASH,
            hash: [0u8; 32],
        };
        self.push_record(record)
    }

    fn execute(&mut self, cmd: &Command) -> Outcome {
        match self.authorize_command(cmd)? {
            crate::access::Decision::Allow => self.execute_op(cmd),
            crate::access::Decision::NeedsApproval { required, ttl_ms } => {
                self.request_approval(cmd, required, ttl_ms)
            }
            crate::access::Decision::Deny(reason) => Err(StateError::Denied(reason)),
        }
    }

    pub(crate) fn execute_op(&mut self, cmd: &Command) -> Outcome {
        let now = cmd.time_ms;
        match &cmd.op {
            Operation::CreateKey(c) => self.create_key(cmd.request_id, now, c),
            Operation::SetTag { name, tag, value } => self.set_tag(name, tag, value.as_deref()),
            Operation::SetAlias {
                name,
                alias,
                change,
            } => self.set_alias(cmd, name, alias, *change),
            Operation::Rotate {
                name,
                holders,
                generation_timeout_ms,
            } => self.rotate(name, holders, *generation_timeout_ms, now),
            Operation::Dkg {
                name,
                version,
                from,
                step,
                session,
            } => self.dkg_step(cmd, name, *version, *from, step, *session),
            Operation::Refresh {
                name,
                version,
                timeout_ms,
            } => self.start_refresh(name, *version, *timeout_ms, now),
            Operation::AbandonRefresh {
                name,
                version,
                attempt,
                reason,
            } => self.abandon_refresh(name, *version, *attempt, reason, now),
            Operation::FailGeneration {
                name,
                version,
                reason,
            } => self.fail_generation(name, *version, reason, now),
            Operation::Disable { name, version } => {
                self.apply_change(name, *version, LifecycleChange::Disable, |v| {
                    v.state = VersionState::Disabled
                })
            }
            Operation::Enable { name, version } => {
                self.apply_change(name, *version, LifecycleChange::Enable, |v| {
                    v.state = VersionState::Enabled
                })
            }
            Operation::MarkCompromised {
                name,
                version,
                reason,
                allow_decrypt,
            } => self.apply_change(name, *version, LifecycleChange::MarkCompromised, |v| {
                v.state = VersionState::Disabled;
                v.compromised = Some(reason.clone());
                v.compromised_decrypt_allowed = *allow_decrypt;
            }),
            Operation::SetMinDecryptVersion { name, version } => {
                self.set_min_decrypt_version(name, *version)
            }
            Operation::ScheduleDestruction {
                name,
                version,
                after_ms,
            } => self.apply_change(name, *version, LifecycleChange::ScheduleDestruction, |v| {
                v.state = VersionState::PendingDestruction {
                    due_ms: now.saturating_add(*after_ms),
                }
            }),
            Operation::CancelDestruction { name, version } => {
                self.apply_change(name, *version, LifecycleChange::CancelDestruction, |v| {
                    v.state = VersionState::Disabled
                })
            }
            Operation::Destroy { name, version } => {
                let trigger = self.trigger_ms(cmd);
                self.with_version(name, *version, "destroy (waiting period not over)", |v| {
                    let due = matches!(v.state, VersionState::PendingDestruction { due_ms } if due_ms <= trigger);
                    due.then(|| {
                        v.state = VersionState::Destroying;
                        // A refresh would deal new shares of a version being erased.
                        if v.refresh.take().is_some() {
                            v.last_refresh_failure =
                                Some("the version was destroyed during the refresh".into());
                        }
                    })
                })
            }
            Operation::EraseReceipt {
                name,
                version,
                node,
            } => self.erase_receipt(&cmd.principal, name, *version, *node),
            Operation::PublishDkgKey { node, public_key } => {
                self.publish_dkg_key(&cmd.principal, *node, public_key)
            }
            Operation::Audit { .. } => Ok(Applied::Done),
            Operation::AuditBatch(events) => check_audit_batch(events),
            _ => self.execute_access_op(cmd),
        }
    }

    fn create_key(&mut self, request: RequestId, now: u64, c: &CreateKey) -> Outcome {
        check_name(&c.name)?;
        if [&c.description, &c.owner, &c.purpose]
            .iter()
            .any(|s| s.len() > MAX_TEXT_LEN)
        {
            return Err(invalid(format!(
                "description, owner and purpose are limited to {MAX_TEXT_LEN} bytes"
            )));
        }
        check_holders(c.threshold, &c.holders)?;
        self.check_dkg_keys(&c.holders)?;
        check_rotation_period(c.rotation_period_ms)?;
        if self.keys.contains_name(&c.name) {
            return Err(StateError::KeyExists(c.name.clone()));
        }
        if self.keys.by_alias(&c.name).is_some() {
            return Err(StateError::AliasExists(c.name.clone()));
        }
        if self.keys.len() >= MAX_KEYS {
            return Err(invalid(format!(
                "the cluster holds {MAX_KEYS} keys, its limit; rotate an existing key instead (a key holds up to {MAX_VERSIONS} versions) or use another cluster"
            )));
        }
        let id = self.unique_key_id(request)?;
        let version = KeyVersion(1);
        self.keys.insert(KeyRecord {
            id,
            name: c.name.clone(),
            description: c.description.clone(),
            owner: c.owner.clone(),
            purpose: c.purpose.clone(),
            created_ms: now,
            rotation_period_ms: c.rotation_period_ms,
            expires_at_ms: c.expires_at_ms,
            last_rotated_ms: now,
            versions: vec![new_version(
                version,
                now,
                DEFAULT_GENERATION_TIMEOUT_MS,
                c.threshold,
                &c.holders,
            )],
            tags: BTreeMap::new(),
            min_decrypt_version: KeyVersion(0),
            policy: None,
            expired: false,
        });
        Ok(Applied::KeyCreated { id, version })
    }

    fn version_mut(
        &mut self,
        name: &str,
        version: KeyVersion,
    ) -> Result<&mut KeyVersionRecord, StateError> {
        self.key_mut(name)?
            .version_mut(version)
            .ok_or_else(|| StateError::NoSuchVersion {
                name: name.to_string(),
                version: version.0,
            })
    }

    pub(crate) fn key_mut(&mut self, name: &str) -> Result<&mut KeyRecord, StateError> {
        self.keys
            .get_mut(name)
            .ok_or_else(|| StateError::NoSuchKey(name.to_string()))
    }

    fn set_tag(&mut self, name: &str, tag: &str, value: Option<&[u8]>) -> Outcome {
        let key = self.key_mut(name)?;
        if tag.is_empty() || tag.len() > MAX_NAME_LEN {
            return Err(invalid(format!("tag names are 1-{MAX_NAME_LEN} bytes")));
        }
        match value {
            None => {
                key.tags.remove(tag);
            }
            Some(v) if v.len() > MAX_TAG_VALUE_LEN => {
                return Err(invalid(format!(
                    "tag values are limited to {MAX_TAG_VALUE_LEN} bytes"
                )))
            }
            Some(_) if key.tags.len() >= MAX_TAGS && !key.tags.contains_key(tag) => {
                return Err(invalid(format!("a key has at most {MAX_TAGS} tags")))
            }
            Some(v) => {
                key.tags.insert(tag.to_string(), v.to_vec());
            }
        }
        Ok(Applied::Done)
    }

    /// The key that alias `alias` names, if any.
    pub fn key_by_alias(&self, alias: &str) -> Option<&KeyRecord> {
        self.keys.by_alias(alias)
    }

    fn set_alias(
        &mut self,
        cmd: &Command,
        name: &str,
        alias: &str,
        change: AliasChange,
    ) -> Outcome {
        check_alias(alias)?;
        let key = self
            .key(name)
            .ok_or_else(|| StateError::NoSuchKey(name.to_string()))?;
        let owner = self.keys.by_alias(alias).map(|k| k.name.clone());
        match (change, owner.as_deref()) {
            (AliasChange::Create, Some(_)) => {
                return Err(StateError::AliasExists(alias.to_string()))
            }
            (AliasChange::Create, None) if self.keys.contains_name(alias) => {
                return Err(StateError::AliasExists(alias.to_string()))
            }
            (AliasChange::Move, Some(from)) if from != name => self.may_configure(cmd, from)?,
            (AliasChange::Delete, Some(on)) if on == name => {
                self.keys.set_alias(alias, None);
                return Ok(Applied::Done);
            }
            (AliasChange::Move | AliasChange::Delete, None) => {
                return Err(StateError::NotFound(format!(
                    "alias {alias:?} does not exist"
                )))
            }
            (AliasChange::Delete, Some(on)) => {
                return Err(StateError::NotFound(format!(
                    "alias {alias:?} is on key {on:?}, not on {name:?}"
                )))
            }
            _ => {}
        }
        if key.aliases().count() >= MAX_ALIASES_PER_KEY {
            return Err(invalid(format!(
                "a key has at most {MAX_ALIASES_PER_KEY} aliases"
            )));
        }
        if key.tags.len() >= MAX_TAGS && !key.tags.contains_key(crate::model::ALIASES_TAG) {
            return Err(invalid(format!(
                "a key has at most {MAX_TAGS} tags, its aliases counting as one"
            )));
        }
        self.keys.set_alias(alias, Some(name));
        Ok(Applied::Done)
    }

    /// Moving an alias takes it from a key too: the author must be allowed
    /// to configure that key as well (the command's own key was checked).
    fn may_configure(&self, cmd: &Command, name: &str) -> Result<(), StateError> {
        if cmd.principal.starts_with("node-") {
            return Err(StateError::Denied("nodes do not move aliases".into()));
        }
        match self.authorize(
            &cmd.principal,
            Permission::KeyConfigure,
            Some(name),
            &BTreeMap::new(),
        ) {
            Decision::Allow => Ok(()),
            Decision::Deny(why) => Err(StateError::Denied(why)),
            Decision::NeedsApproval { .. } => Err(StateError::Denied(format!(
                "configuring key {name:?} needs approval; move the alias in two steps \
                 (delete, then create) so each key's rule applies"
            ))),
        }
    }

    fn start_refresh(
        &mut self,
        name: &str,
        version: KeyVersion,
        timeout_ms: Option<u64>,
        now: u64,
    ) -> Outcome {
        let timeout_ms = check_timeout(timeout_ms)?;
        let v = self.version_mut(name, version)?;
        if v.state != VersionState::Enabled || v.public_keys.is_none() {
            return Err(transition_error(name, v, LifecycleChange::Refresh.action()));
        }
        if let Some(r) = &v.refresh {
            return Err(invalid(format!(
                "version {version} of key {name:?} is already being refreshed to epoch {} (attempt {}); wait for it to finish",
                r.epoch.0, r.attempt
            )));
        }
        debug_assert!(LifecycleChange::Refresh.allowed(v));
        let epoch = Epoch(
            v.epoch
                .0
                .checked_add(1)
                .ok_or_else(|| invalid("epoch overflow"))?,
        );
        let attempt = v
            .refresh_attempts
            .checked_add(1)
            .ok_or_else(|| invalid("too many refresh attempts"))?;
        v.refresh_attempts = attempt;
        v.refresh = Some(RefreshRecord {
            epoch,
            attempt,
            started_ms: now,
            deadline_ms: now.saturating_add(timeout_ms),
            dkg: DkgRecord::new(now),
        });
        Ok(Applied::RefreshStarted { epoch, attempt })
    }

    /// Starts, at `start_ms`, the refresh of a version the schedule says is
    /// due by `trigger_ms` (the time the nodes vouch for).
    pub(crate) fn scheduled_refresh(
        &mut self,
        name: &str,
        version: KeyVersion,
        trigger_ms: u64,
        start_ms: u64,
    ) -> Outcome {
        let key = self
            .key(name)
            .ok_or_else(|| StateError::NoSuchKey(name.into()))?;
        let id = key.id;
        let due = key
            .version(version)
            .and_then(|v| self.refresh_schedule.due_ms(id, v));
        if due.is_none_or(|d| d > trigger_ms) {
            return Err(invalid(format!(
                "version {version} of key {name:?} is not due for its scheduled refresh"
            )));
        }
        let running = self.refreshes_running();
        if running >= MAX_SCHEDULED_AT_ONCE {
            return Err(invalid(format!(
                "{running} refreshes are running, the most the schedule starts at once; version {version} of key {name:?} waits its turn"
            )));
        }
        let started = self.start_refresh(name, version, None, start_ms)?;
        self.refresh_schedule.attempted(id, version, start_ms);
        Ok(started)
    }

    /// Key versions with a refresh in progress.
    pub(crate) fn refreshes_running(&self) -> usize {
        self.keys()
            .flat_map(|k| k.versions.iter())
            .filter(|v| v.refresh.is_some())
            .count()
    }

    fn abandon_refresh(
        &mut self,
        name: &str,
        version: KeyVersion,
        attempt: u32,
        note: &str,
        now: u64,
    ) -> Outcome {
        let v = self.version_mut(name, version)?;
        let Some(r) = v.refresh.as_ref().filter(|r| r.attempt == attempt) else {
            return Err(invalid(format!(
                "version {version} of key {name:?} has no refresh attempt {attempt} in progress"
            )));
        };
        if now < r.deadline_ms {
            return Err(transition_error(
                name,
                v,
                &format!(
                    "abandon refresh before its deadline ({} ms log time, now {now} ms)",
                    r.deadline_ms
                ),
            ));
        }
        let reason = missed_deadline("refresh", r.deadline_ms, &r.dkg, v.sorted_holders(), note);
        Ok(abandon(v, reason))
    }

    pub(crate) fn rotate(
        &mut self,
        name: &str,
        holders: &[NodeId],
        timeout_ms: Option<u64>,
        now: u64,
    ) -> Outcome {
        let timeout_ms = check_timeout(timeout_ms)?;
        self.check_dkg_keys(holders)?;
        let key = self.key_mut(name)?;
        let last = key.versions.last().map(|v| (v.version, v.threshold));
        let (last_version, threshold) = last.unwrap_or((KeyVersion(0), 2));
        if key.versions.len() >= MAX_VERSIONS {
            return Err(invalid(format!(
                "a key has at most {MAX_VERSIONS} versions"
            )));
        }
        if key
            .versions
            .iter()
            .any(|v| v.state == VersionState::Generating)
        {
            return Err(invalid(format!(
                "key {name:?} already has a version being generated; wait for it to finish"
            )));
        }
        check_holders(threshold, holders)?;
        let version = KeyVersion(last_version.0 + 1);
        key.versions
            .push(new_version(version, now, timeout_ms, threshold, holders));
        key.last_rotated_ms = now;
        Ok(Applied::VersionCreated { version })
    }

    fn dkg_step(
        &mut self,
        cmd: &Command,
        name: &str,
        version: KeyVersion,
        from: NodeId,
        step: &DkgStep,
        session: DkgSession,
    ) -> Outcome {
        if cmd.principal != from.to_string() {
            return Err(invalid(format!(
                "a DKG step for {from} must be proposed by {from} itself, not by {:?}",
                cmd.principal
            )));
        }
        let v = self.version_mut(name, version)?;
        if !v.holders.contains(&from) {
            return Err(invalid(format!(
                "{from} is not a holder of version {version} of key {name:?}"
            )));
        }
        match session {
            DkgSession::Generation => {
                if v.state != VersionState::Generating {
                    return Err(transition_error(name, v, step.name()));
                }
                apply_dkg_step(name, v, from, step, cmd.time_ms)
            }
            DkgSession::Refresh { epoch, attempt } => {
                if v.refresh.as_ref().map(RefreshRecord::session) != Some(session) {
                    return Err(invalid(format!(
                        "{} for refresh attempt {attempt} (epoch {}) of version {version} of key {name:?}, which is not in progress",
                        step.name(),
                        epoch.0
                    )));
                }
                let outcome = apply_refresh_step(name, v, from, step, cmd.time_ms);
                if let (Ok(Applied::RefreshCompleted { .. }), Some(key)) =
                    (&outcome, self.key(name))
                {
                    let (id, at) = (key.id, self.trigger_ms(cmd));
                    self.refresh_schedule.refreshed(id, version, at);
                }
                outcome
            }
        }
    }

    fn fail_generation(
        &mut self,
        name: &str,
        version: KeyVersion,
        note: &str,
        now: u64,
    ) -> Outcome {
        let v = self.version_mut(name, version)?;
        if v.state != VersionState::Generating {
            return Err(transition_error(name, v, "fail generation"));
        }
        if now < v.generation_deadline_ms {
            return Err(transition_error(
                name,
                v,
                &format!(
                    "fail generation before its deadline ({} ms log time, now {now} ms)",
                    v.generation_deadline_ms
                ),
            ));
        }
        let reason = missed_deadline(
            "generation",
            v.generation_deadline_ms,
            &v.dkg,
            v.sorted_holders(),
            note,
        );
        v.state = VersionState::Failed {
            reason: reason.clone(),
        };
        v.dkg.acked_keys = None;
        Ok(Applied::GenerationFailed { reason })
    }

    /// Runs `change` on a version; `change` returns `None` when the version's
    /// state does not allow the action.
    /// Applies a client's lifecycle change if its guard allows it
    /// ([`LifecycleChange::allowed`]), else refuses naming the state.
    fn apply_change(
        &mut self,
        name: &str,
        version: KeyVersion,
        change: LifecycleChange,
        apply: impl FnOnce(&mut KeyVersionRecord),
    ) -> Outcome {
        let v = self.version_mut(name, version)?;
        if !change.allowed(v) {
            let before = v.clone();
            return Err(transition_error(name, &before, change.action()));
        }
        apply(v);
        Ok(Applied::Done)
    }

    fn with_version(
        &mut self,
        name: &str,
        version: KeyVersion,
        action: &str,
        change: impl FnOnce(&mut KeyVersionRecord) -> Option<()>,
    ) -> Outcome {
        let v = self.version_mut(name, version)?;
        let before = v.clone();
        match change(v) {
            Some(()) => Ok(Applied::Done),
            None => Err(transition_error(name, &before, action)),
        }
    }

    fn set_min_decrypt_version(&mut self, name: &str, version: KeyVersion) -> Outcome {
        let key = self.key_mut(name)?;
        let primary = key.primary_version().map(|v| v.version);
        if primary.is_some_and(|p| version > p) {
            return Err(invalid(format!(
                "minimum decryption version {} is above the newest enabled version; rotate first",
                version.0
            )));
        }
        key.min_decrypt_version = version;
        Ok(Applied::Done)
    }

    /// Nodes that published their DKG key.
    pub fn dkg_key_nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.dkg_keys.keys().copied()
    }

    /// A node's DKG key, as it published it.
    pub fn dkg_key(&self, node: NodeId) -> Option<&[u8]> {
        self.dkg_keys.get(&node).map(Vec::as_slice)
    }

    fn publish_dkg_key(&mut self, principal: &str, node: NodeId, key: &[u8]) -> Outcome {
        if principal != node.to_string() {
            return Err(invalid(format!(
                "the DKG key of {node} must be published by {node} itself, not by {principal:?}"
            )));
        }
        qk_crypto::DkgPublicKey::from_bytes(key)
            .map_err(|e| invalid(format!("DKG key of {node}: {e}")))?;
        // A node whose disk was lost comes back with a new seal key, so a
        // new DKG key, which replaces its old one: only its own shares are
        // sealed to it, and a DKG reads the keys at the entry that starts it.
        if !self.dkg_keys.contains_key(&node) && self.dkg_keys.len() >= MAX_DKG_KEYS {
            return Err(invalid(format!(
                "the cluster already keeps {MAX_DKG_KEYS} DKG keys, its limit"
            )));
        }
        self.dkg_keys.insert(node, key.to_vec());
        Ok(Applied::Done)
    }

    /// Every holder must have published its DKG key: dealers seal shares to it.
    fn check_dkg_keys(&self, holders: &[NodeId]) -> Result<(), StateError> {
        let missing: Vec<String> = holders
            .iter()
            .filter(|h| !self.dkg_keys.contains_key(h))
            .map(|h| h.to_string())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(invalid(format!(
            "no DKG key published yet by {} (a node publishes its key at start-up, and dealers seal shares to it); check that every holder is running, then retry",
            missing.join(", ")
        )))
    }

    fn erase_receipt(
        &mut self,
        principal: &str,
        name: &str,
        version: KeyVersion,
        node: NodeId,
    ) -> Outcome {
        if principal != node.to_string() {
            return Err(invalid(format!(
                "an erase receipt for {node} must be filed by {node} itself, not by {principal:?}"
            )));
        }
        let v = self.version_mut(name, version)?;
        if !matches!(v.state, VersionState::Destroying | VersionState::Destroyed) {
            return Err(transition_error(name, v, "erase receipt"));
        }
        if !v.holders.contains(&node) {
            return Err(invalid(format!("{node} is not a holder of this version")));
        }
        v.erase_receipts.insert(node);
        let needed = v.holders.len() - usize::from(v.threshold) + 1;
        if v.state == VersionState::Destroying && v.erase_receipts.len() >= needed {
            v.state = VersionState::Destroyed;
            return Ok(Applied::VersionDestroyed);
        }
        Ok(Applied::Done)
    }

    pub fn key(&self, name: &str) -> Option<&KeyRecord> {
        self.keys.get(name)
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    pub fn keys(&self) -> impl Iterator<Item = &KeyRecord> {
        self.keys.values()
    }

    /// The key a ciphertext or request names by id (no scan of the keys).
    pub fn key_by_id(&self, id: KeyId) -> Option<&KeyRecord> {
        self.keys.by_id(id)
    }

    /// Audit records with `seq >= from_seq`, at most `limit`.
    pub fn audit_records(&self, from_seq: u64, limit: usize) -> &[AuditRecord] {
        let start = usize::try_from(from_seq.saturating_sub(1)).unwrap_or(usize::MAX);
        let start = start.min(self.audit.len());
        let end = start.saturating_add(limit).min(self.audit.len());
        &self.audit[start..end]
    }

    pub fn audit_len(&self) -> u64 {
        self.audit.len() as u64
    }

    /// A hash of the whole state, to compare replicas.
    pub fn digest(&self) -> Result<[u8; 32], StateError> {
        let mut h = Sha256::new();
        h.update(self.to_bytes()?);
        Ok(h.finalize().into())
    }

    /// The whole state encoded (what replicas compare); an encoding failure
    /// is reported, never replaced by empty bytes.
    pub fn to_bytes(&self) -> Result<Vec<u8>, StateError> {
        postcard::to_allocvec(&(self, &self.shares, &self.refresh_schedule))
            .map_err(|e| invalid(format!("cannot encode the state: {e}")))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StateError> {
        let (mut state, shares, schedule): (StateMachine, RequestShares, RefreshSchedule) =
            postcard::from_bytes(bytes)
                .map_err(|e| invalid(format!("corrupt state snapshot: {e}")))?;
        state.restore_request_shares(shares);
        state.refresh_schedule = schedule;
        Ok(state)
    }

    /// Who sent the remembered commands, per principal; the snapshot
    /// carries it beside the rest of the state.
    pub fn request_shares(&self) -> &crate::request_shares::RequestShares {
        &self.shares
    }

    /// The cluster's refresh schedule; the snapshot carries it beside the
    /// rest of the state.
    pub fn refresh_schedule(&self) -> &RefreshSchedule {
        &self.refresh_schedule
    }

    /// Puts back the refresh schedule a snapshot carried beside the state.
    pub fn restore_refresh_schedule(&mut self, schedule: RefreshSchedule) {
        self.refresh_schedule = schedule;
    }

    /// Puts back the shares a snapshot carried beside the state, keeping
    /// only the authors of commands the state remembers.
    pub fn restore_request_shares(&mut self, shares: crate::request_shares::RequestShares) {
        self.shares = shares;
        let requests = &self.requests;
        self.shares.retain(|k| requests.contains_key(k));
    }
}

fn new_version(
    version: KeyVersion,
    now: u64,
    timeout_ms: u64,
    threshold: u16,
    holders: &[NodeId],
) -> KeyVersionRecord {
    KeyVersionRecord {
        version,
        state: VersionState::Generating,
        created_ms: now,
        threshold,
        holders: holders.to_vec(),
        epoch: Epoch(0),
        public_keys: None,
        erase_receipts: BTreeSet::new(),
        compromised: None,
        compromised_decrypt_allowed: false,
        generation_deadline_ms: now.saturating_add(timeout_ms),
        dkg: DkgRecord::new(now),
        refresh: None,
        refresh_attempts: 0,
        last_refresh_failure: None,
    }
}

fn check_timeout(timeout_ms: Option<u64>) -> Result<u64, StateError> {
    let timeout_ms = timeout_ms.unwrap_or(DEFAULT_GENERATION_TIMEOUT_MS);
    if !(MIN_GENERATION_TIMEOUT_MS..=MAX_GENERATION_TIMEOUT_MS).contains(&timeout_ms) {
        return Err(invalid(format!(
            "generation timeout {timeout_ms} ms is outside {MIN_GENERATION_TIMEOUT_MS}..={MAX_GENERATION_TIMEOUT_MS} ms"
        )));
    }
    Ok(timeout_ms)
}

/// Ends the version's refresh without switching epochs.
fn abandon(v: &mut KeyVersionRecord, reason: String) -> Applied {
    let epoch = v.refresh.take().map(|r| r.epoch).unwrap_or(v.epoch);
    v.last_refresh_failure = Some(reason.clone());
    Applied::RefreshAbandoned { epoch, reason }
}

/// The bytes of an encoded `qk_crypto::PublicKeySet` up to and including
/// the public key: format version and tag (2), threshold (2), holder count
/// (2), one u16 index per holder, then the first commitment (a 33-byte
/// compressed point). Two sets with equal prefixes have the same threshold,
/// holders and public key.
fn public_key_prefix(bytes: &[u8], holders: usize) -> Option<&[u8]> {
    bytes.get(..6 + 2 * holders + 33)
}

/// Applies one step of a version's refresh DKG.
fn apply_refresh_step(
    name: &str,
    v: &mut KeyVersionRecord,
    from: NodeId,
    step: &DkgStep,
    now: u64,
) -> Outcome {
    let n = v.holders.len();
    let (version, state) = (v.version, v.state.name());
    let Some(r) = v.refresh.as_mut() else {
        return Err(invalid("no refresh in progress"));
    };
    let DkgStep::Ack { public_keys } = step else {
        let ctx = format!("refresh to epoch {}", r.epoch.0);
        dkg_record_step(name, version, state, &ctx, n, &mut r.dkg, from, step, now)?;
        return Ok(Applied::Done);
    };
    check_ack(public_keys)?;
    if r.dkg.phase != DkgPhase::Finished {
        return Err(transition_error_at(
            name,
            version,
            state,
            &format!("a refresh ack in DKG phase {}", r.dkg.phase.name()),
        ));
    }
    if r.dkg.acks.contains_key(&from) {
        return Err(invalid(format!(
            "{from} already acked this refresh; the first ack stands"
        )));
    }
    r.dkg.acks.insert(from, digest_of(public_keys));
    if r.dkg.acked_keys.is_none() {
        r.dkg.acked_keys = Some(public_keys.to_vec());
    }
    if let Some(groups) = disagreement(&r.dkg) {
        let reason = format!(
            "holders disagree on the refreshed public key set ({groups}); some holder saw a different DKG transcript or is faulty"
        );
        return Ok(abandon(v, reason));
    }
    let current = v.public_keys.as_deref().unwrap_or_default();
    let same_key =
        public_key_prefix(public_keys, n).is_some_and(|p| public_key_prefix(current, n) == Some(p));
    if !same_key {
        let reason = format!(
            "{from} acked a refreshed key set whose public key, threshold or holders differ from the version's; a refresh must keep the key"
        );
        return Ok(abandon(v, reason));
    }
    if !v.holders.iter().all(|h| r.dkg.acks.contains_key(h)) {
        return Ok(Applied::Done);
    }
    if !matches!(v.state, VersionState::Enabled | VersionState::Disabled) {
        let reason = format!(
            "every holder acked, but the version is now {}; the refresh is not applied",
            v.state.name()
        );
        return Ok(abandon(v, reason));
    }
    let epoch = r.epoch;
    v.public_keys = r.dkg.acked_keys.take();
    v.epoch = epoch;
    v.refresh = None;
    v.last_refresh_failure = None;
    Ok(Applied::RefreshCompleted { epoch })
}

/// `Some(description)` when the acks name more than one key set.
fn disagreement(dkg: &DkgRecord) -> Option<String> {
    let distinct: BTreeSet<[u8; 32]> = dkg.acks.values().copied().collect();
    if distinct.len() <= 1 {
        return None;
    }
    let groups: Vec<String> = distinct
        .iter()
        .map(|d| {
            let who = dkg.acks.iter().filter(|(_, a)| *a == d).map(|(n, _)| n);
            format!("{} acked key set {}", node_list(who), short_hex(d))
        })
        .collect();
    Some(groups.join("; "))
}

fn check_ack(keys: &[u8]) -> Result<(), StateError> {
    if keys.is_empty() || keys.len() > MAX_PUBLIC_KEYS_LEN {
        return Err(invalid(format!(
            "acked public key set is {} bytes; it must be 1-{MAX_PUBLIC_KEYS_LEN} bytes",
            keys.len()
        )));
    }
    Ok(())
}

fn digest_of(bytes: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"qk/ack");
    h.update(bytes);
    h.finalize().into()
}

fn short_hex(digest: &[u8; 32]) -> String {
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

fn node_list<'a>(nodes: impl IntoIterator<Item = &'a NodeId>) -> String {
    let names: Vec<String> = nodes.into_iter().map(NodeId::to_string).collect();
    names.join(", ")
}

/// Cuts an operator-supplied note to `MAX_REASON_LEN` bytes on a char boundary.
fn bounded_note(note: &str) -> &str {
    if note.len() <= MAX_REASON_LEN {
        return note;
    }
    let mut end = MAX_REASON_LEN;
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    &note[..end]
}

/// Applies one DKG step to a generating version; `Err` names what was wrong.
fn apply_dkg_step(
    name: &str,
    v: &mut KeyVersionRecord,
    from: NodeId,
    step: &DkgStep,
    now: u64,
) -> Outcome {
    if let DkgStep::Ack { public_keys } = step {
        return apply_ack(name, v, from, public_keys);
    }
    let n = v.holders.len();
    let (version, state) = (v.version, v.state.name());
    dkg_record_step(
        name, version, state, "version", n, &mut v.dkg, from, step, now,
    )?;
    Ok(Applied::Done)
}

/// Orders a non-ack DKG step into `dkg` (a generation's or a refresh's);
/// `what` names the DKG ("version", "refresh to epoch 2") in messages.
#[allow(clippy::too_many_arguments)]
fn dkg_record_step(
    name: &str,
    version: KeyVersion,
    state: &str,
    what: &str,
    n: usize,
    dkg: &mut DkgRecord,
    from: NodeId,
    step: &DkgStep,
    now: u64,
) -> Result<(), StateError> {
    let phase = dkg.phase;
    let wrong_phase = |step: &str| {
        transition_error_at(
            name,
            version,
            state,
            &format!("{step} in DKG phase {}", phase.name()),
        )
    };
    match step {
        DkgStep::Deal(bytes) => {
            check_dkg_len(bytes, "deal")?;
            if phase != DkgPhase::Dealing {
                return Err(wrong_phase("a deal"));
            }
            let twice = || format!("{from} already dealt for this {what}; the first deal stands");
            // By rule: the last holder's deal closes dealing.
            if post_once(&mut dkg.dealt, from, n, twice)? {
                dkg.phase = DkgPhase::Complaints;
                dkg.closed_ms = Some(now);
            }
        }
        DkgStep::Complaints(list) => {
            if list.len() > n {
                return Err(invalid(format!(
                    "{} complaints from {from}, at most one per holder ({n})",
                    list.len()
                )));
            }
            let max = qk_crypto::messages::MAX_COMPLAINT_LEN;
            if let Some(c) = list.iter().find(|c| c.is_empty() || c.len() > max) {
                return Err(invalid(format!(
                    "a DKG complaint is {} bytes; it must be 1-{max} bytes",
                    c.len()
                )));
            }
            if phase != DkgPhase::Complaints {
                return Err(wrong_phase("complaints"));
            }
            let twice = || format!("{from} already posted its complaints for this {what}");
            // Complaints prove themselves: once every holder posted its
            // list there is nothing left to wait for.
            if post_once(&mut dkg.complained, from, n, twice)? {
                dkg.phase = DkgPhase::Finished;
            }
        }
        DkgStep::CloseDealing => {
            if phase != DkgPhase::Dealing {
                return Err(wrong_phase("close dealing (already closed; no-op)"));
            }
            // By rule, never on one holder's say: only at the timeout.
            let due = dkg.started_ms.saturating_add(DKG_DEALING_TIMEOUT_MS);
            let dealt = dkg.dealt.len();
            not_before(now, due, |due| {
                format!("dealing of this {what} closes when all {n} holders dealt ({dealt} did) or at log time {due} ms (now {now} ms)")
            })?;
            dkg.phase = DkgPhase::Complaints;
            dkg.closed_ms = Some(now);
        }
        DkgStep::Finish => {
            if phase != DkgPhase::Complaints {
                return Err(wrong_phase("finish (not in the complaint phase; no-op)"));
            }
            let closed = dkg.closed_ms.unwrap_or(dkg.started_ms);
            let due = closed.saturating_add(DKG_COMPLAINT_TIMEOUT_MS);
            let posted = dkg.complained.len();
            not_before(now, due, |due| {
                format!("the complaint phase of this {what} ends when all {n} holders posted their complaints ({posted} did) or at log time {due} ms (now {now} ms)")
            })?;
            dkg.phase = DkgPhase::Finished;
        }
        DkgStep::Ack { .. } => return Err(invalid("an ack is applied by its DKG's own rule")),
    }
    Ok(())
}

/// Records `from`'s one step of a DKG phase in `posted` (refused, with
/// `twice`'s message, if it already posted); `Ok(true)` once all `n`
/// holders have.
fn post_once(
    posted: &mut BTreeSet<NodeId>,
    from: NodeId,
    n: usize,
    twice: impl FnOnce() -> String,
) -> Result<bool, StateError> {
    if !posted.insert(from) {
        return Err(invalid(twice()));
    }
    Ok(posted.len() == n)
}

/// Refuses a timeout step before log time `due` ms, with `early`'s message.
fn not_before(now: u64, due: u64, early: impl FnOnce(u64) -> String) -> Result<(), StateError> {
    if now < due {
        return Err(invalid(early(due)));
    }
    Ok(())
}

fn check_dkg_len(bytes: &[u8], what: &str) -> Result<(), StateError> {
    if bytes.is_empty() || bytes.len() > MAX_DKG_MESSAGE_LEN {
        return Err(invalid(format!(
            "DKG {what} is {} bytes; it must be 1-{MAX_DKG_MESSAGE_LEN} bytes",
            bytes.len()
        )));
    }
    Ok(())
}

fn apply_ack(name: &str, v: &mut KeyVersionRecord, from: NodeId, keys: &[u8]) -> Outcome {
    check_ack(keys)?;
    if v.dkg.phase != DkgPhase::Finished {
        return Err(transition_error(
            name,
            v,
            &format!("an ack in DKG phase {}", v.dkg.phase.name()),
        ));
    }
    if v.dkg.acks.contains_key(&from) {
        return Err(invalid(format!(
            "{from} already acked this version; the first ack stands"
        )));
    }
    let digest = digest_of(keys);
    v.dkg.acks.insert(from, digest);
    if v.dkg.acked_keys.is_none() {
        v.dkg.acked_keys = Some(keys.to_vec());
    }
    if let Some(groups) = disagreement(&v.dkg) {
        let reason = format!(
            "holders disagree on the generated public key set ({groups}); some holder saw a different DKG transcript or is faulty: investigate, then rotate again"
        );
        v.state = VersionState::Failed {
            reason: reason.clone(),
        };
        v.dkg.acked_keys = None;
        return Ok(Applied::GenerationFailed { reason });
    }
    if v.holders.iter().all(|h| v.dkg.acks.contains_key(h)) {
        v.state = VersionState::Enabled;
        v.public_keys = v.dkg.acked_keys.take();
        return Ok(Applied::VersionEnabled);
    }
    Ok(Applied::Done)
}

/// Why a DKG-style session missed its deadline: its phase, the holders that
/// did not ack, and the proposer's (bounded) note.
fn missed_deadline(
    what: &str,
    deadline_ms: u64,
    dkg: &DkgRecord,
    holders: Vec<NodeId>,
    note: &str,
) -> String {
    let missing: Vec<NodeId> = holders
        .into_iter()
        .filter(|h| !dkg.acks.contains_key(h))
        .collect();
    let mut reason = format!(
        "{what} did not complete by its deadline ({deadline_ms} ms log time) in DKG phase {}; no ack from {}",
        dkg.phase.name(),
        node_list(&missing)
    );
    let note = bounded_note(note);
    if !note.is_empty() {
        reason.push_str("; reported: ");
        reason.push_str(note);
    }
    reason
}

fn check_audit_batch(events: &[AuditEvent]) -> Outcome {
    if events.is_empty() || events.len() > MAX_AUDIT_BATCH {
        return Err(invalid(format!(
            "an audit batch holds 1 to {MAX_AUDIT_BATCH} events"
        )));
    }
    Ok(Applied::Done)
}

impl StateMachine {
    /// A fresh 32-byte value for an id in `domain`: the counter makes it
    /// unique, the request id keeps it unpredictable to other clients.
    pub(crate) fn fresh_id_bytes(&mut self, domain: &[u8], request: RequestId) -> [u8; 32] {
        self.ids_issued += 1;
        let mut h = Sha256::new();
        h.update(domain);
        h.update(self.ids_issued.to_be_bytes());
        h.update(request.0);
        h.finalize().into()
    }

    fn unique_key_id(&mut self, request: RequestId) -> Result<KeyId, StateError> {
        let digest = self.fresh_id_bytes(b"qk/key-id", request);
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        let id = KeyId(id);
        if self.keys.contains_id(id) {
            return Err(invalid("a key id collided with an existing one; retry"));
        }
        Ok(id)
    }
}

#[cfg(test)]
mod bounded_tests {
    use crate::limits::bounded;

    #[test]
    fn bounded_cuts_at_the_character_boundary_at_or_below_the_limit() {
        let text = format!("a{}", "é".repeat(100)); // 201 bytes; byte 128 splits an é
        let cut = bounded(&text, 128);
        assert_eq!(cut.len(), 127);
        assert_eq!(cut, format!("a{}", "é".repeat(63)));
        assert_eq!(bounded("short", 128), "short");
    }
}
