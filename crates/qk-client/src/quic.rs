//! The QUIC client (feature `quic`): the nodes' own transport, for tests
//! and benchmarks that talk to nodes without the HTTPS API.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use qk_crypto::{combine, Ciphertext, CombineMode, PartialDecryption, PublicKeySet};
use qk_net::{CaCert, Credentials, Dialer, NetConfig, NetError};
use qk_raft::{PeerRequest, PeerResponse};
use qk_types::{NodeId, RequestError};
use qk_wire::{ClientRequest, ClientResponse, NodeStatus};
use zeroize::Zeroizing;

use crate::bind_partial;

/// What went wrong, and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("cannot load client credentials: {0}; pass the cluster CA and a client certificate issued by it")]
    Credentials(String),
    #[error("cannot reach {addr}: {source}")]
    Unreachable {
        addr: String,
        #[source]
        source: NetError,
    },
    /// The node refused the request, or the answer cannot be used; the
    /// error's kind says whether to retry.
    #[error("{0}")]
    Refused(RequestError),
    #[error("unexpected answer from {addr}: {detail}")]
    Unexpected { addr: String, detail: String },
    #[error("client-side decryption failed: {reason}; holders said: {holders}")]
    Combine { reason: String, holders: String },
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// A connection to one node of a cluster (any member will do).
#[derive(Clone, Debug)]
pub struct Client {
    dialer: Dialer,
    addr: String,
    /// One connection to `addr`, reused by every call (a handshake per call
    /// would cost more than most requests).
    conn: qk_net::PeerClient,
    /// The highest log index a write through this client was applied at;
    /// every request waits for it (read-your-writes across nodes).
    seen_index: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Client {
    /// Loads the CA and the client's certificate and key (PEM). Must run in a
    /// tokio runtime.
    pub fn connect(
        ca: &Path,
        cert: &Path,
        key: &Path,
        addr: &str,
        timeout: Duration,
    ) -> Result<Client> {
        let ca = CaCert::load(ca).map_err(|e| ClientError::Credentials(e.to_string()))?;
        let creds =
            Credentials::load(cert, key).map_err(|e| ClientError::Credentials(e.to_string()))?;
        let mut cfg = NetConfig::default();
        cfg.request_timeout = timeout;
        let dialer =
            Dialer::new(&ca, &creds, cfg).map_err(|e| ClientError::Credentials(e.to_string()))?;
        Ok(Client::from_dialer(dialer, addr))
    }

    /// Uses an existing endpoint (tests and tools that already hold one).
    pub fn from_dialer(dialer: Dialer, addr: &str) -> Client {
        let conn = dialer.any_node(addr);
        Client {
            dialer,
            addr: addr.to_string(),
            conn,
            seen_index: Default::default(),
        }
    }

    /// Requests from now on wait for at least `index` (seen by another client).
    pub fn observe_index(&self, index: u64) {
        self.seen_index
            .fetch_max(index, std::sync::atomic::Ordering::AcqRel);
    }

    fn seen_index(&self) -> u64 {
        self.seen_index.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Sends one request; a node's `Error` answer becomes `ClientError::Refused`.
    pub async fn call(&self, req: ClientRequest) -> Result<ClientResponse> {
        let request =
            PeerRequest::client_proven(self.seen_index(), req, || self.dialer.session().ok());
        let resp = call_at(&self.conn, &self.addr, &request).await?;
        if let Some(index) = resp.log_index() {
            self.observe_index(index);
        }
        Ok(resp)
    }

    pub async fn status(&self) -> Result<NodeStatus> {
        match self.call(ClientRequest::Status).await? {
            ClientResponse::Status(s) => Ok(s),
            other => Err(self.unexpected(&other)),
        }
    }

    fn unexpected(&self, resp: &ClientResponse) -> ClientError {
        ClientError::Unexpected {
            addr: self.addr.clone(),
            detail: format!("{resp:?}"),
        }
    }

    /// The key set of the ciphertext's key version and its holders, found by key id.
    async fn key_set_for(&self, ct: &Ciphertext) -> Result<(PublicKeySet, Vec<NodeId>)> {
        let ClientResponse::Keys(names) = self.call(ClientRequest::ListKeys).await? else {
            return Err(ClientError::Refused(RequestError::internal(
                "the node did not list its keys",
            )));
        };
        for name in names {
            if let ClientResponse::Key(Some(k)) = self.call(ClientRequest::GetKey { name }).await? {
                if k.id != ct.key_id {
                    continue;
                }
                let version = k.version(ct.version);
                let holders = version.map(|v| v.holders.clone()).unwrap_or_default();
                let bytes = version.and_then(|v| v.public_keys.clone()).ok_or_else(|| {
                    ClientError::Refused(RequestError::conflict(format!(
                        "key {:?} has no usable version {}",
                        k.name, ct.version.0
                    )))
                })?;
                let keys = PublicKeySet::from_bytes(&bytes).map_err(|e| {
                    ClientError::Refused(RequestError::internal(format!(
                        "the replicated key set does not decode: {e}"
                    )))
                })?;
                return Ok((keys, holders));
            }
        }
        Err(ClientError::Refused(RequestError::not_found(format!(
            "no key with id {} in this cluster",
            ct.key_id
        ))))
    }

    /// Client-side combining: asks every member for its partial, verifies
    /// them only if the optimistic combination fails, and combines here.
    pub async fn decrypt_client_side(
        &self,
        text: &str,
        context: BTreeMap<String, String>,
    ) -> Result<Zeroizing<Vec<u8>>> {
        let ct = Ciphertext::from_text(text).map_err(|e| {
            ClientError::Refused(RequestError::invalid(format!(
                "the ciphertext does not decode: {e}"
            )))
        })?;
        let (keys, holders) = self.key_set_for(&ct).await?;
        let members = self.status().await?.addrs;
        let request = PeerRequest::client_after(
            self.seen_index(),
            ClientRequest::Partial {
                ciphertext: text.to_string(),
                context: context.clone(),
                approval: None,
            },
        );
        let answers = futures::future::join_all(members.iter().map(|(id, addr)| {
            let client = self.dialer.node(*id, addr);
            let request = &request;
            async move { (*id, call_at(&client, addr, request).await) }
        }))
        .await;
        let mut partials = Vec::new();
        let mut refusals = Vec::new();
        for (id, answer) in answers {
            match answer {
                Ok(ClientResponse::Partial(bytes)) => match PartialDecryption::from_bytes(&bytes) {
                    Ok(p) => match bind_partial(&holders, id, p) {
                        Ok(p) => partials.push(p),
                        Err(refused) => refusals.push(refused),
                    },
                    Err(e) => refusals.push(format!("node {id}: malformed partial ({e})")),
                },
                Ok(other) => refusals.push(format!("node {id}: unexpected answer {other:?}")),
                Err(e) => refusals.push(format!("node {id}: {e}")),
            }
        }
        combine(&keys, &ct, &context, &partials, CombineMode::Optimistic)
            .map(|out| out.plaintext)
            .map_err(|e| ClientError::Combine {
                reason: e.to_string(),
                holders: refusals.join("; "),
            })
    }
}

async fn call_at(
    client: &qk_net::PeerClient,
    addr: &str,
    req: &PeerRequest,
) -> Result<ClientResponse> {
    match client.call(req).await {
        Ok(PeerResponse::Client(ClientResponse::Error(e))) => Err(ClientError::Refused(e)),
        Ok(PeerResponse::Client(r)) => Ok(r),
        Ok(other) => Err(ClientError::Unexpected {
            addr: addr.to_string(),
            detail: format!("{other:?}"),
        }),
        Err(source) => Err(ClientError::Unreachable {
            addr: addr.to_string(),
            source,
        }),
    }
}
