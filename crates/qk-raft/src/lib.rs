//! openraft type configuration, command batching, and the frames nodes
//! exchange (Raft RPCs, protocol messages, and client messages from
//! `qk-wire` wrapped for transport).
//!
//! Raft RPCs and client requests share one framed request/response protocol
//! over mutual-TLS QUIC (`qk-net`). Bodies are postcard-encoded; decoding is
//! bounded by the frame limit before parsing.
#![forbid(unsafe_code)]

use std::io::Cursor;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use qk_state::{Command, Response};
use qk_wire::{ClientRequest, ClientResponse};
use serde::{Deserialize, Serialize};

pub use qk_wire::{NodeId, QkNode};

/// The payload of one Raft log entry: client commands applied in order.
///
/// Concurrent writes reaching the leader are proposed together, so one log
/// append (and one fsync on every node) commits many commands; openraft 0.9
/// flushes each entry before it takes the next client write. Each command
/// keeps its own request id, audit record and response.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Batch(pub Vec<Command>);

/// The responses to a [`Batch`], one per command, in the same order.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BatchResponse(pub Vec<Response>);

openraft::declare_raft_types!(
    /// Quorumkey's Raft types: batches of commands in, their responses out.
    pub TypeConfig:
        D = Batch,
        R = BatchResponse,
        NodeId = NodeId,
        Node = QkNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;

/// Every request that travels between nodes or from clients.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerRequest {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    Client(ClientRequest),
    /// An encoded `qk_protocol::ProtocolMessage` between nodes.
    Protocol(Vec<u8>),
    /// A client request decided only once the node has applied log index
    /// `min_applied` (the highest index the client has seen): read-your-writes
    /// across nodes. A node that stays behind answers an error saying so.
    ClientAfter {
        min_applied: u64,
        request: ClientRequest,
    },
    /// A client request with the caller's signing credential (a session key
    /// its client certificate granted): the node signs each decrypt the
    /// request makes with it, so that every holder sees the caller's own
    /// proof. Decided once the node applied `min_applied`, like `ClientAfter`.
    ClientProven {
        min_applied: u64,
        credential: qk_state::proof::Credential,
        request: ClientRequest,
    },
}

impl PeerRequest {
    /// A client request decided once the node applied `min_applied` (0: at once).
    pub fn client_after(min_applied: u64, request: ClientRequest) -> PeerRequest {
        if min_applied == 0 {
            PeerRequest::Client(request)
        } else {
            PeerRequest::ClientAfter {
                min_applied,
                request,
            }
        }
    }

    /// As [`PeerRequest::client_after`], handing over the caller's session
    /// when the request decrypts or writes (and a session is at hand).
    pub fn client_proven(
        min_applied: u64,
        request: ClientRequest,
        session: impl FnOnce() -> Option<qk_state::proof::Credential>,
    ) -> PeerRequest {
        match request.needs_credential().then(session).flatten() {
            Some(credential) => PeerRequest::ClientProven {
                min_applied,
                credential,
                request,
            },
            None => PeerRequest::client_after(min_applied, request),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub enum PeerResponse {
    /// A protocol message was accepted for processing.
    ProtocolAccepted,
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Client(ClientResponse),
    /// The request was refused before reaching Raft (wrong peer kind, bad frame).
    Refused(String),
}

/// Encoding failures of RPC bodies.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    #[error("could not encode an RPC message: {0}")]
    Encode(String),
    #[error(
        "could not decode an RPC message (corrupt, truncated or from an incompatible version): {0}"
    )]
    Decode(String),
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    postcard::to_allocvec(value).map_err(|e| CodecError::Encode(e.to_string()))
}

pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, CodecError> {
    postcard::from_bytes(bytes).map_err(|e| CodecError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use qk_types::{ErrorKind, RequestError};

    #[test]
    fn a_forwarded_refusal_keeps_its_kind() {
        for kind in ErrorKind::ALL {
            let sent = PeerResponse::Client(ClientResponse::Error(RequestError::new(
                kind,
                "no leader; retry",
            )));
            let got: PeerResponse = decode(&encode(&sent).expect("encodes")).expect("decodes");
            let PeerResponse::Client(ClientResponse::Error(e)) = got else {
                panic!("{got:?}");
            };
            assert_eq!(e.kind, kind);
        }
    }
}
