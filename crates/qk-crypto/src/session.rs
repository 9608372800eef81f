//! One participant of a DKG, refresh or reshare session, as a sans-IO state
//! machine: log messages in, messages to broadcast out. The driver decides when a phase
//! ends (a log entry or a timeout); this code never reads a clock.
//!
//! Phases: `start` deals (commitments and one share sealed to each
//! receiver's DKG key, all in one log entry); `close_dealing` complains about
//! every wrong share, revealing only how that one box opens; anyone checks a
//! complaint, so a true one disqualifies the dealer and a false one is
//! ignored, with no answer from the dealer and no share ever in clear;
//! `finish` computes `QUAL`, the new commitments and this participant's
//! share. All inputs to `QUAL` are public log messages, so every honest
//! participant computes the same set.

use std::collections::{BTreeMap, BTreeSet};

use k256::elliptic_curve::group::Group;
use k256::{AffinePoint, ProjectivePoint, Scalar};
use qk_types::{ShareIndex, ThresholdParams};
use rand_core::CryptoRng;
use zeroize::Zeroizing;

use crate::encoding::is_identity;
use crate::error::CryptoError;
use crate::keyset::PublicKeySet;
use crate::messages::{Complaint, Deal, PublicMessage, SessionId};
use crate::poly::{deal, lagrange_at_zero, verify_share};
use crate::proof::SchnorrProof;
use crate::secret::{KeyShare, SecretScalar};
use crate::share_box::{BoxSlot, DkgPublicKey, DkgSecretKey, SealedShare};

const POK_DOMAIN: &str = "qk/dkg-pok";

/// What the session produces.
#[derive(Clone, Debug)]
pub enum SessionKind {
    /// A new key: every dealer contributes a random secret.
    Generate,
    /// Same holders, same key, new shares: dealers share zero.
    Refresh { old: PublicKeySet },
    /// New holders and threshold, same key: old holders share their shares
    /// (Lagrange-weighted over the qualified dealers). A dealer that lost
    /// its share does not deal and only receives, so a reshare onto the same
    /// holders also restores a lost share while `old.threshold()` others deal.
    Reshare { old: PublicKeySet },
}

/// Public parameters, identical at every participant.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub session_id: SessionId,
    pub kind: SessionKind,
    pub dealers: Vec<ShareIndex>,
    pub receivers: Vec<ShareIndex>,
    /// Every receiver's DKG encryption key (from the replicated state).
    pub receiver_keys: BTreeMap<ShareIndex, DkgPublicKey>,
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
    /// Dealers excluded for a verified complaint.
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
    /// This participant's DKG key, when it is a receiver.
    dkg_key: Option<DkgSecretKey>,
    phase: Phase,
    deals: BTreeMap<ShareIndex, DealRecord>,
    /// The share each dealer sealed to this participant, as opened.
    received: BTreeMap<ShareIndex, SecretScalar>,
    /// Dealers a verified complaint showed to have sealed a wrong share.
    bad_dealers: BTreeSet<ShareIndex>,
}

