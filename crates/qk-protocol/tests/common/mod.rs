//! In-process cluster: N `NodeProtocol`s over a fake totally ordered log
//! (each node applies every entry to its own `StateMachine` replica, in the
//! same order) and a fake FIFO network that carries encoded messages.
//! Deterministic: one seeded RNG, one clock, `BTreeMap`s only.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};

use qk_crypto::{wrap, Ciphertext, EncryptionContext, KeyShare, PublicKeySet};
use qk_protocol::{
    holder_partial, partial_response, Action, Event, NodeProtocol, OpId, ProtocolConfig,
    ProtocolMessage, UnwrapError, UnwrapMode, UnwrapRequest,
};
use qk_state::{
    Command, CreateKey, DkgStep, KeyRecord, KeyVersionRecord, Operation, RequestId, StateMachine,
    VersionState,
};
use qk_types::{Epoch, KeyId, KeyVersion, NodeId};
use rand::rngs::StdRng;
use rand::SeedableRng;

pub const KEY: &str = "payments";
pub const V1: KeyVersion = KeyVersion(1);
/// A principal the cluster does not know: every holder refuses it.
pub const MALLORY: &str = "mallory";

pub fn ctx() -> EncryptionContext {
    BTreeMap::from([("tenant".to_string(), "acme".to_string())])
}

/// Node `id`'s DKG key in these tests.
pub fn dkg_key(id: NodeId) -> qk_crypto::DkgSecretKey {
    qk_crypto::DkgSecretKey::from_seed(&[id.0 as u8; 64])
}

/// A deal with the boxes of its first two receivers swapped: each opens to
/// garbage for its receiver (what a cheating dealer posts).
fn swap_first_boxes(bytes: &[u8]) -> Vec<u8> {
    match qk_crypto::PublicMessage::from_bytes(bytes) {
        Ok(qk_crypto::PublicMessage::Deal(mut d)) => {
            d.shares.swap(0, 1);
            d.to_bytes()
        }
        _ => bytes.to_vec(),
    }
}

pub type UnwrapOutcome = (Result<Vec<u8>, UnwrapError>, Vec<NodeId>);

pub struct Node {
    pub proto: NodeProtocol,
    pub replica: StateMachine,
    pub store: BTreeMap<(KeyId, KeyVersion, Epoch), KeyShare>,
    pub persisted: Vec<(KeyId, KeyVersion)>,
    pub erased: Vec<(KeyId, KeyVersion)>,
    pub done: BTreeMap<OpId, UnwrapOutcome>,
    pub warnings: Vec<String>,
    /// Receives nothing and does nothing.
    pub dead: bool,
    /// Runs, but every proposal and message it emits is lost.
    pub muted: bool,
    /// Answers partial requests with a partial for `decoy` instead.
    pub byzantine: Option<Vec<u8>>,
    /// Answers partial requests with this other node's partial (a valid
    /// partial, under the other node's share index).
    pub answers_as: Option<u64>,
    /// Holds `NeedShare` requests until [`Cluster::load_shares`] (as a node
    /// whose disk read is slow), instead of answering at once.
    pub slow_disk: bool,
    /// The `NeedShare` requests held meanwhile.
    pub share_loads: Vec<(KeyId, KeyVersion, Epoch)>,
}

pub struct Cluster {
    pub nodes: BTreeMap<NodeId, Node>,
    pub log: Vec<Command>,
    pending: VecDeque<Command>,
    net: VecDeque<(NodeId, NodeId, Vec<u8>)>,
    pub now: u64,
    pub rng: StdRng,
    next_request: u64,
    next_op: OpId,
    /// Deliver each node's sends before the next node sees an applied
    /// entry.
    pub interleave: bool,
    /// Dealers whose deals seal wrong shares to the first two holders.
    pub cheating_dealers: Vec<u64>,
    /// Every partial request a node emitted (muted or not), in order.
    pub partial_requests: Vec<SentRequest>,
}

/// One `Send` of a `PartialRequest` the protocol emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SentRequest {
    pub from: NodeId,
    pub to: NodeId,
    pub op_id: OpId,
    pub at_ms: u64,
}

