//! The DKGs a node watches: one [`DkgRun`] per version, for its generation
//! or for one attempt at refreshing its shares. Every node watches a run's
//! deadline so that someone ends it; a holder also takes part.

use std::collections::BTreeMap;

use qk_crypto::DkgPublicKey;
use qk_state::{Applied, DkgPhase, DkgSession, DkgStep, Operation, StateMachine, VersionState};
use qk_types::{Epoch, KeyId, KeyVersion, NodeId, ShareIndex};
use rand_core::CryptoRng;

use crate::generation::{self, Generation};
use crate::{Action, ProtocolConfig};

pub(crate) type VersionKey = (String, KeyVersion);

/// Which DKG of a version a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RunKind {
    Generation,
    /// One attempt at refreshing the version's shares, producing `epoch`.
    Refresh {
        attempt: u32,
        epoch: Epoch,
    },
}

/// How a DKG ended, as the log says. It decides which of its shares of the
/// version a holder erases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DkgEnd {
    /// The version is enabled: nothing to erase.
    Enabled,
    /// The generation failed: whatever share it stored.
    Failed,
    /// The refresh producing this epoch completed: the share of the epoch
    /// before.
    Refreshed(Epoch),
    /// The refresh producing this epoch was abandoned: its new share.
    Abandoned(Epoch),
}

impl DkgEnd {
    /// The end an applied outcome reports, if it ends a DKG.
    pub(crate) fn of(applied: &Applied) -> Option<DkgEnd> {
        match applied {
            Applied::VersionEnabled => Some(DkgEnd::Enabled),
            Applied::GenerationFailed { .. } => Some(DkgEnd::Failed),
            Applied::RefreshCompleted { epoch } => Some(DkgEnd::Refreshed(*epoch)),
            Applied::RefreshAbandoned { epoch, .. } => Some(DkgEnd::Abandoned(*epoch)),
            _ => None,
        }
    }

    /// Whether this end is the end of a run of `kind`.
    pub(crate) fn ends(self, kind: RunKind) -> bool {
        let generation_end = matches!(self, DkgEnd::Enabled | DkgEnd::Failed);
        generation_end == (kind == RunKind::Generation)
    }

    /// The epoch of the share a holder of the version erases (erasing a
    /// missing share is a no-op, which covers a node that restarted
    /// mid-DKG).
    pub(crate) fn erase(self, state: &StateMachine, vk: &VersionKey) -> Option<Epoch> {
        match self {
            DkgEnd::Enabled => None,
            DkgEnd::Failed => state.key(&vk.0)?.version(vk.1).map(|r| r.epoch),
            DkgEnd::Refreshed(epoch) => Some(Epoch(epoch.0.saturating_sub(1))),
            DkgEnd::Abandoned(epoch) => Some(epoch),
        }
    }
}

/// A deadline every node watches, so that the run is ended by someone.
#[derive(Debug)]
pub(crate) struct Watch {
    deadline_ms: u64,
    holder: bool,
    proposed_ms: Option<u64>,
}

impl Watch {
    pub(crate) fn new(deadline_ms: u64, holder: bool) -> Self {
        Watch {
            deadline_ms,
            holder,
            proposed_ms: None,
        }
    }

    /// Whether to propose ending it now: at the deadline (a node holding no
    /// share waits `fail_grace_ms` longer, so the holders go first), then
    /// again every `retry_interval_ms` until the end is applied.
    fn due(&mut self, now: u64, config: &ProtocolConfig) -> bool {
        let grace = if self.holder { 0 } else { config.fail_grace_ms };
        let due = now >= self.deadline_ms.saturating_add(grace)
            && generation::retry_due(self.proposed_ms, now, config.retry_interval_ms);
        if due {
            self.proposed_ms = Some(now);
        }
        due
    }
}

/// At most this many steps wait for a share to load: one deal and one
/// complaint list per holder, and a few timed closes.
const MAX_EARLY_STEPS: usize = 2 * qk_types::MAX_HOLDERS as usize + 8;

/// A refresh holder waiting for its current share (`Event::ShareLoaded`).
#[derive(Debug)]
pub(crate) struct AwaitingShare {
    pub(crate) key: KeyId,
    pub(crate) session: DkgSession,
    /// The epoch of the share asked for (the version's current one).
    pub(crate) epoch: Epoch,
    pub(crate) started_ms: u64,
    /// Every holder's DKG key as of the `Refresh` entry.
    pub(crate) receiver_keys: BTreeMap<ShareIndex, DkgPublicKey>,
    /// Steps of this refresh applied before the share was loaded, replayed
    /// in order once the participant starts.
    pub(crate) early_steps: Vec<EarlyStep>,
}

/// A refresh step applied while this node's share was loading.
#[derive(Debug)]
pub(crate) struct EarlyStep {
    pub(crate) from: NodeId,
    pub(crate) step: DkgStep,
    pub(crate) time_ms: u64,
    pub(crate) phase: Option<DkgPhase>,
}

/// This node's part in a run.
#[derive(Debug)]
pub(crate) enum Part {
    /// Watching only: not a holder, started past its deadline, or the start
    /// failed (a warning said why).
    Watcher,
    AwaitingShare(AwaitingShare),
    Running(Box<Generation>),
}

/// One DKG of one version, as this node follows it.
#[derive(Debug)]
pub(crate) struct DkgRun {
    pub(crate) kind: RunKind,
    pub(crate) watch: Watch,
    pub(crate) part: Part,
}

