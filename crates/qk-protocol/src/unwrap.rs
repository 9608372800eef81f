//! Unwrap with server-side combining: the requesting node asks `t` holders
//! of the version for a partial (itself first when it is a holder, the rest
//! spread over the holders by operation id), combines their partials, and
//! opens the AEAD. It asks the remaining holders as well (hedges) when the
//! first `t` have not all answered validly after
//! [`ProtocolConfig::hedge_ms`](crate::ProtocolConfig::hedge_ms), or at once
//! when an asked holder refuses, sends an invalid partial, or the combination
//! fails. The holder side is [`holder_partial`], a pure function the node
//! calls with the share it loaded from its sealed store.

use std::collections::{BTreeMap, BTreeSet};

use qk_crypto::{
    combine, partial_decrypt, Ciphertext, CombineMode, CryptoError, EncryptionContext, KeyShare,
    PartialDecryption, PublicKeySet,
};
use qk_state::{KeyRecord, KeyVersionRecord, StateMachine, VersionState};
use qk_types::{KeyVersion, NodeId, Redacted, RequestError, ShareIndex};
use rand_core::CryptoRng;

use crate::holder::share_index_of;
use crate::message::{bounded_reason, OpId, PartialRequest, ProtocolMessage};

/// Where the partials are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnwrapMode {
    /// This node combines and hands the plaintext to its API layer. (In
    /// client-side mode the client gathers partials itself and never asks
    /// a node to combine.)
    ServerSide,
}

/// What a node's API asks the protocol to unwrap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnwrapRequest {
    /// Chosen by the node, unique among its unwraps in flight.
    pub op_id: OpId,
    /// The key's name; the version comes from the ciphertext.
    pub name: String,
    /// The encoded `qk_crypto::Ciphertext`.
    pub ciphertext: Vec<u8>,
    pub context: EncryptionContext,
    /// The authenticated caller; holders run their authorization on it.
    pub principal: String,
    pub mode: UnwrapMode,
    /// Holders wait until they have applied this log index before deciding
    /// (see [`PartialRequest::min_applied`]).
    pub min_applied: u64,
    /// The principal's signature over this unwrap, passed to every holder.
    pub proof: Option<qk_state::proof::IntentProof>,
}

/// Why an unwrap failed. Messages say what failed and what to do; none
/// carries plaintext or share bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UnwrapError {
    #[error("ciphertext does not decode ({0}); pass the ciphertext exactly as wrap returned it")]
    BadCiphertext(String),
    #[error("the ciphertext does not verify for this encryption context: Quorumkey binds the context to every ciphertext, so decrypt with exactly the context used to encrypt (otherwise the ciphertext was altered)")]
    ContextMismatch,
    #[error("key {0:?} does not exist; list keys to see the inventory")]
    NoSuchKey(String),
    #[error("ciphertext was made under key id {found}, but key {name:?} has id {expected}; decrypt with the key the ciphertext names")]
    WrongKey {
        name: String,
        expected: String,
        found: String,
    },
    #[error("key {name:?} has no version {version}; the ciphertext names a version this cluster does not know")]
    NoSuchVersion { name: String, version: KeyVersion },
    #[error("version {version} of key {name:?} is destroyed; its ciphertexts can never be decrypted again")]
    Destroyed { name: String, version: KeyVersion },
    #[error("version {version} of key {name:?} is {state}; it cannot decrypt in that state (enable it, or wait for generation to finish)")]
    NotUsable {
        name: String,
        version: KeyVersion,
        state: String,
    },
    #[error("the stored public key set of version {version} of key {name:?} is corrupt ({reason}); the replica's state needs repair")]
    CorruptKeySet {
        name: String,
        version: KeyVersion,
        reason: String,
    },
    #[error("unwrap failed: needed {needed} holders, {answered} of {asked} answered{}{}; {}",
        refusal_suffix(.refused), invalid_suffix(.invalid),
        if *.timed_out { "timed out waiting for the rest — retry when enough holders are reachable" }
        else { "the remaining holders cannot make up the threshold — fix the refusals, then retry" })]
    NotEnoughHolders {
        needed: usize,
        asked: usize,
        answered: usize,
        /// Holders that refused, with their reasons.
        refused: Vec<(NodeId, String)>,
        /// Holders whose partial was malformed or failed its proof.
        invalid: Vec<NodeId>,
        timed_out: bool,
    },
    #[error("decryption failed ({0}); the ciphertext was modified or the encryption context differs from the one used to encrypt")]
    Decrypt(String),
    #[error("{0} unwraps are already in flight on this node; retry shortly")]
    Busy(usize),
    #[error("unwrap operation id {0} is already in use on this node; use a fresh id per request")]
    DuplicateOp(OpId),
}

