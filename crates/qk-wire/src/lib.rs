//! The messages clients and nodes exchange with a node: requests,
//! responses, health figures and the one secret-bytes wrapper they carry.
//!
//! Plain data with serde: no openraft, no transport, no I/O. The HTTPS API
//! (`qk-api`), its JSON views (`qk-views`) and the clients use this crate
//! without compiling the Raft stack; `qk-raft` wraps these messages in the
//! frames nodes send each other.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::fmt;

use qk_state::{
    ApprovalRecord, ApprovalRule, AuditRecord, Command, KeyRecord, PrincipalRecord, Response,
    TokenRecord,
};
use serde::{Deserialize, Serialize};

/// Secret bytes in a message (plaintext, data keys).
pub use qk_types::Redacted;

/// A cluster member's id, as Raft numbers it (the value inside
/// `qk_types::NodeId`).
pub type NodeId = u64;

/// Where a member listens.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QkNode {
    /// `host:port` of the node's QUIC endpoint (Raft and cluster RPCs).
    pub rpc_addr: String,
    /// `https://host:port` of the node's HTTPS API (empty if it has none).
    #[serde(default)]
    pub api_url: String,
}

impl fmt::Display for QkNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.rpc_addr)
    }
}

/// Requests a client (CLI, tests, benchmarks, other nodes) can send a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// Propose a command; answered once it is committed and applied.
    Write(Command),
    /// Read one key's record: linearizable (the node first learns the
    /// leader's read index and applies up to it).
    GetKey {
        name: String,
    },
    /// Names of all keys, sorted.
    ListKeys,
    /// Audit records from `from_seq`, at most `limit` (capped by the node).
    Audit {
        from_seq: u64,
        limit: u32,
    },
    /// This node's view: id, leader, term, last applied index, state digest.
    Status,
    /// Add a node as a learner, then promote it to voter (leader only).
    Join {
        node_id: NodeId,
        node: QkNode,
    },
    /// Wrap `plaintext` under the key's newest enabled version (no quorum).
    Encrypt {
        name: String,
        context: BTreeMap<String, String>,
        plaintext: Redacted,
    },
    /// Unwrap with server-side combining: the node gathers `t` partials.
    /// For a break-glass key, `approval` names the approved request.
    Decrypt {
        ciphertext: String,
        context: BTreeMap<String, String>,
        approval: Option<String>,
    },
    /// This node's own partial decryption, for client-side combining. The
    /// answer is an encoded `qk_crypto::PartialDecryption`.
    Partial {
        ciphertext: String,
        context: BTreeMap<String, String>,
        approval: Option<String>,
    },
    /// Full records of every key (the inventory), sorted by name.
    KeyInventory,
    /// A fresh random data key of `bytes` bytes (16..=64), returned in the
    /// clear and wrapped under the key's newest enabled version.
    DataKey {
        name: String,
        bytes: u16,
        context: BTreeMap<String, String>,
    },
    /// Decrypts (quorum) and wraps again under the key's newest version,
    /// without the plaintext leaving the node. `to_key` defaults to the
    /// ciphertext's own key.
    Rewrap {
        ciphertext: String,
        context: BTreeMap<String, String>,
        to_key: Option<String>,
    },
    /// Makes a bearer token for `principal`; the secret is returned once.
    /// An [`CredentialKind::AwsSigV4`] token's secret is derived by the
    /// issuing node (see `qk_storage::ShareStore::gateway_secret`) so that
    /// node, and no other, can check AWS signatures made with it.
    IssueToken {
        principal: String,
        ttl_ms: u64,
        description: String,
        kind: CredentialKind,
    },
    /// Checks a bearer token; answers the principal it belongs to.
    Authenticate {
        token: Redacted,
    },
    ListPrincipals,
    ListTokens,
    ListApprovals,
    /// The caller's own principal record (and token, when `token_id` is set).
    WhoAmI {
        token_id: Option<String>,
    },
    /// Verifies this node's audit chain from the first record.
    AuditVerify,
    /// Members with their reachability, and per key version how many
    /// holders answer.
    ClusterHealth,
    /// The cluster's access rule (principal and token management).
    GetAccessRule,
    /// The leader's read index: the commit index once it has confirmed,
    /// with a quorum, that it still leads. A node waits to have applied it
    /// before a linearizable read. Answered by the leader only.
    ReadIndex,
    /// Read one key's record by its id (linearizable, as `GetKey`).
    GetKeyById {
        id: qk_types::KeyId,
    },
    /// Read the record of the key an alias names, or else of the key with
    /// that name (linearizable, as `GetKey`).
    GetKeyByAlias {
        alias: String,
    },
    /// This node signs, with its node certificate's key, the hash of its
    /// audit record `seq` (0: its last record) (`qk audit checkpoint`).
    AuditCheckpoint {
        seq: u64,
    },
}

