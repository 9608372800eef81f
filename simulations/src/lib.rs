//! Deterministic simulation of a Quorumkey cluster (first slice of issue 6).
//!
//! One thread, one seeded RNG, one simulated clock (milliseconds), a
//! simulated network (per-message delay, loss, duplication, reordering,
//! symmetric and asymmetric partitions), a simulated disk per node (the
//! sealed-share store, which survives a crash unless the fault is "disk
//! loss") and a seeded workload. Every node runs the real sans-IO code:
//! [`qk_protocol::NodeProtocol`], [`qk_protocol::answer_partial`],
//! [`qk_state::StateMachine::apply`] and `qk_crypto`.
//!
//! **Gap: openraft is not simulated.** The replicated log is one totally
//! ordered sequence of committed commands (a perfect, always-available
//! leader that may lose proposals from nodes cut off from a majority),
//! applied to one `StateMachine` per node with a per-node apply lag. Leader
//! election, log divergence and truncation, snapshots and the sled store's
//! real crash behaviour are not exercised. See `docs/SIMULATION.md`.
//!
//! Invariants are checked after every step; see [`Sim::check`].
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use k256::{ProjectivePoint, Scalar};
use qk_crypto::{wrap, EncryptionContext, KeyShare, PublicKeySet};
use qk_protocol::{
    answer_partial, Action, Event, KeyAccess, NodeProtocol, OpId, ProtocolConfig, ProtocolMessage,
    UnwrapMode, UnwrapRequest,
};
use qk_state::{
    verify_chain, Command, CreateKey, KeyRecord, Operation, RequestId, StateMachine, VersionState,
    GENESIS_HASH,
};
use qk_types::{Epoch, KeyId, KeyVersion, NodeId};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sha2::{Digest, Sha256};

/// Network latency profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetProfile {
    pub min_delay_ms: u64,
    pub max_delay_ms: u64,
}

impl NetProfile {
    pub const LAN: NetProfile = NetProfile {
        min_delay_ms: 1,
        max_delay_ms: 5,
    };
    pub const WAN: NetProfile = NetProfile {
        min_delay_ms: 30,
        max_delay_ms: 150,
    };
}

/// A bug planted in the simulator's own node adapter, to show the checker
/// catches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    None,
    /// Node 1 applies committed entries 2 and 3 in swapped order.
    SwapApply,
    /// The share store ignores `EraseShare` (a disk that never flushes the
    /// erase), while the protocol still proposes its erase receipt.
    IgnoreErase,
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: u64,
    pub threshold: u16,
    /// Events processed (deliveries, commits, applies, ticks, workload and
    /// fault steps).
    pub steps: u64,
    pub net: NetProfile,
    /// Message loss, duplication, partitions, crashes, disk loss.
    pub faults: bool,
    /// The highest-numbered node answers partial requests with wrong partials.
    pub byzantine: bool,
    pub bug: PlantedBug,
    /// Workload: no new keys once this many exist.
    pub max_keys: usize,
}

impl SimConfig {
    pub fn new(seed: u64) -> Self {
        SimConfig {
            seed,
            nodes: 4,
            threshold: 2,
            steps: 3_000,
            net: NetProfile::LAN,
            faults: true,
            byzantine: true,
            bug: PlantedBug::None,
            max_keys: 3,
        }
    }

    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        let mut s = format!(
            "cargo run -p qk-sim -- --seed {} --nodes {} --threshold {} --steps {}",
            self.seed, self.nodes, self.threshold, self.steps
        );
        if self.net == NetProfile::WAN {
            s.push_str(" --wan");
        }
        if !self.faults {
            s.push_str(" --no-faults");
        }
        if !self.byzantine {
            s.push_str(" --no-byzantine");
        }
        match self.bug {
            PlantedBug::None => {}
            PlantedBug::SwapApply => s.push_str(" --plant-swap-apply"),
            PlantedBug::IgnoreErase => s.push_str(" --plant-ignore-erase"),
        }
        s
    }
}

/// An invariant violation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub seed: u64,
    pub step: u64,
    pub time_ms: u64,
    pub what: String,
    pub replay: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "INVARIANT VIOLATED (seed {}, step {}, t={} ms): {}\nreplay: {}",
            self.seed, self.step, self.time_ms, self.what, self.replay
        )
    }
}

