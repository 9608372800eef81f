//! Wire messages of the DKG, refresh and reshare sessions, with strict encodings.
//!
//! Every message travels through the Raft log (the broadcast channel). Shares
//! travel inside the deal, each sealed to its receiver's DKG key
//! ([`SealedShare`]); nothing secret is ever sent in clear, and no message
//! carries a share in clear.

use k256::AffinePoint;
use qk_types::{ShareIndex, MAX_HOLDERS};

use crate::encoding::{tag, Reader, Writer, FORMAT_VERSION, POINT_LEN};
use crate::error::DecodeError;
use crate::proof::{SchnorrProof, SCHNORR_PROOF_LEN};
use crate::share_box::{SealedShare, ShareReveal, SEALED_SHARE_LEN, SHARE_REVEAL_LEN};

pub use crate::hash::SessionId;

/// Largest encoded deal: 64 commitments, a proof and 64 sealed shares.
pub const MAX_DEAL_LEN: usize = 2
    + 32
    + 2
    + 2
    + MAX_HOLDERS as usize * POINT_LEN
    + 1
    + SCHNORR_PROOF_LEN
    + 2
    + MAX_HOLDERS as usize * SEALED_SHARE_LEN;
pub const MAX_COMPLAINT_LEN: usize = 2 + 32 + 2 + 2 + 1 + SHARE_REVEAL_LEN;

/// A dealer's public contribution: Feldman commitments of its polynomial
/// (without `A_0` in refresh and reshare, where it is implied), in
/// generation a proof of knowledge of `a_0`, and one sealed share per
/// receiver, in the session's receiver order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deal {
    pub session_id: SessionId,
    pub dealer: ShareIndex,
    pub commitments: Vec<AffinePoint>,
    pub pok: Option<SchnorrProof>,
    pub shares: Vec<SealedShare>,
}

/// A receiver's public claim that the share a dealer sealed to it is wrong:
/// with the proof that lets anyone open that one box and check, or none
/// when the box's own proof fails (anyone checks that too, and nothing is
/// revealed for a box the dealer may have copied from another).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Complaint {
    pub session_id: SessionId,
    pub accuser: ShareIndex,
    pub accused: ShareIndex,
    pub reveal: Option<ShareReveal>,
}

/// Everything a session broadcasts through the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicMessage {
    Deal(Deal),
    Complaint(Complaint),
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
        w.u16(self.shares.len() as u16);
        for share in &self.shares {
            share.write(&mut w);
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
        let share_count = r.u16()?;
        if share_count == 0 || share_count > MAX_HOLDERS {
            return Err(DecodeError::InvalidField {
                what: "deal",
                reason: "sealed share count outside 1..=64",
            });
        }
        let mut shares = Vec::with_capacity(usize::from(share_count));
        for _ in 0..share_count {
            shares.push(SealedShare::read(&mut r)?);
        }
        r.finish()?;
        Ok(Deal {
            session_id,
            dealer,
            commitments,
            pok,
            shares,
        })
    }
}

impl Complaint {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(tag::COMPLAINT);
        w.bytes(&self.session_id);
        w.index(self.accuser);
        w.index(self.accused);
        match &self.reveal {
            Some(reveal) => {
                w.u8(1);
                reveal.write(&mut w);
            }
            None => w.u8(0),
        }
        w.finish()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new("complaint", bytes, tag::COMPLAINT, MAX_COMPLAINT_LEN)?;
        let c = Complaint {
            session_id: r.array()?,
            accuser: r.index()?,
            accused: r.index()?,
            reveal: match r.u8()? {
                0 => None,
                1 => Some(ShareReveal::read(&mut r)?),
                _ => {
                    return Err(DecodeError::InvalidField {
                        what: "complaint",
                        reason: "reveal flag must be 0 or 1",
                    })
                }
            },
        };
        r.finish()?;
        Ok(c)
    }
}

impl PublicMessage {
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            PublicMessage::Deal(m) => m.to_bytes(),
            PublicMessage::Complaint(m) => m.to_bytes(),
        }
    }

    /// Dispatches on the type tag after checking the version.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        match bytes {
            [FORMAT_VERSION, tag::DEAL, ..] => Deal::from_bytes(bytes).map(PublicMessage::Deal),
            [FORMAT_VERSION, tag::COMPLAINT, ..] => {
                Complaint::from_bytes(bytes).map(PublicMessage::Complaint)
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
