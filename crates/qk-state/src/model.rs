//! Entities: keys and key versions.

use std::collections::BTreeSet;

use qk_types::{Epoch, KeyId, KeyVersion, NodeId};
use serde::{Deserialize, Serialize};

/// Lifecycle of one key version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VersionState {
    /// DKG running; not usable yet.
    Generating,
    /// Usable for encrypt (if newest) and decrypt.
    Enabled,
    /// Not usable until enabled again.
    Disabled,
    /// Destruction scheduled at `due_ms` (log time); can be cancelled.
    PendingDestruction { due_ms: u64 },
    /// Destroy committed; holders are erasing their shares.
    Destroying,
    /// At least `n - t + 1` holders confirmed erasure.
    Destroyed,
    /// Generation did not complete; the reason is kept.
    Failed { reason: String },
}

impl VersionState {
    pub fn name(&self) -> &'static str {
        match self {
            VersionState::Generating => "generating",
            VersionState::Enabled => "enabled",
            VersionState::Disabled => "disabled",
            VersionState::PendingDestruction { .. } => "pending-destruction",
            VersionState::Destroying => "destroying",
            VersionState::Destroyed => "destroyed",
            VersionState::Failed { .. } => "failed",
        }
    }
}

/// One key version: one threshold key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVersionRecord {
    pub version: KeyVersion,
    pub state: VersionState,
    pub created_ms: u64,
    pub threshold: u16,
    pub holders: Vec<NodeId>,
    pub epoch: Epoch,
    /// Encoded `qk_crypto::PublicKeySet` (public key and commitments), once generated.
    pub public_keys: Option<Vec<u8>>,
    /// Holders that confirmed erasing their share.
    pub erase_receipts: BTreeSet<NodeId>,
    pub compromised: Option<String>,
}

/// A named key and its versions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: KeyId,
    pub name: String,
    pub description: String,
    pub owner: String,
    pub purpose: String,
    pub created_ms: u64,
    pub rotation_period_ms: Option<u64>,
    pub expires_at_ms: Option<u64>,
    pub last_rotated_ms: u64,
    pub versions: Vec<KeyVersionRecord>,
    /// Free-form metadata tags (bounded in count and size).
    pub tags: std::collections::BTreeMap<String, Vec<u8>>,
}

impl KeyRecord {
    pub fn version(&self, v: KeyVersion) -> Option<&KeyVersionRecord> {
        self.versions.iter().find(|r| r.version == v)
    }

    pub(crate) fn version_mut(&mut self, v: KeyVersion) -> Option<&mut KeyVersionRecord> {
        self.versions.iter_mut().find(|r| r.version == v)
    }

    /// The newest enabled version: the one encryption uses.
    pub fn primary_version(&self) -> Option<&KeyVersionRecord> {
        self.versions
            .iter()
            .rev()
            .find(|v| v.state == VersionState::Enabled)
    }
}
