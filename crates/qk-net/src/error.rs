//! Transport errors.

use std::net::SocketAddr;
use std::time::Duration;

use qk_raft::CodecError;

use crate::frame::FrameError;
use crate::identity::IdentityError;
use crate::pki::PkiError;

/// What failed in the transport. Each message says what failed and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    #[error("{0}")]
    Pki(#[from] PkiError),
    #[error(
        "could not build the TLS configuration: {0}; check that the certificate and key were \
         issued by the cluster CA tools"
    )]
    Tls(#[from] rustls::Error),
    #[error("could not build the TLS certificate verifier: {0}; check the cluster CA certificate")]
    Verifier(String),
    #[error("{0}")]
    Config(String),
    #[error(
        "could not bind the QUIC endpoint on {addr}: {source}; check that the address is local \
         and the port is free"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("could not resolve {addr:?}: {reason}; check the address (host:port)")]
    Resolve { addr: String, reason: String },
    #[error("could not start a connection to {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: quinn::ConnectError,
    },
    #[error(
        "connection to {addr} failed: {source}; check that the node is running at that address \
         and that both sides hold certificates from the same cluster CA"
    )]
    Connection {
        addr: String,
        #[source]
        source: quinn::ConnectionError,
    },
    #[error(
        "no answer from {addr} within {after:?} while connecting; check that the node is running \
         and that the address and UDP port are right and reachable"
    )]
    ConnectTimeout { addr: String, after: Duration },
    #[error("{addr} is not the expected peer ({reason}); check the cluster membership addresses")]
    WrongPeer { addr: String, reason: String },
    #[error("{addr} presented an unusable certificate identity: {source}")]
    Identity {
        addr: String,
        #[source]
        source: IdentityError,
    },
    #[error(
        "{addr} is unreachable (last error: {last_error}); the next dial is allowed in \
         {retry_in:?}, retry then"
    )]
    Backoff {
        addr: String,
        retry_in: Duration,
        last_error: String,
    },
    #[error(
        "request to {addr} timed out after {after:?}; the peer may be overloaded or cut off, \
         retry later"
    )]
    Timeout { addr: String, after: Duration },
    #[error("request to {addr} failed: {source}")]
    Frame {
        addr: String,
        #[source]
        source: FrameError,
    },
    #[error("request to {addr}: {source}")]
    Codec {
        addr: String,
        #[source]
        source: CodecError,
    },
    #[error("the local endpoint is closed; create a new Dialer")]
    Closed,
}

impl NetError {
    /// Whether the peer could not be reached at all (dial failed, connection
    /// lost, backing off, timed out, wrong identity): a caller should wait
    /// before retrying. Other errors concern one request's contents.
    pub fn is_unreachable(&self) -> bool {
        match self {
            NetError::Resolve { .. }
            | NetError::Connect { .. }
            | NetError::Connection { .. }
            | NetError::ConnectTimeout { .. }
            | NetError::WrongPeer { .. }
            | NetError::Identity { .. }
            | NetError::Backoff { .. }
            | NetError::Timeout { .. }
            | NetError::Closed => true,
            NetError::Frame { source, .. } => source.is_connection_lost(),
            _ => false,
        }
    }

    /// Whether the request was too large to send as one frame.
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            NetError::Frame {
                source: FrameError::TooLarge { .. },
                ..
            }
        )
    }
}
