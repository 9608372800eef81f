//! The compromised node forges commands: in the admin's name signed with
//! its own key, with a grant it made up for the admin, as an honest holder
//! (a DKG ack), and as replays of the admin's signed commands under new
//! request ids. The invariant: no forged command takes effect.

use qk_state::proof::{ProofError, SessionGrant};

use super::*;

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
        let Some(byz) = self.byzantine else { return };
        if !self.live_ids().contains(&byz) {
            return;
        }
        let own = byz.to_string();
        let Some(own_key) = self.credentials.get(&own).cloned() else {
            return;
        };
        let kind = self.rng.random_range(0..4);
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
        self.forged.insert(forged.request_id);
        self.trace(
            "forge",
            format!("{kind} {:?}", forged.request_id).as_bytes(),
        );
        self.pending_proposals += 1;
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
        let (name, version, holder) = self.truth.keys().find_map(|k| {
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
        if self.seen_signed.is_empty() {
            return None;
        }
        let i = self.rng.random_range(0..self.seen_signed.len());
        let mut cmd = self.seen_signed[i].clone();
        cmd.request_id = RequestId(self.rng.random());
        Some(cmd)
    }

    /// After the agreed apply of `cmd`: a forged command must have been
    /// refused; the admin's applied commands feed the attacker's replays.
    pub(super) fn check_forgery(&mut self, cmd: &Command, resp: &qk_state::Response) {
        if self.forged.contains(&cmd.request_id) {
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
            if self.seen_signed.len() >= REPLAY_POOL {
                self.seen_signed.remove(0);
            }
            self.seen_signed.push(cmd.clone());
        }
    }
}

fn mallory() -> Operation {
    Operation::CreatePrincipal {
        name: "mallory".into(),
        roles: [qk_state::Role::Admin].into(),
    }
}
