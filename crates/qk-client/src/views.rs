//! JSON views of the HTTPS API (docs/API.md), shared by the `qk` CLI and tests.
//! Bytes are base64 strings, times `*_ms` since the Unix epoch.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A key's access policy; the server's JSON form is the replicated record's.
pub use qk_state::KeyPolicy;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyView {
    pub name: String,
    /// Hex key id, as embedded in every ciphertext of the key.
    pub id: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub purpose: String,
    pub created_ms: u64,
    pub last_rotated_ms: u64,
    pub rotation_period_ms: Option<u64>,
    pub next_rotation_ms: Option<u64>,
    pub expires_at_ms: Option<u64>,
    #[serde(default)]
    pub expired: bool,
    #[serde(default)]
    pub min_decrypt_version: u32,
    pub primary_version: Option<u32>,
    pub state: String,
    #[serde(default)]
    pub policy: Option<KeyPolicy>,
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    #[serde(default)]
    pub versions: Vec<VersionView>,
}

impl KeyView {
    pub fn version(&self, version: u32) -> Option<&VersionView> {
        self.versions.iter().find(|v| v.version == version)
    }

    /// Holders of the primary version (else of the newest one).
    pub fn current_holders(&self) -> &[u64] {
        self.primary_version
            .and_then(|p| self.version(p))
            .or_else(|| self.versions.last())
            .map(|v| v.holders.as_slice())
            .unwrap_or(&[])
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionView {
    pub version: u32,
    pub state: String,
    pub due_ms: Option<u64>,
    pub failure: Option<String>,
    pub created_ms: u64,
    pub threshold: u16,
    pub holders: Vec<u64>,
    pub epoch: u64,
    /// Base64 of the encoded public key set (for client-side combining).
    pub public_keys: Option<String>,
    pub compromised: Option<String>,
    #[serde(default)]
    pub erase_receipts: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyList {
    pub keys: Vec<KeyView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrincipalView {
    pub name: String,
    pub roles: Vec<String>,
    pub created_ms: u64,
    #[serde(default)]
    pub disabled: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrincipalList {
    pub principals: Vec<PrincipalView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenView {
    pub id: String,
    pub principal: String,
    #[serde(default)]
    pub description: String,
    pub created_ms: u64,
    pub expires_at_ms: u64,
    pub revoked_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenList {
    pub tokens: Vec<TokenView>,
}

/// The answer to `POST /api/v1/tokens`: the only time the secret is shown.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedToken {
    pub token: String,
    pub record: TokenView,
}

impl std::fmt::Debug for CreatedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedToken")
            .field("token", &"<redacted>")
            .field("record", &self.record)
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoAmI {
    pub principal: PrincipalView,
    pub token: Option<TokenView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalView {
    pub id: String,
    pub requester: String,
    pub key: String,
    pub permission: String,
    pub action: String,
    pub required: u16,
    #[serde(default)]
    pub approvers: Vec<String>,
    pub created_ms: u64,
    pub expires_at_ms: u64,
    pub status: String,
    pub outcome: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalList {
    pub approvals: Vec<ApprovalView>,
}

/// The body of a `202 Accepted`: the request waits for approvers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalPending {
    pub approval: ApprovalView,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecordView {
    pub seq: u64,
    pub time_ms: u64,
    /// Hex, 16 bytes.
    pub request_id: String,
    pub principal: String,
    pub operation: String,
    pub key: Option<String>,
    pub version: Option<u32>,
    pub outcome: String,
    /// Hex, 32 bytes.
    pub prev_hash: String,
    /// Hex, 32 bytes.
    pub hash: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditPage {
    pub records: Vec<AuditRecordView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditVerified {
    pub ok: bool,
    pub records: u64,
    pub head_hash: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub node_id: u64,
    #[serde(default)]
    pub leader: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterHealth {
    pub node_id: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_applied: u64,
    pub members: Vec<MemberView>,
    #[serde(default)]
    pub versions: Vec<VersionHealth>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub node_id: u64,
    pub rpc_addr: String,
    pub api_url: Option<String>,
    pub voter: bool,
    pub reachable: bool,
    pub last_applied: Option<u64>,
    pub term: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionHealth {
    pub key: String,
    pub version: u32,
    pub state: String,
    pub threshold: u16,
    pub holders: Vec<u64>,
    pub live_holders: Vec<u64>,
}

// ---- request bodies ----

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateKeyRequest {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub purpose: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holders: Option<Vec<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation_period_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyConfigRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation_period_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_decrypt_version: Option<u32>,
}

/// `encrypt`/`datakey`/`decrypt` answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encrypted {
    pub ciphertext: String,
    pub version: u32,
}

/// A data key: base64 plaintext (show it once, then forget it) and its wrapping.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataKey {
    pub plaintext: String,
    pub ciphertext: String,
    pub version: u32,
}

impl Drop for DataKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.plaintext);
    }
}

impl Drop for Decrypted {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.plaintext);
    }
}

impl Drop for CreatedToken {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.token);
    }
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("plaintext", &"<redacted>")
            .field("ciphertext", &self.ciphertext)
            .field("version", &self.version)
            .finish()
    }
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decrypted {
    /// Base64.
    pub plaintext: String,
    pub key: String,
    pub version: u32,
}

impl std::fmt::Debug for Decrypted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decrypted")
            .field("plaintext", &"<redacted>")
            .field("key", &self.key)
            .field("version", &self.version)
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialAnswer {
    pub node_id: u64,
    /// Base64 of the encoded partial decryption.
    pub partial: String,
}

/// The `{"error": {...}}` body of a non-2xx answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}
