//! Quorumkey's quorum protocols as a sans-IO state machine, one
//! [`NodeProtocol`] per node: events in (a log entry applied, a message
//! received, a tick, an unwrap request), actions out (send, propose, persist
//! or erase a share, answer a partial request, finish an unwrap).
//!
//! Architecture invariants: no I/O, no clock (time arrives in events as
//! `now_ms`, or as the leader timestamp of a log entry), no randomness of its
//! own (a `CryptoRng` argument), `BTreeMap` everywhere so the same inputs give
//! the same outputs. Every wait is bounded by a timeout. The node and the
//! simulator drive the very same code.
//!
//! The driver must execute a `handle` call's actions **in order**, and a
//! `PersistShare` / `EraseShare` must be durable before any later action of
//! the same batch runs (a holder acks only a share it stored; it proposes an
//! erase receipt only after erasing).
#![forbid(unsafe_code)]

mod generation;
mod holder;
pub mod message;
mod unwrap;

use std::collections::BTreeMap;

use qk_crypto::{DkgSecretKey, KeyShare};
use qk_state::{
    Applied, Command, DkgPhase, DkgSession, Operation, Response, StateMachine, VersionState,
};
use qk_types::{Epoch, KeyId, KeyVersion, NodeId};
use rand_core::CryptoRng;

pub use generation::{refresh_session_id, session_id};
pub use holder::{authorize_partial, check_intent_proof, stored_share, StoredShare};
pub use message::{MessageError, OpId, PartialRequest, ProtocolMessage};
pub use unwrap::{
    answer_partial, share_index_of, Plaintext, UnwrapError, UnwrapMode, UnwrapRequest,
};

use generation::{Generation, StartDkg};
use unwrap::{PendingUnwrap, Progress};

/// Timeouts and bounds. Times are milliseconds; DKG phase timeouts count
/// from leader timestamps in the log, unwrap timeouts from `now_ms` at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolConfig {
    /// Dealing closes this long after the version was created, if not all
    /// deals were in before.
    pub dealing_timeout_ms: u64,
    /// The complaint phase ends this long after dealing closed, if not every
    /// holder posted its complaints and every complaint was answered before.
    pub complaint_timeout_ms: u64,
    /// An unwrap that has not gathered `t` partials by then fails.
    pub unwrap_timeout_ms: u64,
    /// An unwrap first asks only `t` holders (each partial costs a holder
    /// real CPU); if `t` valid partials are not in this long after the
    /// start, it asks every other holder too. A refusal, an invalid partial
    /// or a failed combination makes it ask the rest at once. Set it to 0
    /// to always ask every holder.
    pub hedge_ms: u64,
    /// Minimum gap between repeated proposals of the same timed step.
    pub retry_interval_ms: u64,
    /// Non-holders propose `FailGeneration` this long after the deadline
    /// (holders do at the deadline), so a generation whose holders are all
    /// down still ends.
    pub fail_grace_ms: u64,
    /// Unwraps in flight at this node; more are refused as busy.
    pub max_pending_unwraps: usize,
}

impl Default for ProtocolConfig {
    fn default() -> Self {
        ProtocolConfig {
            dealing_timeout_ms: qk_state::DKG_DEALING_TIMEOUT_MS,
            complaint_timeout_ms: qk_state::DKG_COMPLAINT_TIMEOUT_MS,
            unwrap_timeout_ms: 5_000,
            hedge_ms: 100,
            retry_interval_ms: 2_000,
            fail_grace_ms: 5_000,
            max_pending_unwraps: 1_024,
        }
    }
}

/// What the node feeds in.
#[derive(Debug)]
pub enum Event {
    /// A committed entry was applied; `state` (passed to `handle`) must be
    /// the state right after applying it.
    Applied {
        index: u64,
        command: Command,
        response: Response,
    },
    /// A message from an authenticated peer (self-sends come back as this).
    Message { from: NodeId, msg: ProtocolMessage },
    /// The node's clock; drives every timeout.
    Tick { now_ms: u64 },
    /// The node's API asks to unwrap (authentication already done).
    StartUnwrap { now_ms: u64, request: UnwrapRequest },
    /// The answer to [`Action::NeedShare`]: this holder's stored share of
    /// `(key, version, epoch)`, or `None` when it has none.
    ShareLoaded {
        key: KeyId,
        version: KeyVersion,
        epoch: Epoch,
        share: Option<KeyShare>,
    },
}

