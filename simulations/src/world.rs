//! The simulated cluster's synchronous state: nodes, the simulated network,
//! disks and clock, the workload, the fault plan and the invariant checker.
//! Everything here runs without awaiting; openraft runs in tokio tasks on the
//! same (paused-clock, current-thread) runtime and calls in through the apply
//! hook and the network.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, Weak};

use k256::{ProjectivePoint, Scalar};
use qk_crypto::{wrap, EncryptionContext, KeyShare, PublicKeySet};
use qk_protocol::{
    answer_partial, Action, Event, KeyAccess, NodeProtocol, OpId, ProtocolConfig, ProtocolMessage,
    UnwrapMode, UnwrapRequest,
};
use qk_raft::{Batch, QkNode, Raft};
use qk_state::{
    verify_chain, Command, CreateKey, DkgStep, KeyRecord, Operation, RequestId, StateMachine,
    VersionState, GENESIS_HASH,
};
use qk_types::{Epoch, KeyId, KeyVersion, NodeId};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::storage::{Applied, Hook, RaftDisk, SharedDisk};
use crate::{PlantedBug, SimConfig, Stats};

/// Simulated milliseconds at the start of every run (timestamps are never 0).
pub(crate) const EPOCH_MS: u64 = 1_000;

pub(crate) type ShareKey = (KeyId, KeyVersion, Epoch);

#[derive(Debug)]
pub(crate) struct InFlight {
    expected: Option<Vec<u8>>,
    byz_partial_delivered: bool,
}

pub(crate) struct SimNode {
    pub(crate) proto: NodeProtocol,
    pub(crate) raft: Option<Raft>,
    pub(crate) sm: Option<crate::storage::MemSm>,
    /// The node's Raft disk (log, vote, snapshot): survives a crash.
    pub(crate) raft_disk: SharedDisk,
    /// The simulated sealed-share store (survives a crash, not disk loss).
    pub(crate) disk: BTreeMap<ShareKey, Vec<u8>>,
    pub(crate) alive: bool,
    /// Entries at or below this index were in the local log at (re)start:
    /// replays the protocol does not react to (as in the node).
    pub(crate) replay_upto: u64,
    audit_verified: u64,
    inflight: BTreeMap<OpId, InFlight>,
    pub(crate) skew_ms: u64,
    pub(crate) election_timeout_ms: u64,
    /// Commands waiting for this node's proposer, with their forward count.
    outbox: Vec<(Command, u8)>,
    batches_in_flight: usize,
    /// How long this node's disk takes to flush an append.
    fsync_ms: u64,
    /// Cleared when the current incarnation crashes (stops its flusher).
    incarnation: Arc<std::sync::atomic::AtomicBool>,
    /// The current incarnation's unflushed log entries.
    unflushed: Option<crate::storage::Pending>,
    /// DKG sessions in which this (honest) node received a corrupted share
    /// from the Byzantine dealer, and has not crashed since.
    corrupt_from_byz: BTreeSet<(String, KeyVersion)>,
}

impl std::fmt::Debug for SimNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimNode")
            .field("alive", &self.alive)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub(crate) enum Ev {
    Deliver {
        from: NodeId,
        to: NodeId,
        bytes: Vec<u8>,
    },
    Tick,
    Workload,
    Fault,
    Restart(NodeId),
    Heal,
}

/// Work a step asks the async driver to do (it needs to await).
#[derive(Debug)]
pub(crate) enum Job {
    Crash(NodeId),
    Start(NodeId),
}

#[derive(Debug)]
pub(crate) struct Wrapped {
    pub(crate) name: String,
    pub(crate) ciphertext: Vec<u8>,
    pub(crate) plaintext: Vec<u8>,
}

fn ctx() -> EncryptionContext {
    BTreeMap::from([("tenant".to_string(), "sim".to_string())])
}

fn contains(hay: &[u8], needle: &[u8; 32]) -> bool {
    hay.len() >= 32 && hay.windows(32).any(|w| w == needle)
}

pub(crate) struct World {
    pub(crate) cfg: SimConfig,
    pub(crate) rng: StdRng,
    pub(crate) start: Instant,
    pub(crate) this: Weak<Mutex<World>>,
    pub(crate) notify: Arc<Notify>,
    seq: u64,
    pub(crate) queue: BTreeMap<(u64, u64), Ev>,
    pub(crate) nodes: BTreeMap<NodeId, SimNode>,
    /// Hash of each log entry, index 1 first, as the first node applied it.
    canon: Vec<[u8; 32]>,
    /// The node whose apply extended `canon` last (its commands feed `truth`).
    extender: Option<NodeId>,
    /// The state after every applied entry of the agreed log.
    pub(crate) truth: StateMachine,
    blocked: BTreeSet<(NodeId, NodeId)>,
    loss_per_mille: u32,
    dup_per_mille: u32,
    next_request: u64,
    pub(crate) next_op: OpId,
    trace: Sha256,
    pub(crate) stats: Stats,
    pub(crate) step: u64,
    roots: BTreeMap<ShareKey, [u8; 32]>,
    decoys: BTreeMap<(KeyId, KeyVersion), Vec<u8>>,
    pub(crate) wrapped: Vec<Wrapped>,
    key_names: Vec<String>,
    pub(crate) byzantine: Option<NodeId>,
    pub(crate) probe: BTreeMap<(NodeId, OpId), Result<Vec<u8>, String>>,
    pub(crate) violation: Option<String>,
    due_destroy: Vec<(String, KeyVersion, u64)>,
    pub(crate) workload_on: bool,
    pub(crate) pending_proposals: u64,
    /// Jobs for the driver (crashes and starts need to await).
    pub(crate) jobs: Vec<Job>,
    /// Ops of unwraps the scale study waits for, with their start time.
    pub(crate) done_at: BTreeMap<(NodeId, OpId), u64>,
    /// Messages and log entries counted for the scale study.
    pub(crate) refresh_done: BTreeMap<(String, KeyVersion), u64>,
    /// When each version left `Generating` (enabled or failed).
    pub(crate) settled_at: BTreeMap<(String, KeyVersion), u64>,
    /// Every DKG share sent, searched again whenever a new root is learned
    /// (roots are known only once a version is enabled).
    dkg_messages: Vec<Vec<u8>>,
    /// Each unwrap's ciphertext and the caller's context, by (combining
    /// node, op): the checker verifies `π` for every partial returned.
    unwrap_requests: BTreeMap<(NodeId, OpId), (Vec<u8>, EncryptionContext)>,
    /// `A_0` of every generation deal in the agreed log, by version.
    deals: BTreeMap<(String, KeyVersion), Vec<(NodeId, ProjectivePoint)>>,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("seed", &self.cfg.seed)
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

impl World {
    pub(crate) fn new(cfg: SimConfig, this: Weak<Mutex<World>>) -> Self {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        // Election timeouts well above the heartbeat (2 x max delay + 100 ms).
        let heartbeat_ms = 2 * cfg.net.max_delay_ms + 100;
        let (el_min, el_max) = (4 * heartbeat_ms, 8 * heartbeat_ms);
        let nodes = (1..=cfg.nodes)
            .map(|i| {
                let skew_ms = if cfg.faults {
                    rng.random_range(0..200)
                } else {
                    0
                };
                let election_timeout_ms = rng.random_range(el_min..el_max);
                let fsync_ms = rng.random_range(1..=3);
                let node = SimNode {
                    proto: NodeProtocol::new(NodeId(i), ProtocolConfig::default()),
                    raft: None,
                    sm: None,
                    raft_disk: SharedDisk::default(),
                    disk: BTreeMap::new(),
                    alive: false,
                    replay_upto: 0,
                    audit_verified: 0,
                    inflight: BTreeMap::new(),
                    skew_ms,
                    election_timeout_ms,
                    fsync_ms,
                    outbox: Vec::new(),
                    batches_in_flight: 0,
                    incarnation: Arc::default(),
                    unflushed: None,
                    corrupt_from_byz: BTreeSet::new(),
                };
                (NodeId(i), node)
            })
            .collect();
        let byzantine =
            (cfg.byzantine && cfg.nodes > u64::from(cfg.threshold)).then_some(NodeId(cfg.nodes));
        let (loss, dup) = if cfg.faults { (20, 20) } else { (0, 0) };
        World {
            rng,
            start: Instant::now(),
            this,
            notify: Arc::new(Notify::new()),
            seq: 0,
            queue: BTreeMap::new(),
            nodes,
            canon: Vec::new(),
            extender: None,
            truth: StateMachine::new(),
            blocked: BTreeSet::new(),
            loss_per_mille: loss,
            dup_per_mille: dup,
            next_request: 0,
            next_op: 0,
            trace: Sha256::new(),
            stats: Stats::default(),
            step: 0,
            roots: BTreeMap::new(),
            decoys: BTreeMap::new(),
            wrapped: Vec::new(),
            key_names: Vec::new(),
            byzantine,
            probe: BTreeMap::new(),
            violation: None,
            due_destroy: Vec::new(),
            workload_on: true,
            pending_proposals: 0,
            jobs: Vec::new(),
            done_at: BTreeMap::new(),
            refresh_done: BTreeMap::new(),
            deals: BTreeMap::new(),
            dkg_messages: Vec::new(),
            settled_at: BTreeMap::new(),
            unwrap_requests: BTreeMap::new(),
            cfg,
        }
    }

