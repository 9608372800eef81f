//! The replicated state machine: a deterministic `apply(entry) -> response`.
//!
//! Architecture invariant: no I/O, no clock, no randomness. Time comes from the
//! leader inside each [`Command`]; ids are derived from request ids. Every
//! applied command — refused ones included — appends one audit record whose
//! hash covers the previous record's hash.
#![forbid(unsafe_code)]

mod access;
mod access_ops;
mod approval;
mod audit;
pub mod authn;
mod command;
mod key_table;
mod lifecycle;
mod limits;
mod machine;
mod model;
pub mod proof;
mod refresh_schedule;
mod request_shares;

pub use access::{
    default_approval_ttl_ms, ApprovalRule, Decision, KeyPolicy, Permission, PolicyRule,
    PrincipalRecord, Role, TokenRecord,
};
pub use access_ops::{
    is_aws_token_id, parse_token, token_text, AWS_TOKEN_ID_MARKER,
    MAX_PENDING_APPROVALS_PER_PRINCIPAL, MAX_TOKEN_TTL_MS, TOKEN_PREFIX,
};
pub use approval::{ApprovalRecord, ApprovalStatus};
pub use audit::{
    verify_chain, AuditCheckpoint, AuditRecord, ChainError, GENESIS_HASH, MAX_CHECKPOINT_PART_LEN,
};
pub use command::{
    AliasChange, Applied, AuditEvent, Command, CreateKey, DkgStep, Operation, PendingAction,
    RequestId, Response, StateError, DEFAULT_GENERATION_TIMEOUT_MS, DKG_COMPLAINT_TIMEOUT_MS,
    DKG_DEALING_TIMEOUT_MS, MAX_AUDIT_BATCH, MAX_DKG_MESSAGE_LEN, MAX_GENERATION_TIMEOUT_MS,
    MIN_GENERATION_TIMEOUT_MS, PRUNE_AFTER_MS,
};
pub use lifecycle::LifecycleChange;
pub use limits::{MAX_FRESH_REQUESTS, MAX_REMEMBERED_REQUESTS};
pub use machine::{
    StateMachine, ATTEST_EVERY_MS, MAX_KEYS, MAX_PUBLIC_KEYS_LEN, MIN_ROTATION_PERIOD_MS,
};
pub use model::{
    DkgPhase, DkgRecord, DkgSession, KeyRecord, KeyVersionRecord, RefreshRecord, VersionState,
    ALIASES_TAG,
};
pub use refresh_schedule::{
    RefreshSchedule, MAX_SCHEDULED_AT_ONCE, MIN_REFRESH_PERIOD_MS, RETRY_AFTER_MS,
};
pub use request_shares::{RequestShares, MAX_REQUESTS_PER_PRINCIPAL};