impl UnwrapError {
    /// What kind of failure this is for the client that asked.
    pub fn kind(&self) -> qk_types::ErrorKind {
        use qk_types::ErrorKind;
        match self {
            UnwrapError::BadCiphertext(_)
            | UnwrapError::ContextMismatch
            | UnwrapError::WrongKey { .. }
            | UnwrapError::Decrypt(_) => ErrorKind::Invalid,
            UnwrapError::NoSuchKey(_) | UnwrapError::NoSuchVersion { .. } => ErrorKind::NotFound,
            UnwrapError::Destroyed { .. } | UnwrapError::NotUsable { .. } => ErrorKind::Conflict,
            UnwrapError::NotEnoughHolders { .. } | UnwrapError::Busy(_) => ErrorKind::Unavailable,
            UnwrapError::CorruptKeySet { .. } | UnwrapError::DuplicateOp(_) => ErrorKind::Internal,
        }
    }
}

fn refusal_suffix(refused: &[(NodeId, String)]) -> String {
    if refused.is_empty() {
        return String::new();
    }
    let reasons: Vec<String> = refused.iter().map(|(n, r)| format!("{n}: {r}")).collect();
    format!(" ({} refused: {})", refused.len(), reasons.join("; "))
}

fn invalid_suffix(invalid: &[NodeId]) -> String {
    if invalid.is_empty() {
        return String::new();
    }
    let names: Vec<String> = invalid.iter().map(NodeId::to_string).collect();
    format!(
        " ({} sent invalid partials: {})",
        invalid.len(),
        names.join(", ")
    )
}

/// Why a version cannot serve partials, or `None` when it can decrypt:
/// enabled, or compromised with decryption explicitly allowed, and not below
/// the key's minimum decryption version.
pub(crate) fn unusable(
    key: &KeyRecord,
    version: KeyVersion,
    record: &KeyVersionRecord,
) -> Option<UnwrapError> {
    let name = key.name.as_str();
    let destroyed = matches!(
        record.state,
        VersionState::Destroyed | VersionState::Destroying
    );
    if !destroyed && version < key.min_decrypt_version {
        return Some(UnwrapError::NotUsable {
            name: name.to_string(),
            version,
            state: format!(
                "below the key's minimum decryption version {}",
                key.min_decrypt_version.0
            ),
        });
    }
    match &record.state {
        VersionState::Enabled => None,
        VersionState::Disabled if record.compromised_decrypt_allowed => None,
        VersionState::Destroyed | VersionState::Destroying => Some(UnwrapError::Destroyed {
            name: name.to_string(),
            version,
        }),
        other => {
            let mut state = other.name().to_string();
            if let Some(reason) = &record.compromised {
                state.push_str(&format!(" (marked compromised: {reason})"));
            }
            Some(UnwrapError::NotUsable {
                name: name.to_string(),
                version,
                state,
            })
        }
    }
}

/// The answer to `request` on the wire: [`holder_partial`]'s partial, or
/// its refusal's message.
pub fn partial_response(
    request: &PartialRequest,
    result: Result<Vec<u8>, RequestError>,
) -> ProtocolMessage {
    ProtocolMessage::PartialResponse {
        op_id: request.op_id,
        result: result.map_err(|e| e.message),
    }
}

