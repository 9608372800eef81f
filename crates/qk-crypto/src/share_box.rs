//! Shares sealed to their receiver inside the dealer's deal (CRYPTO.md,
//! "Generation"): hashed ElGamal over secp256k1 to the receiver's long-term
//! DKG key. The log is reliable, so an honest share is never lost; and a
//! receiver that finds its share wrong reveals the Diffie–Hellman point of
//! that one box with a DLEQ proof, so every replica can open the box and
//! check it against the dealer's commitments. Nothing else is revealed: not
//! the receiver's key, not any other share, and no dealer ever publishes a
//! share in clear.
//!
//! Each box carries a proof that its dealer knows the ephemeral secret `e`,
//! bound to the box's slot. Without it a cheating dealer could copy an
//! honest dealer's ephemeral point into its own box for the same receiver:
//! the receiver would complain and reveal `d·E`, which opens the honest
//! dealer's box. A receiver reveals only for a box whose proof holds; a box
//! whose proof fails disqualifies its dealer without any reveal.

use std::fmt;

use k256::elliptic_curve::group::GroupEncoding;
use k256::{AffinePoint, ProjectivePoint, Scalar};
use qk_types::ShareIndex;
use rand_core::CryptoRng;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::encoding::{decode_point, Reader, Writer, POINT_LEN, SCALAR_LEN};
use crate::error::DecodeError;
use crate::hash::SessionId;
use crate::hash::Transcript;
use crate::proof::{DleqProof, DleqStatement, SchnorrProof, SCHNORR_PROOF_LEN};
use crate::secret::SecretScalar;

/// Encoded [`SealedShare`]: the ephemeral point, the masked share and the
/// proof of knowledge of the ephemeral secret.
pub const SEALED_SHARE_LEN: usize = POINT_LEN + SCALAR_LEN + SCHNORR_PROOF_LEN;
const BOX_POK_DOMAIN: &str = "qk/dkg-box-pok";
/// Encoded [`ShareReveal`]: the shared point and its DLEQ proof.
pub const SHARE_REVEAL_LEN: usize = POINT_LEN + 2 * SCALAR_LEN;

/// A node's long-term DKG decryption key. Derived from the node's seal key,
/// so it is as protected at rest as the shares it opens.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct DkgSecretKey(SecretScalar);

impl fmt::Debug for DkgSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DkgSecretKey(<redacted>)")
    }
}

impl DkgSecretKey {
    /// The key for 64 bytes of secret seed (reduced mod `q`).
    pub fn from_seed(seed: &[u8; 64]) -> Self {
        DkgSecretKey(SecretScalar::from_wide(seed))
    }

    pub fn public_key(&self) -> DkgPublicKey {
        DkgPublicKey(self.0.public().to_affine())
    }
}

/// A node's DKG encryption key, as published in the replicated state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DkgPublicKey(AffinePoint);

impl DkgPublicKey {
    pub fn to_bytes(&self) -> [u8; POINT_LEN] {
        let mut out = [0u8; POINT_LEN];
        out.copy_from_slice(&self.0.to_bytes());
        out
    }

    /// 33-byte SEC1 compressed, never the identity.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let array: &[u8; POINT_LEN] = bytes.try_into().map_err(|_| DecodeError::InvalidField {
            what: "DKG public key",
            reason: "must be a 33-byte compressed point",
        })?;
        decode_point(array)
            .map(DkgPublicKey)
            .ok_or(DecodeError::InvalidField {
                what: "DKG public key",
                reason: "not a valid curve point (or the identity)",
            })
    }
}

/// Which box: a share is bound to its session, dealer and receiver, so a box
/// copied into another deal or slot opens to garbage.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BoxSlot {
    pub(crate) session_id: SessionId,
    pub(crate) dealer: ShareIndex,
    pub(crate) receiver: ShareIndex,
}

