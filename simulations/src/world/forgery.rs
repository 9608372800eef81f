//! The compromised node forges commands: in the admin's name signed with
//! its own key, with a grant it made up for the admin, as an honest holder
//! (a DKG ack), and as replays of the admin's signed commands under new
//! request ids. The invariant: no forged command takes effect.
//!
//! It also asks honest holders for partials in the workload caller's name:
//! with no proof, with a proof it saw as a holder (for another node, or
//! pasted onto another ciphertext), and with its own key. The invariant: an
//! honest holder releases a partial only for a request its principal signed,
//! for exactly that ciphertext, context and requesting node.

use qk_crypto::Ciphertext;
use qk_protocol::{check_intent_proof, PartialRequest};
use qk_state::proof::{Intent, ProofError, SessionGrant};

use super::*;

/// The compromised node (if the run has one) and what it forged or saw.
pub(crate) struct Adversary {
    pub(crate) byzantine: Option<NodeId>,
    /// Request ids of the commands the compromised node forged: none may
    /// take effect.
    pub(crate) forged: BTreeSet<RequestId>,
    /// The admin's latest signed commands, as the compromised node saw
    /// them in the log (material for replays).
    pub(crate) seen_signed: Vec<Command>,
    /// Unwrap proofs the compromised node saw as a holder (replay material).
    pub(crate) seen_proofs: Vec<IntentProof>,
    /// Operation ids of the partial requests the compromised node forged.
    pub(crate) forged_partials: BTreeSet<OpId>,
    /// Operation ids of the signed requests the compromised node passed on
    /// to holders without its own checks.
    pub(crate) unchecked_partials: BTreeSet<OpId>,
}

/// What the cluster checks grants with: the roster, or (planted bug) any
/// grant signed by its own session key.
pub(super) fn grant_check(roster: KeyRoster, bug: PlantedBug) -> Arc<dyn GrantCheck> {
    match bug {
        PlantedBug::TrustAnyGrant => Arc::new(SelfSigned),
        _ => Arc::new(roster),
    }
}

/// The planted bug: a grant is "valid" when its own key signed it.
struct SelfSigned;

impl GrantCheck for SelfSigned {
    fn check_grant(&self, grant: &SessionGrant, _at_ms: u64) -> Result<(), ProofError> {
        qk_state::proof::verify_ed25519(
            &grant.session_key,
            &grant.signed_message(),
            &grant.signature,
        )
    }
}

/// How many of the admin's signed commands the attacker keeps to replay.
const REPLAY_POOL: usize = 8;

impl World {
    /// One forged command from the compromised node, proposed at it.
    pub(super) fn forge(&mut self) {
        let Some(byz) = self.adversary.byzantine else {
            return;
        };
        if !self.live_ids().contains(&byz) {
            return;
        }
        let own = byz.to_string();
        let Some(own_key) = self.load.credentials.get(&own).cloned() else {
            return;
        };
        let kind = self.rng.random_range(0..6);
        if kind >= 4 {
            self.forge_partial_request(byz, &own_key);
            return;
        }
        let forged = match kind {
            0 => self.signed_as(&own_key, "admin", mallory()),
            1 => {
                // A grant for "admin" over the attacker's own key, signed by it.
                let made_up = KeyRoster::new().enroll("admin", self.rng.random(), u64::MAX);
                let Ok(made_up) = made_up else { return };
                self.signed_as(&made_up, "admin", mallory())
            }
            2 => match self.forged_ack(byz) {
                Some((holder, op)) => self.signed_as(&own_key, &holder, op),
                None => return,
            },
            _ => match self.replay() {
                Some(cmd) => cmd,
                None => return,
            },
        };
        self.stats.forgeries += 1;
        self.adversary.forged.insert(forged.request_id);
        self.trace(
            "forge",
            format!("{kind} {:?}", forged.request_id).as_bytes(),
        );
        self.load.pending_proposals += 1;
        self.enqueue(byz, vec![(forged, 0)]);
    }

