//! Every command proves its author, and every replica checks the proof at
//! apply.
//!
//! The node that proposes a command is not trusted to say who wrote it. A
//! principal's command is signed with the principal's own credential (its
//! token's derived key, or a session key its client certificate granted,
//! see [`crate::proof`]); a node's own command (a DKG step, an ack, a
//! receipt, an audit batch) is signed with a session key its node
//! certificate granted. The check is deterministic: it reads only the
//! command, the replicated state and the log time, plus a [`GrantCheck`]
//! that every replica builds from the same cluster CA. A command whose proof
//! fails changes nothing and is recorded as refused, under the name
//! `unauthenticated`, never under the principal it claims.

use std::collections::BTreeMap;

use crate::command::{Command, Operation, RequestId, Response, StateError};
use crate::limits::{bounded, MAX_FRESH_REQUESTS, MAX_NAME_LEN};
use crate::proof::{
    check_proof_bounds, check_signer, verify_ed25519, Credential, ProofError, SessionGrant, Signer,
    INTENT_MAX_AGE_MS,
};
use crate::request_shares::MAX_REQUESTS_PER_PRINCIPAL;
use crate::{AuditRecord, StateMachine, GENESIS_HASH};

pub use crate::proof::CommandProof;

const COMMAND_DOMAIN: &[u8] = b"quorumkey command v1\0";
/// The audit name of a command whose author is not proven.
pub const UNAUTHENTICATED: &str = "unauthenticated";

/// Checks a session grant's certificate: it chains to the cluster CA, is
/// valid at `at_ms`, names `grant.principal`, and signed the grant. The same
/// grant and time must give the same verdict on every replica.
pub trait GrantCheck: Send + Sync {
    fn check_grant(&self, grant: &SessionGrant, at_ms: u64) -> Result<(), ProofError>;
}

/// The bytes a command proof signs.
pub fn command_message(
    principal: &str,
    request_id: &RequestId,
    op: &Operation,
    signed_ms: u64,
) -> Result<Vec<u8>, ProofError> {
    let op_bytes = op
        .canonical_bytes()
        .map_err(|e| ProofError::Malformed(e.to_string()))?;
    let mut m = COMMAND_DOMAIN.to_vec();
    let mut field = |bytes: &[u8]| {
        m.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
        m.extend_from_slice(bytes);
    };
    field(principal.as_bytes());
    field(&request_id.0);
    field(&signed_ms.to_be_bytes());
    field(&op_bytes);
    Ok(m)
}

impl Credential {
    /// Signs `cmd` (its principal, request id and operation) at `signed_ms`.
    pub fn sign_command(&self, cmd: &Command, signed_ms: u64) -> Result<CommandProof, ProofError> {
        let message = command_message(&cmd.principal, &cmd.request_id, &cmd.op, signed_ms)?;
        Ok(CommandProof {
            signer: self.signer.clone(),
            signed_ms,
            signature: self.sign(&message)?,
        })
    }
}

impl StateMachine {
    /// Applies `cmd` if its proof shows that `cmd.principal` wrote it;
    /// otherwise records the refusal and changes nothing else. What every
    /// replica runs for every committed command.
    ///
    /// The leader's time stamp must be within [`INTENT_MAX_AGE_MS`] of the
    /// author's signing time (a leader cannot run a principal's command at
    /// a time of its choosing), and the signing time no older than that
    /// before the time the nodes vouch for ([`StateMachine::vouched_ms`]), so
    /// an old proof stays dead whatever time the leader stamps.
    pub fn apply_authenticated(&mut self, cmd: &Command, grants: &dyn GrantCheck) -> Response {
        let signed_ms = match self.authenticate(cmd, grants) {
            Ok(signed_ms) => signed_ms,
            Err(e) => return self.refuse_unauthenticated(cmd, &e.to_string()),
        };
        if self.shares.is_active() {
            // What went stale no longer counts against the memory or anyone's
            // share (only once shares are on: older replicas forget later).
            self.forget_stale_requests();
        }
        // A node's attestation goes through even then: it is what lets old
        // request ids be forgotten again.
        if self.remembers_too_many() && !matches!(cmd.op, crate::command::Operation::Attest) {
            let e = format!(
                "more than {MAX_FRESH_REQUESTS} requests in the last {INTENT_MAX_AGE_MS} ms; retry later"
            );
            return self.refuse_unauthenticated(cmd, &e);
        }
        // A retry of a remembered command is answered as before: it adds
        // nothing to the memory.
        let remembered = self.requests_contains(cmd);
        if !remembered
            && !matches!(cmd.op, crate::command::Operation::Attest)
            && self
                .shares
                .refuses(&cmd.principal, self.remembered_requests())
        {
            return self.refuse_over_share(cmd);
        }
        self.apply_signed_at(cmd, signed_ms)
    }

