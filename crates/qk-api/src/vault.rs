//! The Vault Transit-compatible API under `/v1` (docs/API.md, "Vault
//! Transit"): Vault's paths, verbs, bodies, envelope and error shape, so
//! Vault clients (hvac, the vault CLI, Vault SDKs) work unchanged.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, on, MethodFilter, MethodRouter};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use qk_state::{KeyRecord, Operation, StateError, VersionState};
use qk_types::KeyVersion;
use qk_wire::{ClientRequest, ClientResponse};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use zeroize::Zeroize as _;

use crate::errors::{http_status, state_failure, ErrorKind, Failure, Refusal};
use crate::native::{
    apply_transition, decode_b64, fetch_key, rotate_and_wait, secret_b64, secret_json,
    wait_generated, LifecycleBody, Transition,
};
use crate::{authenticate, uuid_text, AppState, Caller, ConnPeer};

mod body;
mod sys;
mod tools;

/// Key tag that allows `DELETE /v1/transit/keys/:name` ("true").
pub const DELETION_ALLOWED_TAG: &str = "vault.deletion_allowed";
/// Encryption-context entry a Vault `context` becomes.
pub const VAULT_CONTEXT_KEY: &str = "vault_context";
/// Most items in one `batch_input`.
pub const MAX_BATCH_ITEMS: usize = 256;

/// Items of one batch in flight at once (answered in order). Bounded so that
/// a few batches cannot take every unwrap slot of the node (1,024).
const BATCH_PARALLELISM: usize = 8;
/// The one key type, as `transit/keys/:name` reports it: an ECIES key on
/// secp256k1 (ElGamal key agreement, HKDF-SHA256, AES-256-GCM) whose
/// private key exists only as Shamir shares on the holders.
pub const KEY_TYPE: &str = "threshold-ecies-secp256k1";
const VAULT_PREFIX: &str = "vault:v";

type Body = Result<Bytes, BytesRejection>;
type Reply = Result<Response, VaultError>;

/// A Vault error answer: `{"errors": [...]}`.
#[derive(Debug)]
pub(crate) struct VaultError {
    status: StatusCode,
    message: String,
}

impl VaultError {
    fn bad_request(message: impl Into<String>) -> Self {
        VaultError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl IntoResponse for VaultError {
    fn into_response(self) -> Response {
        let errors: Vec<String> = if self.message.is_empty() {
            Vec::new()
        } else {
            vec![self.message]
        };
        (self.status, Json(json!({ "errors": errors }))).into_response()
    }
}

/// A status a caller chose with one of Vault's `*code` parameters.
fn chosen_status(code: u32, parameter: &str) -> Result<StatusCode, VaultError> {
    u16::try_from(code)
        .ok()
        .filter(|c| (200..=599).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| {
            VaultError::bad_request(format!("invalid {parameter} {code}; use 200 to 599"))
        })
}

/// Vault's status for a failure: 401 is 403 (Vault's "permission denied"),
/// 409 is 400 (Vault has no conflict status).
/// A failure in Vault's error shape, for code outside the Vault handlers.
pub(crate) fn failure_response(f: Failure) -> Response {
    VaultError::from(f).into_response()
}

impl From<Failure> for VaultError {
    fn from(f: Failure) -> Self {
        let status = match f.code {
            ErrorKind::Unauthenticated | ErrorKind::Denied => StatusCode::FORBIDDEN,
            ErrorKind::Conflict | ErrorKind::Invalid => StatusCode::BAD_REQUEST,
            other => http_status(other),
        };
        VaultError {
            status,
            message: f.message,
        }
    }
}

/// Vault has no approvals: a pending approval is refused with its id (a
/// decrypt may be retried with the non-Vault field `approval_id`).
impl From<Refusal> for VaultError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Failed(f) => f.into(),
            Refusal::Pending(a) => approval_error(&a.id),
            Refusal::PendingId(id) => approval_error(&id),
        }
    }
}

fn approval_error(id: &str) -> VaultError {
    VaultError {
        status: StatusCode::FORBIDDEN,
        message: format!(
            "this request needs approval: approval {id} is pending; retry once approvers \
             approved it (a decrypt with \"approval_id\": \"{id}\")"
        ),
    }
}