impl Cluster {
    pub fn new(n: u64, seed: u64) -> Self {
        let nodes = (1..=n)
            .map(|i| {
                let id = NodeId(i);
                (
                    id,
                    Node {
                        proto: NodeProtocol::new(id, ProtocolConfig::default(), dkg_key(id)),
                        replica: StateMachine::new(),
                        store: BTreeMap::new(),
                        persisted: Vec::new(),
                        erased: Vec::new(),
                        done: BTreeMap::new(),
                        warnings: Vec::new(),
                        dead: false,
                        muted: false,
                        byzantine: None,
                        answers_as: None,
                        slow_disk: false,
                        share_loads: Vec::new(),
                    },
                )
            })
            .collect();
        let mut cluster = Cluster {
            nodes,
            log: Vec::new(),
            pending: VecDeque::new(),
            net: VecDeque::new(),
            now: 1_000,
            rng: StdRng::seed_from_u64(seed),
            next_request: 0,
            next_op: 0,
            interleave: false,
            cheating_dealers: Vec::new(),
            partial_requests: Vec::new(),
        };
        // As a bootstrapping node does: the first entry creates the admin.
        cluster.propose(
            "node-1",
            Operation::CreatePrincipal {
                name: "admin".into(),
                roles: [qk_state::Role::Admin].into(),
            },
        );
        // The workload's caller may decrypt; MALLORY is unknown to the cluster.
        cluster.admin(Operation::CreatePrincipal {
            name: "app".into(),
            roles: [qk_state::Role::KeyUser].into(),
        });
        // As every node does at start-up: publish its DKG key.
        for i in 1..=n {
            let public_key = dkg_key(NodeId(i)).public_key().to_bytes().to_vec();
            cluster.propose(
                &NodeId(i).to_string(),
                Operation::PublishDkgKey {
                    node: NodeId(i),
                    public_key,
                },
            );
        }
        cluster
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[&NodeId(id)]
    }

    pub fn node_mut(&mut self, id: u64) -> &mut Node {
        self.nodes.get_mut(&NodeId(id)).expect("node exists")
    }

