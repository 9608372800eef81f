//! Error types. Messages say what failed and what to do; none carries secret bytes.

use qk_types::ShareIndex;

/// Why bytes could not be decoded. Decoding is strict: one canonical form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("input is {len} bytes, over the {max} byte limit for a {what}; send a smaller value")]
    TooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("input ended early while reading {what}; the value is truncated or corrupt")]
    Truncated { what: &'static str },
    #[error("{count} trailing bytes after a complete {what}; the value is corrupt")]
    TrailingBytes { what: &'static str, count: usize },
    #[error("unsupported format version {found} for a {what} (this build reads version {expected}); upgrade the reader")]
    UnsupportedVersion {
        what: &'static str,
        found: u8,
        expected: u8,
    },
    #[error("wrong type tag {found} (expected {expected}) for a {what}; the bytes are not this kind of value")]
    WrongTag {
        what: &'static str,
        found: u8,
        expected: u8,
    },
    #[error("invalid curve point in {what}: not a canonical compressed secp256k1 point, or the identity")]
    InvalidPoint { what: &'static str },
    #[error("invalid scalar in {what}: not canonical (>= group order) or zero where zero is not allowed")]
    InvalidScalar { what: &'static str },
    #[error("invalid field {what}: {reason}")]
    InvalidField {
        what: &'static str,
        reason: &'static str,
    },
    #[error("text form must start with \"qk:v1:\" followed by base64url without padding")]
    InvalidText,
}

/// Errors of the threshold operations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("invalid parameters: {0}")]
    InvalidParameters(String),
    #[error("encryption context is too large: {0}; keep to at most 64 entries of 256-byte keys and 1024-byte values")]
    ContextTooLarge(&'static str),
    #[error("plaintext is {len} bytes, over the {max} byte limit; use envelope encryption with a data key")]
    PlaintextTooLarge { len: usize, max: usize },
    #[error("ciphertext proof does not verify for this key, version and encryption context; check that the context matches the one used to encrypt")]
    InvalidCiphertextProof,
    #[error("ciphertext is for key {found_key} {found_version}, not for key {expected_key} {expected_version}")]
    WrongKey {
        expected_key: String,
        expected_version: String,
        found_key: String,
        found_version: String,
    },
    #[error("not enough valid partial decryptions: {valid} valid of {needed} needed{}", blame_suffix(.invalid))]
    NotEnoughPartials {
        needed: usize,
        valid: usize,
        invalid: Vec<ShareIndex>,
    },
    #[error("partial decryption from {0} failed its proof; that holder is faulty or compromised")]
    InvalidPartial(ShareIndex),
    #[error("{0} is not a holder of this key version")]
    UnknownHolder(ShareIndex),
    #[error("decryption failed: the ciphertext was modified or the encryption context differs")]
    AeadFailure,
    #[error("protocol step out of order: {0}")]
    OutOfOrder(&'static str),
    #[error("protocol message rejected: {0}")]
    Rejected(String),
    #[error("too few qualified dealers: {qualified} qualified, at least {needed} needed; retry the session with reachable, honest holders")]
    TooFewQualified { qualified: usize, needed: usize },
    #[error("share for {0} does not match the public commitments; the share is corrupt")]
    ShareMismatch(ShareIndex),
}

fn blame_suffix(invalid: &[ShareIndex]) -> String {
    if invalid.is_empty() {
        String::new()
    } else {
        let names: Vec<String> = invalid.iter().map(|i| i.get().to_string()).collect();
        format!("; invalid proofs from holders {}", names.join(", "))
    }
}
