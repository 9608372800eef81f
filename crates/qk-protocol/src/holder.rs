//! A holder's rules, the same code in the node and in the simulator: which
//! proof lets another node have a partial, which policy a partial obeys, and
//! what becomes of a stored share when the node starts.

use qk_crypto::{KeyShare, PublicKeySet};
use qk_state::authn::GrantCheck;
use qk_state::proof::{check_signer, Intent, ProofError, Signer};
use qk_state::{
    ApprovalStatus, Decision, KeyVersionRecord, Operation, PendingAction, Permission, StateMachine,
    VersionState,
};
use qk_types::{Epoch, KeyId, KeyVersion, NodeId, RequestError, ShareIndex};
use sha2::{Digest, Sha256};

use crate::message::PartialRequest;

/// Checks that the principal a partial request names signed exactly this
/// ciphertext and context, for node `from` (the node that sent the request)
/// to combine, recently by this holder's clock. `token` resolves a token
/// signer (`StateMachine::token_signer`); `grants` checks a session grant against
/// the cluster's CA. A node's word about who asked is never enough.
pub fn check_intent_proof(
    from: NodeId,
    request: &PartialRequest,
    now_ms: u64,
    grants: &dyn GrantCheck,
    token: impl FnOnce(&str) -> Result<(String, [u8; 32]), ProofError>,
) -> Result<(), ProofError> {
    let principal = &request.principal;
    let proof = request
        .proof
        .as_ref()
        .ok_or_else(|| ProofError::Missing(principal.clone()))?;
    let (signer, key) = match &proof.signer {
        Signer::Token { id } => token(id)?,
        Signer::Session(grant) => {
            grants.check_grant(grant, now_ms)?;
            (grant.principal.clone(), grant.session_key)
        }
    };
    check_signer(signer, principal)?;
    let intent = Intent {
        principal,
        ciphertext: &request.ciphertext,
        context: &request.context,
    };
    proof.verify(&key, &intent, from.0, now_ms)
}

/// The holder's own policy check before it computes a partial: the
/// requester may decrypt with this key and context, and for a break-glass
/// key holds an unexpired approval for exactly this ciphertext. A refusal
/// is `denied`, its message the reason.
pub fn authorize_partial(
    state: &StateMachine,
    request: &PartialRequest,
    now_ms: u64,
) -> Result<(), RequestError> {
    let decision = state.authorize(
        &request.principal,
        Permission::Decrypt,
        Some(&request.name),
        &request.context,
    );
    match decision {
        Decision::Allow => Ok(()),
        Decision::Deny(reason) => Err(RequestError::denied(reason)),
        Decision::NeedsApproval { .. } => {
            let digest: [u8; 32] = Sha256::digest(&request.ciphertext).into();
            let approved = state.approvals().any(|a| {
                a.requester == request.principal
                    && matches!(
                        a.status,
                        ApprovalStatus::Approved | ApprovalStatus::Consumed
                    )
                    && a.expires_at_ms > now_ms
                    && matches!(&a.action, PendingAction::Decrypt { key, ciphertext_sha256 }
                        if *key == request.name && *ciphertext_sha256 == digest)
            });
            if approved {
                Ok(())
            } else {
                Err(RequestError::denied(
                    "the key is break-glass and this decrypt has no approval",
                ))
            }
        }
    }
}

/// Holder `node` of a version has Shamir index `k + 1`, `k` its position
/// in the holder list sorted by node id.
pub fn share_index_of(record: &KeyVersionRecord, node: NodeId) -> Option<ShareIndex> {
    ShareIndex::of_holder(&record.holders, node)
}

/// What a node does with a share it finds in its store at start.
#[derive(Debug, PartialEq, Eq)]
pub enum StoredShare {
    /// Serve it (or keep it for a refresh still under way).
    Keep,
    /// Erase it: its version was destroyed or failed, or a completed
    /// refresh replaced its epoch. `receipt` is this node's erase receipt to propose, when
    /// the version waits for it.
    Erase { receipt: Option<Operation> },
    /// Never serve it: it does not match the replicated commitments.
    Refuse(String),
}

/// The fate of this node's share of `key` `version` at `epoch`, judged on
/// the replicated state. `load` reads the share; it is called only when
/// the share has to be checked against the version's commitments.
pub fn stored_share<E: std::fmt::Display>(
    state: &StateMachine,
    me: NodeId,
    (key, version, epoch): (KeyId, KeyVersion, Epoch),
    load: impl FnOnce() -> Result<Option<KeyShare>, E>,
) -> StoredShare {
    let Some(record) = state.key_by_id(key) else {
        return StoredShare::Keep;
    };
    let Some(v) = record.version(version) else {
        return StoredShare::Keep;
    };
    if matches!(
        v.state,
        VersionState::Destroying | VersionState::Destroyed | VersionState::Failed { .. }
    ) {
        let receipt = (v.state == VersionState::Destroying && !v.erase_receipts.contains(&me))
            .then(|| Operation::EraseReceipt {
                name: record.name.clone(),
                version,
                node: me,
            });
        return StoredShare::Erase { receipt };
    }
    // An earlier epoch was replaced by a refresh every holder acked. A later
    // one belongs to a refresh, and is kept: after a restart the applied
    // state may not show that refresh yet (or its completion), so it cannot
    // tell a refresh that ended from one it has not seen. A leftover of an
    // abandoned attempt is overwritten by the next attempt, which deals the
    // same epoch, and erased with its version.
    if epoch < v.epoch {
        return StoredShare::Erase { receipt: None };
    }
    let (Some(bytes), true) = (&v.public_keys, epoch == v.epoch) else {
        return StoredShare::Keep;
    };
    let what = format!(
        "key {:?} version {} epoch {}",
        record.name, version.0, epoch.0
    );
    let keys = match PublicKeySet::from_bytes(bytes) {
        Ok(k) => k,
        Err(e) => {
            return StoredShare::Refuse(format!("{what}: replicated key set unreadable: {e}"))
        }
    };
    let mine = share_index_of(v, me);
    match load() {
        Ok(Some(share)) if Some(share.index()) != mine => StoredShare::Refuse(format!(
            "the stored share of {what} has index {}, not this node's; restore this node's own share store or reshare the key",
            share.index().get()
        )),
        Ok(Some(share)) => match keys.verify_share(&share) {
            Ok(()) => StoredShare::Keep,
            Err(_) => StoredShare::Refuse(format!(
                "share of {what} does not match the replicated commitments; restore the node's share store or reshare the key"
            )),
        },
        Ok(None) => StoredShare::Keep,
        Err(e) => StoredShare::Refuse(format!("share of {what}: {e}")),
    }
}
