//! Log entry payloads and responses.

use qk_types::{Epoch, KeyId, KeyVersion, NodeId};

use crate::access::{ApprovalRule, KeyPolicy, Role};
use crate::model::DkgSession;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// A client-chosen id that makes a retried request apply once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(pub [u8; 16]);

/// One replicated log entry's payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub request_id: RequestId,
    /// Wall-clock time stamped by the leader when it proposed the entry.
    pub time_ms: u64,
    /// Who asked (a principal name, or `node-N` for protocol steps).
    pub principal: String,
    pub op: Operation,
    /// The author's signature ([`crate::authn`]); checked at apply.
    #[serde(default)]
    pub proof: Option<Box<crate::proof::CommandProof>>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateKey {
    pub name: String,
    pub description: String,
    pub owner: String,
    pub purpose: String,
    pub rotation_period_ms: Option<u64>,
    pub expires_at_ms: Option<u64>,
    pub threshold: u16,
    pub holders: Vec<NodeId>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operation {
    CreateKey(CreateKey),
    /// Sets (or with `None` removes) a metadata tag on a key.
    SetTag {
        name: String,
        tag: String,
        value: Option<Vec<u8>>,
    },
    /// Starts a new version (a new DKG) with the key's current holders.
    Rotate {
        name: String,
        holders: Vec<NodeId>,
        /// How long (log time) the DKG may take before `FailGeneration` is
        /// accepted; `None` means [`DEFAULT_GENERATION_TIMEOUT_MS`].
        generation_timeout_ms: Option<u64>,
    },
    /// One step of a version's DKG, posted by holder `from`. The log is the
    /// DKG's broadcast channel; the command's principal must be `from`
    /// (`node-N`), so a node can only speak for itself.
    Dkg {
        name: String,
        version: KeyVersion,
        from: NodeId,
        step: DkgStep,
        /// Which DKG of the version: its generation, or a refresh.
        #[serde(default)]
        session: DkgSession,
    },
    /// Gives up a DKG. Accepted only once the version's generation deadline
    /// has passed (`time_ms >= generation_deadline_ms`); the recorded reason
    /// names the holders that did not ack, followed by `reason`.
    FailGeneration {
        name: String,
        version: KeyVersion,
        reason: String,
    },
    Disable {
        name: String,
        version: KeyVersion,
    },
    Enable {
        name: String,
        version: KeyVersion,
    },
    /// Disables the version at once and records why. With `allow_decrypt`
    /// it still decrypts (to re-encrypt data under a new version); it never
    /// encrypts again and cannot be re-enabled.
    MarkCompromised {
        name: String,
        version: KeyVersion,
        reason: String,
        #[serde(default)]
        allow_decrypt: bool,
    },
    /// Versions below this one may no longer decrypt (0 or 1: all may).
    SetMinDecryptVersion {
        name: String,
        version: KeyVersion,
    },
    ScheduleDestruction {
        name: String,
        version: KeyVersion,
        after_ms: u64,
    },
    CancelDestruction {
        name: String,
        version: KeyVersion,
    },
    /// Commits destruction of a version whose waiting period has passed.
    Destroy {
        name: String,
        version: KeyVersion,
    },
    /// A node publishes its DKG encryption key (an encoded
    /// `qk_crypto::DkgPublicKey`): dealers seal each holder's share to it
    /// inside the deal. Only the node itself may; a node that lost its disk
    /// (and so its seal key) publishes its new key, replacing the old one.
    PublishDkgKey {
        node: NodeId,
        public_key: Vec<u8>,
    },
    /// A holder confirms it erased its share.
    EraseReceipt {
        name: String,
        version: KeyVersion,
        node: NodeId,
    },
    /// An operation that happened outside the log (an unwrap, a refused
    /// request) recorded for audit only.
    Audit {
        operation: String,
        key: Option<String>,
        version: Option<KeyVersion>,
        outcome: String,
    },
    /// Starts a proactive refresh of an enabled version: every holder gets
    /// a new share of the same key for epoch `epoch + 1`. The version keeps
    /// serving at its current epoch until every holder acked the refreshed
    /// key set (steps are `Dkg` with `session: DkgSession::Refresh`).
    Refresh {
        name: String,
        version: KeyVersion,
        /// Log time the refresh may take before `AbandonRefresh` is
        /// accepted; `None` means [`DEFAULT_GENERATION_TIMEOUT_MS`].
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// Gives up refresh number `attempt` of a version. Accepted only once
    /// its deadline passed; the version stays at its current epoch.
    AbandonRefresh {
        name: String,
        version: KeyVersion,
        attempt: u32,
        reason: String,
    },
    /// Many audit-only events in one entry (unwraps, encrypts, refusals),
    /// proposed by a node; each becomes its own chained audit record.
    AuditBatch(Vec<AuditEvent>),
    /// Adds a principal. A node may add the first one (the initial admin)
    /// while none exists; after that it takes `principal-manage`.
    CreatePrincipal {
        name: String,
        roles: BTreeSet<Role>,
    },
    UpdatePrincipal {
        name: String,
        roles: BTreeSet<Role>,
        disabled: bool,
    },
    /// Removes a principal and revokes its tokens.
    DeletePrincipal {
        name: String,
    },
    /// Records a token by the SHA-256 of its secret (the node that made the
    /// secret hands it to the caller once; it is never in the log).
    IssueToken {
        id: String,
        principal: String,
        description: String,
        secret_sha256: [u8; 32],
        /// [`crate::proof::token_verify_key`] of the secret.
        verify_key: [u8; 32],
        expires_at_ms: u64,
    },
    RevokeToken {
        id: String,
    },
    /// Sets (or with `None` removes) a key's access policy.
    SetPolicy {
        name: String,
        policy: Option<KeyPolicy>,
    },
    /// Changes a key's rotation schedule and expiry.
    SetSchedule {
        name: String,
        rotation_period_ms: Option<u64>,
        expires_at_ms: Option<u64>,
    },
    /// Asks for approval of an action that is not itself a log operation
    /// (a break-glass decrypt).
    RequestApproval {
        action: PendingAction,
    },
    Approve {
        id: String,
    },
    Deny {
        id: String,
        reason: String,
    },
    /// The requester uses an approved break-glass decrypt, once.
    ConsumeApproval {
        id: String,
        ciphertext_sha256: [u8; 32],
    },
    /// Rotation driven by the key's schedule (a node proposes it; accepted
    /// only when due by log time).
    ScheduledRotate {
        name: String,
        holders: Vec<NodeId>,
    },
    /// The key's expiry passed (log time): it no longer encrypts.
    Expire {
        name: String,
    },
    /// A pending approval ran out of time.
    ExpireApproval {
        id: String,
    },
    /// Forgets tokens revoked or expired, and approvals finished, more than
    /// [`PRUNE_AFTER_MS`] of log time ago (the audit trail keeps their
    /// history), so the stores' caps are never reached by old records.
    /// Proposed by a node; refused when there is nothing to prune.
    PruneRecords,
    /// A node vouches for its clock: its signing time counts towards the
    /// time the nodes vouch for (`StateMachine::vouched_ms`), which lets old
    /// request ids be forgotten. Proposed only while many are remembered.
    Attest,
    /// Sets (or with `None` removes) the cluster's access rule: M-of-N
    /// approval of principal and token management. While a rule is set,
    /// changing or removing it needs approval under it too.
    SetAccessRule {
        rule: Option<ApprovalRule>,
    },
    /// Adds, moves or removes an alias (another name a key is found by, as
    /// AWS KMS aliases). Aliases are unique across keys and never equal a
    /// key's name; one is kept on its key as the tag `alias/<alias>`.
    SetAlias {
        /// The key the alias is put on (`Create`, `Move`) or taken off (`Delete`).
        name: String,
        alias: String,
        change: AliasChange,
    },
    /// Counts and enforces each principal's share of the request memory
    /// from this entry on (`RequestShares`). The bootstrap node of a new
    /// cluster sends it before the initial admin exists (an entry an older
    /// release never wrote, so every replica counts from it); an
    /// administrator sends it on a cluster created by an older release,
    /// once every node runs a release that can decode it.
    EnableRequestShares,
    /// Sets (or with `None` removes) the cluster's refresh schedule: every
    /// enabled key version is refreshed once `every_ms` passed since its
    /// last refresh (`RefreshSchedule`). Sent once every node runs a
    /// release that can decode it and `ScheduledRefresh`.
    SetRefreshSchedule {
        every_ms: Option<u64>,
    },
    /// A version's scheduled refresh is due (proposed by a node; refused
    /// when it is not due by the time the nodes vouch for).
    ScheduledRefresh {
        name: String,
        version: KeyVersion,
    },
}

/// What [`Operation::SetAlias`] does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AliasChange {
    /// A new alias (refused when it exists).
    Create,
    /// An existing alias moves to the key (also needs `key-configure` on the
    /// key it leaves).
    Move,
    /// The alias is removed from the key.
    Delete,
}

/// How long revoked or expired tokens and finished approvals stay listed.
pub const PRUNE_AFTER_MS: u64 = 7 * 24 * 60 * 60 * 1000;

/// Most events in one [`Operation::AuditBatch`].
pub const MAX_AUDIT_BATCH: usize = 1024;

/// One event for an audit batch; the node that saw it authenticated the
/// principal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub principal: String,
    pub operation: String,
    pub key: Option<String>,
    pub version: Option<KeyVersion>,
    pub outcome: String,
}

