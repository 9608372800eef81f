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
    holder_partial, partial_response, Action, Event, NodeProtocol, OpId, ProtocolConfig,
    ProtocolMessage, UnwrapMode, UnwrapRequest,
};
use qk_raft::{Batch, QkNode, Raft};
use qk_state::authn::{GrantCheck, KeyRoster};
use qk_state::proof::{Credential, IntentProof};
use qk_state::{
    verify_chain, Command, CreateKey, DkgStep, Operation, RequestId, StateMachine, VersionState,
    GENESIS_HASH,
};
use qk_types::{Epoch, KeyId, KeyVersion, NodeId};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::storage::{Applied, Hook, RaftDisk, SharedDisk};

mod checks;
mod forgery;
mod network;
mod oracle;
mod planted;
mod scheduler;
mod workload;

pub(crate) use forgery::Adversary;
pub(crate) use network::Network;
pub(crate) use oracle::Oracle;
pub(crate) use scheduler::Scheduler;
pub(crate) use workload::Workload;

use crate::{PlantedBug, SimConfig, Stats};

/// Simulated milliseconds at the start of every run (timestamps are never 0).
pub(crate) const EPOCH_MS: u64 = 1_000;

pub(crate) type ShareKey = (KeyId, KeyVersion, Epoch);

#[derive(Debug)]
pub(crate) struct InFlight {
    expected: Option<Vec<u8>>,
    byz_partial_delivered: bool,
    /// The key and version the ciphertext names (for the threshold).
    key: (String, Option<KeyVersion>),
    /// Holders whose partial (right or wrong) reached the coordinator.
    partials_from: BTreeSet<NodeId>,
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
    /// The share store was checked against the applied state since the
    /// node last started (as the node's `reconcile_shares`).
    pub(crate) reconciled: bool,
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
    /// A version's erase, run late (the receipt-before-erase planted bug).
    LateErase {
        id: NodeId,
        key: KeyId,
        version: KeyVersion,
    },
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

/// When each unwrap, refresh and generation finished (the scale study).
#[derive(Default)]
pub(crate) struct Timeline {
    /// When each unwrap finished (for the scale study).
    pub(crate) done_at: BTreeMap<(NodeId, OpId), u64>,
    /// When each version's last refresh completed (for the scale study).
    pub(crate) refresh_done: BTreeMap<(String, KeyVersion), u64>,
    /// When each version left `Generating` (enabled or failed).
    pub(crate) settled_at: BTreeMap<(String, KeyVersion), u64>,
}

/// One simulated cluster: its nodes, and the scheduler, network, oracle,
/// adversary and workload that drive and judge them.
pub(crate) struct World {
    pub(crate) cfg: SimConfig,
    pub(crate) rng: StdRng,
    pub(crate) this: Weak<Mutex<World>>,
    pub(crate) nodes: BTreeMap<NodeId, SimNode>,
    /// The simulated PKI: every node's and the admin's enrolled key (the
    /// cluster CA of a real node), and each one's credential.
    pub(crate) roster: Arc<dyn GrantCheck>,
    pub(crate) trace: Sha256,
    pub(crate) stats: Stats,
    /// Simulated time and the event queue.
    pub(crate) sched: Scheduler,
    /// Partitions, loss and duplication between nodes.
    pub(crate) net: Network,
    /// The checker's own record of what the agreed log allows.
    pub(crate) oracle: Oracle,
    /// The compromised node's forgeries and the material it collected.
    pub(crate) adversary: Adversary,
    /// The seeded clients' keys, ciphertexts and pending requests.
    pub(crate) load: Workload,
    /// When things finished (for the scale study).
    pub(crate) timeline: Timeline,
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("seed", &self.cfg.seed)
            .field("step", &self.sched.step)
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
                    proto: NodeProtocol::new(
                        NodeId(i),
                        ProtocolConfig::default(),
                        sim_dkg_key(NodeId(i)),
                    ),
                    raft: None,
                    sm: None,
                    raft_disk: SharedDisk::default(),
                    disk: BTreeMap::new(),
                    alive: false,
                    replay_upto: 0,
                    reconciled: false,
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
        let (roster, credentials) = sim_pki(cfg.seed, cfg.nodes);
        let byzantine =
            (cfg.byzantine && cfg.nodes > u64::from(cfg.threshold)).then_some(NodeId(cfg.nodes));
        let (loss, dup) = if cfg.faults { (20, 20) } else { (0, 0) };
        World {
            rng,
            this,
            nodes,
            roster: forgery::grant_check(roster, cfg.bug),
            trace: Sha256::new(),
            stats: Stats::default(),
            cfg,
            sched: Scheduler::new(),
            net: Network::new(loss, dup),
            oracle: Oracle {
                canon: Vec::new(),
                extender: None,
                truth: StateMachine::new(),
                roots: BTreeMap::new(),
                root_set: BTreeSet::new(),
                decoys: BTreeMap::new(),
                unwrap_requests: BTreeMap::new(),
                deals: BTreeMap::new(),
                acks: BTreeMap::new(),
                signed_intents: BTreeSet::new(),
                violation: None,
            },
            adversary: Adversary {
                byzantine,
                forged: BTreeSet::new(),
                seen_signed: Vec::new(),
                seen_proofs: Vec::new(),
                forged_partials: BTreeSet::new(),
                unchecked_partials: BTreeSet::new(),
            },
            load: Workload {
                wrapped: Vec::new(),
                key_names: Vec::new(),
                due_destroy: Vec::new(),
                workload_on: true,
                pending_proposals: 0,
                next_request: 0,
                next_op: 0,
                credentials,
                probe: BTreeMap::new(),
            },
            timeline: Timeline {
                done_at: BTreeMap::new(),
                refresh_done: BTreeMap::new(),
                settled_at: BTreeMap::new(),
            },
        }
    }

