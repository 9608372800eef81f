//! Sigma proofs in `(c, z)` form: Schnorr proof of knowledge and Chaum–Pedersen
//! DLEQ. Challenges are domain-separated SHA-256 transcripts.

use k256::elliptic_curve::ops::LinearCombination;
use k256::elliptic_curve::point::BatchNormalize;
use k256::{AffinePoint, ProjectivePoint, Scalar};
use rand_core::CryptoRng;
use subtle::ConstantTimeEq;

use crate::encoding::{Reader, Writer};
use crate::error::DecodeError;
use crate::hash::Transcript;
use crate::secret::SecretScalar;

/// Schnorr proof of knowledge of `s` with `P = s·G`, bound to `bind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchnorrProof {
    c: Scalar,
    z: Scalar,
}

pub(crate) const SCHNORR_PROOF_LEN: usize = 64;

fn schnorr_challenge(domain: &str, public: &AffinePoint, w: &AffinePoint, bind: &[u8]) -> Scalar {
    let mut t = Transcript::new(domain);
    t.point(public).point(w).bytes(bind);
    t.challenge()
}

impl SchnorrProof {
    /// Proves knowledge of `secret` for `public = secret·G`. `public` must be
    /// the already-normalized image of `secret`.
    pub(crate) fn prove<R: CryptoRng + ?Sized>(
        rng: &mut R,
        domain: &str,
        secret: &SecretScalar,
        public: &AffinePoint,
        bind: &[u8],
    ) -> Self {
        let w = SecretScalar::random(rng);
        let w_point = w.public().to_affine();
        Self::finish(domain, &w, &w_point, secret, public, bind)
    }

    /// Completes a proof whose nonce commitment `W = w·G` was already computed
    /// (lets `wrap` normalize all its points with one inversion).
    pub(crate) fn finish(
        domain: &str,
        w: &SecretScalar,
        w_point: &AffinePoint,
        secret: &SecretScalar,
        public: &AffinePoint,
        bind: &[u8],
    ) -> Self {
        let c = schnorr_challenge(domain, public, w_point, bind);
        let z = *w.expose() + c * secret.expose();
        SchnorrProof { c, z }
    }

    pub(crate) fn verify(&self, domain: &str, public: &AffinePoint, bind: &[u8]) -> bool {
        let w = ProjectivePoint::lincomb_vartime(&[
            (ProjectivePoint::GENERATOR, self.z),
            (ProjectivePoint::from(*public), -self.c),
        ]);
        let expected = schnorr_challenge(domain, public, &w.to_affine(), bind);
        bool::from(expected.ct_eq(&self.c))
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.scalar(&self.c);
        w.scalar(&self.z);
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(SchnorrProof {
            c: r.scalar()?,
            z: r.scalar()?,
        })
    }
}

/// Chaum–Pedersen proof that `log_G X_i = log_R D_i`, bound to a label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DleqProof {
    c: Scalar,
    z: Scalar,
}

pub(crate) struct DleqStatement<'a> {
    pub(crate) holder_key: &'a AffinePoint,
    pub(crate) base: &'a AffinePoint,
    pub(crate) image: &'a AffinePoint,
    pub(crate) label: &'a [u8; 32],
}

fn dleq_challenge(s: &DleqStatement<'_>, a1: &AffinePoint, a2: &AffinePoint) -> Scalar {
    let mut t = Transcript::new("qk/dleq");
    t.point(s.holder_key)
        .point(s.image)
        .point(s.base)
        .point(a1)
        .point(a2)
        .bytes(s.label);
    t.challenge()
}

impl DleqProof {
    /// Computes `D = x·R` and its proof.
    pub(crate) fn prove_image<R: CryptoRng + ?Sized>(
        rng: &mut R,
        secret: &SecretScalar,
        holder_key: &AffinePoint,
        base: &AffinePoint,
        label: &[u8; 32],
    ) -> (AffinePoint, Self) {
        let base_p = ProjectivePoint::from(*base);
        let w = SecretScalar::random(rng);
        let image = base_p * secret.expose();
        let a1 = w.public();
        let a2 = base_p * w.expose();
        let [image, a1, a2] =
            <ProjectivePoint as BatchNormalize<[ProjectivePoint; _]>>::batch_normalize(&[
                image, a1, a2,
            ]);
        let statement = DleqStatement {
            holder_key,
            base,
            image: &image,
            label,
        };
        let c = dleq_challenge(&statement, &a1, &a2);
        let z = *w.expose() + c * secret.expose();
        (image, DleqProof { c, z })
    }

    pub(crate) fn verify(&self, s: &DleqStatement<'_>) -> bool {
        let neg_c = -self.c;
        let a1 = ProjectivePoint::lincomb_vartime(&[
            (ProjectivePoint::GENERATOR, self.z),
            (ProjectivePoint::from(*s.holder_key), neg_c),
        ]);
        let a2 = ProjectivePoint::lincomb_vartime(&[
            (ProjectivePoint::from(*s.base), self.z),
            (ProjectivePoint::from(*s.image), neg_c),
        ]);
        let [a1, a2] =
            <ProjectivePoint as BatchNormalize<[ProjectivePoint; _]>>::batch_normalize(&[a1, a2]);
        bool::from(dleq_challenge(s, &a1, &a2).ct_eq(&self.c))
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.scalar(&self.c);
        w.scalar(&self.z);
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(DleqProof {
            c: r.scalar()?,
            z: r.scalar()?,
        })
    }
}