    /// Refuses an authenticated command of a principal that holds its full
    /// share of a crowded request memory; not remembered, so the same
    /// request sent again once its older commands age out is applied.
    fn refuse_over_share(&mut self, cmd: &Command) -> Response {
        let principal = bounded(&cmd.principal, MAX_NAME_LEN);
        let held = self.shares.remembered_by(&cmd.principal);
        let error = StateError::Denied(format!(
            "{principal} has {held} commands remembered, at least the {MAX_REQUESTS_PER_PRINCIPAL} one principal may hold while the cluster's request memory is this full; its next commands are refused until its older ones go stale ({} minutes of the time the nodes vouch for, which moves while the holders of a live key sign) and other principals are not affected; send fewer writes",
            INTENT_MAX_AGE_MS / 60_000
        ));
        let record = self.refusal_record(cmd, principal, format!("refused: {error}"));
        Response {
            result: Err(error),
            audit_seq: self.push_record(record),
            duplicate: false,
        }
    }

    /// As [`StateMachine::apply_authenticated`], for a replica that knows
    /// the cluster's members at this log index (`is_member`): a node's
    /// command from a node that is not a member, a removed one above all,
    /// is refused whatever certificate signed it.
    pub fn apply_from_members(
        &mut self,
        cmd: &Command,
        grants: &dyn GrantCheck,
        is_member: &dyn Fn(qk_types::NodeId) -> bool,
    ) -> Response {
        let node = crate::access::node_of_principal(&cmd.principal);
        if let Some(node) = node.filter(|n| !is_member(*n)) {
            let e = format!(
                "{node} is not a member of the cluster at this point of the log, so its certificate signs nothing here"
            );
            return self.refuse_with(
                cmd,
                &e,
                "a node joins the cluster before it proposes anything",
            );
        }
        self.apply_authenticated(cmd, grants)
    }

    /// The proof's signing time, once the proof checks.
    fn authenticate(&self, cmd: &Command, grants: &dyn GrantCheck) -> Result<u64, ProofError> {
        let proof = cmd.proof.as_deref().ok_or_else(|| {
            ProofError::Signer(format!(
                "the command carries no proof from {}; every write is signed by its author's credential",
                bounded(&cmd.principal, MAX_NAME_LEN)
            ))
        })?;
        check_proof_bounds(&proof.signer, &proof.signature)?;
        let at_ms = cmd.time_ms;
        let age_ms = at_ms
            .abs_diff(proof.signed_ms)
            .max(self.vouched_ms().saturating_sub(proof.signed_ms));
        if age_ms > INTENT_MAX_AGE_MS {
            return Err(ProofError::Stale { age_ms });
        }
        let (signer, key) = match &proof.signer {
            Signer::Token { id } => self.token_signer(id, at_ms)?,
            Signer::Session(grant) => {
                // The verdict, never the checker's words: its detail may
                // differ between replicas (a remembered grant or not) and
                // must not reach the replicated state.
                grants.check_grant(grant, at_ms).map_err(|_| {
                    ProofError::Signer(format!(
                        "the session grant of {} does not check against the cluster CA at the log time",
                        bounded(&grant.principal, MAX_NAME_LEN)
                    ))
                })?;
                (grant.principal.clone(), grant.session_key)
            }
        };
        check_signer(signer, &cmd.principal)?;
        let message = command_message(&cmd.principal, &cmd.request_id, &cmd.op, proof.signed_ms)?;
        verify_ed25519(&key, &message, &proof.signature)?;
        Ok(proof.signed_ms)
    }

