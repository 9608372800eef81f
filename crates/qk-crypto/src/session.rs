//! One participant of a DKG, refresh or reshare session, as a sans-IO state
//! machine: messages in, [`Outgoing`] out. The driver decides when a phase
//! ends (a log entry or a timeout); this code never reads a clock.
//!
//! Phases: `start` deals; deals and private shares arrive; `close_dealing`
//! complains about missing or wrong shares; complaints are answered with public
//! justifications; `finish` computes `QUAL`, the new commitments and this
//! participant's share. All inputs to `QUAL` are public log messages, so every
//! honest participant computes the same set.

use std::collections::{BTreeMap, BTreeSet};

use k256::elliptic_curve::group::Group;
use k256::{AffinePoint, ProjectivePoint, Scalar};
use qk_types::{ShareIndex, ThresholdParams};
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::encoding::is_identity;
use crate::error::CryptoError;
use crate::keyset::PublicKeySet;
use crate::messages::{
    Complaint, Deal, Justification, Outgoing, PrivateShare, PublicMessage, SessionId,
};
use crate::poly::{deal, lagrange_at_zero, verify_share};
use crate::proof::SchnorrProof;
use crate::secret::{KeyShare, SecretScalar};

const POK_DOMAIN: &str = "qk/dkg-pok";

/// What the session produces.
#[derive(Clone, Debug)]
pub enum SessionKind {
    /// A new key: every dealer contributes a random secret.
    Generate,
    /// Same holders, same key, new shares: dealers share zero.
    Refresh { old: PublicKeySet },
    /// New holders and threshold, same key: old holders share their shares.
    Reshare { old: PublicKeySet },
}

/// Public parameters, identical at every participant.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub session_id: SessionId,
    pub kind: SessionKind,
    pub dealers: Vec<ShareIndex>,
    pub receivers: Vec<ShareIndex>,
    /// Threshold of the sharing the session produces.
    pub threshold: u16,
}

/// The result at one participant.
#[derive(Debug)]
pub struct SessionOutput {
    pub keys: PublicKeySet,
    /// This participant's new share, when it is a receiver.
    pub share: Option<KeyShare>,
    pub qualified: Vec<ShareIndex>,
    /// Dealers excluded for a standing complaint or a bad justification.
    pub disqualified: Vec<ShareIndex>,
    /// Dealers that never published a deal.
    pub absent: Vec<ShareIndex>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Created,
    Dealing,
    Complaints,
    Finished,
}

/// One participant's state.
#[derive(Debug)]
pub struct Participant {
    config: SessionConfig,
    me: ShareIndex,
    old_share: Option<KeyShare>,
    phase: Phase,
    /// Shares this participant dealt, kept only to answer complaints.
    dealt: BTreeMap<ShareIndex, SecretScalar>,
    /// Full commitments `A_0..A_{t-1}` per dealer.
    deals: BTreeMap<ShareIndex, Vec<ProjectivePoint>>,
    received: BTreeMap<ShareIndex, SecretScalar>,
    /// accused dealer -> accusers without a valid justification yet.
    open_complaints: BTreeMap<ShareIndex, BTreeSet<ShareIndex>>,
    bad_dealers: BTreeSet<ShareIndex>,
}

fn reject(reason: impl Into<String>) -> CryptoError {
    CryptoError::Rejected(reason.into())
}

fn sorted_unique(list: &[ShareIndex]) -> Vec<ShareIndex> {
    let set: BTreeSet<ShareIndex> = list.iter().copied().collect();
    set.into_iter().collect()
}

