//! The invariant checker: what must hold after every step, at every
//! apply and at quiescent points (docs/SIMULATION.md, "Invariants").

use qk_protocol::{authorize_partial, PartialRequest, UnwrapError};
use qk_state::{KeyRecord, KeyVersionRecord};

use super::*;

/// A rule an honest holder keeps before it releases a partial, judged by
/// the checker on the holder's applied state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ReleaseRule {
    /// The version is enabled, or disabled as compromised with decryption
    /// still allowed.
    Usable,
    /// The version is not below the key's minimum decryption version.
    MinDecrypt,
    /// The holder's own policy check of the principal passes
    /// (`authorize_partial`, the node's code).
    Authorized,
}

/// Why `record` may not decrypt by its state, if it may not. Written here
/// apart from the protocol's own check, so a bug there shows.
pub(super) fn unusable_state(record: &KeyVersionRecord) -> Option<String> {
    match &record.state {
        VersionState::Enabled => None,
        VersionState::Disabled if record.compromised_decrypt_allowed => None,
        other => Some(format!("is {}", other.name())),
    }
}

/// Why `version` of `key` is below its minimum decryption version, if it is.
pub(super) fn below_min_decrypt(key: &KeyRecord, version: KeyVersion) -> Option<String> {
    (version < key.min_decrypt_version).then(|| {
        format!(
            "is below the key's minimum decryption version {}",
            key.min_decrypt_version.0
        )
    })
}

/// The release rules `request` breaks in `state`, each with why.
pub(super) fn broken_release_rules(
    state: &StateMachine,
    request: &PartialRequest,
    now_ms: u64,
) -> Vec<(ReleaseRule, String)> {
    let Some(key) = state.key(&request.name) else {
        return vec![(ReleaseRule::Usable, "has no key record".into())];
    };
    let mut broken = Vec::new();
    match key.version(request.version) {
        Some(record) => {
            if let Some(why) = unusable_state(record) {
                broken.push((ReleaseRule::Usable, why));
            }
        }
        None => broken.push((ReleaseRule::Usable, "does not exist".into())),
    }
    if let Some(why) = below_min_decrypt(key, request.version) {
        broken.push((ReleaseRule::MinDecrypt, why));
    }
    if let Err(refusal) = authorize_partial(state, request, now_ms) {
        let why = format!("{} may not unwrap: {}", request.principal, refusal.message);
        broken.push((ReleaseRule::Authorized, why));
    }
    broken
}

impl World {
    /// Honest holder `id` answered `to`'s partial `request` (`released` or
    /// refused) in `state` at its clock `now_ms`. Invariants 9 and 13: a
    /// partial only for a request its principal signed for `to`, for a
    /// version that may decrypt at that point of the holder's log, and to a
    /// principal the holder's own policy check allows ("guest" never).
    pub(super) fn check_answer(
        &mut self,
        id: NodeId,
        to: NodeId,
        request: &PartialRequest,
        released: bool,
        (state, now_ms): (&StateMachine, u64),
    ) {
        if !released {
            if self.adversary.unchecked_partials.contains(&request.op_id) {
                self.stats.unchecked_partials_refused += 1;
            }
            return;
        }
        self.check_released(id, to, request);
        if let Some((_, why)) = broken_release_rules(state, request, now_ms).first() {
            self.fail(format!(
                "holder {id} released a partial of {:?} version {} to {to}, which {why} in the holder's applied state",
                request.name, request.version
            ));
        } else if request.principal == "guest" {
            self.fail(format!(
                "holder {id} released a partial to guest, whose role gives no decrypt"
            ));
        }
    }

    /// Invariant 14: an erase receipt commits only once its node's store
    /// holds no share of the version.
    pub(super) fn check_receipt(&mut self, cmd: &Command) {
        let Operation::EraseReceipt {
            name,
            version,
            node,
        } = &cmd.op
        else {
            return;
        };
        let Some(key) = self.oracle.truth.key(name).map(|k| k.id) else {
            return;
        };
        let kept = self
            .nodes
            .get(node)
            .is_some_and(|n| n.disk.keys().any(|(k, v, _)| (*k, *v) == (key, *version)));
        if kept {
            self.fail(format!(
                "{node}'s erase receipt for {name:?} version {version} committed while its store still holds a share of that version"
            ));
        }
    }

