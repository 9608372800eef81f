//! Polynomial dealing and Feldman verification (via vsss-rs), commitment
//! evaluation and Lagrange coefficients.

use k256::elliptic_curve::ops::LinearCombination;
use k256::{ProjectivePoint, Scalar};
use qk_types::ShareIndex;
use rand_core::CryptoRng;
use vsss_rs::{FeldmanVerifierSet, IdentifierPrimeField, PrimeFieldShare, Share, ValueGroup};

use crate::error::CryptoError;
use crate::secret::SecretScalar;

type VsssShare = PrimeFieldShare<Scalar>;
type VsssVerifier = ValueGroup<ProjectivePoint>;

/// One dealing: a secret share per receiver and the Feldman commitments
/// `A_0..A_{t-1}` of the dealer's polynomial.
pub(crate) struct Dealing {
    pub(crate) shares: Vec<(ShareIndex, SecretScalar)>,
    pub(crate) commitments: Vec<ProjectivePoint>,
}

/// Samples `f` with `f(0) = secret`, `deg f = threshold - 1`, and evaluates it
/// at every receiver index. `secret` may be zero (refresh).
pub(crate) fn deal<R: CryptoRng + ?Sized>(
    rng: &mut R,
    secret: &SecretScalar,
    threshold: usize,
    receivers: &[ShareIndex],
) -> Result<Dealing, CryptoError> {
    let ids = receivers
        .iter()
        .map(|i| IdentifierPrimeField(Scalar::from(u64::from(i.get()))));
    let secret_value = IdentifierPrimeField(*secret.expose());
    let (shares, verifiers) =
        vsss_rs::feldman::split_secret_with_participant_ids_iter::<VsssShare, VsssVerifier>(
            threshold,
            receivers.len(),
            &secret_value,
            None,
            &mut RngRef(rng),
            ids,
        )
        .map_err(|e| CryptoError::InvalidParameters(format!("dealing failed: {e:?}")))?;
    let shares = receivers
        .iter()
        .zip(shares.iter())
        .map(|(index, share)| (*index, SecretScalar::new(share.value().0)))
        .collect();
    // vsss-rs puts the generator first: [G, A_0, .., A_{t-1}].
    let commitments = verifiers.iter().skip(1).map(|v| v.0).collect();
    Ok(Dealing {
        shares,
        commitments,
    })
}

/// Checks `value · G == Σ_k A_k · index^k`.
pub(crate) fn verify_share(
    commitments: &[ProjectivePoint],
    index: ShareIndex,
    value: &Scalar,
) -> bool {
    let mut set: Vec<VsssVerifier> = Vec::with_capacity(commitments.len() + 1);
    set.push(ValueGroup(ProjectivePoint::GENERATOR));
    set.extend(commitments.iter().map(|c| ValueGroup(*c)));
    let share = VsssShare::with_identifier_and_value(
        IdentifierPrimeField(Scalar::from(u64::from(index.get()))),
        IdentifierPrimeField(*value),
    );
    set.verify_share(&share).is_ok()
}

/// `Σ_k C_k · index^k` (a holder's public share `X_i`), variable time: public data.
pub(crate) fn eval_commitments(
    commitments: &[ProjectivePoint],
    index: ShareIndex,
) -> ProjectivePoint {
    let x = Scalar::from(u64::from(index.get()));
    let mut power = Scalar::ONE;
    let mut terms = Vec::with_capacity(commitments.len());
    for c in commitments {
        terms.push((*c, power));
        power *= x;
    }
    ProjectivePoint::lincomb_vartime(terms.as_slice())
}

/// Lagrange coefficients at zero for the given distinct indices.
pub(crate) fn lagrange_at_zero(indices: &[ShareIndex]) -> Vec<Scalar> {
    let xs: Vec<Scalar> = indices
        .iter()
        .map(|i| Scalar::from(u64::from(i.get())))
        .collect();
    xs.iter()
        .enumerate()
        .map(|(i, xi)| {
            let mut num = Scalar::ONE;
            let mut den = Scalar::ONE;
            for (j, xj) in xs.iter().enumerate() {
                if i != j {
                    num *= xj;
                    den *= *xj - xi;
                }
            }
            // Distinct indices make `den` non-zero; the fallback is unreachable.
            num * Option::<Scalar>::from(den.invert_vartime()).unwrap_or(Scalar::ZERO)
        })
        .collect()
}

/// Adapts `&mut R` (possibly unsized) to the `impl CryptoRng` that vsss-rs takes.
struct RngRef<'a, R: ?Sized>(&'a mut R);

impl<R: CryptoRng + ?Sized> rand_core::TryRng for RngRef<'_, R> {
    type Error = core::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.0.next_u32())
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(self.0.next_u64())
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        self.0.fill_bytes(dst);
        Ok(())
    }
}

impl<R: CryptoRng + ?Sized> rand_core::TryCryptoRng for RngRef<'_, R> {}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn idx(i: u16) -> ShareIndex {
        ShareIndex::new(i).expect("index")
    }

    #[test]
    fn the_rng_adapter_passes_every_draw_through() {
        use rand_core::{Rng, TryRng};
        let mut direct = StdRng::seed_from_u64(5);
        let mut inner = StdRng::seed_from_u64(5);
        let mut adapted = RngRef(&mut inner);
        // A broken adapter would hand vsss-rs constant "randomness".
        assert_eq!(adapted.try_next_u32(), Ok(direct.next_u32()));
        assert_eq!(adapted.try_next_u64(), Ok(direct.next_u64()));
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        adapted.try_fill_bytes(&mut a).expect("infallible");
        direct.fill_bytes(&mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn dealt_shares_verify_and_interpolate_to_the_secret() {
        let mut rng = StdRng::seed_from_u64(7);
        let secret = SecretScalar::random(&mut rng);
        let receivers: Vec<_> = (1..=5).map(idx).collect();
        let dealing = deal(&mut rng, &secret, 3, &receivers).expect("deal");
        assert_eq!(dealing.commitments.len(), 3);
        assert_eq!(dealing.commitments[0], secret.public());
        for (i, s) in &dealing.shares {
            assert!(verify_share(&dealing.commitments, *i, s.expose()));
            assert!(!verify_share(
                &dealing.commitments,
                *i,
                &(*s.expose() + Scalar::ONE)
            ));
            assert_eq!(eval_commitments(&dealing.commitments, *i), s.public());
        }
        let subset = [&dealing.shares[1], &dealing.shares[3], &dealing.shares[4]];
        let lambdas = lagrange_at_zero(&subset.iter().map(|(i, _)| *i).collect::<Vec<_>>());
        let sum: Scalar = subset
            .iter()
            .zip(lambdas)
            .map(|((_, s), l)| *s.expose() * l)
            .sum();
        assert_eq!(sum, *secret.expose());
    }

    #[test]
    fn zero_secret_deals_for_refresh() {
        let mut rng = StdRng::seed_from_u64(8);
        let zero = SecretScalar::new(Scalar::ZERO);
        let receivers: Vec<_> = (1..=3).map(idx).collect();
        let dealing = deal(&mut rng, &zero, 2, &receivers).expect("deal");
        assert!(crate::encoding::is_identity(&dealing.commitments[0]));
    }
}