/// What a token is for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CredentialKind {
    /// A bearer token (`qkt.<id>.<random secret>`), accepted by every node.
    #[default]
    Bearer,
    /// An AWS access key (SigV4) bound to the node that issued it: its
    /// secret is re-derived from that node's seal key, so only that node
    /// can check (and so forge) signatures made with it.
    AwsSigV4,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node_id: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_applied: Option<u64>,
    pub last_log_index: Option<u64>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// Every member's RPC address.
    pub addrs: BTreeMap<NodeId, String>,
    /// SHA-256 of the applied state, to compare replicas.
    pub state_digest: [u8; 32],
    /// The applied log index `state_digest` is of: the digest is computed
    /// at most once a second, so it may lag `last_applied` by that much.
    pub digest_index: u64,
    pub key_count: u64,
    pub audit_len: u64,
    /// Nodes whose DKG key is in the applied state (a key can be generated
    /// only over holders listed here).
    #[serde(default)]
    pub dkg_keys: Vec<NodeId>,
}

/// One member as seen from the answering node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberHealth {
    pub node_id: NodeId,
    pub rpc_addr: String,
    pub api_url: String,
    pub voter: bool,
    /// Answered a status request within the timeout.
    pub reachable: bool,
    pub last_applied: Option<u64>,
    pub term: Option<u64>,
}

/// Per key version: how many of its holders answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionHealth {
    pub key: String,
    pub version: u32,
    pub state: String,
    pub threshold: u16,
    pub holders: Vec<NodeId>,
    pub live_holders: Vec<NodeId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterHealth {
    pub status: NodeStatus,
    pub members: Vec<MemberHealth>,
    pub versions: Vec<VersionHealth>,
    pub request_memory: RequestMemory,
    /// The cluster's refresh schedule: every enabled key version gets a new
    /// share epoch this often (`None`: only by hand).
    pub refresh_every_ms: Option<u64>,
}

/// How full the replicated request memory is (commands remembered for
/// deduplication), and whether each principal's share of it is enforced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestMemory {
    pub remembered: u64,
    pub shares_enabled: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientResponse {
    /// The command was committed and applied at `log_index` (send it back
    /// as the minimum index of later requests: read-your-writes). For a
    /// revocation, `not_applied_on` lists the members that had not applied
    /// it when the answer was sent (empty: in force on every node).
    Written {
        log_index: u64,
        response: Response,
        not_applied_on: Vec<NodeId>,
    },
    Key(Option<KeyRecord>),
    Keys(Vec<String>),
    Audit(Vec<AuditRecord>),
    Status(NodeStatus),
    Joined,
    /// `qk:v1:` text of the ciphertext, and the version that wrapped it.
    Ciphertext {
        text: String,
        version: u32,
    },
    Plaintext(Redacted),
    /// An encoded partial decryption (client-side combining).
    Partial(Vec<u8>),
    KeyRecords(Vec<KeyRecord>),
    DataKey {
        plaintext: Redacted,
        ciphertext: String,
        version: u32,
    },
    /// A new token: `token` is the only copy of its text. `log_index` is
    /// where its issue was applied (as for `Written`). With `approval`, the
    /// issue waits for that approval (the cluster's access rule): the token
    /// authenticates once it is approved, and `record` is what it will be.
    Token {
        token: Redacted,
        record: TokenRecord,
        log_index: u64,
        approval: Option<ApprovalRecord>,
    },
    Principal(PrincipalRecord),
    Principals(Vec<PrincipalRecord>),
    Tokens(Vec<TokenRecord>),
    Approvals(Vec<ApprovalRecord>),
    Identity {
        principal: PrincipalRecord,
        token: Option<TokenRecord>,
    },
    /// The chain verified: `records` records, the last one's hash.
    AuditVerified {
        records: u64,
        head_hash: [u8; 32],
    },
    ClusterHealth(ClusterHealth),
    /// The request waits for approval `approval.id`; it runs (or, for a
    /// decrypt, may be retried with the id) once approved.
    ApprovalPending(ApprovalRecord),
    /// Authentication or authorization refused the request (audited).
    Denied(String),
    /// What the request names does not exist.
    NotFound(String),
    /// This node is not the leader; retry at the leader if known.
    NotLeader {
        leader: Option<NodeId>,
        leader_addr: Option<String>,
    },
    /// The request failed: its kind, chosen where it failed, and a message
    /// that says what to do.
    Error(qk_types::RequestError),
    /// The cluster's access rule, if one is set.
    AccessRule(Option<ApprovalRule>),
    /// The answer to [`ClientRequest::ReadIndex`].
    ReadIndex(u64),
    /// This node's signed statement about its audit head.
    Checkpoint(qk_state::AuditCheckpoint),
}

impl ClientRequest {
    /// The request needs the caller's own signature: it asks holders for
    /// partials of a ciphertext (released only for the caller's proof), or
    /// it writes a command (applied only with its author's proof).
    pub fn needs_credential(&self) -> bool {
        matches!(
            self,
            ClientRequest::Decrypt { .. }
                | ClientRequest::Rewrap { .. }
                | ClientRequest::Write(_)
                | ClientRequest::IssueToken { .. }
        )
    }
}

impl ClientResponse {
    /// The log index a write was applied at (`None` for other answers).
    pub fn log_index(&self) -> Option<u64> {
        match self {
            ClientResponse::Written { log_index, .. } | ClientResponse::Token { log_index, .. } => {
                Some(*log_index)
            }
            _ => None,
        }
    }
}
