//! The unwrap path: one resolve-and-authorize for decrypt, partial and
//! rewrap ([`Node::authorize_unwrap`]), break-glass approvals, the
//! caller's intent proof, the quorum unwrap (server-side combining) and this
//! holder's own partial (client-side combining).

use std::collections::BTreeMap;

use qk_net::Peer;
use qk_state::proof::Credential;
use qk_state::{Applied, Decision, Operation, PendingAction, Permission};
use qk_types::RequestError;
use qk_wire::ClientResponse;

use super::requests::{self, ciphertext_digest};
use super::Node;
use crate::io::now_ms;

impl Node {
    /// Resolve-then-authorize, the one gate of decrypt, partial and rewrap:
    /// the ciphertext decoded once, its key found, the caller's decrypt
    /// permission decided (a refusal audited under `operation`). `Ok` says
    /// whether the key is break-glass (each decrypt needs an approval).
    fn authorize_unwrap(
        &self,
        peer: &Peer,
        operation: &str,
        text: &str,
        context: &BTreeMap<String, String>,
    ) -> Result<(qk_crypto::Ciphertext, String, bool), Box<ClientResponse>> {
        let (ct, name) = self
            .resolve_ciphertext(text)
            .map_err(|e| Box::new(ClientResponse::Error(e)))?;
        match self.decide(peer, Permission::Decrypt, Some(&name), context) {
            Decision::Allow => Ok((ct, name, false)),
            Decision::NeedsApproval { .. } => Ok((ct, name, true)),
            Decision::Deny(reason) => {
                Err(Box::new(self.denied(peer, operation, Some(&name), reason)))
            }
        }
    }

    /// Server-side decrypt with authorization and, for break-glass keys,
    /// approval: without an approval id it asks for one; with one it uses it.
    pub(super) async fn decrypt_authorized(
        &self,
        peer: &Peer,
        credential: Option<&Credential>,
        text: &str,
        context: BTreeMap<String, String>,
        approval: Option<String>,
    ) -> ClientResponse {
        let (ct, name, break_glass) = match self.authorize_unwrap(peer, "decrypt", text, &context) {
            Ok(granted) => granted,
            Err(refused) => return *refused,
        };
        if break_glass {
            if let Err(resp) = self
                .break_glass(peer, credential, &ct, &name, approval)
                .await
            {
                return resp;
            }
        }
        self.decrypt(peer, credential, &ct, name, context).await
    }

    /// Asks for approval of this decrypt, or uses the approval named.
    async fn break_glass(
        &self,
        peer: &Peer,
        credential: Option<&Credential>,
        ct: &qk_crypto::Ciphertext,
        name: &str,
        approval: Option<String>,
    ) -> Result<(), ClientResponse> {
        let ciphertext_sha256 = ciphertext_digest(ct);
        let op = match approval {
            Some(id) => Operation::ConsumeApproval {
                id,
                ciphertext_sha256,
            },
            None => Operation::RequestApproval {
                action: PendingAction::Decrypt {
                    key: name.to_string(),
                    ciphertext_sha256,
                },
            },
        };
        match self.write_as(peer, credential, op).await {
            ClientResponse::Written { response, .. } => match response.result {
                Ok(Applied::ApprovalRequested { id, .. }) => Err(self.approval_pending(&id)),
                Ok(_) => Ok(()),
                Err(e) => Err(ClientResponse::Denied(e.to_string())),
            },
            other => Err(other),
        }
    }

    pub(super) async fn partial_authorized(
        &self,
        peer: &Peer,
        text: &str,
        context: BTreeMap<String, String>,
    ) -> ClientResponse {
        match self.authorize_unwrap(peer, "partial", text, &context) {
            Ok((ct, name, false)) => self.partial(peer, &ct, name, context).await,
            Ok((_, name, true)) => self.denied(
                peer,
                "partial",
                Some(&name),
                format!("key {name:?} is break-glass: each decrypt is approved and runs server-side (`qk decrypt --server-side --approval ID`)"),
            ),
            Err(refused) => *refused,
        }
    }

    /// Decrypts with the quorum and wraps again under the newest version
    /// of `to_key` (default: the same key); the plaintext stays here.
    pub(super) async fn rewrap(
        &self,
        peer: &Peer,
        credential: Option<&Credential>,
        text: &str,
        context: BTreeMap<String, String>,
        to_key: Option<String>,
    ) -> ClientResponse {
        let (ct, name) = match self.authorize_unwrap(peer, "rewrap", text, &context) {
            Ok((ct, name, false)) => (ct, name),
            Ok((_, name, true)) => {
                let reason = "the key is break-glass: decrypt with an approval, then encrypt";
                return self.denied(peer, "rewrap", Some(&name), reason.into());
            }
            Err(refused) => return *refused,
        };
        let target = to_key.unwrap_or_else(|| name.clone());
        let plain = match self
            .decrypt(peer, credential, &ct, name, context.clone())
            .await
        {
            ClientResponse::Plaintext(p) => p,
            other => return other,
        };
        self.encrypt_as(peer, "rewrap", &target, &context, &plain.0)
    }

