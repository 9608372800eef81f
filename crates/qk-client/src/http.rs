//! A typed HTTPS client for the native API (docs/API.md): mutual TLS with the
//! cluster CA, or a bearer token; client-side combining over `/api/v1/partial`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use futures::stream::{FuturesUnordered, StreamExt};
use qk_crypto::{combine, Ciphertext, CombineMode, PartialDecryption, PublicKeySet};
use qk_types::ErrorKind;
use reqwest::{Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;
use zeroize::Zeroizing;

use crate::views::*;

/// A refusal from a node: the server's `{"error": {code, message}}`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} (HTTP {status} {code}; {})", hint(code))]
pub struct ApiError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl ApiError {
    /// The kind the server named, if this client knows it.
    pub fn kind(&self) -> Option<ErrorKind> {
        ErrorKind::from_name(&self.code)
    }
}

/// What to do about an error code.
fn hint(code: &str) -> &'static str {
    match ErrorKind::from_name(code) {
        Some(ErrorKind::Unauthenticated) => "pass a client certificate (--client-cert, --client-key) issued by the cluster CA or a valid token (--token)",
        Some(ErrorKind::Denied) => "ask an admin for a role or key policy that grants it (`qk principal update`, `qk policy set`)",
        Some(ErrorKind::NotFound) => "check the name or id (`qk key list`, `qk principal list`, `qk approval list`)",
        Some(ErrorKind::Conflict) => "check the current state (`qk key show NAME`)",
        Some(ErrorKind::Unavailable) => "retry in a moment; `qk cluster status` shows which nodes are down",
        Some(ErrorKind::TooLarge) => "send less than 1 MiB per request",
        Some(ErrorKind::Invalid) => "fix the request; see the command's --help",
        Some(ErrorKind::Internal) | None => "see the node's log for details",
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    #[error("client configuration: {0}")]
    Config(String),
    #[error("cannot reach {url}: {detail}; check the address (--addr) and that the node runs (`qk dev status`)")]
    Unreachable { url: String, detail: String },
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("approval {} needed: {} of {} approvers must approve", .0.id, .0.required, .0.approvers.len().max(usize::from(.0.required)))]
    ApprovalPending(Box<ApprovalView>),
    #[error("unexpected answer from {url}: {detail}")]
    Decode { url: String, detail: String },
    #[error("client-side decryption failed: {reason}; holders said: {holders}")]
    Combine {
        kind: ErrorKind,
        reason: String,
        holders: String,
    },
}

impl HttpError {
    /// The kind of failure, where the cluster named one (or, for an
    /// unreachable node, unavailable).
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            HttpError::Api(api) => api.kind(),
            HttpError::Unreachable { .. } => Some(ErrorKind::Unavailable),
            HttpError::Combine { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, HttpError>;

/// Where and how to connect.
#[derive(Clone)]
pub struct ApiConfig {
    /// Base URLs (`https://host:port`), tried in order when one is unreachable.
    pub urls: Vec<String>,
    /// The cluster CA certificate (PEM): the only trusted root.
    pub ca_cert: PathBuf,
    /// Client certificate and key (PEM) issued by the cluster CA.
    pub client_identity: Option<(PathBuf, PathBuf)>,
    /// Bearer token (`qkt.<id>.<secret>`); wins over the certificate.
    pub token: Option<Zeroizing<String>>,
    /// Upper bound on one request, including a quorum operation it waits for.
    pub timeout_ms: u64,
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("urls", &self.urls)
            .field("ca_cert", &self.ca_cert)
            .field("client_identity", &self.client_identity)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

/// The plaintext a client-side decryption opened, and which key version did it.
pub struct ClientDecrypted {
    pub plaintext: Zeroizing<Vec<u8>>,
    pub key: String,
    pub version: u32,
}

impl std::fmt::Debug for ClientDecrypted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientDecrypted")
            .field("plaintext", &"<redacted>")
            .field("key", &self.key)
            .field("version", &self.version)
            .finish()
    }
}

#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    urls: Vec<Url>,
    token: Option<Zeroizing<String>>,
    session: std::sync::Arc<Session>,
    /// The client certificate, when no token is used: it grants the
    /// session key decrypts are signed with.
    identity: Option<std::sync::Arc<qk_net::SessionCache>>,
}

