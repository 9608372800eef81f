//! Vault's `sys/` and token endpoints that the official CLI calls:
//! `bao status` (seal-status, leader), `bao secrets list` (mounts),
//! `bao token lookup` and `renew`, and health checks with Vault's
//! status-code parameters.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use qk_wire::{ClientRequest, ClientResponse};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use sha2::Digest;

use crate::errors::Failure;
use crate::AppState;

use super::{
    body, chosen_status, envelope, envelope_value, now_ms, uuid_text, Reply, VaultCaller,
    VaultError,
};

const VERSION: &str = concat!("qk-", env!("CARGO_PKG_VERSION"));
const CLUSTER_NAME: &str = "quorumkey";
/// What `sys/seal-status` reports as the seal type: nodes have no unseal
/// step; each seals its own shares at rest.
pub const SEAL_TYPE: &str = "quorumkey-threshold";

/// RFC 3339 UTC text of a Unix time in seconds.
pub(crate) fn rfc3339(secs: u64) -> String {
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

/// A UUID-shaped text derived from `label` (stable across nodes and runs).
fn stable_uuid(label: &str) -> String {
    let digest = sha2::Sha256::digest(label.as_bytes());
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    uuid_text(&first)
}

pub(crate) async fn lookup_self(
    State(state): State<AppState>,
    VaultCaller(caller): VaultCaller,
) -> Reply {
    let req = ClientRequest::WhoAmI {
        token_id: caller.token_id.clone(),
    };
    let (principal, token) = match state.read(&caller, req).await? {
        ClientResponse::Identity { principal, token } => (principal, token),
        other => return Err(Failure::unexpected("lookup-self", &other).into()),
    };
    let policies: Vec<&str> = principal.roles.iter().map(|r| r.name()).collect();
    let mut data = json!({
        "id": "",
        "accessor": "",
        "display_name": principal.name,
        "policies": policies,
        "ttl": 0,
        "creation_ttl": 0,
        "explicit_max_ttl": 0,
        "creation_time": 0,
        "issue_time": Value::Null,
        "expire_time": Value::Null,
        "entity_id": "",
        "meta": null,
        "num_uses": 0,
        "orphan": true,
        "path": "auth/token/create",
        "renewable": false,
        "type": "service",
    });
    if let Some(t) = &token {
        let (created_s, expires_s) = (t.created_ms / 1000, t.expires_at_ms / 1000);
        let lifetime_s = expires_s.saturating_sub(created_s);
        data["id"] = json!(t.id);
        data["accessor"] = json!(t.id);
        data["ttl"] = json!(expires_s.saturating_sub(now_ms() / 1000));
        data["creation_ttl"] = json!(lifetime_s);
        data["explicit_max_ttl"] = json!(lifetime_s);
        data["creation_time"] = json!(created_s);
        data["issue_time"] = json!(rfc3339(created_s));
        data["expire_time"] = json!(rfc3339(expires_s));
    }
    Ok(envelope(data))
}

/// Quorumkey tokens keep the lifetime they were issued with.
pub(crate) async fn renew_self(_: VaultCaller) -> VaultError {
    VaultError::bad_request(
        "lease is not renewable: Quorumkey tokens keep the TTL they were created with; create \
         a new one with `qk token create --principal NAME --ttl 1h`",
    )
}

/// Vault's health parameters: which status answers which node state.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct HealthQuery {
    #[serde(default, deserialize_with = "body::opt_bool")]
    standbyok: Option<bool>,
    #[serde(default, deserialize_with = "body::opt_u32")]
    activecode: Option<u32>,
    #[serde(default, deserialize_with = "body::opt_u32")]
    standbycode: Option<u32>,
    #[serde(default, deserialize_with = "body::opt_u32")]
    sealedcode: Option<u32>,
    #[serde(default, deserialize_with = "body::opt_u32")]
    uninitcode: Option<u32>,
    #[serde(default, deserialize_with = "body::opt_u32")]
    drsecondarycode: Option<u32>,
    #[serde(default, deserialize_with = "body::opt_u32")]
    performancestandbycode: Option<u32>,
}

fn status_code(
    code: Option<u32>,
    parameter: &str,
    default: StatusCode,
) -> Result<StatusCode, VaultError> {
    code.map_or(Ok(default), |c| chosen_status(c, parameter))
}

/// The status `sys/health` answers: not ready answers `sealedcode` (Vault's
/// code for a node that cannot serve), a follower `standbycode` unless
/// `standbyok`, the leader `activecode`.
pub(crate) fn health_status(
    q: &HealthQuery,
    ready: bool,
    standby: bool,
) -> Result<StatusCode, VaultError> {
    let active = status_code(q.activecode, "activecode", StatusCode::OK)?;
    let standby_code = status_code(q.standbycode, "standbycode", StatusCode::TOO_MANY_REQUESTS)?;
    let not_ready = status_code(q.sealedcode, "sealedcode", StatusCode::SERVICE_UNAVAILABLE)?;
    for (unused, parameter) in [
        (q.uninitcode, "uninitcode"),
        (q.drsecondarycode, "drsecondarycode"),
        (q.performancestandbycode, "performancestandbycode"),
    ] {
        status_code(unused, parameter, StatusCode::OK)?;
    }
    Ok(match (ready, standby) {
        (false, _) => not_ready,
        (true, true) if q.standbyok != Some(true) => standby_code,
        _ => active,
    })
}