    /// The caller's signature over this decrypt, made with the credential it
    /// handed to this node (which must be its own).
    fn prove(
        &self,
        principal: &str,
        credential: Option<&Credential>,
        ciphertext: &[u8],
        context: &BTreeMap<String, String>,
    ) -> std::result::Result<qk_state::proof::IntentProof, String> {
        use qk_state::proof::{ProofError, Signer};
        let credential =
            credential.ok_or_else(|| ProofError::Missing(principal.to_string()).to_string())?;
        let signer = match &credential.signer {
            Signer::Token { id } => self
                .state
                .read(|a| a.machine().token(id).map(|t| t.principal.clone()))
                .ok()
                .flatten()
                .unwrap_or_default(),
            Signer::Session(grant) => grant.principal.clone(),
        };
        qk_state::proof::check_signer(signer, principal).map_err(|e| e.to_string())?;
        let intent = qk_state::proof::Intent {
            principal,
            ciphertext,
            context,
        };
        credential
            .prove(&intent, self.id, now_ms())
            .map_err(|e| e.to_string())
    }

    /// Decodes a `qk:v1:` ciphertext and names the key it was made under.
    pub(super) fn resolve_ciphertext(
        &self,
        text: &str,
    ) -> std::result::Result<(qk_crypto::Ciphertext, String), RequestError> {
        let ct = qk_crypto::Ciphertext::from_text(text)
            .map_err(|e| RequestError::invalid(format!("ciphertext does not decode: {e}")))?;
        let name = self.key_name_for(&ct).ok_or_else(|| {
            RequestError::not_found(format!("no key with id {} in this cluster", ct.key_id))
        })?;
        Ok((ct, name))
    }

    fn key_name_for(&self, ct: &qk_crypto::Ciphertext) -> Option<String> {
        self.state
            .read(|a| a.machine().key_by_id(ct.key_id).map(|k| k.name.clone()))
            .ok()
            .flatten()
    }

    /// The quorum unwrap of a ciphertext already resolved to key `name`
    /// and authorized ([`Node::authorize_unwrap`]).
    async fn decrypt(
        &self,
        peer: &Peer,
        credential: Option<&Credential>,
        ct: &qk_crypto::Ciphertext,
        name: String,
        context: BTreeMap<String, String>,
    ) -> ClientResponse {
        let principal = requests::principal_name(peer);
        let ciphertext = ct.to_bytes();
        let proof = match self.prove(&principal, credential, &ciphertext, &context) {
            Ok(proof) => proof,
            Err(e) => return self.denied(peer, "decrypt", Some(&name), e),
        };
        let (outcome, faulty) = self
            .quorum
            .unwrap(name.clone(), ciphertext, context, principal, proof)
            .await;
        let blame = if faulty.is_empty() {
            String::new()
        } else {
            let names: Vec<String> = faulty.iter().map(|n| n.to_string()).collect();
            format!("; invalid partials from {}", names.join(", "))
        };
        let (resp, outcome) = match outcome {
            Ok(plain) => (ClientResponse::Plaintext(plain), format!("ok{blame}")),
            Err(e) => (
                ClientResponse::Error(RequestError::new(
                    e.kind(),
                    format!("decryption failed: {e}"),
                )),
                format!("refused: {e}{blame}"),
            ),
        };
        self.audit.record(
            &requests::principal_name(peer),
            "decrypt",
            Some(&name),
            Some(ct.version),
            outcome,
        );
        resp
    }

    /// This holder's partial of a ciphertext already resolved and
    /// authorized, for client-side combining.
    async fn partial(
        &self,
        peer: &Peer,
        ct: &qk_crypto::Ciphertext,
        name: String,
        context: BTreeMap<String, String>,
    ) -> ClientResponse {
        let request = qk_protocol::PartialRequest {
            op_id: 0,
            key: ct.key_id,
            name,
            version: ct.version,
            ciphertext: ct.to_bytes(),
            context,
            principal: requests::principal_name(peer),
            epoch: None,
            min_applied: self.applied.get(),
            // This node authenticated the caller itself (client-side combining).
            proof: None,
        };
        match self.quorum.recorded_partial(None, &request).await {
            Ok(bytes) => ClientResponse::Partial(bytes),
            Err(e) => {
                ClientResponse::Error(e.context(&format!("node {} refused a partial", self.id)))
            }
        }
    }
}
