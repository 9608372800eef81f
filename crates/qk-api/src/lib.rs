//! Quorumkey's HTTPS API, served by every node (see `docs/API.md`).
//!
//! - the native API under `/api/v1` ([`native`]);
//! - a Vault Transit-compatible API under `/v1` ([`vault`]);
//! - `GET /metrics` ([`metrics`]).
//!
//! The crate does no Raft and no cryptography: every request becomes one or
//! more [`qk_wire::ClientRequest`]s run by a [`Backend`] as the authenticated
//! [`Caller`]; the backend authorizes and audits.
//!
//! TLS is rustls with the ring provider. Client certificates are optional;
//! when one is presented it must chain to the cluster CA, and a client
//! certificate (`qk://client/NAME`) authenticates as principal `NAME`. A
//! bearer token (`Authorization: Bearer` or `X-Vault-Token`) wins over it.
#![forbid(unsafe_code)]

mod conn;
pub mod errors;
mod kms;
mod metrics;
mod native;
mod session;
mod vault;
pub use qk_views as views;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use qk_net::identity::peer_from_cert_der;
use qk_net::{CaCert, Credentials, Peer};
use qk_state::{Applied, Command, Operation, RequestId};
use qk_types::RequestError;
use qk_wire::{ClientRequest, ClientResponse};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use serde::de::DeserializeOwned;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

pub use futures::future::BoxFuture;

use crate::errors::{classify, Answer, ErrorKind, Failure, Refusal};
use crate::metrics::Metrics;

/// Largest request body accepted (413 above it).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Most connections served at once; more are closed at accept (and at most
/// [`MAX_CONNECTIONS_PER_IP`] from one address).
pub const MAX_CONNECTIONS: usize = 1024;
pub use conn::{IDLE_TIMEOUT, MAX_CONNECTIONS_PER_IP, MAX_HANDSHAKES_PER_IP};
/// Time a client has to finish the TLS handshake.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send an HTTP/1 request head.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a request may run (key generation waits up to a minute).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);
/// Time open connections get to finish on shutdown.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Longest bearer token text looked at.
const MAX_TOKEN_LEN: usize = 512;

/// 16 bytes in UUID text form (8-4-4-4-12 hex digits).
pub(crate) fn uuid_text(bytes: &[u8; 16]) -> String {
    let h = views::hex(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Who a request runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub principal: String,
    /// The bearer token's public id, when the caller used a token.
    pub token_id: Option<String>,
    /// The caller's signing key (from its token, or the session its client
    /// certificate granted): every decrypt it asks for is signed with it.
    pub credential: Option<qk_state::proof::Credential>,
    /// The ids this request's writes are proposed under.
    pub request_ids: RequestIds,
}

/// Where a request's writes get their request ids: fresh random ones, or,
/// when the client named its request ([`qk_views::REQUEST_ID_HEADER`]), ids
/// derived from that name and each write's own operation. The state
/// machine remembers ids per principal, so the same request sent again (to
/// another node, after an answer was lost) has each write it already made
/// answered as applied, while a write it had not made yet (say, the second
/// version of a key to disable) gets an id of its own and is applied; one
/// principal's name never answers for another's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestIds {
    named: Option<RequestId>,
}

impl RequestIds {
    /// The ids of a request the client named `id`.
    pub fn named(id: RequestId) -> Self {
        RequestIds { named: Some(id) }
    }

    /// The id `op` is proposed under.
    fn of(&self, op: &Operation) -> RequestId {
        use sha2::Digest as _;
        let Some(base) = self.named else {
            return new_request_id();
        };
        // An operation that cannot be encoded is refused when it is signed;
        // a fresh id keeps it from sharing one with any other operation.
        let Ok(encoded) = op.canonical_bytes() else {
            return new_request_id();
        };
        let digest = sha2::Sha256::new()
            .chain_update(b"quorumkey request id of an operation v2\0")
            .chain_update(base.0)
            .chain_update(encoded)
            .finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        RequestId(id)
    }
}

