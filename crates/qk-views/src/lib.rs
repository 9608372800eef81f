//! JSON views of the HTTPS API (docs/API.md, "Types"), one definition for the
//! server (`qk-api` serializes them) and its clients (`qk-client` and the `qk`
//! CLI deserialize them). Explicit structs, so the wire shape never follows a
//! refactor of the state types by accident. Bytes are base64 strings (ids and
//! hashes hex), times `*_ms` since the Unix epoch.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use qk_state::{
    ApprovalRecord, ApprovalStatus, AuditRecord, KeyVersionRecord, PendingAction, PrincipalRecord,
    RequestId, TokenRecord, VersionState,
};
use qk_types::KeyVersion;
use serde::{Deserialize, Serialize};

/// An M-of-N approval rule: a key policy's, or the cluster's access rule
/// (`GET/PUT /api/v1/access-rule`).
pub use qk_state::ApprovalRule;
/// A key's access policy; the server's JSON form is the replicated record's.
pub use qk_state::KeyPolicy;
/// Per key version: how many of its holders answer (`GET /api/v1/cluster`).
pub use qk_wire::VersionHealth;

/// Read-your-writes over HTTPS. Every answer carries the answering node's
/// applied log index in this header (after a write: at least the write's);
/// a request that carries it is decided only once the node has applied that
/// index (503 "node is behind" after a bounded wait).
pub const INDEX_HEADER: &str = "x-qk-index";
/// On a revocation's answer: the members (comma-separated ids) that had not
/// applied it yet when the answer was sent; absent when it is in force on
/// every node.
pub const NOT_APPLIED_HEADER: &str = "x-qk-not-applied-on";
/// A client-certificate caller's session key and its grant (base64 of an
/// encoded `qk_state::proof::Credential`): the node signs each decrypt the
/// request makes with it, so that every holder sees the caller's own proof.
/// Callers with a token need no session: the token derives their key.
pub const SESSION_HEADER: &str = "x-qk-session";

/// A name the client gives its request (32 hex digits, 16 bytes): a node
/// proposes the request's writes under ids derived from it, so that the
/// same request sent again (to another node, after an answer was lost) is
/// applied once and answered as the first time. Without it every write
/// gets a fresh id, and a resent write is a second write.
pub const REQUEST_ID_HEADER: &str = "x-qk-request-id";

/// The 16 bytes a [`REQUEST_ID_HEADER`] value names; `None` unless it is
/// exactly 32 hex digits.
pub fn parse_request_id(text: &str) -> Option<[u8; 16]> {
    hex_bytes::<16>(text, 0, "request_id").ok()
}

/// Prefix of every AWS access key id; then the issuing node's id, `X`, and
/// the token id in upper case.
const ACCESS_KEY_PREFIX: &str = "QK";

/// `QK<node>X<TOKEN ID>`: the AWS access key id of token `token_id` issued
/// by `node` (`qk kms credentials create`).
pub fn aws_access_key_id(node: u64, token_id: &str) -> String {
    format!(
        "{ACCESS_KEY_PREFIX}{node}X{}",
        token_id.to_ascii_uppercase()
    )
}

/// The node and token id an AWS access key id names.
pub fn parse_aws_access_key_id(text: &str) -> Option<(u64, String)> {
    let (node, token) = text.strip_prefix(ACCESS_KEY_PREFIX)?.split_once('X')?;
    let node: u64 = node.parse().ok()?;
    let valid = !token.is_empty()
        && token.len() <= 64
        && token
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
    valid.then(|| (node, token.to_ascii_lowercase()))
}

/// Lowercase hex, two digits a byte.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

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
    /// Other names the key is found by (AWS KMS aliases).
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub versions: Vec<VersionView>,
}

