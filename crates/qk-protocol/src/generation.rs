//! The DKG driver: one [`Generation`] per version this node holds while it
//! is generating. It feeds the `qk_crypto` participant with what the log
//! delivers, turns the participant's output into proposals, follows the
//! phase the replicated state is in, and proposes the timed end of a phase.

use std::collections::BTreeMap;

use qk_crypto::{
    DkgPublicKey, DkgSecretKey, KeyShare, Participant, PublicKeySet, PublicMessage, SessionConfig,
    SessionId, SessionKind,
};
use qk_state::{DkgPhase, DkgSession, DkgStep, KeyVersionRecord, Operation, StateMachine};
use qk_types::{Epoch, KeyId, KeyVersion, NodeId, ShareIndex};
use rand_core::CryptoRng;
use sha2::{Digest, Sha256};

use crate::holder::share_index_of;
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
    close_proposed_ms: Option<u64>,
    finish_proposed_ms: Option<u64>,
}

pub(crate) fn retry_due(last: Option<u64>, now: u64, interval: u64) -> bool {
    last.is_none_or(|t| now >= t.saturating_add(interval))
}

/// Every holder's DKG key as published in the replicated state. Read at the
/// entry that starts the DKG, so every replica uses the same keys whatever
/// is published later.
pub(crate) fn receiver_keys(
    state: &StateMachine,
    record: &KeyVersionRecord,
) -> Result<BTreeMap<ShareIndex, DkgPublicKey>, String> {
    let mut keys = BTreeMap::new();
    for holder in record.sorted_holders() {
        let index =
            share_index_of(record, holder).ok_or_else(|| format!("{holder} has no share index"))?;
        let bytes = state
            .dkg_key(holder)
            .ok_or_else(|| format!("{holder} has not published its DKG key"))?;
        let key = DkgPublicKey::from_bytes(bytes).map_err(|e| format!("{holder}: {e}"))?;
        keys.insert(index, key);
    }
    Ok(keys)
}

/// What a DKG needs to start at this node.
pub(crate) struct StartDkg<'a> {
    pub(crate) me: NodeId,
    pub(crate) name: &'a str,
    pub(crate) key: KeyId,
    pub(crate) record: &'a KeyVersionRecord,
    pub(crate) dkg: DkgSession,
    /// `Some((current key set, this holder's current share))` for a
    /// refresh; no share when this holder lost it (it then only receives).
    pub(crate) refresh: Option<(PublicKeySet, Option<KeyShare>)>,
    /// Leader timestamp of the command that created the version (or
    /// started the refresh).
    pub(crate) started_ms: u64,
    /// This node's DKG key: it opens the shares sealed to this node.
    pub(crate) dkg_key: &'a DkgSecretKey,
    /// Every holder's DKG key as of the entry that started the DKG.
    pub(crate) receiver_keys: BTreeMap<ShareIndex, DkgPublicKey>,
}

