//! Proof that a principal itself asked for an unwrap.
//!
//! A node that coordinates a decrypt is not trusted to say who asked: every
//! holder checks, before it releases a partial, an Ed25519 signature by the
//! principal's signing key over exactly the ciphertext and context. The
//! signing key comes from the principal's own credential, handed to the node
//! the principal called and to no other:
//! - a bearer token: the key is derived from the token's secret (its public
//!   half is in the replicated [`TokenRecord`](crate::TokenRecord));
//! - a client certificate: the client makes a short-lived session key and
//!   signs a [`SessionGrant`] for it with the certificate's key; holders check
//!   the certificate against the cluster CA.
//!
//! So a compromised node can act only as the principals that called it, and
//! only for as long as their token or session lasts.

use std::collections::BTreeMap;
use std::fmt;

use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Longest a signed intent is accepted after (or before) its time stamp.
pub const INTENT_MAX_AGE_MS: u64 = 5 * 60 * 1000;
/// Longest a session grant may last.
pub const SESSION_MAX_TTL_MS: u64 = 24 * 60 * 60 * 1000;
/// Largest encoded credential a node accepts (a certificate chain fits).
pub const MAX_CREDENTIAL_LEN: usize = 8 * 1024;
const MAX_CERT_LEN: usize = 4 * 1024;
const MAX_SIGNATURE_LEN: usize = 160;
const MAX_TOKEN_ID_LEN: usize = 64;
const MAX_PRINCIPAL_LEN: usize = 128;
/// Largest encoded [`IntentProof`]: a certificate, two signatures, a
/// principal name, a session key and integers with their length prefixes.
pub const MAX_PROOF_LEN: usize = MAX_CERT_LEN + 2 * MAX_SIGNATURE_LEN + MAX_PRINCIPAL_LEN + 128;

const TOKEN_KEY_INFO: &[u8] = b"quorumkey token signing key v1";
const INTENT_DOMAIN: &[u8] = b"quorumkey unwrap intent v1\0";
const GRANT_DOMAIN: &[u8] = b"quorumkey session grant v1\0";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("the request carries no proof from {0}; the principal's own credential must sign each decrypt (a token, or a session key granted by its client certificate, as qk and qk-client send)")]
    Missing(String),
    #[error("the proof is signed by {signer}, not by {principal}")]
    WrongPrincipal { signer: String, principal: String },
    #[error("the proof's signature does not verify")]
    BadSignature,
    #[error("the proof names node {requester} as the one that combines, but node {from} asked")]
    WrongRequester { requester: u64, from: u64 },
    #[error("the proof is {age_ms} ms from this node's clock (at most {INTENT_MAX_AGE_MS} ms); check the clocks and retry")]
    Stale { age_ms: u64 },
    #[error("the proof's signer is not valid: {0}")]
    Signer(String),
    #[error("the credential is malformed: {0}")]
    Malformed(String),
}

/// A client certificate's statement that `session_key` may sign for
/// `principal` until `expires_ms`. `signature` is by the certificate's key
/// over [`SessionGrant::message`].
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionGrant {
    /// The client certificate (DER) whose key signed the grant.
    pub cert_der: Vec<u8>,
    pub principal: String,
    pub session_key: [u8; 32],
    pub expires_ms: u64,
    pub signature: Vec<u8>,
}

impl fmt::Debug for SessionGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionGrant")
            .field("principal", &self.principal)
            .field("expires_ms", &self.expires_ms)
            .finish_non_exhaustive()
    }
}

impl SessionGrant {
    /// The bytes the certificate's key signs.
    pub fn message(
        cert_der: &[u8],
        principal: &str,
        session_key: &[u8; 32],
        expires_ms: u64,
    ) -> Vec<u8> {
        let mut m = GRANT_DOMAIN.to_vec();
        m.extend_from_slice(&Sha256::digest(cert_der));
        m.extend_from_slice(session_key);
        m.extend_from_slice(&expires_ms.to_be_bytes());
        m.extend_from_slice(principal.as_bytes());
        m
    }