    /// Invariant 7 (its other half): an honest holder that was dealt a
    /// wrong share by the Byzantine dealer, whose deal the log accepted,
    /// complains against it (a holder restarted since is not held to it).
    pub(super) fn check_complaints(&mut self, cmd: &Command) {
        let Operation::Dkg {
            name,
            version,
            from,
            step: DkgStep::Complaints(list),
            session: qk_state::DkgSession::Generation,
        } = &cmd.op
        else {
            return;
        };
        let Some(byz) = self.adversary.byzantine else {
            return;
        };
        let vk = (name.clone(), *version);
        let dealt_wrong = self
            .nodes
            .get(from)
            .is_some_and(|n| n.corrupt_from_byz.contains(&vk));
        let dealt = self
            .oracle
            .deals
            .get(&vk)
            .is_some_and(|d| d.iter().any(|(dealer, _)| *dealer == byz));
        let record = self
            .oracle
            .truth
            .key(name)
            .and_then(|k| k.version(*version));
        let Some(accused) = record.and_then(|r| qk_protocol::share_index_of(r, byz)) else {
            return;
        };
        if !dealt_wrong || !dealt {
            return;
        }
        let blamed = list.iter().any(|bytes| {
            matches!(qk_crypto::PublicMessage::from_bytes(bytes),
                Ok(qk_crypto::PublicMessage::Complaint(c)) if c.accused == accused)
        });
        if !blamed {
            self.fail(format!(
                "honest holder {from} was dealt a wrong share of {name:?} version {version} by {byz} but posted no complaint against it"
            ));
        }
    }