/// Counters of one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub steps: u64,
    pub time_ms: u64,
    pub messages_sent: u64,
    pub messages_delivered: u64,
    pub messages_lost: u64,
    pub commits: u64,
    pub keys_created: u64,
    pub versions_enabled: u64,
    pub versions_destroyed: u64,
    pub wraps: u64,
    pub unwraps_started: u64,
    pub unwraps_ok: u64,
    pub unwraps_failed: u64,
    pub liveness_checks: u64,
    pub crashes: u64,
    pub disk_losses: u64,
    pub partitions: u64,
    pub byzantine_blamed: u64,
    /// Root keys the checker reconstructed (and searched for).
    pub roots_reconstructed: u64,
}

#[derive(Clone, Debug)]
pub struct Outcome {
    pub trace_hash: [u8; 32],
    pub stats: Stats,
    pub violation: Option<Violation>,
}

impl Outcome {
    pub fn trace_hex(&self) -> String {
        self.trace_hash.iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }
}

type ShareKey = (KeyId, KeyVersion, Epoch);

#[derive(Debug)]
struct InFlight {
    expected: Option<Vec<u8>>,
    byz_partial_delivered: bool,
}

#[derive(Debug)]
struct SimNode {
    proto: NodeProtocol,
    replica: StateMachine,
    /// Entries applied (a prefix of the log).
    applied: usize,
    /// Hash of the command applied at each index.
    applied_hashes: Vec<[u8; 32]>,
    /// The simulated sealed-share store (survives a crash, not disk loss).
    disk: BTreeMap<ShareKey, Vec<u8>>,
    alive: bool,
    audit_verified: u64,
    inflight: BTreeMap<OpId, InFlight>,
    skew_ms: u64,
}

#[derive(Debug)]
enum Ev {
    Deliver {
        from: NodeId,
        to: NodeId,
        bytes: Vec<u8>,
    },
    Commit(Box<Command>),
    Apply {
        node: NodeId,
        upto: usize,
    },
    Tick,
    Workload,
    Fault,
    Restart(NodeId),
    Heal,
}

#[derive(Debug)]
struct Wrapped {
    name: String,
    ciphertext: Vec<u8>,
    plaintext: Vec<u8>,
}

/// Results of a unwrap the checker started at a quiescent point.
#[derive(Debug, Default)]
struct Probe {
    done: BTreeMap<(NodeId, OpId), Result<Vec<u8>, String>>,
}

/// Scale-study measurements.
#[derive(Clone, Debug, Default)]
pub struct ScaleResult {
    pub dkg_ms: u64,
    pub dkg_messages: u64,
    pub dkg_commits: u64,
    pub unwrap_ms: u64,
    pub unwrap_messages: u64,
}

fn ctx() -> EncryptionContext {
    BTreeMap::from([("tenant".to_string(), "sim".to_string())])
}

