//! Wire messages of the DKG, refresh and reshare sessions, with strict encodings.
//!
//! Public messages travel through the Raft log (the broadcast channel); a
//! [`PrivateShare`] travels point to point over mutual TLS and never enters
//! the log.

use std::fmt;

use k256::{AffinePoint, Scalar};
use qk_types::{ShareIndex, MAX_HOLDERS};
use zeroize::Zeroizing;

use crate::encoding::{tag, Reader, Writer, FORMAT_VERSION, POINT_LEN};
use crate::error::DecodeError;
use crate::proof::{SchnorrProof, SCHNORR_PROOF_LEN};
use crate::secret::SecretScalar;

/// Identifies one session (for example a hash of key id, version and epoch);
/// every message carries it so messages of one session never count in another.
pub type SessionId = [u8; 32];

/// Largest encoded deal: 64 commitments and a proof.
pub const MAX_DEAL_LEN: usize =
    2 + 32 + 2 + 2 + MAX_HOLDERS as usize * POINT_LEN + 1 + SCHNORR_PROOF_LEN;
pub const MAX_COMPLAINT_LEN: usize = 2 + 32 + 2 + 2;
pub const MAX_JUSTIFICATION_LEN: usize = 2 + 32 + 2 + 2 + 32;
pub const MAX_PRIVATE_SHARE_LEN: usize = 2 + 32 + 2 + 2 + 32;

/// A dealer's public contribution: Feldman commitments of its polynomial
/// (without `A_0` in refresh and reshare, where it is implied) and, in
/// generation, a proof of knowledge of `a_0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deal {
    pub session_id: SessionId,
    pub dealer: ShareIndex,
    pub commitments: Vec<AffinePoint>,
    pub pok: Option<SchnorrProof>,
}

/// A receiver's public claim that a dealer's share to it is missing or wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Complaint {
    pub session_id: SessionId,
    pub accuser: ShareIndex,
    pub accused: ShareIndex,
}

/// A dealer's public answer to a complaint: the disputed share in clear.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Justification {
    pub session_id: SessionId,
    pub dealer: ShareIndex,
    pub accuser: ShareIndex,
    pub value: Scalar,
}

/// A dealer's secret share for one receiver.
#[derive(Clone)]
pub struct PrivateShare {
    pub session_id: SessionId,
    pub dealer: ShareIndex,
    pub receiver: ShareIndex,
    pub(crate) value: SecretScalar,
}

impl fmt::Debug for PrivateShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateShare")
            .field("dealer", &self.dealer.get())
            .field("receiver", &self.receiver.get())
            .field("value", &"<redacted>")
            .finish()
    }
}

/// Everything a session broadcasts through the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicMessage {
    Deal(Deal),
    Complaint(Complaint),
    Justification(Justification),
}

/// What a participant asks its driver to do.
#[derive(Debug)]
pub enum Outgoing {
    /// Propose through the log, so every participant sees it in one order.
    Broadcast(PublicMessage),
    /// Send point to point to `share.receiver`.
    Send(PrivateShare),
}

impl Deal {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(tag::DEAL);
        w.bytes(&self.session_id);
        w.index(self.dealer);
        w.u16(self.commitments.len() as u16);
        for c in &self.commitments {
            w.point(c);
        }
        match &self.pok {
            Some(p) => {
                w.u8(1);
                p.write(&mut w);
            }
            None => w.u8(0),
        }
        w.finish()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new("deal", bytes, tag::DEAL, MAX_DEAL_LEN)?;
        let session_id = r.array()?;
        let dealer = r.index()?;
        let count = r.u16()?;
        if count == 0 || count > MAX_HOLDERS {
            return Err(DecodeError::InvalidField {
                what: "deal",
                reason: "commitment count outside 1..=64",
            });
        }
        let mut commitments = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            commitments.push(r.point()?);
        }
        let pok = match r.u8()? {
            0 => None,
            1 => Some(SchnorrProof::read(&mut r)?),
            _ => {
                return Err(DecodeError::InvalidField {
                    what: "deal",
                    reason: "proof flag must be 0 or 1",
                })
            }
        };
        r.finish()?;
        Ok(Deal {
            session_id,
            dealer,
            commitments,
            pok,
        })
    }
}

impl Complaint {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(tag::COMPLAINT);
        w.bytes(&self.session_id);
        w.index(self.accuser);
        w.index(self.accused);
        w.finish()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new("complaint", bytes, tag::COMPLAINT, MAX_COMPLAINT_LEN)?;
        let c = Complaint {
            session_id: r.array()?,
            accuser: r.index()?,
            accused: r.index()?,
        };
        r.finish()?;
        Ok(c)
    }
}

impl Justification {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(tag::JUSTIFICATION);
        w.bytes(&self.session_id);
        w.index(self.dealer);
        w.index(self.accuser);
        w.scalar(&self.value);
        w.finish()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(
            "justification",
            bytes,
            tag::JUSTIFICATION,
            MAX_JUSTIFICATION_LEN,
        )?;
        let j = Justification {
            session_id: r.array()?,
            dealer: r.index()?,
            accuser: r.index()?,
            value: r.scalar()?,
        };
        r.finish()?;
        Ok(j)
    }
}

impl PrivateShare {
    /// Secret bytes: send only over an authenticated, encrypted channel.
    pub fn to_secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::new(tag::PRIVATE_SHARE);
        w.bytes(&self.session_id);
        w.index(self.dealer);
        w.index(self.receiver);
        w.scalar(self.value.expose());
        Zeroizing::new(w.finish())
    }

    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(
            "private share",
            bytes,
            tag::PRIVATE_SHARE,
            MAX_PRIVATE_SHARE_LEN,
        )?;
        let session_id = r.array()?;
        let dealer = r.index()?;
        let receiver = r.index()?;
        let value = SecretScalar::new(r.scalar()?);
        r.finish()?;
        Ok(PrivateShare {
            session_id,
            dealer,
            receiver,
            value,
        })
    }
}

impl PublicMessage {
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            PublicMessage::Deal(m) => m.to_bytes(),
            PublicMessage::Complaint(m) => m.to_bytes(),
            PublicMessage::Justification(m) => m.to_bytes(),
        }
    }

    /// Dispatches on the type tag after checking the version.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        match bytes {
            [FORMAT_VERSION, tag::DEAL, ..] => Deal::from_bytes(bytes).map(PublicMessage::Deal),
            [FORMAT_VERSION, tag::COMPLAINT, ..] => {
                Complaint::from_bytes(bytes).map(PublicMessage::Complaint)
            }
            [FORMAT_VERSION, tag::JUSTIFICATION, ..] => {
                Justification::from_bytes(bytes).map(PublicMessage::Justification)
            }
            [FORMAT_VERSION, found, ..] => Err(DecodeError::WrongTag {
                what: "session message",
                found: *found,
                expected: tag::DEAL,
            }),
            [found, ..] => Err(DecodeError::UnsupportedVersion {
                what: "session message",
                found: *found,
                expected: FORMAT_VERSION,
            }),
            [] => Err(DecodeError::Truncated {
                what: "session message",
            }),
        }
    }
}