    /// Proposes as `principal` with the current time as leader timestamp.
    pub fn propose(&mut self, principal: &str, op: Operation) {
        self.next_request += 1;
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&self.next_request.to_be_bytes());
        self.pending.push_back(Command {
            request_id: RequestId(id),
            time_ms: self.now,
            principal: principal.to_string(),
            op,
            proof: None,
        });
    }

    pub fn admin(&mut self, op: Operation) {
        self.propose("admin", op);
    }

    pub fn create_key(&mut self, threshold: u16, holders: &[u64]) {
        self.admin(Operation::CreateKey(CreateKey {
            name: KEY.into(),
            description: "protocol test".into(),
            owner: "team".into(),
            purpose: "encrypt".into(),
            rotation_period_ms: None,
            expires_at_ms: None,
            threshold,
            holders: holders.iter().map(|h| NodeId(*h)).collect(),
        }));
    }

    /// Any live node's replica (they all applied the same log).
    pub fn state(&self) -> &StateMachine {
        &self
            .nodes
            .values()
            .find(|n| !n.dead)
            .expect("a live node")
            .replica
    }

    pub fn key(&self) -> KeyRecord {
        self.state().key(KEY).expect("key exists").clone()
    }

    pub fn version(&self, v: KeyVersion) -> KeyVersionRecord {
        self.key().version(v).expect("version exists").clone()
    }

    /// Runs log entries and messages until nothing is left to do.
    pub fn run_until_idle(&mut self) {
        for _ in 0..1_000_000 {
            if let Some(cmd) = self.pending.pop_front() {
                self.apply(cmd);
            } else if let Some((from, to, bytes)) = self.net.pop_front() {
                self.deliver(from, to, &bytes);
            } else {
                return;
            }
        }
        panic!("cluster did not become idle");
    }

    fn apply(&mut self, cmd: Command) {
        self.log.push(cmd.clone());
        let index = self.log.len() as u64;
        for id in self.ids() {
            let node = self.nodes.get_mut(&id).expect("node");
            let response = node.replica.apply(&cmd);
            if node.dead {
                continue;
            }
            let actions = node.proto.handle(
                &node.replica,
                Event::Applied {
                    index,
                    command: cmd.clone(),
                    response,
                },
                &mut self.rng,
            );
            self.run_actions(id, actions);
            if self.interleave {
                while let Some((from, to, bytes)) = self.net.pop_front() {
                    self.deliver(from, to, &bytes);
                }
            }
        }
    }

    fn deliver(&mut self, from: NodeId, to: NodeId, bytes: &[u8]) {
        let Some(node) = self.nodes.get_mut(&to) else {
            return;
        };
        if node.dead {
            return;
        }
        let msg = ProtocolMessage::decode(bytes).expect("messages decode");
        let actions = node
            .proto
            .handle(&node.replica, Event::Message { from, msg }, &mut self.rng);
        self.run_actions(to, actions);
    }

    fn run_actions(&mut self, id: NodeId, actions: Vec<Action>) {
        for action in actions {
            let muted = self.nodes[&id].muted;
            match action {
                Action::Send { to, msg } => {
                    if let ProtocolMessage::PartialRequest(r) = &msg {
                        self.partial_requests.push(SentRequest {
                            from: id,
                            to,
                            op_id: r.op_id,
                            at_ms: self.now,
                        });
                    }
                    if !muted {
                        let bytes = msg.encode().expect("messages encode");
                        self.net.push_back((id, to, bytes.to_vec()));
                    }
                }
                Action::Propose(mut op) => {
                    if let Operation::Dkg {
                        step: DkgStep::Deal(bytes),
                        ..
                    } = &mut op
                    {
                        if self.cheating_dealers.contains(&id.0) {
                            *bytes = swap_first_boxes(bytes);
                        }
                    }
                    if !muted {
                        self.propose(&id.to_string(), op);
                    }
                }
                Action::PersistShare {
                    key,
                    version,
                    epoch,
                    share,
                    ..
                } => {
                    let node = self.nodes.get_mut(&id).expect("node");
                    node.store.insert((key, version, epoch), share);
                    node.persisted.push((key, version));
                }
                Action::EraseShare {
                    key,
                    version,
                    epoch,
                    ..
                } => {
                    let node = self.nodes.get_mut(&id).expect("node");
                    node.store.remove(&(key, version, epoch));
                    node.erased.push((key, version));
                }
                Action::EraseVersion { key, version, .. } => {
                    let node = self.nodes.get_mut(&id).expect("node");
                    node.store.retain(|(k, v, _), _| (*k, *v) != (key, version));
                    node.erased.push((key, version));
                }
                Action::AnswerPartial { to, request } => {
                    let as_id = self.nodes[&id].answers_as.map_or(id, NodeId);
                    let node = &self.nodes[&as_id];
                    let epoch = node
                        .replica
                        .key(&request.name)
                        .and_then(|k| k.version(request.version))
                        .map(|v| v.epoch)
                        .unwrap_or_default();
                    let share = node.store.get(&(request.key, request.version, epoch));
                    let mut req = request.clone();
                    if let Some(decoy) = &self.nodes[&id].byzantine {
                        req.ciphertext = decoy.clone();
                    }
                    let result =
                        holder_partial(&node.replica, as_id, share, &req, self.now, &mut self.rng);
                    let mut reply = partial_response(&req, result);
                    if let ProtocolMessage::PartialResponse { op_id, .. } = &mut reply {
                        *op_id = request.op_id;
                    }
                    if !muted {
                        let bytes = reply.encode().expect("encode");
                        self.net.push_back((id, to, bytes.to_vec()));
                    }
                }
                Action::UnwrapDone {
                    op_id,
                    result,
                    faulty,
                } => {
                    let node = self.nodes.get_mut(&id).expect("node");
                    let result = result.map(|p| p.expose().to_vec());
                    node.done.insert(op_id, (result, faulty));
                }
                Action::Warning(w) => {
                    self.nodes.get_mut(&id).expect("node").warnings.push(w);
                }
                Action::NeedShare {
                    key,
                    version,
                    epoch,
                    ..
                } if self.nodes[&id].slow_disk => {
                    let node = self.nodes.get_mut(&id).expect("node");
                    node.share_loads.push((key, version, epoch));
                }
                Action::NeedShare {
                    key,
                    version,
                    epoch,
                    ..
                } => self.load_share(id, (key, version, epoch)),
                other => panic!("unexpected action {other:?}"),
            }
        }
    }

    /// Answers node `id`'s held `NeedShare` requests, and runs what follows.
    pub fn load_shares(&mut self, id: u64) {
        let loads = std::mem::take(&mut self.node_mut(id).share_loads);
        for slot in loads {
            self.load_share(NodeId(id), slot);
        }
        self.run_until_idle();
    }

    fn load_share(&mut self, id: NodeId, (key, version, epoch): (KeyId, KeyVersion, Epoch)) {
        let node = self.nodes.get_mut(&id).expect("node");
        let share = node.store.get(&(key, version, epoch)).cloned();
        let loaded = Event::ShareLoaded {
            key,
            version,
            epoch,
            share,
        };
        let actions = node.proto.handle(&node.replica, loaded, &mut self.rng);
        self.run_actions(id, actions);
    }

    /// Advances the clock in `step_ms` steps up to `total_ms`, ticking every
    /// live node and running to idle after each step; stops early once
    /// `until` holds.
    pub fn advance(&mut self, total_ms: u64, step_ms: u64, until: impl Fn(&Cluster) -> bool) {
        let end = self.now + total_ms;
        self.run_until_idle();
        while self.now < end && !until(self) {
            self.now += step_ms;
            for id in self.ids() {
                let node = self.nodes.get_mut(&id).expect("node");
                if node.dead {
                    continue;
                }
                let actions = node.proto.handle(
                    &node.replica,
                    Event::Tick { now_ms: self.now },
                    &mut self.rng,
                );
                self.run_actions(id, actions);
            }
            self.run_until_idle();
        }
    }

    pub fn public_keys(&self, v: KeyVersion) -> PublicKeySet {
        let bytes = self.version(v).public_keys.expect("public keys recorded");
        PublicKeySet::from_bytes(&bytes).expect("key set decodes")
    }

    pub fn wrap(&mut self, v: KeyVersion, plaintext: &[u8]) -> Vec<u8> {
        self.wrap_for(v, &ctx(), plaintext)
    }

    /// A ciphertext of `plaintext` under version `v` bound to `context`.
    pub fn wrap_for(
        &mut self,
        v: KeyVersion,
        context: &EncryptionContext,
        plaintext: &[u8],
    ) -> Vec<u8> {
        let keys = self.public_keys(v);
        let id = self.key().id;
        wrap(&mut self.rng, &keys.public_key(), id, v, context, plaintext)
            .expect("wrap")
            .to_bytes()
    }

    /// Starts an unwrap at node `via`; returns its op id.
    pub fn start_unwrap(&mut self, via: u64, ciphertext: Vec<u8>, principal: &str) -> OpId {
        self.next_op += 1;
        let op_id = self.next_op;
        let id = NodeId(via);
        let node = self.nodes.get_mut(&id).expect("node");
        let actions = node.proto.handle(
            &node.replica,
            Event::StartUnwrap {
                now_ms: self.now,
                request: UnwrapRequest {
                    op_id,
                    name: KEY.into(),
                    ciphertext,
                    context: ctx(),
                    principal: principal.into(),
                    mode: UnwrapMode::ServerSide,
                    min_applied: 0,
                    proof: None,
                },
            },
            &mut self.rng,
        );
        self.run_actions(id, actions);
        op_id
    }

    pub fn outcome(&self, via: u64, op: OpId) -> Option<&UnwrapOutcome> {
        self.node(via).done.get(&op)
    }

    /// The holders node `via` sent a partial request for `op`, in order.
    pub fn asked(&self, via: u64, op: OpId) -> Vec<NodeId> {
        self.partial_requests
            .iter()
            .filter(|r| r.from == NodeId(via) && r.op_id == op)
            .map(|r| r.to)
            .collect()
    }

    /// Runs a DKG for `(t, n)` over nodes `1..=n` to `Enabled`.
    pub fn generated(t: u16, n: u64, seed: u64) -> Cluster {
        let mut c = Cluster::new(n, seed);
        let holders: Vec<u64> = (1..=n).collect();
        c.create_key(t, &holders);
        c.advance(60_000, 100, |c| {
            c.version(V1).state != VersionState::Generating
        });
        assert_eq!(c.version(V1).state, VersionState::Enabled);
        c
    }

    pub fn decoy_ciphertext(&mut self) -> Vec<u8> {
        let bytes = self.wrap(V1, b"decoy");
        Ciphertext::from_bytes(&bytes).expect("decoy").to_bytes()
    }
}