/// The holder's side of an unwrap: checks the principal's permission
/// ([`authorize_partial`](crate::authorize_partial), at this holder's
/// `now_ms`), the key version's state and the ciphertext proof (inside
/// `partial_decrypt`), then returns the partial's bytes or why this holder
/// gives none, with the refusal's kind (its message bounded for the wire).
/// Whether the principal asked at all is checked before
/// ([`check_intent_proof`](crate::check_intent_proof)) when another node
/// sent the request.
pub fn holder_partial<R: CryptoRng + ?Sized>(
    state: &StateMachine,
    me: NodeId,
    share: Option<&KeyShare>,
    request: &PartialRequest,
    now_ms: u64,
    rng: &mut R,
) -> Result<Vec<u8>, RequestError> {
    partial_for(state, me, share, request, now_ms, rng)
        .map_err(|e| RequestError::new(e.kind, bounded_reason(e.message)))
}

fn partial_for<R: CryptoRng + ?Sized>(
    state: &StateMachine,
    me: NodeId,
    share: Option<&KeyShare>,
    req: &PartialRequest,
    now_ms: u64,
    rng: &mut R,
) -> Result<Vec<u8>, RequestError> {
    let typed = |e: UnwrapError| RequestError::new(e.kind(), e.to_string());
    req.check_bounds()
        .map_err(|e| RequestError::invalid(e.to_string()))?;
    let key = state
        .key(&req.name)
        .ok_or_else(|| typed(UnwrapError::NoSuchKey(req.name.clone())))?;
    if key.id != req.key {
        return Err(typed(UnwrapError::WrongKey {
            name: req.name.clone(),
            expected: key.id.to_string(),
            found: req.key.to_string(),
        }));
    }
    crate::holder::authorize_partial(state, req, now_ms).map_err(|refusal| {
        RequestError::denied(format!(
            "principal {:?} is not authorized to unwrap with key {:?}: {}",
            req.principal, req.name, refusal.message
        ))
    })?;
    let record = key.version(req.version).ok_or_else(|| {
        typed(UnwrapError::NoSuchVersion {
            name: req.name.clone(),
            version: req.version,
        })
    })?;
    if let Some(e) = unusable(key, req.version, record) {
        return Err(typed(e));
    }
    if let Some(asked) = req.epoch.filter(|e| *e != record.epoch) {
        return Err(RequestError::unavailable(format!(
            "{me} holds version {} of key {:?} at share epoch {}, the request is for epoch {} (a refresh completed meanwhile); retry the unwrap",
            req.version, req.name, record.epoch.0, asked.0
        )));
    }
    let index = share_index_of(record, me).ok_or_else(|| {
        RequestError::invalid(format!(
            "{me} is not a holder of version {} of key {:?}; ask its holders",
            req.version, req.name
        ))
    })?;
    let share = share.ok_or_else(|| {
        RequestError::unavailable(format!(
            "{me} has no share of version {} of key {:?} (lost or erased); restore the node's share store or reshare",
            req.version, req.name
        ))
    })?;
    if share.index() != index {
        return Err(RequestError::internal(format!(
            "{me}'s stored share has index {} but this node is {index} of the version; the share store is inconsistent",
            share.index().get()
        )));
    }
    let keys = version_keys(&req.name, req.version, record).map_err(typed)?;
    let holder_key = keys
        .holder_key(index)
        .map_err(|e| RequestError::internal(e.to_string()))?;
    let ct = Ciphertext::from_bytes(&req.ciphertext)
        .map_err(|e| typed(UnwrapError::BadCiphertext(e.to_string())))?;
    let partial = partial_decrypt(
        rng,
        share,
        &holder_key,
        key.id,
        req.version,
        &ct,
        &req.context,
    )
    .map_err(|e| RequestError::invalid(format!("{me} refuses the partial: {e}")))?;
    Ok(partial.to_bytes())
}

