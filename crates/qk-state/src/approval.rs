//! Quorum approvals as the replicated state keeps them: what was asked,
//! by whom, who approved, and where it stands. Apart from `access` (the
//! rules) because an approval carries a pending command, and commands carry
//! access rules.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::access::Permission;
use crate::command::PendingAction;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ApprovalStatus {
    Pending,
    /// Enough approvals; a decrypt approval waits to be used once.
    Approved,
    /// The approved operation was applied; the text is its outcome.
    Executed(String),
    /// A break-glass decrypt approval was used.
    Consumed,
    Denied {
        by: String,
        reason: String,
    },
    Expired,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRecord {
    pub id: String,
    pub requester: String,
    pub key: String,
    pub permission: Permission,
    pub action: PendingAction,
    pub required: u16,
    pub approvers: BTreeSet<String>,
    pub created_ms: u64,
    pub expires_at_ms: u64,
    pub status: ApprovalStatus,
}
