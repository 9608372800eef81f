//! The oracle's state: what the checker knows independently of any node.
//! The rules it judges the nodes by are in `checks.rs`.

use super::*;

/// What the checker knows independently of any node: the agreed log's
/// hashes, the state after every agreed entry, every root and proof it
/// judges the nodes' messages against, and the first violation.
pub(crate) struct Oracle {
    /// Hash of each log entry (index 0 first), as the first node applied it.
    pub(crate) canon: Vec<[u8; 32]>,
    /// The node whose apply extended `canon` last (its commands feed `truth`).
    pub(crate) extender: Option<NodeId>,
    /// The state after every applied entry of the agreed log.
    pub(crate) truth: StateMachine,
    pub(crate) roots: BTreeMap<ShareKey, [u8; 32]>,
    /// The roots' bytes, for searching messages and disks.
    pub(crate) root_set: BTreeSet<[u8; 32]>,
    pub(crate) decoys: BTreeMap<(KeyId, KeyVersion), Vec<u8>>,
    /// Each unwrap's ciphertext and the caller's context, by (combining
    /// node, op): the checker verifies `π` for every partial returned.
    pub(crate) unwrap_requests: BTreeMap<(NodeId, OpId), (Vec<u8>, EncryptionContext)>,
    /// `A_0` of every generation deal in the agreed log, by version.
    pub(crate) deals: BTreeMap<(String, KeyVersion), Vec<(NodeId, ProjectivePoint)>>,
    /// The checker's own tally of the generation acks the agreed log
    /// accepted: the key set each holder acked, by version.
    pub(crate) acks: BTreeMap<(String, KeyVersion), BTreeMap<NodeId, Vec<u8>>>,
    /// Every unwrap a client signed ([`intent_digest`]): an honest holder
    /// releases a partial for no other request.
    pub(crate) signed_intents: BTreeSet<[u8; 32]>,
    pub(crate) violation: Option<String>,
}