impl From<&qk_state::KeyRecord> for KeyView {
    fn from(k: &qk_state::KeyRecord) -> Self {
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
                .filter(|(name, _)| name.as_str() != qk_state::ALIASES_TAG)
                .map(|(name, value)| (name.clone(), B64.encode(value)))
                .collect(),
            aliases: k.aliases().map(str::to_owned).collect(),
            versions: k.versions.iter().map(VersionView::from).collect(),
        }
    }
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
    /// Why the last refresh of this version was abandoned (cleared when one
    /// completes).
    #[serde(default)]
    pub refresh_failure: Option<String>,
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
            refresh_failure: v.last_refresh_failure.clone(),
        }
    }
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrincipalList {
    pub principals: Vec<PrincipalView>,
}

/// A token without its secret or the secret's hash.
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenList {
    pub tokens: Vec<TokenView>,
}

/// The answer to `POST /api/v1/tokens`: the only time the secret is shown.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedToken {
    pub token: String,
    pub record: TokenView,
    /// Set when the cluster's access rule holds the issue for approval: the
    /// token authenticates once this approval is granted.
    #[serde(default)]
    pub approval: Option<ApprovalView>,
}

/// The answer to `POST /api/v1/kms/credentials`: an AWS access key bound to
/// node `node`; the only time the secret is shown.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedAwsCredential {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// The node that issued the key: the only one that accepts it.
    pub node: u64,
    pub record: TokenView,
    #[serde(default)]
    pub approval: Option<ApprovalView>,
}

impl std::fmt::Debug for CreatedAwsCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedAwsCredential")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .field("node", &self.node)
            .field("record", &self.record)
            .field("approval", &self.approval)
            .finish()
    }
}

impl std::fmt::Debug for CreatedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreatedToken")
            .field("token", &"<redacted>")
            .field("record", &self.record)
            .field("approval", &self.approval)
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

/// What an approval lets happen, in words: everything an approver needs to
/// know what it signs (whom a principal change touches and how, whose token
/// for how long, the whole proposed rule or policy).
pub fn action_text(a: &PendingAction) -> String {
    match a {
        PendingAction::Operation(op) => operation_text(op),
        PendingAction::Decrypt {
            key,
            ciphertext_sha256,
        } => format!(
            "decrypt under key {key:?} of the ciphertext with SHA-256 {}",
            hex(ciphertext_sha256)
        ),
    }
}

fn operation_text(op: &qk_state::Operation) -> String {
    use qk_state::Operation as O;
    let roles = |r: &std::collections::BTreeSet<qk_state::Role>| {
        let names: Vec<&str> = r.iter().map(|r| r.name()).collect();
        format!("[{}]", names.join(", "))
    };
    let what = op.name();
    match op {
        O::CreatePrincipal { name, roles: r } => {
            format!("{what}: principal {name:?} with roles {}", roles(r))
        }
        O::UpdatePrincipal {
            name,
            roles: r,
            disabled,
        } => format!(
            "{what}: principal {name:?} to roles {}, {}",
            roles(r),
            if *disabled { "disabled" } else { "enabled" }
        ),
        O::DeletePrincipal { name } => {
            format!("{what}: principal {name:?} (its tokens are revoked)")
        }
        O::IssueToken {
            id,
            principal,
            description,
            expires_at_ms,
            ..
        } => format!(
            "{what}: token {id} for principal {principal:?} ({description:?}), expiring at {expires_at_ms} ms"
        ),
        O::SetAccessRule { rule } => match rule {
            Some(rule) => format!("{what}: {}", json_text(rule)),
            None => format!("{what}: remove the cluster's access rule"),
        },
        O::SetPolicy { name, policy } => match policy {
            Some(policy) => format!("{what} of key {name:?}: {}", json_text(policy)),
            None => format!("{what} of key {name:?}: remove the policy"),
        },
        op => {
            let key = op.key_name().unwrap_or("-");
            match op.version() {
                Some(v) => format!("{what} of key {key:?} version {}", v.0),
                None => format!("{what} of key {key:?}"),
            }
        }
    }
}

/// The JSON text of a rule or policy inside an approval's description.
fn json_text<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| format!("<unprintable: {e}>"))
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