impl AuditEvent {
    /// An event with every field cut to what the audit trail keeps (names
    /// 128 bytes, the outcome 1,024), so one over-long field (a key name
    /// copied from a request) never makes its batch, and so the records of
    /// other callers, too large.
    pub fn new(
        principal: &str,
        operation: &str,
        key: Option<&str>,
        version: Option<KeyVersion>,
        outcome: &str,
    ) -> AuditEvent {
        use crate::limits::{bounded, MAX_NAME_LEN, MAX_TEXT_LEN};
        AuditEvent {
            principal: bounded(principal, MAX_NAME_LEN),
            operation: bounded(operation, MAX_NAME_LEN),
            key: key.map(|k| bounded(k, MAX_NAME_LEN)),
            version,
            outcome: bounded(outcome, MAX_TEXT_LEN),
        }
    }
}

/// Default time a DKG may take, from the leader timestamp of the command
/// that started it.
pub const DEFAULT_GENERATION_TIMEOUT_MS: u64 = 30_000;
/// Log time after a DKG's start at which dealing may close without every
/// holder's deal (qk-protocol proposes it then).
pub const DKG_DEALING_TIMEOUT_MS: u64 = 10_000;
/// Log time after dealing closed at which the complaint phase may end
/// without every holder's complaint list.
pub const DKG_COMPLAINT_TIMEOUT_MS: u64 = 5_000;
/// Accepted range of a caller-chosen generation timeout.
pub const MIN_GENERATION_TIMEOUT_MS: u64 = 1_000;
pub const MAX_GENERATION_TIMEOUT_MS: u64 = 3_600_000;
/// Largest encoded DKG public message: a deal for 64 holders (64
/// commitments and 64 sealed shares with their proofs) fits.
pub const MAX_DKG_MESSAGE_LEN: usize = 12_288;
const _: () = assert!(MAX_DKG_MESSAGE_LEN >= qk_crypto::messages::MAX_DEAL_LEN);
const _: () = assert!(MAX_DKG_MESSAGE_LEN >= qk_crypto::messages::MAX_COMPLAINT_LEN);