impl DkgRun {
    pub(crate) fn participant(&self) -> Option<&Generation> {
        match &self.part {
            Part::Running(g) => Some(g.as_ref()),
            _ => None,
        }
    }

    /// A step of `session` was applied: the participant handles it; a
    /// refresh holder still loading its share keeps it for later.
    pub(crate) fn on_step<R: CryptoRng + ?Sized>(
        &mut self,
        session: DkgSession,
        early: EarlyStep,
        rng: &mut R,
    ) -> Vec<Action> {
        match &mut self.part {
            Part::Running(g) if g.dkg == session => {
                g.on_step(early.from, &early.step, early.time_ms, early.phase, rng)
            }
            Part::AwaitingShare(w)
                if w.session == session && w.early_steps.len() < MAX_EARLY_STEPS =>
            {
                w.early_steps.push(early);
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// How the run ended in `state`, for a node that did not see the entry
    /// that ended it (for example after a snapshot install); `None` while it
    /// runs.
    pub(crate) fn ended_in(&self, state: &StateMachine, vk: &VersionKey) -> Option<DkgEnd> {
        let record = state.key(&vk.0).and_then(|k| k.version(vk.1));
        match self.kind {
            RunKind::Generation => match record.map(|r| &r.state) {
                Some(VersionState::Generating) => None,
                Some(VersionState::Failed { .. }) => Some(DkgEnd::Failed),
                _ => Some(DkgEnd::Enabled),
            },
            RunKind::Refresh { attempt, epoch } => {
                let running = record
                    .and_then(|r| r.refresh.as_ref())
                    .is_some_and(|r| r.attempt == attempt);
                let completed = record.is_some_and(|r| r.epoch >= epoch);
                match (running, completed) {
                    (true, _) => None,
                    (false, true) => Some(DkgEnd::Refreshed(epoch)),
                    (false, false) => Some(DkgEnd::Abandoned(epoch)),
                }
            }
        }
    }

    /// The participant's timers, then the deadline: the command that ends
    /// the run, proposed by every node once it is due.
    pub(crate) fn on_tick(
        &mut self,
        vk: &VersionKey,
        me: NodeId,
        now: u64,
        config: &ProtocolConfig,
    ) -> Vec<Action> {
        let mut actions = match &mut self.part {
            Part::Running(g) => g.on_tick(now, config),
            _ => Vec::new(),
        };
        if self.watch.due(now, config) {
            let (name, version) = (vk.0.clone(), vk.1);
            let reason = format!("{me} saw the deadline pass");
            actions.push(Action::Propose(match self.kind {
                RunKind::Generation => Operation::FailGeneration {
                    name,
                    version,
                    reason,
                },
                RunKind::Refresh { attempt, .. } => Operation::AbandonRefresh {
                    name,
                    version,
                    attempt,
                    reason,
                },
            }));
        }
        actions
    }
}

/// The phase of the version's DKG of `session` in the replicated state.
pub(crate) fn dkg_phase(
    state: &StateMachine,
    name: &str,
    version: KeyVersion,
    session: DkgSession,
) -> Option<DkgPhase> {
    let record = state.key(name)?.version(version)?;
    match session {
        DkgSession::Generation => {
            (record.state == VersionState::Generating).then_some(record.dkg.phase)
        }
        DkgSession::Refresh { .. } => record.refresh.as_ref().map(|r| r.dkg.phase),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_end_ends_only_its_own_kind_of_run() {
        let refresh = RunKind::Refresh {
            attempt: 1,
            epoch: Epoch(1),
        };
        for end in [DkgEnd::Enabled, DkgEnd::Failed] {
            assert!(end.ends(RunKind::Generation), "{end:?}");
            assert!(!end.ends(refresh), "{end:?}");
        }
        for end in [DkgEnd::Refreshed(Epoch(1)), DkgEnd::Abandoned(Epoch(1))] {
            assert!(end.ends(refresh), "{end:?}");
            assert!(!end.ends(RunKind::Generation), "{end:?}");
        }
    }

    #[test]
    fn a_completed_refresh_erases_the_epoch_before_and_an_abandoned_one_its_own() {
        let state = StateMachine::default();
        let vk = ("k".to_string(), KeyVersion(1));
        assert_eq!(
            DkgEnd::Refreshed(Epoch(3)).erase(&state, &vk),
            Some(Epoch(2))
        );
        assert_eq!(
            DkgEnd::Abandoned(Epoch(3)).erase(&state, &vk),
            Some(Epoch(3))
        );
        assert_eq!(DkgEnd::Enabled.erase(&state, &vk), None);
        // A failed generation erases the version's epoch; no version, nothing.
        assert_eq!(DkgEnd::Failed.erase(&state, &vk), None);
    }

    #[test]
    fn every_dkg_outcome_names_its_end() {
        let epoch = Epoch(2);
        let reason = String::new();
        assert_eq!(DkgEnd::of(&Applied::VersionEnabled), Some(DkgEnd::Enabled));
        assert_eq!(
            DkgEnd::of(&Applied::GenerationFailed {
                reason: reason.clone()
            }),
            Some(DkgEnd::Failed)
        );
        assert_eq!(
            DkgEnd::of(&Applied::RefreshCompleted { epoch }),
            Some(DkgEnd::Refreshed(epoch))
        );
        assert_eq!(
            DkgEnd::of(&Applied::RefreshAbandoned { epoch, reason }),
            Some(DkgEnd::Abandoned(epoch))
        );
        assert_eq!(DkgEnd::of(&Applied::VersionDestroyed), None);
    }
}