fn hash_bytes(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

fn command_hash(c: &Command) -> [u8; 32] {
    hash_bytes(&postcard::to_allocvec(c).unwrap_or_default())
}

fn contains(hay: &[u8], needle: &[u8; 32]) -> bool {
    hay.len() >= 32 && hay.windows(32).any(|w| w == needle)
}

/// The whole simulated cluster.
#[derive(Debug)]
pub struct Sim {
    cfg: SimConfig,
    rng: StdRng,
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    nodes: BTreeMap<NodeId, SimNode>,
    log: Vec<Command>,
    log_hashes: Vec<[u8; 32]>,
    /// The state after every committed entry (what clients are acknowledged).
    truth: StateMachine,
    /// Directed links that drop everything.
    blocked: BTreeSet<(NodeId, NodeId)>,
    loss_per_mille: u32,
    dup_per_mille: u32,
    next_request: u64,
    next_op: OpId,
    trace: Sha256,
    stats: Stats,
    step: u64,
    /// Root keys the checker reconstructed, by version.
    roots: BTreeMap<ShareKey, [u8; 32]>,
    decoys: BTreeMap<(KeyId, KeyVersion), Vec<u8>>,
    wrapped: Vec<Wrapped>,
    key_names: Vec<String>,
    byzantine: Option<NodeId>,
    probe: Probe,
    violation: Option<String>,
    /// Destruction scheduled: (name, version, due).
    due_destroy: Vec<(String, KeyVersion, u64)>,
    /// The workload is paused during quiescent checks.
    workload_on: bool,
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Self {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let nodes = (1..=cfg.nodes)
            .map(|i| {
                let id = NodeId(i);
                let skew_ms = if cfg.faults {
                    rng.random_range(0..200)
                } else {
                    0
                };
                (
                    id,
                    SimNode {
                        proto: NodeProtocol::new(id, ProtocolConfig::default()),
                        replica: StateMachine::new(),
                        applied: 0,
                        applied_hashes: Vec::new(),
                        disk: BTreeMap::new(),
                        alive: true,
                        audit_verified: 0,
                        inflight: BTreeMap::new(),
                        skew_ms,
                    },
                )
            })
            .collect();
        let byzantine =
            (cfg.byzantine && cfg.nodes > u64::from(cfg.threshold)).then_some(NodeId(cfg.nodes));
        let mut sim = Sim {
            rng,
            now: 1_000,
            seq: 0,
            queue: BTreeMap::new(),
            nodes,
            log: Vec::new(),
            log_hashes: Vec::new(),
            truth: StateMachine::new(),
            blocked: BTreeSet::new(),
            loss_per_mille: 0,
            dup_per_mille: 0,
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
            probe: Probe::default(),
            violation: None,
            due_destroy: Vec::new(),
            workload_on: true,
            cfg,
        };
        if sim.cfg.faults {
            sim.loss_per_mille = 20;
            sim.dup_per_mille = 20;
        }
        // As a bootstrapping node does: the first entry creates the admin.
        let admin = Operation::CreatePrincipal {
            name: "admin".into(),
            roles: [qk_state::Role::Admin].into(),
        };
        sim.propose("node-1".into(), admin, None);
        sim.schedule(50, Ev::Tick);
        sim.schedule(10, Ev::Workload);
        if sim.cfg.faults {
            let d = sim.rng.random_range(1_000..4_000);
            sim.schedule(d, Ev::Fault);
        }
        sim
    }

    fn schedule(&mut self, delay: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((self.now + delay, self.seq), ev);
    }

    fn fail(&mut self, what: String) {
        if self.violation.is_none() {
            self.violation = Some(what);
        }
    }

    fn trace(&mut self, what: &str, bytes: &[u8]) {
        self.trace.update((what.len() as u64).to_be_bytes());
        self.trace.update(what.as_bytes());
        self.trace.update((bytes.len() as u64).to_be_bytes());
        self.trace.update(bytes);
    }

    fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    fn connected(&self, a: NodeId, b: NodeId) -> bool {
        !self.blocked.contains(&(a, b)) && !self.blocked.contains(&(b, a))
    }

    /// Runs the configured number of steps, then a final quiescent
    /// liveness check.
    pub fn run(mut self) -> Outcome {
        // Workload steps between quiescent liveness checks.
        const QUIESCE_EVERY: u64 = 1_000;
        let mut since_check = 0;
        while self.step < self.cfg.steps && self.violation.is_none() {
            self.step_once();
            since_check += 1;
            if self.violation.is_none() && since_check >= QUIESCE_EVERY {
                since_check = 0;
                self.quiescent_check();
            }
        }
        if self.violation.is_none() {
            self.quiescent_check();
        }
        self.finish()
    }

    fn finish(self) -> Outcome {
        let mut stats = self.stats;
        stats.steps = self.step;
        stats.time_ms = self.now;
        let violation = self.violation.map(|what| Violation {
            seed: self.cfg.seed,
            step: self.step,
            time_ms: self.now,
            what,
            replay: self.cfg.replay_command(),
        });
        Outcome {
            trace_hash: self.trace.finalize().into(),
            stats,
            violation,
        }
    }

    /// Processes one event and checks every invariant.
    fn step_once(&mut self) {
        let Some(((at, _), ev)) = self.queue.pop_first() else {
            return;
        };
        self.now = self.now.max(at);
        self.step += 1;
        self.handle_event(ev);
        self.check();
    }

    fn handle_event(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver { from, to, bytes } => self.deliver(from, to, bytes),
            Ev::Commit(cmd) => self.commit(*cmd),
            Ev::Apply { node, upto } => self.apply_upto(node, upto),
            Ev::Tick => {
                for id in self.ids() {
                    let n = &self.nodes[&id];
                    if !n.alive {
                        continue;
                    }
                    let now_ms = self.now + n.skew_ms;
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
                let d = self.rng.random_range(1_000..5_000);
                self.schedule(d, Ev::Fault);
            }
            Ev::Restart(id) => self.restart(id),
            Ev::Heal => self.blocked.clear(),
        }
    }

    fn drive(&mut self, id: NodeId, event: Event) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let actions = node.proto.handle(&node.replica, event, &mut self.rng);
        self.run_actions(id, actions);
    }

    fn deliver(&mut self, from: NodeId, to: NodeId, bytes: Vec<u8>) {
        let alive = self.nodes.get(&to).is_some_and(|n| n.alive);
        if !alive || self.blocked.contains(&(from, to)) {
            self.stats.messages_lost += 1;
            return;
        }
        self.check_secret_free("delivered message", &bytes);
        self.stats.messages_delivered += 1;
        self.trace(&format!("deliver {from}->{to}@{}", self.now), &bytes);
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
        self.drive(to, Event::Message { from, msg });
    }

    fn propose(&mut self, principal: String, op: Operation, proposer: Option<NodeId>) {
        // A node cut off from a majority cannot get its proposal committed
        // (losing a proposal is safe: timed steps are proposed again).
        if let Some(p) = proposer {
            let reach = self
                .ids()
                .into_iter()
                .filter(|o| *o == p || (self.nodes[o].alive && self.connected(p, *o)))
                .count();
            if reach * 2 <= self.nodes.len() {
                return;
            }
        }
        self.next_request += 1;
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&self.next_request.to_be_bytes());
        let cmd = Command {
            request_id: RequestId(id),
            time_ms: self.now,
            principal,
            op,
        };
        let d = self
            .rng
            .random_range(2 * self.cfg.net.min_delay_ms..=2 * self.cfg.net.max_delay_ms);
        self.schedule(d, Ev::Commit(Box::new(cmd)));
    }

    fn commit(&mut self, cmd: Command) {
        let h = command_hash(&cmd);
        self.trace("commit", &h);
        let resp = self.truth.apply(&cmd);
        if let Ok(a) = &resp.result {
            match a {
                qk_state::Applied::VersionEnabled => self.stats.versions_enabled += 1,
                qk_state::Applied::VersionDestroyed => self.stats.versions_destroyed += 1,
                _ => {}
            }
        }
        self.log.push(cmd);
        self.log_hashes.push(h);
        self.stats.commits += 1;
        let upto = self.log.len();
        for id in self.ids() {
            let lag = self.rng.random_range(0..=self.cfg.net.max_delay_ms);
            self.schedule(lag, Ev::Apply { node: id, upto });
        }
    }

    fn apply_upto(&mut self, id: NodeId, upto: usize) {
        loop {
            let node = &self.nodes[&id];
            if !node.alive || node.applied >= upto.min(self.log.len()) {
                return;
            }
            let mut index = node.applied;
            if self.cfg.bug == PlantedBug::SwapApply && id == NodeId(1) && index == 1 {
                if self.log.len() < 3 {
                    return;
                }
                index = 2;
            } else if self.cfg.bug == PlantedBug::SwapApply && id == NodeId(1) && index == 2 {
                index = 1;
            }
            let cmd = self.log[index].clone();
            let h = command_hash(&cmd);
            let node = self.nodes.get_mut(&id).expect("node exists");
            let response = node.replica.apply(&cmd);
            node.applied += 1;
            node.applied_hashes.push(h);
            let applied_index = node.applied as u64;
            self.trace(&format!("apply {id} {applied_index}"), &h);
            self.drive(
                id,
                Event::Applied {
                    index: applied_index,
                    command: cmd,
                    response,
                },
            );
        }
    }

    fn send(&mut self, from: NodeId, to: NodeId, bytes: Vec<u8>) {
        self.stats.messages_sent += 1;
        self.check_secret_free("sent message", &bytes);
        if from == to {
            self.schedule(0, Ev::Deliver { from, to, bytes });
            return;
        }
        if self.blocked.contains(&(from, to))
            || self.rng.random_range(0..1000) < self.loss_per_mille
        {
            self.stats.messages_lost += 1;
            return;
        }
        let copies = if self.rng.random_range(0..1000) < self.dup_per_mille {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let d = self
                .rng
                .random_range(self.cfg.net.min_delay_ms..=self.cfg.net.max_delay_ms);
            self.schedule(
                d,
                Ev::Deliver {
                    from,
                    to,
                    bytes: bytes.clone(),
                },
            );
        }
    }

    fn run_actions(&mut self, id: NodeId, actions: Vec<Action>) {
        for action in actions {
            self.trace(&format!("action {id}"), format!("{action:?}").as_bytes());
            match action {
                Action::Send { to, msg } => match msg.encode() {
                    Ok(bytes) => self.send(id, to, bytes.to_vec()),
                    Err(e) => self.fail(format!("{id} produced an unencodable message: {e}")),
                },
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
                    if self.cfg.bug == PlantedBug::IgnoreErase {
                        continue;
                    }
                    if let Some(n) = self.nodes.get_mut(&id) {
                        n.disk.remove(&(key, version, epoch));
                    }
                }
                Action::AnswerPartial { to, request } => self.answer(id, to, request),
                Action::UnwrapDone {
                    op_id,
                    result,
                    faulty,
                } => self.unwrap_done(id, op_id, result.map(|p| p.expose().to_vec()), faulty),
                Action::Warning(_) => {}
                other => self.fail(format!("{id} produced an unknown action {other:?}")),
            }
        }
    }

    fn answer(&mut self, id: NodeId, to: NodeId, request: qk_protocol::PartialRequest) {
        let byz = Some(id) == self.byzantine;
        let Some(node) = self.nodes.get(&id) else {
            return;
        };
        let epoch = node
            .replica
            .key(&request.name)
            .and_then(|k| k.version(request.version))
            .map(|v| v.epoch)
            .unwrap_or_default();
        let share = node
            .disk
            .get(&(request.key, request.version, epoch))
            .and_then(|b| KeyShare::from_secret_bytes(b).ok());
        let mut req = request.clone();
        if byz {
            // A wrong partial that still decodes: computed for another
            // ciphertext of the same version.
            if let Some(decoy) = self.decoy(&request.name, request.version) {
                req.ciphertext = decoy;
            }
        }
        let node = &self.nodes[&id];
        let mut reply = answer_partial(
            &node.replica,
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
            Ok(bytes) => self.send(id, to, bytes.to_vec()),
            Err(e) => self.fail(format!("{id}'s partial response does not encode: {e}")),
        }
    }

    fn decoy(&mut self, name: &str, version: KeyVersion) -> Option<Vec<u8>> {
        let key = self.truth.key(name)?;
        let id = key.id;
        if let Some(d) = self.decoys.get(&(id, version)) {
            return Some(d.clone());
        }
        let keys = PublicKeySet::from_bytes(key.version(version)?.public_keys.as_deref()?).ok()?;
        let ct = wrap(
            &mut self.rng,
            &keys.public_key(),
            id,
            version,
            &ctx(),
            b"decoy",
        )
        .ok()?
        .to_bytes();
        self.decoys.insert((id, version), ct.clone());
        Some(ct)
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
        if let Some(flight) = &flight {
            if let (Ok(p), Some(exp)) = (&result, &flight.expected) {
                if p != exp {
                    self.fail(format!("unwrap {op_id} at {id} returned a wrong plaintext"));
                }
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
        self.probe
            .done
            .insert((id, op_id), result.map_err(|e| e.to_string()));
    }

    fn start_unwrap(&mut self, via: NodeId, name: &str, ciphertext: Vec<u8>, expected: Vec<u8>) {
        self.next_op += 1;
        let op_id = self.next_op;
        self.stats.unwraps_started += 1;
        let Some(node) = self.nodes.get_mut(&via) else {
            return;
        };
        node.inflight.insert(
            op_id,
            InFlight {
                expected: Some(expected),
                byz_partial_delivered: false,
            },
        );
        let now_ms = self.now + node.skew_ms;
        self.drive(
            via,
            Event::StartUnwrap {
                now_ms,
                request: UnwrapRequest {
                    op_id,
                    name: name.to_string(),
                    ciphertext,
                    context: ctx(),
                    principal: "app".into(),
                    mode: UnwrapMode::ServerSide,
                },
            },
        );
    }

    fn live_ids(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.alive)
            .map(|(id, _)| *id)
            .collect()
    }

    fn enabled_versions(&self) -> Vec<(String, KeyVersion)> {
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

    fn workload(&mut self) {
        let roll = self.rng.random_range(0..100);
        let holders: Vec<NodeId> = self.ids();
        match roll {
            0..=14 if self.key_names.len() < self.cfg.max_keys => {
                let name = format!("k{}", self.key_names.len());
                self.key_names.push(name.clone());
                self.stats.keys_created += 1;
                self.propose(
                    "admin".into(),
                    Operation::CreateKey(CreateKey {
                        name,
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
            15..=44 => {
                let enabled = self.enabled_versions();
                if enabled.is_empty() {
                    return;
                }
                let (name, version) = enabled[self.rng.random_range(0..enabled.len())].clone();
                self.wrap_one(&name, version);
            }
            45..=84 => {
                let live = self.live_ids();
                if self.wrapped.is_empty() || live.is_empty() {
                    return;
                }
                let w = &self.wrapped[self.rng.random_range(0..self.wrapped.len())];
                let (name, ct, pt) = (w.name.clone(), w.ciphertext.clone(), w.plaintext.clone());
                let via = live[self.rng.random_range(0..live.len())];
                self.start_unwrap(via, &name, ct, pt);
            }
            85..=91 => {
                if self.key_names.is_empty() {
                    return;
                }
                let name = self.key_names[self.rng.random_range(0..self.key_names.len())].clone();
                let versions = self.truth.key(&name).map_or(0, |k| k.versions.len());
                if versions >= 3 {
                    return;
                }
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
            92..=95 => {
                // Schedule destruction of a non-primary enabled version.
                let candidates: Vec<(String, KeyVersion)> = self
                    .truth
                    .keys()
                    .flat_map(|k| {
                        let primary = k.primary_version().map(|p| p.version);
                        k.versions
                            .iter()
                            .filter(move |v| {
                                v.state == VersionState::Enabled && Some(v.version) != primary
                            })
                            .map(move |v| (k.name.clone(), v.version))
                    })
                    .collect();
                if candidates.is_empty() {
                    return;
                }
                let (name, version) =
                    candidates[self.rng.random_range(0..candidates.len())].clone();
                self.propose(
                    "admin".into(),
                    Operation::ScheduleDestruction {
                        name: name.clone(),
                        version,
                        after_ms: 500,
                    },
                    None,
                );
                self.due_destroy.push((name, version, self.now + 1_000));
            }
            _ => {
                let now = self.now;
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

    fn wrap_one(&mut self, name: &str, version: KeyVersion) -> Option<usize> {
        let key = self.truth.key(name)?;
        let id = key.id;
        let keys = PublicKeySet::from_bytes(key.version(version)?.public_keys.as_deref()?).ok()?;
        let plaintext: Vec<u8> = (0..24).map(|_| self.rng.random::<u8>()).collect();
        let ct = wrap(
            &mut self.rng,
            &keys.public_key(),
            id,
            version,
            &ctx(),
            &plaintext,
        )
        .ok()?
        .to_bytes();
        self.stats.wraps += 1;
        self.wrapped.push(Wrapped {
            name: name.to_string(),
            ciphertext: ct,
            plaintext,
        });
        Some(self.wrapped.len() - 1)
    }

    fn fault(&mut self) {
        let ids = self.ids();
        let n = ids.len();
        match self.rng.random_range(0..100) {
            0..=34 => {
                // Crash one node (at most one down at a time), restart later.
                if self.live_ids().len() < n {
                    return;
                }
                let id = ids[self.rng.random_range(0..n)];
                let disk_loss = self.rng.random_range(0..100) < 15;
                self.crash(id, disk_loss);
                let d = self.rng.random_range(500..5_000);
                self.schedule(d, Ev::Restart(id));
            }
            35..=74 => {
                // Partition: a random minority side; asymmetric sometimes.
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
                    for b in &ids {
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
            _ => {}
        }
    }

    fn crash(&mut self, id: NodeId, disk_loss: bool) {
        self.stats.crashes += 1;
        self.trace(&format!("crash {id} {disk_loss}"), &[]);
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        node.alive = false;
        node.inflight.clear();
        if disk_loss {
            self.stats.disk_losses += 1;
            node.disk.clear();
            node.replica = StateMachine::new();
            node.applied = 0;
            node.applied_hashes.clear();
            node.audit_verified = 0;
        }
    }

    fn restart(&mut self, id: NodeId) {
        self.trace(&format!("restart {id}"), &[]);
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        if node.alive {
            return;
        }
        node.alive = true;
        node.proto = NodeProtocol::new(id, ProtocolConfig::default());
        let now_ms = self.now + node.skew_ms;
        // The protocol learns the time first, so replayed entries whose
        // deadline passed start nothing.
        self.drive(id, Event::Tick { now_ms });
        if self.nodes[&id].applied == 0 && !self.log.is_empty() {
            // Disk loss: the replica is restored like a snapshot install
            // (no protocol events for the old entries).
            let log = self.log.clone();
            let node = self.nodes.get_mut(&id).expect("node exists");
            for cmd in &log {
                node.replica.apply(cmd);
                node.applied_hashes.push(command_hash(cmd));
            }
            node.applied = log.len();
        }
        let upto = self.log.len();
        self.schedule(1, Ev::Apply { node: id, upto });
    }

    /// Every invariant that is cheap enough to check after each step.
    fn check(&mut self) {
        // 1. Applied prefixes agree with the committed log.
        for (id, n) in &self.nodes {
            for (i, h) in n.applied_hashes.iter().enumerate() {
                if self.log_hashes.get(i) != Some(h) {
                    let what = format!(
                        "{id} applied a different command at index {} than the committed log",
                        i + 1
                    );
                    self.fail(what);
                    return;
                }
            }
        }
        // 2. Audit chains verify (incrementally).
        let mut bad = None;
        for (id, n) in &mut self.nodes {
            let from = n.audit_verified;
            let len = n.replica.audit_len();
            if len <= from {
                continue;
            }
            let prev = if from == 0 {
                GENESIS_HASH
            } else {
                n.replica.audit_records(from, 1)[0].hash
            };
            let recs = n.replica.audit_records(from + 1, usize::MAX);
            if let Err(e) = verify_chain(recs, prev) {
                bad = Some(format!("{id}'s audit chain does not verify: {e}"));
            }
            n.audit_verified = len;
        }
        if let Some(b) = bad {
            self.fail(b);
            return;
        }
        // 3. Root keys: reconstruct each enabled version's root once.
        self.learn_roots();
        // 4. No disk image holds a root key; destroyed versions keep < t shares.
        let mut findings = Vec::new();
        for (id, n) in &self.nodes {
            for bytes in n.disk.values() {
                for root in self.roots.values() {
                    if contains(bytes, root) {
                        findings.push(format!("{id}'s disk holds a root key"));
                    }
                }
            }
        }
        for k in self.truth.keys() {
            for v in &k.versions {
                if v.state == VersionState::Destroyed {
                    let sk = (k.id, v.version, v.epoch);
                    let left = self
                        .nodes
                        .values()
                        .filter(|n| n.disk.contains_key(&sk))
                        .count();
                    if left >= usize::from(v.threshold) {
                        findings.push(format!(
                            "destroyed version {} of {:?} still has {left} shares on disk (t = {})",
                            v.version, k.name, v.threshold
                        ));
                    }
                }
            }
        }
        if let Some(f) = findings.into_iter().next() {
            self.fail(f);
        }
    }

    fn check_secret_free(&mut self, what: &str, bytes: &[u8]) {
        if self.roots.values().any(|r| contains(bytes, r)) {
            self.fail(format!("a {what} contains a root key"));
        }
    }

    /// The checker alone reconstructs roots, from all holders' disks.
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
                if let Some(b) = n.disk.get(&sk) {
                    if b.len() >= 36 {
                        let idx = u64::from(u16::from_be_bytes([b[2], b[3]]));
                        let mut s = [0u8; 32];
                        s.copy_from_slice(&b[b.len() - 32..]);
                        if let Some(x) = qk_crypto::encoding::decode_scalar(&s) {
                            shares.push((idx, x));
                        }
                    }
                }
            }
            if shares.len() < usize::from(t) {
                continue;
            }
            shares.truncate(usize::from(t));
            let root = lagrange_at_zero(&shares);
            let Some(root) = root else { continue };
            let expected = pk
                .as_deref()
                .and_then(|b| PublicKeySet::from_bytes(b).ok())
                .map(|k| k.public_key());
            if Some((ProjectivePoint::GENERATOR * root).to_affine()) != expected {
                self.fail(format!(
                    "holders' shares of {:?} {} do not interpolate to its public key",
                    sk.0, sk.1
                ));
                return;
            }
            let mut bytes = [0u8; 32];
            bytes.copy_from_slice(&root.to_bytes());
            self.roots.insert(sk, bytes);
            self.stats.roots_reconstructed += 1;
        }
    }

    /// Heals the network, restarts crashed nodes, runs until idle, then
    /// unwraps once with every enabled version that `t` honest live holders
    /// still have shares of.
    fn quiescent_check(&mut self) {
        self.blocked.clear();
        let (loss, dup) = (self.loss_per_mille, self.dup_per_mille);
        self.loss_per_mille = 0;
        self.dup_per_mille = 0;
        self.workload_on = false;
        for id in self.ids() {
            if !self.nodes[&id].alive {
                self.restart(id);
            }
        }
        // Drop pending faults; they are re-armed afterwards.
        self.queue
            .retain(|_, ev| !matches!(ev, Ev::Fault | Ev::Restart(_) | Ev::Heal | Ev::Workload));
        self.run_until_idle(60_000);
        if self.violation.is_some() {
            return;
        }
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
            if ready < usize::from(rec.threshold) {
                continue;
            }
            let Some(w) = self.wrap_one(&name, version) else {
                self.fail(format!("cannot wrap under enabled {name:?} {version}"));
                return;
            };
            let (ct, pt) = (
                self.wrapped[w].ciphertext.clone(),
                self.wrapped[w].plaintext.clone(),
            );
            let live = self.live_ids();
            let via = live[self.rng.random_range(0..live.len())];
            self.stats.liveness_checks += 1;
            let op = self.next_op + 1;
            self.start_unwrap(via, &name, ct, pt.clone());
            let end = self.now + 30_000;
            while !self.probe.done.contains_key(&(via, op))
                && self.now < end
                && self.violation.is_none()
            {
                if self.queue.is_empty() {
                    break;
                }
                self.step_once();
            }
            match self.probe.done.get(&(via, op)) {
                Some(Ok(p)) if *p == pt => {}
                other => {
                    let what = format!(
                        "enabled version {version} of {name:?} could not be unwrapped with {ready} honest holders live and connected: {other:?}"
                    );
                    self.fail(what);
                    return;
                }
            }
        }
        self.probe.done.clear();
        self.loss_per_mille = loss;
        self.dup_per_mille = dup;
        self.workload_on = true;
        self.schedule(10, Ev::Workload);
        if self.cfg.faults {
            self.schedule(1_000, Ev::Fault);
        }
    }

    /// Steps until nothing but ticks is pending, every node applied the
    /// whole log and no DKG or unwrap is in flight (or `max_ms` passed).
    fn run_until_idle(&mut self, max_ms: u64) {
        let end = self.now + max_ms;
        while self.now < end && self.violation.is_none() {
            let busy_queue = self.queue.values().any(|e| !matches!(e, Ev::Tick));
            let busy_nodes = self.nodes.values().any(|n| {
                n.applied < self.log.len()
                    || n.proto.active_generations() > 0
                    || n.proto.pending_unwraps() > 0
            });
            let generating = self.truth.keys().any(|k| {
                k.versions
                    .iter()
                    .any(|v| v.state == VersionState::Generating)
            });
            if !busy_queue && !busy_nodes && !generating {
                return;
            }
            self.step_once();
        }
    }

    /// Scale study: one key's DKG, then one unwrap, no faults.
    pub fn scale(nodes: u64, threshold: u16, net: NetProfile, seed: u64) -> ScaleResult {
        let mut cfg = SimConfig::new(seed);
        cfg.nodes = nodes;
        cfg.threshold = threshold;
        cfg.net = net;
        cfg.faults = false;
        cfg.byzantine = false;
        let mut sim = Sim::new(cfg);
        sim.workload_on = false;
        sim.queue.retain(|_, e| matches!(e, Ev::Tick));
        let start = sim.now;
        sim.propose(
            "admin".into(),
            Operation::CreateKey(CreateKey {
                name: "k0".into(),
                description: "scale".into(),
                owner: "team".into(),
                purpose: "encrypt".into(),
                rotation_period_ms: None,
                expires_at_ms: None,
                threshold,
                holders: sim.ids(),
            }),
            None,
        );
        let end = sim.now + 120_000;
        while sim.now < end
            && !sim
                .truth
                .key("k0")
                .and_then(|k| k.version(KeyVersion(1)))
                .is_some_and(|v| v.state != VersionState::Generating)
        {
            sim.step_once();
        }
        let mut r = ScaleResult {
            dkg_ms: sim.now - start,
            dkg_messages: sim.stats.messages_sent,
            dkg_commits: sim.stats.commits,
            ..ScaleResult::default()
        };
        sim.run_until_idle(60_000);
        let Some(w) = sim.wrap_one("k0", KeyVersion(1)) else {
            return r;
        };
        let (ct, pt) = (
            sim.wrapped[w].ciphertext.clone(),
            sim.wrapped[w].plaintext.clone(),
        );
        let before = sim.stats.messages_sent;
        let t0 = sim.now;
        let via = NodeId(1);
        sim.start_unwrap(via, "k0", ct, pt);
        let op = sim.next_op;
        let end = sim.now + 30_000;
        while !sim.probe.done.contains_key(&(via, op)) && sim.now < end {
            sim.step_once();
        }
        r.unwrap_ms = sim.now - t0;
        r.unwrap_messages = sim.stats.messages_sent - before;
        r
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

/// Runs one seed.
pub fn run(cfg: SimConfig) -> Outcome {
    Sim::new(cfg).run()
}

/// Runs seeds `cfg.seed .. cfg.seed + count`; stops at the first violation.
pub fn sweep(cfg: &SimConfig, count: u64) -> (u64, Option<Violation>) {
    for s in cfg.seed..cfg.seed.saturating_add(count) {
        let mut c = cfg.clone();
        c.seed = s;
        let out = run(c);
        if let Some(v) = out.violation {
            return (s - cfg.seed + 1, Some(v));
        }
    }
    (count, None)
}