/// What the node must do, in order.
#[derive(Debug)]
#[non_exhaustive]
pub enum Action {
    /// Send to a peer over the mutually authenticated channel; a send to
    /// this node itself is delivered back as `Event::Message`.
    Send { to: NodeId, msg: ProtocolMessage },
    /// Propose through Raft (as principal `node-N`, this node). Losing a
    /// proposal is safe: timed steps are proposed again.
    Propose(Operation),
    /// Seal and store this share durably before running later actions.
    PersistShare {
        key: KeyId,
        name: String,
        version: KeyVersion,
        epoch: Epoch,
        share: KeyShare,
    },
    /// Overwrite and delete the share (a no-op if there is none), flushed,
    /// before running later actions.
    EraseShare {
        key: KeyId,
        name: String,
        version: KeyVersion,
        epoch: Epoch,
    },
    /// Overwrite and delete every share of the version, whatever its epoch
    /// (the current one, a refresh's new one, a stale old one), flushed,
    /// before running later actions. Destruction uses it: the erase receipt
    /// that follows promises that no share of the version is left here.
    EraseVersion {
        key: KeyId,
        name: String,
        version: KeyVersion,
    },
    /// Load the share of `request`'s version from the sealed store, call
    /// [`answer_partial`] and send its result to `to`.
    AnswerPartial { to: NodeId, request: PartialRequest },
    /// An unwrap finished. `faulty` names holders whose partial was invalid
    /// (for the audit record and metrics), also when the unwrap succeeded.
    UnwrapDone {
        op_id: OpId,
        result: Result<Plaintext, UnwrapError>,
        faulty: Vec<NodeId>,
    },
    /// Something worth logging: a faulty peer, a refused DKG message.
    Warning(String),
    /// Load this holder's share of `(key, version, epoch)` from the sealed
    /// store and hand it back as [`Event::ShareLoaded`] (with `None` if
    /// there is none). A refresh needs it to take part.
    NeedShare {
        key: KeyId,
        name: String,
        version: KeyVersion,
        epoch: Epoch,
    },
}

/// A version being generated, watched by every node so it can be failed
/// when its deadline passes.
#[derive(Debug)]
struct Watch {
    deadline_ms: u64,
    holder: bool,
    proposed_ms: Option<u64>,
}

