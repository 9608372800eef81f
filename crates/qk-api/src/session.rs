//! Read-your-writes over HTTPS (`X-Qk-Index`, see `qk_views::INDEX_HEADER`).
//!
//! A request that names an index waits (bounded) until this node applied
//! it; every answer names the node's applied index, and a revocation's
//! answer names the members that had not applied it yet.

use std::cell::RefCell;

use axum::extract::{Request, State};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use qk_views::{INDEX_HEADER, NOT_APPLIED_HEADER};

use crate::errors::Failure;
use crate::AppState;

tokio::task_local! {
    /// Members that had not applied this request's write (set by `AppState::write`).
    static NOT_APPLIED: RefCell<Vec<u64>>;
}

/// Records, for the answer being built, the members a write is not yet applied on.
pub(crate) fn note_not_applied(nodes: &[u64]) {
    let _ = NOT_APPLIED.try_with(|n| n.borrow_mut().extend_from_slice(nodes));
}

fn requested_index(req: &Request) -> Result<u64, Failure> {
    let Some(value) = req.headers().get(INDEX_HEADER) else {
        return Ok(0);
    };
    value
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or_else(|| {
            Failure::invalid(
                "the X-Qk-Index header must be a log index (a decimal number) taken from an \
                 earlier answer's X-Qk-Index; send it unchanged or leave it out",
            )
        })
}

fn is_vault(req: &Request) -> bool {
    req.uri().path().starts_with("/v1/")
}

/// The middleware: wait for the requested index, then answer with ours.
pub(crate) async fn read_your_writes(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let vault = is_vault(&req);
    let refuse = |f: Failure| {
        if vault {
            crate::vault::failure_response(f)
        } else {
            f.into_response()
        }
    };
    let wanted = match requested_index(&req) {
        Ok(i) => i,
        Err(f) => return refuse(f),
    };
    // Only an authenticated caller is waited for: an anonymous one, refused
    // by the handler anyway, cannot hold a waiter slot.
    let authenticated = wanted > 0 && {
        let peer = req.extensions().get::<crate::ConnPeer>();
        crate::authenticate(state.backend.as_ref(), req.headers(), peer).is_ok()
    };
    if authenticated {
        if let Err(behind) = state.backend.wait_applied(wanted).await {
            return refuse(behind.into());
        }
    }
    let (not_applied, mut resp) = NOT_APPLIED
        .scope(RefCell::new(Vec::new()), async {
            let resp = next.run(req).await;
            (NOT_APPLIED.with(|n| n.take()), resp)
        })
        .await;
    let headers = resp.headers_mut();
    headers.insert(
        INDEX_HEADER,
        HeaderValue::from(state.backend.applied_index()),
    );
    if !not_applied.is_empty() {
        let list: Vec<String> = not_applied.iter().map(u64::to_string).collect();
        if let Ok(v) = HeaderValue::from_str(&list.join(",")) {
            headers.insert(NOT_APPLIED_HEADER, v);
        }
    }
    resp
}