    /// Simulated milliseconds (the paused tokio clock).
    pub(crate) fn now(&self) -> u64 {
        EPOCH_MS + (Instant::now() - self.start).as_millis() as u64
    }

    pub(crate) fn schedule(&mut self, delay: u64, ev: Ev) {
        self.seq += 1;
        let at = self.now() + delay;
        self.queue.insert((at, self.seq), ev);
        self.notify.notify_one();
    }

    pub(crate) fn fail(&mut self, what: String) {
        if self.violation.is_none() {
            self.violation = Some(what);
        }
    }

    pub(crate) fn trace(&mut self, what: &str, bytes: &[u8]) {
        self.trace.update((what.len() as u64).to_be_bytes());
        self.trace.update(what.as_bytes());
        self.trace.update((bytes.len() as u64).to_be_bytes());
        self.trace.update(bytes);
    }

    pub(crate) fn trace_hash(&self) -> [u8; 32] {
        self.trace.clone().finalize().into()
    }

    pub(crate) fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    pub(crate) fn live_ids(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.alive)
            .map(|(id, _)| *id)
            .collect()
    }

    pub(crate) fn heal(&mut self) {
        self.blocked.clear();
    }

    pub(crate) fn set_loss(&mut self, loss: u32, dup: u32) -> (u32, u32) {
        let old = (self.loss_per_mille, self.dup_per_mille);
        self.loss_per_mille = loss;
        self.dup_per_mille = dup;
        old
    }

    /// The apply hook of node `id`, as the node installs its own.
    pub(crate) fn hook(&self, id: NodeId) -> Hook {
        let world = self.this.clone();
        Box::new(move |applied| {
            let Some(world) = world.upgrade() else {
                return;
            };
            let Ok(mut w) = world.lock() else {
                return;
            };
            match applied {
                Applied::Entry { index, hash } => w.on_entry(id, index, hash),
                Applied::Command {
                    state,
                    index,
                    command,
                    response,
                } => w.on_command(id, state, index, command, response),
            }
        })
    }

    // ---- the network -------------------------------------------------

    /// Decides the fate of one message from `from` to `to`: its delay, or
    /// `None` if it is lost (partition, loss, dead receiver).
    pub(crate) fn link(&mut self, from: NodeId, to: NodeId) -> Option<u64> {
        if from == to {
            return Some(0);
        }
        if self.blocked.contains(&(from, to))
            || self.rng.random_range(0..1000) < self.loss_per_mille
        {
            return None;
        }
        Some(
            self.rng
                .random_range(self.cfg.net.min_delay_ms..=self.cfg.net.max_delay_ms),
        )
    }

    /// The Raft of `to` if a message from `from` reaches it now.
    pub(crate) fn reachable_raft(&self, from: NodeId, to: NodeId) -> Option<Raft> {
        let node = self.nodes.get(&to)?;
        if !node.alive || self.blocked.contains(&(from, to)) {
            return None;
        }
        node.raft.clone()
    }

    fn send(&mut self, from: NodeId, to: NodeId, bytes: Vec<u8>, dkg: bool) {
        self.stats.messages_sent += 1;
        self.check_secret_free("sent message", &bytes);
        if dkg {
            self.dkg_messages.push(bytes.clone());
        }
        if from == to {
            self.schedule(0, Ev::Deliver { from, to, bytes });
            return;
        }
        let Some(d) = self.link(from, to) else {
            self.stats.messages_lost += 1;
            return;
        };
        if self.rng.random_range(0..1000) < self.dup_per_mille {
            let d2 = self
                .rng
                .random_range(self.cfg.net.min_delay_ms..=self.cfg.net.max_delay_ms);
            let copy = bytes.clone();
            self.schedule(
                d2,
                Ev::Deliver {
                    from,
                    to,
                    bytes: copy,
                },
            );
        }
        self.schedule(d, Ev::Deliver { from, to, bytes });
    }

    fn deliver(&mut self, from: NodeId, to: NodeId, bytes: Vec<u8>) {
        let alive = self.nodes.get(&to).is_some_and(|n| n.alive);
        if !alive || self.blocked.contains(&(from, to)) {
            self.stats.messages_lost += 1;
            return;
        }
        self.check_secret_free("delivered message", &bytes);
        self.stats.messages_delivered += 1;
        let now = self.now();
        self.trace(&format!("deliver {from}->{to}@{now}"), &bytes);
        let msg = match ProtocolMessage::decode(&bytes) {
            Ok(m) => m,
            Err(e) => {
                self.fail(format!("message from {from} to {to} does not decode: {e}"));
                return;
            }
        };
        if let ProtocolMessage::PartialResponse {
            op_id,
            result: Ok(_),
        } = &msg
        {
            self.check_partial_allowed(from, to, *op_id);
            if Some(from) == self.byzantine {
                if let Some(f) = self
                    .nodes
                    .get_mut(&to)
                    .and_then(|n| n.inflight.get_mut(op_id))
                {
                    f.byz_partial_delivered = true;
                }
            }
        }
        if let ProtocolMessage::DkgShare(s) = &msg {
            self.note_corrupt_share(from, to, s.expose());
        }
        self.drive(to, Event::Message { from, msg });
    }

