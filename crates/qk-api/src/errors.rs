//! What a backend answer means over HTTP: one mapping ([`classify`]) from
//! `ClientResponse` to success, a pending approval, or a failure with its
//! status and code. Both surfaces (native and Vault) use it.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use qk_raft::ClientResponse;
use qk_state::{Applied, ApprovalRecord, StateError};
use serde_json::json;

/// Error codes of the native API (`{"error": {"code", "message"}}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    Invalid,
    Unauthenticated,
    Denied,
    NotFound,
    Conflict,
    TooLarge,
    Unavailable,
    Internal,
}

impl ErrorCode {
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Invalid => "invalid",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Denied => "denied",
            ErrorCode::NotFound => "not-found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::TooLarge => "too-large",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::Invalid => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::Denied => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A failed request: what failed and what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub code: ErrorCode,
    pub message: String,
}

impl Failure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Invalid, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    /// The backend answered something this endpoint does not expect.
    pub fn unexpected(what: &str, resp: &ClientResponse) -> Self {
        tracing::error!(endpoint = what, answer = ?variant_name(resp), "unexpected backend answer");
        Self::new(
            ErrorCode::Internal,
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

/// Words in an error message that mean "retry later" (503).
const UNAVAILABLE_MARKERS: [&str; 6] = [
    "needed",
    "node is behind",
    "not committed",
    "cannot reach",
    "timed out",
    "no leader",
];

/// Whether an unwrap failure says the holders refused the ciphertext's proof
/// (wrong context, modified ciphertext): the caller's error, not a retryable
/// outage, even though the message also says how many holders were needed.
fn refused_as_bad_ciphertext(message: &str) -> bool {
    message.contains(&qk_crypto::CryptoError::InvalidCiphertextProof.to_string())
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
        ClientResponse::Denied(msg) => fail(ErrorCode::Denied, msg),
        ClientResponse::NotFound(msg) => fail(ErrorCode::NotFound, msg),
        ClientResponse::ApprovalPending(record) => {
            Answer::Refused(Refusal::Pending(Box::new(record)))
        }
        ClientResponse::NotLeader { leader, .. } => fail(
            ErrorCode::Unavailable,
            match leader {
                Some(id) => format!(
                    "node {id} is the leader and this node could not forward the request; retry"
                ),
                None => "the cluster has no leader right now; retry in a few seconds".to_owned(),
            },
        ),
        ClientResponse::Error(msg) => {
            let lower = msg.to_ascii_lowercase();
            let code = if refused_as_bad_ciphertext(&msg) {
                ErrorCode::Invalid
            } else if UNAVAILABLE_MARKERS.iter().any(|m| lower.contains(m)) {
                ErrorCode::Unavailable
            } else {
                ErrorCode::Invalid
            };
            fail(code, msg)
        }
        other => Answer::Reply(Box::new(other)),
    }
}

/// Status and code of a state machine refusal.
pub fn state_failure(e: &StateError) -> Failure {
    let code = match e {
        StateError::NoSuchKey(_) | StateError::NoSuchVersion { .. } | StateError::NotFound(_) => {
            ErrorCode::NotFound
        }
        StateError::KeyExists(_) | StateError::InvalidTransition { .. } => ErrorCode::Conflict,
        StateError::Invalid(_) => ErrorCode::Invalid,
        StateError::Denied(_) => ErrorCode::Denied,
        _ => ErrorCode::Internal,
    };
    Failure::new(code, e.to_string())
}

/// A native API error: `{"error": {"code", "message"}}`.
impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code.name(), "message": self.message}});
        (self.code.status(), axum::Json(body)).into_response()
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

    fn code_of(resp: ClientResponse) -> Option<ErrorCode> {
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
            assert_eq!(code.map(ErrorCode::status), Some(status), "{err:?}");
        }
    }

    #[test]
    fn client_responses_map_to_statuses() {
        let status = |r| code_of(r).map(ErrorCode::status);
        assert_eq!(
            status(ClientResponse::Denied("x".into())),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            status(ClientResponse::NotFound("x".into())),
            Some(StatusCode::NOT_FOUND)
        );
        for msg in [
            "2 partials needed, 1 answered",
            "entry not committed",
            "cannot reach node 2",
            "request Timed Out",
            "no leader",
        ] {
            assert_eq!(
                status(ClientResponse::Error(msg.into())),
                Some(StatusCode::SERVICE_UNAVAILABLE),
                "{msg}"
            );
        }
        assert_eq!(
            status(ClientResponse::Error("bad ciphertext".into())),
            Some(StatusCode::BAD_REQUEST)
        );
        // Holders refused the ciphertext proof (wrong context): the caller's
        // error, though the message also says how many holders were needed.
        let proof = qk_crypto::CryptoError::InvalidCiphertextProof.to_string();
        let refused = format!(
            "unwrap failed: needed 2 holders, 2 of 3 answered (2 refused: node-1: {proof})"
        );
        assert_eq!(
            status(ClientResponse::Error(refused)),
            Some(StatusCode::BAD_REQUEST)
        );
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
