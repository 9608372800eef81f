//! Strict, bounded binary encoding: check-then-parse readers and a small writer.
//!
//! Every public value is `version (u8) ‖ tag (u8) ‖ fields`; integers are big
//! endian; points are 33-byte SEC1 compressed (never the identity); scalars are
//! 32-byte canonical big endian.

use k256::elliptic_curve::group::GroupEncoding;
use k256::elliptic_curve::PrimeField;
use k256::{AffinePoint, CompressedPoint, FieldBytes, ProjectivePoint, Scalar};
use qk_types::{KeyId, KeyVersion, ShareIndex};

use crate::error::DecodeError;

/// The one binary format version this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
pub const POINT_LEN: usize = 33;
pub const SCALAR_LEN: usize = 32;

/// Type tags: each encoded value names its kind so bytes of one kind are never
/// parsed as another.
pub mod tag {
    pub const CIPHERTEXT: u8 = 0x01;
    pub const PARTIAL: u8 = 0x02;
    pub const PUBLIC_KEY_SET: u8 = 0x03;
    pub const DEAL: u8 = 0x10;
    pub const COMPLAINT: u8 = 0x11;
    pub const KEY_SHARE: u8 = 0x20;
}

#[derive(Debug, Default)]
pub(crate) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn new(tag: u8) -> Self {
        let mut w = Writer { buf: Vec::new() };
        w.u8(FORMAT_VERSION);
        w.u8(tag);
        w
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
    pub(crate) fn index(&mut self, i: ShareIndex) {
        self.u16(i.get());
    }
    /// The key version a ciphertext or partial belongs to: id, then number.
    pub(crate) fn key_version(&mut self, key_id: KeyId, version: KeyVersion) {
        self.bytes(&key_id.0);
        self.u32(version.0);
    }
    pub(crate) fn point(&mut self, p: &AffinePoint) {
        self.bytes(&p.to_bytes());
    }
    pub(crate) fn scalar(&mut self, s: &Scalar) {
        self.bytes(&s.to_bytes());
    }
    pub(crate) fn finish(self) -> Vec<u8> {
        self.buf
    }
}

#[derive(Debug)]
pub(crate) struct Reader<'a> {
    what: &'static str,
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Checks the size bound, the version and the tag before anything else.
    pub(crate) fn new(
        what: &'static str,
        input: &'a [u8],
        tag: u8,
        max_len: usize,
    ) -> Result<Self, DecodeError> {
        if input.len() > max_len {
            return Err(DecodeError::TooLarge {
                what,
                len: input.len(),
                max: max_len,
            });
        }
        let mut r = Reader { what, rest: input };
        let version = r.u8()?;
        if version != FORMAT_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                what,
                found: version,
                expected: FORMAT_VERSION,
            });
        }
        let found = r.u8()?;
        if found != tag {
            return Err(DecodeError::WrongTag {
                what,
                found,
                expected: tag,
            });
        }
        Ok(r)
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.rest.len() < n {
            return Err(DecodeError::Truncated { what: self.what });
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    /// Reads what [`Writer::key_version`] wrote.
    pub(crate) fn key_version(&mut self) -> Result<(KeyId, KeyVersion), DecodeError> {
        let key_id = KeyId(self.array()?);
        Ok((key_id, KeyVersion(self.u32()?)))
    }
    pub(crate) fn index(&mut self) -> Result<ShareIndex, DecodeError> {
        ShareIndex::new(self.u16()?).map_err(|_| DecodeError::InvalidField {
            what: self.what,
            reason: "share index outside 1..=64",
        })
    }

    pub(crate) fn point(&mut self) -> Result<AffinePoint, DecodeError> {
        let bytes = self.array::<POINT_LEN>()?;
        decode_point(&bytes).ok_or(DecodeError::InvalidPoint { what: self.what })
    }

    /// A canonical scalar; zero allowed (proof responses may be zero).
    pub(crate) fn scalar(&mut self) -> Result<Scalar, DecodeError> {
        let bytes = self.array::<SCALAR_LEN>()?;
        decode_scalar(&bytes).ok_or(DecodeError::InvalidScalar { what: self.what })
    }

    /// A canonical, non-zero scalar (shares).
    pub(crate) fn nonzero_scalar(&mut self) -> Result<Scalar, DecodeError> {
        let s = self.scalar()?;
        if bool::from(s.is_zero()) {
            return Err(DecodeError::InvalidScalar { what: self.what });
        }
        Ok(s)
    }

    /// A `u32` length prefix bounded by `max`, then that many bytes.
    pub(crate) fn bytes_u32(&mut self, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = self.u32()? as usize;
        if len > max {
            return Err(DecodeError::TooLarge {
                what: self.what,
                len,
                max,
            });
        }
        self.take(len)
    }

    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                what: self.what,
                count: self.rest.len(),
            })
        }
    }
}

/// Decodes a compressed point, refusing the identity and any non-canonical form.
pub fn decode_point(bytes: &[u8; POINT_LEN]) -> Option<AffinePoint> {
    let repr = CompressedPoint::from(*bytes);
    let point: Option<AffinePoint> = AffinePoint::from_bytes(&repr).into();
    let point = point?;
    if point == AffinePoint::IDENTITY || point.to_bytes() != repr {
        return None;
    }
    Some(point)
}

/// Decodes a canonical scalar (`< q`).
pub fn decode_scalar(bytes: &[u8; SCALAR_LEN]) -> Option<Scalar> {
    Scalar::from_repr(FieldBytes::from(*bytes)).into()
}

pub(crate) fn is_identity(p: &ProjectivePoint) -> bool {
    p.to_affine() == AffinePoint::IDENTITY
}

#[cfg(test)]
mod tests {
    use super::*;
    use k256::elliptic_curve::Group;

    #[test]
    fn identity_and_non_canonical_points_are_refused() {
        assert!(decode_point(&[0u8; 33]).is_none());
        let mut g = [0u8; 33];
        g.copy_from_slice(&AffinePoint::GENERATOR.to_bytes());
        assert!(decode_point(&g).is_some());
        // x = p (non-canonical field element) with a valid prefix.
        let mut bad = [0xffu8; 33];
        bad[0] = 0x02;
        assert!(decode_point(&bad).is_none());
        let mut wrong_prefix = g;
        wrong_prefix[0] = 0x05;
        assert!(decode_point(&wrong_prefix).is_none());
        assert!(is_identity(&ProjectivePoint::identity()));
    }

    #[test]
    fn scalars_at_or_above_the_order_are_refused() {
        assert!(decode_scalar(&[0xff; 32]).is_none());
        assert!(decode_scalar(&[0x00; 32]).is_some());
        let order_minus_one = (-Scalar::ONE).to_bytes();
        let mut b = [0u8; 32];
        b.copy_from_slice(&order_minus_one);
        assert!(decode_scalar(&b).is_some());
    }
}
