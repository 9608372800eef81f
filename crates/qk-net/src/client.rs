//! The dialing side: one client endpoint per process ([`Dialer`]), one
//! reusable connection per peer ([`PeerClient`]), capped exponential backoff
//! between failed dials, a timeout on every request.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use qk_raft::{decode, encode, NodeId, PeerRequest, PeerResponse};
use quinn::{Connection, Endpoint};
use tokio::time::Instant;
use tracing::debug;

use crate::config::NetConfig;
use crate::error::NetError;
use crate::frame::{check_len, read_frame, write_frame};
use crate::identity::{node_server_name, Peer, ANY_NODE_SERVER_NAME};
use crate::pki::{CaCert, Credentials};
use crate::server::codes;
use crate::tls::{connection_peer, quic_client_config};

/// Which server a [`PeerClient`] accepts at its address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Exactly this node (TLS server name `node-<id>.qk`, identity checked).
    Node(NodeId),
    /// Any node of the cluster (TLS server name `cluster.qk`).
    AnyNode,
}

/// A client endpoint and a pool of per-node clients. Cheap to clone; all
/// clones share the endpoint and the pool.
#[derive(Clone)]
pub struct Dialer {
    inner: Arc<DialerInner>,
}

struct DialerInner {
    endpoint: Endpoint,
    cfg: NetConfig,
    /// Per-node clients, so every user of this dialer shares one connection
    /// per node. At most one entry per node id: bounded by the membership.
    nodes: Mutex<BTreeMap<NodeId, PeerClient>>,
    /// Sessions for decrypts, when `creds` is a client certificate.
    sessions: crate::session::SessionCache,
}

impl fmt::Debug for Dialer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dialer")
            .field("local_addr", &self.inner.endpoint.local_addr().ok())
            .finish()
    }
}

impl Dialer {
    /// Binds a client endpoint on `cfg.client_bind_addr` presenting `creds`
    /// (a node or client certificate) and trusting only `ca`. Must be called
    /// inside a tokio runtime.
    pub fn new(ca: &CaCert, creds: &Credentials, cfg: NetConfig) -> Result<Self, NetError> {
        let client_config = quic_client_config(ca, creds, &cfg)?;
        let addr = cfg.client_bind_addr;
        let socket =
            crate::config::bind_udp(addr).map_err(|source| NetError::Bind { addr, source })?;
        let mut endpoint = Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            socket,
            std::sync::Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| NetError::Bind { addr, source })?;
        endpoint.set_default_client_config(client_config);
        Ok(Self {
            inner: Arc::new(DialerInner {
                endpoint,
                cfg,
                nodes: Mutex::new(BTreeMap::new()),
                sessions: crate::session::SessionCache::new(creds.clone()),
            }),
        })
    }

    /// The current session of this endpoint's client certificate: the
    /// credential a decrypt hands to the node so it can sign as the caller.
    /// An error for a node certificate (a node is no principal).
    pub fn session(&self) -> Result<qk_state::proof::Credential, crate::pki::PkiError> {
        self.inner.sessions.current()
    }

    /// The pooled client for node `id` at `addr` (`host:port`). Reuses the
    /// existing client, and so its connection, unless the address changed.
    pub fn node(&self, id: NodeId, addr: &str) -> PeerClient {
        let mut nodes = self
            .inner
            .nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(client) = nodes.get(&id) {
            if client.inner.addr == addr {
                return client.clone();
            }
        }
        let client = self.client(Expect::Node(id), addr);
        if let Some(old) = nodes.insert(id, client.clone()) {
            old.close();
        }
        client
    }

    /// A new (not pooled) client for whichever node listens at `addr`.
    pub fn any_node(&self, addr: &str) -> PeerClient {
        self.client(Expect::AnyNode, addr)
    }

    /// A new (not pooled) client with an explicit expectation.
    pub fn client(&self, expect: Expect, addr: &str) -> PeerClient {
        PeerClient {
            inner: Arc::new(ClientInner {
                endpoint: self.inner.endpoint.clone(),
                cfg: self.inner.cfg.clone(),
                addr: addr.to_owned(),
                expect,
                state: tokio::sync::Mutex::new(ConnState::default()),
            }),
        }
    }

    /// Drops node `id` from the pool and closes its connection (e.g. after
    /// it left the cluster).
    pub fn forget_node(&self, id: NodeId) {
        let removed = self
            .inner
            .nodes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        if let Some(client) = removed {
            client.close();
        }
    }

    pub fn config(&self) -> &NetConfig {
        &self.inner.cfg
    }

    pub fn local_addr(&self) -> Result<SocketAddr, NetError> {
        let addr = self.inner.cfg.client_bind_addr;
        self.inner
            .endpoint
            .local_addr()
            .map_err(|source| NetError::Bind { addr, source })
    }

    /// Closes every connection of this endpoint (all clones) and waits
    /// briefly for peers to be told.
    pub async fn close(&self) {
        self.inner.endpoint.close(codes::CLOSED, b"client closing");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.endpoint.wait_idle()).await;
    }
}

