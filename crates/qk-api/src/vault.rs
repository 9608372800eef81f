//! The Vault Transit-compatible API under `/v1` (docs/API.md, "Vault
//! Transit"): Vault's paths, verbs, bodies, envelope and error shape, so
//! Vault clients (hvac, the vault CLI, Vault SDKs) work unchanged.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, on, MethodFilter, MethodRouter};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use qk_raft::{ClientRequest, ClientResponse};
use qk_state::{KeyRecord, Operation, StateError, VersionState};
use qk_types::KeyVersion;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use zeroize::Zeroize as _;

use crate::errors::{state_failure, ErrorCode, Failure, Refusal};
use crate::native::{
    apply_transition, decode_b64, fetch_key, rotate_and_wait, secret_b64, secret_json,
    wait_generated, LifecycleBody, Transition,
};
use crate::{authenticate, parse_json, AppState, Caller, ConnPeer};

/// Key tag that allows `DELETE /v1/transit/keys/:name` ("true").
pub const DELETION_ALLOWED_TAG: &str = "vault.deletion_allowed";
/// Encryption-context entry a Vault `context` becomes.
pub const VAULT_CONTEXT_KEY: &str = "vault_context";
/// Most items in one `batch_input`.
pub const MAX_BATCH_ITEMS: usize = 256;
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

/// Vault's status for a failure: 401 is 403 (Vault's "permission denied"),
/// 409 is 400 (Vault has no conflict status).
/// A failure in Vault's error shape, for code outside the Vault handlers.
pub(crate) fn failure_response(f: Failure) -> Response {
    VaultError::from(f).into_response()
}