    /// A command in `principal`'s name, signed with `credential` now.
    fn signed_as(&mut self, credential: &Credential, principal: &str, op: Operation) -> Command {
        let mut cmd = Command {
            request_id: RequestId(self.rng.random()),
            time_ms: 0,
            principal: principal.to_string(),
            op,
            proof: None,
        };
        cmd.proof = credential.sign_command(&cmd, self.now()).ok().map(Box::new);
        cmd
    }

    /// An ack of a made-up key set in an honest holder's name, for a
    /// version whose DKG is running.
    fn forged_ack(&mut self, byz: NodeId) -> Option<(String, Operation)> {
        let (name, version, holder) = self.oracle.truth.keys().find_map(|k| {
            k.versions
                .iter()
                .find(|v| v.state == VersionState::Generating)
                .and_then(|v| {
                    let holder = v.holders.iter().copied().find(|h| *h != byz)?;
                    Some((k.name.clone(), v.version, holder))
                })
        })?;
        let op = Operation::Dkg {
            name,
            version,
            from: holder,
            step: DkgStep::Ack {
                public_keys: vec![7; 64],
            },
            session: Default::default(),
        };
        Some((holder.to_string(), op))
    }

    /// One of the admin's signed commands under a new request id.
    fn replay(&mut self) -> Option<Command> {
        if self.adversary.seen_signed.is_empty() {
            return None;
        }
        let i = self.rng.random_range(0..self.adversary.seen_signed.len());
        let mut cmd = self.adversary.seen_signed[i].clone();
        cmd.request_id = RequestId(self.rng.random());
        Some(cmd)
    }

    /// After the agreed apply of `cmd`: a forged command must have been
    /// refused; the admin's applied commands feed the attacker's replays.
    pub(super) fn check_forgery(&mut self, cmd: &Command, resp: &qk_state::Response) {
        if self.adversary.forged.contains(&cmd.request_id) {
            if resp.result.is_ok() {
                self.fail(format!(
                    "a forged command took effect: {} in the name of {} (request {:?})",
                    cmd.op.name(),
                    cmd.principal,
                    cmd.request_id
                ));
            } else {
                self.stats.forgeries_refused += 1;
            }
            return;
        }
        if cmd.principal == "admin" && resp.result.is_ok() && cmd.proof.is_some() {
            if self.adversary.seen_signed.len() >= REPLAY_POOL {
                self.adversary.seen_signed.remove(0);
            }
            self.adversary.seen_signed.push(cmd.clone());
        }
    }
}

/// How many unwrap proofs the attacker keeps to replay.
const PROOF_POOL: usize = 8;

impl World {
    /// A partial request for a wrapped ciphertext, in the name of "app",
    /// from the compromised node to an honest holder of its version.
    fn forge_partial_request(&mut self, byz: NodeId, own_key: &Credential) {
        if self.load.wrapped.is_empty() {
            return;
        }
        let pick = self.rng.random_range(0..self.load.wrapped.len());
        let Some((mut request, holders)) = self.request_for(pick, "app", byz) else {
            return;
        };
        if holders.is_empty() {
            return;
        }
        let to = holders[self.rng.random_range(0..holders.len())];
        request.proof = match self.rng.random_range(0..3) {
            0 => None,
            // A proof another node's caller signed: its requester, or the
            // ciphertext it covers, is not this one.
            1 if !self.adversary.seen_proofs.is_empty() => {
                let i = self.rng.random_range(0..self.adversary.seen_proofs.len());
                Some(Box::new(self.adversary.seen_proofs[i].clone()))
            }
            _ => {
                let intent = Intent {
                    principal: "app",
                    ciphertext: &request.ciphertext,
                    context: &request.context,
                };
                own_key
                    .prove(&intent, byz.0, self.clock_of(byz))
                    .ok()
                    .map(Box::new)
            }
        };
        self.stats.partial_forgeries += 1;
        self.adversary.forged_partials.insert(request.op_id);
        self.trace("forge-partial", &request.op_id.to_be_bytes());
        match ProtocolMessage::PartialRequest(request).encode() {
            Ok(bytes) => self.send(byz, to, bytes.to_vec()),
            Err(e) => self.fail(format!("a forged partial request does not encode: {e}")),
        }
    }

