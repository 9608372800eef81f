//! Session keys granted by client certificates (see `qk_state::proof`).
//!
//! A client signs a [`SessionGrant`] with its certificate's key once and
//! hands the session key to the node it calls; holders verify the grant
//! against the cluster CA ([`GrantVerifier`]) before they accept a decrypt
//! proof signed by the session key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use qk_state::proof::{Credential, ProofError, SessionGrant, SESSION_MAX_TTL_MS};
use qk_state::{AuditCheckpoint, MAX_CHECKPOINT_PART_LEN};
use rcgen::{KeyPair, SigningKey};
use ring::rand::SecureRandom;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use crate::identity::{peer_from_cert_der, Peer};
use crate::pki::{CaCert, Credentials, PkiError};

/// How many verified grants a holder remembers (each costs two signature
/// checks the first time it is seen).
const GRANT_CACHE_LEN: usize = 4096;
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_ED25519: &str = "1.3.101.112";

impl Credentials {
    /// A fresh session key for this client certificate, valid for `ttl_ms`
    /// from `now_ms`, with its grant signed by the certificate's key.
    pub fn session(&self, now_ms: u64, ttl_ms: u64) -> Result<Credential, PkiError> {
        let fail = |reason: String| PkiError::Session { reason };
        // A node's session signs its own commands (as `node-N`), never a
        // principal's.
        let principal = match self.peer() {
            Peer::Client(name) => name.clone(),
            Peer::Node(id) => qk_types::NodeId(*id).to_string(),
        };
        let principal = &principal;
        let mut seed = zeroize::Zeroizing::new([0u8; 32]);
        ring::rand::SystemRandom::new()
            .fill(seed.as_mut())
            .map_err(|_| fail("the system random generator failed".into()))?;
        let session_key = Credential::session_key(&seed).map_err(|e| fail(e.to_string()))?;
        let cert_der = self
            .cert_chain()
            .first()
            .map(|c| c.to_vec())
            .ok_or_else(|| fail("the credentials hold no certificate".into()))?;
        let expires_ms = now_ms.saturating_add(ttl_ms.min(SESSION_MAX_TTL_MS));
        let message = SessionGrant::message(&cert_der, principal, &session_key, expires_ms);
        let key = KeyPair::from_pem(self.key_pem()).map_err(|e| fail(e.to_string()))?;
        let signature = key.sign(&message).map_err(|e| fail(e.to_string()))?;
        let grant = SessionGrant {
            cert_der,
            principal: principal.clone(),
            session_key,
            expires_ms,
            signature,
        };
        Ok(Credential::session(*seed, grant))
    }
}

impl Credentials {
    /// This node's signed statement that audit record `seq` has `hash`.
    pub fn sign_checkpoint(
        &self,
        seq: u64,
        hash: [u8; 32],
        now_ms: u64,
    ) -> Result<AuditCheckpoint, PkiError> {
        let fail = |reason: String| PkiError::Session { reason };
        let Peer::Node(node) = *self.peer() else {
            return Err(fail(
                "only a node certificate signs audit checkpoints".into(),
            ));
        };
        let cert_der = self
            .cert_chain()
            .first()
            .map(|c| c.to_vec())
            .ok_or_else(|| fail("the credentials hold no certificate".into()))?;
        let message = AuditCheckpoint::message(node, seq, &hash, now_ms);
        let key = KeyPair::from_pem(self.key_pem()).map_err(|e| fail(e.to_string()))?;
        let signature = key.sign(&message).map_err(|e| fail(e.to_string()))?;
        Ok(AuditCheckpoint {
            node,
            seq,
            hash,
            signed_ms: now_ms,
            cert_der,
            signature,
        })
    }
}

/// How long a session key lasts; a new one is made when less than
/// [`SESSION_RENEW_MS`] remain.
pub const SESSION_TTL_MS: u64 = 60 * 60 * 1000;
pub const SESSION_RENEW_MS: u64 = 5 * 60 * 1000;

/// A client certificate's current session, renewed before it expires.
pub struct SessionCache {
    identity: Credentials,
    current: Mutex<Option<Credential>>,
}

impl std::fmt::Debug for SessionCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionCache")
            .field("peer", self.identity.peer())
            .finish_non_exhaustive()
    }
}

impl SessionCache {
    pub fn new(identity: Credentials) -> Self {
        Self {
            identity,
            current: Mutex::new(None),
        }
    }

