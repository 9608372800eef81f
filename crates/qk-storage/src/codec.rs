//! Strict, size-bounded postcard encoding of everything the store writes.
//!
//! "Strict" means a value must span the whole stored byte string: trailing
//! bytes are corruption, not slack. The size bound is checked before parsing,
//! so a damaged length never drives an allocation.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::StoreError;

/// Largest encoded log entry the store writes or reads. Commands carry key
/// metadata (names, tags up to 4 KiB, public key sets up to 4 KiB); 16 MiB is
/// thousands of times that and still far below what a node could not hold in
/// memory.
pub const MAX_LOG_ENTRY_BYTES: usize = 16 * 1024 * 1024;

/// Largest encoded Raft metadata record (vote, log id, snapshot metadata with
/// the membership's node addresses).
pub const MAX_META_BYTES: usize = 1024 * 1024;

/// Largest snapshot (encoded state machine + applied log id + membership) the
/// store writes, reads or accepts from a leader. The state keeps at most
/// 100 000 remembered requests plus keys and the audit chain; 1 GiB leaves
/// room for years of audit records and still fits in memory on a custody node.
pub const MAX_SNAPSHOT_BYTES: usize = 1024 * 1024 * 1024;

pub(crate) fn encode<T: Serialize>(
    what: &'static str,
    value: &T,
    max: usize,
) -> Result<Vec<u8>, StoreError> {
    let bytes = postcard::to_allocvec(value).map_err(|e| StoreError::Encode {
        what,
        detail: e.to_string(),
    })?;
    if bytes.len() > max {
        return Err(StoreError::TooLarge {
            what: what.to_string(),
            len: bytes.len(),
            max,
        });
    }
    Ok(bytes)
}

/// Decodes `bytes` as exactly one `T`; the error is a description for
/// [`StoreError::Corrupt`].
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, String> {
    if bytes.len() > max {
        return Err(format!("{} bytes, over the limit of {max}", bytes.len()));
    }
    let (value, rest) = postcard::take_from_bytes::<T>(bytes).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!(
            "{} unexpected trailing bytes after the encoded value",
            rest.len()
        ));
    }
    Ok(value)
}

/// Log keys: big-endian so sled's byte order is index order.
pub(crate) fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

pub(crate) fn key_index(key: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| {
        StoreError::corrupt(
            "log key",
            format!("expected 8 bytes (a big-endian index), found {}", key.len()),
        )
    })?;
    Ok(u64::from_be_bytes(bytes))
}
