//! The adversary kit: what an attacker who owns one machine holds (a real
//! node's certificate and key, issued by the cluster CA), talking to a real
//! cluster at the wire level. Tests use it to try each abuse THREATS.md
//! rules out and check it is refused while honest traffic goes on.

use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::Vote;
use qk_net::Dialer;
use qk_raft::{ClientRequest, ClientResponse, PeerRequest, PeerResponse};
use qk_state::{Command as SmCommand, Operation, RequestId};

use crate::cluster::{dialer, qk, Cluster};

/// One stolen (or extra) node identity.
#[derive(Debug)]
pub struct Adversary {
    /// The node id its certificate names.
    pub node: u64,
    pool: Dialer,
}

impl Adversary {
    /// The credentials of cluster member `node` (its certificate and key,
    /// as read from its machine).
    pub fn stolen(c: &Cluster, node: u64) -> Adversary {
        let pki = c.pki();
        Adversary {
            node,
            pool: dialer(
                &pki.join("ca.pem"),
                &pki.join(format!("node-{node}.pem")),
                &pki.join(format!("node-{node}.key")),
            ),
        }
    }

    /// A node certificate from the cluster CA for a node that never joined.
    pub fn non_member(c: &Cluster, node: u64) -> Adversary {
        let pki = c.pki();
        let dir = pki.to_str().expect("utf-8 path").to_string();
        qk(
            &c.bin,
            &[
                "pki",
                "issue-node",
                "--dir",
                &dir,
                "--id",
                &node.to_string(),
            ],
        );
        Adversary::stolen(c, node)
    }

    /// Sends one request to cluster node `to`.
    pub async fn send(
        &self,
        c: &Cluster,
        to: u64,
        req: PeerRequest,
    ) -> Result<PeerResponse, String> {
        self.pool
            .node(to, &c.addr(to))
            .call(&req)
            .await
            .map_err(|e| e.to_string())
    }

    /// An empty AppendEntries claiming `leader` won `term`.
    pub fn append_entries(leader: u64, term: u64) -> PeerRequest {
        PeerRequest::AppendEntries(AppendEntriesRequest {
            vote: Vote::new_committed(term, leader),
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        })
    }

    /// A vote request for `candidate` in `term`.
    pub fn vote(candidate: u64, term: u64) -> PeerRequest {
        PeerRequest::Vote(VoteRequest {
            vote: Vote::new(term, candidate),
            last_log_id: None,
        })
    }

    /// A write with the principal and request id of the attacker's choosing.
    pub fn write(principal: &str, request_id: [u8; 16], op: Operation) -> PeerRequest {
        PeerRequest::Client(ClientRequest::Write(SmCommand {
            request_id: RequestId(request_id),
            time_ms: 0,
            principal: principal.into(),
            op,
        }))
    }
}

/// The state machine's verdict on a write, or why there was none.
pub fn write_outcome(resp: Result<PeerResponse, String>) -> Result<(), String> {
    match resp? {
        PeerResponse::Client(ClientResponse::Written { response, .. }) => {
            response.result.map(|_| ()).map_err(|e| e.to_string())
        }
        other => Err(format!("{other:?}")),
    }
}