impl From<Failure> for VaultError {
    fn from(f: Failure) -> Self {
        let status = match f.code {
            ErrorCode::Unauthenticated | ErrorCode::Denied => StatusCode::FORBIDDEN,
            ErrorCode::Conflict | ErrorCode::Invalid => StatusCode::BAD_REQUEST,
            other => other.status(),
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

fn write_route<H, T>(handler: H) -> MethodRouter<AppState>
where
    H: axum::handler::Handler<T, AppState>,
    T: 'static,
{
    on(MethodFilter::POST.or(MethodFilter::PUT), handler).fallback(method_not_allowed)
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
        .route("/v1/transit/keys/{name}/config", write_route(config))
        .route("/v1/transit/keys/{name}/rotate", write_route(rotate))
        .route("/v1/transit/encrypt/{name}", write_route(encrypt))
        .route("/v1/transit/decrypt/{name}", write_route(decrypt))
        .route("/v1/transit/rewrap/{name}", write_route(rewrap))
        .route("/v1/transit/datakey/{kind}/{name}", write_route(datakey))
        .route(
            "/v1/auth/token/lookup-self",
            get(lookup_self).fallback(method_not_allowed),
        )
        .route("/v1/sys/health", get(health).fallback(method_not_allowed))
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
    let h = crate::views::hex(&id);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
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

/// Vault's key read shape.
fn key_data(key: &KeyRecord) -> Value {
    let live = key.versions.iter().filter(|v| {
        !matches!(
            v.state,
            VersionState::Destroyed | VersionState::Failed { .. }
        )
    });
    let keys: Map<String, Value> = live
        .map(|v| (v.version.0.to_string(), json!(v.created_ms / 1000)))
        .collect();
    json!({
        "name": key.name,
        "type": key.purpose,
        "keys": keys,
        "latest_version": key.versions.last().map_or(0, |v| v.version.0),
        "min_decryption_version": key.min_decrypt_version.0.max(1),
        "min_encryption_version": 0,
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

#[derive(Debug, Default, Deserialize)]
struct CreateBody {
    #[serde(rename = "type")]
    key_type: Option<String>,
    auto_rotate_period: Option<Value>,
}

async fn create_key(
    State(state): State<AppState>,
    VaultCaller(caller): VaultCaller,
    Path(name): Path<String>,
    body: Body,
) -> Reply {
    let b: CreateBody = parse_json(body)?;
    let rotation_period_ms = match &b.auto_rotate_period {
        Some(p) => parse_period_ms(p)?,
        None => None,
    };
    let op = Operation::CreateKey(qk_state::CreateKey {
        name: name.clone(),
        description: String::new(),
        owner: caller.principal.clone(),
        purpose: b.key_type.unwrap_or_else(|| "aes256-gcm96".to_owned()),
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
    min_decryption_version: Option<u32>,
    deletion_allowed: Option<bool>,
    auto_rotate_period: Option<Value>,
}

async fn config(
    State(state): State<AppState>,
    VaultCaller(caller): VaultCaller,
    Path(name): Path<String>,
    body: Body,
) -> Reply {
    let b: ConfigBody = parse_json(body)?;
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

async fn rotate(
    State(state): State<AppState>,
    VaultCaller(caller): VaultCaller,
    Path(name): Path<String>,
    body: Body,
) -> Reply {
    let _: Value = parse_json(body)?;
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
        Err(Refusal::Failed(f)) if f.code == ErrorCode::Conflict => {}
        Err(r) => return Err(r.into()),
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- data ----

/// One encrypt/decrypt/rewrap item (also the top level of a single request).
#[derive(Debug, Default, Deserialize)]
struct Item {
    plaintext: Option<String>,
    ciphertext: Option<String>,
    context: Option<String>,
    approval_id: Option<String>,
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
            ErrorCode::Internal,
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
            plaintext: decode_b64("plaintext", item.plaintext.as_deref().unwrap_or(""))?,
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

async fn run_data(state: AppState, caller: Caller, name: String, op: DataOp, body: Body) -> Reply {
    let b: DataBody = parse_json(body)?;
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
    let mut results = Vec::with_capacity(batch.len());
    for item in batch {
        let result = match run_item(&state, &caller, &name, op, item).await {
            Ok(v) => v,
            Err(e) => json!({ "error": e.message }),
        };
        results.push(result);
    }
    Ok(respond_secret(json!({ "batch_results": results })))
}

async fn encrypt(
    State(state): State<AppState>,
    VaultCaller(caller): VaultCaller,
    Path(name): Path<String>,
    body: Body,
) -> Reply {
    run_data(state, caller, name, DataOp::Encrypt, body).await
}

async fn decrypt(
    State(state): State<AppState>,
    VaultCaller(caller): VaultCaller,
    Path(name): Path<String>,
    body: Body,
) -> Reply {
    run_data(state, caller, name, DataOp::Decrypt, body).await
}

async fn rewrap(
    State(state): State<AppState>,
    VaultCaller(caller): VaultCaller,
    Path(name): Path<String>,
    body: Body,
) -> Reply {
    run_data(state, caller, name, DataOp::Rewrap, body).await
}

#[derive(Debug, Default, Deserialize)]
struct DataKeyBody {
    bits: Option<u32>,
    context: Option<String>,
}

async fn datakey(
    State(state): State<AppState>,
    VaultCaller(caller): VaultCaller,
    Path((kind, name)): Path<(String, String)>,
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
    let b: DataKeyBody = parse_json(body)?;
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

// ---- token and health ----

/// RFC 3339 UTC text of a Unix time in seconds.
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

async fn lookup_self(State(state): State<AppState>, VaultCaller(caller): VaultCaller) -> Reply {
    let req = ClientRequest::WhoAmI {
        token_id: caller.token_id.clone(),
    };
    let (principal, token) = match state.read(&caller, req).await? {
        ClientResponse::Identity { principal, token } => (principal, token),
        other => return Err(Failure::unexpected("lookup-self", &other).into()),
    };
    let policies: Vec<&str> = principal.roles.iter().map(|r| r.name()).collect();
    let now_s = now_ms() / 1000;
    let (id, ttl, expire_time) = match &token {
        Some(t) => (
            t.id.clone(),
            (t.expires_at_ms / 1000).saturating_sub(now_s),
            json!(rfc3339(t.expires_at_ms / 1000)),
        ),
        None => (String::new(), 0, Value::Null),
    };
    Ok(envelope(json!({
        "id": id,
        "display_name": principal.name,
        "policies": policies,
        "ttl": ttl,
        "expire_time": expire_time,
        "entity_id": "",
        "meta": null,
    })))
}

#[derive(Debug, Deserialize)]
struct HealthQuery {
    standbyok: Option<bool>,
}

async fn health(
    State(state): State<AppState>,
    query: Result<Query<HealthQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let standby_ok = query.ok().and_then(|Query(q)| q.standbyok) == Some(true);
    let ready = state.backend.readiness().is_ok();
    let standby = !state.backend.gauges().is_leader;
    let status = match (ready, standby) {
        (false, _) => StatusCode::SERVICE_UNAVAILABLE,
        (true, true) if !standby_ok => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::OK,
    };
    let body = json!({
        "initialized": true,
        "sealed": false,
        "standby": standby,
        "performance_standby": false,
        "replication_performance_mode": "disabled",
        "replication_dr_mode": "disabled",
        "server_time_utc": now_ms() / 1000,
        "version": concat!("qk-", env!("CARGO_PKG_VERSION")),
        "cluster_name": "quorumkey",
        "cluster_id": "",
    });
    (status, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn periods_parse() {
        assert_eq!(parse_period_ms(&json!(60)).ok(), Some(Some(60_000)));
        assert_eq!(parse_period_ms(&json!("24h")).ok(), Some(Some(86_400_000)));
        assert_eq!(parse_period_ms(&json!("0")).ok(), Some(None));
        assert!(parse_period_ms(&json!("5y")).is_err());
        assert!(parse_period_ms(&json!("99999999999999999999d")).is_err());
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
