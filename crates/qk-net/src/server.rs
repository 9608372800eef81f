//! The accepting side: a quinn endpoint that authenticates peers by
//! certificate and answers one framed request per bidirectional stream.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use qk_raft::{decode, encode, PeerRequest, PeerResponse};
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::admission::{AddressSlots, KeyedSlots};
use crate::config::NetConfig;
use crate::error::NetError;
use crate::frame::{
    read_frame_body_within, read_frame_header, write_frame, FrameError, Reservation,
};
use crate::identity::Peer;
use crate::pki::{CaCert, Credentials};
use crate::tls::{connection_peer, quic_server_config};

/// A boxed, `Send` future (what [`RpcHandler::handle`] returns).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Answers requests. Called once per request stream, concurrently; `peer` is
/// the identity verified from the peer's certificate. The handler decides
/// what each kind of peer may do (Raft RPCs only from [`Peer::Node`]).
pub trait RpcHandler: Send + Sync + 'static {
    fn handle(&self, peer: Peer, req: PeerRequest) -> BoxFuture<'_, PeerResponse>;
}

/// QUIC application error codes this crate closes connections and streams with.
pub mod codes {
    use quinn::VarInt;
    /// Normal close (server shutdown, client done).
    pub const CLOSED: VarInt = VarInt::from_u32(0);
    /// The certificate names no usable identity, or not the expected one.
    pub const IDENTITY_REFUSED: VarInt = VarInt::from_u32(1);
    /// The request frame exceeded the size limit.
    pub const FRAME_TOO_LARGE: VarInt = VarInt::from_u32(2);
    /// The request was not finished in time.
    pub const TIMEOUT: VarInt = VarInt::from_u32(3);
    /// The request-byte budget (or the clients' share of the connections)
    /// was full; the request may be sent again.
    pub const BUSY: VarInt = VarInt::from_u32(4);
}

/// A running server. Dropping it closes the endpoint at once; call
/// [`Server::shutdown`] to let in-flight requests finish first.
pub struct Server {
    endpoint: Endpoint,
    local_addr: SocketAddr,
    shutdown_tx: watch::Sender<bool>,
    accept_task: Option<JoinHandle<()>>,
    /// Every connection and request task holds a clone; when all are gone
    /// `tasks_done` yields `None`.
    tasks_alive: Option<mpsc::Sender<()>>,
    tasks_done: mpsc::Receiver<()>,
    grace: Duration,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

struct Shared {
    handler: Arc<dyn RpcHandler>,
    cfg: NetConfig,
    connections: Arc<Semaphore>,
    /// Connections clients may hold: `max_connections` less the nodes'
    /// reserve.
    client_connections: Arc<Semaphore>,
    addresses: Arc<AddressSlots>,
    /// Handshakes in progress per address.
    handshakes: Arc<AddressSlots>,
    /// Requests in flight per client name.
    client_requests: Arc<KeyedSlots<String>>,
    /// Bytes of request bodies held now, one budget for the cluster's nodes
    /// (Raft and protocol traffic) and one for clients, so clients can never
    /// hold back the cluster's own traffic.
    node_request_bytes: Arc<Semaphore>,
    client_request_bytes: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
}

/// Label for deriving the stateless-reset key from the node's private key.
const RESET_KEY_LABEL: &[u8] = b"qk-net/quic-stateless-reset/v1";

/// A stateless-reset key that survives restarts: derived from the node's
/// private key, so after a crash and restart the node can reset connections
/// peers still hold from its previous run and they redial at once instead of
/// waiting for the idle timeout. Anyone able to forge it holds the node key.
fn reset_key(creds: &Credentials) -> Result<ring::hmac::Key, NetError> {
    let key = creds.private_key()?;
    let master = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.secret_der());
    let derived = ring::hmac::sign(&master, RESET_KEY_LABEL);
    Ok(ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        derived.as_ref(),
    ))
}

/// Length of the connection ids this server issues (quinn's default).
const CID_LEN: usize = 8;