/// The ids of a request's writes, from its [`qk_views::REQUEST_ID_HEADER`].
fn request_ids(headers: &HeaderMap) -> Result<RequestIds, Failure> {
    let Some(value) = headers.get(qk_views::REQUEST_ID_HEADER) else {
        return Ok(RequestIds::default());
    };
    value
        .to_str()
        .ok()
        .and_then(qk_views::parse_request_id)
        .map(|id| RequestIds::named(RequestId(id)))
        .ok_or_else(|| {
            Failure::invalid(format!(
                "the {} header must be 32 hex digits (16 bytes): send a fresh random value \
                 per request and the same value when sending that request again, or none",
                qk_views::REQUEST_ID_HEADER
            ))
        })
}

/// What the node knows of itself and its cluster, for `GET /metrics` and
/// Vault's unauthenticated `sys/` endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Gauges {
    pub term: u64,
    pub last_applied: u64,
    pub key_count: u64,
    pub audit_len: u64,
    pub is_leader: bool,
    /// Voting members of the cluster.
    pub voters: u64,
    /// The leader's HTTPS API address, when a leader is known.
    pub leader_api_url: Option<String>,
}

/// The node behind the API.
pub trait Backend: Send + Sync + 'static {
    /// Runs one request as `caller` (the backend authorizes and audits).
    fn call(&self, caller: Caller, req: ClientRequest) -> BoxFuture<'_, ClientResponse>;
    /// Checks a bearer token: Ok((principal, token_id)), or why not
    /// (unauthenticated, or unavailable when the node cannot tell).
    fn authenticate_token(&self, token: &str) -> Result<(String, String), RequestError>;
    fn node_id(&self) -> u64;
    /// Ok(leader id) when the node knows a leader and has caught up;
    /// otherwise why not (unavailable).
    fn readiness(&self) -> Result<u64, RequestError>;
    /// Term, last applied index, key count, audit length, leadership, voters.
    fn gauges(&self) -> Gauges;
    /// The node's last applied log index.
    fn applied_index(&self) -> u64;
    /// Waits (bounded) until the node applied `index`; Err says it is behind.
    fn wait_applied(&self, index: u64) -> BoxFuture<'_, Result<(), RequestError>>;
    /// The secret of AWS access key `token_id`, re-derived by this node (its
    /// issuer), with the token's expiry; unauthenticated when no such token
    /// exists (the caller then checks the signature and the token itself).
    fn aws_secret(&self, token_id: &str) -> Result<AwsSecret, RequestError>;
    /// Checks an AWS access key's token (`qkt.<id>.<derived secret>`), as
    /// `authenticate_token` checks a bearer token (which this refuses).
    fn authenticate_aws_token(&self, token: &str) -> Result<(String, String), RequestError>;
}

/// An AWS access key's secret, as the node that issued it derives it.
#[derive(Debug)]
pub struct AwsSecret {
    /// The secret access key (text, zeroized on drop).
    pub secret: qk_wire::Redacted,
    pub expires_at_ms: u64,
}

/// Why the API server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    #[error(
        "could not build the HTTPS API's TLS configuration: {0}; check the node certificate, \
         its key and the cluster CA certificate"
    )]
    Tls(String),
    #[error("could not listen on {addr} for the HTTPS API: {source}; free the port or change api_listen")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Shared by every handler.
#[derive(Clone)]
pub(crate) struct AppState {
    pub backend: Arc<dyn Backend>,
    pub metrics: Arc<Metrics>,
}

impl fmt::Debug for AppState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppState")
            .field("node_id", &self.backend.node_id())
            .finish_non_exhaustive()
    }
}

/// The client name of a connection's verified client certificate, if any.
#[derive(Clone, Debug, Default)]
pub(crate) struct ConnPeer(pub Option<String>);

/// A running HTTPS API listener.
#[derive(Debug)]
pub struct ApiServer {
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ApiServer {
    /// Binds `addr` and serves the API until [`ApiServer::shutdown`].
    pub async fn bind(
        addr: SocketAddr,
        creds: &Credentials,
        ca: &CaCert,
        backend: Arc<dyn Backend>,
    ) -> Result<ApiServer, ApiError> {
        let acceptor = TlsAcceptor::from(Arc::new(tls_config(creds, ca)?));
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ApiError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ApiError::Bind { addr, source })?;
        let state = AppState {
            backend,
            metrics: Arc::new(Metrics::new()),
        };
        let (shutdown, rx) = watch::channel(false);
        let task = tokio::spawn(accept_loop(listener, acceptor, router(state), rx));
        tracing::info!(%local_addr, "HTTPS API listening");
        Ok(ApiServer {
            local_addr,
            shutdown,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets open requests finish (up to [`SHUTDOWN_GRACE`]).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "the HTTPS API task ended abnormally");
        }
    }
}

