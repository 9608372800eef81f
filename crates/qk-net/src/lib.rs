//! Quorumkey's transport: mutual-TLS QUIC between nodes and from clients.
//!
//! - [`pki`]: the cluster CA and the node/client certificates it issues.
//! - [`tls`]: rustls configurations (TLS 1.3, cluster CA as the only root,
//!   client certificates required, ALPN `qk/1`) and peer identity.
//! - [`frame`]: one `u32`-length-prefixed request and response per stream,
//!   checked against [`MAX_FRAME_LEN`] before anything is allocated.
//! - [`Server`]: accepts connections and hands each request, with the
//!   verified [`Peer`], to an [`RpcHandler`].
//! - [`Dialer`] / [`PeerClient`]: one reused connection per peer, capped
//!   exponential redial backoff, a timeout on every request.
//! - [`raft`]: openraft's `RaftNetworkFactory` / `RaftNetwork` over the dialer.
//!
//! Architecture invariant: nothing read from the network is trusted before
//! the TLS handshake verified the peer's chain to the cluster CA, and nothing
//! read after it is parsed before its length was checked.
#![forbid(unsafe_code)]

pub mod admission;
pub mod client;
pub mod config;
pub mod error;
pub mod frame;
pub mod identity;
pub mod pki;
pub mod raft;
pub mod server;
pub mod session;
pub mod tls;

pub use client::{Dialer, Expect, PeerClient};
pub use config::NetConfig;
pub use error::NetError;
pub use frame::{FrameError, MAX_FRAME_LEN};
pub use identity::{IdentityError, Peer};
pub use pki::{CaCert, ClusterCa, Credentials, PkiError};
pub use raft::{NetworkFactory, RaftPeer};
pub use server::{BoxFuture, RpcHandler, Server};
pub use session::{GrantVerifier, SessionCache};
