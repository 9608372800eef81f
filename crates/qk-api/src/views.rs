//! JSON views of the state records (docs/API.md, "Types"). Explicit structs
//! so the wire shape never follows a refactor of the state types by accident.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use qk_state::{
    ApprovalRecord, ApprovalStatus, AuditRecord, KeyPolicy, KeyRecord, KeyVersionRecord,
    PendingAction, PrincipalRecord, TokenRecord, VersionState,
};
use serde::Serialize;

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Clone, Debug, Serialize)]
pub struct KeyView {
    pub name: String,
    pub id: String,
    pub description: String,
    pub owner: String,
    pub purpose: String,
    pub created_ms: u64,
    pub last_rotated_ms: u64,
    pub rotation_period_ms: Option<u64>,
    pub next_rotation_ms: Option<u64>,
    pub expires_at_ms: Option<u64>,
    pub expired: bool,
    pub min_decrypt_version: u32,
    pub primary_version: Option<u32>,
    pub state: String,
    pub policy: Option<KeyPolicy>,
    pub tags: BTreeMap<String, String>,
    pub versions: Vec<VersionView>,
}

impl From<&KeyRecord> for KeyView {
    fn from(k: &KeyRecord) -> Self {
        KeyView {
            name: k.name.clone(),
            id: hex(&k.id.0),
            description: k.description.clone(),
            owner: k.owner.clone(),
            purpose: k.purpose.clone(),
            created_ms: k.created_ms,
            last_rotated_ms: k.last_rotated_ms,
            rotation_period_ms: k.rotation_period_ms,
            next_rotation_ms: k.next_rotation_ms(),
            expires_at_ms: k.expires_at_ms,
            expired: k.expired,
            min_decrypt_version: k.min_decrypt_version.0,
            primary_version: k.primary_version().map(|v| v.version.0),
            state: k
                .versions
                .last()
                .map_or("none", |v| v.state.name())
                .to_owned(),
            policy: k.policy.clone(),
            tags: k
                .tags
                .iter()
                .map(|(name, value)| (name.clone(), B64.encode(value)))
                .collect(),
            versions: k.versions.iter().map(VersionView::from).collect(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct VersionView {
    pub version: u32,
    pub state: String,
    pub due_ms: Option<u64>,
    pub failure: Option<String>,
    pub created_ms: u64,
    pub threshold: u16,
    pub holders: Vec<u64>,
    pub epoch: u64,
    pub public_keys: Option<String>,
    pub compromised: Option<String>,
    pub erase_receipts: Vec<u64>,
}

impl From<&KeyVersionRecord> for VersionView {
    fn from(v: &KeyVersionRecord) -> Self {
        let (due_ms, failure) = match &v.state {
            VersionState::PendingDestruction { due_ms } => (Some(*due_ms), None),
            VersionState::Failed { reason } => (None, Some(reason.clone())),
            _ => (None, None),
        };
        VersionView {
            version: v.version.0,
            state: v.state.name().to_owned(),
            due_ms,
            failure,
            created_ms: v.created_ms,
            threshold: v.threshold,
            holders: v.holders.iter().map(|n| n.0).collect(),
            epoch: v.epoch.0,
            public_keys: v.public_keys.as_ref().map(|p| B64.encode(p)),
            compromised: v.compromised.clone(),
            erase_receipts: v.erase_receipts.iter().map(|n| n.0).collect(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct PrincipalView {
    pub name: String,
    pub roles: Vec<String>,
    pub created_ms: u64,
    pub disabled: bool,
}

impl From<&PrincipalRecord> for PrincipalView {
    fn from(p: &PrincipalRecord) -> Self {
        PrincipalView {
            name: p.name.clone(),
            roles: p.roles.iter().map(|r| r.name().to_owned()).collect(),
            created_ms: p.created_ms,
            disabled: p.disabled,
        }
    }
}

/// A token without its secret or the secret's hash.
#[derive(Clone, Debug, Serialize)]
pub struct TokenView {
    pub id: String,
    pub principal: String,
    pub description: String,
    pub created_ms: u64,
    pub expires_at_ms: u64,
    pub revoked_ms: Option<u64>,
}

impl From<&TokenRecord> for TokenView {
    fn from(t: &TokenRecord) -> Self {
        TokenView {
            id: t.id.clone(),
            principal: t.principal.clone(),
            description: t.description.clone(),
            created_ms: t.created_ms,
            expires_at_ms: t.expires_at_ms,
            revoked_ms: t.revoked_ms,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ApprovalView {
    pub id: String,
    pub requester: String,
    pub key: String,
    pub permission: String,
    pub action: String,
    pub required: u16,
    pub approvers: Vec<String>,
    pub created_ms: u64,
    pub expires_at_ms: u64,
    pub status: String,
    pub outcome: Option<String>,
}

impl From<&ApprovalRecord> for ApprovalView {
    fn from(a: &ApprovalRecord) -> Self {
        let (status, outcome) = status_text(&a.status);
        ApprovalView {
            id: a.id.clone(),
            requester: a.requester.clone(),
            key: a.key.clone(),
            permission: a.permission.name().to_owned(),
            action: action_text(&a.action),
            required: a.required,
            approvers: a.approvers.iter().cloned().collect(),
            created_ms: a.created_ms,
            expires_at_ms: a.expires_at_ms,
            status: status.to_owned(),
            outcome,
        }
    }
}

fn status_text(s: &ApprovalStatus) -> (&'static str, Option<String>) {
    match s {
        ApprovalStatus::Pending => ("pending", None),
        ApprovalStatus::Approved => ("approved", None),
        ApprovalStatus::Executed(outcome) => ("executed", Some(outcome.clone())),
        ApprovalStatus::Consumed => ("consumed", None),
        ApprovalStatus::Denied { by, reason } => {
            ("denied", Some(format!("denied by {by}: {reason}")))
        }
        ApprovalStatus::Expired => ("expired", None),
    }
}

/// What an approval lets happen, in words.
pub fn action_text(a: &PendingAction) -> String {
    match a {
        PendingAction::Operation(op) => {
            let key = op.key_name().unwrap_or("-");
            match op.version() {
                Some(v) => format!("{} of key {key:?} version {}", op.name(), v.0),
                None => format!("{} of key {key:?}", op.name()),
            }
        }
        PendingAction::Decrypt {
            key,
            ciphertext_sha256,
        } => format!(
            "decrypt under key {key:?} of the ciphertext with SHA-256 {}",
            hex(ciphertext_sha256)
        ),
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct AuditRecordView {
    pub seq: u64,
    pub time_ms: u64,
    pub request_id: String,
    pub principal: String,
    pub operation: String,
    pub key: Option<String>,
    pub version: Option<u32>,
    pub outcome: String,
    pub prev_hash: String,
    pub hash: String,
}

impl From<&AuditRecord> for AuditRecordView {
    fn from(r: &AuditRecord) -> Self {
        AuditRecordView {
            seq: r.seq,
            time_ms: r.time_ms,
            request_id: hex(&r.request_id.0),
            principal: r.principal.clone(),
            operation: r.operation.clone(),
            key: r.key.clone(),
            version: r.version.map(|v| v.0),
            outcome: r.outcome.clone(),
            prev_hash: hex(&r.prev_hash),
            hash: hex(&r.hash),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_two_digits() {
        assert_eq!(hex(&[0, 1, 0xab]), "0001ab");
    }

    #[test]
    fn token_view_has_no_hash() {
        let t = TokenRecord {
            id: "ab".into(),
            principal: "p".into(),
            description: String::new(),
            secret_sha256: [7; 32],
            created_ms: 1,
            expires_at_ms: 2,
            revoked_ms: None,
        };
        let text = serde_json::to_string(&TokenView::from(&t)).unwrap_or_default();
        assert!(!text.contains("secret") && !text.contains("0707"), "{text}");
    }
}
