//! Point-to-point protocol messages between nodes, with a strict bounded
//! encoding: postcard, a size check before parsing, no trailing bytes, and
//! field bounds checked after parsing.

use std::collections::BTreeMap;

use qk_crypto::ecies::{MAX_CIPHERTEXT_LEN, MAX_PARTIAL_LEN};
use qk_types::{Epoch, KeyId, KeyVersion};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Identifies one unwrap at the node that started it; a holder echoes it.
pub type OpId = u64;

/// Longest principal name a request may carry.
pub const MAX_PRINCIPAL_LEN: usize = 256;
/// Longest key name (the state machine's limit).
pub const MAX_KEY_NAME_LEN: usize = 128;
/// Longest refusal reason a holder may send back.
pub const MAX_REASON_LEN: usize = 1024;
/// Encryption-context bounds (the ones `qk_crypto` enforces for the label).
pub const MAX_CONTEXT_ENTRIES: usize = 64;
pub const MAX_CONTEXT_KEY_LEN: usize = 256;
pub const MAX_CONTEXT_VALUE_LEN: usize = 1024;
/// Largest encoded message: a partial request with the largest ciphertext,
/// the largest context (with postcard length prefixes), a principal and a
/// key name, the principal's proof, plus slack for the enum tag and integers.
pub const MAX_MESSAGE_LEN: usize = MAX_CIPHERTEXT_LEN
    + MAX_CONTEXT_ENTRIES * (MAX_CONTEXT_KEY_LEN + MAX_CONTEXT_VALUE_LEN + 6)
    + MAX_PRINCIPAL_LEN
    + MAX_KEY_NAME_LEN
    + qk_state::proof::MAX_PROOF_LEN
    + 128;

/// A request for one holder's partial decryption.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialRequest {
    pub op_id: OpId,
    pub key: KeyId,
    pub name: String,
    pub version: KeyVersion,
    /// The encoded `qk_crypto::Ciphertext`.
    pub ciphertext: Vec<u8>,
    pub context: BTreeMap<String, String>,
    /// The authenticated caller, as the requesting node established it.
    pub principal: String,
    /// The share epoch whose key set the requester verifies partials
    /// against. A holder at another epoch refuses rather than answer with a
    /// partial that would look forged (a refresh completed meanwhile).
    /// `None` (client-side combining): the holder's current epoch.
    pub epoch: Option<Epoch>,
    /// The holder decides only once it has applied at least this log index
    /// (the requester's own applied index): a change the requester has seen,
    /// a revocation above all, is never decided on older state.
    pub min_applied: u64,
    /// The principal's own signature over this ciphertext and context
    /// (`qk_state::proof`). A holder asked by another node releases a
    /// partial only when it verifies: the requesting node's word about who
    /// asked is never enough. `None` only where the holder authenticated
    /// the caller itself (client-side combining).
    pub proof: Option<Box<qk_state::proof::IntentProof>>,
}

/// Everything nodes send each other outside the Raft log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProtocolMessage {
    PartialRequest(PartialRequest),
    PartialResponse {
        op_id: OpId,
        /// An encoded `qk_crypto::PartialDecryption`, or the refusal reason.
        result: Result<Vec<u8>, String>,
    },
}

/// Why bytes are not a valid [`ProtocolMessage`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    #[error("protocol message is {len} bytes, over the {max} byte limit; the peer is faulty or not a Quorumkey node")]
    TooLarge { len: usize, max: usize },
    #[error("protocol message does not decode ({0}); the peer runs an incompatible version or is faulty")]
    Malformed(String),
    #[error("protocol message has {0} trailing bytes; the peer is faulty")]
    TrailingBytes(usize),
    #[error("protocol message field out of bounds: {0}")]
    OutOfBounds(String),
}

impl ProtocolMessage {
    /// Encodes the message, in a zeroizing buffer (a partial decryption is
    /// one of the `t` pieces of a plaintext).
    pub fn encode(&self) -> Result<Zeroizing<Vec<u8>>, MessageError> {
        self.check_bounds()?;
        let bytes =
            postcard::to_allocvec(self).map_err(|e| MessageError::Malformed(e.to_string()))?;
        Ok(Zeroizing::new(bytes))
    }

    /// Decodes strictly: size bound first, then the parse, then no trailing
    /// bytes, then every field's bound.
    pub fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(MessageError::TooLarge {
                len: bytes.len(),
                max: MAX_MESSAGE_LEN,
            });
        }
        let (msg, rest): (ProtocolMessage, &[u8]) =
            postcard::take_from_bytes(bytes).map_err(|e| MessageError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(MessageError::TrailingBytes(rest.len()));
        }
        msg.check_bounds()?;
        Ok(msg)
    }

    fn check_bounds(&self) -> Result<(), MessageError> {
        let out = |what: String| Err(MessageError::OutOfBounds(what));
        match self {
            ProtocolMessage::PartialRequest(r) => r.check_bounds(),
            ProtocolMessage::PartialResponse { result, .. } => match result {
                Ok(p) if p.len() > MAX_PARTIAL_LEN => {
                    out(format!("partial decryption over {MAX_PARTIAL_LEN} bytes"))
                }
                Err(reason) if reason.len() > MAX_REASON_LEN => {
                    out(format!("refusal reason over {MAX_REASON_LEN} bytes"))
                }
                _ => Ok(()),
            },
        }
    }
}

impl PartialRequest {
    pub(crate) fn check_bounds(&self) -> Result<(), MessageError> {
        let out = |what: String| Err(MessageError::OutOfBounds(what));
        if self.ciphertext.len() > MAX_CIPHERTEXT_LEN {
            return out(format!("ciphertext over {MAX_CIPHERTEXT_LEN} bytes"));
        }
        if self.name.len() > MAX_KEY_NAME_LEN {
            return out(format!("key name over {MAX_KEY_NAME_LEN} bytes"));
        }
        if self.principal.len() > MAX_PRINCIPAL_LEN {
            return out(format!("principal over {MAX_PRINCIPAL_LEN} bytes"));
        }
        if self.context.len() > MAX_CONTEXT_ENTRIES {
            return out(format!(
                "encryption context over {MAX_CONTEXT_ENTRIES} entries"
            ));
        }
        if self
            .context
            .iter()
            .any(|(k, v)| k.len() > MAX_CONTEXT_KEY_LEN || v.len() > MAX_CONTEXT_VALUE_LEN)
        {
            return out(format!(
                "encryption context entry over {MAX_CONTEXT_KEY_LEN}-byte key or {MAX_CONTEXT_VALUE_LEN}-byte value"
            ));
        }
        if let Some(proof) = &self.proof {
            proof
                .check_bounds()
                .map_err(|e| MessageError::OutOfBounds(e.to_string()))?;
        }
        Ok(())
    }
}

/// Cuts a reason to [`MAX_REASON_LEN`] bytes on a character boundary.
pub(crate) fn bounded_reason(mut reason: String) -> String {
    if reason.len() > MAX_REASON_LEN {
        let mut end = MAX_REASON_LEN;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_is_cut_to_the_limit_on_a_character_boundary() {
        assert_eq!(bounded_reason("short".into()), "short");
        let exact = "r".repeat(MAX_REASON_LEN);
        assert_eq!(bounded_reason(exact.clone()), exact);
        assert_eq!(bounded_reason("r".repeat(MAX_REASON_LEN + 5)), exact);
        // A two-byte character straddling the limit goes whole.
        let straddling = format!("{}é", "r".repeat(MAX_REASON_LEN - 1));
        assert_eq!(bounded_reason(straddling), "r".repeat(MAX_REASON_LEN - 1));
    }
}
