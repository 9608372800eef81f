//! The deterministic state machine.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use qk_types::{Epoch, KeyId, KeyVersion, NodeId, ThresholdParams};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::audit::{AuditRecord, GENESIS_HASH};
use crate::command::{Applied, Command, CreateKey, Operation, RequestId, Response, StateError};
use crate::model::{KeyRecord, KeyVersionRecord, VersionState};

/// How many request ids are remembered for deduplication (oldest forgotten
/// first). A client retries within seconds; this covers far more than that.
pub const MAX_REMEMBERED_REQUESTS: usize = 100_000;
const MAX_NAME_LEN: usize = 128;
const MAX_TEXT_LEN: usize = 1024;
const MAX_TAGS: usize = 64;
const MAX_TAG_VALUE_LEN: usize = 4096;
const MAX_PUBLIC_KEYS_LEN: usize = 4096;
const MAX_VERSIONS: usize = 10_000;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateMachine {
    keys: BTreeMap<String, KeyRecord>,
    requests: BTreeMap<RequestId, Response>,
    request_order: VecDeque<RequestId>,
    audit: Vec<AuditRecord>,
}

type Outcome = Result<Applied, StateError>;

fn invalid(msg: impl Into<String>) -> StateError {
    StateError::Invalid(msg.into())
}

fn transition_error(name: &str, v: &KeyVersionRecord, action: &str) -> StateError {
    StateError::InvalidTransition {
        name: name.to_string(),
        version: v.version.0,
        state: v.state.name().to_string(),
        action: action.to_string(),
    }
}

