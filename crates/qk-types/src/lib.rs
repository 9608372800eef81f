//! Identifiers and small shared types for Quorumkey.
//!
//! Every type here is plain data: no I/O, no clock; the one secret type,
//! [`Redacted`], is zeroized on drop and hidden from `Debug`.
#![forbid(unsafe_code)]

use std::fmt;

use serde::{Deserialize, Serialize};

mod error;
pub use error::{ErrorKind, RequestError};
mod secret;
pub use secret::Redacted;

/// The largest holder set a key version can have. Bounds every per-holder
/// loop and every decoder that reads a holder list.
pub const MAX_HOLDERS: u16 = 64;

/// A cluster member, as named in its node certificate and in Raft.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node-{}", self.0)
    }
}

/// A key's stable identifier (random, 16 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct KeyId(pub [u8; 16]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// A key version number; version 1 is the first one generated (0: none).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct KeyVersion(pub u32);

impl fmt::Display for KeyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// The share epoch of a key version; refresh and reshare increment it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Epoch(pub u64);

/// Errors from constructing the small types of this crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TypeError {
    #[error("share index {0} is out of range: indices run from 1 to {MAX_HOLDERS}")]
    ShareIndexOutOfRange(u32),
    #[error(
        "threshold {threshold} of {holders} holders is invalid: need 2 <= threshold <= holders <= {MAX_HOLDERS}"
    )]
    InvalidThreshold { threshold: u32, holders: u32 },
}

/// A holder's Shamir index (the `x` coordinate of its share), `1..=64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u16", into = "u16")]
pub struct ShareIndex(u16);

impl ShareIndex {
    /// Checks the range `1..=MAX_HOLDERS`.
    pub fn new(index: u16) -> Result<Self, TypeError> {
        if index == 0 || index > MAX_HOLDERS {
            return Err(TypeError::ShareIndexOutOfRange(u32::from(index)));
        }
        Ok(Self(index))
    }

    pub fn get(self) -> u16 {
        self.0
    }

    /// The index of `node` in a holder set: its rank in ascending node-id
    /// order, from 1. The one mapping from holder to index, for the combiner
    /// on a node and in a client alike.
    pub fn of_holder(holders: &[NodeId], node: NodeId) -> Option<ShareIndex> {
        if !holders.contains(&node) {
            return None;
        }
        let rank = holders.iter().filter(|h| **h < node).count();
        u16::try_from(rank + 1).ok().and_then(|i| Self::new(i).ok())
    }

    /// The indices `1..=n`, for a holder set of size `n` (clamped to the maximum).
    pub fn first_n(n: u16) -> Vec<ShareIndex> {
        (1..=n.min(MAX_HOLDERS)).map(ShareIndex).collect()
    }
}

impl TryFrom<u16> for ShareIndex {
    type Error = TypeError;
    fn try_from(value: u16) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<ShareIndex> for u16 {
    fn from(value: ShareIndex) -> Self {
        value.0
    }
}

impl fmt::Display for ShareIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "holder #{}", self.0)
    }
}

/// A `(t, n)` pair with `2 <= t <= n <= MAX_HOLDERS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ThresholdParams {
    threshold: u16,
    holders: u16,
}

impl ThresholdParams {
    pub fn new(threshold: u16, holders: u16) -> Result<Self, TypeError> {
        if threshold < 2 || threshold > holders || holders > MAX_HOLDERS {
            return Err(TypeError::InvalidThreshold {
                threshold: u32::from(threshold),
                holders: u32::from(holders),
            });
        }
        Ok(Self { threshold, holders })
    }

    pub fn threshold(self) -> u16 {
        self.threshold
    }

    pub fn holders(self) -> u16 {
        self.holders
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_index_is_its_rank_by_node_id() {
        let holders = [NodeId(7), NodeId(2), NodeId(5)];
        let index = |n| ShareIndex::of_holder(&holders, NodeId(n)).map(ShareIndex::get);
        assert_eq!((index(2), index(5), index(7)), (Some(1), Some(2), Some(3)));
        assert_eq!(index(3), None, "not a holder");
    }

    #[test]
    fn share_index_range_is_enforced() {
        assert!(ShareIndex::new(0).is_err());
        assert!(ShareIndex::new(1).is_ok());
        assert!(ShareIndex::new(MAX_HOLDERS).is_ok());
        assert!(ShareIndex::new(MAX_HOLDERS + 1).is_err());
    }

    #[test]
    fn threshold_params_are_checked() {
        assert!(ThresholdParams::new(1, 3).is_err());
        assert!(ThresholdParams::new(4, 3).is_err());
        assert!(ThresholdParams::new(2, 65).is_err());
        let p = ThresholdParams::new(2, 3).expect("valid");
        assert_eq!((p.threshold(), p.holders()), (2, 3));
        let msg = ThresholdParams::new(1, 3).expect_err("invalid").to_string();
        assert!(msg.contains("need 2 <= threshold"), "{msg}");
    }

    #[test]
    fn key_id_displays_as_hex() {
        assert_eq!(KeyId([0xab; 16]).to_string(), "ab".repeat(16));
    }
}