impl BoxSlot {
    fn mask(&self, ephemeral: &AffinePoint, shared: &AffinePoint) -> Scalar {
        let mut t = Transcript::new("qk/dkg-share-box");
        t.bytes(&self.session_id)
            .bytes(&self.dealer.get().to_be_bytes())
            .bytes(&self.receiver.get().to_be_bytes())
            .point(ephemeral)
            .point(shared);
        t.challenge()
    }

    fn bind(&self) -> Vec<u8> {
        let mut bind = self.session_id.to_vec();
        bind.extend_from_slice(&self.dealer.get().to_be_bytes());
        bind.extend_from_slice(&self.receiver.get().to_be_bytes());
        bind
    }

    fn proof_label(&self) -> [u8; 32] {
        let mut t = Transcript::new("qk/dkg-share-reveal");
        t.bytes(&self.session_id)
            .bytes(&self.dealer.get().to_be_bytes())
            .bytes(&self.receiver.get().to_be_bytes());
        t.digest()
    }
}

/// One share sealed to one receiver: `E = eG`, `m = s + H(slot, E, eD)`,
/// and a proof of knowledge of `e` bound to the slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealedShare {
    ephemeral: AffinePoint,
    masked: Scalar,
    pok: SchnorrProof,
}

/// A receiver's proof of what its box opens to: `S = dE` and a DLEQ proof
/// that `log_G D = log_E S`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShareReveal {
    shared: AffinePoint,
    proof: DleqProof,
}

impl SealedShare {
    pub(crate) fn seal<R: CryptoRng + ?Sized>(
        rng: &mut R,
        to: &DkgPublicKey,
        slot: &BoxSlot,
        value: &SecretScalar,
    ) -> Self {
        let e = SecretScalar::random(rng);
        let ephemeral = e.public().to_affine();
        let shared = Zeroizing::new((ProjectivePoint::from(to.0) * e.expose()).to_affine());
        let pok = SchnorrProof::prove(rng, BOX_POK_DOMAIN, &e, &ephemeral, &slot.bind());
        SealedShare {
            ephemeral,
            masked: *value.expose() + slot.mask(&ephemeral, &shared),
            pok,
        }
    }

    /// The dealer proved it knows this box's ephemeral secret, for this
    /// slot: the box is its own, not a copy of another dealer's.
    pub(crate) fn is_proven(&self, slot: &BoxSlot) -> bool {
        self.pok
            .verify(BOX_POK_DOMAIN, &self.ephemeral, &slot.bind())
    }

    fn unmask(&self, slot: &BoxSlot, shared: &AffinePoint) -> SecretScalar {
        SecretScalar::new(self.masked - slot.mask(&self.ephemeral, shared))
    }

    /// What the box holds for `key`'s owner (garbage if sealed to another).
    pub(crate) fn open(&self, key: &DkgSecretKey, slot: &BoxSlot) -> SecretScalar {
        let shared =
            Zeroizing::new((ProjectivePoint::from(self.ephemeral) * key.0.expose()).to_affine());
        self.unmask(slot, &shared)
    }

    pub(crate) fn reveal<R: CryptoRng + ?Sized>(
        &self,
        rng: &mut R,
        key: &DkgSecretKey,
        slot: &BoxSlot,
    ) -> ShareReveal {
        let (shared, proof) = DleqProof::prove_image(
            rng,
            &key.0,
            &key.public_key().0,
            &self.ephemeral,
            &slot.proof_label(),
        );
        ShareReveal { shared, proof }
    }

    /// Opens the box with a receiver's reveal; `None` when the proof fails
    /// (the reveal is not the receiver's, so nothing is learned).
    pub(crate) fn open_revealed(
        &self,
        reveal: &ShareReveal,
        receiver_key: &DkgPublicKey,
        slot: &BoxSlot,
    ) -> Option<SecretScalar> {
        let statement = DleqStatement {
            holder_key: &receiver_key.0,
            base: &self.ephemeral,
            image: &reveal.shared,
            label: &slot.proof_label(),
        };
        reveal
            .proof
            .verify(&statement)
            .then(|| self.unmask(slot, &reveal.shared))
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.point(&self.ephemeral);
        w.scalar(&self.masked);
        self.pok.write(w);
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(SealedShare {
            ephemeral: r.point()?,
            masked: r.scalar()?,
            pok: SchnorrProof::read(r)?,
        })
    }
}