/// `GET /api/v1/audit/checkpoint`: a node's signed statement of its audit
/// head, one JSON line of `qk audit checkpoint`'s output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditCheckpointView {
    pub node: u64,
    pub seq: u64,
    /// Hex, 32 bytes: the record's hash.
    pub hash: String,
    pub signed_ms: u64,
    /// Base64 of the node certificate (DER).
    pub cert_der: String,
    /// Base64 of the signature by the certificate's key.
    pub signature: String,
}

impl From<&qk_state::AuditCheckpoint> for AuditCheckpointView {
    fn from(c: &qk_state::AuditCheckpoint) -> Self {
        AuditCheckpointView {
            node: c.node,
            seq: c.seq,
            hash: hex(&c.hash),
            signed_ms: c.signed_ms,
            cert_der: B64.encode(&c.cert_der),
            signature: B64.encode(&c.signature),
        }
    }
}

impl TryFrom<&AuditCheckpointView> for qk_state::AuditCheckpoint {
    type Error = String;

    fn try_from(v: &AuditCheckpointView) -> Result<Self, String> {
        let hash = (v.hash.len() == 64)
            .then(|| {
                let mut h = [0u8; 32];
                for (i, b) in h.iter_mut().enumerate() {
                    *b = u8::from_str_radix(v.hash.get(2 * i..2 * i + 2)?, 16).ok()?;
                }
                Some(h)
            })
            .flatten()
            .ok_or("the hash is not 64 hex digits")?;
        let b64 = |what: &str, text: &str| {
            B64.decode(text)
                .map_err(|_| format!("{what} is not base64"))
        };
        Ok(qk_state::AuditCheckpoint {
            node: v.node,
            seq: v.seq,
            hash,
            signed_ms: v.signed_ms,
            cert_der: b64("cert_der", &v.cert_der)?,
            signature: b64("signature", &v.signature)?,
        })
    }
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

/// The replicated record a view shows (hex decoded), as read back from an
/// audit export to verify its hash chain offline.
impl TryFrom<&AuditRecordView> for AuditRecord {
    type Error = BadAuditField;

    fn try_from(v: &AuditRecordView) -> Result<Self, Self::Error> {
        Ok(AuditRecord {
            seq: v.seq,
            time_ms: v.time_ms,
            request_id: RequestId(hex_bytes(&v.request_id, v.seq, "request_id")?),
            principal: v.principal.clone(),
            operation: v.operation.clone(),
            key: v.key.clone(),
            version: v.version.map(KeyVersion),
            outcome: v.outcome.clone(),
            prev_hash: hex_bytes(&v.prev_hash, v.seq, "prev_hash")?,
            hash: hex_bytes(&v.hash, v.seq, "hash")?,
        })
    }
}

/// An audit record view's hex field that does not decode to its size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadAuditField {
    pub seq: u64,
    pub field: &'static str,
    /// The bytes the field should hold.
    pub len: usize,
}

impl std::fmt::Display for BadAuditField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "audit record {}: {} is not {} bytes of hex",
            self.seq, self.field, self.len
        )
    }
}

impl std::error::Error for BadAuditField {}

fn hex_bytes<const N: usize>(
    text: &str,
    seq: u64,
    field: &'static str,
) -> Result<[u8; N], BadAuditField> {
    let bad = || BadAuditField { seq, field, len: N };
    // Digits only: `from_str_radix` would also take a sign.
    if text.len() != 2 * N || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
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
    /// Absent from nodes of a release before request shares.
    #[serde(default)]
    pub request_memory: Option<RequestMemoryView>,
    /// Every enabled key version is refreshed this often (absent: only by
    /// hand, or a node of an older release).
    #[serde(default)]
    pub refresh_every_ms: Option<u64>,
}

/// Body of `PUT /api/v1/cluster/refresh-schedule`: `{"every_ms": N}` sets
/// the schedule, `{"off": true}` removes it (an empty body does neither).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefreshScheduleRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub every_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub off: bool,
}

impl RefreshScheduleRequest {
    /// The schedule asked for (`None`: removed), or why the body is wrong.
    pub fn every_ms(&self) -> Result<Option<u64>, &'static str> {
        match (self.every_ms, self.off) {
            (Some(every), false) => Ok(Some(every)),
            (None, true) => Ok(None),
            _ => Err("send {\"every_ms\": N} to set the refresh schedule or {\"off\": true} to remove it"),
        }
    }
}

