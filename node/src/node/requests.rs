//! Client requests beyond reads and writes: authorization of every request,
//! data keys, rewrap, tokens, identities, approvals, audit verification and
//! cluster health.
// Refusals travel as the `ClientResponse` the caller gets back; they are
// built once per refused request, so their size does not matter.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::time::Duration;

use qk_net::Peer;
use qk_raft::{PeerRequest, PeerResponse};
use qk_state::proof::Credential;
use qk_state::{
    Applied, Command, Decision, Operation, Permission, RequestId, StateMachine, VersionState,
};
use qk_types::{KeyVersion, RequestError};
use qk_wire::{
    ClientRequest, ClientResponse, ClusterHealth, CredentialKind, MemberHealth, Redacted,
    RequestMemory, VersionHealth,
};
use sha2::{Digest, Sha256};

use super::Node;
use crate::io::now_ms;

/// How long a member may take to answer a health probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);
const MIN_DATA_KEY_BYTES: u16 = 16;
const MAX_DATA_KEY_BYTES: u16 = 64;

/// The principal name a client certificate or token authenticated.
pub(super) fn client_name(peer: &Peer) -> Option<&str> {
    match peer {
        Peer::Client(name) => Some(name),
        Peer::Node(_) => None,
    }
}

/// The name a request runs as: the client's principal, or `node-N`.
pub(super) fn principal_name(peer: &Peer) -> String {
    match peer {
        Peer::Client(name) => name.clone(),
        Peer::Node(id) => qk_types::NodeId(*id).to_string(),
    }
}

pub(super) fn ciphertext_digest(ct: &qk_crypto::Ciphertext) -> [u8; 32] {
    Sha256::digest(ct.to_bytes()).into()
}

impl Node {
    /// The verdict for a request; nodes are trusted (they are authenticated
    /// by their certificate and only relay or run protocol steps).
    pub(super) fn decide(
        &self,
        peer: &Peer,
        permission: Permission,
        key: Option<&str>,
        context: &BTreeMap<String, String>,
    ) -> Decision {
        let Some(name) = client_name(peer) else {
            return Decision::Allow;
        };
        self.state
            .read(|a| a.machine().authorize(name, permission, key, context))
            .unwrap_or_else(|e| Decision::Deny(format!("cannot read the local state: {e}")))
    }

    /// Records a refusal in the audit trail and answers it.
    pub(super) fn denied(
        &self,
        peer: &Peer,
        operation: &str,
        key: Option<&str>,
        reason: String,
    ) -> ClientResponse {
        self.audit.record(
            &principal_name(peer),
            operation,
            key,
            None,
            format!("refused: permission denied: {reason}"),
        );
        ClientResponse::Denied(reason)
    }

    /// Allows or answers with an audited refusal. Approval-gated requests are
    /// refused here; callers that support approvals use [`Node::decide`].
    pub(super) fn require(
        &self,
        peer: &Peer,
        permission: Permission,
        key: Option<&str>,
        operation: &str,
    ) -> Result<(), ClientResponse> {
        match self.decide(peer, permission, key, &BTreeMap::new()) {
            Decision::Allow => Ok(()),
            Decision::Deny(reason) => Err(self.denied(peer, operation, key, reason)),
            Decision::NeedsApproval { .. } => Err(self.denied(
                peer,
                operation,
                key,
                format!("{permission} on this key needs approval"),
            )),
        }
    }

    /// Allowed if any of `permissions` is.
    fn require_any(
        &self,
        peer: &Peer,
        permissions: &[Permission],
        operation: &str,
    ) -> Result<(), ClientResponse> {
        let mut last = None;
        for p in permissions {
            match self.decide(peer, *p, None, &BTreeMap::new()) {
                Decision::Allow => return Ok(()),
                Decision::Deny(r) => last = Some(r),
                Decision::NeedsApproval { .. } => {}
            }
        }
        let reason = last.unwrap_or_else(|| "not allowed".into());
        Err(self.denied(peer, operation, None, reason))
    }

    /// Key names the caller may read.
    fn readable(&self, peer: &Peer, s: &StateMachine) -> Vec<String> {
        let names: Vec<String> = s.keys().map(|k| k.name.clone()).collect();
        match client_name(peer) {
            None => names,
            Some(p) => names
                .into_iter()
                .filter(|k| {
                    s.authorize(p, Permission::KeyRead, Some(k), &BTreeMap::new())
                        == Decision::Allow
                })
                .collect(),
        }
    }

