//! Cluster PKI: a self-signed cluster CA and the node and client certificates
//! it issues (rcgen, ECDSA P-256).
//!
//! A node certificate names its node three ways: the SAN URI
//! `qk://node/<id>` (the identity read after a handshake), the DNS SAN
//! `node-<id>.qk` (the TLS server name used when dialing node `id`, so a node
//! answering with another id fails the handshake), and the DNS SAN
//! `cluster.qk` (the server name used when a client dials any node). The
//! hosts given to [`ClusterCa::issue_node`] are added as DNS or IP SANs for
//! tools that connect by address. A client certificate carries only
//! `qk://client/<name>` and the client-auth usage, so it cannot serve as a
//! node.
//!
//! Nodes need only the CA *certificate* ([`CaCert`]) and their own
//! [`Credentials`]; the CA private key stays with the operator.

use std::fmt;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use qk_raft::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use zeroize::Zeroizing;

use crate::identity::{
    node_server_name, peer_from_cert_der, validate_client_name, IdentityError, Peer,
    ANY_NODE_SERVER_NAME,
};

/// Validity of the cluster CA certificate. Long, because replacing the CA
/// means reissuing every certificate; protect the CA key instead.
pub const CA_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600);
/// Validity of node and client certificates.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(5 * 365 * 24 * 3600);
/// Certificates start being valid this long before they are issued, so a
/// peer whose clock lags a little still accepts them.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(3600);
/// Most SAN hosts accepted for one node certificate (a bound on certificate
/// size; a node has a handful of addresses).
pub const MAX_NODE_HOSTS: usize = 32;
/// Largest PEM file read (a certificate chain or a key is a few KiB).
pub const MAX_PEM_FILE_LEN: u64 = 1024 * 1024;

/// PKI failures. Each message says what failed and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    #[error("could not {what}: {source}")]
    Rcgen {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("{what} is not valid PEM ({reason}); pass the PEM file written by the qk PKI tools")]
    InvalidPem { what: &'static str, reason: String },
    #[error(
        "the private key does not belong to the certificate ({what}); pass the key file that was \
         written together with this certificate"
    )]
    KeyMismatch { what: &'static str },
    #[error(
        "the CA certificate is not a certificate authority (no CA basic constraint); pass the \
         cluster CA certificate, not a node or client certificate"
    )]
    NotCa,
    #[error("invalid host {host:?} for a node certificate: {reason}")]
    InvalidHost { host: String, reason: String },
    #[error("too many hosts for one node certificate ({count}, at most {MAX_NODE_HOSTS})")]
    TooManyHosts { count: usize },
    #[error("{0}")]
    Identity(#[from] IdentityError),
    #[error("could not {what} {path}: {source}; check the path and its permissions")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is larger than {MAX_PEM_FILE_LEN} bytes; it is not a PEM certificate or key")]
    FileTooLarge { path: PathBuf },
    #[error("could not make a session key: {reason}")]
    Session { reason: String },
}

fn rcgen_err(what: &'static str) -> impl FnOnce(rcgen::Error) -> PkiError {
    move |source| PkiError::Rcgen { what, source }
}

/// The cluster CA certificate alone: the trust root every node and client
/// uses. Holds no private key.
#[derive(Clone)]
pub struct CaCert {
    pem: String,
    der: CertificateDer<'static>,
}

impl fmt::Debug for CaCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaCert")
            .field("der_len", &self.der.len())
            .finish()
    }
}

impl CaCert {
    /// Parses a PEM file holding exactly one CA certificate.
    pub fn from_pem(pem: &str) -> Result<Self, PkiError> {
        let mut certs = parse_certs(pem, "the CA certificate")?;
        if certs.len() != 1 {
            return Err(PkiError::InvalidPem {
                what: "the CA certificate",
                reason: format!("expected exactly one certificate, found {}", certs.len()),
            });
        }
        let der = certs.remove(0);
        let (_, parsed) =
            x509_parser::parse_x509_certificate(&der).map_err(|e| PkiError::InvalidPem {
                what: "the CA certificate",
                reason: e.to_string(),
            })?;
        if !parsed.is_ca() {
            return Err(PkiError::NotCa);
        }
        Ok(Self {
            pem: pem.to_owned(),
            der,
        })
    }

    /// Reads [`CaCert::from_pem`] from a file.
    pub fn load(path: &Path) -> Result<Self, PkiError> {
        Self::from_pem(&read_pem_file(path, "read the CA certificate")?)
    }

