//! Mutual TLS 1.3 for QUIC (rustls, ring provider).
//!
//! The cluster CA is the only trust root on both sides. Servers require a
//! client certificate chained to it ([`WebPkiClientVerifier`]); clients verify
//! the server certificate against it and against the server name:
//! `node-<id>.qk` when dialing node `id` (so a node presenting another id
//! fails the handshake) or `cluster.qk` when dialing any node. After the
//! handshake [`connection_peer`] reads the verified identity.

use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, TransportConfig, VarInt};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

use crate::config::NetConfig;
use crate::error::NetError;
use crate::identity::{peer_from_cert_der, IdentityError, Peer};
use crate::pki::{CaCert, Credentials};

/// ALPN protocol id of this protocol version. A peer speaking another
/// version fails the handshake instead of misreading frames.
pub const ALPN: &[u8] = b"qk/1";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &CaCert) -> Result<Arc<RootCertStore>, NetError> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone())?;
    Ok(Arc::new(roots))
}

/// rustls server configuration: TLS 1.3 only, client certificates required
/// and chained to the cluster CA, ALPN `qk/1`.
pub fn server_tls_config(
    ca: &CaCert,
    creds: &Credentials,
) -> Result<rustls::ServerConfig, NetError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider())
        .build()
        .map_err(|e| NetError::Verifier(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(creds.cert_chain(), creds.private_key()?)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    // No 0-RTT: replayable early data has no place in Raft or custody RPCs.
    config.max_early_data_size = 0;
    Ok(config)
}

/// rustls client configuration: TLS 1.3 only, trusts only the cluster CA,
/// presents `creds`, ALPN `qk/1`.
pub fn client_tls_config(
    ca: &CaCert,
    creds: &Credentials,
) -> Result<rustls::ClientConfig, NetError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(creds.cert_chain(), creds.private_key()?)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    config.enable_early_data = false;
    Ok(config)
}

/// QUIC transport parameters from `cfg`.
pub fn transport_config(cfg: &NetConfig) -> Result<TransportConfig, NetError> {
    let mut t = TransportConfig::default();
    let idle = IdleTimeout::try_from(cfg.idle_timeout).map_err(|_| {
        NetError::Config(format!(
            "idle_timeout {:?} is too large for QUIC; use a few seconds",
            cfg.idle_timeout
        ))
    })?;
    t.max_idle_timeout(Some(idle));
    t.keep_alive_interval(Some(cfg.keep_alive_interval));
    t.max_concurrent_bidi_streams(VarInt::from_u32(cfg.max_concurrent_streams));
    // Requests use bidirectional streams only.
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    Ok(t)
}

/// quinn server configuration (see [`server_tls_config`]).
pub fn quic_server_config(
    ca: &CaCert,
    creds: &Credentials,
    cfg: &NetConfig,
) -> Result<quinn::ServerConfig, NetError> {
    let tls = server_tls_config(ca, creds)?;
    let quic = QuicServerConfig::try_from(tls).map_err(|e| NetError::Config(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(Arc::new(transport_config(cfg)?));
    Ok(server)
}

/// quinn client configuration (see [`client_tls_config`]).
pub fn quic_client_config(
    ca: &CaCert,
    creds: &Credentials,
    cfg: &NetConfig,
) -> Result<quinn::ClientConfig, NetError> {
    let tls = client_tls_config(ca, creds)?;
    let quic = QuicClientConfig::try_from(tls).map_err(|e| NetError::Config(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(Arc::new(transport_config(cfg)?));
    Ok(client)
}

/// The verified identity of the other end of an established connection.
pub fn connection_peer(conn: &quinn::Connection) -> Result<Peer, IdentityError> {
    let identity = conn.peer_identity().ok_or(IdentityError::NoCertificate)?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| IdentityError::NoCertificate)?;
    let leaf = chain.first().ok_or(IdentityError::NoCertificate)?;
    peer_from_cert_der(leaf)
}
