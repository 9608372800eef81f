//! Clients for Quorumkey nodes, with client-side combining: the client
//! gathers partial decryptions from the holders and combines them itself,
//! so no node sees the plaintext.
//!
//! [`http`] is the HTTPS client for the native API (docs/API.md) that the
//! `qk` CLI uses; [`views`] holds its JSON views. With the feature `quic`,
//! [`Client`] talks to nodes over their own mutual-TLS QUIC transport
//! (tests and benchmarks); without it this crate does not use qk-raft
//! itself (it still reaches openraft and quinn through qk-net, whose
//! session cache the HTTPS client signs with).
#![forbid(unsafe_code)]

pub mod http;
#[cfg(feature = "quic")]
mod quic;
pub use qk_views as views;
#[cfg(feature = "quic")]
pub use quic::{Client, ClientError, Result};

use qk_crypto::PartialDecryption;
use qk_types::{NodeId, ShareIndex};

/// A partial counts only for the share index its sender holds: a node that
/// claims another holder's index is ignored and named, and the honest
/// holder's partial still counts (the combiner keeps the first valid one).
pub(crate) fn bind_partial(
    holders: &[NodeId],
    from: u64,
    partial: PartialDecryption,
) -> std::result::Result<PartialDecryption, String> {
    match ShareIndex::of_holder(holders, NodeId(from)) {
        Some(index) if index == partial.index => Ok(partial),
        Some(index) => Err(format!(
            "node {from}: sent a partial for share index {} but holds index {}; ignored",
            partial.index.get(),
            index.get()
        )),
        None => Err(format!(
            "node {from}: not a holder of this key version; its partial is ignored"
        )),
    }
}