    /// The session to sign with now (made, or renewed when about to expire).
    pub fn current(&self) -> Result<Credential, PkiError> {
        let now = now_ms();
        let mut current = self.current.lock().map_err(|_| PkiError::Session {
            reason: "the session lock is poisoned".into(),
        })?;
        if let Some(session) = current.as_ref() {
            if let qk_state::proof::Signer::Session(grant) = &session.signer {
                if grant.expires_ms > now.saturating_add(SESSION_RENEW_MS) {
                    return Ok(session.clone());
                }
            }
        }
        let session = self.identity.session(now, SESSION_TTL_MS)?;
        *current = Some(session.clone());
        Ok(session)
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Checks session grants against the cluster CA, remembering the ones it
/// verified (bounded).
pub struct GrantVerifier {
    verifier: Arc<dyn ClientCertVerifier>,
    /// Verified grants, with the end of their certificate's validity (ms).
    /// Verified grants by digest: their certificate's validity (not
    /// before, not after), so a remembered grant gets the same verdict at
    /// every time as a fresh verification.
    verified: Mutex<HashMap<[u8; 32], Validity>>,
    /// The CA certificate's own validity: a remembered grant is valid only
    /// while both are.
    ca_validity: Validity,
}

#[derive(Clone, Copy, Debug)]
struct Validity {
    not_before_ms: u64,
    not_after_ms: u64,
}

impl std::fmt::Debug for GrantVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrantVerifier").finish_non_exhaustive()
    }
}

impl GrantVerifier {
    pub fn new(ca: &CaCert) -> Result<Self, PkiError> {
        let fail = |reason: String| PkiError::Session { reason };
        let mut roots = RootCertStore::empty();
        roots
            .add(ca.der().clone())
            .map_err(|e| fail(e.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| fail(e.to_string()))?;
        Ok(Self {
            verifier,
            verified: Mutex::new(HashMap::new()),
            ca_validity: validity_of(ca.der()).map_err(|e| fail(e.to_string()))?,
        })
    }

    /// Ok when `grant` is unexpired at `now_ms`, its certificate chains to
    /// the cluster CA and names `grant.principal`, and the certificate's key
    /// signed it.
    pub fn verify(&self, grant: &SessionGrant, now_ms: u64) -> Result<(), ProofError> {
        if grant.expires_ms <= now_ms {
            return Err(ProofError::Signer(format!(
                "the session of {} expired; start a new one",
                grant.principal
            )));
        }
        if grant.expires_ms > now_ms.saturating_add(SESSION_MAX_TTL_MS) {
            return Err(ProofError::Signer(format!(
                "the session of {} lasts longer than {SESSION_MAX_TTL_MS} ms",
                grant.principal
            )));
        }
        let digest = grant.digest();
        let validity = match self.remembered(&digest) {
            Some(validity) => validity,
            None => {
                let validity = self.verify_uncached(grant, now_ms)?;
                if let Ok(mut v) = self.verified.lock() {
                    if v.len() >= GRANT_CACHE_LEN {
                        v.clear();
                    }
                    v.insert(digest, validity);
                }
                validity
            }
        };
        if validity.not_after_ms <= now_ms || validity.not_before_ms > now_ms {
            return Err(ProofError::Signer(format!(
                "the certificate of {}'s session is not valid at this time",
                grant.principal
            )));
        }
        Ok(())
    }

    /// Ok when `cp` is signed by the key of a node certificate of this CA,
    /// valid when it signed, that names node `cp.node`.
    pub fn verify_checkpoint(&self, cp: &AuditCheckpoint) -> Result<(), ProofError> {
        if cp.cert_der.len() > MAX_CHECKPOINT_PART_LEN
            || cp.signature.len() > MAX_CHECKPOINT_PART_LEN
        {
            return Err(ProofError::Malformed("the checkpoint is too large".into()));
        }
        let cert = CertificateDer::from(cp.cert_der.as_slice());
        let at = UnixTime::since_unix_epoch(Duration::from_millis(cp.signed_ms));
        self.verifier
            .verify_client_cert(&cert, &[], at)
            .map_err(|e| {
                ProofError::Signer(format!("the checkpoint's certificate is not valid: {e}"))
            })?;
        match peer_from_cert_der(&cp.cert_der) {
            Ok(Peer::Node(id)) if id == cp.node => {}
            Ok(peer) => {
                return Err(ProofError::WrongPrincipal {
                    signer: peer.uri(),
                    principal: format!("node {}", cp.node),
                })
            }
            Err(e) => return Err(ProofError::Signer(e.to_string())),
        }
        verify_cert_signature(&cp.cert_der, &cp.signed_message(), &cp.signature)
    }

    fn remembered(&self, digest: &[u8; 32]) -> Option<Validity> {
        self.verified.lock().ok()?.get(digest).copied()
    }

    /// Verifies the grant; the end of its certificate's validity (ms).
    fn verify_uncached(&self, grant: &SessionGrant, now_ms: u64) -> Result<Validity, ProofError> {
        let signer = |m: String| ProofError::Signer(m);
        let cert = CertificateDer::from(grant.cert_der.as_slice());
        let now = UnixTime::since_unix_epoch(Duration::from_millis(now_ms));
        self.verifier
            .verify_client_cert(&cert, &[], now)
            .map_err(|e| signer(format!("the session's certificate is not valid: {e}")))?;
        match peer_from_cert_der(&grant.cert_der) {
            Ok(Peer::Client(name)) if name == grant.principal => {}
            Ok(Peer::Node(id)) if qk_types::NodeId(id).to_string() == grant.principal => {}
            Ok(peer) => {
                return Err(ProofError::WrongPrincipal {
                    signer: peer.uri(),
                    principal: grant.principal.clone(),
                })
            }
            Err(e) => return Err(signer(e.to_string())),
        }
        verify_cert_signature(&grant.cert_der, &grant.signed_message(), &grant.signature)?;
        let leaf = validity_of(&grant.cert_der)?;
        Ok(Validity {
            not_before_ms: leaf.not_before_ms.max(self.ca_validity.not_before_ms),
            not_after_ms: leaf.not_after_ms.min(self.ca_validity.not_after_ms),
        })
    }
}

fn validity_of(cert_der: &[u8]) -> Result<Validity, ProofError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| ProofError::Malformed(e.to_string()))?;
    let ms = |s: i64| u64::try_from(s).unwrap_or(0).saturating_mul(1000);
    Ok(Validity {
        not_before_ms: ms(cert.validity().not_before.timestamp()),
        not_after_ms: ms(cert.validity().not_after.timestamp()),
    })
}

