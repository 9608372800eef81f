//! Access control: principals, roles, bearer tokens (stored hashed), per-key
//! policies and quorum approvals. Pure: the caller passes the time.
//!
//! Deny by default. A request is allowed when one of the principal's roles
//! grants its permission and, if the key has a policy that governs that
//! permission, a rule of that policy names the principal (directly, by role,
//! or `*`) with every encryption-context condition met. A policy's approval
//! rule can then require M distinct approvers (never the requester).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// What a request needs. Names are the ones policies and the CLI use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Permission {
    KeyCreate,
    KeyRead,
    KeyRotate,
    KeyDisable,
    KeyEnable,
    KeyMarkCompromised,
    KeyDestroy,
    KeyCancelDestroy,
    /// Tags, minimum decryption version, refresh, rotation schedule.
    KeyConfigure,
    KeySetPolicy,
    Encrypt,
    Decrypt,
    PrincipalManage,
    TokenManage,
    AuditRead,
    ClusterRead,
    Approve,
}

impl Permission {
    pub const ALL: [Permission; 17] = [
        Permission::KeyCreate,
        Permission::KeyRead,
        Permission::KeyRotate,
        Permission::KeyDisable,
        Permission::KeyEnable,
        Permission::KeyMarkCompromised,
        Permission::KeyDestroy,
        Permission::KeyCancelDestroy,
        Permission::KeyConfigure,
        Permission::KeySetPolicy,
        Permission::Encrypt,
        Permission::Decrypt,
        Permission::PrincipalManage,
        Permission::TokenManage,
        Permission::AuditRead,
        Permission::ClusterRead,
        Permission::Approve,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Permission::KeyCreate => "key-create",
            Permission::KeyRead => "key-read",
            Permission::KeyRotate => "key-rotate",
            Permission::KeyDisable => "key-disable",
            Permission::KeyEnable => "key-enable",
            Permission::KeyMarkCompromised => "key-mark-compromised",
            Permission::KeyDestroy => "key-destroy",
            Permission::KeyCancelDestroy => "key-cancel-destroy",
            Permission::KeyConfigure => "key-configure",
            Permission::KeySetPolicy => "key-set-policy",
            Permission::Encrypt => "encrypt",
            Permission::Decrypt => "decrypt",
            Permission::PrincipalManage => "principal-manage",
            Permission::TokenManage => "token-manage",
            Permission::AuditRead => "audit-read",
            Permission::ClusterRead => "cluster-read",
            Permission::Approve => "approve",
        }
    }

    pub fn parse(s: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.name() == s)
    }

    /// Permissions a key's policy may govern (the rest are cluster-wide).
    pub fn is_key_scoped(self) -> bool {
        !matches!(
            self,
            Permission::KeyCreate
                | Permission::PrincipalManage
                | Permission::TokenManage
                | Permission::AuditRead
                | Permission::ClusterRead
                | Permission::Approve
        )
    }

    /// Permissions the cluster's access rule may cover: a single
    /// administrator must not create approvers, grant roles or mint tokens
    /// for others alone.
    pub fn may_need_cluster_approval(self) -> bool {
        matches!(self, Permission::PrincipalManage | Permission::TokenManage)
    }

    /// Permissions a key policy's approval rule may cover.
    pub fn may_need_approval(self) -> bool {
        matches!(
            self,
            Permission::KeyDestroy
                | Permission::KeyDisable
                | Permission::KeyMarkCompromised
                | Permission::KeySetPolicy
                | Permission::Decrypt
        )
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Everything except approving: principals, tokens, keys, policies, data.
    Admin,
    /// Day-to-day key lifecycle; no data access, no access control.
    Operator,
    /// Approves or denies pending requests.
    Approver,
    /// Reads the inventory and the audit trail.
    Auditor,
    /// Encrypts and decrypts (where key policies allow).
    KeyUser,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Operator,
        Role::Approver,
        Role::Auditor,
        Role::KeyUser,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Approver => "approver",
            Role::Auditor => "auditor",
            Role::KeyUser => "key-user",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == s)
    }

    pub fn grants(self, p: Permission) -> bool {
        use Permission as P;
        match self {
            Role::Admin => p != P::Approve,
            Role::Operator => matches!(
                p,
                P::KeyCreate
                    | P::KeyRead
                    | P::KeyRotate
                    | P::KeyDisable
                    | P::KeyEnable
                    | P::KeyMarkCompromised
                    | P::KeyDestroy
                    | P::KeyCancelDestroy
                    | P::KeyConfigure
                    | P::ClusterRead
            ),
            Role::Approver => matches!(p, P::Approve | P::KeyRead | P::ClusterRead),
            Role::Auditor => matches!(p, P::AuditRead | P::KeyRead | P::ClusterRead),
            Role::KeyUser => matches!(p, P::Encrypt | P::Decrypt | P::KeyRead),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Someone who calls the cluster: by client certificate (`qk://client/<name>`)
/// or by a bearer token issued to the name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrincipalRecord {
    pub name: String,
    pub roles: BTreeSet<Role>,
    pub created_ms: u64,
    /// A disabled principal is refused everything; its tokens stay revocable.
    pub disabled: bool,
}

/// A bearer token. The secret is never stored: only its SHA-256 (tokens are
/// 256 random bits, so a slow hash would add nothing).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Public token id (hex); the token text is `qkt.<id>.<secret>`.
    pub id: String,
    pub principal: String,
    pub description: String,
    pub secret_sha256: [u8; 32],
    /// Public key of the signing key the secret derives
    /// ([`crate::proof::token_verify_key`]): holders check a token caller's
    /// decrypt proofs with it.
    pub verify_key: [u8; 32],
    pub created_ms: u64,
    pub expires_at_ms: u64,
    pub revoked_ms: Option<u64>,
}