/// Decodes a version's stored public key set.
pub(crate) fn version_keys(
    name: &str,
    version: KeyVersion,
    record: &KeyVersionRecord,
) -> Result<PublicKeySet, UnwrapError> {
    let corrupt = |reason: String| UnwrapError::CorruptKeySet {
        name: name.to_string(),
        version,
        reason,
    };
    let bytes = record
        .public_keys
        .as_deref()
        .ok_or_else(|| corrupt("no public key set recorded".into()))?;
    decode_key_set(bytes).map_err(|e| corrupt(e.to_string()))
}

/// Most decoded key sets remembered per thread.
const KEY_SET_MEMO_LEN: usize = 256;

thread_local! {
    /// Memo of `PublicKeySet::from_bytes`, a pure function: decoding checks
    /// every point and derives each holder's key (a multi-scalar
    /// multiplication per holder), which would otherwise dominate a partial.
    static KEY_SETS: std::cell::RefCell<BTreeMap<Vec<u8>, PublicKeySet>> =
        const { std::cell::RefCell::new(BTreeMap::new()) };
}

fn decode_key_set(bytes: &[u8]) -> Result<PublicKeySet, qk_crypto::CryptoError> {
    if let Some(hit) = KEY_SETS.with(|m| m.borrow().get(bytes).cloned()) {
        return Ok(hit);
    }
    let keys = PublicKeySet::from_bytes(bytes)?;
    KEY_SETS.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() >= KEY_SET_MEMO_LEN {
            m.clear();
        }
        m.insert(bytes.to_vec(), keys.clone());
    });
    Ok(keys)
}

/// One unwrap in flight at the combining node.
#[derive(Debug)]
pub(crate) struct PendingUnwrap {
    pub(crate) deadline_ms: u64,
    /// When the holders not asked yet are asked too, if `t` valid partials
    /// are not in by then.
    hedge_at_ms: u64,
    keys: PublicKeySet,
    ciphertext: Ciphertext,
    context: EncryptionContext,
    /// The request sent to every holder asked.
    request: PartialRequest,
    /// Every holder of the version, with its index.
    holders: BTreeMap<NodeId, ShareIndex>,
    /// The order holders are asked in: this node first if it is a holder,
    /// then the others rotated by operation id so concurrent unwraps spread
    /// over different holders.
    order: Vec<NodeId>,
    /// Holders sent a request so far (a prefix of `order`).
    asked: BTreeSet<NodeId>,
    /// Decoded partials not (yet) found invalid.
    partials: BTreeMap<NodeId, PartialDecryption>,
    refused: BTreeMap<NodeId, String>,
    invalid: BTreeSet<NodeId>,
}

/// What an answer did to a pending unwrap.
pub(crate) enum Progress {
    /// Still waiting; send the request to these holders (often none).
    Waiting(Vec<NodeId>),
    Done(Result<Redacted, UnwrapError>, Vec<NodeId>),
}

/// The order in which `me` asks the holders for operation `op_id`: itself
/// first if it is a holder (its partial costs no round trip), then the other
/// holders in sorted order rotated by `op_id + me`, so one node's successive
/// unwraps, and different nodes' unwraps, start at different holders.
fn ask_order(me: NodeId, op_id: OpId, sorted: &[NodeId]) -> Vec<NodeId> {
    let mut others: Vec<NodeId> = sorted.iter().copied().filter(|n| *n != me).collect();
    if !others.is_empty() {
        let len = others.len() as u64;
        let shift = (op_id % len + me.0 % len) % len;
        others.rotate_left(usize::try_from(shift).unwrap_or(0));
    }
    let mut order = Vec::with_capacity(sorted.len());
    if sorted.contains(&me) {
        order.push(me);
    }
    order.extend(others);
    order
}

