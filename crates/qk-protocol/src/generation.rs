//! The DKG driver: one [`Generation`] per version this node holds while it
//! is generating. It feeds the `qk_crypto` participant with what the log
//! delivers, turns the participant's output into proposals and sends, and
//! decides when a phase should end (all inputs in, or a timeout).

use std::collections::BTreeSet;

use qk_crypto::{
    KeyShare, Outgoing, Participant, PrivateShare, PublicKeySet, PublicMessage, SessionConfig,
    SessionId, SessionKind,
};
use qk_state::{DkgSession, DkgStep, KeyVersionRecord, Operation};
use qk_types::{Epoch, KeyId, KeyVersion, NodeId, ShareIndex};
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};

use crate::message::{ProtocolMessage, SecretBytes};
use crate::unwrap::share_index_of;
use crate::{Action, ProtocolConfig};

/// `SHA-256("qk/dkg" ‖ key id ‖ version ‖ epoch)`: every message of the
/// session carries it, so nothing from one version's DKG counts in another.
pub fn session_id(key: KeyId, version: KeyVersion, epoch: Epoch) -> SessionId {
    let mut h = Sha256::new();
    h.update(b"qk/dkg");
    h.update(key.0);
    h.update(version.0.to_be_bytes());
    h.update(epoch.0.to_be_bytes());
    h.finalize().into()
}

/// `SHA-256("qk/refresh" ‖ key id ‖ version ‖ new epoch ‖ attempt)`: the
/// session of refresh `attempt` of a version; a retried refresh to the same
/// epoch is a different session.
pub fn refresh_session_id(
    key: KeyId,
    version: KeyVersion,
    epoch: Epoch,
    attempt: u32,
) -> SessionId {
    let mut h = Sha256::new();
    h.update(b"qk/refresh");
    h.update(key.0);
    h.update(version.0.to_be_bytes());
    h.update(epoch.0.to_be_bytes());
    h.update(attempt.to_be_bytes());
    h.finalize().into()
}