    pub fn signed_message(&self) -> Vec<u8> {
        Self::message(
            &self.cert_der,
            &self.principal,
            &self.session_key,
            self.expires_ms,
        )
    }

    /// A digest naming this grant exactly (cache key for verified grants).
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.signed_message());
        h.update(&self.signature);
        h.finalize().into()
    }

    pub(crate) fn check_bounds(&self) -> Result<(), ProofError> {
        if self.cert_der.len() > MAX_CERT_LEN
            || self.signature.len() > MAX_SIGNATURE_LEN
            || self.principal.len() > MAX_PRINCIPAL_LEN
        {
            return Err(ProofError::Malformed(
                "a session grant field is too long".into(),
            ));
        }
        Ok(())
    }
}

/// A command author's signature over the principal, the request id, the
/// operation and the time it signed at. The leader's log time is not
/// covered (the leader stamps it later); apply accepts the proof only within
/// [`INTENT_MAX_AGE_MS`] of the log time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandProof {
    pub signer: Signer,
    pub signed_ms: u64,
    pub signature: Vec<u8>,
}

/// Whose key signed a proof.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Signer {
    /// The key derived from token `id`'s secret.
    Token { id: String },
    /// A session key granted by a client certificate.
    Session(SessionGrant),
}

/// A principal's signature over one unwrap: this ciphertext, this context,
/// combined by this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntentProof {
    pub signer: Signer,
    /// The node the principal called, the only one that may collect the
    /// partials: another node that saw the proof (a holder) cannot replay
    /// it to learn the plaintext.
    pub requester: u64,
    pub time_ms: u64,
    pub signature: Vec<u8>,
}

impl IntentProof {
    pub fn check_bounds(&self) -> Result<(), ProofError> {
        check_proof_bounds(&self.signer, &self.signature)
    }

    /// Checks the signature under `verify_key`, that `from` (the node that
    /// sent the request) is the requester the principal named, and the time
    /// stamp against `now_ms`. Which key belongs to the signer is the
    /// caller's to decide.
    pub fn verify(
        &self,
        verify_key: &[u8; 32],
        intent: &Intent<'_>,
        from: u64,
        now_ms: u64,
    ) -> Result<(), ProofError> {
        if self.requester != from {
            return Err(ProofError::WrongRequester {
                requester: self.requester,
                from,
            });
        }
        let age_ms = now_ms.abs_diff(self.time_ms);
        if age_ms > INTENT_MAX_AGE_MS {
            return Err(ProofError::Stale { age_ms });
        }
        let message = intent.message(self.requester, self.time_ms);
        verify_ed25519(verify_key, &message, &self.signature)
    }
}

/// What a principal asks: unwrap `ciphertext` under `context`.
#[derive(Clone, Copy, Debug)]
pub struct Intent<'a> {
    pub principal: &'a str,
    pub ciphertext: &'a [u8],
    pub context: &'a BTreeMap<String, String>,
}

impl Intent<'_> {
    /// The bytes signed for it, combined by node `requester` at `time_ms`
    /// (every field length-prefixed, so no two intents share bytes).
    pub fn message(&self, requester: u64, time_ms: u64) -> Vec<u8> {
        let mut m = INTENT_DOMAIN.to_vec();
        let mut field = |bytes: &[u8]| {
            m.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
            m.extend_from_slice(bytes);
        };
        field(self.principal.as_bytes());
        field(&Sha256::digest(self.ciphertext));
        field(&requester.to_be_bytes());
        field(&time_ms.to_be_bytes());
        for (k, v) in self.context {
            field(k.as_bytes());
            field(v.as_bytes());
        }
        m
    }
}

/// Every field of a signer and its signature within its bound.
pub(crate) fn check_proof_bounds(signer: &Signer, signature: &[u8]) -> Result<(), ProofError> {
    match signer {
        Signer::Session(grant) => grant.check_bounds()?,
        Signer::Token { id } if id.len() > MAX_TOKEN_ID_LEN => {
            return Err(ProofError::Malformed("the token id is too long".into()))
        }
        Signer::Token { .. } => {}
    }
    if signature.len() > MAX_SIGNATURE_LEN {
        return Err(ProofError::Malformed("the signature is too long".into()));
    }
    Ok(())
}

