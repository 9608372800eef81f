//! The native API under `/api/v1` (docs/API.md, "Native endpoints").

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use qk_state::{
    Applied, ApprovalRule, CreateKey, KeyPolicy, KeyRecord, LifecycleChange, Operation, Role,
    VersionState,
};
use qk_types::{KeyVersion, NodeId};
use qk_wire::{ClientRequest, ClientResponse, CredentialKind, Redacted};
use serde::Deserialize;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use crate::errors::{ErrorKind, Failure, Refusal};
use crate::views::{
    hex, ApprovalView, AuditRecordView, KeyView, PrincipalView, RefreshScheduleRequest,
    RequestMemoryView, TokenView,
};
use crate::{authenticate, body_failure, parse_json, AppState, Caller, ConnPeer};

/// How often key creation and rotation poll for the end of generation.
const GENERATION_POLL: Duration = Duration::from_millis(50);
/// Longest key creation and rotation wait for generation.
const GENERATION_WAIT: Duration = Duration::from_secs(60);
/// How long a key is read back after a committed change while its
/// linearizable read cannot be confirmed (a leader lost just after).
const READ_BACK_WAIT: Duration = Duration::from_secs(10);
/// Most audit records one request returns.
const MAX_AUDIT_LIMIT: u32 = 1000;
/// Default threshold of a new key (the CLI's default too).
const DEFAULT_THRESHOLD: u16 = 2;

type Body = Result<Bytes, BytesRejection>;
type Reply = Result<Response, Refusal>;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/health/live", get(live))
        .route("/api/v1/health/ready", get(ready))
        .route("/api/v1/cluster", get(cluster))
        .route("/api/v1/keys", get(list_keys).post(create_key))
        .route("/api/v1/keys/{name}", get(get_key))
        .route("/api/v1/keys/{name}/rotate", post(rotate))
        .route("/api/v1/keys/{name}/{action}", post(lifecycle))
        .route("/api/v1/keys/{name}/config", post(config))
        .route(
            "/api/v1/keys/{name}/policy",
            get(get_policy).put(set_policy),
        )
        .route("/api/v1/keys/{name}/encrypt", post(encrypt))
        .route("/api/v1/keys/{name}/datakey", post(datakey))
        .route("/api/v1/decrypt", post(decrypt))
        .route("/api/v1/partial", post(partial))
        .route("/api/v1/rewrap", post(rewrap))
        .route(
            "/api/v1/principals",
            get(list_principals).post(create_principal),
        )
        .route(
            "/api/v1/principals/{name}",
            put(update_principal).delete(delete_principal),
        )
        .route("/api/v1/tokens", get(list_tokens).post(create_token))
        .route("/api/v1/tokens/{id}", axum::routing::delete(revoke_token))
        .route("/api/v1/kms/credentials", post(create_aws_credential))
        .route("/api/v1/whoami", get(whoami))
        .route(
            "/api/v1/access-rule",
            get(get_access_rule).put(set_access_rule),
        )
        .route(
            "/api/v1/cluster/request-shares",
            post(enable_request_shares),
        )
        .route(
            "/api/v1/cluster/refresh-schedule",
            put(set_refresh_schedule),
        )
        .route("/api/v1/approvals", get(list_approvals))
        .route("/api/v1/approvals/{id}/approve", post(approve))
        .route("/api/v1/approvals/{id}/deny", post(deny))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/audit/verify", get(audit_verify))
        .route("/api/v1/audit/checkpoint", get(audit_checkpoint))
}

/// The authenticated caller of a native request (401 otherwise).
#[derive(Debug)]
pub(crate) struct Authed(pub Caller);

impl FromRequestParts<AppState> for Authed {
    type Rejection = Failure;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Failure> {
        let peer = parts.extensions.get::<ConnPeer>();
        authenticate(state.backend.as_ref(), &parts.headers, peer).map(Authed)
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self {
            Refusal::Failed(f) => f.into_response(),
            Refusal::Pending(record) => (
                StatusCode::ACCEPTED,
                Json(json!({"approval": ApprovalView::from(record.as_ref())})),
            )
                .into_response(),
            Refusal::PendingId(id) => {
                (StatusCode::ACCEPTED, Json(json!({"approval": {"id": id}}))).into_response()
            }
        }
    }
}

pub(crate) async fn not_found() -> Failure {
    Failure::not_found("no such endpoint; see docs/API.md for the paths this API serves")
}