/// A DKG step carried in the log. Payloads are encoded `qk_crypto`
/// public messages; the state machine bounds their size and the phase they
/// may appear in, the protocol layer decodes and verifies them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DkgStep {
    /// The holder's deal (encoded `qk_crypto::Deal`, every holder's share
    /// sealed inside); once, while dealing. The last holder's deal closes
    /// dealing.
    Deal(Vec<u8>),
    /// The holder's complaints (encoded `qk_crypto::Complaint`s, possibly
    /// none); once, after dealing closed. Each complaint proves itself, so
    /// none is answered; the last holder's list ends the complaint phase.
    Complaints(Vec<Vec<u8>>),
    /// Ends dealing at its timeout when some holder never dealt.
    CloseDealing,
    /// Ends the complaint phase at its timeout when some holder never
    /// posted its complaints.
    Finish,
    /// The holder computed its share and this public key set (encoded
    /// `qk_crypto::PublicKeySet`). When every holder acked byte-identical
    /// sets the version is enabled; differing sets fail it.
    Ack { public_keys: Vec<u8> },
}

impl DkgStep {
    pub fn name(&self) -> &'static str {
        match self {
            DkgStep::Deal(_) => "version.dkg.deal",
            DkgStep::Complaints(_) => "version.dkg.complaints",
            DkgStep::CloseDealing => "version.dkg.close-dealing",
            DkgStep::Finish => "version.dkg.finish",
            DkgStep::Ack { .. } => "version.dkg.ack",
        }
    }
}

