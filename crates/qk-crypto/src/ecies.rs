//! Labelled threshold ECIES (CRYPTO.md "Wrapping" and "Unwrapping").
//!
//! `wrap` needs only the public key. Holders run [`partial_decrypt`], which
//! refuses any ciphertext whose proof `π` does not verify against the label it
//! computes itself. A combiner runs [`combine`] over any `t` partials.

use std::collections::{BTreeMap, BTreeSet};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hkdf::Hkdf;
use k256::elliptic_curve::group::GroupEncoding;
use k256::elliptic_curve::ops::LinearCombination;
use k256::elliptic_curve::point::BatchNormalize;
use k256::{AffinePoint, ProjectivePoint, Scalar};
use qk_types::{KeyId, KeyVersion, ShareIndex};
use rand_core::CryptoRng;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::encoding::{tag, Reader, Writer, POINT_LEN};
use crate::error::{CryptoError, DecodeError};
use crate::hash::Transcript;
use crate::keyset::PublicKeySet;
use crate::poly::lagrange_at_zero;
use crate::proof::{DleqProof, DleqStatement, SchnorrProof, SCHNORR_PROOF_LEN};
use crate::secret::{KeyShare, SecretScalar};

/// Largest plaintext `wrap` accepts; larger data belongs under a data key.
pub const MAX_PLAINTEXT_LEN: usize = 1 << 20;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const CIPHERTEXT_HEADER_LEN: usize = 2 + 16 + 4 + POINT_LEN + SCHNORR_PROOF_LEN + NONCE_LEN + 4;
/// Largest encoded ciphertext.
pub const MAX_CIPHERTEXT_LEN: usize = CIPHERTEXT_HEADER_LEN + MAX_PLAINTEXT_LEN + TAG_LEN;
/// Largest encoded partial decryption.
pub const MAX_PARTIAL_LEN: usize = 2 + 16 + 4 + 2 + POINT_LEN + 64;
/// Text prefix of the ciphertext's text form.
pub const TEXT_PREFIX: &str = "qk:v1:";
const MAX_CONTEXT_ENTRIES: usize = 64;
const MAX_CONTEXT_KEY_LEN: usize = 256;
const MAX_CONTEXT_VALUE_LEN: usize = 1024;

/// Caller-supplied encryption context; not stored in the ciphertext, it must be
/// given again to decrypt (as in AWS KMS).
pub type EncryptionContext = BTreeMap<String, String>;

/// `L = H("qk/label" ‖ key_id ‖ version ‖ R ‖ canonical(context))`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label([u8; 32]);

impl Label {
    pub fn compute(
        key_id: KeyId,
        version: KeyVersion,
        r: &AffinePoint,
        context: &EncryptionContext,
    ) -> Result<Self, CryptoError> {
        let mut t = Transcript::new("qk/label");
        t.bytes(&key_id.0).bytes(&version.0.to_be_bytes()).point(r);
        t.bytes(&canonical_context(context)?);
        Ok(Label(t.digest()))
    }
}

fn canonical_context(context: &EncryptionContext) -> Result<Vec<u8>, CryptoError> {
    if context.len() > MAX_CONTEXT_ENTRIES {
        return Err(CryptoError::ContextTooLarge("more than 64 entries"));
    }
    let mut out = Vec::new();
    out.extend_from_slice(&(context.len() as u16).to_be_bytes());
    for (k, v) in context {
        if k.len() > MAX_CONTEXT_KEY_LEN {
            return Err(CryptoError::ContextTooLarge("a key is over 256 bytes"));
        }
        if v.len() > MAX_CONTEXT_VALUE_LEN {
            return Err(CryptoError::ContextTooLarge("a value is over 1024 bytes"));
        }
        out.extend_from_slice(&(k.len() as u16).to_be_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(v.len() as u16).to_be_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    Ok(out)
}

/// A wrapped value: `(format_version, key_id, version, R, π, nonce, body)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ciphertext {
    pub key_id: KeyId,
    pub version: KeyVersion,
    r: AffinePoint,
    proof: SchnorrProof,
    nonce: [u8; NONCE_LEN],
    body: Vec<u8>,
}

fn derive_key(shared: &AffinePoint, r: &AffinePoint, label: &Label) -> Zeroizing<[u8; 32]> {
    let mut ikm = Zeroizing::new([0u8; 2 * POINT_LEN]);
    ikm[..POINT_LEN].copy_from_slice(&shared.to_bytes());
    ikm[POINT_LEN..].copy_from_slice(&r.to_bytes());
    let mut info = Vec::with_capacity(5 + 32);
    info.extend_from_slice(b"qk/v1");
    info.extend_from_slice(&label.0);
    let mut okm = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's 8160-byte output limit.
    let _ = Hkdf::<Sha256>::new(None, ikm.as_ref()).expand(&info, okm.as_mut());
    okm
}

fn aead(key: &[u8; 32]) -> Aes256Gcm {
    Aes256Gcm::new(&(*key).into())
}

/// Encrypts under the key version's public key `X`; needs no quorum.
pub fn wrap<R: CryptoRng + ?Sized>(
    rng: &mut R,
    public_key: &AffinePoint,
    key_id: KeyId,
    version: KeyVersion,
    context: &EncryptionContext,
    plaintext: &[u8],
) -> Result<Ciphertext, CryptoError> {
    if plaintext.len() > MAX_PLAINTEXT_LEN {
        return Err(CryptoError::PlaintextTooLarge {
            len: plaintext.len(),
            max: MAX_PLAINTEXT_LEN,
        });
    }
    let r = SecretScalar::random(rng);
    let w = SecretScalar::random(rng);
    let shared = ProjectivePoint::from(*public_key) * r.expose();
    let [r_point, shared, w_point] =
        <ProjectivePoint as BatchNormalize<[ProjectivePoint; _]>>::batch_normalize(&[
            r.public(),
            shared,
            w.public(),
        ]);
    let label = Label::compute(key_id, version, &r_point, context)?;
    let proof = SchnorrProof::finish("qk/pok", &w, &w_point, &r, &r_point, &label.0);
    let key = derive_key(&shared, &r_point, &label);
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let body = aead(&key)
        .encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: plaintext,
                aad: &label.0,
            },
        )
        .map_err(|_| CryptoError::AeadFailure)?;
    Ok(Ciphertext {
        key_id,
        version,
        r: r_point,
        proof,
        nonce,
        body,
    })
}

