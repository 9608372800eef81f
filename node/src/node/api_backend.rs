//! The node behind its HTTPS API: every API request becomes the same
//! `ClientRequest` the QUIC clients send, run as the authenticated principal.

use std::sync::Arc;

use qk_api::{Backend, BoxFuture, Caller, Gauges};
use qk_net::Peer;
use qk_types::RequestError;
use qk_wire::{ClientRequest, ClientResponse};

use super::Node;
use crate::maintenance::Schedule;

/// A node is ready while it applies at most this many entries behind its
/// own log. Under load the newest entries are always a few appends ahead of
/// apply; a node restoring or catching up is thousands behind.
const READY_MAX_APPLY_LAG_ENTRIES: u64 = 64;

#[derive(Debug)]
pub struct ApiBackend(pub Arc<Node>);

impl Backend for ApiBackend {
    fn call(&self, caller: Caller, req: ClientRequest) -> BoxFuture<'_, ClientResponse> {
        Box::pin(async move {
            let req = match req {
                ClientRequest::WhoAmI { .. } => ClientRequest::WhoAmI {
                    token_id: caller.token_id,
                },
                req => req,
            };
            let peer = Peer::Client(caller.principal);
            self.0
                .handle_client(&peer, caller.credential.as_ref(), req)
                .await
        })
    }

    fn authenticate_token(&self, token: &str) -> Result<(String, String), RequestError> {
        self.0.authenticate_token(token)
    }

    fn node_id(&self) -> u64 {
        self.0.id
    }

    fn readiness(&self) -> Result<u64, RequestError> {
        let m = self.0.raft.metrics().borrow().clone();
        let leader = m.current_leader.ok_or_else(|| {
            RequestError::unavailable(
                "no leader is known; the cluster may be electing or lack a majority",
            )
        })?;
        let applied = m.last_applied.map_or(0, |l| l.index);
        let logged = m.last_log_index.unwrap_or(0);
        if logged.saturating_sub(applied) > READY_MAX_APPLY_LAG_ENTRIES {
            return Err(RequestError::unavailable(format!(
                "catching up: applied {applied} of {logged} log entries"
            )));
        }
        if self.0.dkg_key_to_publish().is_some() {
            return Err(RequestError::unavailable(
                "this node has not published its DKG key yet (it does once it is a member); keys cannot be generated with it as a holder until then",
            ));
        }
        Ok(leader)
    }

    fn applied_index(&self) -> u64 {
        self.0.applied.get()
    }

    fn wait_applied(&self, index: u64) -> BoxFuture<'_, Result<(), RequestError>> {
        Box::pin(async move {
            self.0
                .applied
                .wait_for(index, crate::applied::CLIENT_INDEX_WAIT)
                .await
                .map(|_| ())
                .map_err(|behind| RequestError::unavailable(behind.to_string()))
        })
    }

    fn aws_secret(&self, token_id: &str) -> Result<qk_api::AwsSecret, RequestError> {
        self.0.aws_secret(token_id)
    }

    fn authenticate_aws_token(&self, token: &str) -> Result<(String, String), RequestError> {
        self.0.authenticate_aws_token(token)
    }

    fn gauges(&self) -> Gauges {
        let s = self.0.status();
        Gauges {
            term: s.term,
            last_applied: s.last_applied.unwrap_or(0),
            key_count: s.key_count,
            audit_len: s.audit_len,
            is_leader: s.leader == Some(s.node_id),
            voters: s.voters.len() as u64,
            leader_api_url: s.leader.and_then(|id| self.0.member_api_urls().remove(&id)),
        }
    }
}