impl SessionConfig {
    fn validate(&mut self) -> Result<(), CryptoError> {
        self.dealers = sorted_unique(&self.dealers);
        self.receivers = sorted_unique(&self.receivers);
        let n = u16::try_from(self.receivers.len()).unwrap_or(u16::MAX);
        ThresholdParams::new(self.threshold, n)
            .map_err(|e| CryptoError::InvalidParameters(e.to_string()))?;
        match &self.kind {
            SessionKind::Generate => {
                if self.dealers != self.receivers {
                    return Err(CryptoError::InvalidParameters(
                        "generation needs the same dealers and receivers".into(),
                    ));
                }
            }
            SessionKind::Refresh { old } => {
                if self.dealers != old.holders()
                    || self.receivers != old.holders()
                    || self.threshold != old.threshold()
                {
                    return Err(CryptoError::InvalidParameters(
                        "refresh keeps the holders and threshold of the key version".into(),
                    ));
                }
            }
            SessionKind::Reshare { old } => {
                if self.dealers.iter().any(|d| !old.holders().contains(d)) {
                    return Err(CryptoError::InvalidParameters(
                        "every reshare dealer must be a current holder".into(),
                    ));
                }
                if self.dealers.len() < usize::from(old.threshold()) {
                    return Err(CryptoError::InvalidParameters(format!(
                        "reshare needs at least {} dealers (the current threshold), got {}",
                        old.threshold(),
                        self.dealers.len()
                    )));
                }
            }
        }
        Ok(())
    }

    /// How many qualified dealers the result needs.
    fn min_qualified(&self) -> usize {
        match &self.kind {
            SessionKind::Generate => usize::from(self.threshold),
            SessionKind::Refresh { old } | SessionKind::Reshare { old } => {
                usize::from(old.threshold())
            }
        }
    }

    fn old_keys(&self) -> Option<&PublicKeySet> {
        match &self.kind {
            SessionKind::Generate => None,
            SessionKind::Refresh { old } | SessionKind::Reshare { old } => Some(old),
        }
    }
}

impl Participant {
    /// `old_share` is required for refresh (every participant) and for a
    /// reshare dealer; it is checked against the old commitments.
    pub fn new(
        mut config: SessionConfig,
        me: ShareIndex,
        old_share: Option<KeyShare>,
    ) -> Result<Self, CryptoError> {
        config.validate()?;
        if !config.dealers.contains(&me) && !config.receivers.contains(&me) {
            return Err(CryptoError::InvalidParameters(format!(
                "{me} is neither a dealer nor a receiver of this session"
            )));
        }
        let needs_old = match &config.kind {
            SessionKind::Generate => false,
            SessionKind::Refresh { .. } => true,
            SessionKind::Reshare { .. } => config.dealers.contains(&me),
        };
        if needs_old {
            let (Some(old), Some(share)) = (config.old_keys(), old_share.as_ref()) else {
                return Err(CryptoError::InvalidParameters(format!(
                    "{me} needs its current share for this session"
                )));
            };
            if share.index() != me {
                return Err(CryptoError::InvalidParameters(
                    "the current share belongs to another holder".into(),
                ));
            }
            old.verify_share(share)?;
        }
        Ok(Participant {
            config,
            me,
            old_share: if needs_old { old_share } else { None },
            phase: Phase::Created,
            dealt: BTreeMap::new(),
            deals: BTreeMap::new(),
            received: BTreeMap::new(),
            open_complaints: BTreeMap::new(),
            bad_dealers: BTreeSet::new(),
        })
    }

    pub fn index(&self) -> ShareIndex {
        self.me
    }

    fn is_dealer(&self) -> bool {
        self.config.dealers.contains(&self.me)
    }

    fn is_receiver(&self) -> bool {
        self.config.receivers.contains(&self.me)
    }