impl Ciphertext {
    /// Recomputes the label for `context` and checks `π` against it. Holders
    /// call this (through [`partial_decrypt`]) before computing anything.
    pub fn verify(&self, context: &EncryptionContext) -> Result<Label, CryptoError> {
        let label = Label::compute(self.key_id, self.version, &self.r, context)?;
        if self.proof.verify("qk/pok", &self.r, &label.0) {
            Ok(label)
        } else {
            Err(CryptoError::InvalidCiphertextProof)
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(tag::CIPHERTEXT);
        w.key_version(self.key_id, self.version);
        w.point(&self.r);
        self.proof.write(&mut w);
        w.bytes(&self.nonce);
        w.u32(self.body.len() as u32);
        w.bytes(&self.body);
        w.finish()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new("ciphertext", bytes, tag::CIPHERTEXT, MAX_CIPHERTEXT_LEN)?;
        let (key_id, version) = r.key_version()?;
        let r_point = r.point()?;
        let proof = SchnorrProof::read(&mut r)?;
        let nonce = r.array()?;
        let body = r.bytes_u32(MAX_PLAINTEXT_LEN + TAG_LEN)?;
        if body.len() < TAG_LEN {
            return Err(DecodeError::InvalidField {
                what: "ciphertext",
                reason: "body shorter than the AEAD tag",
            });
        }
        let body = body.to_vec();
        r.finish()?;
        Ok(Ciphertext {
            key_id,
            version,
            r: r_point,
            proof,
            nonce,
            body,
        })
    }

    /// `qk:v1:` + base64url (no padding) of the binary form.
    pub fn to_text(&self) -> String {
        format!("{TEXT_PREFIX}{}", URL_SAFE_NO_PAD.encode(self.to_bytes()))
    }

    pub fn from_text(text: &str) -> Result<Self, DecodeError> {
        let max_text_len = TEXT_PREFIX.len() + MAX_CIPHERTEXT_LEN.div_ceil(3) * 4;
        if text.len() > max_text_len {
            return Err(DecodeError::TooLarge {
                what: "ciphertext text",
                len: text.len(),
                max: max_text_len,
            });
        }
        let encoded = text
            .strip_prefix(TEXT_PREFIX)
            .ok_or(DecodeError::InvalidText)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| DecodeError::InvalidText)?;
        Self::from_bytes(&bytes)
    }
}

/// One holder's contribution `D_i = x_i·R` with its DLEQ proof.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartialDecryption {
    pub key_id: KeyId,
    pub version: KeyVersion,
    pub index: ShareIndex,
    image: AffinePoint,
    proof: DleqProof,
}

impl PartialDecryption {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::new(tag::PARTIAL);
        w.key_version(self.key_id, self.version);
        w.index(self.index);
        w.point(&self.image);
        self.proof.write(&mut w);
        w.finish()
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new("partial decryption", bytes, tag::PARTIAL, MAX_PARTIAL_LEN)?;
        let (key_id, version) = r.key_version()?;
        let index = r.index()?;
        let image = r.point()?;
        let proof = DleqProof::read(&mut r)?;
        r.finish()?;
        Ok(PartialDecryption {
            key_id,
            version,
            index,
            image,
            proof,
        })
    }
}

fn check_key(ct: &Ciphertext, key_id: KeyId, version: KeyVersion) -> Result<(), CryptoError> {
    if ct.key_id == key_id && ct.version == version {
        return Ok(());
    }
    Err(CryptoError::WrongKey {
        expected_key: key_id.to_string(),
        expected_version: version.to_string(),
        found_key: ct.key_id.to_string(),
        found_version: ct.version.to_string(),
    })
}

