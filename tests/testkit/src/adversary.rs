//! The adversary kit: what an attacker who owns one machine holds (a real
//! node's certificate and key, issued by the cluster CA), talking to a real
//! cluster at the wire level. Tests use it to try each abuse THREATS.md
//! rules out and check it is refused while honest traffic goes on.

use std::sync::Arc;
use std::time::Duration;

use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::Vote;
use qk_net::{BoxFuture, CaCert, Credentials, Dialer, NetConfig, Peer, RpcHandler, Server};
use qk_protocol::ProtocolMessage;
use qk_raft::{PeerRequest, PeerResponse};
use qk_state::{Command as SmCommand, Operation, RequestId};
use qk_wire::{ClientRequest, ClientResponse};
use tokio::sync::mpsc;

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

    /// Takes node `node`'s place on the network with its stolen certificate
    /// (the real process must be stopped first): every protocol message
    /// the cluster sends to node `node` now reaches the attacker.
    pub async fn impersonate(&self, c: &Cluster) -> Impostor {
        let pki = c.pki();
        let ca = CaCert::load(&pki.join("ca.pem")).expect("ca");
        let creds = Credentials::load(
            &pki.join(format!("node-{}.pem", self.node)),
            &pki.join(format!("node-{}.key", self.node)),
        )
        .expect("stolen node credentials");
        let (tx, inbox) = mpsc::unbounded_channel();
        let addr = c.addr(self.node).parse().expect("socket address");
        let server = Server::bind(addr, &ca, &creds, NetConfig::default(), Arc::new(Inbox(tx)))
            .await
            .expect("bind the stolen node's address");
        Impostor {
            _server: server,
            inbox,
        }
    }

    /// A protocol message from this node, as the wire carries it.
    pub fn protocol(msg: &ProtocolMessage) -> PeerRequest {
        PeerRequest::Protocol(msg.encode().expect("encodable").to_vec())
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

    /// A write with the principal and request id of the attacker's choosing,
    /// with no proof of its author.
    pub fn unsigned_write(principal: &str, request_id: [u8; 16], op: Operation) -> PeerRequest {
        PeerRequest::Client(ClientRequest::Write(SmCommand {
            request_id: RequestId(request_id),
            time_ms: 0,
            principal: principal.into(),
            op,
            proof: None,
        }))
    }

    /// As [`Adversary::unsigned_write`], signed with the stolen node's own
    /// key (the strongest proof the attacker can make).
    pub fn write(&self, principal: &str, request_id: [u8; 16], op: Operation) -> PeerRequest {
        let mut cmd = SmCommand {
            request_id: RequestId(request_id),
            time_ms: 0,
            principal: principal.into(),
            op,
            proof: None,
        };
        let session = self.pool.session().expect("the stolen node's session");
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis() as u64;
        let proof = session.sign_command(&cmd, now_ms).expect("sign");
        cmd.proof = Some(Box::new(proof));
        PeerRequest::Client(ClientRequest::Write(cmd))
    }
}

/// Every signed command in the Raft log on node `node`'s disk (the node
/// must be stopped: its storage is locked while it runs), as an attacker
/// who owns the machine reads it.
pub async fn signed_commands_on_disk(c: &Cluster, node: u64) -> Vec<SmCommand> {
    use openraft::storage::RaftLogStorage;
    use openraft::{EntryPayload, RaftLogReader};
    let dir = c.data_dir(node).join("raft");
    let no_signers = Arc::new(qk_state::authn::KeyRoster::new());
    let (mut log, _sm) = qk_storage::open(&dir, no_signers).expect("open the stolen log");
    let last = log
        .get_log_state()
        .await
        .expect("log state")
        .last_log_id
        .map_or(0, |l| l.index);
    let entries = log
        .try_get_log_entries(0..=last)
        .await
        .expect("read the stolen log");
    entries
        .into_iter()
        .filter_map(|e| match e.payload {
            EntryPayload::Normal(batch) => Some(batch.0),
            _ => None,
        })
        .flatten()
        .filter(|cmd| cmd.proof.is_some())
        .collect()
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

/// The attacker listening at a stolen node's address.
#[derive(Debug)]
pub struct Impostor {
    _server: Server,
    inbox: mpsc::UnboundedReceiver<(u64, ProtocolMessage)>,
}

impl Impostor {
    /// Sends `request` (a `PartialRequest` with `op_id`) from the stolen
    /// identity to `holder` and returns its answer (`Ok(partial bytes)` or
    /// the refusal). The answer travels on the holder's own connection to
    /// the stolen address, which may still point at the stopped process, so
    /// the request is sent again while no answer came (up to a minute).
    pub async fn ask(
        &mut self,
        thief: &Adversary,
        c: &Cluster,
        holder: u64,
        op_id: u64,
        request: &ProtocolMessage,
    ) -> Result<Vec<u8>, String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::time::Instant::now() < deadline {
            let sent = thief.send(c, holder, Adversary::protocol(request)).await;
            assert!(
                matches!(sent, Ok(PeerResponse::ProtocolAccepted) | Err(_)),
                "{sent:?}"
            );
            let wait = tokio::time::Instant::now() + Duration::from_secs(5);
            while let Ok(Some((from, msg))) = tokio::time::timeout_at(wait, self.inbox.recv()).await
            {
                match msg {
                    ProtocolMessage::PartialResponse { op_id: id, result }
                        if id == op_id && from == holder =>
                    {
                        return result;
                    }
                    _ => {}
                }
            }
        }
        panic!("node {holder} never answered partial request {op_id}");
    }
}

struct Inbox(mpsc::UnboundedSender<(u64, ProtocolMessage)>);

impl RpcHandler for Inbox {
    fn handle(&self, peer: Peer, req: PeerRequest) -> BoxFuture<'_, PeerResponse> {
        Box::pin(async move {
            match (peer, req) {
                (Peer::Node(from), PeerRequest::Protocol(bytes)) => {
                    if let Ok(msg) = ProtocolMessage::decode(&bytes) {
                        let _ = self.0.send((from, msg));
                    }
                    PeerResponse::ProtocolAccepted
                }
                _ => PeerResponse::Refused("the impostor answers nothing else".into()),
            }
        })
    }
}
