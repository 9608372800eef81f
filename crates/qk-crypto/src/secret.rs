//! Secret types: zeroized on drop, nothing printed by `Debug`.

use std::fmt;

use k256::elliptic_curve::ops::Reduce;
use k256::{ProjectivePoint, Scalar, WideBytes};
use qk_types::ShareIndex;
use rand_core::CryptoRng;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::encoding::{tag, Reader, Writer};
use crate::error::DecodeError;

/// A secret scalar (a share, a nonce, a polynomial coefficient).
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretScalar(Scalar);

impl SecretScalar {
    pub(crate) fn new(value: Scalar) -> Self {
        SecretScalar(value)
    }

    /// A uniformly random non-zero scalar from 64 random bytes reduced mod `q`.
    pub fn random<R: CryptoRng + ?Sized>(rng: &mut R) -> Self {
        loop {
            let mut wide = Zeroizing::new([0u8; 64]);
            rng.fill_bytes(wide.as_mut());
            let s = <Scalar as Reduce<WideBytes>>::reduce(&WideBytes::from(*wide));
            if !bool::from(s.is_zero()) {
                return SecretScalar(s);
            }
        }
    }

    /// 64 secret bytes reduced mod `q` (a seed from a KDF).
    pub(crate) fn from_wide(seed: &[u8; 64]) -> Self {
        SecretScalar(<Scalar as Reduce<WideBytes>>::reduce(&WideBytes::from(
            *seed,
        )))
    }

    pub(crate) fn expose(&self) -> &Scalar {
        &self.0
    }

    /// `self · G`, the public image.
    pub fn public(&self) -> ProjectivePoint {
        ProjectivePoint::mul_by_generator(&self.0)
    }
}

impl fmt::Debug for SecretScalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretScalar(<redacted>)")
    }
}

/// A holder's share `x_i = f(i)` of one key version in one share epoch.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct KeyShare {
    #[zeroize(skip)]
    index: ShareIndex,
    value: SecretScalar,
}

/// Upper bound of an encoded key share.
pub const MAX_KEY_SHARE_LEN: usize = 2 + 2 + 32;

impl KeyShare {
    pub(crate) fn new(index: ShareIndex, value: SecretScalar) -> Self {
        KeyShare { index, value }
    }

    pub fn index(&self) -> ShareIndex {
        self.index
    }

    pub(crate) fn value(&self) -> &SecretScalar {
        &self.value
    }

    /// `X_i = x_i · G`.
    pub fn public(&self) -> ProjectivePoint {
        self.value.public()
    }

    /// The encoding to seal at rest (the caller seals it; it is secret).
    pub fn to_secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Writer::new(tag::KEY_SHARE);
        w.index(self.index);
        w.scalar(self.value.expose());
        Zeroizing::new(w.finish())
    }

    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new("key share", bytes, tag::KEY_SHARE, MAX_KEY_SHARE_LEN)?;
        let index = r.index()?;
        let value = SecretScalar(r.nonzero_scalar()?);
        r.finish()?;
        Ok(KeyShare { index, value })
    }
}

impl fmt::Debug for KeyShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyShare")
            .field("index", &self.index.get())
            .field("value", &"<redacted>")
            .finish()
    }
}
