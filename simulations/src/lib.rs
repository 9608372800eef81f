//! Deterministic simulation of a Quorumkey cluster (issue 6).
//!
//! One thread, one seeded RNG, one simulated clock: a tokio current-thread
//! runtime with a paused clock, so time only moves when every task waits,
//! straight to the next timer. Each node runs the real code: openraft (the
//! node's `qk_raft::TypeConfig`) over a simulated network and in-memory
//! storage with the node's durability rules, [`qk_state::StateMachine`] as
//! the applied state, [`qk_protocol::NodeProtocol`] fed from the apply hook,
//! ticks and messages, [`qk_protocol::holder_partial`] and `qk_crypto`.
//! Faults come from the seed: message loss, delay, duplication and
//! reordering, symmetric and asymmetric partitions, crashes (the applied
//! state is lost, the Raft disk and share store survive), loss of a whole
//! disk, clock skew, and a Byzantine holder that sends wrong partials and
//! wrong DKG shares. Invariants are checked after every step; a failure
//! names its seed and the command that replays it. See `docs/SIMULATION.md`.
#![forbid(unsafe_code)]

mod net;
mod scale;
mod storage;
mod world;

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qk_raft::Raft;
use qk_state::Operation;
use qk_types::{KeyVersion, NodeId};
use rand::RngExt;

pub use crate::scale::{keys_study, scale, KeysResult};
use crate::world::{Ev, Job, World, EPOCH_MS};

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
/// catches it (docs/SIMULATION.md, "Planted bugs").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    None,
    /// Node 1's state machine applies log entries 3 and 4 in swapped order.
    SwapApply,
    /// The share store ignores `EraseShare` and `EraseVersion` (a disk that
    /// never flushes the erase), while the protocol still proposes its erase
    /// receipt.
    IgnoreErase,
    /// Honest holders check the ciphertext proof against the context the
    /// workload wraps under instead of the caller's, so a caller naming
    /// another context gets partials.
    SkipProofCheck,
    /// The cluster's grant check accepts any self-signed grant, whatever
    /// principal it names (as if the CA check were skipped at apply).
    TrustAnyGrant,
    /// Honest holders answer another node's partial request without
    /// checking the principal's proof (the node's word is taken).
    SkipIntentCheck,
    /// Honest holders answer partials whatever the version's state
    /// (disabled, compromised, pending destruction, destroying).
    HolderUsability,
    /// Honest holders answer partials without their own policy check of the
    /// principal (the requesting node's check is trusted).
    HolderAuthorization,
    /// Honest holders ignore the key's minimum decryption version.
    MinDecrypt,
    /// Holders keep the old epoch's share when a refresh switches epochs.
    RefreshErase,
    /// Holders propose their erase receipt before erasing; the erase runs
    /// later (and is lost if the node crashes first).
    ReceiptBeforeErase,
    /// Honest DKG holders never check the shares they were dealt against
    /// the dealer's commitments: they post no complaints.
    SkipComplaints,
    /// Coordinators combine as soon as partials from `t − 1` holders
    /// arrived (a threshold off by one).
    CombineShort,
}

impl PlantedBug {
    /// Every planted bug, for the flag parser and the test that runs them all.
    pub const ALL: [PlantedBug; 12] = [
        PlantedBug::SwapApply,
        PlantedBug::IgnoreErase,
        PlantedBug::SkipProofCheck,
        PlantedBug::TrustAnyGrant,
        PlantedBug::SkipIntentCheck,
        PlantedBug::HolderUsability,
        PlantedBug::HolderAuthorization,
        PlantedBug::MinDecrypt,
        PlantedBug::RefreshErase,
        PlantedBug::ReceiptBeforeErase,
        PlantedBug::SkipComplaints,
        PlantedBug::CombineShort,
    ];