impl Operation {
    /// The operation's canonical encoding: the bytes a command proof signs,
    /// the same on every node and release of this format.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_allocvec(self)
    }

    /// Operations that can take a permission or a key away (disable,
    /// compromise, destruction, a minimum version, principal and token
    /// changes, any policy change, and an approval, which may run one of
    /// those): acknowledged only once every member applied them, so no node
    /// keeps serving under the old rule.
    pub fn narrows_access(&self) -> bool {
        matches!(
            self,
            Operation::Disable { .. }
                | Operation::MarkCompromised { .. }
                | Operation::SetMinDecryptVersion { .. }
                | Operation::ScheduleDestruction { .. }
                | Operation::Destroy { .. }
                | Operation::UpdatePrincipal { .. }
                | Operation::DeletePrincipal { .. }
                | Operation::RevokeToken { .. }
                | Operation::SetPolicy { .. }
                | Operation::Expire { .. }
                | Operation::Approve { .. }
        )
    }

    pub fn name(&self) -> &'static str {
        match self {
            Operation::CreateKey(_) => "key.create",
            Operation::SetTag { .. } => "key.set-tag",
            Operation::Rotate { .. } => "key.rotate",
            Operation::Dkg { step, .. } => step.name(),
            Operation::FailGeneration { .. } => "version.failed",
            Operation::Disable { .. } => "version.disable",
            Operation::Enable { .. } => "version.enable",
            Operation::MarkCompromised { .. } => "version.mark-compromised",
            Operation::SetMinDecryptVersion { .. } => "key.set-min-decrypt-version",
            Operation::ScheduleDestruction { .. } => "version.schedule-destruction",
            Operation::CancelDestruction { .. } => "version.cancel-destruction",
            Operation::Destroy { .. } => "version.destroy",
            Operation::EraseReceipt { .. } => "version.erase-receipt",
            Operation::Refresh { .. } => "version.refresh",
            Operation::AbandonRefresh { .. } => "version.refresh-abandoned",
            Operation::Audit { .. } => "audit",
            Operation::AuditBatch(_) => "audit.batch",
            Operation::CreatePrincipal { .. } => "principal.create",
            Operation::UpdatePrincipal { .. } => "principal.update",
            Operation::DeletePrincipal { .. } => "principal.delete",
            Operation::IssueToken { .. } => "token.issue",
            Operation::RevokeToken { .. } => "token.revoke",
            Operation::SetPolicy { .. } => "key.set-policy",
            Operation::SetSchedule { .. } => "key.set-schedule",
            Operation::RequestApproval { .. } => "approval.request",
            Operation::Approve { .. } => "approval.approve",
            Operation::Deny { .. } => "approval.deny",
            Operation::ConsumeApproval { .. } => "approval.consume",
            Operation::ScheduledRotate { .. } => "key.scheduled-rotate",
            Operation::Expire { .. } => "key.expire",
            Operation::ExpireApproval { .. } => "approval.expire",
            Operation::PruneRecords => "records.prune",
            Operation::Attest => "node.attest",
            Operation::PublishDkgKey { .. } => "node.publish-dkg-key",
            Operation::SetAlias { .. } => "key.set-alias",
            Operation::SetAccessRule { .. } => "cluster.set-access-rule",
            Operation::EnableRequestShares => "cluster.enable-request-shares",
            Operation::SetRefreshSchedule { .. } => "cluster.set-refresh-schedule",
            Operation::ScheduledRefresh { .. } => "version.scheduled-refresh",
        }
    }

    /// The key an operation is about, if any.
    pub fn key_name(&self) -> Option<&str> {
        match self {
            Operation::CreateKey(c) => Some(&c.name),
            Operation::SetTag { name, .. }
            | Operation::Rotate { name, .. }
            | Operation::Dkg { name, .. }
            | Operation::FailGeneration { name, .. }
            | Operation::Disable { name, .. }
            | Operation::Enable { name, .. }
            | Operation::MarkCompromised { name, .. }
            | Operation::SetMinDecryptVersion { name, .. }
            | Operation::ScheduleDestruction { name, .. }
            | Operation::CancelDestruction { name, .. }
            | Operation::Destroy { name, .. }
            | Operation::EraseReceipt { name, .. }
            | Operation::Refresh { name, .. }
            | Operation::AbandonRefresh { name, .. }
            | Operation::SetPolicy { name, .. }
            | Operation::SetSchedule { name, .. }
            | Operation::ScheduledRotate { name, .. }
            | Operation::Expire { name }
            | Operation::ScheduledRefresh { name, .. }
            | Operation::SetAlias { name, .. } => Some(name),
            Operation::Audit { key, .. } => key.as_deref(),
            Operation::RequestApproval {
                action: PendingAction::Decrypt { key, .. },
            } => Some(key),
            Operation::RequestApproval {
                action: PendingAction::Operation(op),
            } => op.key_name(),
            _ => None,
        }
    }

    /// The key version an operation is about, if any.
    pub fn version(&self) -> Option<KeyVersion> {
        match self {
            Operation::Dkg { version, .. }
            | Operation::FailGeneration { version, .. }
            | Operation::Disable { version, .. }
            | Operation::Enable { version, .. }
            | Operation::MarkCompromised { version, .. }
            | Operation::SetMinDecryptVersion { version, .. }
            | Operation::ScheduleDestruction { version, .. }
            | Operation::CancelDestruction { version, .. }
            | Operation::Destroy { version, .. }
            | Operation::EraseReceipt { version, .. }
            | Operation::Refresh { version, .. }
            | Operation::ScheduledRefresh { version, .. }
            | Operation::AbandonRefresh { version, .. } => Some(*version),
            Operation::Audit { version, .. } => *version,
            _ => None,
        }
    }
}