    pub(super) fn list_keys(&self, peer: &Peer, full: bool) -> ClientResponse {
        if let Err(denied) = self.require(peer, Permission::KeyRead, None, "key.list") {
            return denied;
        }
        self.read(|s| {
            let names = self.readable(peer, s);
            if full {
                let records = names.iter().filter_map(|n| s.key(n).cloned()).collect();
                ClientResponse::KeyRecords(records)
            } else {
                ClientResponse::Keys(names)
            }
        })
    }

    /// A key's record, linearizable: permission first (a caller without it
    /// costs no leader round trip), then the read barrier.
    pub(super) async fn get_key_by_id(&self, peer: &Peer, id: qk_types::KeyId) -> ClientResponse {
        self.get_key_found(peer, |s| s.key_by_id(id), || format!("no key has id {id}"))
            .await
    }

    pub(super) async fn get_key_by_alias(&self, peer: &Peer, alias: &str) -> ClientResponse {
        self.get_key_found(
            peer,
            |s| s.key_by_alias(alias).or_else(|| s.key(alias)),
            || format!("no alias or key is named {alias:?}"),
        )
        .await
    }

    /// A linearizable read of the key `find` picks, if the caller may read it
    /// (by role first, so an unknown id or alias tells a stranger nothing).
    async fn get_key_found(
        &self,
        peer: &Peer,
        find: impl Fn(&StateMachine) -> Option<&qk_state::KeyRecord>,
        missing: impl Fn() -> String,
    ) -> ClientResponse {
        if let Err(denied) = self.require(peer, Permission::KeyRead, None, "key.read") {
            return denied;
        }
        if let Err(unavailable) = self.read_barrier().await {
            return unavailable;
        }
        let found = self.read(|s| match find(s) {
            Some(k) => ClientResponse::Key(Some(k.clone())),
            None => {
                ClientResponse::NotFound(format!("{}; list keys to see the inventory", missing()))
            }
        });
        if let ClientResponse::Key(Some(key)) = &found {
            if let Err(denied) =
                self.require(peer, Permission::KeyRead, Some(&key.name), "key.read")
            {
                return denied;
            }
        }
        found
    }

    pub(super) async fn get_key(&self, peer: &Peer, name: &str) -> ClientResponse {
        if let Err(denied) = self.require(peer, Permission::KeyRead, Some(name), "key.read") {
            return denied;
        }
        if let Err(unavailable) = self.read_barrier().await {
            return unavailable;
        }
        self.read(|s| match s.key(name) {
            Some(k) => ClientResponse::Key(Some(k.clone())),
            None => ClientResponse::NotFound(format!(
                "key {name:?} does not exist; list keys to see the inventory"
            )),
        })
    }

    pub(super) fn data_key(
        &self,
        peer: &Peer,
        name: &str,
        bytes: u16,
        context: &BTreeMap<String, String>,
    ) -> ClientResponse {
        if !(MIN_DATA_KEY_BYTES..=MAX_DATA_KEY_BYTES).contains(&bytes) {
            return ClientResponse::Error(RequestError::invalid(format!(
                "a data key is {MIN_DATA_KEY_BYTES} to {MAX_DATA_KEY_BYTES} bytes, not {bytes}"
            )));
        }
        let mut plaintext = Redacted(vec![0u8; usize::from(bytes)]);
        rand::fill(&mut plaintext.0[..]);
        match self.encrypt_as(peer, "datakey", name, context, &plaintext.0) {
            ClientResponse::Ciphertext { text, version } => ClientResponse::DataKey {
                plaintext,
                ciphertext: text,
                version,
            },
            other => other,
        }
    }