/// The session ids of a version's DKGs.
pub(crate) fn session_of(key: KeyId, version: KeyVersion, session: DkgSession) -> SessionId {
    match session {
        DkgSession::Generation => session_id(key, version, Epoch(0)),
        DkgSession::Refresh { epoch, attempt } => refresh_session_id(key, version, epoch, attempt),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Dealing,
    Complaints {
        closed_ms: u64,
    },
    /// `finish` ran (share persisted and ack proposed, or it failed here).
    Finished,
}

#[derive(Debug)]
pub(crate) struct Generation {
    pub(crate) name: String,
    pub(crate) key: KeyId,
    pub(crate) version: KeyVersion,
    /// The epoch of the share this DKG produces.
    pub(crate) epoch: Epoch,
    pub(crate) session: SessionId,
    /// Generation or refresh: carried in every step this node proposes.
    pub(crate) dkg: DkgSession,
    /// For a refresh: the version's current key set (the result must keep
    /// its public key).
    old_keys: Option<PublicKeySet>,
    me: NodeId,
    /// Sorted; holder `k` has index `k + 1`.
    holders: Vec<NodeId>,
    participant: Participant,
    started_ms: u64,
    phase: Phase,
    deals: BTreeSet<ShareIndex>,
    /// Dealers whose private share reached this node (itself included).
    shares_from: BTreeSet<ShareIndex>,
    ready_posted: bool,
    /// Holders whose `Ready` the log accepted.
    ready: BTreeSet<ShareIndex>,
    complained: BTreeSet<ShareIndex>,
    /// `(accused, accuser)` complaints without a justification yet.
    open: BTreeSet<(ShareIndex, ShareIndex)>,
    close_proposed_ms: Option<u64>,
    finish_proposed_ms: Option<u64>,
}

fn retry_due(last: Option<u64>, now: u64, interval: u64) -> bool {
    last.is_none_or(|t| now >= t.saturating_add(interval))
}

impl Generation {
    /// Starts this node's participant and deals. `started_ms` is the leader
    /// timestamp of the command that created the version (or started the
    /// refresh). `refresh` is `Some((current key set, this holder's current
    /// share))` for a refresh DKG.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start<R: CryptoRng + ?Sized>(
        me: NodeId,
        name: &str,
        key: KeyId,
        record: &KeyVersionRecord,
        dkg: DkgSession,
        refresh: Option<(PublicKeySet, KeyShare)>,
        started_ms: u64,
        rng: &mut R,
    ) -> Result<(Self, Vec<Action>), String> {
        let holders = record.sorted_holders();
        let my_index = share_index_of(record, me)
            .ok_or_else(|| format!("{me} is not a holder of this version"))?;
        let indices: Vec<ShareIndex> = holders
            .iter()
            .filter_map(|h| share_index_of(record, *h))
            .collect();
        let session = session_of(key, record.version, dkg);
        let (epoch, kind, old_keys, old_share) = match (dkg, refresh) {
            (DkgSession::Generation, _) => (record.epoch, SessionKind::Generate, None, None),
            (DkgSession::Refresh { epoch, .. }, Some((old, share))) => (
                epoch,
                SessionKind::Refresh { old: old.clone() },
                Some(old),
                Some(share),
            ),
            (DkgSession::Refresh { .. }, None) => {
                return Err("a refresh needs the current key set and share".into())
            }
        };
        let config = SessionConfig {
            session_id: session,
            kind,
            dealers: indices.clone(),
            receivers: indices,
            threshold: record.threshold,
        };
        let mut participant =
            Participant::new(config, my_index, old_share).map_err(|e| e.to_string())?;
        let out = participant.start(rng).map_err(|e| e.to_string())?;
        let mut g = Generation {
            name: name.to_string(),
            key,
            version: record.version,
            epoch,
            session,
            dkg,
            old_keys,
            me,
            holders,
            participant,
            started_ms,
            phase: Phase::Dealing,
            deals: BTreeSet::new(),
            shares_from: BTreeSet::from([my_index]),
            ready_posted: false,
            ready: BTreeSet::new(),
            complained: BTreeSet::new(),
            open: BTreeSet::new(),
            close_proposed_ms: None,
            finish_proposed_ms: None,
        };
        let actions = g.outgoing(out);
        Ok((g, actions))
    }

    fn node_of(&self, index: ShareIndex) -> Option<NodeId> {
        self.holders.get(usize::from(index.get()) - 1).copied()
    }

    fn index_of(&self, node: NodeId) -> Option<ShareIndex> {
        let pos = self.holders.iter().position(|h| *h == node)?;
        u16::try_from(pos + 1)
            .ok()
            .and_then(|i| ShareIndex::new(i).ok())
    }

    fn is_coordinator(&self) -> bool {
        self.holders.first() == Some(&self.me)
    }

    fn propose(&self, step: DkgStep) -> Action {
        Action::Propose(Operation::Dkg {
            name: self.name.clone(),
            version: self.version,
            from: self.me,
            step,
            session: self.dkg,
        })
    }

    fn warn(&self, what: impl std::fmt::Display) -> Action {
        let what_dkg = match self.dkg {
            DkgSession::Generation => "DKG".to_string(),
            DkgSession::Refresh { epoch, .. } => format!("refresh to epoch {}", epoch.0),
        };
        Action::Warning(format!(
            "{what_dkg} of key {:?} {}: {what}",
            self.name, self.version
        ))
    }

    /// Deals and justifications become proposals, private shares sends.
    /// (Complaints are batched by `on_close_dealing`.)
    fn outgoing(&mut self, out: Vec<Outgoing>) -> Vec<Action> {
        let mut actions = Vec::new();
        for o in out {
            match o {
                Outgoing::Broadcast(PublicMessage::Deal(d)) => {
                    actions.push(self.propose(DkgStep::Deal(d.to_bytes())));
                }
                Outgoing::Broadcast(PublicMessage::Justification(j)) => {
                    actions.push(self.propose(DkgStep::Justification(j.to_bytes())));
                }
                Outgoing::Broadcast(PublicMessage::Complaint(c)) => {
                    actions.push(self.propose(DkgStep::Complaints(vec![c.to_bytes()])));
                }
                Outgoing::Send(share) => match self.node_of(share.receiver) {
                    Some(to) => actions.push(Action::Send {
                        to,
                        msg: ProtocolMessage::DkgShare(SecretBytes::new(share.to_secret_bytes())),
                    }),
                    None => actions.push(self.warn("share for an unknown receiver dropped")),
                },
            }
        }
        actions
    }

    /// A share sent to this node by `from`; checked to come from its dealer.
    pub(crate) fn on_private(&mut self, from: NodeId, share: PrivateShare) -> Vec<Action> {
        let me = self.index_of(self.me);
        if self.index_of(from) != Some(share.dealer) || me != Some(share.receiver) {
            return vec![self.warn(format!(
                "share from {from} names another dealer or receiver; dropped"
            ))];
        }
        let dealer = share.dealer;
        match self.participant.handle_private(share) {
            Ok(()) => {
                self.shares_from.insert(dealer);
                self.maybe_ready()
            }
            Err(e) => vec![self.warn(format!("share from {from} refused: {e}"))],
        }
    }

    /// Once every deal is in the log and every dealer's share arrived,
    /// say so (once); dealing closes early only when all holders did.
    fn maybe_ready(&mut self) -> Vec<Action> {
        let n = self.holders.len();
        if self.phase == Phase::Dealing
            && !self.ready_posted
            && self.deals.len() == n
            && self.shares_from.len() == n
        {
            self.ready_posted = true;
            return vec![self.propose(DkgStep::Ready)];
        }
        Vec::new()
    }

    fn on_ready(&mut self, from: ShareIndex) -> Vec<Action> {
        self.ready.insert(from);
        if self.ready.len() == self.holders.len()
            && self.phase == Phase::Dealing
            && self.is_coordinator()
            && self.close_proposed_ms.is_none()
        {
            self.close_proposed_ms = Some(self.started_ms);
            return vec![self.propose(DkgStep::CloseDealing)];
        }
        Vec::new()
    }

    /// A DKG step the log accepted. `time_ms` is its leader timestamp.
    pub(crate) fn on_step(&mut self, from: NodeId, step: &DkgStep, time_ms: u64) -> Vec<Action> {
        let Some(from_index) = self.index_of(from) else {
            return Vec::new();
        };
        match step {
            DkgStep::Deal(bytes) => self.on_deal(from_index, bytes),
            DkgStep::Ready => self.on_ready(from_index),
            DkgStep::CloseDealing => self.on_close_dealing(time_ms),
            DkgStep::Complaints(list) => self.on_complaints(from_index, list),
            DkgStep::Justification(bytes) => self.on_justification(from_index, bytes),
            DkgStep::Finish => self.on_finish(),
            DkgStep::Ack { .. } => Vec::new(),
        }
    }

    fn decode(&self, bytes: &[u8]) -> Result<PublicMessage, Box<Action>> {
        PublicMessage::from_bytes(bytes)
            .map_err(|e| Box::new(self.warn(format!("undecodable DKG message in the log: {e}"))))
    }

    fn on_deal(&mut self, from: ShareIndex, bytes: &[u8]) -> Vec<Action> {
        let deal = match self.decode(bytes) {
            Ok(PublicMessage::Deal(d)) if d.dealer == from => PublicMessage::Deal(d),
            Ok(_) => return vec![self.warn(format!("{from} posted a deal that is not its own"))],
            Err(w) => return vec![*w],
        };
        if let Err(e) = self.participant.handle_public(&deal) {
            return vec![self.warn(e)];
        }
        self.deals.insert(from);
        self.maybe_ready()
    }

    fn on_close_dealing(&mut self, time_ms: u64) -> Vec<Action> {
        if self.phase != Phase::Dealing {
            return Vec::new();
        }
        self.phase = Phase::Complaints { closed_ms: time_ms };
        match self.participant.close_dealing() {
            Ok(out) => {
                let complaints = out
                    .into_iter()
                    .filter_map(|o| match o {
                        Outgoing::Broadcast(m @ PublicMessage::Complaint(_)) => Some(m.to_bytes()),
                        _ => None,
                    })
                    .collect();
                vec![self.propose(DkgStep::Complaints(complaints))]
            }
            Err(e) => vec![self.warn(e)],
        }
    }

    fn on_complaints(&mut self, from: ShareIndex, list: &[Vec<u8>]) -> Vec<Action> {
        let mut actions = Vec::new();
        self.complained.insert(from);
        for bytes in list {
            let msg = match self.decode(bytes) {
                Ok(PublicMessage::Complaint(c)) if c.accuser == from => PublicMessage::Complaint(c),
                Ok(_) => {
                    actions.push(self.warn(format!("{from} posted a complaint not its own")));
                    continue;
                }
                Err(w) => {
                    actions.push(*w);
                    continue;
                }
            };
            let PublicMessage::Complaint(c) = &msg else {
                continue;
            };
            match self.participant.handle_public(&msg) {
                Ok(out) => {
                    self.open.insert((c.accused, c.accuser));
                    actions.extend(self.outgoing(out));
                }
                Err(e) => actions.push(self.warn(e)),
            }
        }
        actions.extend(self.maybe_finish());
        actions
    }

    fn on_justification(&mut self, from: ShareIndex, bytes: &[u8]) -> Vec<Action> {
        let msg = match self.decode(bytes) {
            Ok(PublicMessage::Justification(j)) if j.dealer == from => {
                PublicMessage::Justification(j)
            }
            Ok(_) => return vec![self.warn(format!("{from} posted a justification not its own"))],
            Err(w) => return vec![*w],
        };
        let PublicMessage::Justification(j) = &msg else {
            return Vec::new();
        };
        let pair = (j.dealer, j.accuser);
        let mut actions = Vec::new();
        // Valid or not, the complaint is answered: a bad justification
        // disqualifies the dealer inside the participant.
        match self.participant.handle_public(&msg) {
            Ok(_) => {
                self.open.remove(&pair);
            }
            Err(e) => actions.push(self.warn(e)),
        }
        actions.extend(self.maybe_finish());
        actions
    }

    /// The coordinator ends the complaint phase as soon as every holder
    /// posted its complaints and every complaint is answered.
    fn maybe_finish(&mut self) -> Vec<Action> {
        let ready = matches!(self.phase, Phase::Complaints { .. })
            && self.complained.len() == self.holders.len()
            && self.open.is_empty();
        if ready && self.is_coordinator() && self.finish_proposed_ms.is_none() {
            self.finish_proposed_ms = Some(self.started_ms);
            return vec![self.propose(DkgStep::Finish)];
        }
        Vec::new()
    }

    fn on_finish(&mut self) -> Vec<Action> {
        if !matches!(self.phase, Phase::Complaints { .. }) {
            return Vec::new();
        }
        self.phase = Phase::Finished;
        match self.participant.finish() {
            Ok(out) => {
                let mut actions = Vec::new();
                if !out.absent.is_empty() || !out.disqualified.is_empty() {
                    let list = |v: &[ShareIndex]| {
                        let names: Vec<String> = v
                            .iter()
                            .filter_map(|i| self.node_of(*i))
                            .map(|n| n.to_string())
                            .collect();
                        names.join(", ")
                    };
                    actions.push(self.warn(format!(
                        "dealers absent: [{}], disqualified: [{}]",
                        list(&out.absent),
                        list(&out.disqualified)
                    )));
                }
                let Some(share) = out.share else {
                    actions.push(self.warn("finished without a share for this holder"));
                    return actions;
                };
                if let Some(old) = &self.old_keys {
                    if old.public_key() != out.keys.public_key() {
                        actions.push(self.warn(
                            "the refreshed key set has another public key; not acking (the refresh will be abandoned)",
                        ));
                        return actions;
                    }
                }
                actions.push(Action::PersistShare {
                    key: self.key,
                    name: self.name.clone(),
                    version: self.version,
                    epoch: self.epoch,
                    share,
                });
                actions.push(self.propose(DkgStep::Ack {
                    public_keys: out.keys.to_bytes(),
                }));
                actions
            }
            Err(e) => vec![self.warn(format!(
                "this holder cannot finish ({e}); the version will fail at its deadline"
            ))],
        }
    }

    /// Timeouts: close dealing, end the complaint phase. Proposals repeat
    /// at most once per `retry_interval_ms` until the log moves on.
    pub(crate) fn on_tick(&mut self, now: u64, cfg: &ProtocolConfig) -> Vec<Action> {
        let retry = cfg.retry_interval_ms;
        match self.phase {
            Phase::Dealing
                if now >= self.started_ms.saturating_add(cfg.dealing_timeout_ms)
                    && retry_due(self.close_proposed_ms, now, retry) =>
            {
                self.close_proposed_ms = Some(now);
                vec![self.propose(DkgStep::CloseDealing)]
            }
            Phase::Complaints { closed_ms }
                if now >= closed_ms.saturating_add(cfg.complaint_timeout_ms)
                    && retry_due(self.finish_proposed_ms, now, retry) =>
            {
                self.finish_proposed_ms = Some(now);
                vec![self.propose(DkgStep::Finish)]
            }
            _ => Vec::new(),
        }
    }
}