impl qk_state::authn::GrantCheck for GrantVerifier {
    fn check_grant(&self, grant: &SessionGrant, at_ms: u64) -> Result<(), ProofError> {
        self.verify(grant, at_ms)
    }
}

/// Checks `signature` over `message` under the certificate's public key
/// (ECDSA P-256 with SHA-256, or Ed25519).
fn verify_cert_signature(
    cert_der: &[u8],
    message: &[u8],
    signature: &[u8],
) -> Result<(), ProofError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| ProofError::Malformed(e.to_string()))?;
    let spki = cert.public_key();
    let algorithm = spki.algorithm.algorithm.to_id_string();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    let alg: &dyn ring::signature::VerificationAlgorithm =
        match (algorithm.as_str(), curve.as_deref()) {
            (OID_EC_PUBLIC_KEY, Some(OID_P256)) => &ring::signature::ECDSA_P256_SHA256_ASN1,
            (OID_ED25519, _) => &ring::signature::ED25519,
            _ => {
                return Err(ProofError::Signer(format!(
                    "the certificate's key type {algorithm} cannot sign sessions; use ECDSA P-256 or Ed25519"
                )))
            }
        };
    ring::signature::UnparsedPublicKey::new(alg, spki.subject_public_key.data.as_ref())
        .verify(message, signature)
        .map_err(|_| ProofError::BadSignature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::ClusterCa;

    #[test]
    fn a_grant_verifies_only_from_its_own_certificate_and_ca() {
        let ca = ClusterCa::generate("test").expect("ca");
        let alice = ca.issue_client("alice").expect("alice");
        let verifier = GrantVerifier::new(ca.cert()).expect("verifier");
        let now = now_ms();
        let session = alice.session(now, 60_000).expect("session");
        let qk_state::proof::Signer::Session(grant) = session.signer.clone() else {
            panic!("a session credential");
        };
        verifier.verify(&grant, now).expect("valid grant");
        verifier.verify(&grant, now).expect("remembered");

        let mut renamed = grant.clone();
        renamed.principal = "admin".into();
        assert!(verifier.verify(&renamed, now).is_err(), "principal bound");
        let mut rekeyed = grant.clone();
        rekeyed.session_key = [1; 32];
        assert_eq!(
            verifier.verify(&rekeyed, now),
            Err(ProofError::BadSignature)
        );
        assert!(verifier.verify(&grant, grant.expires_ms).is_err(), "expiry");
        let mut forever = grant.clone();
        forever.expires_ms = now + SESSION_MAX_TTL_MS + 60_000;
        assert!(
            verifier.verify(&forever, now).is_err(),
            "longer than allowed"
        );
        let after_cert = now + 10 * 365 * 24 * 3600 * 1000;
        let mut late = grant.clone();
        late.expires_ms = after_cert + 1;
        assert!(
            verifier.verify(&late, after_cert).is_err(),
            "not after the certificate expired, cached or not"
        );

        let other_ca = ClusterCa::generate("other").expect("other ca");
        let foreign = GrantVerifier::new(other_ca.cert()).expect("verifier");
        assert!(foreign.verify(&grant, now).is_err(), "foreign CA");
    }

    #[test]
    fn a_node_grants_sessions_only_as_itself() {
        let ca = ClusterCa::generate("test").expect("ca");
        let node = ca.issue_node(1, &["127.0.0.1"]).expect("node");
        let verifier = GrantVerifier::new(ca.cert()).expect("verifier");
        let now = now_ms();
        let session = node.session(now, 60_000).expect("session");
        let qk_state::proof::Signer::Session(grant) = session.signer.clone() else {
            panic!("a session credential");
        };
        assert_eq!(grant.principal, "node-1");
        verifier.verify(&grant, now).expect("node-1's own grant");
        let mut other = grant.clone();
        other.principal = "node-2".into();
        assert!(verifier.verify(&other, now).is_err(), "not another node");
        let mut admin = grant;
        admin.principal = "admin".into();
        assert!(verifier.verify(&admin, now).is_err(), "not a principal");
    }

    #[test]
    fn a_checkpoint_verifies_only_as_signed_by_its_own_node_of_this_ca() {
        let ca = ClusterCa::generate("test").expect("ca");
        let node = ca.issue_node(2, &["127.0.0.1"]).expect("node");
        let verifier = GrantVerifier::new(ca.cert()).expect("verifier");
        let cp = node.sign_checkpoint(7, [9; 32], now_ms()).expect("signed");
        assert_eq!((cp.node, cp.seq), (2, 7));
        verifier
            .verify_checkpoint(&cp)
            .expect("a node's own checkpoint");
        let tampered = |f: &dyn Fn(&mut AuditCheckpoint)| {
            let mut c = cp.clone();
            f(&mut c);
            verifier.verify_checkpoint(&c).is_err()
        };
        assert!(tampered(&|c| c.hash = [8; 32]), "another hash");
        assert!(tampered(&|c| c.seq = 8), "another record");
        assert!(tampered(&|c| c.node = 1), "another node's name");
        assert!(tampered(&|c| c.signed_ms += 1), "another time");
        let other_ca = ClusterCa::generate("other").expect("ca");
        let stranger = other_ca.issue_node(2, &["127.0.0.1"]).expect("node");
        let foreign = stranger
            .sign_checkpoint(7, [9; 32], now_ms())
            .expect("signed");
        assert!(
            verifier.verify_checkpoint(&foreign).is_err(),
            "another CA's node"
        );
        let alice = ca.issue_client("alice").expect("alice");
        assert!(
            alice.sign_checkpoint(7, [9; 32], now_ms()).is_err(),
            "clients sign none"
        );
    }

    #[test]
    fn a_remembered_grant_gets_the_verdict_of_a_fresh_one_at_any_time() {
        let ca = ClusterCa::generate("test").expect("ca");
        let alice = ca.issue_client("alice").expect("alice");
        let now = now_ms();
        let session = alice.session(now, 60_000).expect("session");
        let qk_state::proof::Signer::Session(grant) = session.signer.clone() else {
            panic!("a session credential");
        };
        // Before the certificate (issued now, back-dated by at most an hour)
        // but within a session's longest life.
        let long_before = now - 20 * 3600 * 1000;
        let fresh = GrantVerifier::new(ca.cert()).expect("verifier");
        let warm = GrantVerifier::new(ca.cert()).expect("verifier");
        warm.verify(&grant, now).expect("remembered now");
        assert_eq!(
            fresh.verify(&grant, long_before).is_ok(),
            warm.verify(&grant, long_before).is_ok(),
            "before the certificate's not-before"
        );
        assert!(warm.verify(&grant, long_before).is_err());
    }

    #[test]
    fn a_session_is_reused_until_it_nears_expiry() {
        let ca = ClusterCa::generate("test").expect("ca");
        let cache = SessionCache::new(ca.issue_client("alice").expect("alice"));
        let first = cache.current().expect("session");
        assert_eq!(cache.current().expect("again"), first);
    }
}