    /// The compromised node as coordinator: a caller ("app", or now and
    /// then "guest") really signed this unwrap through it, and it asks
    /// every honest holder without the checks a coordinator makes, mostly
    /// for a version that may not decrypt. Each holder's own checks decide.
    pub(super) fn unchecked_unwrap(&mut self) {
        let Some(byz) = self.adversary.byzantine else {
            return;
        };
        let barred: Vec<usize> = (0..self.load.wrapped.len())
            .filter(|i| self.may_not_decrypt(&self.load.wrapped[*i].ciphertext))
            .collect();
        let pick = if !barred.is_empty() && self.rng.random_range(0..4) > 0 {
            barred[self.rng.random_range(0..barred.len())]
        } else {
            self.rng.random_range(0..self.load.wrapped.len())
        };
        let principal = if self.rng.random_range(0..4) == 0 {
            "guest"
        } else {
            "app"
        };
        let Some((mut request, holders)) = self.request_for(pick, principal, byz) else {
            return;
        };
        let proof = self.sign_intent(principal, &request.ciphertext, &ctx(), byz);
        request.proof = proof.map(Box::new);
        self.stats.unchecked_partials += 1;
        self.adversary.unchecked_partials.insert(request.op_id);
        self.trace("unchecked-partial", &request.op_id.to_be_bytes());
        self.send_to_holders(byz, request, holders);
    }

    /// The byzantine node puts to the holders an unwrap of a wrapped
    /// ciphertext under `context`, another tenant's, with the principal's
    /// valid proof for it. An honest coordinator refuses such an unwrap
    /// before asking anyone, so only a compromised node can send it; each
    /// holder's own ciphertext-proof check must refuse it (invariant 9).
    /// Returns whether it was sent.
    pub(super) fn foreign_context_request(&mut self, context: EncryptionContext) -> bool {
        let Some(byz) = self.adversary.byzantine else {
            return false;
        };
        if self.load.wrapped.is_empty() {
            return false;
        }
        let pick = self.rng.random_range(0..self.load.wrapped.len());
        let Some((mut request, holders)) = self.request_for(pick, "app", byz) else {
            return false;
        };
        let proof = self.sign_intent("app", &request.ciphertext, &context, byz);
        request.proof = proof.map(Box::new);
        request.context = context.clone();
        self.oracle
            .unwrap_requests
            .insert((byz, request.op_id), (request.ciphertext.clone(), context));
        self.stats.attacks += 1;
        self.trace("foreign-context-partial", &request.op_id.to_be_bytes());
        self.send_to_holders(byz, request, holders);
        true
    }

    fn send_to_holders(&mut self, byz: NodeId, request: PartialRequest, holders: Vec<NodeId>) {
        match ProtocolMessage::PartialRequest(request).encode() {
            Ok(bytes) => {
                for to in holders {
                    self.send(byz, to, bytes.to_vec());
                }
            }
            Err(e) => self.fail(format!("a forged partial request does not encode: {e}")),
        }
    }

    /// An unsigned partial request by `principal` for wrapped ciphertext
    /// `pick`, under the workload's context, and its version's holders
    /// other than `byz`.
    fn request_for(
        &mut self,
        pick: usize,
        principal: &str,
        byz: NodeId,
    ) -> Option<(PartialRequest, Vec<NodeId>)> {
        let target = self.load.wrapped.get(pick)?;
        let (name, ciphertext) = (target.name.clone(), target.ciphertext.clone());
        let ct = Ciphertext::from_bytes(&ciphertext).ok()?;
        let v = self
            .oracle
            .truth
            .key(&name)
            .and_then(|k| k.version(ct.version))?;
        let holders = v.holders.iter().copied().filter(|h| *h != byz).collect();
        let request = PartialRequest {
            op_id: self.rng.random(),
            key: ct.key_id,
            name,
            version: ct.version,
            ciphertext,
            context: ctx(),
            principal: principal.into(),
            epoch: Some(v.epoch),
            min_applied: 0,
            proof: None,
        };
        Some((request, holders))
    }