/// Random connection ids that any run of this server treats as possibly its
/// own. quinn's default generator ties ids to a per-process key, so a
/// restarted server would drop the packets of its previous run silently
/// instead of answering them with a stateless reset.
struct RandomCids {
    rng: ring::rand::SystemRandom,
    fallback_counter: u64,
}

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        let mut cid = [0u8; CID_LEN];
        if ring::rand::SecureRandom::fill(&self.rng, &mut cid).is_err() {
            // The OS RNG failed (TLS will fail too); stay unique at least.
            self.fallback_counter = self.fallback_counter.wrapping_add(1);
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            ctx.update(&self.fallback_counter.to_le_bytes());
            ctx.update(&nanos.to_le_bytes());
            let digest = ctx.finish();
            for (out, byte) in cid.iter_mut().zip(digest.as_ref()) {
                *out = *byte;
            }
        }
        quinn::ConnectionId::new(&cid)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

impl Server {
    /// Binds `addr` (port 0 picks a free port) and starts serving. `creds`
    /// must be a node certificate. Must be called inside a tokio runtime.
    pub async fn bind(
        addr: SocketAddr,
        ca: &CaCert,
        creds: &Credentials,
        cfg: NetConfig,
        handler: Arc<dyn RpcHandler>,
    ) -> Result<Server, NetError> {
        if !matches!(creds.peer(), Peer::Node(_)) {
            return Err(NetError::Config(format!(
                "a server needs a node certificate, got one for {}; issue one with \
                 ClusterCa::issue_node",
                creds.peer()
            )));
        }
        if cfg.max_connections == 0
            || cfg.max_connections_per_address == 0
            || cfg.max_inflight_request_bytes == 0
        {
            return Err(NetError::Config(
                "max_connections, max_connections_per_address and max_inflight_request_bytes \
                 must be at least 1"
                    .to_owned(),
            ));
        }
        if cfg.node_reserved_connections >= cfg.max_connections {
            return Err(NetError::Config(format!(
                "node_reserved_connections ({}) must be below max_connections ({}), or no \
                 client could connect",
                cfg.node_reserved_connections, cfg.max_connections
            )));
        }
        let server_config = quic_server_config(ca, creds, &cfg)?;
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_key(creds)?));
        endpoint_config.cid_generator(|| {
            Box::new(RandomCids {
                rng: ring::rand::SystemRandom::new(),
                fallback_counter: 0,
            })
        });
        let socket =
            crate::config::bind_udp(addr).map_err(|source| NetError::Bind { addr, source })?;
        let endpoint = Endpoint::new(
            endpoint_config,
            Some(server_config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| NetError::Bind { addr, source })?;
        let local_addr = endpoint
            .local_addr()
            .map_err(|source| NetError::Bind { addr, source })?;

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (alive_tx, tasks_done) = mpsc::channel(1);
        let grace = cfg.shutdown_grace;
        let shared = Arc::new(Shared {
            handler,
            connections: Arc::new(Semaphore::new(cfg.max_connections)),
            client_connections: Arc::new(Semaphore::new(
                cfg.max_connections
                    .saturating_sub(cfg.node_reserved_connections),
            )),
            addresses: AddressSlots::new(cfg.max_connections_per_address),
            handshakes: AddressSlots::new(cfg.max_handshakes_per_address),
            client_requests: KeyedSlots::new(cfg.max_requests_per_client),
            node_request_bytes: Arc::new(Semaphore::new(half_budget(&cfg))),
            client_request_bytes: Arc::new(Semaphore::new(half_budget(&cfg))),
            cfg,
            shutdown: shutdown_rx,
            alive: alive_tx.clone(),
        });
        let accept_task = tokio::spawn(accept_loop(endpoint.clone(), shared));
        info!(%local_addr, "qk-net server listening");
        Ok(Server {
            endpoint,
            local_addr,
            shutdown_tx,
            accept_task: Some(accept_task),
            tasks_alive: Some(alive_tx),
            tasks_done,
            grace,
        })
    }

    /// The bound address (the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections and streams, gives in-flight requests up
    /// to `NetConfig::shutdown_grace` to finish, then closes every connection
    /// (peers see a normal close and redial) and releases the socket.
    pub async fn shutdown(mut self) {
        // New handshakes are refused from here on.
        self.endpoint.set_server_config(None);
        let _ = self.shutdown_tx.send(true);
        if let Some(task) = self.accept_task.take() {
            let _ = task.await;
        }
        self.tasks_alive = None;
        let drained = tokio::time::timeout(self.grace, self.tasks_done.recv()).await;
        if drained.is_err() {
            warn!(grace = ?self.grace, "requests still running at shutdown were cut off");
        }
        self.endpoint.close(codes::CLOSED, b"server shutting down");
        // Bounded: wait_idle lasts a few round trips while peers are told.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        info!(local_addr = %self.local_addr, "qk-net server stopped");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.shutdown_tx.send(true);
        if let Some(task) = self.accept_task.take() {
            task.abort();
        }
        self.endpoint.close(codes::CLOSED, b"server shutting down");
    }
}