impl ShareReveal {
    pub(crate) fn write(&self, w: &mut Writer) {
        w.point(&self.shared);
        self.proof.write(w);
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(ShareReveal {
            shared: r.point()?,
            proof: DleqProof::read(r)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn slot(receiver: u16) -> BoxSlot {
        BoxSlot {
            session_id: [7; 32],
            dealer: ShareIndex::new(1).expect("index"),
            receiver: ShareIndex::new(receiver).expect("index"),
        }
    }

    fn key(seed: u8) -> DkgSecretKey {
        DkgSecretKey::from_seed(&[seed; 64])
    }

    #[test]
    fn only_the_receiver_opens_its_box_in_its_slot() {
        let mut rng = StdRng::seed_from_u64(1);
        let value = SecretScalar::random(&mut rng);
        let sealed = SealedShare::seal(&mut rng, &key(2).public_key(), &slot(2), &value);
        assert_eq!(sealed.open(&key(2), &slot(2)).expose(), value.expose());
        assert_ne!(sealed.open(&key(3), &slot(2)).expose(), value.expose());
        assert_ne!(sealed.open(&key(2), &slot(3)).expose(), value.expose());
    }

    #[test]
    fn a_reveal_opens_the_box_for_anyone_only_with_a_valid_proof() {
        let mut rng = StdRng::seed_from_u64(2);
        let value = SecretScalar::random(&mut rng);
        let receiver = key(2);
        let sealed = SealedShare::seal(&mut rng, &receiver.public_key(), &slot(2), &value);
        let reveal = sealed.reveal(&mut rng, &receiver, &slot(2));
        let opened = sealed
            .open_revealed(&reveal, &receiver.public_key(), &slot(2))
            .expect("valid reveal");
        assert_eq!(opened.expose(), value.expose());
        // Another node's key, another slot, or another node's reveal: refused.
        let liar = key(3);
        assert!(sealed
            .open_revealed(&reveal, &liar.public_key(), &slot(2))
            .is_none());
        assert!(sealed
            .open_revealed(&reveal, &receiver.public_key(), &slot(3))
            .is_none());
        let forged = sealed.reveal(&mut rng, &liar, &slot(2));
        assert!(sealed
            .open_revealed(&forged, &receiver.public_key(), &slot(2))
            .is_none());
    }

    #[test]
    fn a_box_copied_into_another_slot_is_not_proven() {
        let mut rng = StdRng::seed_from_u64(3);
        let value = SecretScalar::random(&mut rng);
        let sealed = SealedShare::seal(&mut rng, &key(2).public_key(), &slot(2), &value);
        assert!(sealed.is_proven(&slot(2)));
        assert!(!sealed.is_proven(&slot(3)), "another receiver's slot");
        let other_dealer = BoxSlot {
            dealer: ShareIndex::new(4).expect("index"),
            ..slot(2)
        };
        assert!(!sealed.is_proven(&other_dealer), "another dealer's slot");
    }

    #[test]
    fn public_keys_round_trip_and_refuse_junk() {
        let public = key(4).public_key();
        assert_eq!(
            DkgPublicKey::from_bytes(&public.to_bytes()).expect("decodes"),
            public
        );
        assert!(DkgPublicKey::from_bytes(&[0u8; 33]).is_err());
        assert!(DkgPublicKey::from_bytes(&public.to_bytes()[..32]).is_err());
        assert_eq!(format!("{:?}", key(4)), "DkgSecretKey(<redacted>)");
    }
}