/// What a client (and its clones) has seen: the highest log index any node
/// answered with, sent back on every request so no node answers from state
/// older than what this client already saw (read-your-writes).
#[derive(Debug, Default)]
struct Session {
    index: std::sync::atomic::AtomicU64,
    not_applied_on: std::sync::Mutex<Vec<u64>>,
    /// The node id in the certificate of the node that answered last.
    answered_by: std::sync::Mutex<Option<u64>>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("urls", &self.urls)
            .finish_non_exhaustive()
    }
}

fn read_file(path: &Path, what: &str) -> Result<Zeroizing<Vec<u8>>> {
    std::fs::read(path)
        .map(Zeroizing::new)
        .map_err(|e| HttpError::Config(format!("cannot read the {what} {}: {e}", path.display())))
}

fn build_http(config: &ApiConfig) -> Result<reqwest::Client> {
    let ca_pem = read_file(&config.ca_cert, "CA certificate")?;
    let roots = reqwest::Certificate::from_pem_bundle(&ca_pem).map_err(|e| {
        HttpError::Config(format!(
            "{} is not a PEM certificate: {e}",
            config.ca_cert.display()
        ))
    })?;
    if roots.is_empty() {
        return Err(HttpError::Config(format!(
            "{} holds no PEM certificate; pass the cluster CA (pki/ca.pem)",
            config.ca_cert.display()
        )));
    }
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .connect_timeout(Duration::from_secs(5))
        .tls_info(true)
        .timeout(Duration::from_millis(config.timeout_ms));
    for root in roots {
        builder = builder.add_root_certificate(root);
    }
    if let Some((cert, key)) = &config.client_identity {
        let mut pem = read_file(cert, "client certificate")?;
        pem.extend_from_slice(&read_file(key, "client key")?);
        let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
            HttpError::Config(format!(
                "{} / {} are not a PEM certificate and key: {e}",
                cert.display(),
                key.display()
            ))
        })?;
        builder = builder.identity(identity);
    }
    builder
        .build()
        .map_err(|e| HttpError::Config(format!("cannot set up TLS: {e}")))
}

fn parse_base(url: &str) -> Result<Url> {
    let parsed = Url::parse(url).map_err(|e| {
        HttpError::Config(format!("{url:?} is not a URL ({e}); use https://host:port"))
    })?;
    if parsed.scheme() != "https" {
        return Err(HttpError::Config(format!(
            "{url:?} must start with https://"
        )));
    }
    Ok(parsed)
}

/// One request: method, path segments under the base, query, JSON body.
struct Call<'a> {
    method: Method,
    path: &'a [&'a str],
    query: &'a [(&'a str, String)],
    body: Option<Vec<u8>>,
}

impl Call<'_> {
    /// The request writes or decrypts (every method but GET): it carries
    /// the caller's session (certificate callers) so the node can sign it as
    /// the caller; token callers' tokens derive their key.
    fn proven(&self) -> bool {
        self.method != Method::GET
    }
}

impl ApiClient {
    pub fn new(config: &ApiConfig) -> Result<ApiClient> {
        if config.urls.is_empty() {
            return Err(HttpError::Config(
                "no node address; pass --addr https://host:port or run `qk dev up`".into(),
            ));
        }
        let urls = config
            .urls
            .iter()
            .map(|u| parse_base(u))
            .collect::<Result<Vec<_>>>()?;
        let identity = match (&config.client_identity, &config.token) {
            (Some((cert, key)), None) => Some(std::sync::Arc::new(qk_net::SessionCache::new(
                qk_net::Credentials::load(cert, key).map_err(|e| {
                    HttpError::Config(format!(
                        "cannot use the client certificate {}: {e}",
                        cert.display()
                    ))
                })?,
            ))),
            _ => None,
        };
        Ok(ApiClient {
            http: build_http(config)?,
            urls,
            token: config.token.clone(),
            session: Default::default(),
            identity,
        })
    }

