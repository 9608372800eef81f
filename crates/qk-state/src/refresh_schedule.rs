//! The cluster's refresh schedule: every enabled key version gets a new
//! share epoch (same public key, old shares erased) once `every_ms` has
//! passed since its last refresh (or its creation). A refresh that was
//! abandoned (a holder down, a dealer cheating) is tried again after
//! [`RETRY_AFTER_MS`] at most, not at every maintenance tick.
//!
//! Kept beside the state's other fields (see `StateMachine::to_bytes`) so
//! that a snapshot of the release before it still decodes. Nothing is
//! recorded while no schedule is set, and only
//! `Operation::SetRefreshSchedule`, which no older release writes, sets one:
//! so replicas restored from an older release's checkpoint and replicas
//! that replayed the log hold the same times.
//!
//! At most [`MAX_SCHEDULED_AT_ONCE`] refreshes run at once when the
//! schedule starts them, so a new or shortened schedule that makes every
//! version due at once does not start a DKG per version in one tick.

use std::collections::BTreeMap;

use qk_types::{KeyId, KeyVersion};
use serde::{Deserialize, Serialize};

use crate::model::{KeyVersionRecord, VersionState};

/// Shortest period: each refresh is a DKG across the version's holders.
pub const MIN_REFRESH_PERIOD_MS: u64 = 10_000;
/// Longest wait before an abandoned scheduled refresh is tried again.
pub const RETRY_AFTER_MS: u64 = 60 * 60 * 1000;
/// Most refreshes running when the schedule starts another.
pub const MAX_SCHEDULED_AT_ONCE: usize = 4;

/// When a version was last refreshed and last tried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct RefreshTimes {
    refreshed_ms: Option<u64>,
    attempted_ms: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshSchedule {
    every_ms: Option<u64>,
    /// Versions refreshed or tried since the cluster has had a schedule (or
    /// refreshed by hand): at most one entry per key version.
    versions: BTreeMap<(KeyId, KeyVersion), RefreshTimes>,
}

impl RefreshSchedule {
    /// The period, when a schedule is set.
    pub fn every_ms(&self) -> Option<u64> {
        self.every_ms
    }

    pub(crate) fn set_every(&mut self, every_ms: Option<u64>) -> Result<(), String> {
        if every_ms.is_some_and(|e| e < MIN_REFRESH_PERIOD_MS) {
            return Err(format!(
                "a refresh period must be at least {MIN_REFRESH_PERIOD_MS} ms (each refresh is a DKG across the holders); pass a longer one, e.g. --every 30d"
            ));
        }
        self.every_ms = every_ms;
        Ok(())
    }

    /// When version `v` of key `key` is due for its scheduled refresh: only
    /// an enabled, generated version with no refresh running, and never
    /// sooner than [`RETRY_AFTER_MS`] (or the period) after an attempt that
    /// did not complete.
    pub fn due_ms(&self, key: KeyId, v: &KeyVersionRecord) -> Option<u64> {
        let every = self.every_ms?;
        let ready = v.state == VersionState::Enabled && v.public_keys.is_some();
        if !ready || v.refresh.is_some() {
            return None;
        }
        let times = self
            .versions
            .get(&(key, v.version))
            .copied()
            .unwrap_or_default();
        let base = times.refreshed_ms.unwrap_or(v.created_ms);
        let due = base.saturating_add(every);
        Some(match times.attempted_ms {
            Some(tried) if tried >= base => {
                due.max(tried.saturating_add(every.min(RETRY_AFTER_MS)))
            }
            _ => due,
        })
    }

    pub(crate) fn attempted(&mut self, key: KeyId, version: KeyVersion, now_ms: u64) {
        if self.every_ms.is_some() {
            self.times_mut(key, version).attempted_ms = Some(now_ms);
        }
    }

    /// A refresh of the version completed (by hand or scheduled); recorded
    /// only while a schedule is set.
    pub(crate) fn refreshed(&mut self, key: KeyId, version: KeyVersion, now_ms: u64) {
        if self.every_ms.is_some() {
            self.times_mut(key, version).refreshed_ms = Some(now_ms);
        }
    }

    fn times_mut(&mut self, key: KeyId, version: KeyVersion) -> &mut RefreshTimes {
        self.versions.entry((key, version)).or_default()
    }
}