/// Each of the two request-byte budgets: half of `max_inflight_request_bytes`
/// (at least one byte).
fn half_budget(cfg: &NetConfig) -> usize {
    (cfg.max_inflight_request_bytes / 2).clamp(1, Semaphore::MAX_PERMITS)
}

async fn accept_loop(endpoint: Endpoint, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let incoming = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            incoming = endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else { break };
        // A client whose address is not validated yet gets a stateless Retry
        // (no state kept, no slot taken); it comes back with a token.
        if !incoming.remote_address_validated() && incoming.may_retry() {
            if let Err(e) = incoming.retry() {
                e.into_incoming().ignore();
            }
            continue;
        }
        let remote = incoming.remote_address();
        let Some(address_slot) = shared.addresses.try_take(remote.ip()) else {
            warn!(
                %remote,
                max = shared.cfg.max_connections_per_address,
                "refusing connection: too many connections from this address"
            );
            incoming.refuse();
            continue;
        };
        let Some(handshake_slot) = shared.handshakes.try_take(remote.ip()) else {
            warn!(
                %remote,
                max = shared.cfg.max_handshakes_per_address,
                "refusing connection: too many handshakes in progress from this address"
            );
            incoming.refuse();
            continue;
        };
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            warn!(
                remote = %incoming.remote_address(),
                max = shared.cfg.max_connections,
                "refusing connection: too many connections"
            );
            incoming.refuse();
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = (permit, address_slot);
            let _alive = shared.alive.clone();
            let connecting = match incoming.accept() {
                Ok(c) => c,
                Err(e) => {
                    debug!(%remote, error = %e, "incoming connection failed");
                    return;
                }
            };
            let handshake = tokio::time::timeout(shared.cfg.connect_timeout, connecting).await;
            drop(handshake_slot);
            let conn = match handshake {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    // Includes peers whose certificate does not chain to the CA.
                    info!(%remote, error = %e, "handshake failed");
                    return;
                }
                Err(_) => {
                    info!(%remote, "handshake timed out");
                    return;
                }
            };
            let peer = match connection_peer(&conn) {
                Ok(peer) => peer,
                Err(e) => {
                    warn!(%remote, error = %e, "refusing connection: bad certificate identity");
                    conn.close(codes::IDENTITY_REFUSED, b"certificate identity refused");
                    return;
                }
            };
            let _client_slot = match &peer {
                Peer::Node(_) => None,
                Peer::Client(_) => match shared.client_connections.clone().try_acquire_owned() {
                    Ok(slot) => Some(slot),
                    Err(_) => {
                        warn!(%remote, %peer, "refusing connection: the clients' share of the connections is taken");
                        conn.close(codes::BUSY, b"too many client connections; retry later");
                        return;
                    }
                },
            };
            debug!(%remote, %peer, "connection accepted");
            serve_connection(conn, peer, shared).await;
        });
    }
    debug!("accept loop stopped");
}

async fn serve_connection(conn: Connection, peer: Peer, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let stream = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            stream = conn.accept_bi() => stream,
        };
        match stream {
            Ok((send, recv)) => {
                let shared = shared.clone();
                let peer = peer.clone();
                tokio::spawn(async move {
                    let _alive = shared.alive.clone();
                    serve_stream(peer, send, recv, &shared).await;
                });
            }
            Err(e) => {
                debug!(%peer, reason = %e, "connection ended");
                break;
            }
        }
    }
}

/// Best effort: tell the peer why its request was refused, then finish.
async fn refuse(send: &mut SendStream, reason: String) {
    if let Ok(body) = encode(&PeerResponse::Refused(reason)) {
        let _ = write_frame(send, &body).await;
    }
    let _ = send.finish();
}