/// Why a command was refused. Refusals are still applied (and audited).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    #[error("key {0:?} does not exist; list keys to see the inventory")]
    NoSuchKey(String),
    #[error("key {0:?} already exists; choose another name or rotate the existing key")]
    KeyExists(String),
    #[error("key {name:?} has no version {version}")]
    NoSuchVersion { name: String, version: u32 },
    #[error("version {version} of key {name:?} is {state}; {action} is not allowed in that state")]
    InvalidTransition {
        name: String,
        version: u32,
        state: String,
        action: String,
    },
    #[error("invalid request: {0}")]
    Invalid(String),
    /// Authorization refused the request (it is audited as refused).
    #[error("permission denied: {0}")]
    Denied(String),
    #[error("{0}")]
    NotFound(String),
    #[error("alias {0:?} already exists (as an alias or a key name); choose another or move it")]
    AliasExists(String),
}

impl StateError {
    /// What kind of failure this is for a client (status, exit code).
    pub fn kind(&self) -> qk_types::ErrorKind {
        use qk_types::ErrorKind;
        match self {
            StateError::NoSuchKey(_)
            | StateError::NoSuchVersion { .. }
            | StateError::NotFound(_) => ErrorKind::NotFound,
            StateError::KeyExists(_)
            | StateError::AliasExists(_)
            | StateError::InvalidTransition { .. } => ErrorKind::Conflict,
            StateError::Invalid(_) => ErrorKind::Invalid,
            StateError::Denied(_) => ErrorKind::Denied,
        }
    }
}

/// The result of applying a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub result: Result<Applied, StateError>,
    /// Sequence number of the audit record this command produced.
    pub audit_seq: u64,
    /// True when the request id had been applied before: nothing changed.
    pub duplicate: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    Done,
    KeyCreated {
        id: KeyId,
        version: KeyVersion,
    },
    VersionCreated {
        version: KeyVersion,
    },
    /// The version reached `Destroyed` with this receipt.
    VersionDestroyed,
    /// The last ack arrived and every holder acked the same key set: the
    /// version is `Enabled`.
    VersionEnabled,
    /// The version moved to `Failed` (deadline passed, or acks disagree).
    GenerationFailed {
        reason: String,
    },
    /// A refresh started; its new shares are for `epoch`.
    RefreshStarted {
        epoch: Epoch,
        attempt: u32,
    },
    /// Every holder acked the refreshed key set: the version now serves at
    /// `epoch` (holders erase the shares of the epoch before).
    RefreshCompleted {
        epoch: Epoch,
    },
    /// The refresh was given up (deadline, disagreement, or a changed public
    /// key); the version stays at its epoch, holders erase the new shares.
    RefreshAbandoned {
        epoch: Epoch,
        reason: String,
    },
    /// The request waits for approval (nothing else changed yet).
    ApprovalRequested {
        id: String,
        required: u16,
    },
    /// An approval was recorded; `outcome` is set when it was the last one
    /// needed and the approved operation ran.
    Approved {
        remaining: u16,
        outcome: Option<String>,
    },
}

/// What an approval, once granted, lets happen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PendingAction {
    /// A log operation, applied as the requester when the last approval lands.
    Operation(Box<Operation>),
    /// One decryption of this ciphertext (break-glass key); the requester
    /// retries with the approval id once it is approved.
    Decrypt {
        key: String,
        ciphertext_sha256: [u8; 32],
    },
}