    /// Writes the certificate (mode 0644).
    pub fn save(&self, path: &Path) -> Result<(), PkiError> {
        write_file_atomic(path, self.pem.as_bytes(), 0o644, "write the CA certificate")
    }

    pub fn pem(&self) -> &str {
        &self.pem
    }

    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }
}

/// The cluster CA with its private key: issues node and client certificates.
pub struct ClusterCa {
    cert: CaCert,
    key_pem: Zeroizing<String>,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cert", &self.cert)
            .field("key", &"[elided]")
            .finish()
    }
}

fn now() -> Duration {
    // A clock before 1970 is a broken clock; issuing from the epoch is still
    // safe (the certificate is just valid from earlier).
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let now = now();
    params.not_before = epoch + now.saturating_sub(CLOCK_SKEW_ALLOWANCE);
    params.not_after = epoch + now + validity;
}

fn ia5(value: String, host: &str) -> Result<rcgen::string::Ia5String, PkiError> {
    value
        .try_into()
        .map_err(|e: rcgen::Error| PkiError::InvalidHost {
            host: host.to_owned(),
            reason: e.to_string(),
        })
}

impl ClusterCa {
    /// Generates a new self-signed cluster CA named `name` (the subject CN).
    pub fn generate(name: &str) -> Result<Self, PkiError> {
        let key = KeyPair::generate().map_err(rcgen_err("generate the CA key"))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "Quorumkey");
        params.distinguished_name = dn;
        // Path length 0: the CA signs leaf certificates only.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, CA_VALIDITY);
        let cert = params
            .self_signed(&key)
            .map_err(rcgen_err("self-sign the CA certificate"))?;
        let key_pem = Zeroizing::new(key.serialize_pem());
        let pem = cert.pem();
        let der = cert.der().clone();
        Ok(Self {
            cert: CaCert { pem, der },
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// Loads an existing CA from its certificate and private key (PEM), to
    /// issue more certificates.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let cert = CaCert::from_pem(cert_pem)?;
        let key = matching_key(key_pem, "the CA private key", &cert.der, "CA")?;
        let issuer = Issuer::from_ca_cert_der(&cert.der, key)
            .map_err(rcgen_err("read the CA certificate's issuer fields"))?;
        Ok(Self {
            cert,
            key_pem: Zeroizing::new(key_pem.to_owned()),
            issuer,
        })
    }

    /// Reads [`ClusterCa::from_pem`] from files.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, PkiError> {
        let (cert, key) = read_pem_pair(cert_path, key_path, KeyFiles::CA)?;
        Self::from_pem(&cert, &key)
    }

    /// Writes the certificate (0644) and the private key (0600).
    pub fn save(&self, cert_path: &Path, key_path: &Path) -> Result<(), PkiError> {
        write_private_key(key_path, &self.key_pem, KeyFiles::CA)?;
        self.cert.save(cert_path)
    }

    /// The trust root to hand to nodes and clients.
    pub fn cert(&self) -> &CaCert {
        &self.cert
    }

    /// The CA private key, PKCS#8 PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Issues a node certificate for `node_id`. `hosts` are extra SANs: IP
    /// addresses (e.g. `127.0.0.1`) or DNS names the node is reached by.
    pub fn issue_node(
        &self,
        node_id: NodeId,
        hosts: &[impl AsRef<str>],
    ) -> Result<Credentials, PkiError> {
        if hosts.len() > MAX_NODE_HOSTS {
            return Err(PkiError::TooManyHosts { count: hosts.len() });
        }
        let peer = Peer::Node(node_id);
        let mut sans = vec![
            SanType::URI(ia5(peer.uri(), "node identity URI")?),
            SanType::DnsName(ia5(node_server_name(node_id), "node server name")?),
            SanType::DnsName(ia5(ANY_NODE_SERVER_NAME.to_owned(), ANY_NODE_SERVER_NAME)?),
        ];
        for host in hosts {
            let host = host.as_ref();
            sans.push(host_san(host)?);
        }
        let mut params = leaf_params(&format!("qk node {node_id}"), sans);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue(params, peer)
    }