/// The key's owner must be the principal the request names.
pub fn check_signer(signer: String, principal: &str) -> Result<(), ProofError> {
    if signer != principal {
        return Err(ProofError::WrongPrincipal {
            signer,
            principal: principal.to_string(),
        });
    }
    Ok(())
}

pub fn verify_ed25519(key: &[u8; 32], message: &[u8], signature: &[u8]) -> Result<(), ProofError> {
    UnparsedPublicKey::new(&ED25519, key)
        .verify(message, signature)
        .map_err(|_| ProofError::BadSignature)
}

/// The public key of the signing key a token's secret derives.
pub fn token_verify_key(secret: &str) -> Result<[u8; 32], ProofError> {
    Credential::key_pair(&token_seed(secret)).map(|k| public_key(&k))
}

fn token_seed(secret: &str) -> zeroize::Zeroizing<[u8; 32]> {
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    let hk = hkdf::Hkdf::<Sha256>::new(None, secret.as_bytes());
    // 32 bytes is always a valid HKDF-SHA256 output length.
    let _ = hk.expand(TOKEN_KEY_INFO, seed.as_mut());
    seed
}

fn public_key(pair: &Ed25519KeyPair) -> [u8; 32] {
    let mut key = [0u8; 32];
    key.copy_from_slice(pair.public_key().as_ref());
    key
}

/// A principal's signing key as the node it called holds it: secret,
/// zeroized on drop, never printed.
#[derive(Clone, Serialize, Deserialize)]
pub struct Credential {
    seed: [u8; 32],
    pub signer: Signer,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("signer", &self.signer)
            .finish_non_exhaustive()
    }
}

impl Drop for Credential {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.seed);
    }
}

impl PartialEq for Credential {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(self.seed.ct_eq(&other.seed)) && self.signer == other.signer
    }
}

impl Eq for Credential {}

impl Credential {
    /// The signing key a bearer token (`qkt.<id>.<secret>`) derives.
    pub fn from_token(id: &str, secret: &str) -> Credential {
        Credential {
            seed: *token_seed(secret),
            signer: Signer::Token { id: id.to_string() },
        }
    }

    /// A session key (`seed`, 32 random bytes) with its grant.
    pub fn session(seed: [u8; 32], grant: SessionGrant) -> Credential {
        Credential {
            seed,
            signer: Signer::Session(grant),
        }
    }

    /// The public key of an Ed25519 seed (for a grant's `session_key`).
    pub fn session_key(seed: &[u8; 32]) -> Result<[u8; 32], ProofError> {
        Self::key_pair(seed).map(|k| public_key(&k))
    }