    /// A holder returned a partial for unwrap `op_id` of node `to`: the
    /// ciphertext's proof must verify under the caller's context (else the
    /// holder decrypted an `R` moved from another ciphertext).
    fn check_partial_allowed(&mut self, holder: NodeId, to: NodeId, op_id: OpId) {
        let Some((ct, context)) = self.unwrap_requests.get(&(to, op_id)) else {
            return;
        };
        let verifies = qk_crypto::Ciphertext::from_bytes(ct)
            .ok()
            .is_some_and(|c| c.verify(context).is_ok());
        if !verifies {
            self.fail(format!(
                "{holder} returned a partial for unwrap {op_id} of {to}, whose ciphertext proof does not verify under the caller's context"
            ));
        }
    }

    /// Remembers that honest `to` got a wrong DKG share from the Byzantine
    /// dealer (it then must disqualify it, if it finishes).
    fn note_corrupt_share(&mut self, from: NodeId, to: NodeId, bytes: &[u8]) {
        if Some(from) != self.byzantine || from == to {
            return;
        }
        let Ok(share) = qk_crypto::PrivateShare::from_secret_bytes(bytes) else {
            return;
        };
        let session = share.session_id;
        let found = self.truth.keys().find_map(|k| {
            k.versions.iter().find_map(|v| {
                (qk_protocol::session_id(k.id, v.version, v.epoch) == session)
                    .then(|| (k.name.clone(), v.version))
            })
        });
        if let (Some(vk), Some(n)) = (found, self.nodes.get_mut(&to)) {
            n.corrupt_from_byz.insert(vk);
        }
    }

    // ---- proposals through openraft ---------------------------------

    /// Proposes `op` through Raft: at `proposer` (a node's own proposal)
    /// or, for the workload's admin client, at a random live node.
    pub(crate) fn propose(&mut self, principal: String, op: Operation, proposer: Option<NodeId>) {
        let live = self.live_ids();
        let at = match proposer {
            Some(p) => p,
            None if live.is_empty() => return,
            None => live[self.rng.random_range(0..live.len())],
        };
        self.next_request += 1;
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.cfg.seed.to_be_bytes());
        id[8..].copy_from_slice(&self.next_request.to_be_bytes());
        let cmd = Command {
            request_id: RequestId(id),
            time_ms: 0,
            principal,
            op,
        };
        self.pending_proposals += 1;
        self.enqueue(at, vec![(cmd, 0)]);
    }

    /// Queues commands at node `at`'s proposer (group commit, as the
    /// node's `Proposer`: up to [`MAX_IN_FLIGHT_BATCHES`] entries being
    /// committed, everything queued meanwhile goes into the next one).
    fn enqueue(&mut self, at: NodeId, cmds: Vec<(Command, u8)>) {
        let Some(node) = self.nodes.get_mut(&at).filter(|n| n.alive) else {
            self.pending_proposals -= cmds.len() as u64;
            return;
        };
        node.outbox.extend(cmds);
        self.pump(at);
    }

    fn pump(&mut self, at: NodeId) {
        let Some(world) = self.this.upgrade() else {
            return;
        };
        let now = self.clock_of(at);
        let Some(node) = self.nodes.get_mut(&at) else {
            return;
        };
        while node.batches_in_flight < MAX_IN_FLIGHT_BATCHES && !node.outbox.is_empty() {
            let take = node.outbox.len().min(MAX_BATCH_COMMANDS);
            let mut batch: Vec<(Command, u8)> = node.outbox.drain(..take).collect();
            // The node that proposes stamps the time (the leader re-stamps
            // forwarded writes, as the node's write path does).
            for (cmd, _) in &mut batch {
                cmd.time_ms = now;
            }
            let Some(raft) = node.raft.clone() else {
                node.outbox.clear();
                return;
            };
            node.batches_in_flight += 1;
            self.stats.batches += 1;
            let world = world.clone();
            tokio::spawn(async move { write_batch(&world, raft, at, batch).await });
        }
    }

    /// A batch written at `at` finished: done, lost, or to be forwarded
    /// (each command at most twice) to the leader over the network.
    fn batch_written(&mut self, at: NodeId, batch: Vec<(Command, u8)>, leader: Option<NodeId>) {
        if let Some(n) = self.nodes.get_mut(&at) {
            n.batches_in_flight = n.batches_in_flight.saturating_sub(1);
        }
        let (forward, dropped): (Vec<_>, Vec<_>) = match leader {
            Some(_) => batch.into_iter().partition(|(_, hops)| *hops < 2),
            None => (Vec::new(), batch),
        };
        self.pending_proposals -= dropped.len() as u64;
        if let (Some(l), false) = (leader, forward.is_empty()) {
            match self.link(at, l) {
                Some(d) => {
                    self.stats.forwards += forward.len() as u64;
                    let cmds = forward.into_iter().map(|(c, h)| (c, h + 1)).collect();
                    if let Some(world) = self.this.upgrade() {
                        tokio::spawn(async move {
                            tokio::time::sleep(std::time::Duration::from_millis(d)).await;
                            if let Ok(mut w) = world.lock() {
                                w.enqueue(l, cmds);
                            }
                        });
                    }
                }
                None => self.pending_proposals -= forward.len() as u64,
            }
        }
        self.pump(at);
    }

    /// The time a node's clock shows.
    pub(crate) fn clock_of(&self, id: NodeId) -> u64 {
        self.now() + self.nodes.get(&id).map_or(0, |n| n.skew_ms)
    }

    // ---- applies (called from the state machine's hook) -------------

    /// Entry `index` (0-based, as openraft counts) applied at node `id`:
    /// the first node to apply an index fixes it; every other must agree.
    fn on_entry(&mut self, id: NodeId, index: u64, hash: [u8; 32]) {
        self.trace(&format!("apply {id} {index}"), &hash);
        let i = index as usize;
        if i < self.canon.len() {
            if self.canon[i] != hash {
                self.fail(format!(
                    "{id} applied a different entry at index {index} than other nodes did"
                ));
            }
            self.extender = None;
        } else if i == self.canon.len() {
            self.canon.push(hash);
            self.extender = Some(id);
            self.stats.commits += 1;
        } else {
            self.fail(format!(
                "{id} applied index {index} but only {} entries were ever applied",
                self.canon.len()
            ));
        }
    }

    fn on_command(
        &mut self,
        id: NodeId,
        state: &StateMachine,
        index: u64,
        cmd: &Command,
        response: &qk_state::Response,
    ) {
        if self.extender == Some(id) && index as usize + 1 == self.canon.len() {
            let resp = self.truth.apply(cmd);
            self.stats.commands += 1;
            self.note_deal(cmd);
            if let Ok(a) = &resp.result {
                match a {
                    qk_state::Applied::VersionEnabled => {
                        self.stats.versions_enabled += 1;
                        self.note_settled(cmd);
                        self.check_dkg_blame(cmd);
                    }
                    qk_state::Applied::VersionDestroyed => self.stats.versions_destroyed += 1,
                    qk_state::Applied::GenerationFailed { .. } => self.note_settled(cmd),
                    qk_state::Applied::RefreshCompleted { .. } => {
                        self.stats.refreshes_completed += 1;
                        if let Operation::Dkg { name, version, .. } = &cmd.op {
                            let now = self.now();
                            self.refresh_done.insert((name.clone(), *version), now);
                        }
                    }
                    _ => {}
                }
            }
        }
        let Some(node) = self.nodes.get(&id) else {
            return;
        };
        if !node.alive || index <= node.replay_upto {
            return;
        }
        let event = Event::Applied {
            index,
            command: cmd.clone(),
            response: response.clone(),
        };
        self.drive_with(id, state, event);
    }

    /// When a version is enabled after the Byzantine dealer sent wrong
    /// shares to honest holders: the public key must be the sum of the
    /// `A_0` of some set of dealers (QUAL) that leaves the Byzantine one out.
    fn check_dkg_blame(&mut self, cmd: &Command) {
        let Operation::Dkg { name, version, .. } = &cmd.op else {
            return;
        };
        let Some(byz) = self.byzantine else { return };
        let vk = (name.clone(), *version);
        let receivers: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(id, n)| **id != byz && n.corrupt_from_byz.contains(&vk))
            .map(|(id, _)| *id)
            .collect();
        let deals = self.deals.get(&vk).cloned().unwrap_or_default();
        // Subsets are enumerated: only for small holder sets.
        if receivers.is_empty() || deals.len() > 12 {
            return;
        }
        self.stats.dkg_byzantine_sessions += 1;
        let Some(pk) = self
            .truth
            .key(name)
            .and_then(|k| k.version(*version))
            .and_then(|v| v.public_keys.clone())
            .and_then(|b| PublicKeySet::from_bytes(&b).ok())
        else {
            return;
        };
        let x = ProjectivePoint::from(pk.public_key());
        let qual = (1u32..(1 << deals.len())).find(|mask| {
            let sum = deals
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .fold(ProjectivePoint::IDENTITY, |acc, (_, (_, a0))| acc + a0);
            sum == x
        });
        let Some(mask) = qual else {
            self.fail(format!(
                "the public key of {name:?} {version} is not the sum of any set of posted deals"
            ));
            return;
        };
        let in_qual = deals
            .iter()
            .enumerate()
            .any(|(i, (from, _))| *from == byz && mask & (1 << i) != 0);
        if in_qual {
            self.fail(format!(
                "version {version} of {name:?} was enabled with the Byzantine dealer {byz} in QUAL, although {receivers:?} received wrong shares from it and complained"
            ));
        } else {
            self.stats.dkg_byzantine_blamed += 1;
        }
    }

    /// When a version left `Generating` (for the scale study).
    fn note_settled(&mut self, cmd: &Command) {
        let vk = match &cmd.op {
            Operation::Dkg { name, version, .. }
            | Operation::FailGeneration { name, version, .. }
            | Operation::CompleteGeneration { name, version, .. } => (name.clone(), *version),
            _ => return,
        };
        let now = self.now();
        self.settled_at.entry(vk).or_insert(now);
    }

    /// Records the `A_0` of each generation deal the agreed log accepts.
    fn note_deal(&mut self, cmd: &Command) {
        let Operation::Dkg {
            name,
            version,
            from,
            step: DkgStep::Deal(bytes),
            session: qk_state::DkgSession::Generation,
        } = &cmd.op
        else {
            return;
        };
        if let Ok(qk_crypto::PublicMessage::Deal(d)) = qk_crypto::PublicMessage::from_bytes(bytes) {
            if let Some(a0) = d.commitments.first() {
                let list = self.deals.entry((name.clone(), *version)).or_default();
                if !list.iter().any(|(f, _)| f == from) {
                    list.push((*from, ProjectivePoint::from(*a0)));
                }
            }
        }
    }
}