    /// The session header for a decrypt (made, or renewed when it is about
    /// to expire); `None` for token callers, whose token derives the key.
    fn session_header(&self) -> Result<Option<reqwest::header::HeaderValue>> {
        use base64::Engine;
        let Some(identity) = &self.identity else {
            return Ok(None);
        };
        let credential = identity
            .current()
            .map_err(|e| HttpError::Config(e.to_string()))?;
        let bytes = Zeroizing::new(
            credential
                .encode()
                .map_err(|e| HttpError::Config(format!("cannot encode the session: {e}")))?,
        );
        let text = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&bytes));
        let mut value = reqwest::header::HeaderValue::from_str(&text)
            .map_err(|_| HttpError::Config("the session does not fit a header".into()))?;
        value.set_sensitive(true);
        Ok(Some(value))
    }

    /// The highest log index seen so far (0 before any answer).
    pub fn seen_index(&self) -> u64 {
        self.session
            .index
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Requests from now on wait for at least `index` (say, from another client).
    pub fn observe_index(&self, index: u64) {
        self.session
            .index
            .fetch_max(index, std::sync::atomic::Ordering::AcqRel);
    }

    /// Members that had not applied the last revocation when it was acknowledged.
    pub fn not_applied_on(&self) -> Vec<u64> {
        self.session
            .not_applied_on
            .lock()
            .map(|n| n.clone())
            .unwrap_or_default()
    }

    fn note_answer(&self, headers: &reqwest::header::HeaderMap) {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        if let Some(index) = header(qk_views::INDEX_HEADER).and_then(|v| v.parse().ok()) {
            self.observe_index(index);
        }
        let lagging: Vec<u64> = header(qk_views::NOT_APPLIED_HEADER)
            .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
            .unwrap_or_default();
        if let Ok(mut n) = self.session.not_applied_on.lock() {
            *n = lagging;
        }
    }

    /// The same credentials, talking to the node at `url` only (no other
    /// node tried) and answered from that node's own state (no index seen
    /// elsewhere is asked for): to compare what each node holds.
    pub fn at(&self, url: &str) -> Result<ApiClient> {
        Ok(ApiClient {
            urls: vec![parse_base(url)?],
            session: Default::default(),
            ..self.clone()
        })
    }

    /// Every node address this client was configured with.
    pub fn base_urls(&self) -> Vec<String> {
        self.urls.iter().map(Url::to_string).collect()
    }

    /// The node id the last answering node's TLS certificate names (`None`
    /// when it named no node).
    pub fn answered_by(&self) -> Option<u64> {
        *self
            .session
            .answered_by
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn note_answerer(&self, resp: &reqwest::Response) {
        let node = resp
            .extensions()
            .get::<reqwest::tls::TlsInfo>()
            .and_then(|info| info.peer_certificate())
            .and_then(|der| qk_net::identity::peer_from_cert_der(der).ok())
            .and_then(|peer| peer.node_id());
        *self
            .session
            .answered_by
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = node;
    }

    /// The first (preferred) base URL.
    pub fn base_url(&self) -> &str {
        self.urls[0].as_str()
    }

    fn url(base: &Url, path: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend(path);
        }
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        url
    }

    async fn send_to(
        &self,
        base: &Url,
        call: &Call<'_>,
        request_id: Option<&str>,
    ) -> Result<(StatusCode, Vec<u8>)> {
        let url = Self::url(base, call.path, call.query);
        let mut req = self.http.request(call.method.clone(), url.clone());
        if let Some(id) = request_id {
            req = req.header(qk_views::REQUEST_ID_HEADER, id);
        }
        if let Some(token) = &self.token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", **token))
                .map_err(|_| {
                    HttpError::Config("the token has characters a header cannot carry".into())
                })?;
            value.set_sensitive(true);
            req = req.header(reqwest::header::AUTHORIZATION, value);
        }
        if call.proven() {
            if let Some(value) = self.session_header()? {
                req = req.header(qk_views::SESSION_HEADER, value);
            }
        }
        if let Some(body) = &call.body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        let seen = self.seen_index();
        if seen > 0 {
            req = req.header(qk_views::INDEX_HEADER, seen);
        }
        let resp = req.send().await.map_err(|e| HttpError::Unreachable {
            url: base.to_string(),
            detail: error_chain(&e),
        })?;
        self.note_answer(resp.headers());
        self.note_answerer(&resp);
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| HttpError::Unreachable {
            url: base.to_string(),
            detail: error_chain(&e),
        })?;
        Ok((status, bytes.to_vec()))
    }

    /// Sends to the first reachable base URL (a refusal is not retried
    /// elsewhere). Every attempt carries the same request id: a node may
    /// have applied a write whose answer never came back, and the next node
    /// then answers it as applied instead of applying it again.
    async fn send(&self, call: Call<'_>) -> Result<Vec<u8>> {
        let request_id = qk_views::hex(&rand::random::<[u8; 16]>());
        let mut last = None;
        for base in &self.urls {
            match self.send_to(base, &call, Some(&request_id)).await {
                Ok((status, bytes)) => return check(base, status, bytes),
                Err(e @ HttpError::Unreachable { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| HttpError::Config("no node address".into())))
    }

    async fn json<T: DeserializeOwned>(&self, call: Call<'_>) -> Result<T> {
        let bytes = self.send(call).await?;
        decode(self.base_url(), &bytes)
    }

    async fn get<T: DeserializeOwned>(&self, path: &[&str]) -> Result<T> {
        self.json(Call {
            method: Method::GET,
            path,
            query: &[],
            body: None,
        })
        .await
    }

    async fn write<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &[&str],
        body: &B,
    ) -> Result<T> {
        self.json(Call {
            method,
            path,
            query: &[],
            body: Some(encode(body)?),
        })
        .await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &[&str], body: &B) -> Result<T> {
        self.write(Method::POST, path, body).await
    }

    async fn delete(&self, path: &[&str]) -> Result<()> {
        self.send(Call {
            method: Method::DELETE,
            path,
            query: &[],
            body: None,
        })
        .await
        .map(|_| ())
    }

    // ---- health and cluster ----

    pub async fn live(&self) -> Result<Health> {
        self.get(&["api", "v1", "health", "live"]).await
    }

    /// Readiness of the node at `base` (not the fail-over list): `Ok` only on 200.
    pub async fn ready_at(&self, base: &str) -> Result<Health> {
        let base = parse_base(base)?;
        let call = Call {
            method: Method::GET,
            path: &["api", "v1", "health", "ready"],
            query: &[],
            body: None,
        };
        let (status, bytes) = self.send_to(&base, &call, None).await?;
        decode(base.as_str(), &check(&base, status, bytes)?)
    }

    pub async fn cluster(&self) -> Result<ClusterHealth> {
        self.get(&["api", "v1", "cluster"]).await
    }

    /// Sets (or with `None` removes) the cluster's refresh schedule; the
    /// cluster's health after it.
    pub async fn set_refresh_schedule(&self, every_ms: Option<u64>) -> Result<ClusterHealth> {
        let body = RefreshScheduleRequest {
            every_ms,
            off: every_ms.is_none(),
        };
        self.write(
            Method::PUT,
            &["api", "v1", "cluster", "refresh-schedule"],
            &body,
        )
        .await
    }

    /// Turns on each principal's share of the request memory; the cluster's
    /// health after it.
    pub async fn enable_request_shares(&self) -> Result<ClusterHealth> {
        self.write(
            Method::POST,
            &["api", "v1", "cluster", "request-shares"],
            &serde_json::json!({}),
        )
        .await
    }

    // ---- keys ----

    pub async fn create_key(&self, req: &CreateKeyRequest) -> Result<KeyView> {
        self.post(&["api", "v1", "keys"], req).await
    }

    pub async fn list_keys(&self) -> Result<Vec<KeyView>> {
        Ok(self.get::<KeyList>(&["api", "v1", "keys"]).await?.keys)
    }

    pub async fn key(&self, name: &str) -> Result<KeyView> {
        self.get(&["api", "v1", "keys", name]).await
    }

    async fn key_action<B: Serialize>(
        &self,
        name: &str,
        action: &str,
        body: &B,
    ) -> Result<KeyView> {
        self.post(&["api", "v1", "keys", name, action], body).await
    }

    pub async fn rotate_key(&self, name: &str) -> Result<KeyView> {
        self.key_action(name, "rotate", &Empty {}).await
    }

    pub async fn disable_key(&self, name: &str, version: Option<u32>) -> Result<KeyView> {
        self.key_action(name, "disable", &VersionBody { version })
            .await
    }

    /// New shares of the same key for every holder of the version (or of
    /// every enabled version); waits for the holders.
    pub async fn refresh_key(&self, name: &str, version: Option<u32>) -> Result<KeyView> {
        self.key_action(name, "refresh", &VersionBody { version })
            .await
    }

    pub async fn enable_key(&self, name: &str, version: Option<u32>) -> Result<KeyView> {
        self.key_action(name, "enable", &VersionBody { version })
            .await
    }

    pub async fn mark_compromised(
        &self,
        name: &str,
        version: Option<u32>,
        reason: &str,
        allow_decrypt: bool,
    ) -> Result<KeyView> {
        let body = CompromisedBody {
            version,
            reason,
            allow_decrypt,
        };
        self.key_action(name, "mark-compromised", &body).await
    }

    pub async fn destroy_key(
        &self,
        name: &str,
        version: Option<u32>,
        after_ms: u64,
    ) -> Result<KeyView> {
        let body = DestroyBody { version, after_ms };
        self.key_action(name, "destroy", &body).await
    }

    pub async fn cancel_destroy(&self, name: &str, version: Option<u32>) -> Result<KeyView> {
        self.key_action(name, "cancel-destroy", &VersionBody { version })
            .await
    }

    pub async fn configure_key(&self, name: &str, req: &KeyConfigRequest) -> Result<KeyView> {
        self.key_action(name, "config", req).await
    }

    pub async fn policy(&self, name: &str) -> Result<Option<KeyPolicy>> {
        self.get(&["api", "v1", "keys", name, "policy"]).await
    }

    pub async fn set_policy(&self, name: &str, policy: Option<&KeyPolicy>) -> Result<KeyView> {
        self.write(Method::PUT, &["api", "v1", "keys", name, "policy"], &policy)
            .await
    }

    /// The cluster's access rule (principal and token management), if set.
    pub async fn access_rule(&self) -> Result<Option<ApprovalRule>> {
        self.get(&["api", "v1", "access-rule"]).await
    }

    /// Sets (or with `None` removes) the cluster's access rule. While a
    /// rule is set, the change waits for approval under it.
    pub async fn set_access_rule(
        &self,
        rule: Option<&ApprovalRule>,
    ) -> Result<Option<ApprovalRule>> {
        self.write(Method::PUT, &["api", "v1", "access-rule"], &rule)
            .await
    }

    // ---- data ----

    pub async fn encrypt(
        &self,
        name: &str,
        plaintext: &[u8],
        context: &BTreeMap<String, String>,
    ) -> Result<Encrypted> {
        let encoded = Zeroizing::new(B64.encode(plaintext));
        let body = EncryptBody {
            plaintext: &encoded,
            context,
        };
        self.key_action_json(name, "encrypt", &body).await
    }

    async fn key_action_json<B: Serialize, T: DeserializeOwned>(
        &self,
        name: &str,
        action: &str,
        body: &B,
    ) -> Result<T> {
        self.post(&["api", "v1", "keys", name, action], body).await
    }

    pub async fn datakey(
        &self,
        name: &str,
        bytes: u32,
        context: &BTreeMap<String, String>,
    ) -> Result<DataKey> {
        let body = DataKeyBody { bytes, context };
        self.key_action_json(name, "datakey", &body).await
    }

    /// Server-side decryption: the answering node combines the partials.
    pub async fn decrypt(
        &self,
        ciphertext: &str,
        context: &BTreeMap<String, String>,
        approval_id: Option<&str>,
    ) -> Result<Decrypted> {
        let body = CiphertextBody {
            ciphertext,
            context,
            approval_id,
            to_key: None,
        };
        self.post(&["api", "v1", "decrypt"], &body).await
    }

    pub async fn rewrap(
        &self,
        ciphertext: &str,
        context: &BTreeMap<String, String>,
        to_key: Option<&str>,
    ) -> Result<Encrypted> {
        let body = CiphertextBody {
            ciphertext,
            context,
            approval_id: None,
            to_key,
        };
        self.post(&["api", "v1", "rewrap"], &body).await
    }

    // ---- principals, tokens ----

    pub async fn principals(&self) -> Result<Vec<PrincipalView>> {
        Ok(self
            .get::<PrincipalList>(&["api", "v1", "principals"])
            .await?
            .principals)
    }

    pub async fn create_principal(&self, name: &str, roles: &[String]) -> Result<PrincipalView> {
        let body = PrincipalBody {
            name: Some(name),
            roles,
            disabled: None,
        };
        self.post(&["api", "v1", "principals"], &body).await
    }

    pub async fn update_principal(
        &self,
        name: &str,
        roles: &[String],
        disabled: Option<bool>,
    ) -> Result<PrincipalView> {
        let body = PrincipalBody {
            name: None,
            roles,
            disabled,
        };
        self.write(Method::PUT, &["api", "v1", "principals", name], &body)
            .await
    }

    pub async fn delete_principal(&self, name: &str) -> Result<()> {
        self.delete(&["api", "v1", "principals", name]).await
    }

    pub async fn tokens(&self) -> Result<Vec<TokenView>> {
        Ok(self
            .get::<TokenList>(&["api", "v1", "tokens"])
            .await?
            .tokens)
    }

    pub async fn create_token(
        &self,
        principal: &str,
        ttl_ms: u64,
        description: Option<&str>,
    ) -> Result<CreatedToken> {
        let body = TokenBody {
            principal,
            ttl_ms,
            description,
        };
        self.post(&["api", "v1", "tokens"], &body).await
    }

    /// An AWS access key for `principal`, bound to the node this client
    /// reaches (pin one with [`ApiClient::at`]).
    pub async fn create_aws_credential(
        &self,
        principal: &str,
        ttl_ms: u64,
        description: Option<&str>,
    ) -> Result<CreatedAwsCredential> {
        let body = TokenBody {
            principal,
            ttl_ms,
            description,
        };
        self.post(&["api", "v1", "kms", "credentials"], &body).await
    }

    pub async fn revoke_token(&self, id: &str) -> Result<()> {
        self.delete(&["api", "v1", "tokens", id]).await
    }

    pub async fn whoami(&self) -> Result<WhoAmI> {
        self.get(&["api", "v1", "whoami"]).await
    }

    // ---- approvals ----

    pub async fn approvals(&self) -> Result<Vec<ApprovalView>> {
        Ok(self
            .get::<ApprovalList>(&["api", "v1", "approvals"])
            .await?
            .approvals)
    }

    pub async fn approve(&self, id: &str) -> Result<ApprovalView> {
        self.post(&["api", "v1", "approvals", id, "approve"], &Empty {})
            .await
    }

    pub async fn deny(&self, id: &str, reason: Option<&str>) -> Result<ApprovalView> {
        let body = ReasonBody { reason };
        self.post(&["api", "v1", "approvals", id, "deny"], &body)
            .await
    }

    // ---- audit ----

    /// The answering node's signed statement of its audit record `seq`
    /// (0: its last record).
    pub async fn audit_checkpoint(&self, seq: u64) -> Result<AuditCheckpointView> {
        let query = [("seq", seq.to_string())];
        self.json(Call {
            method: Method::GET,
            path: &["api", "v1", "audit", "checkpoint"],
            query: &query,
            body: None,
        })
        .await
    }

    pub async fn audit(&self, from_seq: u64, limit: u32) -> Result<Vec<AuditRecordView>> {
        let query = [("from", from_seq.to_string()), ("limit", limit.to_string())];
        let page: AuditPage = self
            .json(Call {
                method: Method::GET,
                path: &["api", "v1", "audit"],
                query: &query,
                body: None,
            })
            .await?;
        Ok(page.records)
    }

    pub async fn audit_verify(&self) -> Result<AuditVerified> {
        self.get(&["api", "v1", "audit", "verify"]).await
    }

    // ---- client-side combining ----

    /// Decrypts without any node seeing the plaintext: finds the ciphertext's
    /// key version (by the key id it embeds), asks its holders concurrently for
    /// partial decryptions and combines the first `threshold` of them here
    /// (verifying proofs only if that fails).
    pub async fn decrypt_client_side(
        &self,
        ciphertext: &str,
        context: &BTreeMap<String, String>,
        approval_id: Option<&str>,
    ) -> Result<ClientDecrypted> {
        let ct = Ciphertext::from_text(ciphertext.trim()).map_err(|e| HttpError::Combine {
            kind: ErrorKind::Invalid,
            reason: format!("the ciphertext does not decode ({e}); pass the qk:v1:... text as encrypt printed it"),
            holders: "none asked".into(),
        })?;
        let (key, keys, holders) = self.key_set_for(&ct).await?;
        let targets = self.holder_urls(&holders).await?;
        let body = CiphertextBody {
            ciphertext: ciphertext.trim(),
            context,
            approval_id,
            to_key: None,
        };
        let plaintext = self
            .gather_and_combine(&keys, &ct, context, &targets, &holders, &body)
            .await?;
        Ok(ClientDecrypted {
            plaintext,
            key,
            version: ct.version.0,
        })
    }

    /// The key's name, the version's public key set and its holders.
    async fn key_set_for(&self, ct: &Ciphertext) -> Result<(String, PublicKeySet, Vec<u64>)> {
        let id = ct.key_id.to_string();
        let keys = self.list_keys().await?;
        let key = keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| HttpError::Combine {
                kind: ErrorKind::NotFound,
                reason: format!("no key with id {id} in this cluster (or you may not read it)"),
                holders: "none asked".into(),
            })?;
        let version = key
            .version(ct.version.0)
            .ok_or_else(|| HttpError::Combine {
                kind: ErrorKind::NotFound,
                reason: format!("key {:?} has no version {}", key.name, ct.version.0),
                holders: "none asked".into(),
            })?;
        let unusable = |why: String| HttpError::Combine {
            kind: ErrorKind::Conflict,
            reason: format!("key {:?} version {}: {why}", key.name, version.version),
            holders: "none asked".into(),
        };
        let encoded = version
            .public_keys
            .as_deref()
            .ok_or_else(|| unusable(format!("no public key set (state {})", version.state)))?;
        let bytes = B64
            .decode(encoded)
            .map_err(|e| unusable(format!("public_keys is not base64 ({e})")))?;
        let set = PublicKeySet::from_bytes(&bytes)
            .map_err(|e| unusable(format!("the public key set does not decode ({e})")))?;
        Ok((key.name.clone(), set, version.holders.clone()))
    }

    /// API URLs of the holders that are cluster members with an API address.
    async fn holder_urls(&self, holders: &[u64]) -> Result<Vec<(u64, Url)>> {
        let cluster = self.cluster().await?;
        let mut out = Vec::new();
        for m in cluster.members {
            if !holders.is_empty() && !holders.contains(&m.node_id) {
                continue;
            }
            if let Some(url) = m.api_url.as_deref().and_then(|u| parse_base(u).ok()) {
                out.push((m.node_id, url));
            }
        }
        Ok(out)
    }

    async fn partial_from(
        &self,
        base: &Url,
        body: &CiphertextBody<'_>,
    ) -> Result<PartialDecryption> {
        let call = Call {
            method: Method::POST,
            path: &["api", "v1", "partial"],
            query: &[],
            body: Some(encode(body)?),
        };
        let (status, bytes) = self.send_to(base, &call, None).await?;
        let answer: PartialAnswer = decode(base.as_str(), &check(base, status, bytes)?)?;
        let raw = B64.decode(&answer.partial).map_err(|e| HttpError::Decode {
            url: base.to_string(),
            detail: format!("partial is not base64 ({e})"),
        })?;
        PartialDecryption::from_bytes(&raw).map_err(|e| HttpError::Decode {
            url: base.to_string(),
            detail: format!("malformed partial ({e})"),
        })
    }

    async fn gather_and_combine(
        &self,
        keys: &PublicKeySet,
        ct: &Ciphertext,
        context: &BTreeMap<String, String>,
        targets: &[(u64, Url)],
        holders: &[u64],
        body: &CiphertextBody<'_>,
    ) -> Result<Zeroizing<Vec<u8>>> {
        let holders: Vec<qk_types::NodeId> = holders.iter().map(|h| qk_types::NodeId(*h)).collect();
        let needed = usize::from(keys.threshold());
        let mut pending: FuturesUnordered<_> = targets
            .iter()
            .map(|(id, url)| async move { (*id, self.partial_from(url, body).await) })
            .collect();
        let mut partials = Vec::new();
        let mut refusals = Vec::new();
        let mut kinds = Vec::new();
        let mut last_reason = format!("{} of {needed} partials gathered", 0);
        while let Some((id, answer)) = pending.next().await {
            match answer.map(|p| crate::bind_partial(&holders, id, p)) {
                Ok(Ok(p)) => partials.push(p),
                Ok(Err(refused)) => {
                    refusals.push(refused);
                    kinds.push(ErrorKind::Internal);
                }
                Err(HttpError::ApprovalPending(a)) => return Err(HttpError::ApprovalPending(a)),
                Err(e) => {
                    kinds.push(e.kind().unwrap_or(ErrorKind::Unavailable));
                    refusals.push(format!("node {id}: {e}"));
                }
            }
            if partials.len() < needed {
                last_reason = format!("{} of {needed} partials gathered", partials.len());
                continue;
            }
            match combine(keys, ct, context, &partials, CombineMode::Optimistic) {
                Ok(out) => return Ok(out.plaintext),
                Err(e) => last_reason = e.to_string(),
            }
        }
        Err(HttpError::Combine {
            kind: refusals_kind(&kinds),
            reason: last_reason,
            holders: if refusals.is_empty() {
                "every holder answered".into()
            } else {
                refusals.join("; ")
            },
        })
    }
}