/// How full the replicated request memory is: every command is remembered
/// for deduplication until no proof of it can be fresh, and past
/// `fresh_limit` every new command is refused. With shares enabled, while
/// more than `shares_enforced_above` are remembered, a principal holding
/// `share_per_principal` of them is refused (others are not).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestMemoryView {
    pub remembered: u64,
    pub fresh_limit: u64,
    pub shares_enabled: bool,
    pub shares_enforced_above: u64,
    pub share_per_principal: u64,
}

impl RequestMemoryView {
    /// The view of `remembered` requests with shares on or off.
    pub fn new(remembered: u64, shares_enabled: bool) -> Self {
        Self {
            remembered,
            fresh_limit: qk_state::MAX_FRESH_REQUESTS as u64,
            shares_enabled,
            shares_enforced_above: qk_state::MAX_REMEMBERED_REQUESTS as u64,
            share_per_principal: qk_state::MAX_REQUESTS_PER_PRINCIPAL as u64,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lowercase_two_digits() {
        assert_eq!(hex(&[0, 1, 0xab]), "0001ab");
    }

    #[test]
    fn an_approval_says_exactly_what_it_lets_happen() {
        use qk_state::{ApprovalRule, Operation, Permission, Role};
        let op = |op: Operation| action_text(&PendingAction::Operation(Box::new(op)));
        let grant = op(Operation::UpdatePrincipal {
            name: "mallory".into(),
            roles: [Role::Admin, Role::Approver].into(),
            disabled: false,
        });
        assert!(
            grant.contains("\"mallory\"") && grant.contains("approver"),
            "{grant}"
        );
        let token = op(Operation::IssueToken {
            id: "00000000000000d1".into(),
            principal: "svc".into(),
            description: "ci".into(),
            secret_sha256: [7; 32],
            verify_key: [5; 32],
            expires_at_ms: 99,
        });
        assert!(
            token.contains("\"svc\"") && token.contains("99 ms"),
            "{token}"
        );
        assert!(!token.contains("0707"), "no secret hash: {token}");
        let rule = op(Operation::SetAccessRule {
            rule: Some(ApprovalRule {
                required: 1,
                approvers: vec!["mallory".into()],
                permissions: vec![Permission::PrincipalManage],
                ttl_ms: 60_000,
            }),
        });
        assert!(
            rule.contains("\"required\":1") && rule.contains("mallory"),
            "{rule}"
        );
        let dropped = op(Operation::SetAccessRule { rule: None });
        assert!(dropped.contains("remove"), "{dropped}");
    }

    #[test]
    fn token_view_has_no_hash() {
        let t = TokenRecord {
            id: "ab".into(),
            principal: "p".into(),
            description: String::new(),
            secret_sha256: [7; 32],
            verify_key: [5; 32],
            created_ms: 1,
            expires_at_ms: 2,
            revoked_ms: None,
        };
        let text = serde_json::to_string(&TokenView::from(&t)).unwrap_or_default();
        assert!(!text.contains("secret") && !text.contains("0707"), "{text}");
    }

    #[test]
    fn audit_view_decodes_back_to_its_record_and_names_a_bad_field() {
        let r = AuditRecord {
            seq: 7,
            time_ms: 1_700_000_000_000,
            request_id: RequestId([0xab; 16]),
            principal: "admin".into(),
            operation: "key-create".into(),
            key: Some("payments".into()),
            version: Some(KeyVersion(2)),
            outcome: "ok".into(),
            prev_hash: [1; 32],
            hash: [2; 32],
        };
        let view = AuditRecordView::from(&r);
        assert_eq!(view.request_id, "ab".repeat(16));
        assert_eq!(AuditRecord::try_from(&view), Ok(r));
        let bad = AuditRecordView {
            hash: "zz".into(),
            ..view
        };
        let err = AuditRecord::try_from(&bad).err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("audit record 7: hash is not 32 bytes of hex")
        );
    }
}