/// Largest number of batches a node's proposer commits at once.
const MAX_IN_FLIGHT_BATCHES: usize = 2;
/// Upper bound on the commands of one entry.
const MAX_BATCH_COMMANDS: usize = 1024;

/// Writes one batch as one Raft entry at `at`.
async fn write_batch(world: &Arc<Mutex<World>>, raft: Raft, at: NodeId, batch: Vec<(Command, u8)>) {
    let cmds = batch.iter().map(|(c, _)| c.clone()).collect();
    let leader = match raft.client_write(Batch(cmds)).await {
        Ok(_) => {
            if let Ok(mut w) = world.lock() {
                w.pending_proposals -= batch.len() as u64;
                w.batch_written(at, Vec::new(), None);
            }
            return;
        }
        Err(e) => e
            .forward_to_leader()
            .and_then(|f| f.leader_id)
            .map(NodeId)
            .filter(|l| *l != at),
    };
    if let Ok(mut w) = world.lock() {
        w.batch_written(at, batch, leader);
    }
}

/// The member map every node starts with.
pub(crate) fn members(n: u64) -> BTreeMap<u64, QkNode> {
    (1..=n)
        .map(|i| {
            (
                i,
                QkNode {
                    rpc_addr: format!("sim-node-{i}"),
                    api_url: String::new(),
                },
            )
        })
        .collect()
}

pub(crate) fn new_disk() -> SharedDisk {
    Arc::new(Mutex::new(RaftDisk::default()))
}

impl World {
    // ---- driving the protocol ------------------------------------------

    /// Feeds `event` to node `id`'s protocol against its applied state.
    pub(crate) fn drive(&mut self, id: NodeId, event: Event) {
        let Some(sm) = self.nodes.get(&id).and_then(|n| n.sm.clone()) else {
            return;
        };
        sm.read(|a| self.drive_with(id, a.machine(), event));
    }

