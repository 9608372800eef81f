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
pub mod ecies;
pub mod keyset;
mod proof;

pub use ecies::{
    combine, partial_decrypt, verify_partial, wrap, Ciphertext, CombineMode, Combined,
    EncryptionContext, Label, PartialDecryption,
};
pub use keyset::PublicKeySet;
pub use proof::{DleqProof, SchnorrProof};
pub mod messages;
pub mod session;

pub use messages::{Complaint, Deal, PublicMessage, SessionId};
pub mod share_box;
pub use session::{Participant, SessionConfig, SessionKind, SessionOutput};
pub use share_box::{DkgPublicKey, DkgSecretKey, SealedShare, ShareReveal};
#[cfg(feature = "testing")]
pub mod testing;