    /// Whether the agreed state bars `ciphertext`'s version from decrypting.
    fn may_not_decrypt(&self, ciphertext: &[u8]) -> bool {
        let Ok(ct) = Ciphertext::from_bytes(ciphertext) else {
            return false;
        };
        self.oracle
            .truth
            .keys()
            .find(|k| k.id == ct.key_id)
            .is_some_and(|k| {
                k.version(ct.version).is_some_and(|v| {
                    super::checks::unusable_state(v).is_some()
                        || super::checks::below_min_decrypt(k, ct.version).is_some()
                })
            })
    }

    /// The honest holder's check of who asked (the node's
    /// `Quorum::check_proof`); skipped under the planted bug.
    pub(super) fn check_intent(
        &self,
        from: NodeId,
        request: &PartialRequest,
        now_ms: u64,
        state: &StateMachine,
    ) -> Result<(), String> {
        if self.cfg.bug == PlantedBug::SkipIntentCheck {
            return Ok(());
        }
        let token = |id: &str| state.token_signer(id, now_ms);
        check_intent_proof(from, request, now_ms, self.roster.as_ref(), token)
            .map_err(|e| e.to_string())
    }

    /// The compromised node, as a holder, keeps the proofs it is shown.
    pub(super) fn keep_seen_proof(&mut self, request: &PartialRequest) {
        let Some(proof) = &request.proof else { return };
        if self.adversary.seen_proofs.len() >= PROOF_POOL {
            self.adversary.seen_proofs.remove(0);
        }
        self.adversary.seen_proofs.push(proof.as_ref().clone());
    }

    /// The invariant: holder `id` released a partial to `to` only for a
    /// request its principal signed for `to`.
    pub(super) fn check_released(&mut self, id: NodeId, to: NodeId, request: &PartialRequest) {
        let digest = intent_digest(
            &request.principal,
            &request.ciphertext,
            &request.context,
            to,
        );
        if !self.oracle.signed_intents.contains(&digest) {
            self.fail(format!(
                "holder {id} released a partial to {to} for a request {} never signed (key {:?} version {})",
                request.principal, request.name, request.version
            ));
        }
    }

    /// A client's signed unwrap, remembered for [`Self::check_released`].
    pub(super) fn sign_intent(
        &mut self,
        principal: &str,
        ciphertext: &[u8],
        context: &EncryptionContext,
        requester: NodeId,
    ) -> Option<IntentProof> {
        let intent = Intent {
            principal,
            ciphertext,
            context,
        };
        let time_ms = self.clock_of(requester);
        let proof = self
            .load
            .credentials
            .get(principal)?
            .prove(&intent, requester.0, time_ms)
            .ok()?;
        let digest = intent_digest(principal, ciphertext, context, requester);
        self.oracle.signed_intents.insert(digest);
        Some(proof)
    }
}

/// Names one unwrap request exactly: who, which ciphertext and context,
/// combined by which node.
fn intent_digest(
    principal: &str,
    ciphertext: &[u8],
    context: &EncryptionContext,
    requester: NodeId,
) -> [u8; 32] {
    let intent = Intent {
        principal,
        ciphertext,
        context,
    };
    Sha256::digest(intent.message(requester.0, 0)).into()
}

fn mallory() -> Operation {
    Operation::CreatePrincipal {
        name: "mallory".into(),
        roles: [qk_state::Role::Admin].into(),
    }
}