async fn serve_stream(peer: Peer, mut send: SendStream, mut recv: RecvStream, shared: &Shared) {
    let _in_flight = match &peer {
        Peer::Node(_) => None,
        Peer::Client(name) => match shared.client_requests.try_take(name.clone()) {
            Some(slot) => Some(slot),
            None => {
                warn!(%peer, max = shared.cfg.max_requests_per_client, "refusing a request: too many in flight for this client");
                let _ = recv.stop(codes::BUSY);
                let reason = format!(
                    "{peer} has {} requests in flight, the most one client may; retry in a moment",
                    shared.cfg.max_requests_per_client
                );
                refuse(&mut send, reason).await;
                return;
            }
        },
    };
    let timeout = shared.cfg.request_timeout;
    let exchange = exchange(&peer, &mut send, &mut recv, shared);
    if tokio::time::timeout(timeout, exchange).await.is_err() {
        debug!(%peer, ?timeout, "request timed out; resetting the stream");
        let _ = send.reset(codes::TIMEOUT);
        let _ = recv.stop(codes::TIMEOUT);
    }
}

async fn exchange(peer: &Peer, send: &mut SendStream, recv: &mut RecvStream, shared: &Shared) {
    let len = match read_frame_header(recv).await {
        Ok(len) => len,
        Err(e @ FrameError::TooLarge { .. }) => {
            warn!(%peer, error = %e, "refusing oversized request frame");
            let _ = recv.stop(codes::FRAME_TOO_LARGE);
            refuse(send, e.to_string()).await;
            return;
        }
        Err(e @ (FrameError::Empty | FrameError::Truncated { .. })) => {
            debug!(%peer, error = %e, "bad request frame");
            refuse(send, format!("bad request frame: {e}")).await;
            return;
        }
        Err(e) => {
            debug!(%peer, error = %e, "request stream failed");
            return;
        }
    };
    // The body's bytes are taken from the peer's budget as they arrive, so a
    // header announcing a large frame reserves nothing by itself. One request
    // holds at most the whole budget (when it is configured below a frame).
    let budget = match peer {
        Peer::Node(_) => &shared.node_request_bytes,
        Peer::Client(_) => &shared.client_request_bytes,
    };
    let mut reservation = Reservation::new(budget.clone(), half_budget(&shared.cfg));
    let body = match read_frame_body_within(recv, len, Some(&mut reservation)).await {
        Ok(body) => body,
        Err(e @ FrameError::Truncated { .. }) => {
            debug!(%peer, error = %e, "truncated request frame");
            refuse(send, format!("bad request frame: {e}")).await;
            return;
        }
        Err(e @ FrameError::Busy) => {
            warn!(%peer, "refusing a request: the request-byte budget is full");
            let _ = recv.stop(codes::BUSY);
            refuse(send, e.to_string()).await;
            return;
        }
        Err(e) => {
            debug!(%peer, error = %e, "request stream failed");
            return;
        }
    };
    let req: PeerRequest = match decode(&body) {
        Ok(req) => req,
        Err(e) => {
            debug!(%peer, error = %e, "undecodable request");
            refuse(send, e.to_string()).await;
            return;
        }
    };
    drop(body);
    // The handler runs in its own task so a panic in it becomes an error
    // answer instead of a silently dropped stream; aborted if we time out.
    let handler = shared.handler.clone();
    let task_peer = peer.clone();
    let task = tokio::spawn(async move { handler.handle(task_peer, req).await });
    let response = {
        let mut guard = AbortOnDrop(Some(task.abort_handle()));
        let joined = task.await;
        guard.0 = None;
        match joined {
            Ok(response) => response,
            Err(e) => {
                warn!(%peer, error = %e, "request handler failed");
                PeerResponse::Refused(
                    "the node failed while handling the request; see its log, then retry"
                        .to_owned(),
                )
            }
        }
    };
    let body = match encode(&response) {
        Ok(body) if body.len() <= crate::frame::MAX_FRAME_LEN as usize => body,
        Ok(body) => {
            warn!(%peer, len = body.len(), "response exceeds the frame limit");
            refuse(
                send,
                "the response exceeds the frame limit; request less at once".to_owned(),
            )
            .await;
            return;
        }
        Err(e) => {
            warn!(%peer, error = %e, "could not encode a response");
            refuse(send, e.to_string()).await;
            return;
        }
    };
    if let Err(e) = write_frame(send, &body).await {
        debug!(%peer, error = %e, "could not send the response");
        return;
    }
    let _ = send.finish();
}

/// Aborts the handler task if the request future is dropped (timeout).
struct AbortOnDrop(Option<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
        }
    }
}
