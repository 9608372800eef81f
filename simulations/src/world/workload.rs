//! The seeded workload, the fault plan and node crashes and starts.

use super::*;
use qk_protocol::{stored_share, StoredShare};

/// The seeded clients: their keys, ciphertexts, planned destructions and
/// the answers to their requests.
pub(crate) struct Workload {
    /// Every acknowledged encryption, with its plaintext.
    pub(crate) wrapped: Vec<Wrapped>,
    pub(crate) key_names: Vec<String>,
    /// Versions scheduled for destruction, with the time they are due.
    pub(crate) due_destroy: Vec<(String, KeyVersion, u64)>,
    /// Off once the run winds down (quiescence checks).
    pub(crate) workload_on: bool,
    pub(crate) pending_proposals: u64,
    pub(crate) next_request: u64,
    pub(crate) next_op: OpId,
    pub(crate) credentials: BTreeMap<String, Credential>,
    /// The outcome of each unwrap, by (combining node, op).
    pub(crate) probe: BTreeMap<(NodeId, OpId), Result<Vec<u8>, String>>,
}

impl World {
    pub(super) fn workload(&mut self) {
        let roll = self.rng.random_range(0..100);
        match roll {
            0..=14 if self.load.key_names.len() < self.cfg.max_keys => {
                let name = format!("k{}", self.load.key_names.len());
                self.load.key_names.push(name.clone());
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
                if self.load.wrapped.is_empty() || live.is_empty() {
                    return;
                }
                let w = &self.load.wrapped[self.rng.random_range(0..self.load.wrapped.len())];
                let (name, ct, pt) = (w.name.clone(), w.ciphertext.clone(), w.plaintext.clone());
                let via = live[self.rng.random_range(0..live.len())];
                match self.rng.random_range(0..20) {
                    0 | 1 => {
                        // The caller names another tenant's context: through
                        // an honest coordinator, or put to the holders by the
                        // compromised node.
                        let evil = BTreeMap::from([("tenant".to_string(), "mallory".to_string())]);
                        let byz_live = self.adversary.byzantine.is_some_and(|b| live.contains(&b));
                        let sent_by_byzantine = byz_live
                            && self.rng.random_bool(0.5)
                            && self.foreign_context_request(evil.clone());
                        if !sent_by_byzantine {
                            self.stats.attacks += 1;
                            self.start_unwrap_with(via, &name, ct, None, (evil, "app"));
                        }
                    }
                    2 => {
                        // A principal whose role gives no decrypt, with its own
                        // valid proof: every holder's policy check refuses it.
                        self.stats.attacks += 1;
                        self.start_unwrap_with(via, &name, ct, None, (ctx(), "guest"));
                    }
                    3 | 4 if self.adversary.byzantine.is_some_and(|b| live.contains(&b)) => {
                        self.unchecked_unwrap();
                    }
                    _ => {
                        self.start_unwrap(via, &name, ct, pt);
                    }
                }
            }
            80..=84 => self.rotate_some_key(),
            85 | 86 => self.change_version_state(),
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
                let (due, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.load.due_destroy)
                    .into_iter()
                    .partition(|(_, _, at)| *at <= now);
                self.load.due_destroy = rest;
                for (name, version, _) in due {
                    self.propose("admin".into(), Operation::Destroy { name, version }, None);
                }
            }
        }
    }

    pub(super) fn rotate_some_key(&mut self) {
        if self.load.key_names.is_empty() {
            return;
        }
        let name = self.load.key_names[self.rng.random_range(0..self.load.key_names.len())].clone();
        let versions = self.oracle.truth.key(&name).map_or(0, |k| k.versions.len());
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

    /// Disables, enables or marks compromised a version, or raises a key's
    /// minimum decryption version: each changes what holders may release.
    pub(super) fn change_version_state(&mut self) {
        let versions: Vec<(String, KeyVersion, VersionState)> = self
            .oracle
            .truth
            .keys()
            .flat_map(|k| {
                let name = k.name.clone();
                k.versions
                    .iter()
                    .map(move |v| (name.clone(), v.version, v.state.clone()))
            })
            .filter(|(_, _, state)| matches!(state, VersionState::Enabled | VersionState::Disabled))
            .collect();
        if versions.is_empty() {
            return;
        }
        let (name, version, state) = versions[self.rng.random_range(0..versions.len())].clone();
        let op = match (self.rng.random_range(0..10), state) {
            (0..=3, VersionState::Enabled) => Operation::Disable { name, version },
            (0..=5, VersionState::Disabled) => Operation::Enable { name, version },
            (6 | 7, _) => Operation::MarkCompromised {
                name,
                version,
                reason: "simulated leak".into(),
                allow_decrypt: self.rng.random(),
            },
            _ => Operation::SetMinDecryptVersion { name, version },
        };
        self.propose("admin".into(), op, None);
    }

    /// Schedules destruction of a non-primary enabled version.
    pub(super) fn schedule_destruction(&mut self) {
        let candidates: Vec<(String, KeyVersion)> = self
            .oracle
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
        self.load.due_destroy.push((name, version, at));
    }

    pub(super) fn fault(&mut self) {
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
    pub(super) fn partition(&mut self, ids: &[NodeId]) {
        if !self.net.blocked.is_empty() {
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
                self.net.blocked.insert((*a, *b));
                if !asymmetric {
                    self.net.blocked.insert((*b, *a));
                }
            }
        }
        let d = self.rng.random_range(300..3_000);
        self.schedule(d, Ev::Heal);
    }

    /// Disk loss is safe for Raft only if the log the node loses is on a
    /// majority of the others: the operator replaces a node when the rest
    /// are healthy and caught up. We wipe only then.
    pub(super) fn all_caught_up(&self) -> bool {
        let alive = self.nodes.values().all(|n| n.alive);
        let last: Vec<Option<u64>> = self
            .nodes
            .values()
            .filter_map(|n| n.raft.as_ref())
            .map(|r| r.metrics().borrow().last_applied.map(|l| l.index))
            .collect();
        alive
            && self.net.blocked.is_empty()
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
        self.load.pending_proposals -= node.outbox.len() as u64;
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
        self.sched.jobs.push(Job::Crash(id));
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
        let grants = self.roster.clone();
        let node = self.nodes.get_mut(&id)?;
        if node.alive {
            return None;
        }
        let disk = node.raft_disk.clone();
        node.incarnation = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (fsync_ms, incarnation) = (node.fsync_ms, node.incarnation.clone());
        node.replay_upto = disk.lock().map(|d| d.last_index()).unwrap_or(0);
        node.reconciled = false;
        node.proto = NodeProtocol::new(id, ProtocolConfig::default(), super::sim_dkg_key(id));
        let mut sm = crate::storage::MemSm::open(disk.clone(), hook, grants);
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
        let incarnation = node.incarnation.clone();
        let now_ms = self.clock_of(id);
        self.drive(id, Event::Tick { now_ms });
        let Some(world) = self.this.upgrade() else {
            return;
        };
        tokio::spawn(reconcile_when_caught_up(world, id, incarnation));
    }

    /// Erases shares of versions destroyed or failed while the node was
    /// away (and of epochs a refresh replaced) and proposes its erase
    /// receipts: the node's `Quorum::reconcile`, through the same
    /// [`stored_share`] rule. A share an honest node would refuse to serve
    /// is a violation here.
    pub(super) fn reconcile(&mut self, id: NodeId) {
        let Some(sm) = self.nodes.get(&id).and_then(|n| n.sm.clone()) else {
            return;
        };
        let Some(slots) = self.nodes.get(&id).map(|n| n.disk.clone()) else {
            return;
        };
        let mut fates = Vec::new();
        sm.read(|a| {
            for (slot, bytes) in &slots {
                let load = || KeyShare::from_secret_bytes(bytes).map(Some);
                fates.push((*slot, stored_share(a.machine(), id, *slot, load)));
            }
        });
        let mut receipts = Vec::new();
        for (slot, fate) in fates {
            match fate {
                StoredShare::Keep => {}
                StoredShare::Erase { receipt } => {
                    if let Some(node) = self.nodes.get_mut(&id) {
                        node.disk.remove(&slot);
                    }
                    receipts.extend(receipt.filter(|r| !receipts.contains(r)));
                }
                StoredShare::Refuse(reason) => {
                    self.fail(format!("{id} would refuse its own stored share: {reason}"));
                }
            }
        }
        for op in receipts {
            self.propose(id.to_string(), op, Some(id));
        }
        if let Some(node) = self.nodes.get_mut(&id) {
            node.reconciled = true;
        }
        sm.read(|a| self.check_old_epochs(id, a.machine(), None));
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

    pub(crate) fn wrap_one(&mut self, name: &str, version: KeyVersion) -> Option<usize> {
        let plaintext: Vec<u8> = (0..24).map(|_| self.rng.random::<u8>()).collect();
        let ct = self.wrap_bytes(name, version, &plaintext)?;
        self.stats.wraps += 1;
        self.load.wrapped.push(Wrapped {
            name: name.to_string(),
            ciphertext: ct,
            plaintext,
        });
        Some(self.load.wrapped.len() - 1)
    }

    /// `plaintext` wrapped under `name` `version` with the workload's context.
    pub(super) fn wrap_bytes(
        &mut self,
        name: &str,
        version: KeyVersion,
        plaintext: &[u8],
    ) -> Option<Vec<u8>> {
        let key = self.oracle.truth.key(name)?;
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

    pub(super) fn decoy(&mut self, name: &str, version: KeyVersion) -> Option<Vec<u8>> {
        let id = self.oracle.truth.key(name)?.id;
        if let Some(d) = self.oracle.decoys.get(&(id, version)) {
            return Some(d.clone());
        }
        let ct = self.wrap_bytes(name, version, b"decoy")?;
        self.oracle.decoys.insert((id, version), ct.clone());
        Some(ct)
    }

    pub(crate) fn start_unwrap(
        &mut self,
        via: NodeId,
        name: &str,
        ciphertext: Vec<u8>,
        expected: Vec<u8>,
    ) -> OpId {
        self.start_unwrap_with(via, name, ciphertext, Some(expected), (ctx(), "app"))
    }

    /// An unwrap by `principal`; `expected` is `None` for an attack (a
    /// context other than the one the ciphertext was made for, or a
    /// principal that may not decrypt), which must fail.
    pub(super) fn start_unwrap_with(
        &mut self,
        via: NodeId,
        name: &str,
        ciphertext: Vec<u8>,
        expected: Option<Vec<u8>>,
        (context, principal): (EncryptionContext, &str),
    ) -> OpId {
        self.load.next_op += 1;
        let op_id = self.load.next_op;
        self.oracle
            .unwrap_requests
            .insert((via, op_id), (ciphertext.clone(), context.clone()));
        self.stats.unwraps_started += 1;
        let proof = self.sign_intent(principal, &ciphertext, &context, via);
        let version = qk_crypto::Ciphertext::from_bytes(&ciphertext)
            .ok()
            .map(|c| c.version);
        let now_ms = self.clock_of(via);
        let Some(node) = self.nodes.get_mut(&via) else {
            return op_id;
        };
        node.inflight.insert(
            op_id,
            InFlight {
                expected,
                byz_partial_delivered: false,
                key: (name.to_string(), version),
                partials_from: BTreeSet::new(),
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
                    principal: principal.into(),
                    mode: UnwrapMode::ServerSide,
                    min_applied: 0,
                    proof,
                },
            },
        );
        op_id
    }

    pub(crate) fn enabled_versions(&self) -> Vec<(String, KeyVersion)> {
        let mut out = Vec::new();
        for k in self.oracle.truth.keys() {
            for v in &k.versions {
                if v.state == VersionState::Enabled {
                    out.push((k.name.clone(), v.version));
                }
            }
        }
        out
    }
}

/// As the node's `reconcile_shares`: once a leader is known and the node
/// applied its whole local log (or after 30 s), reconcile the share store.
async fn reconcile_when_caught_up(
    world: Arc<Mutex<World>>,
    id: NodeId,
    incarnation: Arc<std::sync::atomic::AtomicBool>,
) {
    let alive = || incarnation.load(std::sync::atomic::Ordering::SeqCst);
    for _ in 0..300 {
        let caught_up = {
            let Ok(w) = world.lock() else { return };
            let Some(raft) = w.nodes.get(&id).and_then(|n| n.raft.clone()) else {
                return;
            };
            let m = raft.metrics().borrow().clone();
            m.current_leader.is_some() && m.last_applied.map(|l| l.index) >= m.last_log_index
        };
        if caught_up || !alive() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    if alive() {
        if let Ok(mut w) = world.lock() {
            w.reconcile(id);
        }
    }
}