    /// Authorizes, wraps, audits.
    pub(super) fn encrypt_as(
        &self,
        peer: &Peer,
        operation: &str,
        name: &str,
        context: &BTreeMap<String, String>,
        plaintext: &[u8],
    ) -> ClientResponse {
        match self.decide(peer, Permission::Encrypt, Some(name), context) {
            Decision::Allow => {}
            Decision::Deny(reason) => return self.denied(peer, operation, Some(name), reason),
            Decision::NeedsApproval { .. } => {
                return self.denied(
                    peer,
                    operation,
                    Some(name),
                    "encrypt never needs approval; the key's policy is inconsistent".into(),
                )
            }
        }
        let resp = self.encrypt(name, context, plaintext);
        let (version, outcome) = match &resp {
            ClientResponse::Ciphertext { version, .. } => {
                (Some(KeyVersion(*version)), "ok".to_string())
            }
            ClientResponse::Error(e) => (None, format!("refused: {e}")),
            _ => (None, "ok".to_string()),
        };
        self.audit.record(
            &principal_name(peer),
            operation,
            Some(name),
            version,
            outcome,
        );
        resp
    }

    pub(super) fn approval_pending(&self, id: &str) -> ClientResponse {
        self.read(|s| match s.approval(id) {
            Some(a) => ClientResponse::ApprovalPending(a.clone()),
            None => ClientResponse::Error(RequestError::unavailable(format!(
                "approval {id} was requested but is not visible yet; list approvals"
            ))),
        })
    }

    /// Proposes `op` as the caller, signed with its `credential`.
    pub(super) async fn write_as(
        &self,
        peer: &Peer,
        credential: Option<&Credential>,
        op: Operation,
    ) -> ClientResponse {
        let cmd = Command {
            request_id: RequestId(rand::random()),
            time_ms: 0,
            principal: String::new(),
            op,
            proof: None,
        };
        self.write(peer, credential, cmd).await
    }

    /// The secret of token `id`: random for a bearer token; for an AWS
    /// credential, derived from this node's seal key so that only this node
    /// can check its signatures.
    fn token_secret(
        &self,
        kind: CredentialKind,
        id: &str,
    ) -> Result<zeroize::Zeroizing<String>, RequestError> {
        match kind {
            CredentialKind::Bearer => Ok(zeroize::Zeroizing::new(hex(&rand::random::<[u8; 32]>()))),
            CredentialKind::AwsSigV4 => self.aws_secret_of(id),
        }
    }

    /// The secret and expiry of AWS access key `token_id` (this node's
    /// derivation; whether this node issued it shows when the caller checks
    /// the token with that secret).
    pub(crate) fn aws_secret(&self, token_id: &str) -> Result<qk_api::AwsSecret, RequestError> {
        let expires_at_ms = self
            .state
            .read(|a| a.machine().token(token_id).map(|t| t.expires_at_ms))
            .map_err(|e| RequestError::unavailable(format!("cannot read the local state: {e}")))?
            .ok_or_else(|| RequestError::unauthenticated("no such access key"))?;
        let secret = self.aws_secret_of(token_id)?;
        Ok(qk_api::AwsSecret {
            secret: Redacted(secret.as_bytes().to_vec()),
            expires_at_ms,
        })
    }

    /// The AWS secret access key of token `id` as this node derives it.
    pub(crate) fn aws_secret_of(
        &self,
        id: &str,
    ) -> Result<zeroize::Zeroizing<String>, RequestError> {
        let derived = self
            .quorum
            .gateway_secret(AWS_SECRET_PURPOSE, id)
            .map_err(|e| {
                RequestError::internal(format!("could not derive the AWS credential's secret: {e}"))
            })?;
        Ok(zeroize::Zeroizing::new(hex(derived.as_ref())))
    }