#[derive(Default)]
struct ConnState {
    conn: Option<(Connection, Peer)>,
    /// Consecutive failed dials.
    failures: u32,
    /// No dial before this instant (backoff).
    retry_at: Option<Instant>,
    last_error: String,
}

struct ClientInner {
    endpoint: Endpoint,
    cfg: NetConfig,
    addr: String,
    expect: Expect,
    state: tokio::sync::Mutex<ConnState>,
}

/// Sends requests to one peer over one reused connection. Cheap to clone.
#[derive(Clone)]
pub struct PeerClient {
    inner: Arc<ClientInner>,
}

impl fmt::Debug for PeerClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerClient")
            .field("addr", &self.inner.addr)
            .field("expect", &self.inner.expect)
            .finish()
    }
}

impl PeerClient {
    /// The address this client dials.
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    pub fn expect(&self) -> &Expect {
        &self.inner.expect
    }

    /// The identity of the currently connected peer, if connected.
    pub async fn connected_peer(&self) -> Option<Peer> {
        let state = self.inner.state.lock().await;
        match &state.conn {
            Some((conn, peer)) if conn.close_reason().is_none() => Some(peer.clone()),
            _ => None,
        }
    }

    /// Sends `req` and waits for the answer, within `NetConfig::request_timeout`.
    pub async fn call(&self, req: &PeerRequest) -> Result<PeerResponse, NetError> {
        self.call_with_timeout(req, self.inner.cfg.request_timeout)
            .await
    }

