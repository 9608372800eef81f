//! Domain-separated SHA-256 transcripts and hash-to-scalar.

use k256::elliptic_curve::group::GroupEncoding;
use k256::elliptic_curve::ops::Reduce;
use k256::{AffinePoint, FieldBytes, Scalar};
use sha2::{Digest, Sha256};

/// Identifies one session (for example a hash of key id, version and epoch);
/// every message carries it so messages of one session never count in another.
pub type SessionId = [u8; 32];

/// A SHA-256 transcript; every item is length-prefixed so item boundaries are
/// unambiguous.
#[derive(Clone, Debug)]
pub(crate) struct Transcript {
    hasher: Sha256,
}

impl Transcript {
    pub(crate) fn new(domain: &str) -> Self {
        let mut t = Transcript {
            hasher: Sha256::new(),
        };
        t.bytes(domain.as_bytes());
        t
    }

    pub(crate) fn bytes(&mut self, item: &[u8]) -> &mut Self {
        let len = u32::try_from(item.len()).unwrap_or(u32::MAX);
        self.hasher.update(len.to_be_bytes());
        self.hasher.update(item);
        self
    }

    pub(crate) fn point(&mut self, p: &AffinePoint) -> &mut Self {
        self.bytes(&p.to_bytes())
    }

    pub(crate) fn digest(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(&self.hasher.finalize());
        out
    }

    /// Reduces the 256-bit digest mod `q`; since `q > 2^256 - 2^129` the bias is
    /// below `2^-127`.
    pub(crate) fn challenge(self) -> Scalar {
        let digest = self.digest();
        <Scalar as Reduce<FieldBytes>>::reduce(&FieldBytes::from(digest))
    }
}
