//! The public side of one threshold key version: threshold, holders and the
//! Feldman commitments `C_0..C_{t-1}` (with `X = C_0` and `X_i = Σ C_k i^k`).

use std::collections::BTreeMap;

use k256::elliptic_curve::point::BatchNormalize;
use k256::{AffinePoint, ProjectivePoint};
use qk_types::{ShareIndex, ThresholdParams, MAX_HOLDERS};

use crate::encoding::{is_identity, tag, Reader, Writer};
use crate::error::{CryptoError, DecodeError};
use crate::poly::eval_commitments;
use crate::secret::KeyShare;

/// Public, replicated description of a key version's sharing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKeySet {
    threshold: u16,
    holders: Vec<ShareIndex>,
    commitments: Vec<AffinePoint>,
    /// `X_i` per holder, precomputed because every partial check needs it.
    holder_keys: BTreeMap<ShareIndex, AffinePoint>,
}

/// Upper bound of an encoded key set: header, counts, 64 indices, 64 points.
pub const MAX_PUBLIC_KEY_SET_LEN: usize = 2 + 4 + 64 * 2 + 64 * 33;

impl PublicKeySet {
    /// Validates `2 <= t <= n <= 64`, distinct sorted holders, `t` commitments,
    /// and that no derived key is the identity.
    pub fn new(
        threshold: u16,
        mut holders: Vec<ShareIndex>,
        commitments: Vec<ProjectivePoint>,
    ) -> Result<Self, CryptoError> {
        holders.sort();
        holders.dedup();
        let n = u16::try_from(holders.len()).unwrap_or(u16::MAX);
        ThresholdParams::new(threshold, n)
            .map_err(|e| CryptoError::InvalidParameters(e.to_string()))?;
        if commitments.len() != usize::from(threshold) {
            return Err(CryptoError::InvalidParameters(format!(
                "{} commitments for threshold {threshold}; a key set needs exactly one per threshold step",
                commitments.len()
            )));
        }
        if commitments.iter().any(is_identity) {
            return Err(CryptoError::InvalidParameters(
                "a commitment is the identity point".into(),
            ));
        }
        let derived: Vec<ProjectivePoint> = holders
            .iter()
            .map(|i| eval_commitments(&commitments, *i))
            .collect();
        if derived.iter().any(is_identity) {
            return Err(CryptoError::InvalidParameters(
                "a holder's public share is the identity point".into(),
            ));
        }
        let holder_keys = holders
            .iter()
            .copied()
            .zip(
                <ProjectivePoint as BatchNormalize<[ProjectivePoint]>>::batch_normalize(
                    derived.as_slice(),
                ),
            )
            .collect();
        Ok(PublicKeySet {
            threshold,
            holders,
            commitments: <ProjectivePoint as BatchNormalize<[ProjectivePoint]>>::batch_normalize(
                commitments.as_slice(),
            ),
            holder_keys,
        })
    }

    pub fn threshold(&self) -> u16 {
        self.threshold
    }

    pub fn holders(&self) -> &[ShareIndex] {
        &self.holders
    }

    /// The key version's public key `X = C_0`.
    pub fn public_key(&self) -> AffinePoint {
        self.commitments[0]
    }

    pub fn commitments(&self) -> &[AffinePoint] {
        &self.commitments
    }

    pub(crate) fn commitments_projective(&self) -> Vec<ProjectivePoint> {
        self.commitments
            .iter()
            .map(|c| ProjectivePoint::from(*c))
            .collect()
    }

    /// `X_i` of a holder.
    pub fn holder_key(&self, index: ShareIndex) -> Result<AffinePoint, CryptoError> {
        self.holder_keys
            .get(&index)
            .copied()
            .ok_or(CryptoError::UnknownHolder(index))
    }