    /// The principal and verify key of token `id`, if it is live at
    /// `at_ms`: for a command's proof at apply, and for a holder checking a
    /// decrypt proof (which reads only this under the state lock).
    pub fn token_signer(&self, id: &str, at_ms: u64) -> Result<(String, [u8; 32]), ProofError> {
        let token = self.tokens.get(id).ok_or_else(|| {
            ProofError::Signer(format!(
                "the proof names token {}, which this replica does not know",
                bounded(id, 64)
            ))
        })?;
        if token.revoked_ms.is_some() || token.expires_at_ms <= at_ms {
            return Err(ProofError::Signer(format!(
                "the proof's token {id} is revoked or expired"
            )));
        }
        Ok((token.principal.clone(), token.verify_key))
    }

    fn refuse_unauthenticated(&mut self, cmd: &Command, e: &str) -> Response {
        self.refuse_with(cmd, e, "send it with the principal's own credential")
    }

    /// Refuses `cmd` as unauthenticated: `e` says why, `next` what to do.
    fn refuse_with(&mut self, cmd: &Command, e: &str, next: &str) -> Response {
        let error = StateError::Denied(format!("the command's author is not proven: {e}; {next}"));
        let outcome = format!(
            "refused: claims to come from {}; {e}",
            bounded(&cmd.principal, MAX_NAME_LEN)
        );
        let record = self.refusal_record(cmd, UNAUTHENTICATED.to_string(), outcome);
        // Not remembered as an answer to its request id: a forged command
        // must not occupy the id of the honest command it copies.
        Response {
            result: Err(error),
            audit_seq: self.push_record(record),
            duplicate: false,
        }
    }

    /// The audit record of a command refused before it ran.
    fn refusal_record(&self, cmd: &Command, principal: String, outcome: String) -> AuditRecord {
        AuditRecord {
            seq: 0,
            time_ms: cmd.time_ms,
            request_id: cmd.request_id,
            principal,
            operation: cmd.op.name().to_string(),
            key: cmd.op.key_name().map(|k| bounded(k, MAX_NAME_LEN)),
            version: cmd.op.version(),
            outcome,
            prev_hash: GENESIS_HASH,
            hash: [0u8; 32],
        }
    }
}

/// A fixed list of principals' Ed25519 keys in place of the cluster CA:
/// the PKI of the simulator and of tests that drive the state machine
/// without certificates. A grant checks when its principal is enrolled,
/// its `session_key` is the enrolled key, it carries no certificate, it has
/// not expired, and the enrolled key signed it.
#[derive(Clone, Debug, Default)]
pub struct KeyRoster {
    keys: BTreeMap<String, [u8; 32]>,
}

impl KeyRoster {
    pub fn new() -> Self {
        Self::default()
    }

    /// Enrolls `principal` with the Ed25519 key of `seed` and returns its
    /// credential (a grant valid until `expires_ms`).
    pub fn enroll(
        &mut self,
        principal: &str,
        seed: [u8; 32],
        expires_ms: u64,
    ) -> Result<Credential, ProofError> {
        let session_key = Credential::session_key(&seed)?;
        self.keys.insert(principal.to_string(), session_key);
        let unsigned = SessionGrant {
            cert_der: Vec::new(),
            principal: principal.to_string(),
            session_key,
            expires_ms,
            signature: Vec::new(),
        };
        let signature =
            Credential::session(seed, unsigned.clone()).sign(&unsigned.signed_message())?;
        Ok(Credential::session(
            seed,
            SessionGrant {
                signature,
                ..unsigned
            },
        ))
    }
}

impl GrantCheck for KeyRoster {
    fn check_grant(&self, grant: &SessionGrant, at_ms: u64) -> Result<(), ProofError> {
        let enrolled = self
            .keys
            .get(&grant.principal)
            .ok_or_else(|| ProofError::Signer(format!("{} is not enrolled", grant.principal)))?;
        if *enrolled != grant.session_key || !grant.cert_der.is_empty() {
            return Err(ProofError::Signer(format!(
                "the grant is not {}'s enrolled key",
                grant.principal
            )));
        }
        if grant.expires_ms <= at_ms {
            return Err(ProofError::Signer(format!(
                "the session of {} expired",
                grant.principal
            )));
        }
        verify_ed25519(enrolled, &grant.signed_message(), &grant.signature)
    }
}