impl Generation {
    /// Starts this node's participant and deals.
    pub(crate) fn start<R: CryptoRng + ?Sized>(
        s: StartDkg<'_>,
        rng: &mut R,
    ) -> Result<(Self, Vec<Action>), String> {
        let record = s.record;
        let holders = record.sorted_holders();
        let my_index = share_index_of(record, s.me)
            .ok_or_else(|| format!("{} is not a holder of this version", s.me))?;
        let indices: Vec<ShareIndex> = holders
            .iter()
            .filter_map(|h| share_index_of(record, *h))
            .collect();
        let session = session_of(s.key, record.version, s.dkg);
        let (epoch, kind, old_keys, old_share) = match (s.dkg, s.refresh) {
            (DkgSession::Generation, _) => (record.epoch, SessionKind::Generate, None, None),
            // A reshare onto the same holders and threshold: new shares of
            // the same key, and a holder that lost its share gets one again
            // from the others.
            (DkgSession::Refresh { epoch, .. }, Some((old, share))) => (
                epoch,
                SessionKind::Reshare { old: old.clone() },
                Some(old),
                share,
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
            receiver_keys: s.receiver_keys,
            threshold: record.threshold,
        };
        let mut participant =
            Participant::new(config, my_index, old_share, Some(s.dkg_key.clone()))
                .map_err(|e| e.to_string())?;
        let deal = participant.start(rng).map_err(|e| e.to_string())?;
        let g = Generation {
            name: s.name.to_string(),
            key: s.key,
            version: record.version,
            epoch,
            dkg: s.dkg,
            old_keys,
            me: s.me,
            holders,
            participant,
            started_ms: s.started_ms,
            phase: Phase::Dealing,
            close_proposed_ms: None,
            finish_proposed_ms: None,
        };
        let actions = deal
            .map(|d| g.propose(DkgStep::Deal(d.to_bytes())))
            .into_iter()
            .collect();
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

    /// A DKG step the log accepted. `time_ms` is its leader timestamp and
    /// `phase` the DKG phase the replicated state is in after it: the node
    /// follows the state, which moves by rule (every holder posted, or a
    /// timeout), never on one holder's say.
    pub(crate) fn on_step<R: CryptoRng + ?Sized>(
        &mut self,
        from: NodeId,
        step: &DkgStep,
        time_ms: u64,
        phase: Option<DkgPhase>,
        rng: &mut R,
    ) -> Vec<Action> {
        let Some(from_index) = self.index_of(from) else {
            return Vec::new();
        };
        let mut actions = match step {
            DkgStep::Deal(bytes) => self.on_deal(from_index, bytes),
            DkgStep::Complaints(list) => self.on_complaints(from_index, list),
            DkgStep::CloseDealing | DkgStep::Finish | DkgStep::Ack { .. } => Vec::new(),
        };
        if matches!(phase, Some(DkgPhase::Complaints | DkgPhase::Finished))
            && self.phase == Phase::Dealing
        {
            actions.extend(self.close_dealing(time_ms, rng));
        }
        if phase == Some(DkgPhase::Finished) && matches!(self.phase, Phase::Complaints { .. }) {
            actions.extend(self.finish());
        }
        actions
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
        match self.participant.handle_public(&deal) {
            Ok(()) => Vec::new(),
            Err(e) => vec![self.warn(e)],
        }
    }

    /// Dealing closed in the replicated state: complain about every wrong
    /// share (the list may be empty, which says "no complaint").
    fn close_dealing<R: CryptoRng + ?Sized>(&mut self, time_ms: u64, rng: &mut R) -> Vec<Action> {
        self.phase = Phase::Complaints { closed_ms: time_ms };
        match self.participant.close_dealing(rng) {
            Ok(complaints) => {
                let list = complaints
                    .into_iter()
                    .map(|c| PublicMessage::Complaint(c).to_bytes())
                    .collect();
                vec![self.propose(DkgStep::Complaints(list))]
            }
            Err(e) => vec![self.warn(e)],
        }
    }

    fn on_complaints(&mut self, from: ShareIndex, list: &[Vec<u8>]) -> Vec<Action> {
        let mut actions = Vec::new();
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
            // A false or unprovable complaint changes nothing; say so.
            if let Err(e) = self.participant.handle_public(&msg) {
                actions.push(self.warn(e));
            }
        }
        actions
    }

    fn finish(&mut self) -> Vec<Action> {
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

#[cfg(test)]
mod session_tests {
    use super::*;

    #[test]
    fn every_dkg_of_every_version_has_its_own_session() {
        let (k, v) = (KeyId([1; 16]), KeyVersion(1));
        let ids = [
            session_of(k, v, DkgSession::Generation),
            session_of(KeyId([2; 16]), v, DkgSession::Generation),
            session_of(k, KeyVersion(2), DkgSession::Generation),
            session_of(
                k,
                v,
                DkgSession::Refresh {
                    epoch: Epoch(1),
                    attempt: 0,
                },
            ),
            session_of(
                k,
                v,
                DkgSession::Refresh {
                    epoch: Epoch(1),
                    attempt: 1,
                },
            ),
            session_of(
                k,
                v,
                DkgSession::Refresh {
                    epoch: Epoch(2),
                    attempt: 0,
                },
            ),
            session_of(
                k,
                KeyVersion(2),
                DkgSession::Refresh {
                    epoch: Epoch(1),
                    attempt: 0,
                },
            ),
        ];
        let distinct: std::collections::BTreeSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len(), "{ids:?}");
        assert_eq!(ids[0], session_id(k, v, Epoch(0)));
        assert_eq!(ids[3], refresh_session_id(k, v, Epoch(1), 0));
    }
}
