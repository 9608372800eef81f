//! An AWS KMS-compatible endpoint (JSON 1.1, `X-Amz-Target: TrentService.*`)
//! at `POST /` of the HTTPS listener, so boto3, the AWS SDKs and the AWS
//! Encryption SDK work with an `endpoint_url` (docs/API.md, "AWS KMS").
//!
//! Requests are signed with AWS Signature V4. An access key is a token of
//! kind `AwsSigV4` bound to the node that issued it: its secret is derived
//! from that node's seal key, so that node and no other can check (and so
//! forge) its signatures. Once checked, a request runs as the token's
//! principal with the token's signing key, exactly as a bearer token does:
//! the same policies, approvals, holder proofs and audit.

mod ops;
mod sigv4;

use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::errors::{ErrorKind, Failure, Refusal};
use crate::views::parse_aws_access_key_id as parse_access_key_id;
use crate::{AppState, Caller};
use sigv4::{Authorization, Received, SigError};

/// The account id in every ARN this endpoint returns (the cluster has no
/// AWS account; clients only compare ARNs).
pub const ACCOUNT_ID: &str = "000000000000";
const TARGET_PREFIX: &str = "TrentService.";
const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/", post(handle))
}

/// An AWS error answer: `{"__type": ..., "message": ...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KmsError {
    pub kind: &'static str,
    pub message: String,
}