    /// Deals (when a dealer): one broadcast deal and one private share per
    /// other receiver.
    pub fn start<R: CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
    ) -> Result<Vec<Outgoing>, CryptoError> {
        if self.phase != Phase::Created {
            return Err(CryptoError::OutOfOrder("start called twice"));
        }
        self.phase = Phase::Dealing;
        if !self.is_dealer() {
            return Ok(Vec::new());
        }
        let constant = match (&self.config.kind, &self.old_share) {
            (SessionKind::Generate, _) => SecretScalar::random(rng),
            (SessionKind::Refresh { .. }, _) => SecretScalar::new(Scalar::ZERO),
            (SessionKind::Reshare { .. }, Some(share)) => share.value().clone(),
            (SessionKind::Reshare { .. }, None) => {
                return Err(CryptoError::OutOfOrder("reshare dealer without a share"))
            }
        };
        let dealing = deal(
            rng,
            &constant,
            usize::from(self.config.threshold),
            &self.config.receivers,
        )?;
        let affine: Vec<AffinePoint> = dealing.commitments.iter().map(|c| c.to_affine()).collect();
        let (commitments, pok) = match self.config.kind {
            SessionKind::Generate => {
                let mut bind = self.config.session_id.to_vec();
                bind.extend_from_slice(&self.me.get().to_be_bytes());
                let proof = SchnorrProof::prove(rng, POK_DOMAIN, &constant, &affine[0], &bind);
                (affine, Some(proof))
            }
            _ => (affine[1..].to_vec(), None),
        };
        let mut out = vec![Outgoing::Broadcast(PublicMessage::Deal(Deal {
            session_id: self.config.session_id,
            dealer: self.me,
            commitments,
            pok,
        }))];
        for (receiver, value) in dealing.shares {
            if receiver == self.me {
                self.received.insert(receiver, value.clone());
            } else {
                out.push(Outgoing::Send(PrivateShare {
                    session_id: self.config.session_id,
                    dealer: self.me,
                    receiver,
                    value: value.clone(),
                }));
            }
            self.dealt.insert(receiver, value);
        }
        Ok(out)
    }

    /// Handles a message delivered by the log, in log order.
    pub fn handle_public(&mut self, msg: &PublicMessage) -> Result<Vec<Outgoing>, CryptoError> {
        if self.phase == Phase::Created || self.phase == Phase::Finished {
            return Err(CryptoError::OutOfOrder(
                "session message before start or after finish",
            ));
        }
        match msg {
            PublicMessage::Deal(d) => self.on_deal(d).map(|()| Vec::new()),
            PublicMessage::Complaint(c) => self.on_complaint(c),
            PublicMessage::Justification(j) => self.on_justification(j).map(|()| Vec::new()),
        }
    }

    fn check_session(&self, id: &SessionId) -> Result<(), CryptoError> {
        if *id == self.config.session_id {
            Ok(())
        } else {
            Err(reject("message belongs to another session"))
        }
    }

    fn on_deal(&mut self, d: &Deal) -> Result<(), CryptoError> {
        self.check_session(&d.session_id)?;
        if self.phase != Phase::Dealing {
            return Err(reject(format!(
                "deal from {} after dealing closed",
                d.dealer
            )));
        }
        if !self.config.dealers.contains(&d.dealer) {
            return Err(reject(format!(
                "{} is not a dealer of this session",
                d.dealer
            )));
        }
        if self.deals.contains_key(&d.dealer) {
            return Err(reject(format!(
                "second deal from {}; the first one stands",
                d.dealer
            )));
        }
        let full = self.full_commitments(d)?;
        self.deals.insert(d.dealer, full);
        Ok(())
    }

    /// Checks the deal's shape and proof, and restores the implied `A_0`.
    fn full_commitments(&self, d: &Deal) -> Result<Vec<ProjectivePoint>, CryptoError> {
        let t = usize::from(self.config.threshold);
        let given: Vec<ProjectivePoint> = d
            .commitments
            .iter()
            .map(|c| ProjectivePoint::from(*c))
            .collect();
        match &self.config.kind {
            SessionKind::Generate => {
                let proof = d
                    .pok
                    .as_ref()
                    .ok_or_else(|| reject("deal without proof of knowledge"))?;
                let mut bind = self.config.session_id.to_vec();
                bind.extend_from_slice(&d.dealer.get().to_be_bytes());
                if given.len() != t || !proof.verify(POK_DOMAIN, &d.commitments[0], &bind) {
                    return Err(reject(format!(
                        "deal from {} is malformed or its proof fails",
                        d.dealer
                    )));
                }
                Ok(given)
            }
            SessionKind::Refresh { .. } | SessionKind::Reshare { .. } => {
                if given.len() != t - 1 || d.pok.is_some() {
                    return Err(reject(format!(
                        "deal from {} has the wrong shape",
                        d.dealer
                    )));
                }
                let a0 = match &self.config.kind {
                    SessionKind::Reshare { old } => {
                        ProjectivePoint::from(old.holder_key(d.dealer)?)
                    }
                    _ => ProjectivePoint::IDENTITY,
                };
                let mut full = Vec::with_capacity(t);
                full.push(a0);
                full.extend(given);
                Ok(full)
            }
        }
    }

    /// Stores a share sent to this participant point to point.
    pub fn handle_private(&mut self, share: PrivateShare) -> Result<(), CryptoError> {
        self.check_session(&share.session_id)?;
        // A share may arrive before this participant started: keep it.
        if !matches!(self.phase, Phase::Created | Phase::Dealing) {
            return Err(reject("private share after dealing closed"));
        }
        if share.receiver != self.me || !self.config.dealers.contains(&share.dealer) {
            return Err(reject(
                "private share for another receiver or from a non-dealer",
            ));
        }
        self.received
            .entry(share.dealer)
            .or_insert(share.value.clone());
        Ok(())
    }

    fn share_is_valid(&self, dealer: ShareIndex) -> bool {
        match (self.deals.get(&dealer), self.received.get(&dealer)) {
            (Some(commitments), Some(value)) => verify_share(commitments, self.me, value.expose()),
            _ => false,
        }
    }

    /// Ends dealing: complains about every dealer whose share is missing or wrong.
    pub fn close_dealing(&mut self) -> Result<Vec<Outgoing>, CryptoError> {
        if self.phase != Phase::Dealing {
            return Err(CryptoError::OutOfOrder(
                "close_dealing outside the dealing phase",
            ));
        }
        self.phase = Phase::Complaints;
        if !self.is_receiver() {
            return Ok(Vec::new());
        }
        let dealers: Vec<ShareIndex> = self.deals.keys().copied().collect();
        Ok(dealers
            .into_iter()
            .filter(|d| !self.share_is_valid(*d))
            .map(|accused| {
                Outgoing::Broadcast(PublicMessage::Complaint(Complaint {
                    session_id: self.config.session_id,
                    accuser: self.me,
                    accused,
                }))
            })
            .collect())
    }

    fn on_complaint(&mut self, c: &Complaint) -> Result<Vec<Outgoing>, CryptoError> {
        self.check_session(&c.session_id)?;
        if !self.config.receivers.contains(&c.accuser) || !self.deals.contains_key(&c.accused) {
            return Err(reject(
                "complaint from a non-receiver or against a dealer without a deal",
            ));
        }
        self.open_complaints
            .entry(c.accused)
            .or_default()
            .insert(c.accuser);
        if c.accused != self.me {
            return Ok(Vec::new());
        }
        let Some(value) = self.dealt.get(&c.accuser) else {
            return Ok(Vec::new());
        };
        Ok(vec![Outgoing::Broadcast(PublicMessage::Justification(
            Justification {
                session_id: self.config.session_id,
                dealer: self.me,
                accuser: c.accuser,
                value: *value.expose(),
            },
        ))])
    }

    fn on_justification(&mut self, j: &Justification) -> Result<(), CryptoError> {
        self.check_session(&j.session_id)?;
        let pending = self
            .open_complaints
            .get(&j.dealer)
            .is_some_and(|accusers| accusers.contains(&j.accuser));
        if !pending {
            return Err(reject("justification without a matching complaint"));
        }
        let commitments = self.deals.get(&j.dealer).ok_or_else(|| reject("no deal"))?;
        if !verify_share(commitments, j.accuser, &j.value) {
            self.bad_dealers.insert(j.dealer);
            return Ok(());
        }
        if let Some(accusers) = self.open_complaints.get_mut(&j.dealer) {
            accusers.remove(&j.accuser);
        }
        if j.accuser == self.me {
            self.received.insert(j.dealer, SecretScalar::new(j.value));
        }
        Ok(())
    }

    /// Computes `QUAL`, the new commitments and this participant's share.
    pub fn finish(&mut self) -> Result<SessionOutput, CryptoError> {
        if self.phase != Phase::Complaints {
            return Err(CryptoError::OutOfOrder("finish before close_dealing"));
        }
        let qualified: Vec<ShareIndex> = self
            .deals
            .keys()
            .copied()
            .filter(|d| {
                !self.bad_dealers.contains(d)
                    && self.open_complaints.get(d).is_none_or(|a| a.is_empty())
            })
            .collect();
        if qualified.len() < self.config.min_qualified() {
            return Err(CryptoError::TooFewQualified {
                qualified: qualified.len(),
                needed: self.config.min_qualified(),
            });
        }
        let weights = self.dealer_weights(&qualified);
        let commitments = self.combined_commitments(&qualified, &weights);
        if is_identity(&commitments[0]) {
            return Err(reject("combined public key is the identity"));
        }
        let keys = PublicKeySet::new(
            self.config.threshold,
            self.config.receivers.clone(),
            commitments,
        )?;
        let share = if self.is_receiver() {
            let share = KeyShare::new(self.me, self.combined_share(&qualified, &weights)?);
            keys.verify_share(&share)?;
            Some(share)
        } else {
            None
        };
        self.phase = Phase::Finished;
        self.dealt.clear();
        self.received.clear();
        self.old_share = None;
        let disqualified = self
            .deals
            .keys()
            .copied()
            .filter(|d| !qualified.contains(d))
            .collect();
        let absent = self
            .config
            .dealers
            .iter()
            .copied()
            .filter(|d| !self.deals.contains_key(d))
            .collect();
        Ok(SessionOutput {
            keys,
            share,
            qualified,
            disqualified,
            absent,
        })
    }

    /// 1 per dealer, except in reshare: Lagrange coefficients over `QUAL`.
    fn dealer_weights(&self, qualified: &[ShareIndex]) -> Vec<Scalar> {
        match self.config.kind {
            SessionKind::Reshare { .. } => lagrange_at_zero(qualified),
            _ => vec![Scalar::ONE; qualified.len()],
        }
    }

    fn combined_commitments(
        &self,
        qualified: &[ShareIndex],
        weights: &[Scalar],
    ) -> Vec<ProjectivePoint> {
        let t = usize::from(self.config.threshold);
        let mut out = match &self.config.kind {
            SessionKind::Refresh { old } => old.commitments_projective(),
            _ => vec![ProjectivePoint::identity(); t],
        };
        for (dealer, weight) in qualified.iter().zip(weights) {
            if let Some(a) = self.deals.get(dealer) {
                for (acc, a_k) in out.iter_mut().zip(a) {
                    *acc += *a_k * weight;
                }
            }
        }
        out
    }

    fn combined_share(
        &self,
        qualified: &[ShareIndex],
        weights: &[Scalar],
    ) -> Result<SecretScalar, CryptoError> {
        let mut sum = Zeroizing::new(match (&self.config.kind, &self.old_share) {
            (SessionKind::Refresh { .. }, Some(old)) => *old.value().expose(),
            _ => Scalar::ZERO,
        });
        for (dealer, weight) in qualified.iter().zip(weights) {
            let value = self.received.get(dealer).ok_or_else(|| {
                reject(format!(
                    "no share from qualified dealer {dealer}; this participant missed dealing"
                ))
            })?;
            *sum += *value.expose() * weight;
        }
        Ok(SecretScalar::new(*sum))
    }
}
