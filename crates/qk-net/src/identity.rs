//! Who is on the other end of a connection, as named by its certificate.
//!
//! Every certificate the cluster CA issues carries exactly one identity URI in
//! its subject alternative names: `qk://node/<id>` for a node,
//! `qk://client/<name>` for a client (administrator, CLI, test, benchmark).
//! The URI is read only after rustls has verified the chain to the cluster CA,
//! so it can be trusted as far as the CA is trusted.

use std::fmt;

use qk_raft::NodeId;
use x509_parser::extensions::GeneralName;

/// URI prefix naming a node in a certificate's SAN.
pub const NODE_URI_PREFIX: &str = "qk://node/";
/// URI prefix naming a client in a certificate's SAN.
pub const CLIENT_URI_PREFIX: &str = "qk://client/";
/// Longest client name accepted. Names end up in logs and audit records; a
/// short bound keeps them readable and bounds what a certificate can inject.
pub const MAX_CLIENT_NAME_LEN: usize = 64;
/// DNS name (SAN) every node certificate carries, used as the TLS server name
/// when a client dials "any node" and does not know which node listens there.
pub const ANY_NODE_SERVER_NAME: &str = "cluster.qk";

/// The TLS server name (a DNS SAN in its certificate) of node `id`.
pub fn node_server_name(id: NodeId) -> String {
    format!("node-{id}.qk")
}

/// The identity a verified certificate carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    /// A cluster member; may send Raft and cluster RPCs.
    Node(NodeId),
    /// A client; may send client requests only (the node layer enforces this).
    Client(String),
}

impl Peer {
    /// The node id, when the peer is a node.
    pub fn node_id(&self) -> Option<NodeId> {
        match self {
            Peer::Node(id) => Some(*id),
            Peer::Client(_) => None,
        }
    }

    /// The SAN URI that names this peer in its certificate.
    pub fn uri(&self) -> String {
        match self {
            Peer::Node(id) => format!("{NODE_URI_PREFIX}{id}"),
            Peer::Client(name) => format!("{CLIENT_URI_PREFIX}{name}"),
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Node(id) => write!(f, "node {id}"),
            Peer::Client(name) => write!(f, "client {name:?}"),
        }
    }
}

/// Why a certificate does not name a usable peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error(
        "the peer presented no certificate; connect with a certificate issued by the cluster CA"
    )]
    NoCertificate,
    #[error(
        "the peer certificate could not be parsed ({0}); reissue it with the cluster CA tools"
    )]
    Unparsable(String),
    #[error(
        "the peer certificate carries no qk:// identity URI; only certificates issued by \
         `ClusterCa::issue_node` / `issue_client` are accepted"
    )]
    Missing,
    #[error(
        "the peer certificate carries more than one qk:// identity URI; reissue it with a \
         single identity"
    )]
    Ambiguous,
    #[error("the peer certificate carries a malformed identity URI {uri:?}: {reason}")]
    Malformed { uri: String, reason: &'static str },
    #[error("invalid client name {name:?}: {reason}")]
    InvalidClientName { name: String, reason: &'static str },
}

/// Checks a client name: 1..=64 characters of `A-Z a-z 0-9 . _ -`.
pub fn validate_client_name(name: &str) -> Result<(), IdentityError> {
    let bad = |reason| {
        Err(IdentityError::InvalidClientName {
            name: name.chars().take(MAX_CLIENT_NAME_LEN + 8).collect(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_CLIENT_NAME_LEN {
        return bad("it is longer than 64 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return bad("use only letters, digits, '.', '_' and '-'");
    }
    if name.starts_with("node-") {
        // `node-N` is how a node signs its own commands; a client
        // certificate with that name would sign as the node.
        return bad("names starting with 'node-' are reserved for cluster nodes");
    }
    Ok(())
}

/// Parses one identity URI. `None` when the URI is not a `qk://` identity.
fn parse_identity_uri(uri: &str) -> Option<Result<Peer, IdentityError>> {
    if let Some(id) = uri.strip_prefix(NODE_URI_PREFIX) {
        // Canonical decimal only, so one node has exactly one spelling.
        let parsed = id.parse::<NodeId>().ok().filter(|n| n.to_string() == id);
        return Some(
            parsed
                .map(Peer::Node)
                .ok_or_else(|| IdentityError::Malformed {
                    uri: uri.chars().take(128).collect(),
                    reason: "the node id is not a canonical decimal u64",
                }),
        );
    }
    if let Some(name) = uri.strip_prefix(CLIENT_URI_PREFIX) {
        return Some(
            validate_client_name(name)
                .map(|()| Peer::Client(name.to_owned()))
                .map_err(|_| IdentityError::Malformed {
                    uri: uri.chars().take(128).collect(),
                    reason: "the client name is empty, too long or has characters outside \
                             A-Z a-z 0-9 . _ -",
                }),
        );
    }
    if uri.starts_with("qk:") {
        return Some(Err(IdentityError::Malformed {
            uri: uri.chars().take(128).collect(),
            reason: "unknown qk identity kind (expected qk://node/<id> or qk://client/<name>)",
        }));
    }
    None
}

/// Reads the peer identity from a DER certificate. Never panics on any input.
pub fn peer_from_cert_der(der: &[u8]) -> Result<Peer, IdentityError> {
    let (_rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| IdentityError::Unparsable(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::Unparsable(e.to_string()))?
        .ok_or(IdentityError::Missing)?;
    let mut found: Option<Peer> = None;
    for name in &san.value.general_names {
        let GeneralName::URI(uri) = name else {
            continue;
        };
        match parse_identity_uri(uri) {
            None => {}
            Some(Err(e)) => return Err(e),
            Some(Ok(peer)) => {
                if found.is_some() {
                    return Err(IdentityError::Ambiguous);
                }
                found = Some(peer);
            }
        }
    }
    found.ok_or(IdentityError::Missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_strictly() {
        assert_eq!(parse_identity_uri("qk://node/7"), Some(Ok(Peer::Node(7))));
        assert!(matches!(parse_identity_uri("qk://node/07"), Some(Err(_))));
        assert!(matches!(parse_identity_uri("qk://node/+7"), Some(Err(_))));
        assert!(matches!(parse_identity_uri("qk://node/"), Some(Err(_))));
        assert!(matches!(
            parse_identity_uri("qk://node/18446744073709551616"),
            Some(Err(_))
        ));
        assert_eq!(
            parse_identity_uri("qk://client/ops-1"),
            Some(Ok(Peer::Client("ops-1".into())))
        );
        assert!(matches!(
            parse_identity_uri("qk://client/a b"),
            Some(Err(_))
        ));
        assert!(matches!(parse_identity_uri("qk://admin/x"), Some(Err(_))));
        // A client may not carry a node's signing name.
        assert!(matches!(
            parse_identity_uri("qk://client/node-1"),
            Some(Err(_))
        ));
        assert!(validate_client_name("node-1").is_err());
        assert!(validate_client_name("nodes").is_ok());
        assert_eq!(parse_identity_uri("https://example.com/"), None);
    }

    #[test]
    fn garbage_certificates_are_errors() {
        assert!(peer_from_cert_der(&[]).is_err());
        assert!(peer_from_cert_der(&[0x30, 0x82, 0xff, 0xff, 0x00]).is_err());
        assert!(peer_from_cert_der(&[0u8; 512]).is_err());
    }
}
