//! The lifecycle guards: which state a version must be in for each change.
//! The state machine refuses a change whose guard fails; the HTTPS API uses
//! the same table to pick the versions a change applies to when none is
//! named. One table, so the two cannot drift apart.

use crate::model::{KeyVersionRecord, VersionState};

/// A change of a version's lifecycle state that a client asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LifecycleChange {
    Disable,
    Enable,
    MarkCompromised,
    ScheduleDestruction,
    CancelDestruction,
    Refresh,
}

impl LifecycleChange {
    /// Whether the change may apply to `v` as it is now.
    pub fn allowed(self, v: &KeyVersionRecord) -> bool {
        use VersionState as S;
        match self {
            LifecycleChange::Disable => v.state == S::Enabled,
            // A compromised version is enabled again only by a new version.
            LifecycleChange::Enable => v.state == S::Disabled && v.compromised.is_none(),
            // Marking again updates the reason and the decrypt override.
            LifecycleChange::MarkCompromised => matches!(v.state, S::Enabled | S::Disabled),
            LifecycleChange::ScheduleDestruction => {
                matches!(v.state, S::Enabled | S::Disabled | S::Failed { .. })
            }
            LifecycleChange::CancelDestruction => {
                matches!(v.state, S::PendingDestruction { .. })
            }
            LifecycleChange::Refresh => {
                v.state == S::Enabled && v.public_keys.is_some() && v.refresh.is_none()
            }
        }
    }

    /// The action's name in a refusal ("… is disabled; enable is not allowed").
    pub fn action(self) -> &'static str {
        match self {
            LifecycleChange::Disable => "disable",
            LifecycleChange::Enable => "enable",
            LifecycleChange::MarkCompromised => "mark compromised",
            LifecycleChange::ScheduleDestruction => "schedule destruction",
            LifecycleChange::CancelDestruction => "cancel destruction",
            LifecycleChange::Refresh => "refresh",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::DkgRecord;
    use qk_types::{Epoch, KeyVersion};

    fn version(state: VersionState, compromised: bool) -> KeyVersionRecord {
        KeyVersionRecord {
            version: KeyVersion(1),
            state,
            created_ms: 0,
            threshold: 2,
            holders: Vec::new(),
            epoch: Epoch(0),
            public_keys: Some(vec![1]),
            erase_receipts: Default::default(),
            compromised: compromised.then(|| "leaked".to_string()),
            compromised_decrypt_allowed: false,
            generation_deadline_ms: 0,
            dkg: DkgRecord::new(0),
            refresh: None,
            refresh_attempts: 0,
            last_refresh_failure: None,
        }
    }

    /// Rows: a version's state; columns: disable, enable, mark compromised,
    /// schedule destruction, cancel destruction, refresh.
    #[test]
    fn the_guard_table() {
        use LifecycleChange as C;
        use VersionState as S;
        let changes = [
            C::Disable,
            C::Enable,
            C::MarkCompromised,
            C::ScheduleDestruction,
            C::CancelDestruction,
            C::Refresh,
        ];
        let failed = S::Failed {
            reason: "timeout".into(),
        };
        let rows: [(VersionState, bool, [bool; 6]); 9] = [
            (
                S::Generating,
                false,
                [false, false, false, false, false, false],
            ),
            (S::Enabled, false, [true, false, true, true, false, true]),
            (S::Disabled, false, [false, true, true, true, false, false]),
            (S::Disabled, true, [false, false, true, true, false, false]),
            (
                S::PendingDestruction { due_ms: 5 },
                false,
                [false, false, false, false, true, false],
            ),
            (S::Destroying, false, [false; 6]),
            (S::Destroyed, false, [false; 6]),
            (failed, false, [false, false, false, true, false, false]),
            (S::Enabled, true, [true, false, true, true, false, true]),
        ];
        for (state, compromised, expected) in rows {
            let v = version(state.clone(), compromised);
            for (change, want) in changes.iter().zip(expected) {
                assert_eq!(
                    change.allowed(&v),
                    want,
                    "{change:?} on {state:?} (compromised: {compromised})"
                );
            }
        }
    }

    #[test]
    fn a_refused_change_is_named_in_its_error() {
        use LifecycleChange as C;
        let named = [
            (C::Disable, "disable"),
            (C::Enable, "enable"),
            (C::MarkCompromised, "mark compromised"),
            (C::ScheduleDestruction, "schedule destruction"),
            (C::CancelDestruction, "cancel destruction"),
            (C::Refresh, "refresh"),
        ];
        for (change, name) in named {
            assert_eq!(change.action(), name);
        }
    }

    #[test]
    fn refresh_needs_the_public_keys_and_no_refresh_running() {
        let mut v = version(VersionState::Enabled, false);
        v.public_keys = None;
        assert!(!LifecycleChange::Refresh.allowed(&v));
        let mut v = version(VersionState::Enabled, false);
        v.refresh = Some(crate::model::RefreshRecord {
            epoch: Epoch(1),
            attempt: 1,
            started_ms: 0,
            deadline_ms: 1,
            dkg: DkgRecord::new(0),
        });
        assert!(!LifecycleChange::Refresh.allowed(&v));
    }
}