fn check_name(name: &str) -> Result<(), StateError> {
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
    pub fn apply(&mut self, cmd: &Command) -> Response {
        if let Some(previous) = self.requests.get(&cmd.request_id) {
            let mut r = previous.clone();
            r.duplicate = true;
            return r;
        }
        let result = self.execute(cmd);
        let audit_seq = self.append_audit(cmd, &result);
        let response = Response {
            result,
            audit_seq,
            duplicate: false,
        };
        self.remember(cmd.request_id, response.clone());
        response
    }

    fn remember(&mut self, id: RequestId, response: Response) {
        self.requests.insert(id, response);
        self.request_order.push_back(id);
        while self.request_order.len() > MAX_REMEMBERED_REQUESTS {
            if let Some(old) = self.request_order.pop_front() {
                self.requests.remove(&old);
            }
        }
    }

    fn append_audit(&mut self, cmd: &Command, result: &Outcome) -> u64 {
        let (prev_hash, seq) = match self.audit.last() {
            Some(last) => (last.hash, last.seq + 1),
            None => (GENESIS_HASH, 1),
        };
        let outcome = match (&cmd.op, result) {
            (Operation::Audit { outcome, .. }, _) => outcome.clone(),
            (_, Ok(_)) => "ok".to_string(),
            (_, Err(e)) => format!("refused: {e}"),
        };
        let mut record = AuditRecord {
            seq,
            time_ms: cmd.time_ms,
            request_id: cmd.request_id,
            principal: cmd.principal.clone(),
            operation: match &cmd.op {
                Operation::Audit { operation, .. } => operation.clone(),
                op => op.name().to_string(),
            },
            key: cmd.op.key_name().map(str::to_string),
            version: cmd.op.version(),
            outcome,
            prev_hash,
            hash: [0u8; 32],
        };
        record.hash = record.compute_hash();
        self.audit.push(record);
        seq
    }

    fn execute(&mut self, cmd: &Command) -> Outcome {
        let now = cmd.time_ms;
        match &cmd.op {
            Operation::CreateKey(c) => self.create_key(cmd.request_id, now, c),
            Operation::SetTag { name, tag, value } => self.set_tag(name, tag, value.as_deref()),
            Operation::Rotate { name, holders } => self.rotate(name, holders, now),
            Operation::CompleteGeneration {
                name,
                version,
                public_keys,
            } => self.complete_generation(name, *version, public_keys, now),
            Operation::FailGeneration {
                name,
                version,
                reason,
            } => self.with_version(name, *version, "fail generation", |v| {
                (v.state == VersionState::Generating).then(|| {
                    v.state = VersionState::Failed {
                        reason: reason.clone(),
                    };
                })
            }),
            Operation::Disable { name, version } => {
                self.with_version(name, *version, "disable", |v| {
                    (v.state == VersionState::Enabled).then(|| v.state = VersionState::Disabled)
                })
            }
            Operation::Enable { name, version } => {
                self.with_version(name, *version, "enable", |v| {
                    (v.state == VersionState::Disabled && v.compromised.is_none())
                        .then(|| v.state = VersionState::Enabled)
                })
            }
            Operation::MarkCompromised {
                name,
                version,
                reason,
            } => self.with_version(name, *version, "mark compromised", |v| {
                matches!(v.state, VersionState::Enabled | VersionState::Disabled).then(|| {
                    v.state = VersionState::Disabled;
                    v.compromised = Some(reason.clone());
                })
            }),
            Operation::ScheduleDestruction {
                name,
                version,
                after_ms,
            } => self.with_version(name, *version, "schedule destruction", |v| {
                matches!(
                    v.state,
                    VersionState::Enabled | VersionState::Disabled | VersionState::Failed { .. }
                )
                .then(|| {
                    v.state = VersionState::PendingDestruction {
                        due_ms: now.saturating_add(*after_ms),
                    }
                })
            }),
            Operation::CancelDestruction { name, version } => {
                self.with_version(name, *version, "cancel destruction", |v| {
                    matches!(v.state, VersionState::PendingDestruction { .. })
                        .then(|| v.state = VersionState::Disabled)
                })
            }
            Operation::Destroy { name, version } => {
                self.with_version(name, *version, "destroy (waiting period not over)", |v| {
                    matches!(v.state, VersionState::PendingDestruction { due_ms } if due_ms <= now)
                        .then(|| v.state = VersionState::Destroying)
                })
            }
            Operation::EraseReceipt {
                name,
                version,
                node,
            } => self.erase_receipt(name, *version, *node),
            Operation::Audit { .. } => Ok(Applied::Done),
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
        if self.keys.contains_key(&c.name) {
            return Err(StateError::KeyExists(c.name.clone()));
        }
        let id = derive_key_id(request);
        let version = KeyVersion(1);
        self.keys.insert(
            c.name.clone(),
            KeyRecord {
                id,
                name: c.name.clone(),
                description: c.description.clone(),
                owner: c.owner.clone(),
                purpose: c.purpose.clone(),
                created_ms: now,
                rotation_period_ms: c.rotation_period_ms,
                expires_at_ms: c.expires_at_ms,
                last_rotated_ms: now,
                versions: vec![new_version(version, now, c.threshold, &c.holders)],
                tags: BTreeMap::new(),
            },
        );
        Ok(Applied::KeyCreated { id, version })
    }

    fn key_mut(&mut self, name: &str) -> Result<&mut KeyRecord, StateError> {
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

    fn rotate(&mut self, name: &str, holders: &[NodeId], now: u64) -> Outcome {
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
            .push(new_version(version, now, threshold, holders));
        key.last_rotated_ms = now;
        Ok(Applied::VersionCreated { version })
    }

    fn complete_generation(
        &mut self,
        name: &str,
        version: KeyVersion,
        public_keys: &[u8],
        now: u64,
    ) -> Outcome {
        if public_keys.is_empty() || public_keys.len() > MAX_PUBLIC_KEYS_LEN {
            return Err(invalid("public key set is empty or too large"));
        }
        let key = self.key_mut(name)?;
        key.last_rotated_ms = now;
        let v = key
            .version_mut(version)
            .ok_or_else(|| StateError::NoSuchVersion {
                name: name.to_string(),
                version: version.0,
            })?;
        if v.state != VersionState::Generating {
            return Err(transition_error(name, v, "complete generation"));
        }
        v.state = VersionState::Enabled;
        v.public_keys = Some(public_keys.to_vec());
        Ok(Applied::Done)
    }

    /// Runs `change` on a version; `change` returns `None` when the version's
    /// state does not allow the action.
    fn with_version(
        &mut self,
        name: &str,
        version: KeyVersion,
        action: &str,
        change: impl FnOnce(&mut KeyVersionRecord) -> Option<()>,
    ) -> Outcome {
        let key = self.key_mut(name)?;
        let v = key
            .version_mut(version)
            .ok_or_else(|| StateError::NoSuchVersion {
                name: name.to_string(),
                version: version.0,
            })?;
        let before = v.clone();
        match change(v) {
            Some(()) => Ok(Applied::Done),
            None => Err(transition_error(name, &before, action)),
        }
    }

    fn erase_receipt(&mut self, name: &str, version: KeyVersion, node: NodeId) -> Outcome {
        let key = self.key_mut(name)?;
        let v = key
            .version_mut(version)
            .ok_or_else(|| StateError::NoSuchVersion {
                name: name.to_string(),
                version: version.0,
            })?;
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

    pub fn keys(&self) -> impl Iterator<Item = &KeyRecord> {
        self.keys.values()
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
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.to_bytes());
        h.finalize().into()
    }

    /// Snapshot encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StateError> {
        postcard::from_bytes(bytes).map_err(|e| invalid(format!("corrupt state snapshot: {e}")))
    }
}

fn new_version(
    version: KeyVersion,
    now: u64,
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
    }
}

fn derive_key_id(request: RequestId) -> KeyId {
    let mut h = Sha256::new();
    h.update(b"qk/key-id");
    h.update(request.0);
    let digest: [u8; 32] = h.finalize().into();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    KeyId(id)
}