    pub(super) async fn issue_token(
        &self,
        peer: &Peer,
        credential: Option<&Credential>,
        token: NewToken,
    ) -> ClientResponse {
        let NewToken {
            principal,
            ttl_ms,
            mut description,
            kind,
        } = token;
        let id = token_id(kind);
        let secret = match self.token_secret(kind, &id) {
            Ok(secret) => secret,
            Err(e) => return ClientResponse::Error(e),
        };
        if kind == CredentialKind::AwsSigV4 {
            description = format!("AWS access key bound to node {}: {description}", self.id);
        }
        let verify_key = match qk_state::proof::token_verify_key(&secret) {
            Ok(key) => key,
            Err(e) => {
                return ClientResponse::Error(RequestError::internal(format!(
                    "could not derive the token's key: {e}"
                )))
            }
        };
        let secret_sha256: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let created_ms = now_ms();
        let expires_at_ms = created_ms.saturating_add(ttl_ms);
        let op = Operation::IssueToken {
            id: id.clone(),
            principal: principal.clone(),
            description: description.clone(),
            secret_sha256,
            verify_key,
            expires_at_ms,
        };
        let token = || Redacted(qk_state::token_text(&id, &secret).into_bytes());
        match self.write_as(peer, credential, op.clone()).await {
            ClientResponse::Written {
                response,
                log_index,
                ..
            } => match response.result {
                // Under the cluster's access rule: the token is the caller's
                // to hand over once the approvers agree.
                Ok(Applied::ApprovalRequested {
                    id: approval,
                    required,
                }) => self.read(|s| {
                    let record = qk_state::TokenRecord {
                        id: id.clone(),
                        principal,
                        description,
                        secret_sha256,
                        verify_key,
                        created_ms,
                        expires_at_ms,
                        revoked_ms: None,
                    };
                    // As this node applied it; if it has not yet, the request
                    // as filed: a pending token never looks issued.
                    let filed = s.approval(&approval).cloned().unwrap_or_else(|| {
                        qk_state::ApprovalRecord {
                            id: approval.clone(),
                            requester: client_name(peer).unwrap_or_default().to_string(),
                            key: String::new(),
                            permission: qk_state::Permission::TokenManage,
                            action: qk_state::PendingAction::Operation(Box::new(op)),
                            required,
                            approvers: Default::default(),
                            created_ms,
                            expires_at_ms: created_ms.saturating_add(
                                s.access_rule()
                                    .map_or_else(qk_state::default_approval_ttl_ms, |r| r.ttl_ms),
                            ),
                            status: qk_state::ApprovalStatus::Pending,
                        }
                    });
                    ClientResponse::Token {
                        token: token(),
                        record,
                        log_index,
                        approval: Some(filed),
                    }
                }),
                Ok(_) => self.read(|s| match s.tokens().find(|t| t.id == id) {
                    Some(record) => ClientResponse::Token {
                        token: token(),
                        record: record.clone(),
                        log_index,
                        approval: None,
                    },
                    None => ClientResponse::Error(RequestError::unavailable(
                        "the token was issued but is not visible on this node yet; list tokens",
                    )),
                }),
                Err(e) => written_error(e),
            },
            other => other,
        }
    }

    /// Checks an AWS access key's token (its secret as this node derives
    /// it) against this node's state and clock.
    pub fn authenticate_aws_token(&self, token: &str) -> Result<(String, String), RequestError> {
        self.state
            .read(|a| {
                a.machine()
                    .authenticate_aws_token(token, now_ms())
                    .map(|(p, t)| (p.name.clone(), t.id.clone()))
            })
            .map_err(|e| RequestError::unavailable(format!("cannot read the local state: {e}")))?
    }

    /// Checks a bearer token against this node's state and clock.
    pub fn authenticate_token(&self, token: &str) -> Result<(String, String), RequestError> {
        self.state
            .read(|a| {
                a.machine()
                    .authenticate_token(token, now_ms())
                    .map(|(p, t)| (p.name.clone(), t.id.clone()))
            })
            .map_err(|e| RequestError::unavailable(format!("cannot read the local state: {e}")))?
    }

    pub(super) fn authenticate(&self, token: &[u8]) -> ClientResponse {
        let Ok(token) = std::str::from_utf8(token) else {
            return ClientResponse::Denied("token not accepted".into());
        };
        self.read(|s| match s.authenticate_token(token, now_ms()) {
            Ok((p, t)) => ClientResponse::Identity {
                principal: p.clone(),
                token: Some(t.clone()),
            },
            Err(e) => ClientResponse::Denied(e.message),
        })
    }

    pub(super) fn who_am_i(&self, peer: &Peer, token_id: Option<String>) -> ClientResponse {
        let Some(name) = client_name(peer) else {
            return ClientResponse::Error(RequestError::invalid("nodes have no principal record"));
        };
        self.read(|s| match s.principal(name) {
            Some(p) => ClientResponse::Identity {
                principal: p.clone(),
                token: token_id
                    .and_then(|id| s.tokens().find(|t| t.id == id && t.principal == name).cloned()),
            },
            None => ClientResponse::Denied(format!(
                "principal {name} is not known to the cluster; an administrator adds it with `qk principal create`"
            )),
        })
    }

