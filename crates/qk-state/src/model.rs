//! Entities: keys and key versions.

use std::collections::{BTreeMap, BTreeSet};

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

/// Where a version's DKG stands (see `docs/ARCHITECTURE.md`, "Generation").
/// The log is the DKG's broadcast channel; this phase is what every replica
/// agrees on, so every holder closes dealing and finishes at the same entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DkgPhase {
    /// Holders publish their deals.
    Dealing,
    /// Dealing closed: holders publish their (self-proving) complaints.
    Complaints,
    /// Transcript closed: holders compute their shares and ack the key set.
    Finished,
}

impl DkgPhase {
    pub fn name(self) -> &'static str {
        match self {
            DkgPhase::Dealing => "dealing",
            DkgPhase::Complaints => "complaints",
            DkgPhase::Finished => "finished",
        }
    }
}

/// What the state machine tracks of a version's DKG. It never checks
/// cryptography (each node's protocol layer does, deterministically); it
/// orders the phases, bounds what each holder may post, and collects acks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DkgRecord {
    pub phase: DkgPhase,
    /// Holders whose deal entry was accepted (one each).
    pub dealt: BTreeSet<NodeId>,
    /// Holders whose complaint list was accepted (one each, possibly empty).
    pub complained: BTreeSet<NodeId>,
    /// SHA-256 of the public key set each holder acked.
    pub acks: BTreeMap<NodeId, [u8; 32]>,
    /// The key set of the first ack, kept until the version is enabled or
    /// failed; later acks are compared to it by digest.
    pub acked_keys: Option<Vec<u8>>,
    /// Log time the DKG started (its dealing timeout counts from here).
    #[serde(default)]
    pub started_ms: u64,
    /// Log time dealing closed (the complaint timeout counts from here).
    #[serde(default)]
    pub closed_ms: Option<u64>,
}

impl DkgRecord {
    pub(crate) fn new(started_ms: u64) -> Self {
        DkgRecord {
            started_ms,
            closed_ms: None,
            phase: DkgPhase::Dealing,
            dealt: BTreeSet::new(),
            complained: BTreeSet::new(),
            acks: BTreeMap::new(),
            acked_keys: None,
        }
    }
}

/// Which DKG of a version a [`crate::Operation::Dkg`] step belongs to.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum DkgSession {
    /// The version's generation (epoch 0).
    #[default]
    Generation,
    /// Refresh number `attempt` (1-based) of the version, producing shares
    /// for `epoch`.
    Refresh { epoch: Epoch, attempt: u32 },
}

/// A refresh in progress: the DKG that re-randomizes the shares of an
/// enabled version without changing its public key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshRecord {
    /// The epoch the new shares are for (the version's epoch + 1).
    pub epoch: Epoch,
    /// Which refresh of this version (1-based); part of the session id.
    pub attempt: u32,
    /// Leader timestamp of the `Refresh` command.
    pub started_ms: u64,
    /// Log time after which `AbandonRefresh` is accepted.
    pub deadline_ms: u64,
    pub dkg: DkgRecord,
}

impl RefreshRecord {
    pub fn session(&self) -> DkgSession {
        DkgSession::Refresh {
            epoch: self.epoch,
            attempt: self.attempt,
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
    /// A compromised version may still decrypt (never encrypt).
    #[serde(default)]
    pub compromised_decrypt_allowed: bool,
    /// Log time (leader timestamp) after which `FailGeneration` is accepted
    /// while the version is still generating.
    pub generation_deadline_ms: u64,
    pub dkg: DkgRecord,
    /// A proactive refresh in progress (new shares of the same key for
    /// epoch `epoch + 1`); the version keeps serving at `epoch` until every
    /// holder acked the refreshed key set.
    #[serde(default)]
    pub refresh: Option<RefreshRecord>,
    /// Refreshes started so far (each gets its own DKG session).
    #[serde(default)]
    pub refresh_attempts: u32,
    /// Why the last refresh was abandoned, if it was.
    #[serde(default)]
    pub last_refresh_failure: Option<String>,
}

impl KeyVersionRecord {
    /// Holders sorted by node id; holder `k` (0-based) of this list has Shamir
    /// index `k + 1`. Every node derives the same mapping.
    pub fn sorted_holders(&self) -> Vec<NodeId> {
        let mut h = self.holders.clone();
        h.sort();
        h
    }
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
    /// Versions below this one may not decrypt.
    #[serde(default)]
    pub min_decrypt_version: KeyVersion,
    /// Who may do what with this key (roles alone when `None`).
    #[serde(default)]
    pub policy: Option<crate::access::KeyPolicy>,
    /// The expiry passed: the key no longer encrypts or rotates (it still
    /// decrypts, so data can be moved to another key).
    #[serde(default)]
    pub expired: bool,
}

/// The tag that holds a key's aliases, one per line. Its empty name is one
/// `SetTag` has always refused, so only `SetAlias` ever wrote it.
pub const ALIASES_TAG: &str = "";

impl KeyRecord {
    /// The aliases on this key (`Operation::SetAlias`).
    pub fn aliases(&self) -> impl Iterator<Item = &str> {
        self.tags
            .get(ALIASES_TAG)
            .and_then(|v| std::str::from_utf8(v).ok())
            .unwrap_or_default()
            .split('\n')
            .filter(|a| !a.is_empty())
    }

    /// Log time of the next scheduled rotation, if the key has a schedule.
    pub fn next_rotation_ms(&self) -> Option<u64> {
        let period = self.rotation_period_ms?;
        (!self.expired).then(|| self.last_rotated_ms.saturating_add(period))
    }

    pub fn version(&self, v: KeyVersion) -> Option<&KeyVersionRecord> {
        self.versions.iter().find(|r| r.version == v)
    }

    pub(crate) fn version_mut(&mut self, v: KeyVersion) -> Option<&mut KeyVersionRecord> {
        self.versions.iter_mut().find(|r| r.version == v)
    }

    /// The newest enabled version: the one encryption uses.
    pub fn primary_version(&self) -> Option<&KeyVersionRecord> {
        if self.expired {
            return None;
        }
        self.versions
            .iter()
            .rev()
            .find(|v| v.state == VersionState::Enabled)
    }
}