impl PendingUnwrap {
    /// Checks the request against the replicated state; on success returns
    /// the pending unwrap and the first `t` holders to ask. `me` is the node
    /// combining.
    pub(crate) fn start(
        state: &StateMachine,
        me: NodeId,
        req: &UnwrapRequest,
        hedge_at_ms: u64,
        deadline_ms: u64,
    ) -> Result<(Self, Vec<NodeId>), UnwrapError> {
        let ciphertext = Ciphertext::from_bytes(&req.ciphertext)
            .map_err(|e| UnwrapError::BadCiphertext(e.to_string()))?;
        let key = state
            .key(&req.name)
            .ok_or_else(|| UnwrapError::NoSuchKey(req.name.clone()))?;
        if key.id != ciphertext.key_id {
            return Err(UnwrapError::WrongKey {
                name: req.name.clone(),
                expected: key.id.to_string(),
                found: ciphertext.key_id.to_string(),
            });
        }
        let version = ciphertext.version;
        let record = key
            .version(version)
            .ok_or_else(|| UnwrapError::NoSuchVersion {
                name: req.name.clone(),
                version,
            })?;
        if let Some(e) = unusable(key, version, record) {
            return Err(e);
        }
        let keys = version_keys(&req.name, version, record)?;
        let holders: BTreeMap<NodeId, ShareIndex> = record
            .sorted_holders()
            .into_iter()
            .filter_map(|n| share_index_of(record, n).map(|i| (n, i)))
            .collect();
        let sorted: Vec<NodeId> = holders.keys().copied().collect();
        let order = ask_order(me, req.op_id, &sorted);
        let request = PartialRequest {
            op_id: req.op_id,
            key: key.id,
            name: req.name.clone(),
            version,
            ciphertext: req.ciphertext.clone(),
            context: req.context.clone(),
            principal: req.principal.clone(),
            epoch: Some(record.epoch),
            min_applied: req.min_applied,
            proof: req.proof.clone().map(Box::new),
        };
        request
            .check_bounds()
            .map_err(|e| UnwrapError::BadCiphertext(e.to_string()))?;
        // Holders check this too; checking first spares them a request that
        // must fail, and names the cause.
        ciphertext.verify(&req.context).map_err(|e| match e {
            CryptoError::InvalidCiphertextProof => UnwrapError::ContextMismatch,
            other => UnwrapError::BadCiphertext(other.to_string()),
        })?;
        let mut pending = PendingUnwrap {
            deadline_ms,
            hedge_at_ms,
            keys,
            ciphertext,
            context: req.context.clone(),
            request,
            holders,
            order,
            asked: BTreeSet::new(),
            partials: BTreeMap::new(),
            refused: BTreeMap::new(),
            invalid: BTreeSet::new(),
        };
        let first = pending.ask_more(pending.needed());
        Ok((pending, first))
    }

    /// The request to send to each holder returned by `start`,
    /// `on_response` or `on_tick`.
    pub(crate) fn request(&self) -> &PartialRequest {
        &self.request
    }

    /// Marks up to `count` more holders as asked, in `order`; returns them.
    fn ask_more(&mut self, count: usize) -> Vec<NodeId> {
        let next: Vec<NodeId> = self
            .order
            .iter()
            .copied()
            .filter(|n| !self.asked.contains(n))
            .take(count)
            .collect();
        self.asked.extend(next.iter().copied());
        next
    }

    /// Asks every holder not asked yet.
    fn ask_rest(&mut self) -> Vec<NodeId> {
        self.ask_more(usize::MAX)
    }

    /// Hedges: once `hedge_at_ms` has passed without `t` valid partials,
    /// returns the holders not asked yet (marking them asked).
    pub(crate) fn on_tick(&mut self, now_ms: u64) -> Vec<NodeId> {
        if now_ms >= self.hedge_at_ms && self.partials.len() < self.needed() {
            self.ask_rest()
        } else {
            Vec::new()
        }
    }

    fn answered(&self, node: NodeId) -> bool {
        self.partials.contains_key(&node)
            || self.refused.contains_key(&node)
            || self.invalid.contains(&node)
    }

    fn needed(&self) -> usize {
        usize::from(self.keys.threshold())
    }