/// A holder's step: verify `π` for the caller's context, then compute `D_i`
/// and its proof. Nothing is computed from the share if `π` fails.
pub fn partial_decrypt<R: CryptoRng + ?Sized>(
    rng: &mut R,
    share: &KeyShare,
    holder_key: &AffinePoint,
    key_id: KeyId,
    version: KeyVersion,
    ciphertext: &Ciphertext,
    context: &EncryptionContext,
) -> Result<PartialDecryption, CryptoError> {
    check_key(ciphertext, key_id, version)?;
    let label = ciphertext.verify(context)?;
    let (image, proof) =
        DleqProof::prove_image(rng, share.value(), holder_key, &ciphertext.r, &label.0);
    Ok(PartialDecryption {
        key_id,
        version,
        index: share.index(),
        image,
        proof,
    })
}

/// Checks one partial's DLEQ proof against the holder's public share.
pub fn verify_partial(
    keys: &PublicKeySet,
    ciphertext: &Ciphertext,
    label: &Label,
    partial: &PartialDecryption,
) -> Result<(), CryptoError> {
    if partial.key_id != ciphertext.key_id || partial.version != ciphertext.version {
        return Err(CryptoError::InvalidPartial(partial.index));
    }
    let holder_key = keys.holder_key(partial.index)?;
    let statement = DleqStatement {
        holder_key: &holder_key,
        base: &ciphertext.r,
        image: &partial.image,
        label: &label.0,
    };
    if partial.proof.verify(&statement) {
        Ok(())
    } else {
        Err(CryptoError::InvalidPartial(partial.index))
    }
}

/// How [`combine`] treats proofs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CombineMode {
    /// Verify every partial's proof, then combine `t` valid ones.
    VerifyAll,
    /// Combine the first `t` partials; verify proofs only if the AEAD fails.
    /// Same result as `VerifyAll`, cheaper when every holder is honest.
    Optimistic,
}

/// The opened plaintext and the holders whose partials failed their proof.
#[derive(Debug)]
pub struct Combined {
    pub plaintext: Zeroizing<Vec<u8>>,
    pub invalid: Vec<ShareIndex>,
}

/// Combines partials (`S = Σ λ_i D_i`), derives `K`, opens the AEAD.
pub fn combine(
    keys: &PublicKeySet,
    ciphertext: &Ciphertext,
    context: &EncryptionContext,
    partials: &[PartialDecryption],
    mode: CombineMode,
) -> Result<Combined, CryptoError> {
    let label = Label::compute(
        ciphertext.key_id,
        ciphertext.version,
        &ciphertext.r,
        context,
    )?;
    let needed = usize::from(keys.threshold());
    let distinct = distinct_known(keys, partials);
    if mode == CombineMode::Optimistic && distinct.len() >= needed {
        if let Ok(plaintext) = open(ciphertext, &label, &distinct[..needed]) {
            return Ok(Combined {
                plaintext,
                invalid: Vec::new(),
            });
        }
    }
    // The first *valid* partial per index counts: a forged partial that
    // claims an index first must not crowd out the honest one.
    let mut valid: Vec<&PartialDecryption> = Vec::with_capacity(distinct.len());
    let mut invalid = Vec::new();
    for p in partials.iter().filter(|p| keys.holder_key(p.index).is_ok()) {
        if valid.iter().any(|v| v.index == p.index) {
            continue;
        }
        match verify_partial(keys, ciphertext, &label, p) {
            Ok(()) => valid.push(p),
            Err(_) => invalid.push(p.index),
        }
    }
    invalid.retain(|i| !valid.iter().any(|v| v.index == *i));
    if valid.len() < needed {
        return Err(CryptoError::NotEnoughPartials {
            needed,
            valid: valid.len(),
            invalid,
        });
    }
    let plaintext = open(ciphertext, &label, &valid[..needed])?;
    Ok(Combined { plaintext, invalid })
}

/// First partial per holder of this key set; unknown holders are dropped
/// (they can never count towards `t`).
fn distinct_known<'a>(
    keys: &PublicKeySet,
    partials: &'a [PartialDecryption],
) -> Vec<&'a PartialDecryption> {
    let mut seen = BTreeSet::new();
    partials
        .iter()
        .filter(|p| keys.holder_key(p.index).is_ok() && seen.insert(p.index))
        .collect()
}

fn open(
    ciphertext: &Ciphertext,
    label: &Label,
    partials: &[&PartialDecryption],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let indices: Vec<ShareIndex> = partials.iter().map(|p| p.index).collect();
    debug_assert!(
        indices.iter().collect::<BTreeSet<_>>().len() == indices.len(),
        "Lagrange interpolation needs distinct share indices"
    );
    let lambdas = lagrange_at_zero(&indices);
    let terms: Vec<(ProjectivePoint, Scalar)> = partials
        .iter()
        .zip(lambdas)
        .map(|(p, l)| (ProjectivePoint::from(p.image), l))
        .collect();
    let shared = ProjectivePoint::lincomb_vartime(terms.as_slice()).to_affine();
    let key = derive_key(&shared, &ciphertext.r, label);
    aead(&key)
        .decrypt(
            &Nonce::from(ciphertext.nonce),
            Payload {
                msg: &ciphertext.body,
                aad: &label.0,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::AeadFailure)
}