    pub(super) fn list_access(&self, peer: &Peer, req: &ClientRequest) -> ClientResponse {
        use Permission as P;
        let (needed, operation): (&[Permission], &str) = match req {
            ClientRequest::ListPrincipals => {
                (&[P::PrincipalManage, P::AuditRead], "principal.list")
            }
            ClientRequest::ListTokens => (&[P::TokenManage, P::AuditRead], "token.list"),
            ClientRequest::GetAccessRule => (
                &[P::PrincipalManage, P::TokenManage, P::Approve, P::AuditRead],
                "cluster.access-rule",
            ),
            _ => (
                &[P::Approve, P::AuditRead, P::PrincipalManage],
                "approval.list",
            ),
        };
        let everything = self.require_any(peer, needed, operation);
        match (req, everything) {
            (ClientRequest::ListApprovals, Err(_)) => self.own_approvals(peer),
            (_, Err(denied)) => denied,
            (ClientRequest::ListPrincipals, Ok(())) => {
                self.read(|s| ClientResponse::Principals(s.principals().cloned().collect()))
            }
            (ClientRequest::GetAccessRule, Ok(())) => {
                self.read(|s| ClientResponse::AccessRule(s.access_rule().cloned()))
            }
            (ClientRequest::ListTokens, Ok(())) => {
                self.read(|s| ClientResponse::Tokens(s.tokens().cloned().collect()))
            }
            (_, Ok(())) => {
                self.read(|s| ClientResponse::Approvals(s.approvals().cloned().collect()))
            }
        }
    }

    /// A requester always sees its own approval requests.
    fn own_approvals(&self, peer: &Peer) -> ClientResponse {
        let name = client_name(peer).unwrap_or_default();
        self.read(|s| {
            ClientResponse::Approvals(
                s.approvals()
                    .filter(|a| a.requester == name)
                    .cloned()
                    .collect(),
            )
        })
    }

    pub(super) fn audit_verify(&self, peer: &Peer) -> ClientResponse {
        if let Err(denied) = self.require(peer, Permission::AuditRead, None, "audit.verify") {
            return denied;
        }
        self.read(|s| {
            let records = s.audit_records(1, usize::MAX);
            match qk_state::verify_chain(records, qk_state::GENESIS_HASH) {
                Ok(()) => ClientResponse::AuditVerified {
                    records: records.len() as u64,
                    head_hash: records.last().map(|r| r.hash).unwrap_or(qk_state::GENESIS_HASH),
                },
                Err(e) => ClientResponse::Error(RequestError::internal(format!(
                    "the audit chain of node {} does not verify: {e}; compare with other nodes and restore this node from a healthy one",
                    self.id
                ))),
            }
        })
    }

    /// This node's signed statement of its audit record `seq` (0: its last).
    pub(super) fn audit_checkpoint(&self, peer: &Peer, seq: u64) -> ClientResponse {
        if let Err(denied) = self.require(peer, Permission::AuditRead, None, "audit.checkpoint") {
            return denied;
        }
        let record = self.state.read(|a| {
            let m = a.machine();
            let seq = if seq == 0 { m.audit_len() } else { seq };
            m.audit_records(seq, 1)
                .first()
                .filter(|r| r.seq == seq)
                .map(|r| (r.seq, r.hash))
        });
        let (seq, hash) = match record {
            Ok(Some(record)) => record,
            Ok(None) => {
                return ClientResponse::Error(RequestError::unavailable(format!(
                    "node {} has not applied audit record {seq} yet; retry shortly",
                    self.id
                )))
            }
            Err(e) => {
                return ClientResponse::Error(RequestError::unavailable(format!(
                    "cannot read the local state: {e}"
                )))
            }
        };
        match self.identity.sign_checkpoint(seq, hash, now_ms()) {
            Ok(cp) => ClientResponse::Checkpoint(cp),
            Err(e) => ClientResponse::Error(RequestError::internal(format!(
                "node {} could not sign its audit checkpoint: {e}",
                self.id
            ))),
        }
    }

