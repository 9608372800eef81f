//! What kind of failure a request met, chosen where the error is made and
//! carried across every seam (node, wire, HTTPS API, CLI) as data, so no
//! layer has to guess it from the message's words.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The kind of a failed request. The HTTPS API maps it to a status and an
/// error code, the CLI to an exit code; each mapping is written once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request itself is wrong (a bad argument, a ciphertext that does
    /// not verify); retrying it unchanged fails again.
    Invalid,
    /// No credential, or one the cluster does not accept.
    Unauthenticated,
    /// The caller is known but not allowed to do this.
    Denied,
    /// What the request names does not exist.
    NotFound,
    /// The request conflicts with the current state (a name taken, a
    /// version in a state that forbids the change).
    Conflict,
    /// The request is larger than the node accepts.
    TooLarge,
    /// The cluster cannot serve it right now (no leader, too few holders,
    /// a node behind); the same request may succeed later.
    Unavailable,
    /// A fault on the node's side; see the node's log.
    Internal,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::Invalid,
        ErrorKind::Unauthenticated,
        ErrorKind::Denied,
        ErrorKind::NotFound,
        ErrorKind::Conflict,
        ErrorKind::TooLarge,
        ErrorKind::Unavailable,
        ErrorKind::Internal,
    ];

    /// The code the HTTPS API puts in `{"error": {"code": ...}}`.
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Invalid => "invalid",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::Denied => "denied",
            ErrorKind::NotFound => "not-found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::TooLarge => "too-large",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }

    /// The kind a [`ErrorKind::name`] stands for.
    pub fn from_name(name: &str) -> Option<ErrorKind> {
        ErrorKind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A refused or failed request: its kind and a message that says what
/// failed and what to do next.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    pub kind: ErrorKind,
    pub message: String,
}

impl RequestError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        RequestError {
            kind,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }

    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthenticated, message)
    }

    pub fn denied(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Denied, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// The same error with `context: ` before its message.
    pub fn context(self, context: &str) -> Self {
        RequestError {
            kind: self.kind,
            message: format!("{context}: {}", self.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_its_name() {
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(ErrorKind::from_name("unknown"), None);
    }

    #[test]
    fn context_keeps_the_kind() {
        let e = RequestError::unavailable("no leader").context("cannot rotate k");
        assert_eq!(e.kind, ErrorKind::Unavailable);
        assert_eq!(e.to_string(), "cannot rotate k: no leader");
    }
}