    /// Checks a share against the commitments: `x_i·G == X_i`. Nodes run this
    /// at start on every share they hold.
    pub fn verify_share(&self, share: &KeyShare) -> Result<(), CryptoError> {
        let expected = self.holder_key(share.index())?;
        if share.public() == ProjectivePoint::from(expected) {
            Ok(())
        } else {
            Err(CryptoError::ShareMismatch(share.index()))
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(tag::PUBLIC_KEY_SET);
        w.u16(self.threshold);
        w.u16(u16::try_from(self.holders.len()).unwrap_or(u16::MAX));
        for i in &self.holders {
            w.index(*i);
        }
        for c in &self.commitments {
            w.point(c);
        }
        w.finish()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let mut r = Reader::new(
            "public key set",
            bytes,
            tag::PUBLIC_KEY_SET,
            MAX_PUBLIC_KEY_SET_LEN,
        )?;
        let threshold = r.u16()?;
        let n = r.u16()?;
        if threshold < 2 || threshold > n || n > MAX_HOLDERS {
            return Err(DecodeError::InvalidField {
                what: "public key set",
                reason: "threshold and holder count out of range",
            }
            .into());
        }
        let mut holders = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            holders.push(r.index()?);
        }
        if holders.windows(2).any(|w| w[0] >= w[1]) {
            return Err(DecodeError::InvalidField {
                what: "public key set",
                reason: "holder indices must be strictly increasing",
            }
            .into());
        }
        let mut commitments = Vec::with_capacity(usize::from(threshold));
        for _ in 0..threshold {
            commitments.push(ProjectivePoint::from(r.point()?));
        }
        r.finish()?;
        PublicKeySet::new(threshold, holders, commitments)
    }
}

#[cfg(test)]
mod bound_tests {
    use k256::Scalar;

    use super::*;
    use crate::secret::SecretScalar;

    #[test]
    fn the_largest_key_set_fits_its_bound_and_one_byte_more_is_refused_unread() {
        let holders: Vec<ShareIndex> = (1..=MAX_HOLDERS)
            .map(|i| ShareIndex::new(i).expect("index"))
            .collect();
        let commitments: Vec<ProjectivePoint> = (1..=u64::from(MAX_HOLDERS))
            .map(|i| ProjectivePoint::GENERATOR * Scalar::from(i))
            .collect();
        let largest = PublicKeySet::new(MAX_HOLDERS, holders, commitments).expect("t = n = 64");
        let mut bytes = largest.to_bytes();
        assert_eq!(bytes.len(), MAX_PUBLIC_KEY_SET_LEN);
        assert_eq!(PublicKeySet::from_bytes(&bytes).expect("decodes"), largest);
        bytes.push(0);
        assert!(matches!(
            PublicKeySet::from_bytes(&bytes),
            Err(CryptoError::Decode(DecodeError::TooLarge { .. }))
        ));
    }

    #[test]
    fn a_key_set_decodes_only_with_2_to_n_of_at_most_64_holders() {
        let set = |t: u16, n: u16| {
            let holders = ShareIndex::first_n(n);
            let commitments = (1..=u64::from(t))
                .map(|i| ProjectivePoint::GENERATOR * Scalar::from(i))
                .collect();
            PublicKeySet::new(t, holders, commitments).expect("valid")
        };
        let two_of_three = set(2, 3);
        let bytes = two_of_three.to_bytes();
        assert_eq!(
            PublicKeySet::from_bytes(&bytes).expect("2 of 3"),
            two_of_three
        );
        let with_counts = |t: u16, n: u16| {
            let mut b = bytes.clone();
            b[2..4].copy_from_slice(&t.to_be_bytes());
            b[4..6].copy_from_slice(&n.to_be_bytes());
            PublicKeySet::from_bytes(&b)
        };
        for (t, n) in [
            (1, 3),
            (4, 3),
            (2, MAX_HOLDERS + 1),
            (MAX_HOLDERS + 2, MAX_HOLDERS + 1),
        ] {
            let refused = with_counts(t, n);
            assert!(
                matches!(&refused, Err(CryptoError::Decode(DecodeError::InvalidField { reason, .. })) if reason.contains("out of range")),
                "t={t} n={n}: {refused:?}"
            );
        }
    }

    #[test]
    fn a_key_share_fits_its_bound_and_one_byte_more_is_refused_unread() {
        let index = ShareIndex::new(MAX_HOLDERS).expect("index");
        let share = KeyShare::new(index, SecretScalar::new(Scalar::from(7u64)));
        let mut bytes = share.to_secret_bytes().to_vec();
        assert_eq!(bytes.len(), crate::secret::MAX_KEY_SHARE_LEN);
        bytes.push(0);
        assert!(matches!(
            KeyShare::from_secret_bytes(&bytes),
            Err(DecodeError::TooLarge { .. })
        ));
    }
}