    pub(crate) fn drive_with(&mut self, id: NodeId, state: &StateMachine, event: Event) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let actions = node.proto.handle(state, event, &mut self.rng);
        self.run_actions(id, actions, state);
    }

    fn run_actions(&mut self, id: NodeId, actions: Vec<Action>, state: &StateMachine) {
        let byz = Some(id) == self.byzantine;
        for action in actions {
            self.trace(&format!("action {id}"), format!("{action:?}").as_bytes());
            match action {
                Action::Send { to, msg } => match msg.encode() {
                    Ok(bytes) => {
                        let mut bytes = bytes.to_vec();
                        let dkg = matches!(msg, ProtocolMessage::DkgShare(_));
                        if byz && to != id && dkg {
                            corrupt_dkg_share(&mut bytes);
                        }
                        self.send(id, to, bytes, dkg)
                    }
                    Err(e) => self.fail(format!("{id} produced an unencodable message: {e}")),
                },
                Action::Propose(Operation::Dkg {
                    step: DkgStep::Justification(_),
                    ..
                }) if byz => {
                    // A Byzantine dealer does not answer complaints.
                }
                Action::Propose(op) => self.propose(id.to_string(), op, Some(id)),
                Action::PersistShare {
                    key,
                    version,
                    epoch,
                    share,
                    ..
                } => {
                    let bytes = share.to_secret_bytes().to_vec();
                    if let Some(n) = self.nodes.get_mut(&id) {
                        n.disk.insert((key, version, epoch), bytes);
                    }
                }
                Action::EraseShare {
                    key,
                    version,
                    epoch,
                    ..
                } => {
                    if self.cfg.bug != PlantedBug::IgnoreErase {
                        if let Some(n) = self.nodes.get_mut(&id) {
                            n.disk.remove(&(key, version, epoch));
                        }
                    }
                }
                Action::EraseVersion { key, version, .. } => {
                    if self.cfg.bug != PlantedBug::IgnoreErase {
                        if let Some(n) = self.nodes.get_mut(&id) {
                            n.disk.retain(|(k, v, _), _| (*k, *v) != (key, version));
                        }
                    }
                }
                Action::AnswerPartial { to, request } => self.answer(id, to, request, state),
                Action::UnwrapDone {
                    op_id,
                    result,
                    faulty,
                } => self.unwrap_done(id, op_id, result.map(|p| p.expose().to_vec()), faulty),
                Action::NeedShare {
                    key,
                    version,
                    epoch,
                    ..
                } => {
                    let share = self
                        .nodes
                        .get(&id)
                        .and_then(|n| n.disk.get(&(key, version, epoch)))
                        .and_then(|b| KeyShare::from_secret_bytes(b).ok());
                    let event = Event::ShareLoaded {
                        key,
                        version,
                        epoch,
                        share,
                    };
                    self.drive_with(id, state, event);
                }
                Action::Warning(_) => {}
                other => self.fail(format!("{id} produced an unknown action {other:?}")),
            }
        }
    }

    fn answer(
        &mut self,
        id: NodeId,
        to: NodeId,
        request: qk_protocol::PartialRequest,
        state: &StateMachine,
    ) {
        let byz = Some(id) == self.byzantine;
        let epoch = state
            .key(&request.name)
            .and_then(|k| k.version(request.version))
            .map(|v| v.epoch)
            .unwrap_or_default();
        let share = self
            .nodes
            .get(&id)
            .and_then(|n| n.disk.get(&(request.key, request.version, epoch)))
            .and_then(|b| KeyShare::from_secret_bytes(b).ok());
        let mut req = request.clone();
        if self.cfg.bug == PlantedBug::SkipProofCheck && !byz {
            // The bug: the holder checks `π` against the context the key's
            // ciphertexts are made with, not the caller's.
            req.context = ctx();
        }
        if byz {
            // A wrong partial that still decodes: computed for another
            // ciphertext of the same version.
            if let Some(decoy) = self.decoy(&request.name, request.version) {
                req.ciphertext = decoy;
            }
        }
        let mut reply = answer_partial(
            state,
            id,
            share.as_ref(),
            &req,
            |_p: &str, _k: &KeyRecord, _a: KeyAccess| Ok(()),
            &mut self.rng,
        );
        if let ProtocolMessage::PartialResponse { op_id, .. } = &mut reply {
            *op_id = request.op_id;
        }
        match reply.encode() {
            Ok(bytes) => self.send(id, to, bytes.to_vec(), false),
            Err(e) => self.fail(format!("{id}'s partial response does not encode: {e}")),
        }
    }

    fn decoy(&mut self, name: &str, version: KeyVersion) -> Option<Vec<u8>> {
        let id = self.truth.key(name)?.id;
        if let Some(d) = self.decoys.get(&(id, version)) {
            return Some(d.clone());
        }
        let ct = self.wrap_bytes(name, version, b"decoy")?;
        self.decoys.insert((id, version), ct.clone());
        Some(ct)
    }

    /// `plaintext` wrapped under `name` `version` with the workload's context.
    fn wrap_bytes(&mut self, name: &str, version: KeyVersion, plaintext: &[u8]) -> Option<Vec<u8>> {
        let key = self.truth.key(name)?;
        let id = key.id;
        let keys = PublicKeySet::from_bytes(key.version(version)?.public_keys.as_deref()?).ok()?;
        let ct = wrap(
            &mut self.rng,
            &keys.public_key(),
            id,
            version,
            &ctx(),
            plaintext,
        )
        .ok()?;
        Some(ct.to_bytes())
    }

    fn unwrap_done(
        &mut self,
        id: NodeId,
        op_id: OpId,
        result: Result<Vec<u8>, qk_protocol::UnwrapError>,
        faulty: Vec<NodeId>,
    ) {
        let byz = self.byzantine;
        if let Some(f) = faulty.iter().find(|f| Some(**f) != byz) {
            self.fail(format!(
                "unwrap {op_id} at {id} blamed honest holder {f} (faulty: {faulty:?})"
            ));
        }
        let flight = self
            .nodes
            .get_mut(&id)
            .and_then(|n| n.inflight.remove(&op_id));
        if let Some(b) = byz {
            if faulty.contains(&b) {
                self.stats.byzantine_blamed += 1;
            }
        }
        self.unwrap_requests.remove(&(id, op_id));
        if let Some(flight) = &flight {
            match (&result, &flight.expected) {
                (Ok(p), Some(exp)) if p != exp => {
                    self.fail(format!("unwrap {op_id} at {id} returned a wrong plaintext"));
                }
                (Ok(_), None) => self.fail(format!(
                    "unwrap {op_id} at {id} succeeded under a context the ciphertext was not made for"
                )),
                (Err(_), None) => self.stats.attacks_refused += 1,
                _ => {}
            }
            if let (Ok(_), Some(b)) = (&result, byz) {
                if flight.byz_partial_delivered && !faulty.contains(&b) {
                    self.fail(format!(
                        "unwrap {op_id} at {id} received a wrong partial from {b} but did not blame it (faulty: {faulty:?})"
                    ));
                }
            }
        }
        match &result {
            Ok(_) => self.stats.unwraps_ok += 1,
            Err(_) => self.stats.unwraps_failed += 1,
        }
        let now = self.now();
        self.done_at.insert((id, op_id), now);
        self.probe
            .insert((id, op_id), result.map_err(|e| e.to_string()));
    }

    pub(crate) fn start_unwrap(
        &mut self,
        via: NodeId,
        name: &str,
        ciphertext: Vec<u8>,
        expected: Vec<u8>,
    ) -> OpId {
        self.start_unwrap_with(via, name, ciphertext, Some(expected), ctx())
    }

    /// An unwrap; `expected` is `None` for an attack (a context other than
    /// the one the ciphertext was made for), which must fail.
    fn start_unwrap_with(
        &mut self,
        via: NodeId,
        name: &str,
        ciphertext: Vec<u8>,
        expected: Option<Vec<u8>>,
        context: EncryptionContext,
    ) -> OpId {
        self.next_op += 1;
        let op_id = self.next_op;
        self.unwrap_requests
            .insert((via, op_id), (ciphertext.clone(), context.clone()));
        self.stats.unwraps_started += 1;
        let now_ms = self.clock_of(via);
        let Some(node) = self.nodes.get_mut(&via) else {
            return op_id;
        };
        node.inflight.insert(
            op_id,
            InFlight {
                expected,
                byz_partial_delivered: false,
            },
        );
        self.drive(
            via,
            Event::StartUnwrap {
                now_ms,
                request: UnwrapRequest {
                    op_id,
                    name: name.to_string(),
                    ciphertext,
                    context,
                    principal: "app".into(),
                    mode: UnwrapMode::ServerSide,
                },
            },
        );
        op_id
    }

    pub(crate) fn enabled_versions(&self) -> Vec<(String, KeyVersion)> {
        let mut out = Vec::new();
        for k in self.truth.keys() {
            for v in &k.versions {
                if v.state == VersionState::Enabled {
                    out.push((k.name.clone(), v.version));
                }
            }
        }
        out
    }

    pub(crate) fn wrap_one(&mut self, name: &str, version: KeyVersion) -> Option<usize> {
        let plaintext: Vec<u8> = (0..24).map(|_| self.rng.random::<u8>()).collect();
        let ct = self.wrap_bytes(name, version, &plaintext)?;
        self.stats.wraps += 1;
        self.wrapped.push(Wrapped {
            name: name.to_string(),
            ciphertext: ct,
            plaintext,
        });
        Some(self.wrapped.len() - 1)
    }

    /// A key creation proposed by the admin client.
    pub(crate) fn create_key(&mut self, name: &str) {
        let holders = self.ids();
        self.propose(
            "admin".into(),
            Operation::CreateKey(CreateKey {
                name: name.to_string(),
                description: "sim".into(),
                owner: "team".into(),
                purpose: "encrypt".into(),
                rotation_period_ms: None,
                expires_at_ms: None,
                threshold: self.cfg.threshold,
                holders,
            }),
            None,
        );
    }

    // ---- events -----------------------------------------------------------

    /// Pops and handles the next due event. Returns `false` if none is due.
    pub(crate) fn step_event(&mut self) -> bool {
        let now = self.now();
        let due = self
            .queue
            .first_key_value()
            .is_some_and(|((at, _), _)| *at <= now);
        if !due {
            return false;
        }
        let Some((_, ev)) = self.queue.pop_first() else {
            return false;
        };
        self.step += 1;
        self.handle_event(ev);
        true
    }

    pub(crate) fn next_event_at(&self) -> Option<u64> {
        self.queue.first_key_value().map(|((at, _), _)| *at)
    }

    fn handle_event(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver { from, to, bytes } => self.deliver(from, to, bytes),
            Ev::Tick => {
                for id in self.live_ids() {
                    let now_ms = self.clock_of(id);
                    self.drive(id, Event::Tick { now_ms });
                }
                self.schedule(50, Ev::Tick);
            }
            Ev::Workload => {
                if self.workload_on {
                    self.workload();
                    let d = self.rng.random_range(100..600);
                    self.schedule(d, Ev::Workload);
                }
            }
            Ev::Fault => {
                self.fault();
                let d = self.rng.random_range(2_000..8_000);
                self.schedule(d, Ev::Fault);
            }
            Ev::Restart(id) => self.jobs.push(Job::Start(id)),
            Ev::Heal => self.blocked.clear(),
        }
    }

    fn workload(&mut self) {
        let roll = self.rng.random_range(0..100);
        match roll {
            0..=14 if self.key_names.len() < self.cfg.max_keys => {
                let name = format!("k{}", self.key_names.len());
                self.key_names.push(name.clone());
                self.stats.keys_created += 1;
                self.create_key(&name);
            }
            15..=39 => {
                let enabled = self.enabled_versions();
                if enabled.is_empty() {
                    return;
                }
                let (name, version) = enabled[self.rng.random_range(0..enabled.len())].clone();
                self.wrap_one(&name, version);
            }
            40..=79 => {
                let live = self.live_ids();
                if self.wrapped.is_empty() || live.is_empty() {
                    return;
                }
                let w = &self.wrapped[self.rng.random_range(0..self.wrapped.len())];
                let (name, ct, pt) = (w.name.clone(), w.ciphertext.clone(), w.plaintext.clone());
                let via = live[self.rng.random_range(0..live.len())];
                if self.rng.random_range(0..10) == 0 {
                    // The caller names another tenant's context.
                    let evil = BTreeMap::from([("tenant".to_string(), "mallory".to_string())]);
                    self.stats.attacks += 1;
                    self.start_unwrap_with(via, &name, ct, None, evil);
                } else {
                    self.start_unwrap(via, &name, ct, pt);
                }
            }
            80..=86 => self.rotate_some_key(),
            87..=90 => {
                let enabled = self.enabled_versions();
                if enabled.is_empty() {
                    return;
                }
                let (name, version) = enabled[self.rng.random_range(0..enabled.len())].clone();
                self.stats.refreshes_started += 1;
                self.propose(
                    "admin".into(),
                    Operation::Refresh {
                        name,
                        version,
                        timeout_ms: None,
                    },
                    None,
                );
            }
            91..=94 => self.schedule_destruction(),
            _ => {
                let now = self.now();
                let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.due_destroy)
                    .into_iter()
                    .partition(|(_, _, at)| *at <= now);
                self.due_destroy = rest;
                for (name, version, _) in due {
                    self.propose("admin".into(), Operation::Destroy { name, version }, None);
                }
            }
        }
    }

    fn rotate_some_key(&mut self) {
        if self.key_names.is_empty() {
            return;
        }
        let name = self.key_names[self.rng.random_range(0..self.key_names.len())].clone();
        let versions = self.truth.key(&name).map_or(0, |k| k.versions.len());
        if versions >= 3 {
            return;
        }
        let holders = self.ids();
        self.propose(
            "admin".into(),
            Operation::Rotate {
                name,
                holders,
                generation_timeout_ms: None,
            },
            None,
        );
    }

    /// Schedules destruction of a non-primary enabled version.
    fn schedule_destruction(&mut self) {
        let candidates: Vec<(String, KeyVersion)> = self
            .truth
            .keys()
            .flat_map(|k| {
                let primary = k.primary_version().map(|p| p.version);
                k.versions
                    .iter()
                    .filter(move |v| v.state == VersionState::Enabled && Some(v.version) != primary)
                    .map(move |v| (k.name.clone(), v.version))
            })
            .collect();
        if candidates.is_empty() {
            return;
        }
        let (name, version) = candidates[self.rng.random_range(0..candidates.len())].clone();
        self.propose(
            "admin".into(),
            Operation::ScheduleDestruction {
                name: name.clone(),
                version,
                after_ms: 500,
            },
            None,
        );
        let at = self.now() + 1_000;
        self.due_destroy.push((name, version, at));
    }

    fn fault(&mut self) {
        let ids = self.ids();
        let n = ids.len();
        match self.rng.random_range(0..100) {
            0..=29 => {
                // Crash one node (at most one down at a time), restart later.
                if self.live_ids().len() < n {
                    return;
                }
                let id = ids[self.rng.random_range(0..n)];
                let disk_loss = self.rng.random_range(0..100) < 15 && self.all_caught_up();
                self.crash(id, disk_loss);
                let d = self.rng.random_range(500..5_000);
                self.schedule(d, Ev::Restart(id));
            }
            30..=69 => self.partition(&ids),
            _ => {}
        }
    }

    /// A random side cut off from the rest; sometimes in one direction only.
    fn partition(&mut self, ids: &[NodeId]) {
        if !self.blocked.is_empty() {
            return;
        }
        self.stats.partitions += 1;
        let side: Vec<NodeId> = ids
            .iter()
            .copied()
            .filter(|_| self.rng.random_range(0..100) < 30)
            .collect();
        let asymmetric = self.rng.random_range(0..2) == 0;
        for a in &side {
            for b in ids {
                if side.contains(b) {
                    continue;
                }
                self.blocked.insert((*a, *b));
                if !asymmetric {
                    self.blocked.insert((*b, *a));
                }
            }
        }
        let d = self.rng.random_range(300..3_000);
        self.schedule(d, Ev::Heal);
    }

    /// Disk loss is safe for Raft only if the log the node loses is on a
    /// majority of the others: the operator replaces a node when the rest
    /// are healthy and caught up. We wipe only then.
    fn all_caught_up(&self) -> bool {
        let alive = self.nodes.values().all(|n| n.alive);
        let last: Vec<Option<u64>> = self
            .nodes
            .values()
            .filter_map(|n| n.raft.as_ref())
            .map(|r| r.metrics().borrow().last_applied.map(|l| l.index))
            .collect();
        alive
            && self.blocked.is_empty()
            && last.windows(2).all(|w| w[0] == w[1])
            && last.len() == self.nodes.len()
    }

    /// Marks `id` down (its Raft is shut down by the driver). A disk loss
    /// wipes its shares and its whole Raft disk.
    pub(crate) fn crash(&mut self, id: NodeId, disk_loss: bool) {
        self.stats.crashes += 1;
        self.trace(&format!("crash {id} {disk_loss}"), &[]);
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        node.alive = false;
        self.pending_proposals -= node.outbox.len() as u64;
        node.outbox.clear();
        node.incarnation
            .store(false, std::sync::atomic::Ordering::SeqCst);
        let lost = node
            .unflushed
            .take()
            .and_then(|p| p.lock().ok().map(|p| p.len() as u64))
            .unwrap_or(0);
        self.stats.unflushed_entries_lost += lost;
        node.inflight.clear();
        node.corrupt_from_byz.clear();
        if let Some(sm) = node.sm.take() {
            sm.detach();
        }
        if disk_loss {
            self.stats.disk_losses += 1;
            node.disk.clear();
            node.raft_disk = new_disk();
            node.audit_verified = 0;
        }
        self.jobs.push(Job::Crash(id));
    }

    /// A node that (re)starts: what the node does before serving. Returns
    /// the storages for `Raft::new`.
    pub(crate) fn prepare_start(
        &mut self,
        id: NodeId,
    ) -> Option<(crate::storage::MemLog, crate::storage::MemSm)> {
        self.trace(&format!("start {id}"), &[]);
        let hook = self.hook(id);
        let bug = self.cfg.bug;
        let node = self.nodes.get_mut(&id)?;
        if node.alive {
            return None;
        }
        let disk = node.raft_disk.clone();
        node.incarnation = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (fsync_ms, incarnation) = (node.fsync_ms, node.incarnation.clone());
        node.replay_upto = disk.lock().map(|d| d.last_index()).unwrap_or(0);
        node.proto = NodeProtocol::new(id, ProtocolConfig::default());
        let mut sm = crate::storage::MemSm::open(disk.clone(), hook);
        if bug == PlantedBug::SwapApply && id == NodeId(1) {
            sm.plant_swap(3);
        }
        let log = crate::storage::MemLog::new(disk, fsync_ms, incarnation);
        node.unflushed = Some(log.pending());
        Some((log, sm))
    }

    /// The node is up: it learns the time, then reconciles its share store
    /// with the state it loaded (as the node's `Quorum::reconcile`).
    pub(crate) fn started(&mut self, id: NodeId, raft: Raft, sm: crate::storage::MemSm) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        node.raft = Some(raft);
        node.sm = Some(sm.clone());
        node.alive = true;
        let now_ms = self.clock_of(id);
        self.drive(id, Event::Tick { now_ms });
        let mut receipts = Vec::new();
        sm.read(|a| {
            let Some(node) = self.nodes.get_mut(&id) else {
                return;
            };
            node.disk.retain(|(key, version, _), _| {
                let Some(k) = a.machine().keys().find(|k| k.id == *key) else {
                    return true;
                };
                let Some(v) = k.version(*version) else {
                    return true;
                };
                match v.state {
                    VersionState::Destroying
                    | VersionState::Destroyed
                    | VersionState::Failed { .. } => {
                        if v.state == VersionState::Destroying && !v.erase_receipts.contains(&id) {
                            receipts.push(Operation::EraseReceipt {
                                name: k.name.clone(),
                                version: *version,
                                node: id,
                            });
                        }
                        false
                    }
                    _ => true,
                }
            });
        });
        for op in receipts {
            self.propose(id.to_string(), op, Some(id));
        }
    }

    /// Nothing left to do: no message, proposal, DKG, refresh or unwrap in
    /// flight, every live node applied what the others did.
    pub(crate) fn is_idle(&self) -> bool {
        let busy_queue = self.queue.values().any(|e| !matches!(e, Ev::Tick));
        let applied: Vec<Option<u64>> = self
            .nodes
            .values()
            .filter(|n| n.alive)
            .filter_map(|n| n.raft.as_ref())
            .map(|r| r.metrics().borrow().last_applied.map(|l| l.index))
            .collect();
        let caught_up = applied.windows(2).all(|w| w[0] == w[1])
            && applied.first().copied().flatten().map(|i| i + 1) == Some(self.canon.len() as u64);
        let busy_nodes = self.nodes.values().any(|n| {
            n.alive && (n.proto.active_generations() > 0 || n.proto.pending_unwraps() > 0)
        });
        let busy_versions = self.truth.keys().any(|k| {
            k.versions
                .iter()
                .any(|v| v.state == VersionState::Generating || v.refresh.is_some())
        });
        !busy_queue
            && self.pending_proposals == 0
            && caught_up
            && !busy_nodes
            && !busy_versions
            && self.jobs.is_empty()
    }

    // ---- invariants ---------------------------------------------------------

    /// Every invariant cheap enough to check after each step (applied logs
    /// agree is checked at each apply, in `on_entry`).
    pub(crate) fn check(&mut self) {
        self.check_rafts_running();
        self.check_audit_chains();
        if self.violation.is_some() {
            return;
        }
        self.learn_roots();
        let mut findings = Vec::new();
        for (id, n) in &self.nodes {
            for bytes in n.disk.values() {
                if self.roots.values().any(|r| contains(bytes, r)) {
                    findings.push(format!("{id}'s share store holds a root key"));
                }
            }
        }
        for k in self.truth.keys() {
            for v in &k.versions {
                if v.state != VersionState::Destroyed {
                    continue;
                }
                // Shares of one epoch combine; count each epoch.
                let mut per_epoch: BTreeMap<Epoch, Vec<NodeId>> = BTreeMap::new();
                for (id, n) in &self.nodes {
                    for (key, ver, epoch) in n.disk.keys() {
                        if *key == k.id && *ver == v.version {
                            per_epoch.entry(*epoch).or_default().push(*id);
                        }
                    }
                }
                for (epoch, holders) in per_epoch {
                    if holders.len() >= usize::from(v.threshold) {
                        findings.push(format!(
                            "destroyed version {} of {:?} still has {} shares of epoch {} on disk ({holders:?}; t = {}, current epoch {})",
                            v.version,
                            k.name,
                            holders.len(),
                            epoch.0,
                            v.threshold,
                            v.epoch.0
                        ));
                    }
                }
            }
        }
        if let Some(f) = findings.into_iter().next() {
            self.fail(f);
        }
    }

    /// No live node's Raft stopped (a panic or storage error inside openraft
    /// ends its core task; the node would be dead to the cluster).
    fn check_rafts_running(&mut self) {
        let stopped = self.nodes.iter().find_map(|(id, n)| {
            let raft = n.raft.as_ref().filter(|_| n.alive)?;
            let m = raft.metrics();
            let state = m.borrow();
            state
                .running_state
                .as_ref()
                .err()
                .map(|e| format!("{id}'s Raft stopped: {e}"))
        });
        if let Some(s) = stopped {
            self.fail(s);
        }
    }

    /// Each replica's new audit records verify, linked to the last one
    /// verified. A replica restarted from a checkpoint starts over.
    fn check_audit_chains(&mut self) {
        let mut bad = None;
        for (id, n) in &mut self.nodes {
            let Some(sm) = n.sm.clone() else { continue };
            let from = n.audit_verified;
            let result = sm.read(|a| {
                let len = a.machine().audit_len();
                if len < from {
                    return (0, Ok(()));
                }
                if len == from {
                    return (len, Ok(()));
                }
                let prev = if from == 0 {
                    GENESIS_HASH
                } else {
                    a.machine().audit_records(from, 1)[0].hash
                };
                let recs = a.machine().audit_records(from + 1, usize::MAX);
                (len, verify_chain(recs, prev).map_err(|e| e.to_string()))
            });
            if let Some((len, r)) = result {
                n.audit_verified = len;
                if let Err(e) = r {
                    bad = Some(format!("{id}'s audit chain does not verify: {e}"));
                }
            }
        }
        if let Some(b) = bad {
            self.fail(b);
        }
    }

    pub(crate) fn check_secret_free(&mut self, what: &str, bytes: &[u8]) {
        if self.roots.values().any(|r| contains(bytes, r)) {
            self.fail(format!("a {what} contains a root key"));
        }
    }

    /// Searches every node's Raft disk and applied state for known roots
    /// (at quiescent points: it is costly).
    pub(crate) fn check_disks_and_states(&mut self) {
        let mut images = Vec::new();
        for (id, n) in &self.nodes {
            if let Ok(d) = n.raft_disk.lock() {
                images.extend(d.images().into_iter().map(|b| (*id, "Raft disk", b)));
            }
            if let Some(sm) = &n.sm {
                if let Some(b) = sm.read(|a| a.machine().to_bytes()) {
                    images.push((*id, "applied state", b));
                }
            }
            images.push((*id, "protocol state", format!("{:?}", n.proto).into_bytes()));
        }
        for (id, what, bytes) in images {
            if self.roots.values().any(|r| contains(&bytes, r)) {
                self.fail(format!("{id}'s {what} contains a root key"));
                return;
            }
        }
    }

    /// The checker alone reconstructs roots, from the holders' share
    /// stores, for each enabled version (once per epoch).
    fn learn_roots(&mut self) {
        let mut todo = Vec::new();
        for k in self.truth.keys() {
            for v in &k.versions {
                let sk = (k.id, v.version, v.epoch);
                if v.state == VersionState::Enabled && !self.roots.contains_key(&sk) {
                    todo.push((sk, v.threshold, v.public_keys.clone()));
                }
            }
        }
        for (sk, t, pk) in todo {
            let mut shares: Vec<(u64, Scalar)> = Vec::new();
            for n in self.nodes.values() {
                if let Some(share) = n
                    .disk
                    .get(&sk)
                    .and_then(|b| KeyShare::from_secret_bytes(b).ok())
                {
                    let b = n.disk.get(&sk).cloned().unwrap_or_default();
                    let mut s = [0u8; 32];
                    s.copy_from_slice(&b[b.len() - 32..]);
                    if let Some(x) = qk_crypto::encoding::decode_scalar(&s) {
                        shares.push((u64::from(share.index().get()), x));
                    }
                }
            }
            if shares.len() < usize::from(t) {
                continue;
            }
            shares.truncate(usize::from(t));
            let Some(root) = lagrange_at_zero(&shares) else {
                continue;
            };
            let expected = pk
                .as_deref()
                .and_then(|b| PublicKeySet::from_bytes(b).ok())
                .map(|k| k.public_key());
            if Some((ProjectivePoint::GENERATOR * root).to_affine()) != expected {
                self.fail(format!(
                    "holders' shares of {:?} {} epoch {} do not interpolate to its public key",
                    sk.0, sk.1, sk.2 .0
                ));
                return;
            }
            let mut bytes = [0u8; 32];
            bytes.copy_from_slice(&root.to_bytes());
            self.roots.insert(sk, bytes);
            self.stats.roots_reconstructed += 1;
            if self.dkg_messages.iter().any(|m| contains(m, &bytes)) {
                self.fail(format!(
                    "a DKG share sent earlier contains the root of {:?} {}",
                    sk.0, sk.1
                ));
            }
        }
    }

    /// For the liveness probe: enabled versions that `t` honest live
    /// holders still have shares of.
    pub(crate) fn usable_versions(&self) -> Vec<(String, KeyVersion, usize)> {
        let mut out = Vec::new();
        for (name, version) in self.enabled_versions() {
            let Some(key) = self.truth.key(&name) else {
                continue;
            };
            let Some(rec) = key.version(version) else {
                continue;
            };
            let sk = (key.id, version, rec.epoch);
            let ready = self
                .nodes
                .iter()
                .filter(|(id, n)| {
                    n.alive && Some(**id) != self.byzantine && n.disk.contains_key(&sk)
                })
                .count();
            if ready >= usize::from(rec.threshold) {
                out.push((name, version, ready));
            }
        }
        out
    }
}

/// Flips the low bit of a DKG share's value: it still decodes, but does
/// not match the dealer's commitments.
fn corrupt_dkg_share(bytes: &mut [u8]) {
    // The message's last byte is the last byte of the scalar.
    if let Some(last) = bytes.last_mut() {
        *last ^= 1;
    }
}

/// Lagrange interpolation at 0 over `(index, share)` points.
fn lagrange_at_zero(shares: &[(u64, Scalar)]) -> Option<Scalar> {
    let mut acc = Scalar::ZERO;
    for (i, (xi, yi)) in shares.iter().enumerate() {
        let mut num = Scalar::ONE;
        let mut den = Scalar::ONE;
        for (j, (xj, _)) in shares.iter().enumerate() {
            if i == j {
                continue;
            }
            num *= Scalar::from(*xj);
            den *= Scalar::from(*xj) - Scalar::from(*xi);
        }
        let inv: Option<Scalar> = den.invert().into();
        acc += *yi * num * inv?;
    }
    Some(acc)
}