    /// Invariant 15: once node `id`'s applied state shows a refresh of a
    /// version switched epochs, its store holds no share of an older epoch
    /// of it (`only` limits the check to one version). A restarted node is
    /// held to it once it has reconciled its store (after catching up).
    pub(super) fn check_old_epochs(
        &mut self,
        id: NodeId,
        state: &StateMachine,
        only: Option<(&str, KeyVersion)>,
    ) {
        let Some(node) = self.nodes.get(&id).filter(|n| n.reconciled) else {
            return;
        };
        let stale = state.keys().find_map(|k| {
            k.versions
                .iter()
                .filter(|v| only.is_none_or(|(n, ver)| n == k.name && ver == v.version))
                .find(|v| {
                    node.disk
                        .keys()
                        .any(|(key, ver, e)| (*key, *ver) == (k.id, v.version) && *e < v.epoch)
                })
                .map(|v| (k.name.clone(), v.version, v.epoch))
        });
        if let Some((name, version, epoch)) = stale {
            self.fail(format!(
                "{id} still stores an old-epoch share of {name:?} version {version}, whose refresh switched to epoch {} in its applied state",
                epoch.0
            ));
        }
    }
    /// A holder returned a partial for unwrap `op_id` of node `to`: the
    /// ciphertext's proof must verify under the caller's context (else the
    /// holder decrypted an `R` moved from another ciphertext).
    pub(super) fn check_partial_allowed(&mut self, holder: NodeId, to: NodeId, op_id: OpId) {
        let Some((ct, context)) = self.oracle.unwrap_requests.get(&(to, op_id)) else {
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

    /// An unwrap that combined (it returned a plaintext, or partials that
    /// did not open the ciphertext) had partials from at least `t`
    /// holders, and a ciphertext the workload made always opens: fewer
    /// than `t` partials can never make the key.
    pub(super) fn check_combined_from_t(
        &mut self,
        (id, state): (NodeId, &StateMachine),
        op_id: OpId,
        flight: &InFlight,
        result: &Result<Vec<u8>, UnwrapError>,
    ) {
        if !matches!(result, Ok(_) | Err(UnwrapError::Decrypt(_))) {
            return;
        }
        let (name, version) = &flight.key;
        let threshold = version
            .and_then(|v| state.key(name)?.version(v))
            .map(|r| usize::from(r.threshold));
        let got = flight.partials_from.len();
        if let Some(t) = threshold.filter(|t| got < *t) {
            self.fail(format!(
                "unwrap {op_id} at {id} combined after partials from {got} holders, below the threshold {t}"
            ));
        } else if let (Err(e), Some(_)) = (result, &flight.expected) {
            self.fail(format!(
                "unwrap {op_id} at {id} could not open a ciphertext the workload made: {e}"
            ));
        }
    }

    /// The Byzantine dealer's deal with every other receiver's box rotated
    /// to the next one (each opens to garbage for its receiver); those
    /// honest receivers must then disqualify it, if they finish.
    pub(super) fn corrupt_deal(
        &mut self,
        dealer: NodeId,
        name: &str,
        version: KeyVersion,
        session: qk_state::DkgSession,
        bytes: &[u8],
    ) -> Vec<u8> {
        let Ok(qk_crypto::PublicMessage::Deal(mut deal)) =
            qk_crypto::PublicMessage::from_bytes(bytes)
        else {
            return bytes.to_vec();
        };
        let Some(holders) = self
            .oracle
            .truth
            .key(name)
            .and_then(|k| k.version(version))
            .map(|v| v.sorted_holders())
        else {
            return bytes.to_vec();
        };
        let others: Vec<usize> = (0..holders.len().min(deal.shares.len()))
            .filter(|i| holders[*i] != dealer)
            .collect();
        if others.len() < 2 {
            return bytes.to_vec();
        }
        let first = deal.shares[others[0]];
        for w in others.windows(2) {
            deal.shares[w[0]] = deal.shares[w[1]];
        }
        if let Some(last) = others.last() {
            deal.shares[*last] = first;
        }
        if session == qk_state::DkgSession::Generation {
            for i in &others {
                if let Some(n) = self.nodes.get_mut(&holders[*i]) {
                    n.corrupt_from_byz.insert((name.to_string(), version));
                }
            }
        }
        deal.to_bytes()
    }

    /// When a version is enabled after the Byzantine dealer sent wrong
    /// shares to honest holders: the public key must be the sum of the
    /// `A_0` of some set of dealers (QUAL) that leaves the Byzantine one out.
    pub(super) fn check_dkg_blame(&mut self, cmd: &Command) {
        let Operation::Dkg { name, version, .. } = &cmd.op else {
            return;
        };
        let Some(byz) = self.adversary.byzantine else {
            return;
        };
        let vk = (name.clone(), *version);
        let receivers: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(id, n)| **id != byz && n.corrupt_from_byz.contains(&vk))
            .map(|(id, _)| *id)
            .collect();
        let deals = self.oracle.deals.get(&vk).cloned().unwrap_or_default();
        // Subsets are enumerated: only for small holder sets.
        if receivers.is_empty() || deals.len() > 12 {
            return;
        }
        self.stats.dkg_byzantine_sessions += 1;
        let Some(pk) = self
            .oracle
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

    /// An accepted generation ack: only from the holder it names.
    pub(super) fn note_ack(&mut self, cmd: &Command) {
        let Operation::Dkg {
            name,
            version,
            from,
            step: DkgStep::Ack { public_keys },
            session: qk_state::DkgSession::Generation,
        } = &cmd.op
        else {
            return;
        };
        if cmd.principal != from.to_string() {
            self.fail(format!(
                "an ack for {from} of {name:?} {version} was accepted from {}",
                cmd.principal
            ));
        }
        self.oracle
            .acks
            .entry((name.clone(), *version))
            .or_default()
            .insert(*from, public_keys.clone());
    }

    /// The invariant: a version is enabled only once every one of its
    /// holders acked, each the very key set the version is enabled with.
    pub(super) fn check_all_acked(&mut self, cmd: &Command) {
        let Operation::Dkg { name, version, .. } = &cmd.op else {
            return;
        };
        let Some(v) = self
            .oracle
            .truth
            .key(name)
            .and_then(|k| k.version(*version))
        else {
            return;
        };
        let acked = self.oracle.acks.get(&(name.clone(), *version));
        let missing: Vec<NodeId> = v
            .holders
            .iter()
            .copied()
            .filter(|h| acked.and_then(|a| a.get(h)) != v.public_keys.as_ref())
            .collect();
        if !missing.is_empty() {
            self.fail(format!(
                "version {version} of {name:?} was enabled without the ack of {missing:?} for its key set"
            ));
        }
    }

    /// When a version left `Generating` (for the scale study).
    pub(super) fn note_settled(&mut self, cmd: &Command) {
        let vk = match &cmd.op {
            Operation::Dkg { name, version, .. }
            | Operation::FailGeneration { name, version, .. } => (name.clone(), *version),
            _ => return,
        };
        let now = self.now();
        self.timeline.settled_at.entry(vk).or_insert(now);
    }

    /// Records the `A_0` of each generation deal the agreed log accepts.
    pub(super) fn note_deal(&mut self, cmd: &Command) {
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
                let list = self
                    .oracle
                    .deals
                    .entry((name.clone(), *version))
                    .or_default();
                if !list.iter().any(|(f, _)| f == from) {
                    list.push((*from, ProjectivePoint::from(*a0)));
                }
            }
        }
    }

    /// Nothing left to do: no message, proposal, DKG, refresh or unwrap in
    /// flight, every live node applied what the others did.
    pub(crate) fn is_idle(&self) -> bool {
        let busy_queue = self.sched.queue.values().any(|e| !matches!(e, Ev::Tick));
        let applied: Vec<Option<u64>> = self
            .nodes
            .values()
            .filter(|n| n.alive)
            .filter_map(|n| n.raft.as_ref())
            .map(|r| r.metrics().borrow().last_applied.map(|l| l.index))
            .collect();
        let caught_up = applied.windows(2).all(|w| w[0] == w[1])
            && applied.first().copied().flatten().map(|i| i + 1)
                == Some(self.oracle.canon.len() as u64);
        let busy_nodes = self.nodes.values().any(|n| {
            n.alive && (n.proto.active_generations() > 0 || n.proto.pending_unwraps() > 0)
        });
        let busy_versions = self.oracle.truth.keys().any(|k| {
            k.versions
                .iter()
                .any(|v| v.state == VersionState::Generating || v.refresh.is_some())
        });
        !busy_queue
            && self.load.pending_proposals == 0
            && caught_up
            && !busy_nodes
            && !busy_versions
            && self.sched.jobs.is_empty()
    }