impl KmsError {
    pub(crate) fn new(kind: &'static str, message: impl Into<String>) -> Self {
        KmsError {
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn validation(message: impl Into<String>) -> Self {
        Self::new("ValidationException", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new("NotFoundException", message)
    }

    fn status(&self) -> StatusCode {
        match self.kind {
            "KMSInternalException" => StatusCode::INTERNAL_SERVER_ERROR,
            "DependencyTimeoutException" => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

impl IntoResponse for KmsError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = json!({ "__type": self.kind, "message": self.message });
        let mut resp = (status, Json(body)).into_response();
        resp.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static(CONTENT_TYPE),
        );
        resp
    }
}

/// The AWS type of a failure that is not about a key's state.
impl From<Failure> for KmsError {
    fn from(f: Failure) -> Self {
        let kind = match f.code {
            ErrorKind::Invalid | ErrorKind::TooLarge => "ValidationException",
            ErrorKind::Unauthenticated | ErrorKind::Denied => "AccessDeniedException",
            ErrorKind::NotFound => "NotFoundException",
            ErrorKind::Conflict => "KMSInvalidStateException",
            ErrorKind::Unavailable => "DependencyTimeoutException",
            ErrorKind::Internal => "KMSInternalException",
        };
        KmsError::new(kind, f.message)
    }
}

/// A request that waits for approval is refused, naming the approval.
impl From<Refusal> for KmsError {
    fn from(r: Refusal) -> Self {
        let pending = |id: &str| {
            KmsError::new(
                "AccessDeniedException",
                format!(
                    "this request needs approval: approval {id} is pending; once approvers \
                     approved it (`qk approval approve {id}`), send the request again with \
                     GrantTokens=[\"{id}\"]"
                ),
            )
        };
        match r {
            Refusal::Failed(f) => f.into(),
            Refusal::Pending(a) => pending(&a.id),
            Refusal::PendingId(id) => pending(&id),
        }
    }
}

impl From<SigError> for KmsError {
    fn from(e: SigError) -> Self {
        let kind = match e {
            SigError::Missing => "MissingAuthenticationTokenException",
            SigError::Incomplete(_) => "IncompleteSignatureException",
            SigError::Expired { .. } | SigError::Mismatch => "InvalidSignatureException",
        };
        KmsError::new(kind, e.to_string())
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn unrecognized(message: impl Into<String>) -> KmsError {
    KmsError::new("UnrecognizedClientException", message)
}

/// The principal a signed request runs as, with its region.
fn authenticate(
    state: &AppState,
    auth: &Authorization,
    req: &Received<'_>,
) -> Result<Caller, KmsError> {
    if auth.service != sigv4::SERVICE {
        return Err(KmsError::new(
            "InvalidSignatureException",
            format!(
                "the credential is scoped to service {:?}; sign for service \"kms\"",
                auth.service
            ),
        ));
    }
    let (node, token_id) = parse_access_key_id(&auth.access_key_id).ok_or_else(|| {
        unrecognized(
            "the access key id is not one this cluster issued; create one with `qk kms \
             credentials create`",
        )
    })?;
    let here = state.backend.node_id();
    if node != here {
        return Err(unrecognized(format!(
            "access key {} is bound to node {node}, and this is node {here}; send its \
             requests to node {node}'s HTTPS endpoint (the one `qk kms credentials create` \
             printed)",
            auth.access_key_id
        )));
    }
    let secret = state
        .backend
        .aws_secret(&token_id)
        .map_err(|e| match e.kind {
            ErrorKind::Unauthenticated | ErrorKind::NotFound => unrecognized(
                "the security token included in the request is invalid (no such access key)",
            ),
            _ => KmsError::from(Failure::from(e)),
        })?;
    let text = zeroize::Zeroizing::new(String::from_utf8_lossy(&secret.secret.0).into_owned());
    let now = now_ms();
    sigv4::verify(auth, req, &text, now)?;
    if secret.expires_at_ms <= now {
        return Err(KmsError::new(
            "ExpiredTokenException",
            format!(
                "access key {} expired; create a new one with `qk kms credentials create`",
                auth.access_key_id
            ),
        ));
    }
    let token = zeroize::Zeroizing::new(qk_state::token_text(&token_id, &text));
    let (principal, token_id) =
        state
            .backend
            .authenticate_aws_token(&token)
            .map_err(|e| match e.kind {
                ErrorKind::Unauthenticated => unrecognized(e.message),
                _ => KmsError::from(Failure::from(e)),
            })?;
    Ok(Caller {
        principal,
        credential: Some(qk_state::proof::Credential::from_token(&token_id, &text)),
        token_id: Some(token_id),
        request_ids: crate::RequestIds::default(),
    })
}

/// Where and as whom an operation runs.
pub(crate) struct Call {
    pub state: AppState,
    pub caller: Caller,
    /// The region the request was signed for (ARNs name it).
    pub region: String,
}

async fn handle(
    State(state): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(r) => return KmsError::from(crate::body_failure(r)).into_response(),
    };
    match run(state, &method, &uri, &headers, &body).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn run(
    state: AppState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, KmsError> {
    let operation = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.strip_prefix(TARGET_PREFIX))
        .ok_or_else(|| {
            KmsError::new(
                "UnknownOperationException",
                "send X-Amz-Target: TrentService.<Operation> (an AWS KMS client does)",
            )
        })?
        .to_owned();
    let auth = Authorization::from_headers(headers)?;
    let received = Received {
        method: method.as_str(),
        path: uri.path(),
        query: uri.query(),
        headers,
        authority: uri.authority().map(|a| a.as_str()),
        body,
    };
    let caller = authenticate(&state, &auth, &received)?;
    let input: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|e| {
            KmsError::new(
                "SerializationException",
                format!("the body is not JSON: {e}"),
            )
        })?
    };
    let call = Call {
        state,
        caller,
        region: auth.region.clone(),
    };
    let output = ops::dispatch(&call, &operation, input).await?;
    Ok(crate::native::secret_json_as(output, CONTENT_TYPE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::views::aws_access_key_id as access_key_id;

    #[test]
    fn access_key_ids_name_their_node_and_token() {
        let id = access_key_id(3, "00ab12cd34ef5678");
        assert_eq!(id, "QK3X00AB12CD34EF5678");
        assert_eq!(
            parse_access_key_id(&id),
            Some((3, "00ab12cd34ef5678".to_owned()))
        );
        for bad in [
            "", "QK", "QKX00", "QK3X", "QK3Xzz", "AKIA3X00", "QK-1X00", "QK3X00ab",
        ] {
            assert_eq!(parse_access_key_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn failures_take_aws_error_types() {
        let kind = |code| KmsError::from(Failure::new(code, "m")).kind;
        assert_eq!(kind(ErrorKind::NotFound), "NotFoundException");
        assert_eq!(kind(ErrorKind::Denied), "AccessDeniedException");
        assert_eq!(kind(ErrorKind::Invalid), "ValidationException");
        assert_eq!(kind(ErrorKind::Unavailable), "DependencyTimeoutException");
        assert_eq!(
            KmsError::new("DependencyTimeoutException", "m").status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(KmsError::not_found("m").status(), StatusCode::BAD_REQUEST);
    }
}