    /// Simulated milliseconds (the paused tokio clock).
    pub(crate) fn now(&self) -> u64 {
        self.sched.now()
    }

    pub(crate) fn schedule(&mut self, delay: u64, ev: Ev) {
        self.sched.push(delay, ev);
    }

    pub(crate) fn fail(&mut self, what: String) {
        if self.oracle.violation.is_none() {
            self.oracle.violation = Some(what);
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
        self.net.heal();
    }

    pub(crate) fn set_loss(&mut self, loss: u32, dup: u32) -> (u32, u32) {
        self.net.set_loss(loss, dup)
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
                Applied::SnapshotInstalled { index } => {
                    w.trace(&format!("snapshot {id}"), &index.to_be_bytes());
                    w.stats.snapshots_installed += 1;
                    // As the node: check the share store against the new state.
                    w.reconcile(id);
                }
            }
        })
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
        self.load.next_request += 1;
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.cfg.seed.to_be_bytes());
        id[8..].copy_from_slice(&self.load.next_request.to_be_bytes());
        let mut cmd = Command {
            request_id: RequestId(id),
            time_ms: 0,
            principal,
            op,
            proof: None,
        };
        // Signed by its author, as the node signs with the caller's
        // credential or its own.
        if let Some(credential) = self.load.credentials.get(&cmd.principal) {
            cmd.proof = credential.sign_command(&cmd, self.now()).ok().map(Box::new);
        }
        self.load.pending_proposals += 1;
        self.enqueue(at, vec![(cmd, 0)]);
    }

    /// Queues commands at node `at`'s proposer (group commit, as the
    /// node's `Proposer`: up to [`MAX_IN_FLIGHT_BATCHES`] entries being
    /// committed, everything queued meanwhile goes into the next one).
    fn enqueue(&mut self, at: NodeId, cmds: Vec<(Command, u8)>) {
        let Some(node) = self.nodes.get_mut(&at).filter(|n| n.alive) else {
            self.load.pending_proposals -= cmds.len() as u64;
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
        self.load.pending_proposals -= dropped.len() as u64;
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
                None => self.load.pending_proposals -= forward.len() as u64,
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
        if i < self.oracle.canon.len() {
            if self.oracle.canon[i] != hash {
                self.fail(format!(
                    "{id} applied a different entry at index {index} than other nodes did"
                ));
            }
            self.oracle.extender = None;
        } else if i == self.oracle.canon.len() {
            self.oracle.canon.push(hash);
            self.oracle.extender = Some(id);
            self.stats.commits += 1;
        } else {
            self.fail(format!(
                "{id} applied index {index} but only {} entries were ever applied",
                self.oracle.canon.len()
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
        if self.oracle.extender == Some(id) && index as usize + 1 == self.oracle.canon.len() {
            // The simulated membership never changes: every node, always.
            let nodes = self.cfg.nodes;
            let is_member = move |n: NodeId| (1..=nodes).contains(&n.0);
            let resp = self
                .oracle
                .truth
                .apply_from_members(cmd, self.roster.as_ref(), &is_member);
            self.stats.commands += 1;
            self.check_forgery(cmd, &resp);
            if resp.result.is_ok() {
                self.note_deal(cmd);
                self.note_ack(cmd);
                self.check_receipt(cmd);
                self.check_complaints(cmd);
            }
            if let Ok(a) = &resp.result {
                match a {
                    qk_state::Applied::VersionEnabled => {
                        self.stats.versions_enabled += 1;
                        self.note_settled(cmd);
                        self.check_all_acked(cmd);
                        self.check_dkg_blame(cmd);
                    }
                    qk_state::Applied::VersionDestroyed => self.stats.versions_destroyed += 1,
                    qk_state::Applied::GenerationFailed { .. } => self.note_settled(cmd),
                    qk_state::Applied::RefreshCompleted { .. } => {
                        self.stats.refreshes_completed += 1;
                        if let Operation::Dkg { name, version, .. } = &cmd.op {
                            let now = self.now();
                            self.timeline
                                .refresh_done
                                .insert((name.clone(), *version), now);
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
        if let (
            Ok(qk_state::Applied::RefreshCompleted { .. }),
            Operation::Dkg { name, version, .. },
        ) = (&response.result, &cmd.op)
        {
            self.check_old_epochs(id, state, Some((name, *version)));
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
                w.load.pending_proposals -= batch.len() as u64;
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
        let byz = Some(id) == self.adversary.byzantine;
        for action in actions {
            self.trace(&format!("action {id}"), format!("{action:?}").as_bytes());
            match action {
                Action::Send { to, msg } => match msg.encode() {
                    Ok(bytes) => self.send(id, to, bytes.to_vec()),
                    Err(e) => self.fail(format!("{id} produced an unencodable message: {e}")),
                },
                Action::Propose(Operation::Dkg {
                    name,
                    version,
                    from,
                    step: DkgStep::Deal(bytes),
                    session,
                }) if byz => {
                    // The Byzantine dealer seals wrong shares to the others.
                    let bytes = self.corrupt_deal(id, &name, version, session, &bytes);
                    let op = Operation::Dkg {
                        name,
                        version,
                        from,
                        step: DkgStep::Deal(bytes),
                        session,
                    };
                    self.propose(id.to_string(), op, Some(id));
                }
                Action::Propose(Operation::Dkg {
                    name,
                    version,
                    from,
                    step: DkgStep::Complaints(_),
                    session,
                }) if self.cfg.bug == PlantedBug::SkipComplaints && !byz => {
                    // The bug: the holder never checks the shares it was
                    // dealt, so it has nothing to complain about.
                    let step = DkgStep::Complaints(Vec::new());
                    let op = Operation::Dkg {
                        name,
                        version,
                        from,
                        step,
                        session,
                    };
                    self.propose(id.to_string(), op, Some(id));
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
                } => self.erase_share(id, (key, version, epoch), state),
                Action::EraseVersion { key, version, .. } => self.erase_version(id, key, version),
                Action::AnswerPartial { to, request } => self.answer(id, to, request, state),
                Action::UnwrapDone {
                    op_id,
                    result,
                    faulty,
                } => {
                    let result = result.map(|p| p.expose().to_vec());
                    self.unwrap_done((id, state), op_id, result, faulty);
                }
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
        let byz = Some(id) == self.adversary.byzantine;
        let now_ms = self.clock_of(id);
        if byz {
            self.keep_seen_proof(&request);
        } else if let Err(reason) = self.check_intent(to, &request, now_ms, state) {
            if self.adversary.forged_partials.contains(&request.op_id)
                && Some(to) == self.adversary.byzantine
            {
                self.stats.partial_forgeries_refused += 1;
            }
            let reply = ProtocolMessage::PartialResponse {
                op_id: request.op_id,
                result: Err(reason),
            };
            if let Ok(bytes) = reply.encode() {
                self.send(id, to, bytes.to_vec());
            }
            return;
        }
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
        let result = holder_partial(state, id, share.as_ref(), &req, now_ms, &mut self.rng);
        let mut reply = partial_response(&req, result);
        if !byz {
            reply = self.planted_release((id, state, share.as_ref()), &req, now_ms, reply);
        }
        if let ProtocolMessage::PartialResponse { op_id, result } = &mut reply {
            *op_id = request.op_id;
            if !byz {
                self.check_answer(id, to, &request, result.is_ok(), (state, now_ms));
            }
        }
        match reply.encode() {
            Ok(bytes) => self.send(id, to, bytes.to_vec()),
            Err(e) => self.fail(format!("{id}'s partial response does not encode: {e}")),
        }
    }

    pub(super) fn unwrap_done(
        &mut self,
        (id, state): (NodeId, &StateMachine),
        op_id: OpId,
        result: Result<Vec<u8>, qk_protocol::UnwrapError>,
        faulty: Vec<NodeId>,
    ) {
        let byz = self.adversary.byzantine;
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
        self.oracle.unwrap_requests.remove(&(id, op_id));
        if let Some(flight) = &flight {
            self.check_combined_from_t((id, state), op_id, flight, &result);
            match (&result, &flight.expected) {
                (Ok(p), Some(exp)) if p != exp => {
                    self.fail(format!("unwrap {op_id} at {id} returned a wrong plaintext"));
                }
                (Ok(_), None) => self.fail(format!(
                    "unwrap {op_id} at {id} succeeded, though it named a context the ciphertext was not made for or a principal that may not decrypt"
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
        self.timeline.done_at.insert((id, op_id), now);
        self.load
            .probe
            .insert((id, op_id), result.map_err(|e| e.to_string()));
    }
}

/// The simulated PKI of run `seed`: node-1..node-`nodes`, the admin, the
/// workload's caller "app" and "guest" (an auditor, who may not decrypt),
/// each enrolled with a key derived from the seed.
fn sim_pki(seed: u64, nodes: u64) -> (KeyRoster, BTreeMap<String, Credential>) {
    let mut roster = KeyRoster::new();
    let principals = (1..=nodes)
        .map(|i| NodeId(i).to_string())
        .chain(["admin", "app", "guest"].map(String::from));
    let credentials = principals
        .filter_map(|name| {
            let mut h = Sha256::new();
            h.update(seed.to_be_bytes());
            h.update(name.as_bytes());
            let key_seed: [u8; 32] = h.finalize().into();
            let credential = roster.enroll(&name, key_seed, u64::MAX).ok()?;
            Some((name, credential))
        })
        .collect();
    (roster, credentials)
}

/// Node `id`'s DKG key in the simulation (as a node derives it from its seal key).
pub(crate) fn sim_dkg_key(id: NodeId) -> qk_crypto::DkgSecretKey {
    let mut seed = [0x3cu8; 64];
    seed[..8].copy_from_slice(&id.0.to_be_bytes());
    qk_crypto::DkgSecretKey::from_seed(&seed)
}
