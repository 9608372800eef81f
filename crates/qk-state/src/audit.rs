//! Hash-chained audit records: each record's hash covers the previous hash, so
//! editing, dropping or reordering a record breaks every later link.

use qk_types::KeyVersion;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::command::RequestId;

/// The `prev_hash` of the first record.
pub const GENESIS_HASH: [u8; 32] = [0u8; 32];

/// Largest encoded checkpoint part accepted (a node certificate, a signature).
pub const MAX_CHECKPOINT_PART_LEN: usize = 4096;
const CHECKPOINT_DOMAIN: &[u8] = b"quorumkey audit checkpoint v1\0";

/// A node's signed statement that record `seq` of its audit trail has hash
/// `hash`, by its node certificate's key at `signed_ms`: an export carries
/// these so that a reader holding only the cluster CA certificate can tell
/// it matches what the nodes themselves recorded (`qk audit checkpoint`).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditCheckpoint {
    pub node: u64,
    pub seq: u64,
    pub hash: [u8; 32],
    pub signed_ms: u64,
    /// The node certificate (DER) whose key signed.
    pub cert_der: Vec<u8>,
    pub signature: Vec<u8>,
}

impl std::fmt::Debug for AuditCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditCheckpoint")
            .field("node", &self.node)
            .field("seq", &self.seq)
            .field("signed_ms", &self.signed_ms)
            .finish_non_exhaustive()
    }
}

impl AuditCheckpoint {
    /// The bytes a node's certificate key signs.
    pub fn message(node: u64, seq: u64, hash: &[u8; 32], signed_ms: u64) -> Vec<u8> {
        let mut m = CHECKPOINT_DOMAIN.to_vec();
        m.extend_from_slice(&node.to_be_bytes());
        m.extend_from_slice(&seq.to_be_bytes());
        m.extend_from_slice(hash);
        m.extend_from_slice(&signed_ms.to_be_bytes());
        m
    }

    pub fn signed_message(&self) -> Vec<u8> {
        Self::message(self.node, self.seq, &self.hash, self.signed_ms)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    pub time_ms: u64,
    pub request_id: RequestId,
    pub principal: String,
    pub operation: String,
    pub key: Option<String>,
    pub version: Option<KeyVersion>,
    /// `ok`, or `refused: <reason>`, or the outcome an `Audit` entry reports.
    pub outcome: String,
    pub prev_hash: [u8; 32],
    pub hash: [u8; 32],
}

impl AuditRecord {
    /// SHA-256 over a domain string and every field but `hash`.
    pub fn compute_hash(&self) -> [u8; 32] {
        let body = (
            self.seq,
            self.time_ms,
            &self.request_id,
            &self.principal,
            &self.operation,
            &self.key,
            &self.version,
            &self.outcome,
            &self.prev_hash,
        );
        let encoded = postcard::to_allocvec(&body).unwrap_or_default();
        let mut h = Sha256::new();
        h.update(b"qk/audit/v1");
        h.update(&encoded);
        h.finalize().into()
    }
}

/// Where a chain stops verifying.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    #[error("audit record {seq} was modified: its hash does not match its contents")]
    HashMismatch { seq: u64 },
    #[error("audit record {seq} does not link to the record before it (removed, reordered or inserted records)")]
    BrokenLink { seq: u64 },
    #[error("audit sequence jumps from {prev} to {seq}: records are missing")]
    Gap { prev: u64, seq: u64 },
}

/// Verifies `records` in order, the first linking to `prev_hash`.
pub fn verify_chain(records: &[AuditRecord], mut prev_hash: [u8; 32]) -> Result<(), ChainError> {
    let mut prev_seq: Option<u64> = None;
    for r in records {
        if let Some(p) = prev_seq {
            if r.seq != p + 1 {
                return Err(ChainError::Gap {
                    prev: p,
                    seq: r.seq,
                });
            }
        }
        if r.prev_hash != prev_hash {
            return Err(ChainError::BrokenLink { seq: r.seq });
        }
        if r.compute_hash() != r.hash {
            return Err(ChainError::HashMismatch { seq: r.seq });
        }
        prev_hash = r.hash;
        prev_seq = Some(r.seq);
    }
    Ok(())
}