impl Watch {
    fn new(deadline_ms: u64, holder: bool) -> Self {
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

type VersionKey = (String, KeyVersion);

/// A refresh of a version, watched by every node so it can be abandoned
/// when its deadline passes.
#[derive(Debug)]
struct RefreshWatch {
    attempt: u32,
    /// The epoch the refresh produces.
    epoch: Epoch,
    watch: Watch,
}

/// A refresh this node holds a share for, waiting for `Event::ShareLoaded`.
#[derive(Debug)]
struct AwaitingShare {
    key: KeyId,
    session: DkgSession,
    /// The epoch of the share asked for (the version's current one).
    epoch: Epoch,
    started_ms: u64,
    /// Every holder's DKG key as of the `Refresh` entry.
    receiver_keys: BTreeMap<qk_types::ShareIndex, qk_crypto::DkgPublicKey>,
    /// Steps of this refresh applied before the share was loaded, replayed
    /// in order once the participant starts.
    early_steps: Vec<EarlyStep>,
}

/// A refresh step applied while this node's share was loading.
#[derive(Debug)]
struct EarlyStep {
    from: NodeId,
    step: qk_state::DkgStep,
    time_ms: u64,
    phase: Option<DkgPhase>,
}

/// At most this many steps wait for a share to load: one deal and one
/// complaint list per holder, and a few timed closes.
const MAX_EARLY_STEPS: usize = 2 * qk_types::MAX_HOLDERS as usize + 8;

/// One node's protocol state.
#[derive(Debug)]
pub struct NodeProtocol {
    me: NodeId,
    config: ProtocolConfig,
    /// Latest time seen in a tick or request (to skip stale replays).
    now_ms: u64,
    generations: BTreeMap<VersionKey, Generation>,
    watches: BTreeMap<VersionKey, Watch>,
    /// Refresh DKGs this node takes part in.
    refreshes: BTreeMap<VersionKey, Generation>,
    refresh_watches: BTreeMap<VersionKey, RefreshWatch>,
    awaiting_share: BTreeMap<VersionKey, AwaitingShare>,
    unwraps: BTreeMap<OpId, PendingUnwrap>,
    /// Opens the DKG shares dealers seal to this node.
    dkg_key: DkgSecretKey,
}

impl NodeProtocol {
    /// `dkg_key` is this node's DKG key; its public half must be the one
    /// the node published in the state (`Operation::PublishDkgKey`).
    pub fn new(me: NodeId, config: ProtocolConfig, dkg_key: DkgSecretKey) -> Self {
        NodeProtocol {
            me,
            config,
            now_ms: 0,
            generations: BTreeMap::new(),
            watches: BTreeMap::new(),
            refreshes: BTreeMap::new(),
            refresh_watches: BTreeMap::new(),
            awaiting_share: BTreeMap::new(),
            unwraps: BTreeMap::new(),
            dkg_key,
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.me
    }

    /// DKGs this node takes part in right now.
    pub fn active_generations(&self) -> usize {
        self.generations.len() + self.refreshes.len()
    }

    /// Refresh DKGs this node takes part in right now.
    pub fn active_refreshes(&self) -> usize {
        self.refreshes.len()
    }

    /// Unwraps waiting for partials.
    pub fn pending_unwraps(&self) -> usize {
        self.unwraps.len()
    }

    /// Refresh steps kept for participants still loading their share.
    pub fn steps_waiting_for_shares(&self) -> usize {
        self.awaiting_share
            .values()
            .map(|w| w.early_steps.len())
            .sum()
    }

    /// Handles one event against the replicated state and returns the
    /// actions to run, in order.
    pub fn handle<R: CryptoRng + ?Sized>(
        &mut self,
        state: &StateMachine,
        event: Event,
        rng: &mut R,
    ) -> Vec<Action> {
        match event {
            Event::Applied {
                index: _,
                command,
                response,
            } => self.on_applied(state, &command, &response, rng),
            Event::Message { from, msg } => self.on_message(from, msg),
            Event::Tick { now_ms } => {
                self.now_ms = self.now_ms.max(now_ms);
                self.on_tick(state, now_ms)
            }
            Event::StartUnwrap { now_ms, request } => {
                self.now_ms = self.now_ms.max(now_ms);
                self.start_unwrap(state, now_ms, request)
            }
            Event::ShareLoaded {
                key,
                version,
                epoch,
                share,
            } => self.on_share_loaded(state, key, version, epoch, share, rng),
        }
    }

    fn on_applied<R: CryptoRng + ?Sized>(
        &mut self,
        state: &StateMachine,
        cmd: &Command,
        response: &Response,
        rng: &mut R,
    ) -> Vec<Action> {
        let Ok(applied) = &response.result else {
            return Vec::new();
        };
        if response.duplicate {
            return Vec::new();
        }
        match (&cmd.op, applied) {
            (Operation::CreateKey(c), Applied::KeyCreated { version, .. }) => {
                self.on_version_created(state, &c.name, *version, cmd.time_ms, rng)
            }
            (
                Operation::Rotate { name, .. } | Operation::ScheduledRotate { name, .. },
                Applied::VersionCreated { version },
            ) => self.on_version_created(state, name, *version, cmd.time_ms, rng),
            (
                Operation::Refresh { name, version, .. },
                Applied::RefreshStarted { epoch, attempt },
            ) => self.on_refresh_started(state, name, *version, *epoch, *attempt, cmd.time_ms),
            (
                Operation::Dkg {
                    name,
                    version,
                    from,
                    step,
                    session: session @ DkgSession::Refresh { epoch, .. },
                },
                outcome,
            ) => {
                let vk = (name.clone(), *version);
                let phase = refresh_phase(state, name, *version);
                let mut actions = match self.refreshes.get_mut(&vk) {
                    Some(g) if g.dkg == *session => g.on_step(*from, step, cmd.time_ms, phase, rng),
                    _ => {
                        self.keep_early_step(&vk, *session, *from, step, cmd.time_ms, phase);
                        Vec::new()
                    }
                };
                match outcome {
                    Applied::RefreshCompleted { .. } => {
                        self.end_refresh(&vk, *epoch, true, state, &mut actions)
                    }
                    Applied::RefreshAbandoned { .. } => {
                        self.end_refresh(&vk, *epoch, false, state, &mut actions)
                    }
                    _ => {}
                }
                actions
            }
            (
                Operation::AbandonRefresh { name, version, .. },
                Applied::RefreshAbandoned { epoch, .. },
            ) => {
                let mut actions = Vec::new();
                self.end_refresh(
                    &(name.clone(), *version),
                    *epoch,
                    false,
                    state,
                    &mut actions,
                );
                actions
            }
            (
                Operation::Dkg {
                    name,
                    version,
                    from,
                    step,
                    session: DkgSession::Generation,
                },
                outcome,
            ) => {
                let vk = (name.clone(), *version);
                let phase = generation_phase(state, name, *version);
                let mut actions = match self.generations.get_mut(&vk) {
                    Some(g) => g.on_step(*from, step, cmd.time_ms, phase, rng),
                    None => Vec::new(),
                };
                match outcome {
                    Applied::VersionEnabled => self.end_generation(&vk, false, state, &mut actions),
                    Applied::GenerationFailed { .. } => {
                        self.end_generation(&vk, true, state, &mut actions)
                    }
                    _ => {}
                }
                actions
            }
            (Operation::FailGeneration { name, version, .. }, _) => {
                let failed = matches!(applied, Applied::GenerationFailed { .. });
                let mut actions = Vec::new();
                self.end_generation(&(name.clone(), *version), failed, state, &mut actions);
                actions
            }
            (Operation::Destroy { name, version }, _) => self.on_destroy(state, name, *version),
            _ => Vec::new(),
        }
    }

    fn on_version_created<R: CryptoRng + ?Sized>(
        &mut self,
        state: &StateMachine,
        name: &str,
        version: KeyVersion,
        time_ms: u64,
        rng: &mut R,
    ) -> Vec<Action> {
        let Some(key) = state.key(name) else {
            return Vec::new();
        };
        let Some(record) = key.version(version) else {
            return Vec::new();
        };
        if record.state != VersionState::Generating {
            return Vec::new();
        }
        let vk = (name.to_string(), version);
        let holder = record.holders.contains(&self.me);
        self.watches.insert(
            vk.clone(),
            Watch::new(record.generation_deadline_ms, holder),
        );
        // An entry replayed long after its deadline starts nothing.
        if !holder || record.generation_deadline_ms <= self.now_ms {
            return Vec::new();
        }
        let receiver_keys = match generation::receiver_keys(state, record) {
            Ok(keys) => keys,
            Err(e) => {
                return vec![Action::Warning(format!(
                "cannot start the DKG of key {name:?} {version}: {e}; it will fail at its deadline"
            ))]
            }
        };
        let start = StartDkg {
            me: self.me,
            name,
            key: key.id,
            record,
            dkg: DkgSession::Generation,
            refresh: None,
            started_ms: time_ms,
            dkg_key: &self.dkg_key,
            receiver_keys,
        };
        match Generation::start(start, rng) {
            Ok((g, actions)) => {
                self.generations.insert(vk, g);
                actions
            }
            Err(e) => vec![Action::Warning(format!(
                "cannot start the DKG of key {name:?} {version}: {e}; it will fail at its deadline"
            ))],
        }
    }

    /// Drops a finished DKG; on failure every holder erases whatever share
    /// it may have stored (erasing a missing share is a no-op, which also
    /// covers a node that restarted mid-DKG).
    fn end_generation(
        &mut self,
        vk: &VersionKey,
        failed: bool,
        state: &StateMachine,
        actions: &mut Vec<Action>,
    ) {
        self.generations.remove(vk);
        self.watches.remove(vk);
        if !failed {
            return;
        }
        let epoch = state
            .key(&vk.0)
            .and_then(|k| k.version(vk.1))
            .map(|r| r.epoch);
        actions.extend(epoch.and_then(|e| self.erase_own_share(state, vk, e)));
    }

    /// Erases this node's share of `epoch` of the version, if it holds one.
    fn erase_own_share(
        &self,
        state: &StateMachine,
        vk: &VersionKey,
        epoch: Epoch,
    ) -> Option<Action> {
        let key = state.key(&vk.0)?;
        let record = key.version(vk.1)?;
        record
            .holders
            .contains(&self.me)
            .then(|| Action::EraseShare {
                key: key.id,
                name: vk.0.clone(),
                version: vk.1,
                epoch,
            })
    }

    /// Forgets every piece of a refresh of `vk` this node keeps.
    fn drop_refresh(&mut self, vk: &VersionKey) {
        self.refreshes.remove(vk);
        self.refresh_watches.remove(vk);
        self.awaiting_share.remove(vk);
    }

    /// A refresh started: every node watches its deadline; a holder asks
    /// the node for its current share to take part.
    fn on_refresh_started(
        &mut self,
        state: &StateMachine,
        name: &str,
        version: KeyVersion,
        epoch: Epoch,
        attempt: u32,
        time_ms: u64,
    ) -> Vec<Action> {
        let Some(key) = state.key(name) else {
            return Vec::new();
        };
        let Some(record) = key.version(version) else {
            return Vec::new();
        };
        let Some(refresh) = record.refresh.as_ref().filter(|r| r.attempt == attempt) else {
            return Vec::new();
        };
        let vk = (name.to_string(), version);
        let holder = record.holders.contains(&self.me);
        self.refreshes.remove(&vk);
        self.refresh_watches.insert(
            vk.clone(),
            RefreshWatch {
                attempt,
                epoch,
                watch: Watch::new(refresh.deadline_ms, holder),
            },
        );
        if !holder || refresh.deadline_ms <= self.now_ms {
            return Vec::new();
        }
        let receiver_keys = match generation::receiver_keys(state, record) {
            Ok(keys) => keys,
            Err(e) => {
                return vec![Action::Warning(format!(
                    "cannot refresh key {name:?} {version}: {e}; the refresh will be abandoned at its deadline"
                ))]
            }
        };
        self.awaiting_share.insert(
            vk,
            AwaitingShare {
                key: key.id,
                session: refresh.session(),
                epoch: record.epoch,
                started_ms: time_ms,
                receiver_keys,
                early_steps: Vec::new(),
            },
        );
        vec![Action::NeedShare {
            key: key.id,
            name: name.to_string(),
            version,
            epoch: record.epoch,
        }]
    }

    /// The node loaded the share a refresh needs: start its DKG.
    fn on_share_loaded<R: CryptoRng + ?Sized>(
        &mut self,
        state: &StateMachine,
        key_id: KeyId,
        version: KeyVersion,
        epoch: Epoch,
        share: Option<KeyShare>,
        rng: &mut R,
    ) -> Vec<Action> {
        let Some(vk) = self
            .awaiting_share
            .iter()
            .find(|((_, v), a)| *v == version && a.key == key_id && a.epoch == epoch)
            .map(|(vk, _)| vk.clone())
        else {
            return Vec::new(); // not asked for, or the refresh ended meanwhile
        };
        let Some(waiting) = self.awaiting_share.remove(&vk) else {
            return Vec::new();
        };
        let name = vk.0.as_str();
        let Some(key) = state.key(name) else {
            return Vec::new();
        };
        let Some(record) = key.version(version) else {
            return Vec::new();
        };
        let current = record.refresh.as_ref().map(|r| r.session());
        if current != Some(waiting.session) || record.epoch != epoch {
            return Vec::new();
        }
        let Some(share) = share else {
            return vec![Action::Warning(format!(
                "cannot refresh key {name:?} {version}: this holder has no share of epoch {}; the refresh will be abandoned at its deadline",
                epoch.0
            ))];
        };
        let old = match unwrap::version_keys(name, version, record) {
            Ok(k) => k,
            Err(e) => return vec![Action::Warning(format!("cannot refresh: {e}"))],
        };
        let start = StartDkg {
            me: self.me,
            name,
            key: key.id,
            record,
            dkg: waiting.session,
            refresh: Some((old, share)),
            started_ms: waiting.started_ms,
            dkg_key: &self.dkg_key,
            receiver_keys: waiting.receiver_keys,
        };
        match Generation::start(start, rng) {
            Ok((mut g, mut actions)) => {
                for early in waiting.early_steps {
                    actions.extend(g.on_step(
                        early.from,
                        &early.step,
                        early.time_ms,
                        early.phase,
                        rng,
                    ));
                }
                self.refreshes.insert(vk, g);
                actions
            }
            Err(e) => vec![Action::Warning(format!(
                "cannot start the refresh of key {name:?} {version}: {e}; it will be abandoned at its deadline"
            ))],
        }
    }

    /// Keeps a step of a refresh whose participant waits for its share.
    fn keep_early_step(
        &mut self,
        vk: &VersionKey,
        session: DkgSession,
        from: NodeId,
        step: &qk_state::DkgStep,
        time_ms: u64,
        phase: Option<DkgPhase>,
    ) {
        if let Some(waiting) = self
            .awaiting_share
            .get_mut(vk)
            .filter(|w| w.session == session && w.early_steps.len() < MAX_EARLY_STEPS)
        {
            waiting.early_steps.push(EarlyStep {
                from,
                step: step.clone(),
                time_ms,
                phase,
            });
        }
    }

    /// Drops a finished refresh producing `epoch`. Completed: holders erase
    /// the share of the epoch before; abandoned: the new share (erasing a
    /// missing share is a no-op).
    fn end_refresh(
        &mut self,
        vk: &VersionKey,
        epoch: Epoch,
        completed: bool,
        state: &StateMachine,
        actions: &mut Vec<Action>,
    ) {
        self.drop_refresh(vk);
        let erase = if completed {
            Epoch(epoch.0.saturating_sub(1))
        } else {
            epoch
        };
        actions.extend(self.erase_own_share(state, vk, erase));
    }

    fn on_destroy(&mut self, state: &StateMachine, name: &str, version: KeyVersion) -> Vec<Action> {
        let Some(key) = state.key(name) else {
            return Vec::new();
        };
        let Some(record) = key.version(version) else {
            return Vec::new();
        };
        if !record.holders.contains(&self.me) {
            return Vec::new();
        }
        // A refresh in progress ends here: it must not persist a new-epoch
        // share after the erase below.
        let vk = (name.to_string(), version);
        self.drop_refresh(&vk);
        vec![
            Action::EraseVersion {
                key: key.id,
                name: name.to_string(),
                version,
            },
            Action::Propose(Operation::EraseReceipt {
                name: name.to_string(),
                version,
                node: self.me,
            }),
        ]
    }

    fn on_message(&mut self, from: NodeId, msg: ProtocolMessage) -> Vec<Action> {
        match msg {
            ProtocolMessage::PartialRequest(request) => {
                vec![Action::AnswerPartial { to: from, request }]
            }
            ProtocolMessage::PartialResponse { op_id, result } => {
                let Some(pending) = self.unwraps.get_mut(&op_id) else {
                    return Vec::new(); // finished or unknown: late answers are dropped
                };
                match pending.on_response(from, result) {
                    Progress::Waiting(ask) => partial_requests(pending.request(), ask),
                    Progress::Done(result, faulty) => {
                        self.unwraps.remove(&op_id);
                        vec![Action::UnwrapDone {
                            op_id,
                            result,
                            faulty,
                        }]
                    }
                }
            }
        }
    }

    fn on_tick(&mut self, state: &StateMachine, now: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        // Versions that left `Generating` without this node seeing the entry
        // (for example after a snapshot install).
        let ended: Vec<(VersionKey, bool)> = self
            .watches
            .keys()
            .filter_map(|vk| {
                let st = state
                    .key(&vk.0)
                    .and_then(|k| k.version(vk.1))
                    .map(|r| &r.state);
                match st {
                    Some(VersionState::Generating) => None,
                    Some(VersionState::Failed { .. }) => Some((vk.clone(), true)),
                    _ => Some((vk.clone(), false)),
                }
            })
            .collect();
        for (vk, failed) in ended {
            self.end_generation(&vk, failed, state, &mut actions);
        }
        for g in self.generations.values_mut() {
            actions.extend(g.on_tick(now, &self.config));
        }
        actions.extend(self.tick_refreshes(state, now));
        for ((name, version), w) in &mut self.watches {
            if w.due(now, &self.config) {
                actions.push(Action::Propose(Operation::FailGeneration {
                    name: name.clone(),
                    version: *version,
                    reason: format!("{} saw the deadline pass", self.me),
                }));
            }
        }
        let expired: Vec<OpId> = self
            .unwraps
            .iter()
            .filter(|(_, p)| now >= p.deadline_ms)
            .map(|(id, _)| *id)
            .collect();
        for op_id in expired {
            if let Some(p) = self.unwraps.remove(&op_id) {
                actions.push(Action::UnwrapDone {
                    op_id,
                    result: Err(p.shortfall(true)),
                    faulty: p.faulty(),
                });
            }
        }
        for p in self.unwraps.values_mut() {
            let ask = p.on_tick(now);
            actions.extend(partial_requests(p.request(), ask));
        }
        actions
    }

    fn tick_refreshes(&mut self, state: &StateMachine, now: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        // Refreshes that ended without this node seeing the entry.
        let ended: Vec<(VersionKey, Epoch, bool)> = self
            .refresh_watches
            .iter()
            .filter_map(|(vk, w)| {
                let record = state.key(&vk.0).and_then(|k| k.version(vk.1));
                let running = record
                    .and_then(|r| r.refresh.as_ref())
                    .is_some_and(|r| r.attempt == w.attempt);
                let completed = record.is_some_and(|r| r.epoch >= w.epoch);
                (!running).then(|| (vk.clone(), w.epoch, completed))
            })
            .collect();
        for (vk, epoch, completed) in ended {
            self.end_refresh(&vk, epoch, completed, state, &mut actions);
        }
        for g in self.refreshes.values_mut() {
            actions.extend(g.on_tick(now, &self.config));
        }
        for ((name, version), w) in &mut self.refresh_watches {
            if w.watch.due(now, &self.config) {
                actions.push(Action::Propose(Operation::AbandonRefresh {
                    name: name.clone(),
                    version: *version,
                    attempt: w.attempt,
                    reason: format!("{} saw the deadline pass", self.me),
                }));
            }
        }
        actions
    }

    fn start_unwrap(&mut self, state: &StateMachine, now: u64, req: UnwrapRequest) -> Vec<Action> {
        let op_id = req.op_id;
        let fail = |e: UnwrapError| {
            vec![Action::UnwrapDone {
                op_id,
                result: Err(e),
                faulty: Vec::new(),
            }]
        };
        if self.unwraps.contains_key(&op_id) {
            return fail(UnwrapError::DuplicateOp(op_id));
        }
        if self.unwraps.len() >= self.config.max_pending_unwraps {
            return fail(UnwrapError::Busy(self.unwraps.len()));
        }
        let deadline = now.saturating_add(self.config.unwrap_timeout_ms);
        let hedge_at = now.saturating_add(self.config.hedge_ms);
        match PendingUnwrap::start(state, self.me, &req, hedge_at, deadline) {
            Ok((mut pending, mut ask)) => {
                if self.config.hedge_ms == 0 {
                    ask.extend(pending.on_tick(now));
                }
                let actions = partial_requests(pending.request(), ask);
                self.unwraps.insert(op_id, pending);
                actions
            }
            Err(e) => fail(e),
        }
    }
}

/// One `Send` of `request` to each of `to`, in order.
fn partial_requests(request: &PartialRequest, to: Vec<NodeId>) -> Vec<Action> {
    to.into_iter()
        .map(|to| Action::Send {
            to,
            msg: ProtocolMessage::PartialRequest(request.clone()),
        })
        .collect()
}

/// The phase of a version's generation DKG in the replicated state.
fn generation_phase(state: &StateMachine, name: &str, version: KeyVersion) -> Option<DkgPhase> {
    let record = state.key(name)?.version(version)?;
    (record.state == VersionState::Generating).then_some(record.dkg.phase)
}

/// The phase of a version's refresh DKG in the replicated state.
fn refresh_phase(state: &StateMachine, name: &str, version: KeyVersion) -> Option<DkgPhase> {
    let record = state.key(name)?.version(version)?;
    record.refresh.as_ref().map(|r| r.dkg.phase)
}