fn ok<T: serde::Serialize>(value: T) -> Reply {
    Ok(Json(value).into_response())
}

fn created<T: serde::Serialize>(value: T) -> Reply {
    Ok((StatusCode::CREATED, Json(value)).into_response())
}

fn unexpected(what: &str, r: &ClientResponse) -> Refusal {
    Failure::unexpected(what, r).into()
}

/// Answers a list read as `{"<field>": [views]}`; `list` finds the records
/// in the backend's answer (`None` when it is another answer).
async fn list_views<T, V>(
    state: &AppState,
    caller: &Caller,
    request: ClientRequest,
    field: &str,
    list: fn(&ClientResponse) -> Option<&[T]>,
) -> Reply
where
    V: serde::Serialize + for<'a> From<&'a T>,
{
    let answer = state.read(caller, request).await?;
    let Some(records) = list(&answer) else {
        return Err(unexpected(&format!("list {field}"), &answer));
    };
    let views: Vec<V> = records.iter().map(V::from).collect();
    ok(json!({ field: views }))
}

async fn live(State(state): State<AppState>) -> Response {
    Json(json!({"status": "live", "node_id": state.backend.node_id()})).into_response()
}

async fn ready(State(state): State<AppState>) -> Response {
    let node_id = state.backend.node_id();
    match state.backend.readiness() {
        Ok(leader) => {
            Json(json!({"status": "ready", "node_id": node_id, "leader": leader})).into_response()
        }
        Err(e) => Failure::new(
            e.kind,
            format!("node {node_id} is not ready: {}", e.message),
        )
        .into_response(),
    }
}

async fn cluster(State(state): State<AppState>, Authed(caller): Authed) -> Reply {
    match state.read(&caller, ClientRequest::ClusterHealth).await? {
        ClientResponse::ClusterHealth(h) => ok(json!({
            "node_id": h.status.node_id,
            "leader": h.status.leader,
            "term": h.status.term,
            "last_applied": h.status.last_applied,
            "members": h.members,
            "versions": h.versions,
            "request_memory": RequestMemoryView::new(
                h.request_memory.remembered,
                h.request_memory.shares_enabled,
            ),
            "refresh_every_ms": h.refresh_every_ms,
        })),
        other => Err(unexpected("cluster health", &other)),
    }
}

// ---- keys ----

pub(crate) async fn fetch_key(
    state: &AppState,
    caller: &Caller,
    name: &str,
) -> Result<KeyRecord, Refusal> {
    let req = ClientRequest::GetKey {
        name: name.to_owned(),
    };
    match state.read(caller, req).await? {
        ClientResponse::Key(Some(k)) => Ok(k),
        ClientResponse::Key(None) => Err(Failure::not_found(format!(
            "key {name:?} does not exist; list keys to see the inventory"
        ))
        .into()),
        other => Err(unexpected("a key read", &other)),
    }
}

/// Reads `name` after a committed change to it. A read the cluster cannot
/// confirm right now is retried for [`READ_BACK_WAIT`]; a last failure says
/// the change itself is committed, so that no one repeats it (a repeated
/// rotation would make another version).
async fn read_back(state: &AppState, caller: &Caller, name: &str) -> Result<KeyRecord, Refusal> {
    let deadline = Instant::now() + READ_BACK_WAIT;
    loop {
        match fetch_key(state, caller, name).await {
            Err(Refusal::Failed(f)) if f.code == ErrorKind::Unavailable => {
                if Instant::now() >= deadline {
                    return Err(Failure::new(
                        ErrorKind::Unavailable,
                        format!(
                            "the change to key {name:?} is committed, but reading the key back \
                             failed: {}; do not repeat the change, check it with \
                             `qk key show {name}`",
                            f.message
                        ),
                    )
                    .into());
                }
                tokio::time::sleep(GENERATION_POLL).await;
            }
            other => return other,
        }
    }
}

/// Polls until `version` of `name` leaves `generating` (or the wait ends).
pub(crate) async fn wait_generated(
    state: &AppState,
    caller: &Caller,
    name: &str,
    version: KeyVersion,
) -> Result<KeyRecord, Refusal> {
    let deadline = Instant::now() + GENERATION_WAIT;
    loop {
        let key = read_back(state, caller, name).await?;
        let generating = key
            .version(version)
            .is_some_and(|v| v.state == VersionState::Generating);
        if !generating || Instant::now() >= deadline {
            return Ok(key);
        }
        tokio::time::sleep(GENERATION_POLL).await;
    }
}