fn tls_config(creds: &Credentials, ca: &CaCert) -> Result<rustls::ServerConfig, ApiError> {
    let tls = |e: &dyn fmt::Display| ApiError::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).map_err(|e| tls(&e))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| tls(&e))?;
    let chain = CertificateDer::pem_slice_iter(creds.cert_pem().as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls(&e))?;
    let key = PrivateKeyDer::from_pem_slice(creds.key_pem().as_bytes()).map_err(|e| tls(&e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| tls(&e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.max_early_data_size = 0;
    Ok(config)
}

fn router(state: AppState) -> Router {
    Router::new()
        .merge(native::routes())
        .merge(vault::routes())
        .merge(kms::routes())
        .route("/metrics", axum::routing::get(metrics::serve))
        .fallback(native::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            session::read_your_writes,
        ))
        .layer(axum::middleware::from_fn(refuse_announced_oversize))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let admission = conn::Admission::new();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => break,
        };
        let (tcp, remote) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(error = %e, "HTTPS API accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match admission.admit(remote.ip()) {
            Ok(slot) => slot,
            Err(refused) => {
                // Debug, not warn: a flood of refusals must not flood the log.
                tracing::debug!(%remote, ?refused, "HTTPS API connection refused at accept");
                continue;
            }
        };
        let (acceptor, router, watcher) = (acceptor.clone(), router.clone(), graceful.watcher());
        tokio::spawn(async move {
            serve_connection(tcp, acceptor, router, watcher, slot).await;
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTPS API connections still open after the shutdown grace period");
    }
}

/// Serves one admitted connection; its `slot` is held until it closes.
async fn serve_connection(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    router: Router,
    watcher: Watcher,
    mut slot: conn::Slot,
) {
    if !slot.room_within(conn::ROOM_WAIT).await {
        tracing::debug!("HTTPS API connection closed: no slot was freed for it");
        return;
    }
    let activity = slot.activity().clone();
    let handshake = tokio::select! {
        h = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => h,
        () = activity.told_to_close() => return,
    };
    slot.handshake_over();
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "HTTPS API TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let peer = ConnPeer(client_name(tls.get_ref().1.peer_certificates()));
    // The version ALPN agreed on (HTTP/1.1 without ALPN): no wait for a
    // preface that an idle client never sends.
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let serving = activity.clone();
    let service = tower::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(peer.clone());
        let in_flight = serving.begin_request();
        let answer = tower::ServiceExt::oneshot(router.clone(), req);
        async move {
            let response = answer.await?;
            Ok::<_, std::convert::Infallible>(
                response.map(|body| axum::body::Body::new(conn::CountedBody::new(body, in_flight))),
            )
        }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let mut builder = if h2 {
        builder.http2_only()
    } else {
        builder.http1_only()
    };
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let io = TokioIo::new(conn::Watched::new(tls, activity.clone()));
    let served = watcher.watch(builder.serve_connection(io, TowerToHyperService::new(service)));
    tokio::pin!(served);
    loop {
        tokio::select! {
            ended = &mut served => {
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "HTTPS API connection ended with an error");
                }
                return;
            }
            () = conn::idle(&activity, IDLE_TIMEOUT) => {
                tracing::debug!("HTTPS API connection closed after {IDLE_TIMEOUT:?} idle");
                return;
            }
            () = activity.told_to_close() => {
                if activity.closes_now() {
                    tracing::debug!("HTTPS API connection closed to make room for a new one");
                    return;
                }
                slot.pass_on_closing();
            }
        }
    }
}

