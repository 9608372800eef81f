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
mod run;
mod unwrap;

use std::collections::BTreeMap;

use qk_crypto::{DkgPublicKey, DkgSecretKey, KeyShare};
use qk_state::{
    Applied, Command, DkgSession, KeyVersionRecord, Operation, Response, StateMachine, VersionState,
};
use qk_types::{Epoch, KeyId, KeyVersion, NodeId, Redacted, ShareIndex};
use rand_core::CryptoRng;

pub use generation::{refresh_session_id, session_id};
pub use holder::{
    authorize_partial, check_intent_proof, share_index_of, stored_share, StoredShare,
};
pub use message::{MessageError, OpId, PartialRequest, ProtocolMessage};
pub use unwrap::{holder_partial, partial_response, UnwrapError, UnwrapMode, UnwrapRequest};

use generation::{Generation, StartDkg};
use run::{AwaitingShare, DkgEnd, DkgRun, EarlyStep, Part, RunKind, VersionKey, Watch};
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
    /// [`holder_partial`] and send its [`partial_response`] to `to`.
    AnswerPartial { to: NodeId, request: PartialRequest },
    /// An unwrap finished. `faulty` names holders whose partial was invalid
    /// (for the audit record and metrics), also when the unwrap succeeded.
    UnwrapDone {
        op_id: OpId,
        result: Result<Redacted, UnwrapError>,
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

/// One node's protocol state.
#[derive(Debug)]
pub struct NodeProtocol {
    me: NodeId,
    config: ProtocolConfig,
    /// Latest time seen in a tick or request (to skip stale replays).
    now_ms: u64,
    /// The DKG of each version in generation or refresh.
    runs: BTreeMap<VersionKey, DkgRun>,
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
            runs: BTreeMap::new(),
            unwraps: BTreeMap::new(),
            dkg_key,
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.me
    }

    /// DKGs this node takes part in right now.
    pub fn active_generations(&self) -> usize {
        self.runs
            .values()
            .filter(|r| r.participant().is_some())
            .count()
    }

    /// Refresh DKGs this node takes part in right now.
    pub fn active_refreshes(&self) -> usize {
        self.runs
            .values()
            .filter_map(DkgRun::participant)
            .filter(|g| g.dkg != DkgSession::Generation)
            .count()
    }

    /// Unwraps waiting for partials.
    pub fn pending_unwraps(&self) -> usize {
        self.unwraps.len()
    }

    /// Refresh steps kept for participants still loading their share.
    pub fn steps_waiting_for_shares(&self) -> usize {
        self.runs
            .values()
            .map(|r| match &r.part {
                Part::AwaitingShare(w) => w.early_steps.len(),
                _ => 0,
            })
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
                Operation::Refresh { name, version, .. }
                | Operation::ScheduledRefresh { name, version },
                Applied::RefreshStarted { epoch, attempt },
            ) => self.on_refresh_started(state, name, *version, *epoch, *attempt, cmd.time_ms),
            (
                Operation::Dkg {
                    name,
                    version,
                    from,
                    step,
                    session,
                },
                outcome,
            ) => {
                let vk = (name.clone(), *version);
                let early = EarlyStep {
                    from: *from,
                    step: step.clone(),
                    time_ms: cmd.time_ms,
                    phase: run::dkg_phase(state, name, *version, *session),
                };
                let mut actions = match self.runs.get_mut(&vk) {
                    Some(run) => run.on_step(*session, early, rng),
                    None => Vec::new(),
                };
                if let Some(end) = DkgEnd::of(outcome) {
                    self.end_dkg(&vk, end, state, &mut actions);
                }
                actions
            }
            (
                Operation::AbandonRefresh { name, version, .. }
                | Operation::FailGeneration { name, version, .. },
                outcome,
            ) => {
                let mut actions = Vec::new();
                if let Some(end) = DkgEnd::of(outcome) {
                    self.end_dkg(&(name.clone(), *version), end, state, &mut actions);
                }
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
        let deadline_ms = record.generation_deadline_ms;
        let receiver_keys =
            match self.begin_run(state, record, &vk, RunKind::Generation, deadline_ms) {
                None => return Vec::new(),
                Some(Ok(keys)) => keys,
                Some(Err(e)) => {
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
                self.start_part(&vk, Part::Running(Box::new(g)));
                actions
            }
            Err(e) => vec![Action::Warning(format!(
                "cannot start the DKG of key {name:?} {version}: {e}; it will fail at its deadline"
            ))],
        }
    }

    /// Drops the run `end` finishes and erases the share that end leaves
    /// behind.
    fn end_dkg(
        &mut self,
        vk: &VersionKey,
        end: DkgEnd,
        state: &StateMachine,
        actions: &mut Vec<Action>,
    ) {
        if self.runs.get(vk).is_some_and(|run| end.ends(run.kind)) {
            self.runs.remove(vk);
        }
        let erase = end.erase(state, vk);
        actions.extend(erase.and_then(|epoch| self.erase_own_share(state, vk, epoch)));
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
        let kind = RunKind::Refresh { attempt, epoch };
        let receiver_keys = match self.begin_run(state, record, &vk, kind, refresh.deadline_ms) {
            None => return Vec::new(),
            Some(Ok(keys)) => keys,
            Some(Err(e)) => {
                return vec![Action::Warning(format!(
                    "cannot refresh key {name:?} {version}: {e}; the refresh will be abandoned at its deadline"
                ))]
            }
        };
        self.start_part(
            &vk,
            Part::AwaitingShare(AwaitingShare {
                key: key.id,
                session: refresh.session(),
                epoch: record.epoch,
                started_ms: time_ms,
                receiver_keys,
                early_steps: Vec::new(),
            }),
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
            .runs
            .iter()
            .find(|((_, v), run)| {
                *v == version
                    && matches!(&run.part, Part::AwaitingShare(a) if a.key == key_id && a.epoch == epoch)
            })
            .map(|(vk, _)| vk.clone())
        else {
            return Vec::new(); // not asked for, or the refresh ended meanwhile
        };
        let Some(waiting) = self.take_awaiting(&vk) else {
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
        let mut actions = Vec::new();
        if share.is_none() {
            actions.push(Action::Warning(format!(
                "this holder has no share of key {name:?} {version} epoch {}: it takes part in the refresh as a receiver only and gets a new share from the other holders",
                epoch.0
            )));
        }
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
            Ok((mut g, started)) => {
                actions.extend(started);
                for early in waiting.early_steps {
                    actions.extend(g.on_step(
                        early.from,
                        &early.step,
                        early.time_ms,
                        early.phase,
                        rng,
                    ));
                }
                self.start_part(&vk, Part::Running(Box::new(g)));
                actions
            }
            Err(e) => {
                actions.push(Action::Warning(format!(
                    "cannot start the refresh of key {name:?} {version}: {e}; it will be abandoned at its deadline"
                )));
                actions
            }
        }
    }

    /// Every node watches a new run's deadline; a holder still in time gets
    /// every holder's DKG key to take part, or why it cannot. `None`: this
    /// node only watches (an entry replayed after its deadline starts
    /// nothing).
    fn begin_run(
        &mut self,
        state: &StateMachine,
        record: &KeyVersionRecord,
        vk: &VersionKey,
        kind: RunKind,
        deadline_ms: u64,
    ) -> Option<Result<BTreeMap<ShareIndex, DkgPublicKey>, String>> {
        let holder = record.holders.contains(&self.me);
        let watch = Watch::new(deadline_ms, holder);
        let part = Part::Watcher;
        self.runs.insert(vk.clone(), DkgRun { kind, watch, part });
        if !holder || deadline_ms <= self.now_ms {
            return None;
        }
        Some(generation::receiver_keys(state, record))
    }

    /// This node's part in the run of `vk` begins (or moves on).
    fn start_part(&mut self, vk: &VersionKey, part: Part) {
        if let Some(run) = self.runs.get_mut(vk) {
            run.part = part;
        }
    }

    /// The refresh of `vk` stops waiting for this node's share.
    fn take_awaiting(&mut self, vk: &VersionKey) -> Option<AwaitingShare> {
        let run = self.runs.get_mut(vk)?;
        match std::mem::replace(&mut run.part, Part::Watcher) {
            Part::AwaitingShare(waiting) => Some(waiting),
            other => {
                run.part = other;
                None
            }
        }
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
        if self
            .runs
            .get(&vk)
            .is_some_and(|run| run.kind != RunKind::Generation)
        {
            self.runs.remove(&vk);
        }
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
        let ended: Vec<(VersionKey, DkgEnd)> = self
            .runs
            .iter()
            .filter_map(|(vk, run)| Some((vk.clone(), run.ended_in(state, vk)?)))
            .collect();
        for (vk, end) in ended {
            self.end_dkg(&vk, end, state, &mut actions);
        }
        for (vk, run) in &mut self.runs {
            actions.extend(run.on_tick(vk, self.me, now, &self.config));
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