    /// Records one holder's answer; combines once `t` partials are in.
    pub(crate) fn on_response(
        &mut self,
        from: NodeId,
        result: Result<Vec<u8>, String>,
    ) -> Progress {
        if !self.asked.contains(&from) {
            return Progress::Waiting(Vec::new()); // not asked: ignored
        }
        let Some(index) = self.holders.get(&from).copied() else {
            return Progress::Waiting(Vec::new()); // unreachable: only holders are asked
        };
        if self.answered(from) {
            return Progress::Waiting(Vec::new()); // first answer stands
        }
        // Any refusal or bad partial means the holders asked so far may not
        // make up `t`: ask the rest at once, so the fallback (and the blame)
        // does not wait for the hedge delay.
        let mut setback = match result {
            Err(reason) => {
                self.refused.insert(from, reason);
                true
            }
            Ok(bytes) => match PartialDecryption::from_bytes(&bytes) {
                Ok(p) if p.index == index => {
                    self.partials.insert(from, p);
                    false
                }
                _ => {
                    self.invalid.insert(from);
                    true
                }
            },
        };
        if self.partials.len() >= self.needed() {
            if let Some(done) = self.try_combine() {
                return done;
            }
            setback = true; // the combination found invalid partials
        }
        let ask = if setback { self.ask_rest() } else { Vec::new() };
        let not_asked = self.holders.len() - self.asked.len();
        let outstanding = self.asked.iter().filter(|n| !self.answered(**n)).count();
        if self.partials.len() + outstanding + not_asked < self.needed() {
            return Progress::Done(Err(self.shortfall(false)), self.faulty());
        }
        Progress::Waiting(ask)
    }

    fn try_combine(&mut self) -> Option<Progress> {
        let partials: Vec<PartialDecryption> = self.partials.values().cloned().collect();
        match combine(
            &self.keys,
            &self.ciphertext,
            &self.context,
            &partials,
            CombineMode::Optimistic,
        ) {
            Ok(out) => {
                self.mark_invalid(&out.invalid);
                Some(Progress::Done(
                    Ok(Redacted::from(out.plaintext)),
                    self.faulty(),
                ))
            }
            Err(CryptoError::NotEnoughPartials { invalid, .. }) => {
                self.mark_invalid(&invalid);
                None
            }
            Err(e) => Some(Progress::Done(
                Err(UnwrapError::Decrypt(e.to_string())),
                self.faulty(),
            )),
        }
    }

    fn mark_invalid(&mut self, indices: &[ShareIndex]) {
        let nodes: Vec<NodeId> = self
            .holders
            .iter()
            .filter(|(_, i)| indices.contains(i))
            .map(|(n, _)| *n)
            .collect();
        for n in nodes {
            self.partials.remove(&n);
            self.invalid.insert(n);
        }
    }

    pub(crate) fn faulty(&self) -> Vec<NodeId> {
        self.invalid.iter().copied().collect()
    }

    pub(crate) fn shortfall(&self, timed_out: bool) -> UnwrapError {
        UnwrapError::NotEnoughHolders {
            needed: self.needed(),
            asked: self.asked.len(),
            answered: self.partials.len() + self.refused.len() + self.invalid.len(),
            refused: self.refused.iter().map(|(n, r)| (*n, r.clone())).collect(),
            invalid: self.faulty(),
            timed_out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_unwrap_asks_itself_first_then_the_others_rotated_by_op_and_node() {
        let sorted: Vec<NodeId> = (1..=4).map(NodeId).collect();
        assert_eq!(
            ask_order(NodeId(2), 0, &sorted)[0],
            NodeId(2),
            "itself first"
        );
        for me in [NodeId(2), NodeId(5)] {
            let others: Vec<NodeId> = sorted.iter().copied().filter(|n| *n != me).collect();
            let len = others.len() as u64;
            for op_id in 0..6u64 {
                let order = ask_order(me, op_id, &sorted);
                let first_other = order[usize::from(sorted.contains(&me))];
                let shift = usize::try_from((op_id + me.0) % len).unwrap_or(0);
                assert_eq!(first_other, others[shift], "me {me} op {op_id}");
                assert_eq!(order.len(), sorted.len(), "every holder, once");
            }
        }
    }
}