async fn list_keys(State(state): State<AppState>, Authed(caller): Authed) -> Reply {
    match state.read(&caller, ClientRequest::KeyInventory).await? {
        ClientResponse::KeyRecords(keys) => {
            let views: Vec<KeyView> = keys.iter().map(KeyView::from).collect();
            ok(json!({ "keys": views }))
        }
        other => Err(unexpected("the key inventory", &other)),
    }
}

async fn get_key(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(name): Path<String>,
) -> Reply {
    ok(KeyView::from(&fetch_key(&state, &caller, &name).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKeyBody {
    name: String,
    #[serde(default)]
    description: String,
    owner: Option<String>,
    purpose: Option<String>,
    threshold: Option<u16>,
    #[serde(default)]
    holders: Vec<u64>,
    rotation_period_ms: Option<u64>,
    expires_at_ms: Option<u64>,
}

async fn create_key(State(state): State<AppState>, Authed(caller): Authed, body: Body) -> Reply {
    let b: CreateKeyBody = parse_json(body)?;
    let op = Operation::CreateKey(CreateKey {
        name: b.name.clone(),
        description: b.description,
        owner: b.owner.unwrap_or_else(|| caller.principal.clone()),
        purpose: b.purpose.unwrap_or_else(|| "encrypt".to_owned()),
        rotation_period_ms: b.rotation_period_ms,
        expires_at_ms: b.expires_at_ms,
        threshold: b.threshold.unwrap_or(DEFAULT_THRESHOLD),
        holders: b.holders.into_iter().map(NodeId).collect(),
    });
    let version = match state.write(&caller, op).await? {
        Applied::KeyCreated { version, .. } => version,
        _ => KeyVersion(1),
    };
    created(KeyView::from(
        &wait_generated(&state, &caller, &b.name, version).await?,
    ))
}

/// Starts a new version and waits for its generation.
pub(crate) async fn rotate_and_wait(
    state: &AppState,
    caller: &Caller,
    name: &str,
) -> Result<KeyRecord, Refusal> {
    let op = Operation::Rotate {
        name: name.to_owned(),
        holders: Vec::new(),
        generation_timeout_ms: None,
    };
    match state.write(caller, op).await? {
        Applied::VersionCreated { version } => wait_generated(state, caller, name, version).await,
        _ => read_back(state, caller, name).await,
    }
}

async fn rotate(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(name): Path<String>,
    body: Body,
) -> Reply {
    let _: Value = parse_json(body)?;
    ok(KeyView::from(
        &rotate_and_wait(&state, &caller, &name).await?,
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LifecycleBody {
    pub version: Option<u32>,
    pub reason: Option<String>,
    #[serde(default)]
    pub allow_decrypt: bool,
    pub after_ms: Option<u64>,
}

/// The version-state transitions: disable, enable, mark-compromised,
/// destroy, cancel-destroy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transition {
    Disable,
    Enable,
    MarkCompromised,
    Destroy,
    CancelDestroy,
    /// New shares of the same key for every holder (a new share epoch).
    Refresh,
}

impl Transition {
    fn parse(action: &str) -> Option<Self> {
        Some(match action {
            "disable" => Transition::Disable,
            "enable" => Transition::Enable,
            "mark-compromised" => Transition::MarkCompromised,
            "destroy" => Transition::Destroy,
            "cancel-destroy" => Transition::CancelDestroy,
            "refresh" => Transition::Refresh,
            _ => return None,
        })
    }

    /// Whether the transition applies to a version (when none is named):
    /// the state machine's own guard, except that a version already marked
    /// compromised is not marked again unless named.
    pub(crate) fn applies_to(self, v: &qk_state::KeyVersionRecord) -> bool {
        let change = match self {
            Transition::Disable => LifecycleChange::Disable,
            Transition::Enable => LifecycleChange::Enable,
            Transition::MarkCompromised if v.compromised.is_some() => return false,
            Transition::MarkCompromised => LifecycleChange::MarkCompromised,
            Transition::Destroy => LifecycleChange::ScheduleDestruction,
            Transition::CancelDestroy => LifecycleChange::CancelDestruction,
            Transition::Refresh => LifecycleChange::Refresh,
        };
        change.allowed(v)
    }

    fn operation(self, name: &str, version: KeyVersion, b: &LifecycleBody) -> Operation {
        let name = name.to_owned();
        match self {
            Transition::Disable => Operation::Disable { name, version },
            Transition::Enable => Operation::Enable { name, version },
            Transition::MarkCompromised => Operation::MarkCompromised {
                name,
                version,
                reason: b.reason.clone().unwrap_or_default(),
                allow_decrypt: b.allow_decrypt,
            },
            Transition::Destroy => Operation::ScheduleDestruction {
                name,
                version,
                after_ms: b.after_ms.unwrap_or(0),
            },
            Transition::CancelDestroy => Operation::CancelDestruction { name, version },
            Transition::Refresh => Operation::Refresh {
                name,
                version,
                timeout_ms: None,
            },
        }
    }

    fn check(self, b: &LifecycleBody) -> Result<(), Failure> {
        match self {
            Transition::MarkCompromised if b.reason.as_deref().is_none_or(str::is_empty) => Err(
                Failure::invalid("mark-compromised needs a \"reason\" (what happened)"),
            ),
            Transition::Destroy if b.after_ms.is_none() => Err(Failure::invalid(
                "destroy needs \"after_ms\", the waiting period before destruction (ms)",
            )),
            _ => Ok(()),
        }
    }
}

/// Applies `t` to `version`, or to every version it applies to.
pub(crate) async fn apply_transition(
    state: &AppState,
    caller: &Caller,
    name: &str,
    t: Transition,
    b: &LifecycleBody,
) -> Result<KeyRecord, Refusal> {
    let versions: Vec<KeyVersion> = match b.version {
        Some(v) => vec![KeyVersion(v)],
        None => {
            let key = fetch_key(state, caller, name).await?;
            let applicable: Vec<KeyVersion> = key
                .versions
                .iter()
                .filter(|v| t.applies_to(v))
                .map(|v| v.version)
                .collect();
            // With none applicable, the newest is proposed anyway: the state
            // machine then refuses it — permission first (403, audited),
            // then the state (409) — rather than this layer guessing.
            match (applicable.is_empty(), key.versions.last()) {
                (true, Some(newest)) => vec![newest.version],
                _ => applicable,
            }
        }
    };
    if versions.is_empty() {
        return Err(Failure::new(
            ErrorKind::Conflict,
            format!("key {name:?} has no versions; nothing changed"),
        )
        .into());
    }
    for version in versions {
        state.write(caller, t.operation(name, version, b)).await?;
    }
    read_back(state, caller, name).await
}

async fn lifecycle(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path((name, action)): Path<(String, String)>,
    body: Body,
) -> Reply {
    let Some(t) = Transition::parse(&action) else {
        return Err(not_found().await.into());
    };
    let b: LifecycleBody = parse_json(body)?;
    t.check(&b)?;
    let key = apply_transition(&state, &caller, &name, t, &b).await?;
    if t == Transition::Refresh {
        return ok(KeyView::from(
            &wait_refreshed(&state, &caller, &name).await?,
        ));
    }
    ok(KeyView::from(&key))
}

/// Waits (up to the generation wait) until no version of the key is being
/// refreshed; answers the key as it is then.
async fn wait_refreshed(
    state: &AppState,
    caller: &Caller,
    name: &str,
) -> Result<KeyRecord, Refusal> {
    let deadline = Instant::now() + GENERATION_WAIT;
    loop {
        let key = read_back(state, caller, name).await?;
        let refreshing = key.versions.iter().any(|v| v.refresh.is_some());
        if !refreshing || Instant::now() >= deadline {
            return Ok(key);
        }
        tokio::time::sleep(GENERATION_POLL).await;
    }
}

/// Deserializes a present field (even `null`) as `Some`.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigBody {
    #[serde(default, deserialize_with = "present")]
    rotation_period_ms: Option<Option<u64>>,
    #[serde(default, deserialize_with = "present")]
    expires_at_ms: Option<Option<u64>>,
    min_decrypt_version: Option<u32>,
}

async fn config(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(name): Path<String>,
    body: Body,
) -> Reply {
    let b: ConfigBody = parse_json(body)?;
    if b.rotation_period_ms.is_some() || b.expires_at_ms.is_some() {
        let key = fetch_key(&state, &caller, &name).await?;
        let op = Operation::SetSchedule {
            name: name.clone(),
            rotation_period_ms: b.rotation_period_ms.unwrap_or(key.rotation_period_ms),
            expires_at_ms: b.expires_at_ms.unwrap_or(key.expires_at_ms),
        };
        state.write(&caller, op).await?;
    }
    if let Some(v) = b.min_decrypt_version {
        let op = Operation::SetMinDecryptVersion {
            name: name.clone(),
            version: KeyVersion(v),
        };
        state.write(&caller, op).await?;
    }
    ok(KeyView::from(&fetch_key(&state, &caller, &name).await?))
}

async fn get_policy(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(name): Path<String>,
) -> Reply {
    ok(fetch_key(&state, &caller, &name).await?.policy)
}

async fn set_policy(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(name): Path<String>,
    body: Body,
) -> Reply {
    let policy: Option<KeyPolicy> = optional_json(body, "a KeyPolicy")?;
    let op = Operation::SetPolicy {
        name: name.clone(),
        policy,
    };
    state.write(&caller, op).await?;
    ok(KeyView::from(&fetch_key(&state, &caller, &name).await?))
}

// ---- data ----

pub(crate) fn decode_b64(what: &str, text: &str) -> Result<Redacted, Failure> {
    B64.decode(text.as_bytes())
        .map(Redacted)
        .map_err(|_| Failure::invalid(format!("{what} must be standard base64 with padding")))
}

/// Base64 of secret bytes in a zeroized string.
pub(crate) fn secret_b64(secret: &Redacted) -> Zeroizing<String> {
    Zeroizing::new(B64.encode(&secret.0))
}

/// A JSON answer holding secret text; the text is zeroized after encoding.
pub(crate) fn secret_json(value: Value) -> Response {
    secret_json_as(value, "application/json")
}

/// [`secret_json`] with another content type.
pub(crate) fn secret_json_as(value: Value, content_type: &'static str) -> Response {
    let body = Zeroizing::new(serde_json::to_vec(&value).unwrap_or_default());
    let mut value = value;
    scrub(&mut value);
    (
        [(axum::http::header::CONTENT_TYPE, content_type)],
        body.to_vec(),
    )
        .into_response()
}

/// Overwrites the strings of a JSON value (best effort before it is freed).
fn scrub(value: &mut Value) {
    match value {
        Value::String(s) => zeroize::Zeroize::zeroize(s),
        Value::Array(a) => a.iter_mut().for_each(scrub),
        Value::Object(o) => o.values_mut().for_each(scrub),
        _ => {}
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EncryptBody {
    plaintext: String,
    #[serde(default)]
    context: BTreeMap<String, String>,
}

async fn encrypt(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(name): Path<String>,
    body: Body,
) -> Reply {
    let mut b: EncryptBody = parse_json(body)?;
    let plaintext = decode_b64("plaintext", &b.plaintext);
    zeroize::Zeroize::zeroize(&mut b.plaintext);
    let req = ClientRequest::Encrypt {
        name,
        context: b.context,
        plaintext: plaintext?,
    };
    match state.read(&caller, req).await? {
        ClientResponse::Ciphertext { text, version } => {
            ok(json!({"ciphertext": text, "version": version}))
        }
        other => Err(unexpected("encrypt", &other)),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DataKeyBody {
    bytes: Option<u16>,
    #[serde(default)]
    context: BTreeMap<String, String>,
}

async fn datakey(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(name): Path<String>,
    body: Body,
) -> Reply {
    let b: DataKeyBody = parse_json(body)?;
    let req = ClientRequest::DataKey {
        name,
        bytes: b.bytes.unwrap_or(32),
        context: b.context,
    };
    match state.read(&caller, req).await? {
        ClientResponse::DataKey {
            plaintext,
            ciphertext,
            version,
        } => {
            let text = secret_b64(&plaintext);
            Ok(secret_json(json!({
                "plaintext": text.as_str(),
                "ciphertext": ciphertext,
                "version": version,
            })))
        }
        other => Err(unexpected("datakey", &other)),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnwrapBody {
    ciphertext: String,
    #[serde(default)]
    context: BTreeMap<String, String>,
    approval_id: Option<String>,
}

/// Key id and version named by a `qk:v1:` ciphertext.
fn ciphertext_header(text: &str) -> Result<(String, u32), Failure> {
    qk_crypto::Ciphertext::from_text(text)
        .map(|c| (hex(&c.key_id.0), c.version.0))
        .map_err(|e| Failure::invalid(format!("the ciphertext is not a qk:v1: ciphertext: {e}")))
}

/// The name of the key with id `id_hex` (the id itself if none matches).
async fn key_name_by_id(state: &AppState, caller: &Caller, id_hex: String) -> String {
    match state.read(caller, ClientRequest::KeyInventory).await {
        Ok(ClientResponse::KeyRecords(keys)) => keys
            .into_iter()
            .find(|k| hex(&k.id.0) == id_hex)
            .map_or(id_hex, |k| k.name),
        _ => id_hex,
    }
}

async fn decrypt(State(state): State<AppState>, Authed(caller): Authed, body: Body) -> Reply {
    let b: UnwrapBody = parse_json(body)?;
    let (key_id, version) = ciphertext_header(&b.ciphertext)?;
    let req = ClientRequest::Decrypt {
        ciphertext: b.ciphertext,
        context: b.context,
        approval: b.approval_id,
    };
    match state.read(&caller, req).await? {
        ClientResponse::Plaintext(p) => {
            let key = key_name_by_id(&state, &caller, key_id).await;
            let text = secret_b64(&p);
            Ok(secret_json(
                json!({"plaintext": text.as_str(), "key": key, "version": version}),
            ))
        }
        other => Err(unexpected("decrypt", &other)),
    }
}

async fn partial(State(state): State<AppState>, Authed(caller): Authed, body: Body) -> Reply {
    let b: UnwrapBody = parse_json(body)?;
    let req = ClientRequest::Partial {
        ciphertext: b.ciphertext,
        context: b.context,
        approval: b.approval_id,
    };
    match state.read(&caller, req).await? {
        ClientResponse::Partial(bytes) => ok(json!({
            "node_id": state.backend.node_id(),
            "partial": B64.encode(bytes),
        })),
        other => Err(unexpected("partial", &other)),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RewrapBody {
    ciphertext: String,
    #[serde(default)]
    context: BTreeMap<String, String>,
    to_key: Option<String>,
}

async fn rewrap(State(state): State<AppState>, Authed(caller): Authed, body: Body) -> Reply {
    let b: RewrapBody = parse_json(body)?;
    let req = ClientRequest::Rewrap {
        ciphertext: b.ciphertext,
        context: b.context,
        to_key: b.to_key,
    };
    match state.read(&caller, req).await? {
        ClientResponse::Ciphertext { text, version } => {
            ok(json!({"ciphertext": text, "version": version}))
        }
        other => Err(unexpected("rewrap", &other)),
    }
}

// ---- principals and tokens ----

fn parse_roles(names: &[String]) -> Result<BTreeSet<Role>, Failure> {
    names
        .iter()
        .map(|n| {
            Role::parse(n).ok_or_else(|| {
                Failure::invalid(format!(
                    "unknown role {n:?}; roles are admin, operator, approver, auditor, key-user"
                ))
            })
        })
        .collect()
}

async fn principal_view(
    state: &AppState,
    caller: &Caller,
    name: &str,
) -> Result<PrincipalView, Refusal> {
    match state.read(caller, ClientRequest::ListPrincipals).await? {
        ClientResponse::Principals(list) => list
            .iter()
            .find(|p| p.name == name)
            .map(PrincipalView::from)
            .ok_or_else(|| Failure::not_found(format!("principal {name:?} does not exist")).into()),
        other => Err(unexpected("list principals", &other)),
    }
}

async fn list_principals(State(state): State<AppState>, Authed(caller): Authed) -> Reply {
    let request = ClientRequest::ListPrincipals;
    list_views::<_, PrincipalView>(&state, &caller, request, "principals", |r| match r {
        ClientResponse::Principals(list) => Some(list.as_slice()),
        _ => None,
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreatePrincipalBody {
    name: String,
    roles: Vec<String>,
}

async fn create_principal(
    State(state): State<AppState>,
    Authed(caller): Authed,
    body: Body,
) -> Reply {
    let b: CreatePrincipalBody = parse_json(body)?;
    let roles = parse_roles(&b.roles)?;
    let op = Operation::CreatePrincipal {
        name: b.name.clone(),
        roles,
    };
    state.write(&caller, op).await?;
    created(principal_view(&state, &caller, &b.name).await?)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdatePrincipalBody {
    roles: Vec<String>,
    #[serde(default)]
    disabled: bool,
}

async fn update_principal(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(name): Path<String>,
    body: Body,
) -> Reply {
    let b: UpdatePrincipalBody = parse_json(body)?;
    let op = Operation::UpdatePrincipal {
        name: name.clone(),
        roles: parse_roles(&b.roles)?,
        disabled: b.disabled,
    };
    state.write(&caller, op).await?;
    ok(principal_view(&state, &caller, &name).await?)
}

async fn delete_principal(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(name): Path<String>,
) -> Reply {
    state
        .write(&caller, Operation::DeletePrincipal { name })
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_tokens(State(state): State<AppState>, Authed(caller): Authed) -> Reply {
    let request = ClientRequest::ListTokens;
    list_views::<_, TokenView>(&state, &caller, request, "tokens", |r| match r {
        ClientResponse::Tokens(list) => Some(list.as_slice()),
        _ => None,
    })
    .await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTokenBody {
    principal: String,
    ttl_ms: u64,
    #[serde(default)]
    description: String,
}

/// Issues a token of `kind`; the answer's fields (the secret among them)
/// come from `fields`, given the token text and its record.
async fn issue_token(
    state: &AppState,
    caller: &Caller,
    b: CreateTokenBody,
    kind: CredentialKind,
    fields: impl FnOnce(&str, &qk_state::TokenRecord) -> Value,
) -> Reply {
    let req = ClientRequest::IssueToken {
        principal: b.principal,
        ttl_ms: b.ttl_ms,
        description: b.description,
        kind,
    };
    match state.read(caller, req).await? {
        ClientResponse::Token {
            token,
            record,
            approval,
            ..
        } => {
            let text = Zeroizing::new(String::from_utf8_lossy(&token.0).into_owned());
            let mut answer = fields(&text, &record);
            answer["record"] = json!(TokenView::from(&record));
            answer["approval"] = json!(approval.as_ref().map(ApprovalView::from));
            let mut response = secret_json(answer);
            *response.status_mut() = StatusCode::CREATED;
            Ok(response)
        }
        other => Err(unexpected("issue token", &other)),
    }
}

async fn create_token(State(state): State<AppState>, Authed(caller): Authed, body: Body) -> Reply {
    let b: CreateTokenBody = parse_json(body)?;
    issue_token(
        &state,
        &caller,
        b,
        CredentialKind::Bearer,
        |text, _| json!({ "token": text }),
    )
    .await
}

/// An AWS access key bound to this node (see `crate::kms`).
async fn create_aws_credential(
    State(state): State<AppState>,
    Authed(caller): Authed,
    body: Body,
) -> Reply {
    let b: CreateTokenBody = parse_json(body)?;
    let node = state.backend.node_id();
    issue_token(
        &state,
        &caller,
        b,
        CredentialKind::AwsSigV4,
        |text, record| {
            let secret = qk_state::parse_token(text).map_or("", |(_, secret)| secret);
            json!({
                "access_key_id": crate::views::aws_access_key_id(node, &record.id),
                "secret_access_key": secret,
                "node": node,
            })
        },
    )
    .await
}

async fn revoke_token(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
) -> Reply {
    state.write(&caller, Operation::RevokeToken { id }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn whoami(State(state): State<AppState>, Authed(caller): Authed) -> Reply {
    let req = ClientRequest::WhoAmI {
        token_id: caller.token_id.clone(),
    };
    match state.read(&caller, req).await? {
        ClientResponse::Identity { principal, token } => ok(json!({
            "principal": PrincipalView::from(&principal),
            "token": token.as_ref().map(TokenView::from),
        })),
        other => Err(unexpected("whoami", &other)),
    }
}

/// A body that is `what` or `null`; a refusal names the field at fault.
fn optional_json<T: serde::de::DeserializeOwned>(
    body: Body,
    what: &str,
) -> Result<Option<T>, Refusal> {
    let body = body.map_err(body_failure)?;
    serde_json::from_slice(&body).map_err(|e| {
        Failure::invalid(format!(
            "the body must be {what} or null ({e}); see docs/API.md"
        ))
        .into()
    })
}

// ---- the cluster's access rule ----

async fn get_access_rule(State(state): State<AppState>, Authed(caller): Authed) -> Reply {
    match state.read(&caller, ClientRequest::GetAccessRule).await? {
        ClientResponse::AccessRule(rule) => ok(rule),
        other => Err(unexpected("access rule", &other)),
    }
}

async fn set_access_rule(
    State(state): State<AppState>,
    Authed(caller): Authed,
    body: Body,
) -> Reply {
    let rule: Option<ApprovalRule> = optional_json(body, "an approval rule")?;
    state
        .write(&caller, Operation::SetAccessRule { rule })
        .await?;
    get_access_rule(State(state), Authed(caller)).await
}

/// Turns on each principal's share of the request memory (once every node
/// runs a release that counts them); answers the cluster's health.
async fn enable_request_shares(State(state): State<AppState>, Authed(caller): Authed) -> Reply {
    state.write(&caller, Operation::EnableRequestShares).await?;
    cluster(State(state), Authed(caller)).await
}

/// Sets or removes the cluster's refresh schedule; answers its health.
async fn set_refresh_schedule(
    State(state): State<AppState>,
    Authed(caller): Authed,
    body: Body,
) -> Reply {
    let b: RefreshScheduleRequest = parse_json(body)?;
    let every_ms = b.every_ms().map_err(Failure::invalid)?;
    let op = Operation::SetRefreshSchedule { every_ms };
    state.write(&caller, op).await?;
    cluster(State(state), Authed(caller)).await
}

// ---- approvals and audit ----

async fn list_approvals(State(state): State<AppState>, Authed(caller): Authed) -> Reply {
    let request = ClientRequest::ListApprovals;
    list_views::<_, ApprovalView>(&state, &caller, request, "approvals", |r| match r {
        ClientResponse::Approvals(list) => Some(list.as_slice()),
        _ => None,
    })
    .await
}

async fn approval_view(state: &AppState, caller: &Caller, id: &str) -> Reply {
    match state.find_approval(caller, id).await {
        Some(record) => ok(ApprovalView::from(&record)),
        None => Err(Failure::not_found(format!("approval {id:?} does not exist")).into()),
    }
}

async fn approve(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    body: Body,
) -> Reply {
    let _: Value = parse_json(body)?;
    state
        .write(&caller, Operation::Approve { id: id.clone() })
        .await?;
    approval_view(&state, &caller, &id).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DenyBody {
    #[serde(default)]
    reason: String,
}

async fn deny(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Path(id): Path<String>,
    body: Body,
) -> Reply {
    let b: DenyBody = parse_json(body)?;
    let op = Operation::Deny {
        id: id.clone(),
        reason: b.reason,
    };
    state.write(&caller, op).await?;
    approval_view(&state, &caller, &id).await
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    from: Option<u64>,
    limit: Option<u32>,
}

async fn audit(
    State(state): State<AppState>,
    Authed(caller): Authed,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Reply {
    let Query(q) = query.map_err(|e| {
        Failure::invalid(format!("bad query ({e}); use ?from=<seq>&limit=<1..1000>"))
    })?;
    let req = ClientRequest::Audit {
        from_seq: q.from.unwrap_or(1),
        limit: q.limit.unwrap_or(100).min(MAX_AUDIT_LIMIT),
    };
    match state.read(&caller, req).await? {
        ClientResponse::Audit(records) => {
            let views: Vec<AuditRecordView> = records.iter().map(AuditRecordView::from).collect();
            ok(json!({ "records": views }))
        }
        other => Err(unexpected("audit", &other)),
    }
}

#[derive(Debug, Deserialize)]
struct CheckpointQuery {
    #[serde(default)]
    seq: u64,
}

async fn audit_checkpoint(
    State(state): State<AppState>,
    Authed(caller): Authed,
    Query(q): Query<CheckpointQuery>,
) -> Reply {
    match state
        .read(&caller, ClientRequest::AuditCheckpoint { seq: q.seq })
        .await?
    {
        ClientResponse::Checkpoint(cp) => ok(crate::views::AuditCheckpointView::from(&cp)),
        other => Err(unexpected("audit checkpoint", &other)),
    }
}

async fn audit_verify(State(state): State<AppState>, Authed(caller): Authed) -> Reply {
    match state.read(&caller, ClientRequest::AuditVerify).await {
        Ok(ClientResponse::AuditVerified { records, head_hash }) => ok(json!({
            "ok": true,
            "records": records,
            "head_hash": hex(&head_hash),
        })),
        Ok(other) => Err(unexpected("audit verify", &other)),
        // A broken chain is reported as an error naming the first bad record.
        Err(Refusal::Failed(f)) if f.code == ErrorKind::Invalid => {
            Err(Failure::new(ErrorKind::Conflict, f.message).into())
        }
        Err(r) => Err(r),
    }
}