/// The kind of a client-side decryption that gathered too few partials:
/// the holders' own kind when they all refused alike (a wrong context is
/// the caller's error everywhere), otherwise unavailable (retry when more
/// holders answer).
fn refusals_kind(kinds: &[ErrorKind]) -> ErrorKind {
    match kinds.split_first() {
        Some((first, rest)) if rest.iter().all(|k| k == first) => *first,
        _ => ErrorKind::Unavailable,
    }
}

fn encode<B: Serialize>(body: &B) -> Result<Vec<u8>> {
    serde_json::to_vec(body)
        .map_err(|e| HttpError::Config(format!("cannot encode the request: {e}")))
}

fn decode<T: DeserializeOwned>(url: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| HttpError::Decode {
        url: url.to_string(),
        detail: format!("{e} (is this a Quorumkey node of the same version?)"),
    })
}

/// 2xx → body; 202 → approval pending; anything else → `ApiError`.
fn check(base: &Url, status: StatusCode, bytes: Vec<u8>) -> Result<Vec<u8>> {
    if status == StatusCode::ACCEPTED {
        if let Ok(p) = serde_json::from_slice::<ApprovalPending>(&bytes) {
            return Err(HttpError::ApprovalPending(Box::new(p.approval)));
        }
    }
    if status.is_success() {
        return Ok(bytes);
    }
    Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
        Ok(body) => HttpError::Api(ApiError {
            status: status.as_u16(),
            code: body.error.code,
            message: body.error.message,
        }),
        Err(_) => HttpError::Api(ApiError {
            status: status.as_u16(),
            code: fallback_code(status).to_string(),
            message: format!(
                "{base} answered {status} without a Quorumkey error body (is it a Quorumkey node?)"
            ),
        }),
    })
}

