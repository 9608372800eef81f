//! What a backend answer means over HTTP: one mapping ([`classify`]) from
//! `ClientResponse` to success, a pending approval, or a failure with its
//! status and code. Both surfaces (native and Vault) use it.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use qk_state::{Applied, ApprovalRecord, StateError};
use qk_wire::ClientResponse;
use serde_json::json;

pub use qk_types::{ErrorKind, RequestError};

/// The HTTP status of an error kind; the one place it is chosen.
pub fn http_status(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::Invalid => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorKind::Denied => StatusCode::FORBIDDEN,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A failed request: what failed and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub code: ErrorKind,
    pub message: String,
}

impl Failure {
    pub fn new(code: ErrorKind, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    /// The backend answered something this endpoint does not expect.
    pub fn unexpected(what: &str, resp: &ClientResponse) -> Self {
        tracing::error!(endpoint = what, answer = ?variant_name(resp), "unexpected backend answer");
        Self::new(
            ErrorKind::Internal,
            format!("the node gave an unexpected answer to {what}; see the node log and report it"),
        )
    }
}

fn variant_name(resp: &ClientResponse) -> &'static str {
    match resp {
        ClientResponse::Written { .. } => "Written",
        ClientResponse::Key(_) => "Key",
        ClientResponse::Keys(_) => "Keys",
        ClientResponse::Plaintext(_) => "Plaintext",
        ClientResponse::DataKey { .. } => "DataKey",
        ClientResponse::Token { .. } => "Token",
        _ => "other",
    }
}

/// Why a request did not simply succeed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    Failed(Failure),
    /// The request waits for approval (202).
    Pending(Box<ApprovalRecord>),
    /// A write created approval request `id`; fetch the record to answer 202.
    PendingId(String),
}

impl From<RequestError> for Failure {
    fn from(e: RequestError) -> Self {
        Failure::new(e.kind, e.message)
    }
}

impl From<Failure> for Refusal {
    fn from(f: Failure) -> Self {
        Refusal::Failed(f)
    }
}

/// What one backend answer means for an HTTP client.
#[derive(Debug)]
pub enum Answer {
    /// A read or unwrap result (anything but `Written`).
    Reply(Box<ClientResponse>),
    /// A write applied successfully.
    Applied(Applied),
    Refused(Refusal),
}

/// The one mapping from backend answers to HTTP outcomes.
pub fn classify(resp: ClientResponse) -> Answer {
    let fail = |code, msg: String| Answer::Refused(Refusal::Failed(Failure::new(code, msg)));
    match resp {
        ClientResponse::Written { response, .. } => match response.result {
            Ok(Applied::ApprovalRequested { id, .. }) => Answer::Refused(Refusal::PendingId(id)),
            Ok(applied) => Answer::Applied(applied),
            Err(e) => Answer::Refused(Refusal::Failed(state_failure(&e))),
        },
        ClientResponse::Denied(msg) => fail(ErrorKind::Denied, msg),
        ClientResponse::NotFound(msg) => fail(ErrorKind::NotFound, msg),
        ClientResponse::ApprovalPending(record) => {
            Answer::Refused(Refusal::Pending(Box::new(record)))
        }
        ClientResponse::NotLeader { leader, .. } => fail(
            ErrorKind::Unavailable,
            match leader {
                Some(id) => format!(
                    "node {id} is the leader and this node could not forward the request; retry"
                ),
                None => "the cluster has no leader right now; retry in a few seconds".to_owned(),
            },
        ),
        ClientResponse::Error(e) => Answer::Refused(Refusal::Failed(e.into())),
        other => Answer::Reply(Box::new(other)),
    }
}

/// Status and code of a state machine refusal.
pub fn state_failure(e: &StateError) -> Failure {
    Failure::new(e.kind(), e.to_string())
}

/// A native API error: `{"error": {"code", "message"}}`.
impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code.name(), "message": self.message}});
        (http_status(self.code), axum::Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qk_state::Response as StateResponse;

    fn written(result: Result<Applied, StateError>) -> ClientResponse {
        ClientResponse::Written {
            log_index: 1,
            response: StateResponse {
                result,
                audit_seq: 1,
                duplicate: false,
            },
            not_applied_on: Vec::new(),
        }
    }

    fn code_of(resp: ClientResponse) -> Option<ErrorKind> {
        match classify(resp) {
            Answer::Refused(Refusal::Failed(f)) => Some(f.code),
            _ => None,
        }
    }

    #[test]
    fn state_errors_map_to_statuses() {
        let cases = [
            (StateError::NoSuchKey("k".into()), StatusCode::NOT_FOUND),
            (
                StateError::NoSuchVersion {
                    name: "k".into(),
                    version: 2,
                },
                StatusCode::NOT_FOUND,
            ),
            (StateError::NotFound("x".into()), StatusCode::NOT_FOUND),
            (StateError::KeyExists("k".into()), StatusCode::CONFLICT),
            (
                StateError::InvalidTransition {
                    name: "k".into(),
                    version: 1,
                    state: "destroyed".into(),
                    action: "enable".into(),
                },
                StatusCode::CONFLICT,
            ),
            (StateError::Invalid("bad".into()), StatusCode::BAD_REQUEST),
            (StateError::Denied("no".into()), StatusCode::FORBIDDEN),
        ];
        for (err, status) in cases {
            let code = code_of(written(Err(err.clone())));
            assert_eq!(code.map(http_status), Some(status), "{err:?}");
        }
    }

    #[test]
    fn client_responses_map_to_statuses() {
        let status = |r| code_of(r).map(http_status);
        assert_eq!(
            status(ClientResponse::Denied("x".into())),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            status(ClientResponse::NotFound("x".into())),
            Some(StatusCode::NOT_FOUND)
        );
        // The kind decides, never the words: a message that sounds like an
        // outage but was made as invalid stays 400, and the other way round.
        for kind in ErrorKind::ALL {
            let misleading = match kind {
                ErrorKind::Unavailable => "the ciphertext is invalid",
                _ => "no leader; cannot reach node 2; timed out; retry",
            };
            assert_eq!(
                status(ClientResponse::Error(RequestError::new(kind, misleading))),
                Some(http_status(kind)),
                "{kind}"
            );
        }
        assert_eq!(
            status(ClientResponse::NotLeader {
                leader: None,
                leader_addr: None
            }),
            Some(StatusCode::SERVICE_UNAVAILABLE)
        );
    }

    #[test]
    fn approvals_and_successes_are_not_failures() {
        let requested = written(Ok(Applied::ApprovalRequested {
            id: "a1".into(),
            required: 2,
        }));
        assert!(matches!(
            classify(requested),
            Answer::Refused(Refusal::PendingId(id)) if id == "a1"
        ));
        assert!(matches!(
            classify(written(Ok(Applied::Done))),
            Answer::Applied(Applied::Done)
        ));
        assert!(matches!(
            classify(ClientResponse::Keys(vec![])),
            Answer::Reply(r) if matches!(*r, ClientResponse::Keys(_))
        ));
    }
}