impl fmt::Debug for TokenRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRecord")
            .field("id", &self.id)
            .field("principal", &self.principal)
            .field("expires_at_ms", &self.expires_at_ms)
            .field("revoked_ms", &self.revoked_ms)
            .finish_non_exhaustive()
    }
}

/// One allow rule of a key policy. Unknown fields are refused: a misspelled
/// field would otherwise silently drop a rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    /// Principal names, `role:<role>`, or `*` for anyone whose role allows.
    pub principals: Vec<String>,
    pub permissions: Vec<Permission>,
    /// Encryption-context conditions: every pair must be present with this
    /// exact value (encrypt and decrypt only).
    #[serde(default)]
    pub context: BTreeMap<String, String>,
}

/// Operations that wait for M distinct approvers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRule {
    pub required: u16,
    /// Who may approve: principal names or `role:<role>`; each must also hold
    /// the `approver` role.
    pub approvers: Vec<String>,
    /// Among key-destroy, key-disable, key-mark-compromised, key-set-policy
    /// and decrypt (decrypt
    /// makes the key break-glass: every decrypt is approved first).
    pub permissions: Vec<Permission>,
    /// How long a request waits for approval before it expires.
    #[serde(default = "default_approval_ttl_ms")]
    pub ttl_ms: u64,
}

pub fn default_approval_ttl_ms() -> u64 {
    24 * 3600 * 1000
}

/// A key's access policy. Permissions named by no rule fall back to roles.
/// Unknown fields (`"aproval"`) are refused, never ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPolicy {
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
    #[serde(default)]
    pub approval: Option<ApprovalRule>,
}

/// The verdict on one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(String),
    /// Allowed once `required` approvers agree.
    NeedsApproval {
        required: u16,
        ttl_ms: u64,
    },
}

pub(crate) fn matches_principal(pattern: &str, p: &PrincipalRecord) -> bool {
    if pattern == "*" || pattern == p.name {
        return true;
    }
    match pattern.strip_prefix("role:").and_then(Role::parse) {
        Some(role) => p.roles.contains(&role),
        None => false,
    }
}

pub(crate) fn roles_text(roles: &BTreeSet<Role>) -> String {
    if roles.is_empty() {
        return "no roles".into();
    }
    let names: Vec<&str> = roles.iter().map(|r| r.name()).collect();
    format!("roles [{}]", names.join(", "))
}

/// Roles that grant `p`, for error messages.
pub(crate) fn roles_granting(p: Permission) -> String {
    let names: Vec<&str> = Role::ALL
        .into_iter()
        .filter(|r| r.grants(p))
        .map(|r| r.name())
        .collect();
    names.join(", ")
}

/// The role and policy verdict for one principal (no approvals).
pub(crate) fn check_access(
    principal: &PrincipalRecord,
    permission: Permission,
    key: Option<(&str, Option<&KeyPolicy>)>,
    context: &BTreeMap<String, String>,
) -> Result<(), String> {
    if principal.disabled {
        return Err(format!("principal {} is disabled", principal.name));
    }
    if !principal.roles.iter().any(|r| r.grants(permission)) {
        return Err(format!(
            "principal {} has {}; {permission} needs one of: {}",
            principal.name,
            roles_text(&principal.roles),
            roles_granting(permission)
        ));
    }
    let Some((name, Some(policy))) = key else {
        return Ok(());
    };
    let governing: Vec<&PolicyRule> = policy
        .rules
        .iter()
        .filter(|r| r.permissions.contains(&permission))
        .collect();
    if governing.is_empty() {
        return Ok(());
    }
    let allowed = governing.iter().any(|r| {
        r.principals.iter().any(|p| matches_principal(p, principal))
            && r.context.iter().all(|(k, v)| context.get(k) == Some(v))
    });
    if allowed {
        Ok(())
    } else {
        Err(format!(
            "the policy of key {name:?} does not allow {} to {permission}{}",
            principal.name,
            if governing.iter().any(|r| !r.context.is_empty()) {
                " with this encryption context"
            } else {
                ""
            }
        ))
    }
}

/// `node-N`: a cluster node speaking for itself (authenticated by the node
/// layer; client principals may not carry such a name).
pub(crate) fn is_node_principal(principal: &str) -> bool {
    principal
        .strip_prefix("node-")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The node a `node-N` principal names.
pub(crate) fn node_of_principal(principal: &str) -> Option<qk_types::NodeId> {
    principal
        .strip_prefix("node-")
        .filter(|_| is_node_principal(principal))
        .and_then(|n| n.parse::<u64>().ok())
        .map(qk_types::NodeId)
}