    /// Sends `req` and waits for the answer, within `timeout` (which covers
    /// dialing too). A request that failed after it was sent may or may not
    /// have been handled; it is not retried here.
    pub async fn call_with_timeout(
        &self,
        req: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, NetError> {
        let addr = &self.inner.addr;
        let body = encode(req).map_err(|source| NetError::Codec {
            addr: addr.clone(),
            source,
        })?;
        check_len(body.len() as u64).map_err(|source| NetError::Frame {
            addr: addr.clone(),
            source,
        })?;
        match tokio::time::timeout(timeout, self.exchange(&body)).await {
            Ok(result) => result,
            Err(_) => Err(NetError::Timeout {
                addr: addr.clone(),
                after: timeout,
            }),
        }
    }

    /// Closes the current connection, if any; the next call redials.
    pub fn close(&self) {
        if let Ok(mut state) = self.inner.state.try_lock() {
            if let Some((conn, _)) = state.conn.take() {
                conn.close(codes::CLOSED, b"client closing");
            }
        }
    }

    async fn exchange(&self, body: &[u8]) -> Result<PeerResponse, NetError> {
        let addr = &self.inner.addr;
        let frame_err = |source| NetError::Frame {
            addr: addr.clone(),
            source,
        };
        // Opening a stream sends nothing, so a connection found dead at that
        // point is redialed once and the request is still sent only once.
        let mut attempt = 0;
        let (conn, mut send, mut recv) = loop {
            let conn = self.connection().await?;
            match conn.open_bi().await {
                Ok((send, recv)) => break (conn, send, recv),
                Err(source) => {
                    self.forget(&conn).await;
                    attempt += 1;
                    if attempt >= 2 {
                        return Err(NetError::Connection {
                            addr: addr.clone(),
                            source,
                        });
                    }
                }
            }
        };
        let result = async {
            write_frame(&mut send, body).await.map_err(frame_err)?;
            send.finish()
                .map_err(|_| frame_err(crate::frame::FrameError::Closed))?;
            let response = read_frame(&mut recv).await.map_err(frame_err)?;
            decode::<PeerResponse>(&response).map_err(|source| NetError::Codec {
                addr: addr.clone(),
                source,
            })
        }
        .await;
        if let Err(NetError::Frame { source, .. }) = &result {
            if let Some(lost) = source.connection_error().cloned() {
                self.forget(&conn).await;
                // Report the connection's own error (e.g. the server refused
                // our certificate, or restarted), not just "connection lost".
                return Err(NetError::Connection {
                    addr: addr.clone(),
                    source: lost,
                });
            }
        }
        result
    }

    /// Drops `conn` if it is still the current connection.
    async fn forget(&self, conn: &Connection) {
        let mut state = self.inner.state.lock().await;
        if let Some((current, _)) = &state.conn {
            if current.stable_id() == conn.stable_id() {
                state.conn = None;
            }
        }
    }

    /// The live connection, dialing if there is none and backoff allows.
    async fn connection(&self) -> Result<Connection, NetError> {
        let mut state = self.inner.state.lock().await;
        if let Some((conn, _)) = &state.conn {
            if conn.close_reason().is_none() {
                return Ok(conn.clone());
            }
            debug!(addr = %self.inner.addr, "connection closed; redialing");
            state.conn = None;
        }
        if let Some(at) = state.retry_at {
            let now = Instant::now();
            if now < at {
                return Err(NetError::Backoff {
                    addr: self.inner.addr.clone(),
                    retry_in: at - now,
                    last_error: state.last_error.clone(),
                });
            }
        }
        match self.dial().await {
            Ok((conn, peer)) => {
                debug!(addr = %self.inner.addr, %peer, "connected");
                state.failures = 0;
                state.retry_at = None;
                state.last_error.clear();
                state.conn = Some((conn.clone(), peer));
                Ok(conn)
            }
            Err(e) => {
                state.failures = state.failures.saturating_add(1);
                let delay = self.inner.cfg.backoff_delay(state.failures);
                state.retry_at = Some(Instant::now() + delay);
                state.last_error = e.to_string();
                debug!(addr = %self.inner.addr, error = %e, ?delay, "dial failed; backing off");
                Err(e)
            }
        }
    }

    async fn dial(&self) -> Result<(Connection, Peer), NetError> {
        let inner = &self.inner;
        let addr = &inner.addr;
        let target = resolve(&inner.endpoint, addr).await?;
        let server_name = match inner.expect {
            Expect::Node(id) => node_server_name(id),
            Expect::AnyNode => ANY_NODE_SERVER_NAME.to_owned(),
        };
        let connecting = inner
            .endpoint
            .connect(target, &server_name)
            .map_err(|source| NetError::Connect {
                addr: addr.clone(),
                source,
            })?;
        let conn = match tokio::time::timeout(inner.cfg.connect_timeout, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(source)) => {
                return Err(NetError::Connection {
                    addr: addr.clone(),
                    source,
                })
            }
            Err(_) => {
                return Err(NetError::ConnectTimeout {
                    addr: addr.clone(),
                    after: inner.cfg.connect_timeout,
                })
            }
        };
        let peer = match connection_peer(&conn) {
            Ok(peer) => peer,
            Err(source) => {
                conn.close(codes::IDENTITY_REFUSED, b"certificate identity refused");
                return Err(NetError::Identity {
                    addr: addr.clone(),
                    source,
                });
            }
        };
        let acceptable = match (&inner.expect, &peer) {
            (Expect::Node(want), Peer::Node(got)) => want == got,
            (Expect::AnyNode, Peer::Node(_)) => true,
            (_, Peer::Client(_)) => false,
        };
        if !acceptable {
            conn.close(codes::IDENTITY_REFUSED, b"unexpected peer identity");
            let wanted = match inner.expect {
                Expect::Node(id) => format!("node {id}"),
                Expect::AnyNode => "a node".to_owned(),
            };
            return Err(NetError::WrongPeer {
                addr: addr.clone(),
                reason: format!("expected {wanted}, the certificate names {peer}"),
            });
        }
        Ok((conn, peer))
    }
}

/// Resolves `host:port`, preferring an address of the local endpoint's family.
async fn resolve(endpoint: &Endpoint, addr: &str) -> Result<SocketAddr, NetError> {
    let err = |reason: String| NetError::Resolve {
        addr: addr.to_owned(),
        reason,
    };
    if let Ok(sock) = addr.parse::<SocketAddr>() {
        return Ok(sock);
    }
    let found: Vec<SocketAddr> = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| err(e.to_string()))?
        .take(16)
        .collect();
    let want_v4 = endpoint.local_addr().map(|a| a.is_ipv4()).unwrap_or(true);
    found
        .iter()
        .find(|a| a.is_ipv4() == want_v4)
        .or_else(|| found.first())
        .copied()
        .ok_or_else(|| err("no addresses found".to_owned()))
}
