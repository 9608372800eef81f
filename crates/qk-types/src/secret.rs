use std::fmt;

use serde::{Deserialize, Serialize};

/// Secret bytes (a plaintext, a data key): zeroized on drop and never
/// printed by `Debug`. The one wrapper for secret bytes that cross a crate
/// boundary; keys and shares have their own types in `qk-crypto`.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redacted(pub Vec<u8>);

impl Redacted {
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl From<zeroize::Zeroizing<Vec<u8>>> for Redacted {
    fn from(mut bytes: zeroize::Zeroizing<Vec<u8>>) -> Self {
        Redacted(std::mem::take(&mut *bytes))
    }
}

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted {} bytes>", self.0.len())
    }
}

impl Drop for Redacted {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_the_length_only() {
        let secret = Redacted(b"secret".to_vec());
        assert_eq!(format!("{secret:?}"), "<redacted 6 bytes>");
        assert_eq!(secret.expose(), b"secret");
    }

    #[test]
    fn from_zeroizing_keeps_the_bytes() {
        let secret = Redacted::from(zeroize::Zeroizing::new(b"k".to_vec()));
        assert_eq!(secret.expose(), b"k");
    }
}