    /// Issues a client certificate named `name` (1..=64 of `A-Z a-z 0-9 . _ -`).
    pub fn issue_client(&self, name: &str) -> Result<Credentials, PkiError> {
        validate_client_name(name)?;
        let peer = Peer::Client(name.to_owned());
        let sans = vec![SanType::URI(ia5(peer.uri(), "client identity URI")?)];
        let mut params = leaf_params(&format!("qk client {name}"), sans);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, peer)
    }

    fn issue(&self, params: CertificateParams, peer: Peer) -> Result<Credentials, PkiError> {
        let key = KeyPair::generate().map_err(rcgen_err("generate a certificate key"))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(rcgen_err("sign the certificate with the cluster CA"))?;
        Ok(Credentials {
            cert_pem: cert.pem(),
            chain: vec![cert.der().clone()],
            key_pem: Zeroizing::new(key.serialize_pem()),
            peer,
        })
    }
}

fn leaf_params(common_name: &str, sans: Vec<SanType>) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationName, "Quorumkey");
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, LEAF_VALIDITY);
    params
}

fn host_san(host: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !valid {
        return Err(PkiError::InvalidHost {
            host: host.chars().take(300).collect(),
            reason: "not an IP address or a DNS name (letters, digits, '-', dot-separated)"
                .to_owned(),
        });
    }
    Ok(SanType::DnsName(ia5(host.to_owned(), host)?))
}

/// What a certificate and key pair is called in errors, per action.
struct KeyFiles {
    read_cert: &'static str,
    read_key: &'static str,
    write_key: &'static str,
}

impl KeyFiles {
    const CA: KeyFiles = KeyFiles {
        read_cert: "read the CA certificate",
        read_key: "read the CA private key",
        write_key: "write the CA private key",
    };
    const LEAF: KeyFiles = KeyFiles {
        read_cert: "read the certificate",
        read_key: "read the private key",
        write_key: "write the private key",
    };
}

/// Reads a certificate and its private key (PEM files); the key is zeroized
/// when dropped.
fn read_pem_pair(
    cert_path: &Path,
    key_path: &Path,
    names: KeyFiles,
) -> Result<(String, Zeroizing<String>), PkiError> {
    let cert = read_pem_file(cert_path, names.read_cert)?;
    let key = Zeroizing::new(read_pem_file(key_path, names.read_key)?);
    Ok((cert, key))
}

/// Writes a private key readable by its owner only (0600).
fn write_private_key(key_path: &Path, key_pem: &str, names: KeyFiles) -> Result<(), PkiError> {
    write_file_atomic(key_path, key_pem.as_bytes(), 0o600, names.write_key)
}

/// Parses a private key (PEM) and checks that it is the key of `cert_der`.
fn matching_key(
    key_pem: &str,
    what: &'static str,
    cert_der: &[u8],
    role: &'static str,
) -> Result<KeyPair, PkiError> {
    let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::InvalidPem {
        what,
        reason: e.to_string(),
    })?;
    check_key_matches(cert_der, &key, role)?;
    Ok(key)
}

fn check_key_matches(cert_der: &[u8], key: &KeyPair, what: &'static str) -> Result<(), PkiError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|e| PkiError::InvalidPem {
            what: "the certificate",
            reason: e.to_string(),
        })?;
    if parsed.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
        return Err(PkiError::KeyMismatch { what });
    }
    Ok(())
}

fn parse_certs(pem: &str, what: &'static str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::InvalidPem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PkiError::InvalidPem {
            what,
            reason: "no CERTIFICATE block found".to_owned(),
        });
    }
    Ok(certs)
}

/// A certificate (leaf first, then any intermediates) with its private key:
/// what a node or client presents in the TLS handshake.
#[derive(Clone)]
pub struct Credentials {
    cert_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key_pem: Zeroizing<String>,
    peer: Peer,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("peer", &self.peer)
            .field("key", &"[elided]")
            .finish()
    }
}

impl Credentials {
    /// Parses a certificate chain and its private key (PEM). The leaf must
    /// carry a qk identity and match the key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let chain = parse_certs(cert_pem, "the certificate")?;
        let leaf = chain.first().ok_or_else(|| PkiError::InvalidPem {
            what: "the certificate",
            reason: "no CERTIFICATE block found".to_owned(),
        })?;
        let peer = peer_from_cert_der(leaf)?;
        matching_key(key_pem, "the private key", leaf, "node or client")?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            chain,
            key_pem: Zeroizing::new(key_pem.to_owned()),
            peer,
        })
    }

    /// Reads [`Credentials::from_pem`] from files.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, PkiError> {
        let (cert, key) = read_pem_pair(cert_path, key_path, KeyFiles::LEAF)?;
        Self::from_pem(&cert, &key)
    }

    /// Writes the certificate (0644) and the private key (0600).
    pub fn save(&self, cert_path: &Path, key_path: &Path) -> Result<(), PkiError> {
        write_private_key(key_path, &self.key_pem, KeyFiles::LEAF)?;
        write_file_atomic(
            cert_path,
            self.cert_pem.as_bytes(),
            0o644,
            "write the certificate",
        )
    }

    /// The identity this certificate carries.
    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The private key, PEM.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    pub(crate) fn cert_chain(&self) -> Vec<CertificateDer<'static>> {
        self.chain.clone()
    }

    pub(crate) fn private_key(&self) -> Result<PrivateKeyDer<'static>, PkiError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| PkiError::InvalidPem {
            what: "the private key",
            reason: e.to_string(),
        })
    }
}