/// The authenticated caller of a Vault request (403 otherwise, like Vault).
#[derive(Debug)]
pub(crate) struct VaultCaller(Caller);

impl FromRequestParts<AppState> for VaultCaller {
    type Rejection = VaultError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, VaultError> {
        let peer = parts.extensions.get::<ConnPeer>();
        authenticate(state.backend.as_ref(), &parts.headers, peer)
            .map(VaultCaller)
            .map_err(VaultError::from)
    }
}

/// A Vault request on one named key: its caller, the key name from the
/// path, and the body read as the client sent it (`body::parse`).
struct KeyCall<T> {
    state: AppState,
    caller: Caller,
    name: String,
    body: T,
}

impl<T> KeyCall<T> {
    fn into_parts(self) -> (AppState, Caller, String, T) {
        (self.state, self.caller, self.name, self.body)
    }
}

impl<T: DeserializeOwned> FromRequest<AppState> for KeyCall<T> {
    type Rejection = VaultError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, VaultError> {
        let (mut parts, raw) = req.into_parts();
        let VaultCaller(caller) = VaultCaller::from_request_parts(&mut parts, state).await?;
        let Path(name) = Path::<String>::from_request_parts(&mut parts, state)
            .await
            .map_err(|e| VaultError::bad_request(e.body_text()))?;
        let headers = parts.headers.clone();
        let bytes = Bytes::from_request(Request::from_parts(parts, raw), state).await;
        Ok(KeyCall {
            state: state.clone(),
            caller,
            name,
            body: body::parse(&headers, bytes)?,
        })
    }
}

fn write_route<H, T>(handler: H) -> MethodRouter<AppState>
where
    H: axum::handler::Handler<T, AppState>,
    T: 'static,
{
    on(MethodFilter::POST.or(MethodFilter::PUT), handler).fallback(method_not_allowed)
}

fn read_route<H, T>(handler: H) -> MethodRouter<AppState>
where
    H: axum::handler::Handler<T, AppState>,
    T: 'static,
{
    get(handler).fallback(method_not_allowed)
}

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/transit/keys", any(list_keys))
        .route(
            "/v1/transit/keys/{name}",
            write_route(create_key)
                .get(read_key)
                .delete(delete_key)
                .fallback(method_not_allowed),
        )
        .route(
            "/v1/transit/keys/{name}/config",
            write_route(config).get(read_key),
        )
        .route("/v1/transit/keys/{name}/rotate", write_route(rotate))
        .route("/v1/transit/keys/{name}/trim", write_route(trim))
        .route(
            "/v1/transit/cache-config",
            write_route(cache_config).get(cache_config),
        )
        .route("/v1/transit/backup/{name}", any(no_export))
        .route("/v1/transit/export/{kind}/{name}", any(no_export))
        .route("/v1/transit/export/{kind}/{name}/{version}", any(no_export))
        .route("/v1/transit/restore", any(no_export))
        .route("/v1/transit/restore/{name}", any(no_export))
        .route("/v1/transit/hmac/{*rest}", any(no_signing))
        .route("/v1/transit/sign/{*rest}", any(no_signing))
        .route("/v1/transit/verify/{*rest}", any(no_signing))
        .route("/v1/transit/random", write_route(tools::random))
        .route(
            "/v1/transit/random/{segment}",
            write_route(tools::random_one),
        )
        .route(
            "/v1/transit/random/{source}/{bytes}",
            write_route(tools::random_two),
        )
        .route("/v1/transit/hash", write_route(tools::hash))
        .route(
            "/v1/transit/hash/{algorithm}",
            write_route(tools::hash_with),
        )
        .route("/v1/transit/encrypt/{name}", write_route(encrypt))
        .route("/v1/transit/decrypt/{name}", write_route(decrypt))
        .route("/v1/transit/rewrap/{name}", write_route(rewrap))
        .route("/v1/transit/datakey/{kind}/{name}", write_route(datakey))
        .route("/v1/auth/token/lookup-self", read_route(sys::lookup_self))
        .route("/v1/auth/token/renew-self", write_route(sys::renew_self))
        .route("/v1/sys/health", read_route(sys::health))
        .route("/v1/sys/seal-status", read_route(sys::seal_status))
        .route("/v1/sys/leader", read_route(sys::leader))
        .route("/v1/sys/mounts", read_route(sys::mounts))
        .route("/v1/sys/mounts/{*path}", write_route(sys::enable_mount))
        .route("/v1/{*rest}", any(unknown_path))
}