    /// The name `qk-sim --plant NAME` takes.
    pub fn name(self) -> &'static str {
        match self {
            PlantedBug::None => "none",
            PlantedBug::SwapApply => "swap-apply",
            PlantedBug::IgnoreErase => "ignore-erase",
            PlantedBug::SkipProofCheck => "skip-proof-check",
            PlantedBug::TrustAnyGrant => "trust-any-grant",
            PlantedBug::SkipIntentCheck => "skip-intent-check",
            PlantedBug::HolderUsability => "holder-usability",
            PlantedBug::HolderAuthorization => "holder-authorization",
            PlantedBug::MinDecrypt => "min-decrypt",
            PlantedBug::RefreshErase => "refresh-erase",
            PlantedBug::ReceiptBeforeErase => "receipt-before-erase",
            PlantedBug::SkipComplaints => "skip-complaints",
            PlantedBug::CombineShort => "combine-short",
        }
    }

    /// The bug `name` names.
    pub fn parse(name: &str) -> Result<PlantedBug, UnknownBug> {
        std::iter::once(PlantedBug::None)
            .chain(PlantedBug::ALL)
            .find(|b| b.name() == name)
            .ok_or_else(|| UnknownBug(name.to_string()))
    }
}

/// A `--plant` name that names no planted bug.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no planted bug {0:?}; choose one of {names}", names = PlantedBug::ALL.map(|b| b.name()).join(", "))]
pub struct UnknownBug(pub String);

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: u64,
    pub threshold: u16,
    /// Events processed (protocol message deliveries, ticks, workload and
    /// fault steps, restarts); openraft's own work happens between them.
    pub steps: u64,
    pub net: NetProfile,
    /// Message loss, duplication, partitions, crashes, disk loss.
    pub faults: bool,
    /// The highest-numbered node answers partial requests with wrong
    /// partials and deals wrong DKG shares (and never justifies them).
    pub byzantine: bool,
    pub bug: PlantedBug,
    /// Workload: no new keys once this many exist.
    pub max_keys: usize,
    /// openraft builds a snapshot (and purges the log) every this many entries.
    pub snapshot_every: u64,
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
            snapshot_every: 100,
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
        if self.bug != PlantedBug::None {
            s.push_str(&format!(" --plant {}", self.bug.name()));
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
    /// Log entries agreed (applied by a first node).
    pub commits: u64,
    /// Commands in those entries (group commit puts several in one entry).
    pub commands: u64,
    /// Raft RPC messages (each way counts).
    pub raft_messages: u64,
    /// Raft requests delivered twice.
    pub raft_duplicates: u64,
    /// Commands forwarded to the leader.
    pub forwards: u64,
    /// Raft entries proposed (each a batch of commands).
    pub batches: u64,
    pub refreshes_started: u64,
    pub refreshes_completed: u64,
    /// DKGs in which the Byzantine dealer's wrong shares reached honest
    /// holders, and of those, how many ended with it left out of QUAL.
    pub dkg_byzantine_sessions: u64,
    pub dkg_byzantine_blamed: u64,
    pub keys_created: u64,
    pub versions_enabled: u64,
    pub versions_destroyed: u64,
    pub wraps: u64,
    pub unwraps_started: u64,
    pub unwraps_ok: u64,
    pub unwraps_failed: u64,
    pub liveness_checks: u64,
    pub crashes: u64,
    /// Log entries appended but not yet flushed when their node crashed.
    pub unflushed_entries_lost: u64,
    pub disk_losses: u64,
    pub partitions: u64,
    pub byzantine_blamed: u64,
    /// Unwraps under a context the ciphertext was not made for, and how
    /// many of them were refused.
    pub attacks: u64,
    pub attacks_refused: u64,
    /// Commands the compromised node forged (another principal's or node's
    /// name, a replayed proof, a self-made grant), and how many were refused.
    pub forgeries: u64,
    pub forgeries_refused: u64,
    /// Partial requests the compromised node sent in the workload caller's
    /// name without its proof of that request, and how many were refused.
    pub partial_forgeries: u64,
    pub partial_forgeries_refused: u64,
    /// Unwraps a caller signed through the compromised node, which passed
    /// them to the holders without its own checks (a version that may not
    /// decrypt, a principal that may not), and the holders' refusals.
    pub unchecked_partials: u64,
    pub unchecked_partials_refused: u64,
    /// Snapshots nodes installed from the leader (each followed by a
    /// check of the node's share store against the new state).
    pub snapshots_installed: u64,
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

/// Scale-study measurements (simulated milliseconds and message counts).
#[derive(Clone, Debug, Default)]
pub struct ScaleResult {
    pub dkg_ms: u64,
    pub dkg_messages: u64,
    pub dkg_raft_messages: u64,
    pub dkg_log_entries: u64,
    pub dkg_commands: u64,
    pub unwrap_ms: u64,
    pub unwrap_messages: u64,
    pub refresh_ms: u64,
    pub refresh_messages: u64,
    pub refresh_raft_messages: u64,
    pub refresh_log_entries: u64,
    pub refresh_commands: u64,
}

/// The raft settings of a simulated node. Election timeouts are fixed per
/// node from the seed (`max = min + 1`, so openraft's unseeded thread RNG
/// always draws `min`). openraft 0.9 uses the heartbeat interval as the
/// AppendEntries timeout, so it must exceed the worst round trip.
fn raft_config(
    net: NetProfile,
    election_timeout_ms: u64,
    snapshot_every: u64,
) -> Option<Arc<openraft::Config>> {
    let c = openraft::Config {
        cluster_name: "quorumkey-sim".into(),
        heartbeat_interval: 2 * net.max_delay_ms + 100,
        election_timeout_min: election_timeout_ms,
        election_timeout_max: election_timeout_ms + 1,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(snapshot_every),
        max_in_snapshot_log_to_keep: 20,
        ..Default::default()
    };
    c.validate().ok().map(Arc::new)
}

/// The async side: owns the world, runs openraft's nodes, steps events.
struct Driver {
    world: Arc<Mutex<World>>,
}

impl Driver {
    async fn new(cfg: SimConfig) -> Driver {
        let world = Arc::new_cyclic(|this| Mutex::new(World::new(cfg, this.clone())));
        let d = Driver { world };
        let ids = d.with(|w| w.ids());
        for id in &ids {
            d.start_node(*id).await;
        }
        let (n, first) = d.with(|w| {
            let first = w.nodes.get(&NodeId(1)).and_then(|n| n.raft.clone());
            (w.cfg.nodes, first)
        });
        if let Some(raft) = first {
            if let Err(e) = raft.initialize(world::members(n)).await {
                d.with(|w| w.fail(format!("cannot initialize the cluster: {e}")));
            }
        }
        d.create_admin().await;
        d.publish_dkg_keys().await;
        d.with(|w| {
            w.schedule(300, Ev::Workload);
            if w.cfg.faults {
                let d = w.rng.random_range(1_000..4_000);
                w.schedule(d, Ev::Fault);
            }
        });
        d
    }

    /// As a bootstrapping node does: node 1 turns request shares on and
    /// then proposes the initial admin, each until the log has it (the first
    /// proposals may precede the election). Then the admin creates the
    /// workload's caller, "app", a key user, and "guest", an auditor whose
    /// unwraps every holder must refuse.
    async fn create_admin(&self) {
        self.with(|w| w.schedule(50, Ev::Tick));
        let node_1 = ("node-1", Some(NodeId(1)));
        let shares_on = |w: &World| w.oracle.truth.request_shares().is_active();
        let enable = || Operation::EnableRequestShares;
        self.propose_until(node_1, enable, shares_on, "request shares")
            .await;
        self.create_principal(node_1, "admin", qk_state::Role::Admin)
            .await;
        self.create_principal(("admin", None), "app", qk_state::Role::KeyUser)
            .await;
        self.create_principal(("admin", None), "guest", qk_state::Role::Auditor)
            .await;
    }

    /// `author` (proposing at a node, or at any for a client) creates
    /// principal `name` with `role`, retrying until the log has it.
    async fn create_principal(
        &self,
        author: (&str, Option<NodeId>),
        name: &str,
        role: qk_state::Role,
    ) {
        let op = || Operation::CreatePrincipal {
            name: name.into(),
            roles: [role].into(),
        };
        let created = |w: &World| w.oracle.truth.principal(name).is_some();
        self.propose_until(author, op, created, &format!("principal {name}"))
            .await;
    }

    /// `author` (proposing at a node, or at any for a client) proposes
    /// `op()` until `done` holds, or fails the run naming `what`.
    async fn propose_until(
        &self,
        (author, at): (&str, Option<NodeId>),
        op: impl Fn() -> Operation,
        done: impl Fn(&World) -> bool,
        what: &str,
    ) {
        for _attempt in 0..50 {
            self.with(|w| w.propose(author.into(), op(), at));
            let until = self.with(|w| w.now()) + 200;
            while self.with(|w| w.now()) < until && !self.violated() {
                if self.with(|w| done(w)) {
                    return;
                }
                if !self.step().await {
                    break;
                }
            }
        }
        self.with(|w| w.fail(format!("{what} was never committed")));
    }

    /// As every node does at start-up: each proposes its DKG key until the
    /// log has every node's.
    async fn publish_dkg_keys(&self) {
        for _attempt in 0..50 {
            let missing = self.with(|w| {
                let missing: Vec<NodeId> = w
                    .ids()
                    .into_iter()
                    .filter(|id| w.oracle.truth.dkg_key(*id).is_none())
                    .collect();
                for id in &missing {
                    let op = Operation::PublishDkgKey {
                        node: *id,
                        public_key: world::sim_dkg_key(*id).public_key().to_bytes().to_vec(),
                    };
                    w.propose(id.to_string(), op, Some(*id));
                }
                missing.len()
            });
            if missing == 0 {
                return;
            }
            let until = self.with(|w| w.now()) + 200;
            while self.with(|w| w.now()) < until && !self.violated() {
                if !self.step().await {
                    break;
                }
            }
        }
        self.with(|w| w.fail("some node's DKG key was never committed".into()));
    }

    fn with<T>(&self, f: impl FnOnce(&mut World) -> T) -> T {
        let mut w = match self.world.lock() {
            Ok(w) => w,
            Err(p) => p.into_inner(),
        };
        f(&mut w)
    }

    async fn start_node(&self, id: NodeId) {
        let Some((log, sm, timeout, snapshot_every)) = self.with(|w| {
            let t = w.nodes.get(&id)?.election_timeout_ms;
            let every = (w.cfg.net, w.cfg.snapshot_every);
            w.prepare_start(id).map(|(l, s)| (l, s, t, every))
        }) else {
            return;
        };
        let Some(config) = raft_config(snapshot_every.0, timeout, snapshot_every.1) else {
            self.with(|w| w.fail("invalid simulated Raft settings".into()));
            return;
        };
        let network = net::SimNetwork {
            world: Arc::downgrade(&self.world),
            me: id,
        };
        match Raft::new(id.0, config, network, log, sm.clone()).await {
            Ok(raft) => self.with(|w| w.started(id, raft, sm)),
            Err(e) => self.with(|w| w.fail(format!("{id} cannot start Raft: {e}"))),
        }
    }

    async fn run_jobs(&self) {
        loop {
            let jobs = self.with(|w| std::mem::take(&mut w.sched.jobs));
            if jobs.is_empty() {
                return;
            }
            for job in jobs {
                match job {
                    Job::Crash(id) => {
                        let raft = self.with(|w| w.nodes.get_mut(&id).and_then(|n| n.raft.take()));
                        if let Some(raft) = raft {
                            let _ = raft.shutdown().await;
                        }
                    }
                    Job::Start(id) => self.start_node(id).await,
                }
            }
        }
    }

    /// Waits (in simulated time) for the next event, handles it, runs the
    /// jobs it asked for and checks the invariants. `false` if nothing is
    /// scheduled at all.
    async fn step(&self) -> bool {
        loop {
            let (next, notify) = self.with(|w| (w.next_event_at(), w.sched.notify.clone()));
            let Some(at) = next else { return false };
            let (now, start) = self.with(|w| (w.now(), w.sched.start));
            if at <= now {
                break;
            }
            let wake = start + Duration::from_millis(at - EPOCH_MS);
            tokio::select! {
                biased;
                _ = notify.notified() => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
        self.with(|w| w.step_event());
        self.run_jobs().await;
        self.with(|w| w.check());
        true
    }

    fn violated(&self) -> bool {
        self.with(|w| w.oracle.violation.is_some())
    }

    async fn run(self) -> Outcome {
        // Workload steps between quiescent liveness checks.
        const QUIESCE_EVERY: u64 = 1_000;
        let steps = self.with(|w| w.cfg.steps);
        let mut since_check = 0;
        while self.with(|w| w.sched.step) < steps && !self.violated() {
            if !self.step().await {
                break;
            }
            since_check += 1;
            if !self.violated() && since_check >= QUIESCE_EVERY {
                since_check = 0;
                self.quiescent_check().await;
            }
        }
        if !self.violated() {
            self.quiescent_check().await;
        }
        self.finish()
    }

    fn finish(&self) -> Outcome {
        self.with(|w| {
            let mut stats = w.stats.clone();
            stats.steps = w.sched.step;
            stats.time_ms = w.now();
            let violation = w.oracle.violation.clone().map(|what| Violation {
                seed: w.cfg.seed,
                step: w.sched.step,
                time_ms: w.now(),
                what,
                replay: w.cfg.replay_command(),
            });
            Outcome {
                trace_hash: w.trace_hash(),
                stats,
                violation,
            }
        })
    }

    /// Heals the network, restarts crashed nodes, runs until idle, then
    /// unwraps once with every enabled version that `t` honest live holders
    /// still have shares of. Then faults and the workload resume.
    async fn quiescent_check(&self) {
        let (loss, dup) = self.with(|w| {
            w.heal();
            w.load.workload_on = false;
            w.sched.queue.retain(|_, ev| {
                !matches!(ev, Ev::Fault | Ev::Restart(_) | Ev::Heal | Ev::Workload)
            });
            for id in w.ids() {
                if !w.nodes[&id].alive {
                    w.sched.jobs.push(Job::Start(id));
                }
            }
            w.set_loss(0, 0)
        });
        self.run_jobs().await;
        self.run_until_idle(60_000).await;
        if self.violated() {
            return;
        }
        self.with(|w| w.check_disks_and_states());
        for (name, version, ready) in self.with(|w| w.usable_versions()) {
            if !self.probe_unwrap(&name, version, ready).await {
                return;
            }
        }
        self.with(|w| {
            w.load.probe.clear();
            w.set_loss(loss, dup);
            w.load.workload_on = true;
            w.schedule(10, Ev::Workload);
            if w.cfg.faults {
                w.schedule(1_000, Ev::Fault);
            }
        });
    }

    /// One fresh wrap of `name` `version`, unwrapped through a random node;
    /// it must return the plaintext.
    async fn probe_unwrap(&self, name: &str, version: KeyVersion, ready: usize) -> bool {
        let started = self.with(|w| {
            let i = w.wrap_one(name, version)?;
            let (ct, pt) = (
                w.load.wrapped[i].ciphertext.clone(),
                w.load.wrapped[i].plaintext.clone(),
            );
            let live = w.live_ids();
            let via = live[w.rng.random_range(0..live.len())];
            w.stats.liveness_checks += 1;
            let op = w.start_unwrap(via, name, ct, pt.clone());
            Some((via, op, pt, w.now() + 30_000))
        });
        let Some((via, op, pt, end)) = started else {
            self.with(|w| w.fail(format!("cannot wrap under enabled {name:?} {version}")));
            return false;
        };
        while !self.with(|w| w.load.probe.contains_key(&(via, op)) || w.now() >= end)
            && !self.violated()
        {
            if !self.step().await {
                break;
            }
        }
        self.with(|w| match w.load.probe.get(&(via, op)) {
            Some(Ok(p)) if *p == pt => true,
            other => {
                let what = format!(
                    "enabled version {version} of {name:?} could not be unwrapped with {ready} honest holders live and connected: {other:?}"
                );
                w.fail(what);
                false
            }
        })
    }

    /// Steps until [`World::is_idle`] (or `max_ms` passed).
    async fn run_until_idle(&self, max_ms: u64) {
        let end = self.with(|w| w.now()) + max_ms;
        while !self.violated() && self.with(|w| w.now()) < end {
            if self.with(|w| w.is_idle()) {
                return;
            }
            if !self.step().await {
                return;
            }
        }
    }
}

/// The paused-clock, current-thread runtime every run uses.
fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("cannot build the simulation runtime: {e}"),
    }
}

/// Runs one seed.
pub fn run(cfg: SimConfig) -> Outcome {
    runtime().block_on(async move { Driver::new(cfg).await.run().await })
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
