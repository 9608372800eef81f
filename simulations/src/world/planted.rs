//! The holder-side planted bugs (docs/SIMULATION.md, "Planted bugs"): a
//! holder that skips one of its release rules, an erase that is lost or
//! late. The checker must catch each; none of this runs without a bug.

use qk_crypto::{partial_decrypt, Ciphertext};
use qk_protocol::{share_index_of, PartialRequest, UnwrapError};

use super::checks::{broken_release_rules, ReleaseRule};
use super::*;

/// How late the receipt-before-erase bug runs a version's erase.
const LATE_ERASE_MS: u64 = 200;

impl World {
    /// The rule the planted holder bug skips, if any.
    fn skipped_rule(&self) -> Option<ReleaseRule> {
        match self.cfg.bug {
            PlantedBug::HolderUsability => Some(ReleaseRule::Usable),
            PlantedBug::HolderAuthorization => Some(ReleaseRule::Authorized),
            PlantedBug::MinDecrypt => Some(ReleaseRule::MinDecrypt),
            _ => None,
        }
    }

    /// Under a planted holder bug, the partial the buggy holder releases
    /// where the honest one refused only for the rule the bug skips.
    pub(super) fn planted_release(
        &mut self,
        (me, state, share): (NodeId, &StateMachine, Option<&KeyShare>),
        request: &PartialRequest,
        now_ms: u64,
        reply: ProtocolMessage,
    ) -> ProtocolMessage {
        let Some(skipped) = self.skipped_rule() else {
            return reply;
        };
        if !matches!(
            &reply,
            ProtocolMessage::PartialResponse { result: Err(_), .. }
        ) {
            return reply;
        }
        let broken = broken_release_rules(state, request, now_ms);
        if broken.is_empty() || broken.iter().any(|(rule, _)| *rule != skipped) {
            return reply;
        }
        match raw_partial(state, me, share, request, &mut self.rng) {
            Some(partial) => ProtocolMessage::PartialResponse {
                op_id: request.op_id,
                result: Ok(partial),
            },
            None => reply,
        }
    }

    /// Under combine-short, the coordinator `at` combines as soon as
    /// partials from `t − 1` holders reached it. They never make the key
    /// (the AEAD does not open), so the unwrap ends in a decrypt error.
    /// Returns whether the bug took the delivered partial.
    pub(super) fn combine_short(&mut self, at: NodeId, op_id: OpId) -> bool {
        if self.cfg.bug != PlantedBug::CombineShort || Some(at) == self.adversary.byzantine {
            return false;
        }
        let Some(sm) = self.nodes.get(&at).and_then(|n| n.sm.clone()) else {
            return false;
        };
        sm.read(|a| self.combine_short_with((at, a.machine()), op_id))
            .unwrap_or(false)
    }

    fn combine_short_with(&mut self, (at, state): (NodeId, &StateMachine), op_id: OpId) -> bool {
        let Some(flight) = self.nodes.get(&at).and_then(|n| n.inflight.get(&op_id)) else {
            return false;
        };
        let (name, version) = &flight.key;
        let threshold = version
            .and_then(|v| state.key(name)?.version(v))
            .map(|r| usize::from(r.threshold));
        if threshold != Some(flight.partials_from.len() + 1) {
            return false;
        }
        let opened = Err(UnwrapError::Decrypt(
            qk_crypto::CryptoError::AeadFailure.to_string(),
        ));
        self.unwrap_done((at, state), op_id, opened, Vec::new());
        true
    }

    /// Runs an `EraseShare` on `id`'s share store, unless the planted bug
    /// drops it: every erase (ignore-erase), or the erase of an epoch a
    /// completed refresh replaced (refresh-erase).
    pub(super) fn erase_share(&mut self, id: NodeId, slot: ShareKey, state: &StateMachine) {
        let replaced = state
            .keys()
            .any(|k| k.id == slot.0 && k.version(slot.1).is_some_and(|v| v.epoch > slot.2));
        match self.cfg.bug {
            PlantedBug::IgnoreErase => return,
            PlantedBug::RefreshErase if replaced => return,
            _ => {}
        }
        if let Some(n) = self.nodes.get_mut(&id) {
            n.disk.remove(&slot);
        }
    }

    /// Runs an `EraseVersion`: never under ignore-erase; under
    /// receipt-before-erase [`LATE_ERASE_MS`] later, after the erase receipt
    /// that follows was proposed (and not at all if the node is down by then).
    pub(super) fn erase_version(&mut self, id: NodeId, key: KeyId, version: KeyVersion) {
        match self.cfg.bug {
            PlantedBug::IgnoreErase => {}
            PlantedBug::ReceiptBeforeErase => {
                self.schedule(LATE_ERASE_MS, Ev::LateErase { id, key, version });
            }
            _ => self.erase_now(id, key, version),
        }
    }

    /// Erases every share of `key` `version` from `id`'s store, if it is up.
    pub(super) fn erase_now(&mut self, id: NodeId, key: KeyId, version: KeyVersion) {
        if let Some(n) = self.nodes.get_mut(&id).filter(|n| n.alive) {
            n.disk.retain(|(k, v, _), _| (*k, *v) != (key, version));
        }
    }
}

/// A partial computed from the share with none of the holder's rules: only
/// what the ciphertext proof check inside `partial_decrypt` enforces.
fn raw_partial(
    state: &StateMachine,
    me: NodeId,
    share: Option<&KeyShare>,
    request: &PartialRequest,
    rng: &mut StdRng,
) -> Option<Vec<u8>> {
    let key = state.key(&request.name)?;
    let record = key.version(request.version)?;
    let index = share_index_of(record, me)?;
    let keys = PublicKeySet::from_bytes(record.public_keys.as_deref()?).ok()?;
    let holder_key = keys.holder_key(index).ok()?;
    let ciphertext = Ciphertext::from_bytes(&request.ciphertext).ok()?;
    let partial = partial_decrypt(
        rng,
        share?,
        &holder_key,
        key.id,
        request.version,
        &ciphertext,
        &request.context,
    )
    .ok()?;
    Some(partial.to_bytes())
}