fn read_pem_file(path: &Path, what: &'static str) -> Result<String, PkiError> {
    let io = |source| PkiError::Io {
        what,
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > MAX_PEM_FILE_LEN {
        return Err(PkiError::FileTooLarge {
            path: path.to_owned(),
        });
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = meta.permissions().mode();
        if what.contains("private key") && mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format_args!("{mode:o}"),
                "private key file is readable by group or others; chmod 600 it"
            );
        }
    }
    std::fs::read_to_string(path).map_err(io)
}

/// Writes `contents` to a temporary file beside `path` (created 0600), sets
/// `mode`, syncs, and renames it over `path`, so a crash leaves the old file
/// or the new one, never a torn or world-readable key.
fn write_file_atomic(
    path: &Path,
    contents: &[u8],
    mode: u32,
    what: &'static str,
) -> Result<(), PkiError> {
    let io = |source| PkiError::Io {
        what,
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
    tmp.write_all(contents).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        tmp.as_file()
            .set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(io)?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_carry_their_identity() -> Result<(), PkiError> {
        let ca = ClusterCa::generate("test ca")?;
        let node = ca.issue_node(3, &["127.0.0.1", "localhost"])?;
        assert_eq!(node.peer(), &Peer::Node(3));
        let reparsed = Credentials::from_pem(node.cert_pem(), node.key_pem())?;
        assert_eq!(reparsed.peer(), &Peer::Node(3));
        let client = ca.issue_client("ops")?;
        assert_eq!(client.peer(), &Peer::Client("ops".into()));
        assert!(ca.issue_client("bad name").is_err());
        assert!(ca.issue_node(1, &["bad host!"]).is_err());
        Ok(())
    }

    #[test]
    fn mismatched_key_is_refused() -> Result<(), PkiError> {
        let ca = ClusterCa::generate("test ca")?;
        let a = ca.issue_node(1, &[] as &[&str])?;
        let b = ca.issue_node(2, &[] as &[&str])?;
        assert!(matches!(
            Credentials::from_pem(a.cert_pem(), b.key_pem()),
            Err(PkiError::KeyMismatch { .. })
        ));
        let other = ClusterCa::generate("other")?;
        assert!(matches!(
            ClusterCa::from_pem(ca.cert().pem(), other.key_pem()),
            Err(PkiError::KeyMismatch { .. })
        ));
        assert!(matches!(
            CaCert::from_pem(a.cert_pem()),
            Err(PkiError::NotCa)
        ));
        Ok(())
    }

    #[test]
    fn save_and_load_round_trip_with_private_keys_0600() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let ca = ClusterCa::generate("test ca")?;
        let (ca_cert, ca_key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
        ca.save(&ca_cert, &ca_key)?;
        let loaded = ClusterCa::load(&ca_cert, &ca_key)?;
        assert_eq!(loaded.cert().der(), ca.cert().der());
        // The reloaded CA issues certificates that chain to the same root.
        let node = loaded.issue_node(9, &["127.0.0.1"])?;
        let (cert, key) = (dir.path().join("n9.pem"), dir.path().join("n9.key"));
        node.save(&cert, &key)?;
        let back = Credentials::load(&cert, &key)?;
        assert_eq!(back.peer(), &Peer::Node(9));
        assert_eq!(CaCert::load(&ca_cert)?.der(), ca.cert().der());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(
                std::fs::metadata(&ca_key)?.permissions().mode() & 0o777,
                0o600
            );
            assert_eq!(std::fs::metadata(&key)?.permissions().mode() & 0o777, 0o600);
            assert_eq!(
                std::fs::metadata(&cert)?.permissions().mode() & 0o777,
                0o644
            );
        }
        Ok(())
    }
}