/// A verified client certificate's name; node certificates are not clients.
fn client_name(certs: Option<&[CertificateDer<'static>]>) -> Option<String> {
    let leaf = certs?.first()?;
    match peer_from_cert_der(leaf) {
        Ok(Peer::Client(name)) => Some(name),
        _ => None,
    }
}

/// The caller of a request: header token first, then the client certificate.
pub(crate) fn authenticate(
    backend: &dyn Backend,
    headers: &HeaderMap,
    peer: Option<&ConnPeer>,
) -> Result<Caller, Failure> {
    let unauthenticated = |m: String| Failure::new(ErrorKind::Unauthenticated, m);
    if let Some(token) = header_token(headers).map_err(unauthenticated)? {
        let (principal, token_id) =
            backend
                .authenticate_token(token)
                .map_err(|e| match e.kind {
                    ErrorKind::Unauthenticated => {
                        unauthenticated(format!("the token was refused: {}", e.message))
                    }
                    _ => Failure::from(e),
                })?;
        let credential = qk_state::parse_token(token)
            .map(|(id, secret)| qk_state::proof::Credential::from_token(id, secret));
        return Ok(Caller {
            principal,
            token_id: Some(token_id),
            credential,
            request_ids: request_ids(headers)?,
        });
    }
    match peer.and_then(|p| p.0.clone()) {
        Some(principal) => Ok(Caller {
            credential: session_credential(headers, &principal).map_err(unauthenticated)?,
            principal,
            token_id: None,
            request_ids: request_ids(headers)?,
        }),
        None => Err(unauthenticated(
            "no credential: send `Authorization: Bearer qkt.<id>.<secret>` or `X-Vault-Token`, \
             or connect with a client certificate issued by the cluster CA"
                .to_owned(),
        )),
    }
}

/// The session a client certificate granted (`X-Qk-Session`), when sent; it
/// must be granted to the principal the certificate names.
fn session_credential(
    headers: &HeaderMap,
    principal: &str,
) -> Result<Option<qk_state::proof::Credential>, String> {
    use base64::Engine;
    use qk_state::proof::{Credential, Signer};
    let Some(value) = headers.get(qk_views::SESSION_HEADER) else {
        return Ok(None);
    };
    let malformed = |e: String| {
        format!(
            "the {} header is malformed ({e}); send the session qk-client makes, or none",
            qk_views::SESSION_HEADER
        )
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.as_bytes())
        .map_err(|e| malformed(e.to_string()))?;
    let credential = Credential::decode(&bytes).map_err(|e| malformed(e.to_string()))?;
    match &credential.signer {
        Signer::Session(grant) if grant.principal == principal => Ok(Some(credential)),
        _ => Err(format!(
            "the {} header is not a session of {principal}, the client certificate's principal",
            qk_views::SESSION_HEADER
        )),
    }
}

fn header_token(headers: &HeaderMap) -> Result<Option<&str>, String> {
    let bearer = headers.get(axum::http::header::AUTHORIZATION).map(|v| {
        v.to_str()
            .ok()
            .and_then(|s| {
                s.get(..7)
                    .filter(|p| p.eq_ignore_ascii_case("bearer "))
                    .map(|_| &s[7..])
            })
            .ok_or("the Authorization header must be `Bearer <token>`".to_owned())
    });
    let vault = headers.get("x-vault-token").map(|v| {
        v.to_str()
            .map_err(|_| "the X-Vault-Token header is not text".to_owned())
    });
    let Some(token) = bearer.or(vault).transpose()? else {
        return Ok(None);
    };
    let token = token.trim();
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(
            "the token is empty or too long; use the text `qk token create` printed".into(),
        );
    }
    Ok(Some(token))
}

/// Parses a JSON body; an empty body reads as `{}`.
pub(crate) fn parse_json<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> Result<T, Failure> {
    let body = body.map_err(body_failure)?;
    let text: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &body
    };
    serde_json::from_slice(text).map_err(|e| {
        Failure::invalid(format!(
            "the request body is not valid JSON for this endpoint ({e}); see docs/API.md"
        ))
    })
}