pub(crate) async fn health(
    State(state): State<AppState>,
    query: Result<Query<HealthQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return VaultError::bad_request(
            "invalid sys/health parameters: standbyok takes true or false, the *code \
             parameters a status code",
        )
        .into_response();
    };
    let ready = state.backend.readiness().is_ok();
    let standby = !state.backend.gauges().is_leader;
    let status = match health_status(&q, ready, standby) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let body = json!({
        "initialized": true,
        "sealed": false,
        "standby": standby,
        "replication_performance_mode": "disabled",
        "replication_dr_mode": "disabled",
        "server_time_utc": now_ms() / 1000,
        "version": VERSION,
        "cluster_name": CLUSTER_NAME,
        "cluster_id": stable_uuid("qk/cluster"),
    });
    (status, Json(body)).into_response()
}

/// `bao status`: there is no unseal step; `n` is the voters and `t` the
/// majority the cluster needs to act.
pub(crate) async fn seal_status(State(state): State<AppState>) -> Response {
    let g = state.backend.gauges();
    Json(json!({
        "type": SEAL_TYPE,
        "initialized": true,
        "sealed": false,
        "t": g.voters / 2 + 1,
        "n": g.voters,
        "progress": 0,
        "nonce": "",
        "recovery_seal": false,
        "version": VERSION,
        "build_date": "",
        "commit_date": "",
        "migration": false,
        "cluster_name": CLUSTER_NAME,
        "cluster_id": stable_uuid("qk/cluster"),
        "storage_type": "raft",
        "ha_enabled": true,
    }))
    .into_response()
}

pub(crate) async fn leader(State(state): State<AppState>) -> Response {
    let g = state.backend.gauges();
    let address = g.leader_api_url.unwrap_or_default();
    Json(json!({
        "ha_enabled": true,
        "is_self": g.is_leader,
        "active_time": "0001-01-01T00:00:00Z",
        "leader_address": address,
        "leader_cluster_address": address,
        "performance_standby": false,
        "performance_standby_last_remote_wal": 0,
        "raft_committed_index": g.last_applied,
        "raft_applied_index": g.last_applied,
    }))
    .into_response()
}

fn transit_mount() -> Value {
    json!({
        "type": "transit",
        "description": "Quorumkey threshold keys (built in)",
        "accessor": "transit_quorumkey",
        "uuid": stable_uuid("qk/transit-mount"),
        "config": { "default_lease_ttl": 0, "max_lease_ttl": 0, "force_no_cache": false },
        "options": null,
        "local": false,
        "seal_wrap": false,
        "external_entropy_access": false,
        "plugin_version": "",
        "running_plugin_version": VERSION,
        "running_sha256": "",
        "deprecation_status": "supported",
    })
}

/// `bao secrets list`: the one mount, at the top level and under `data`.
pub(crate) async fn mounts(_: VaultCaller) -> Response {
    let mut mounts = Map::new();
    mounts.insert("transit/".into(), transit_mount());
    let mut answer = envelope_value(Value::Object(mounts.clone()));
    if let Value::Object(top) = &mut answer {
        top.extend(mounts);
    }
    Json(answer).into_response()
}

/// `bao secrets enable`: transit is built in and nothing else exists.
pub(crate) async fn enable_mount(_: VaultCaller, Path(path): Path<String>) -> VaultError {
    let path = path.trim_end_matches('/');
    if path == "transit" {
        return VaultError::bad_request(
            "path is already in use at transit/: the transit engine is built into Quorumkey",
        );
    }
    VaultError::bad_request(format!(
        "cannot mount {path}/: Quorumkey offers only the built-in transit engine at transit/"
    ))
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
    fn health_codes_follow_vaults_parameters() {
        let q = |s: &str| serde_urlencoded::from_str::<HealthQuery>(s).unwrap_or_default();
        let st = |q: &HealthQuery, ready, standby| health_status(q, ready, standby).ok();
        assert_eq!(st(&q(""), true, false), Some(StatusCode::OK));
        assert_eq!(st(&q(""), true, true), Some(StatusCode::TOO_MANY_REQUESTS));
        assert_eq!(
            st(&q(""), false, false),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
        assert_eq!(st(&q("standbyok=true"), true, true), Some(StatusCode::OK));
        assert_eq!(st(&q("standbyok=True"), true, true), Some(StatusCode::OK));
        assert_eq!(st(&q("standbycode=200"), true, true), Some(StatusCode::OK));
        assert_eq!(
            st(&q("activecode=204"), true, false),
            Some(StatusCode::NO_CONTENT)
        );
        assert_eq!(
            st(&q("sealedcode=500"), false, true),
            Some(StatusCode::INTERNAL_SERVER_ERROR)
        );
        assert_eq!(st(&q("activecode=99"), true, false), None);
        assert_eq!(st(&q("uninitcode=700"), true, false), None);
    }

    #[test]
    fn stable_uuids_are_uuid_shaped_and_stable() {
        let u = stable_uuid("qk/cluster");
        assert_eq!(u, stable_uuid("qk/cluster"));
        assert_ne!(u, stable_uuid("qk/transit-mount"));
        let lens: Vec<usize> = u.split('-').map(str::len).collect();
        assert_eq!(lens, [8, 4, 4, 4, 12]);
    }
}