    fn key_pair(seed: &[u8; 32]) -> Result<Ed25519KeyPair, ProofError> {
        Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|_| ProofError::Malformed("not an Ed25519 seed".into()))
    }

    /// Signs `intent`, to be combined by node `requester`, at `time_ms`.
    pub fn prove(
        &self,
        intent: &Intent<'_>,
        requester: u64,
        time_ms: u64,
    ) -> Result<IntentProof, ProofError> {
        let pair = Self::key_pair(&self.seed)?;
        let message = intent.message(requester, time_ms);
        Ok(IntentProof {
            signer: self.signer.clone(),
            requester,
            time_ms,
            signature: pair.sign(&message).as_ref().to_vec(),
        })
    }

    /// Signs raw `message` bytes (a command's, see [`crate::authn`]).
    pub(crate) fn sign(&self, message: &[u8]) -> Result<Vec<u8>, ProofError> {
        Ok(Self::key_pair(&self.seed)?.sign(message).as_ref().to_vec())
    }

    /// Encodes for a header or a message (bounded on decode).
    pub fn encode(&self) -> Result<Vec<u8>, ProofError> {
        postcard::to_allocvec(self).map_err(|e| ProofError::Malformed(e.to_string()))
    }

    pub fn decode(bytes: &[u8]) -> Result<Credential, ProofError> {
        if bytes.len() > MAX_CREDENTIAL_LEN {
            return Err(ProofError::Malformed(format!(
                "{} bytes; at most {MAX_CREDENTIAL_LEN}",
                bytes.len()
            )));
        }
        let credential: Credential =
            postcard::from_bytes(bytes).map_err(|e| ProofError::Malformed(e.to_string()))?;
        if let Signer::Session(grant) = &credential.signer {
            grant.check_bounds()?;
        }
        Ok(credential)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn intent<'a>(principal: &'a str, ct: &'a [u8], c: &'a BTreeMap<String, String>) -> Intent<'a> {
        Intent {
            principal,
            ciphertext: ct,
            context: c,
        }
    }

    #[test]
    fn a_token_proof_verifies_only_for_its_intent() {
        let secret = "ab".repeat(32);
        let cred = Credential::from_token("0011223344556677", &secret);
        let key = token_verify_key(&secret).expect("key");
        let context = ctx(&[("tenant", "a")]);
        let asked = intent("alice", b"ct", &context);
        let proof = cred.prove(&asked, 1, 1_000).expect("sign");
        proof.verify(&key, &asked, 1, 1_000).expect("verifies");
        let other_ctx = ctx(&[("tenant", "b")]);
        for other in [
            intent("bob", b"ct", &context),
            intent("alice", b"other", &context),
            intent("alice", b"ct", &other_ctx),
        ] {
            assert_eq!(
                proof.verify(&key, &other, 1, 1_000),
                Err(ProofError::BadSignature)
            );
        }
        let other_key = token_verify_key(&"cd".repeat(32)).expect("key");
        assert_eq!(
            proof.verify(&other_key, &asked, 1, 1_000),
            Err(ProofError::BadSignature)
        );
        assert!(matches!(
            proof.verify(&key, &asked, 1, 1_000 + INTENT_MAX_AGE_MS + 1),
            Err(ProofError::Stale { .. })
        ));
        // Another node that saw the proof cannot collect partials with it.
        assert_eq!(
            proof.verify(&key, &asked, 2, 1_000),
            Err(ProofError::WrongRequester {
                requester: 1,
                from: 2
            })
        );
        let mut moved = proof.clone();
        moved.requester = 2;
        assert_eq!(
            moved.verify(&key, &asked, 2, 1_000),
            Err(ProofError::BadSignature)
        );
    }

    #[test]
    fn context_fields_cannot_be_shifted_between_key_and_value() {
        let (a, b) = (ctx(&[("ab", "c")]), ctx(&[("a", "bc")]));
        assert_ne!(
            intent("p", b"c", &a).message(1, 1),
            intent("p", b"c", &b).message(1, 1)
        );
    }

    #[test]
    fn a_credential_round_trips_and_never_prints_its_seed() {
        let cred = Credential::session(
            [7u8; 32],
            SessionGrant {
                cert_der: vec![1, 2, 3],
                principal: "alice".into(),
                session_key: Credential::session_key(&[7u8; 32]).expect("key"),
                expires_ms: 9,
                signature: vec![4; 70],
            },
        );
        let bytes = cred.encode().expect("encode");
        assert_eq!(Credential::decode(&bytes).expect("decode"), cred);
        let printed = format!("{cred:?}");
        assert!(!printed.contains("7, 7"), "{printed}");
        assert!(printed.contains("alice"), "{printed}");
        let Signer::Session(grant) = &cred.signer else {
            unreachable!("a session credential")
        };
        let other_seed = Credential::session([8u8; 32], grant.clone());
        assert_ne!(other_seed, cred, "another seed, the same grant");
        let other_signer = Credential::from_token("00000000000000a1", "s");
        let same_seed_other_signer = Credential {
            seed: cred.seed,
            signer: other_signer.signer.clone(),
        };
        assert_ne!(
            same_seed_other_signer, cred,
            "the same seed, another signer"
        );
        assert!(Credential::decode(&vec![0u8; MAX_CREDENTIAL_LEN + 1]).is_err());
        assert!(Credential::decode(&bytes[..bytes.len() - 1]).is_err());
    }

    fn largest_proof() -> IntentProof {
        IntentProof {
            signer: Signer::Session(SessionGrant {
                cert_der: vec![7; MAX_CERT_LEN],
                principal: "p".repeat(MAX_PRINCIPAL_LEN),
                session_key: [5; 32],
                expires_ms: u64::MAX,
                signature: vec![6; MAX_SIGNATURE_LEN],
            }),
            requester: u64::MAX,
            time_ms: u64::MAX,
            signature: vec![4; MAX_SIGNATURE_LEN],
        }
    }

    #[test]
    fn the_largest_proof_fits_its_bound_closely_and_one_byte_more_is_refused() {
        let max = largest_proof();
        assert_eq!(max.check_bounds(), Ok(()));
        let encoded = postcard::to_allocvec(&max).expect("encodes");
        assert!(encoded.len() <= MAX_PROOF_LEN, "{} bytes", encoded.len());
        assert!(
            MAX_PROOF_LEN - encoded.len() < 128,
            "{} bytes",
            encoded.len()
        );
        let Signer::Session(grant) = &max.signer else {
            unreachable!("a session proof")
        };
        for edit in [
            |g: &mut SessionGrant| g.cert_der.push(0),
            |g: &mut SessionGrant| g.principal.push('p'),
            |g: &mut SessionGrant| g.signature.push(0),
        ] {
            let mut g = grant.clone();
            edit(&mut g);
            let proof = IntentProof {
                signer: Signer::Session(g),
                ..max.clone()
            };
            assert!(proof.check_bounds().is_err());
        }
        let mut long_signature = max.clone();
        long_signature.signature.push(0);
        assert!(long_signature.check_bounds().is_err());
        let token = |len: usize| IntentProof {
            signer: Signer::Token {
                id: "t".repeat(len),
            },
            ..max.clone()
        };
        assert_eq!(token(MAX_TOKEN_ID_LEN).check_bounds(), Ok(()));
        assert!(token(MAX_TOKEN_ID_LEN + 1).check_bounds().is_err());
        assert!(token(MAX_TOKEN_ID_LEN + 2).check_bounds().is_err());
    }

    #[test]
    fn an_intent_exactly_the_largest_age_old_is_accepted_and_one_ms_older_is_not() {
        let secret = "ab".repeat(32);
        let key = token_verify_key(&secret).expect("key");
        let context = ctx(&[]);
        let asked = intent("alice", b"ct", &context);
        let signed_ms = 1_000_000;
        let proof = Credential::from_token("0011223344556677", &secret)
            .prove(&asked, 1, signed_ms)
            .expect("sign");
        for now_ms in [signed_ms + INTENT_MAX_AGE_MS, signed_ms - INTENT_MAX_AGE_MS] {
            assert_eq!(proof.verify(&key, &asked, 1, now_ms), Ok(()));
        }
        assert_eq!(
            proof.verify(&key, &asked, 1, signed_ms + INTENT_MAX_AGE_MS + 1),
            Err(ProofError::Stale {
                age_ms: INTENT_MAX_AGE_MS + 1
            })
        );
    }

    #[test]
    fn a_credential_of_8_kib_is_not_refused_for_its_size_and_one_byte_more_is() {
        let size_error = |len: usize| {
            matches!(
                Credential::decode(&vec![0u8; len]),
                Err(ProofError::Malformed(m)) if m.ends_with("at most 8192")
            )
        };
        assert!(!size_error(8 * 1024));
        assert!(size_error(8 * 1024 + 1));
    }

    #[test]
    fn a_grant_takes_a_certificate_of_up_to_4_kib_and_a_proof_is_at_most_4672_bytes() {
        assert_eq!(MAX_PROOF_LEN, 4672);
        let Signer::Session(grant) = largest_proof().signer else {
            unreachable!("a session proof")
        };
        let with_cert = |len: usize| SessionGrant {
            cert_der: vec![7; len],
            ..grant.clone()
        };
        assert_eq!(with_cert(4 * 1024).check_bounds(), Ok(()));
        assert!(with_cert(4 * 1024 + 1).check_bounds().is_err());
    }
}