fn fallback_code(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "invalid",
        401 => "unauthenticated",
        403 => "denied",
        404 => "not-found",
        409 => "conflict",
        413 => "too-large",
        503 => "unavailable",
        _ => "internal",
    }
}

/// The error and its causes, one line (reqwest hides the TLS reason in sources).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct VersionBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u32>,
}

#[derive(Serialize)]
struct CompromisedBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u32>,
    reason: &'a str,
    allow_decrypt: bool,
}

#[derive(Serialize)]
struct DestroyBody {
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<u32>,
    after_ms: u64,
}

#[derive(Serialize)]
struct EncryptBody<'a> {
    plaintext: &'a str,
    context: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
struct DataKeyBody<'a> {
    bytes: u32,
    context: &'a BTreeMap<String, String>,
}

#[derive(Serialize)]
struct CiphertextBody<'a> {
    ciphertext: &'a str,
    context: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    approval_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to_key: Option<&'a str>,
}

#[derive(Serialize)]
struct PrincipalBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    roles: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    disabled: Option<bool>,
}

#[derive(Serialize)]
struct TokenBody<'a> {
    principal: &'a str,
    ttl_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
}

#[derive(Serialize)]
struct ReasonBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_refusing_alike_give_their_kind_and_mixed_refusals_mean_retry() {
        assert_eq!(
            refusals_kind(&[ErrorKind::Invalid, ErrorKind::Invalid]),
            ErrorKind::Invalid
        );
        assert_eq!(
            refusals_kind(&[ErrorKind::Denied, ErrorKind::Unavailable]),
            ErrorKind::Unavailable
        );
        assert_eq!(refusals_kind(&[]), ErrorKind::Unavailable);
    }

    #[test]
    fn an_unknown_error_code_has_no_kind_and_a_generic_hint() {
        let api = ApiError {
            status: 418,
            code: "teapot".into(),
            message: "no".into(),
        };
        assert_eq!(HttpError::Api(api.clone()).kind(), None);
        assert!(api.to_string().contains("see the node's log"));
    }
}