async fn method_not_allowed() -> VaultError {
    VaultError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        message: "unsupported operation".into(),
    }
}

async fn unknown_path() -> VaultError {
    VaultError {
        status: StatusCode::NOT_FOUND,
        message: String::new(),
    }
}

/// A fresh request id in UUID text form.
fn request_id() -> String {
    let mut id = [0u8; 16];
    rand::Rng::fill_bytes(&mut rand::rng(), &mut id);
    uuid_text(&id)
}

fn envelope_value(data: Value) -> Value {
    json!({
        "request_id": request_id(),
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": data,
        "wrap_info": null,
        "warnings": null,
        "auth": null,
    })
}

/// Vault's answer envelope around `data`.
fn envelope(data: Value) -> Response {
    Json(envelope_value(data)).into_response()
}

/// A Vault envelope whose data may hold plaintext (zeroized after encoding).
fn respond_secret(data: Value) -> Response {
    secret_json(envelope_value(data))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

// ---- keys ----

fn deletion_allowed(key: &KeyRecord) -> bool {
    key.tags
        .get(DELETION_ALLOWED_TAG)
        .is_some_and(|v| v.as_slice() == b"true")
}

/// Vault's key read shape; `keys` lists the versions that may decrypt, as
/// Vault's does.
fn key_data(key: &KeyRecord) -> Value {
    let live = key.versions.iter().filter(|v| {
        v.version >= key.min_decrypt_version
            && !matches!(
                v.state,
                VersionState::Destroyed | VersionState::Failed { .. }
            )
    });
    let keys: Map<String, Value> = live
        .map(|v| (v.version.0.to_string(), json!(v.created_ms / 1000)))
        .collect();
    json!({
        "name": key.name,
        "type": KEY_TYPE,
        "keys": keys,
        "latest_version": key.versions.last().map_or(0, |v| v.version.0),
        "min_available_version": min_available_version(key),
        "min_decryption_version": key.min_decrypt_version.0.max(1),
        "min_encryption_version": 0,
        "imported_key": false,
        "soft_deleted": false,
        "deletion_allowed": deletion_allowed(key),
        "exportable": false,
        "allow_plaintext_backup": false,
        "supports_encryption": true,
        "supports_decryption": true,
        "supports_derivation": false,
        "supports_signing": false,
        "derived": false,
        "auto_rotate_period": key.rotation_period_ms.map_or(0, |ms| ms / 1000),
    })
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    list: Option<String>,
}

async fn list_keys(
    State(state): State<AppState>,
    method: Method,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
    VaultCaller(caller): VaultCaller,
) -> Reply {
    let list_flag = query.ok().and_then(|Query(q)| q.list);
    let is_list = method.as_str() == "LIST"
        || (method == Method::GET && list_flag.as_deref() == Some("true"));
    if !is_list {
        return Err(method_not_allowed().await);
    }
    match state.read(&caller, ClientRequest::ListKeys).await? {
        ClientResponse::Keys(names) if names.is_empty() => Err(unknown_path().await),
        ClientResponse::Keys(names) => Ok(envelope(json!({ "keys": names }))),
        other => Err(Failure::unexpected("list keys", &other).into()),
    }
}

/// The first version not trimmed (destroyed, being destroyed, or a failed
/// generation) when the oldest versions are, else 0 as in Vault.
fn min_available_version(key: &KeyRecord) -> u32 {
    let gone = |s: &VersionState| {
        matches!(
            s,
            VersionState::Destroyed
                | VersionState::Destroying
                | VersionState::PendingDestruction { .. }
                | VersionState::Failed { .. }
        )
    };
    let trimmed = key.versions.iter().take_while(|v| gone(&v.state)).count();
    match key.versions.get(trimmed) {
        Some(v) if trimmed > 0 => v.version.0,
        _ => 0,
    }
}

/// Options Vault offers that Quorumkey refuses rather than ignores.
#[derive(Debug, Default, Deserialize)]
struct KeyOptions {
    #[serde(default, deserialize_with = "body::opt_bool")]
    exportable: Option<bool>,
    #[serde(default, deserialize_with = "body::opt_bool")]
    allow_plaintext_backup: Option<bool>,
    #[serde(default, deserialize_with = "body::opt_bool")]
    derived: Option<bool>,
    #[serde(default, deserialize_with = "body::opt_bool")]
    convergent_encryption: Option<bool>,
    #[serde(default, deserialize_with = "body::opt_u32")]
    min_encryption_version: Option<u32>,
}

impl KeyOptions {
    fn refuse_unsupported(&self) -> Result<(), VaultError> {
        let refused = [
            (self.exportable, "exportable", NO_EXPORT),
            (
                self.allow_plaintext_backup,
                "allow_plaintext_backup",
                NO_EXPORT,
            ),
            (
                self.derived,
                "derived",
                "the encryption context is always bound to the ciphertext instead (see \
                 docs/API.md, \"Vault Transit: differences\")",
            ),
            (
                self.convergent_encryption,
                "convergent_encryption",
                "every encryption is randomized",
            ),
        ];
        for (value, option, why) in refused {
            if value == Some(true) {
                return Err(VaultError::bad_request(format!(
                    "{option} is not supported: {why}; leave it unset or false"
                )));
            }
        }
        if self.min_encryption_version.is_some_and(|v| v > 0) {
            return Err(VaultError::bad_request(
                "min_encryption_version is not supported: encryption always uses the latest \
                 version; leave it unset or 0",
            ));
        }
        Ok(())
    }
}

const NO_EXPORT: &str = "no single party may hold a Quorumkey key: its private key exists only as \
     Shamir shares on the holders, so it cannot be exported or backed up in the clear";

#[derive(Debug, Default, Deserialize)]
struct CreateBody {
    #[serde(rename = "type")]
    key_type: Option<String>,
    auto_rotate_period: Option<Value>,
    #[serde(flatten)]
    options: KeyOptions,
}

fn check_key_type(key_type: Option<&str>) -> Result<(), VaultError> {
    match key_type.unwrap_or_default() {
        "" | KEY_TYPE => Ok(()),
        other => Err(VaultError::bad_request(format!(
            "unsupported key type {other}: Quorumkey offers one type, {KEY_TYPE} (encryption \
             and decryption by a quorum of holders; no signing, HMAC or export); omit type \
             or pass type={KEY_TYPE}"
        ))),
    }
}

async fn create_key(call: KeyCall<CreateBody>) -> Reply {
    let (state, caller, name, b) = call.into_parts();
    check_key_type(b.key_type.as_deref())?;
    b.options.refuse_unsupported()?;
    let rotation_period_ms = match &b.auto_rotate_period {
        Some(p) => parse_period_ms(p)?,
        None => None,
    };
    let op = Operation::CreateKey(qk_state::CreateKey {
        name: name.clone(),
        description: String::new(),
        owner: caller.principal.clone(),
        purpose: "encrypt".to_owned(),
        rotation_period_ms,
        expires_at_ms: None,
        threshold: 2,
        holders: Vec::new(),
    });
    // Like Vault, creating an existing key is not an error.
    let key = match state.write(&caller, op).await {
        Ok(_) => wait_generated(&state, &caller, &name, KeyVersion(1)).await?,
        Err(Refusal::Failed(f)) if f == state_failure(&StateError::KeyExists(name.clone())) => {
            fetch_key(&state, &caller, &name).await?
        }
        Err(r) => return Err(r.into()),
    };
    Ok(envelope(key_data(&key)))
}

/// A Vault duration: seconds as a number, or text like `90s`, `30m`, `24h`, `7d`.
fn parse_period_ms(value: &Value) -> Result<Option<u64>, VaultError> {
    let bad =
        || VaultError::bad_request("auto_rotate_period must be seconds or a duration like 24h");
    let seconds = match value {
        Value::Number(n) => n.as_u64().ok_or_else(bad)?,
        Value::String(s) => {
            let s = s.trim();
            let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let (digits, unit) = s.split_at(split);
            let n: u64 = digits.parse().map_err(|_| bad())?;
            let scale = match unit {
                "" | "s" => 1,
                "m" => 60,
                "h" => 3600,
                "d" => 86_400,
                _ => return Err(bad()),
            };
            n.checked_mul(scale).ok_or_else(bad)?
        }
        _ => return Err(bad()),
    };
    Ok((seconds > 0).then(|| seconds.saturating_mul(1000)))
}

async fn read_key(
    State(state): State<AppState>,
    VaultCaller(caller): VaultCaller,
    Path(name): Path<String>,
) -> Reply {
    Ok(envelope(key_data(
        &fetch_key(&state, &caller, &name).await?,
    )))
}

#[derive(Debug, Default, Deserialize)]
struct ConfigBody {
    #[serde(default, deserialize_with = "body::opt_u32")]
    min_decryption_version: Option<u32>,
    #[serde(default, deserialize_with = "body::opt_bool")]
    deletion_allowed: Option<bool>,
    auto_rotate_period: Option<Value>,
    #[serde(flatten)]
    options: KeyOptions,
}

async fn config(call: KeyCall<ConfigBody>) -> Reply {
    let (state, caller, name, b) = call.into_parts();
    b.options.refuse_unsupported()?;
    let key = fetch_key(&state, &caller, &name).await?;
    if let Some(v) = b.min_decryption_version {
        let op = Operation::SetMinDecryptVersion {
            name: name.clone(),
            version: KeyVersion(v),
        };
        state.write(&caller, op).await?;
    }
    if let Some(allowed) = b.deletion_allowed {
        let op = Operation::SetTag {
            name: name.clone(),
            tag: DELETION_ALLOWED_TAG.to_owned(),
            value: Some(allowed.to_string().into_bytes()),
        };
        state.write(&caller, op).await?;
    }
    if let Some(p) = &b.auto_rotate_period {
        let op = Operation::SetSchedule {
            name: name.clone(),
            rotation_period_ms: parse_period_ms(p)?,
            expires_at_ms: key.expires_at_ms,
        };
        state.write(&caller, op).await?;
    }
    Ok(envelope(key_data(
        &fetch_key(&state, &caller, &name).await?,
    )))
}

async fn rotate(call: KeyCall<Map<String, Value>>) -> Reply {
    let (state, caller, name, _) = call.into_parts();
    Ok(envelope(key_data(
        &rotate_and_wait(&state, &caller, &name).await?,
    )))
}

/// Schedules destruction of every version at once (after 0 ms).
async fn delete_key(
    State(state): State<AppState>,
    VaultCaller(caller): VaultCaller,
    Path(name): Path<String>,
) -> Reply {
    let key = fetch_key(&state, &caller, &name).await?;
    if !deletion_allowed(&key) {
        return Err(VaultError::bad_request(
            "deletion is not allowed for this key",
        ));
    }
    let body = LifecycleBody {
        after_ms: Some(0),
        ..LifecycleBody::default()
    };
    match apply_transition(&state, &caller, &name, Transition::Destroy, &body).await {
        Ok(_) => {}
        // Nothing left to destroy: already deleted.
        Err(Refusal::Failed(f)) if f.code == ErrorKind::Conflict => {}
        Err(r) => return Err(r.into()),
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Default, Deserialize)]
struct TrimBody {
    #[serde(default, deserialize_with = "body::opt_u32")]
    min_available_version: Option<u32>,
}

/// Versions below `min_available_version` are scheduled for quorum
/// destruction at once; like Vault, it may not pass the minimum decryption
/// version, so nothing still decryptable is trimmed.
async fn trim(call: KeyCall<TrimBody>) -> Reply {
    let (state, caller, name, b) = call.into_parts();
    let key = fetch_key(&state, &caller, &name).await?;
    let min_available = b
        .min_available_version
        .filter(|v| *v > 0)
        .ok_or_else(|| VaultError::bad_request("missing or zero min_available_version"))?;
    let min_decrypt = key.min_decrypt_version.0.max(1);
    if min_available > min_decrypt {
        return Err(VaultError::bad_request(format!(
            "minimum available version {min_available} cannot be greater than the minimum \
             decryption version {min_decrypt}; raise min_decryption_version first with \
             transit/keys/{name}/config"
        )));
    }
    let trimmed = key
        .versions
        .iter()
        .filter(|v| v.version.0 < min_available && Transition::Destroy.applies_to(v));
    let versions: Vec<u32> = trimmed.map(|v| v.version.0).collect();
    for version in versions {
        let body = LifecycleBody {
            version: Some(version),
            after_ms: Some(0),
            ..LifecycleBody::default()
        };
        apply_transition(&state, &caller, &name, Transition::Destroy, &body).await?;
    }
    Ok(envelope(key_data(
        &fetch_key(&state, &caller, &name).await?,
    )))
}

#[derive(Debug, Default, Deserialize)]
struct CacheConfigBody {
    #[serde(default, deserialize_with = "body::opt_u64")]
    size: Option<u64>,
}

/// Nodes keep no key cache to size (keys are read from the applied state),
/// so the only size there is, 0, is answered and any other is refused.
async fn cache_config(_: VaultCaller, headers: HeaderMap, body: Body) -> Reply {
    let b: CacheConfigBody = body::parse(&headers, body)?;
    if b.size.is_some_and(|s| s > 0) {
        return Err(VaultError::bad_request(
            "a cache size cannot be set: Quorumkey nodes read keys from their replicated \
             state and keep no transit key cache; leave size unset or 0",
        ));
    }
    Ok(envelope(json!({ "size": 0 })))
}

async fn no_export() -> VaultError {
    VaultError::bad_request(format!(
        "backup, restore and export are not offered: {NO_EXPORT}"
    ))
}

async fn no_signing() -> VaultError {
    VaultError::bad_request(format!(
        "hmac, sign and verify are not offered: {KEY_TYPE} keys encrypt and decrypt only"
    ))
}

// ---- data ----

/// One encrypt/decrypt/rewrap item (also the top level of a single request).
#[derive(Debug, Default, Deserialize)]
struct Item {
    plaintext: Option<String>,
    ciphertext: Option<String>,
    context: Option<String>,
    approval_id: Option<String>,
    /// Echoed back in the item's result, as Vault does.
    reference: Option<String>,
}

impl Drop for Item {
    fn drop(&mut self) {
        if let Some(p) = &mut self.plaintext {
            p.zeroize();
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct DataBody {
    #[serde(flatten)]
    item: Item,
    batch_input: Option<Vec<Item>>,
    /// The status of a batch where some items failed and some did not.
    #[serde(default, deserialize_with = "body::opt_u32")]
    partial_failure_response_code: Option<u32>,
}

/// A batch's status, as Vault decides it: 200 when every item succeeded;
/// `partial_failure_response_code` (when given) if some did; otherwise 400
/// for a caller's error in any item, 500 for the cluster's.
fn batch_status(
    succeeded: usize,
    client_error: bool,
    server_error: bool,
    partial_code: Option<u32>,
) -> Result<StatusCode, VaultError> {
    let partial = partial_code
        .map(|c| chosen_status(c, "partial_failure_response_code"))
        .transpose()?;
    Ok(match (client_error || server_error, partial) {
        (false, _) => StatusCode::OK,
        (true, Some(code)) if succeeded > 0 => code,
        _ if client_error => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    })
}

fn context_of(vault_context: Option<&str>) -> Result<BTreeMap<String, String>, Failure> {
    let mut context = BTreeMap::new();
    if let Some(c) = vault_context.filter(|c| !c.is_empty()) {
        B64.decode(c)
            .map_err(|_| Failure::invalid("context must be base64"))?;
        context.insert(VAULT_CONTEXT_KEY.to_owned(), c.to_owned());
    }
    Ok(context)
}

/// `vault:v<N>:<base64 of the qk ciphertext>` from `qk:v1:` text.
fn to_vault_ciphertext(qk_text: &str, version: u32) -> Result<String, Failure> {
    let ct = qk_crypto::Ciphertext::from_text(qk_text).map_err(|e| {
        Failure::new(
            ErrorKind::Internal,
            format!("the node returned an unreadable ciphertext: {e}"),
        )
    })?;
    Ok(format!(
        "{VAULT_PREFIX}{version}:{}",
        B64.encode(ct.to_bytes())
    ))
}

/// `qk:v1:` text from a Vault (or qk) ciphertext.
fn from_vault_ciphertext(text: &str) -> Result<String, Failure> {
    let bad = |why: String| Failure::invalid(format!("invalid ciphertext: {why}"));
    if text.starts_with("qk:v1:") {
        return Ok(text.to_owned());
    }
    let rest = text
        .strip_prefix(VAULT_PREFIX)
        .ok_or_else(|| bad("expected vault:v<N>:<base64> or qk:v1:...".into()))?;
    let (version, encoded) = rest
        .split_once(':')
        .ok_or_else(|| bad("missing the version separator".into()))?;
    let version: u32 = version
        .parse()
        .map_err(|_| bad("the version is not a number".into()))?;
    let bytes = B64
        .decode(encoded)
        .map_err(|_| bad("the payload is not base64".into()))?;
    let ct = qk_crypto::Ciphertext::from_bytes(&bytes).map_err(|e| bad(e.to_string()))?;
    if ct.version.0 != version {
        return Err(bad(
            "the version prefix does not match the ciphertext".into()
        ));
    }
    Ok(ct.to_text())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DataOp {
    Encrypt,
    Decrypt,
    Rewrap,
}

/// Runs one item; `Ok` is its result object, `Err` its error.
async fn run_item(
    state: &AppState,
    caller: &Caller,
    name: &str,
    op: DataOp,
    item: &Item,
) -> Result<Value, VaultError> {
    let context = context_of(item.context.as_deref())?;
    let field = |v: &Option<String>, what: &str| {
        v.clone()
            .ok_or_else(|| VaultError::bad_request(format!("missing {what} in the request")))
    };
    let req = match op {
        DataOp::Encrypt => ClientRequest::Encrypt {
            name: name.to_owned(),
            context,
            plaintext: decode_b64(
                "plaintext",
                item.plaintext
                    .as_deref()
                    .ok_or_else(|| VaultError::bad_request("missing plaintext to encrypt"))?,
            )?,
        },
        DataOp::Decrypt => ClientRequest::Decrypt {
            ciphertext: from_vault_ciphertext(&field(&item.ciphertext, "ciphertext")?)?,
            context,
            approval: item.approval_id.clone(),
        },
        DataOp::Rewrap => ClientRequest::Rewrap {
            ciphertext: from_vault_ciphertext(&field(&item.ciphertext, "ciphertext")?)?,
            context,
            to_key: Some(name.to_owned()),
        },
    };
    match state.read(caller, req).await? {
        ClientResponse::Ciphertext { text, version } => Ok(json!({
            "ciphertext": to_vault_ciphertext(&text, version)?,
            "key_version": version,
        })),
        ClientResponse::Plaintext(p) => Ok(json!({ "plaintext": secret_b64(&p).as_str() })),
        other => Err(Failure::unexpected("a transit request", &other).into()),
    }
}

async fn run_data(call: KeyCall<DataBody>, op: DataOp) -> Reply {
    let (state, caller, name, b) = call.into_parts();
    let Some(batch) = &b.batch_input else {
        let data = run_item(&state, &caller, &name, op, &b.item).await?;
        return Ok(respond_secret(data));
    };
    if batch.len() > MAX_BATCH_ITEMS {
        return Err(VaultError::bad_request(format!(
            "batch_input has {} items; send at most {MAX_BATCH_ITEMS} per request",
            batch.len()
        )));
    }
    let mut outcomes = Vec::with_capacity(batch.len());
    for chunk in batch.chunks(BATCH_PARALLELISM) {
        let runs: Vec<_> = chunk
            .iter()
            .map(|item| run_item(&state, &caller, &name, op, item))
            .collect();
        outcomes.extend(futures::future::join_all(runs).await);
    }
    let mut results = Vec::with_capacity(batch.len());
    let (mut succeeded, mut client_error, mut server_error) = (0, false, false);
    for (item, outcome) in batch.iter().zip(outcomes) {
        let mut result = match outcome {
            Ok(v) => {
                succeeded += 1;
                v
            }
            Err(e) => {
                server_error |= e.status.is_server_error();
                client_error |= !e.status.is_server_error();
                json!({ "error": e.message })
            }
        };
        result["reference"] = json!(item.reference.as_deref().unwrap_or_default());
        results.push(result);
    }
    let status = batch_status(
        succeeded,
        client_error,
        server_error,
        b.partial_failure_response_code,
    )?;
    let mut response = respond_secret(json!({ "batch_results": results }));
    *response.status_mut() = status;
    Ok(response)
}

async fn encrypt(call: KeyCall<DataBody>) -> Reply {
    run_data(call, DataOp::Encrypt).await
}

async fn decrypt(call: KeyCall<DataBody>) -> Reply {
    run_data(call, DataOp::Decrypt).await
}

async fn rewrap(call: KeyCall<DataBody>) -> Reply {
    run_data(call, DataOp::Rewrap).await
}

#[derive(Debug, Default, Deserialize)]
struct DataKeyBody {
    #[serde(default, deserialize_with = "body::opt_u32")]
    bits: Option<u32>,
    context: Option<String>,
}

async fn datakey(
    State(state): State<AppState>,
    VaultCaller(caller): VaultCaller,
    Path((kind, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Reply {
    let with_plaintext = match kind.as_str() {
        "plaintext" => true,
        "wrapped" => false,
        _ => {
            return Err(VaultError::bad_request(
                "datakey type must be plaintext or wrapped",
            ))
        }
    };
    let b: DataKeyBody = body::parse(&headers, body)?;
    let bytes = match b.bits.unwrap_or(256) {
        128 => 16,
        256 => 32,
        512 => 64,
        _ => return Err(VaultError::bad_request("invalid bits: use 128, 256 or 512")),
    };
    let context = context_of(b.context.as_deref())?;
    let req = ClientRequest::DataKey {
        name,
        bytes,
        context,
    };
    match state.read(&caller, req).await? {
        ClientResponse::DataKey {
            plaintext,
            ciphertext,
            version,
        } => {
            let mut data = json!({
                "ciphertext": to_vault_ciphertext(&ciphertext, version)?,
                "key_version": version,
            });
            if with_plaintext {
                data["plaintext"] = json!(secret_b64(&plaintext).as_str());
            }
            Ok(respond_secret(data))
        }
        other => Err(Failure::unexpected("datakey", &other).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_parse() {
        assert_eq!(parse_period_ms(&json!(60)).ok(), Some(Some(60_000)));
        assert_eq!(parse_period_ms(&json!("24h")).ok(), Some(Some(86_400_000)));
        assert_eq!(parse_period_ms(&json!("0")).ok(), Some(None));
        assert!(parse_period_ms(&json!("5y")).is_err());
        assert!(parse_period_ms(&json!("99999999999999999999d")).is_err());
    }

    #[test]
    fn batch_status_follows_vault() {
        let st = |ok, client, server, code| batch_status(ok, client, server, code).ok();
        assert_eq!(st(2, false, false, None), Some(StatusCode::OK));
        assert_eq!(st(2, false, false, Some(207)), Some(StatusCode::OK));
        assert_eq!(st(1, true, false, None), Some(StatusCode::BAD_REQUEST));
        assert_eq!(
            st(1, true, false, Some(207)),
            Some(StatusCode::MULTI_STATUS)
        );
        assert_eq!(st(0, true, false, Some(207)), Some(StatusCode::BAD_REQUEST));
        assert_eq!(
            st(1, false, true, None),
            Some(StatusCode::INTERNAL_SERVER_ERROR)
        );
        assert_eq!(st(1, true, true, None), Some(StatusCode::BAD_REQUEST));
        assert_eq!(st(1, true, false, Some(99)), None);
        assert_eq!(st(1, true, false, Some(70_000)), None);
    }

    #[test]
    fn bad_vault_ciphertexts_are_invalid() {
        for text in [
            "",
            "vault:",
            "vault:vx:AAAA",
            "vault:v1:!!",
            "vault:v1:AAAA",
            "x",
        ] {
            assert!(from_vault_ciphertext(text).is_err(), "{text}");
        }
    }
}