/// A request that announces a body over [`MAX_BODY_BYTES`] is refused at
/// once, before any of it is read (the body limit alone would read up to the
/// limit first, as slowly as the client sends it).
async fn refuse_announced_oversize(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let announced = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_none_or(|n| n <= MAX_BODY_BYTES as u64) {
        return next.run(req).await;
    }
    let refusal = Failure::new(
        ErrorKind::TooLarge,
        format!("the request body is over {MAX_BODY_BYTES} bytes; send less per request"),
    );
    if req.uri().path().starts_with("/v1/") {
        vault::failure_response(refusal)
    } else {
        axum::response::IntoResponse::into_response(refusal)
    }
}

pub(crate) fn body_failure(r: BytesRejection) -> Failure {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        Failure::new(
            ErrorKind::TooLarge,
            format!("the request body is over {MAX_BODY_BYTES} bytes; send less per request"),
        )
    } else {
        Failure::invalid(format!(
            "could not read the request body: {}",
            r.body_text()
        ))
    }
}

fn new_request_id() -> RequestId {
    use rand::Rng as _;
    let mut id = [0u8; 16];
    rand::rng().fill_bytes(&mut id);
    RequestId(id)
}

impl AppState {
    /// Runs a read (or unwrap) request: anything but a write.
    pub(crate) async fn read(
        &self,
        caller: &Caller,
        req: ClientRequest,
    ) -> Result<ClientResponse, Refusal> {
        match classify(self.backend.call(caller.clone(), req).await) {
            Answer::Reply(r) => Ok(*r),
            Answer::Applied(_) => Err(Failure::new(
                ErrorKind::Internal,
                "the node answered a read with a write result; see the node log",
            )
            .into()),
            Answer::Refused(r) => Err(self.resolve_pending(caller, r).await),
        }
    }

    /// Proposes one operation; the backend stamps time and principal.
    pub(crate) async fn write(&self, caller: &Caller, op: Operation) -> Result<Applied, Refusal> {
        let command = Command {
            request_id: caller.request_ids.of(&op),
            time_ms: 0,
            principal: String::new(),
            op,
            proof: None,
        };
        let resp = self
            .backend
            .call(caller.clone(), ClientRequest::Write(command))
            .await;
        if let ClientResponse::Written { not_applied_on, .. } = &resp {
            session::note_not_applied(not_applied_on);
        }
        match classify(resp) {
            Answer::Applied(a) => Ok(a),
            Answer::Reply(r) => Err(Failure::unexpected("a write", &r).into()),
            Answer::Refused(r) => Err(self.resolve_pending(caller, r).await),
        }
    }

    /// Turns "approval `id` was requested" into the approval record.
    async fn resolve_pending(&self, caller: &Caller, refusal: Refusal) -> Refusal {
        let Refusal::PendingId(id) = refusal else {
            return refusal;
        };
        match self.find_approval(caller, &id).await {
            Some(record) => Refusal::Pending(Box::new(record)),
            None => Failure::new(
                ErrorKind::Internal,
                format!("approval {id} was requested but could not be read back; list approvals"),
            )
            .into(),
        }
    }

    pub(crate) async fn find_approval(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Option<qk_state::ApprovalRecord> {
        let resp = self
            .backend
            .call(caller.clone(), ClientRequest::ListApprovals)
            .await;
        match resp {
            ClientResponse::Approvals(list) => list.into_iter().find(|a| a.id == id),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disable(version: u32) -> Operation {
        Operation::Disable {
            name: "k".into(),
            version: qk_types::KeyVersion(version),
        }
    }

    #[test]
    fn a_named_requests_writes_get_ids_of_their_own_that_a_resend_repeats() {
        let (first, again) = (
            RequestIds::named(RequestId([9; 16])),
            RequestIds::named(RequestId([9; 16])),
        );
        assert_eq!(first.of(&disable(1)), again.of(&disable(1)), "a resend");
        assert_ne!(
            first.of(&disable(1)),
            first.of(&disable(2)),
            "another write of the same request"
        );
        let other = RequestIds::named(RequestId([8; 16]));
        assert_ne!(
            first.of(&disable(1)),
            other.of(&disable(1)),
            "another request"
        );
        let unnamed = RequestIds::default();
        assert_ne!(unnamed.of(&disable(1)), unnamed.of(&disable(1)));
    }
}
