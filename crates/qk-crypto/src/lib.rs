//! Quorumkey threshold cryptography. Pure: no I/O, no clock; randomness comes in
//! as a `CryptoRng`. No function here takes shares and returns a root key.
#![forbid(unsafe_code)]

pub mod encoding;
pub mod error;
mod hash;
mod poly;
pub mod secret;

pub use error::{CryptoError, DecodeError};
pub use secret::{KeyShare, SecretScalar};