    /// Members and their reachability; per key version, its live holders.
    pub(super) async fn cluster_health(&self, peer: &Peer) -> ClientResponse {
        // Client-side decryption needs the members' API addresses: callers
        // who may decrypt read it too. Principals with neither are refused.
        let needed = [Permission::ClusterRead, Permission::Decrypt];
        if let Err(denied) = self.require_any(peer, &needed, "cluster.read") {
            return denied;
        }
        let status = self.status();
        let probes = status.addrs.iter().map(|(id, addr)| self.probe(*id, addr));
        let answers = futures::future::join_all(probes).await;
        let api_urls = self.member_api_urls();
        let members: Vec<MemberHealth> = status
            .addrs
            .iter()
            .zip(answers)
            .map(|((id, addr), answer)| MemberHealth {
                node_id: *id,
                rpc_addr: addr.clone(),
                api_url: api_urls.get(id).cloned().unwrap_or_default(),
                voter: status.voters.contains(id),
                reachable: answer.is_some(),
                last_applied: answer.as_ref().and_then(|s| s.last_applied),
                term: answer.map(|s| s.term),
            })
            .collect();
        let live: Vec<u64> = members
            .iter()
            .filter(|m| m.reachable)
            .map(|m| m.node_id)
            .collect();
        let (versions, request_memory, refresh_every_ms) = self
            .state
            .read(|a| {
                let s = a.machine();
                let memory = RequestMemory {
                    remembered: s.remembered_requests() as u64,
                    shares_enabled: s.request_shares().is_active(),
                };
                let versions = self
                    .readable(peer, s)
                    .iter()
                    .filter_map(|n| s.key(n))
                    .flat_map(|k| k.versions.iter().map(move |v| (k, v)))
                    .filter(|(_, v)| {
                        !matches!(
                            v.state,
                            VersionState::Destroyed | VersionState::Failed { .. }
                        )
                    })
                    .map(|(k, v)| VersionHealth {
                        key: k.name.clone(),
                        version: v.version.0,
                        state: v.state.name().to_string(),
                        threshold: v.threshold,
                        holders: v.holders.iter().map(|h| h.0).collect(),
                        live_holders: v
                            .holders
                            .iter()
                            .map(|h| h.0)
                            .filter(|h| live.contains(h))
                            .collect(),
                    })
                    .collect();
                (versions, memory, s.refresh_schedule().every_ms())
            })
            .unwrap_or((Vec::new(), RequestMemory::default(), None));
        ClientResponse::ClusterHealth(ClusterHealth {
            status,
            members,
            versions,
            request_memory,
            refresh_every_ms,
        })
    }

    async fn probe(&self, id: u64, addr: &str) -> Option<qk_wire::NodeStatus> {
        if id == self.id {
            return Some(self.status());
        }
        let client = self.peers.node(id, addr);
        let request = PeerRequest::Client(ClientRequest::Status);
        match tokio::time::timeout(PROBE_TIMEOUT, client.call(&request)).await {
            Ok(Ok(PeerResponse::Client(ClientResponse::Status(s)))) => Some(s),
            _ => None,
        }
    }
}

fn written_error(e: qk_state::StateError) -> ClientResponse {
    match e {
        qk_state::StateError::Denied(r) => ClientResponse::Denied(r),
        qk_state::StateError::NotFound(r) => ClientResponse::NotFound(r),
        other => ClientResponse::Error(RequestError::new(other.kind(), other.to_string())),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What `IssueToken` asks for.
#[derive(Debug)]
pub(crate) struct NewToken {
    pub principal: String,
    pub ttl_ms: u64,
    pub description: String,
    pub kind: CredentialKind,
}

/// HKDF purpose of the AWS secret access keys this node derives.
const AWS_SECRET_PURPOSE: &str = "aws-sigv4-secret-access-key";

/// A fresh token id: an AWS access key's carries
/// [`qk_state::AWS_TOKEN_ID_MARKER`], a bearer token's never does.
fn token_id(kind: CredentialKind) -> String {
    match kind {
        CredentialKind::AwsSigV4 => format!(
            "{}{}",
            qk_state::AWS_TOKEN_ID_MARKER,
            hex(&rand::random::<[u8; 4]>())
        ),
        CredentialKind::Bearer => loop {
            let id = hex(&rand::random::<[u8; 8]>());
            if !qk_state::is_aws_token_id(&id) {
                return id;
            }
        },
    }
}