    /// Every invariant cheap enough to check after each step (applied logs
    /// agree is checked at each apply, in `on_entry`).
    pub(crate) fn check(&mut self) {
        self.check_rafts_running();
        self.check_audit_chains();
        if self.oracle.violation.is_some() {
            return;
        }
        self.learn_roots();
        let mut findings = Vec::new();
        for (id, n) in &self.nodes {
            for bytes in n.disk.values() {
                if self.holds_root(bytes) {
                    findings.push(format!("{id}'s share store holds a root key"));
                }
            }
        }
        for k in self.oracle.truth.keys() {
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
    pub(super) fn check_rafts_running(&mut self) {
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
    pub(super) fn check_audit_chains(&mut self) {
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

    /// Whether `bytes` contain any known root (one set lookup per window).
    pub(super) fn holds_root(&self, bytes: &[u8]) -> bool {
        bytes.windows(32).any(|w| self.oracle.root_set.contains(w))
    }

    pub(crate) fn check_secret_free(&mut self, what: &str, bytes: &[u8]) {
        if self.holds_root(bytes) {
            self.fail(format!("a {what} contains a root key"));
        }
    }

    /// Searches every node's Raft disk and applied state for known roots
    /// (at quiescent points: it is costly).
    pub(crate) fn check_disks_and_states(&mut self) {
        let mut images = Vec::new();
        let mut unencodable = Vec::new();
        for (id, n) in &self.nodes {
            if let Ok(d) = n.raft_disk.lock() {
                images.extend(d.images().into_iter().map(|b| (*id, "Raft disk", b)));
            }
            if let Some(sm) = &n.sm {
                match sm.read(|a| a.machine().to_bytes()) {
                    Some(Ok(b)) => images.push((*id, "applied state", b)),
                    Some(Err(e)) => unencodable.push(format!("node {id}: {e}")),
                    None => {}
                }
            }
            images.push((*id, "protocol state", format!("{:?}", n.proto).into_bytes()));
        }
        if let Some(what) = unencodable.into_iter().next() {
            self.fail(what);
        }
        for (id, what, bytes) in images {
            if self.holds_root(&bytes) {
                self.fail(format!("{id}'s {what} contains a root key"));
                return;
            }
        }
        for id in self.live_ids() {
            if let Some(sm) = self.nodes.get(&id).and_then(|n| n.sm.clone()) {
                sm.read(|a| self.check_old_epochs(id, a.machine(), None));
            }
        }
    }

    /// The checker alone reconstructs roots, from the holders' share
    /// stores, for each enabled version (once per epoch).
    pub(super) fn learn_roots(&mut self) {
        let mut todo = Vec::new();
        for k in self.oracle.truth.keys() {
            for v in &k.versions {
                let sk = (k.id, v.version, v.epoch);
                if v.state == VersionState::Enabled && !self.oracle.roots.contains_key(&sk) {
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
            self.oracle.roots.insert(sk, bytes);
            self.oracle.root_set.insert(bytes);
            self.stats.roots_reconstructed += 1;
        }
    }

    /// For the liveness probe: enabled versions that `t` honest live
    /// holders still have shares of.
    pub(crate) fn usable_versions(&self) -> Vec<(String, KeyVersion, usize)> {
        let mut out = Vec::new();
        for (name, version) in self.enabled_versions() {
            let Some(key) = self.oracle.truth.key(&name) else {
                continue;
            };
            let Some(rec) = key.version(version) else {
                continue;
            };
            if below_min_decrypt(key, version).is_some() {
                continue;
            }
            let sk = (key.id, version, rec.epoch);
            let ready = self
                .nodes
                .iter()
                .filter(|(id, n)| {
                    n.alive && Some(**id) != self.adversary.byzantine && n.disk.contains_key(&sk)
                })
                .count();
            if ready >= usize::from(rec.threshold) {
                out.push((name, version, ready));
            }
        }
        out
    }
}

/// Lagrange interpolation at 0 over `(index, share)` points.
pub(super) fn lagrange_at_zero(shares: &[(u64, Scalar)]) -> Option<Scalar> {
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