/// A dealer's deal as this participant keeps it.
#[derive(Debug)]
struct DealRecord {
    /// Full commitments `A_0..A_{t-1}`.
    commitments: Vec<ProjectivePoint>,
    /// Sealed shares by receiver.
    boxes: BTreeMap<ShareIndex, SealedShare>,
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
        if !self
            .receivers
            .iter()
            .copied()
            .eq(self.receiver_keys.keys().copied())
        {
            return Err(CryptoError::InvalidParameters(
                "every receiver needs exactly one DKG key".into(),
            ));
        }
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
    /// `old_share` is required for refresh (every participant); a reshare
    /// dealer without one (its share was lost) only receives. A share given
    /// is checked against the old commitments. `dkg_key`
    /// is required for a receiver and must match its key in the config.
    pub fn new(
        mut config: SessionConfig,
        me: ShareIndex,
        old_share: Option<KeyShare>,
        dkg_key: Option<DkgSecretKey>,
    ) -> Result<Self, CryptoError> {
        config.validate()?;
        if !config.dealers.contains(&me) && !config.receivers.contains(&me) {
            return Err(CryptoError::InvalidParameters(format!(
                "{me} is neither a dealer nor a receiver of this session"
            )));
        }
        let dkg_key = match config.receiver_keys.get(&me) {
            None => None,
            Some(expected) => match dkg_key {
                Some(key) if key.public_key() == *expected => Some(key),
                _ => {
                    return Err(CryptoError::InvalidParameters(format!(
                        "{me} is a receiver but its DKG key does not match the one published for it"
                    )))
                }
            },
        };
        let needs_old = match &config.kind {
            SessionKind::Generate => false,
            SessionKind::Refresh { .. } => true,
            SessionKind::Reshare { .. } => config.dealers.contains(&me) && old_share.is_some(),
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
            dkg_key,
            phase: Phase::Created,
            deals: BTreeMap::new(),
            received: BTreeMap::new(),
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

    fn slot(&self, dealer: ShareIndex, receiver: ShareIndex) -> BoxSlot {
        BoxSlot {
            session_id: self.config.session_id,
            dealer,
            receiver,
        }
    }

    /// Deals (when a dealer): the deal to broadcast, with every receiver's
    /// share sealed inside.
    pub fn start<R: CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
    ) -> Result<Option<Deal>, CryptoError> {
        if self.phase != Phase::Created {
            return Err(CryptoError::OutOfOrder("start called twice"));
        }
        self.phase = Phase::Dealing;
        if !self.is_dealer() {
            return Ok(None);
        }
        let constant = match (&self.config.kind, &self.old_share) {
            (SessionKind::Generate, _) => SecretScalar::random(rng),
            (SessionKind::Refresh { .. }, _) => SecretScalar::new(Scalar::ZERO),
            (SessionKind::Reshare { .. }, Some(share)) => share.value().clone(),
            // Its share was lost: it only receives (an absent dealer).
            (SessionKind::Reshare { .. }, None) => return Ok(None),
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
        let mut shares = Vec::with_capacity(dealing.shares.len());
        for (receiver, value) in &dealing.shares {
            let to = self
                .config
                .receiver_keys
                .get(receiver)
                .ok_or_else(|| reject(format!("no DKG key for receiver {receiver}")))?;
            let slot = self.slot(self.me, *receiver);
            shares.push(SealedShare::seal(rng, to, &slot, value));
        }
        Ok(Some(Deal {
            session_id: self.config.session_id,
            dealer: self.me,
            commitments,
            pok,
            shares,
        }))
    }

    /// Handles a message delivered by the log, in log order. An `Err` says
    /// why the message does not count (it changes nothing here).
    pub fn handle_public(&mut self, msg: &PublicMessage) -> Result<(), CryptoError> {
        if self.phase == Phase::Created || self.phase == Phase::Finished {
            return Err(CryptoError::OutOfOrder(
                "session message before start or after finish",
            ));
        }
        match msg {
            PublicMessage::Deal(d) => self.on_deal(d),
            PublicMessage::Complaint(c) => self.on_complaint(c),
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
        let commitments = self.full_commitments(d)?;
        if d.shares.len() != self.config.receivers.len() {
            return Err(reject(format!(
                "deal from {} seals {} shares for {} receivers",
                d.dealer,
                d.shares.len(),
                self.config.receivers.len()
            )));
        }
        let boxes: BTreeMap<ShareIndex, SealedShare> = self
            .config
            .receivers
            .iter()
            .copied()
            .zip(d.shares.iter().copied())
            .collect();
        // A box whose proof fails is never opened (so never revealed): its
        // share counts as missing, and the complaint needs no reveal.
        let slot = self.slot(d.dealer, self.me);
        if let (Some(key), Some(sealed)) = (&self.dkg_key, boxes.get(&self.me)) {
            if sealed.is_proven(&slot) {
                self.received.insert(d.dealer, sealed.open(key, &slot));
            }
        }
        self.deals
            .insert(d.dealer, DealRecord { commitments, boxes });
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

    fn share_is_valid(&self, dealer: ShareIndex) -> bool {
        match (self.deals.get(&dealer), self.received.get(&dealer)) {
            (Some(deal), Some(value)) => verify_share(&deal.commitments, self.me, value.expose()),
            _ => false,
        }
    }

    /// Ends dealing: complains about every dealer whose sealed share is
    /// wrong, revealing how that box opens (and nothing else).
    pub fn close_dealing<R: CryptoRng + ?Sized>(
        &mut self,
        rng: &mut R,
    ) -> Result<Vec<Complaint>, CryptoError> {
        if self.phase != Phase::Dealing {
            return Err(CryptoError::OutOfOrder(
                "close_dealing outside the dealing phase",
            ));
        }
        self.phase = Phase::Complaints;
        if !self.is_receiver() {
            return Ok(Vec::new());
        }
        let Some(key) = &self.dkg_key else {
            return Ok(Vec::new());
        };
        let mut complaints = Vec::new();
        for (dealer, deal) in &self.deals {
            if self.share_is_valid(*dealer) {
                continue;
            }
            let Some(sealed) = deal.boxes.get(&self.me) else {
                continue;
            };
            let slot = self.slot(*dealer, self.me);
            let reveal = sealed
                .is_proven(&slot)
                .then(|| sealed.reveal(rng, key, &slot));
            complaints.push(Complaint {
                session_id: self.config.session_id,
                accuser: self.me,
                accused: *dealer,
                reveal,
            });
        }
        Ok(complaints)
    }

    /// A complaint is checked, never answered: a box without a valid proof
    /// of its ephemeral secret disqualifies its dealer; otherwise the
    /// complaint's reveal opens the one box it is about. A wrong share
    /// disqualifies the dealer; a right one (or a missing reveal, or one
    /// that is not the accuser's) leaves the dealer qualified.
    fn on_complaint(&mut self, c: &Complaint) -> Result<(), CryptoError> {
        self.check_session(&c.session_id)?;
        let (Some(receiver_key), Some(deal)) = (
            self.config.receiver_keys.get(&c.accuser),
            self.deals.get(&c.accused),
        ) else {
            return Err(reject(
                "complaint from a non-receiver or against a dealer without a deal",
            ));
        };
        let slot = self.slot(c.accused, c.accuser);
        let Some(sealed) = deal.boxes.get(&c.accuser) else {
            return Err(reject("complaint about a box the deal does not have"));
        };
        if !sealed.is_proven(&slot) {
            // The dealer cannot show the box is its own: disqualified, and
            // no one reveals anything about it.
            self.bad_dealers.insert(c.accused);
            return Ok(());
        }
        let opened = c
            .reveal
            .as_ref()
            .and_then(|reveal| sealed.open_revealed(reveal, receiver_key, &slot));
        let Some(value) = opened else {
            return Err(reject(format!(
                "complaint by {} against {} carries a reveal that does not verify; ignored",
                c.accuser, c.accused
            )));
        };
        if verify_share(&deal.commitments, c.accuser, value.expose()) {
            return Err(reject(format!(
                "false complaint by {} against {}: the sealed share is correct; ignored",
                c.accuser, c.accused
            )));
        }
        self.bad_dealers.insert(c.accused);
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
            .filter(|d| !self.bad_dealers.contains(d))
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
            if let Some(deal) = self.deals.get(dealer) {
                for (acc, a_k) in out.iter_mut().zip(&deal.commitments) {
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
