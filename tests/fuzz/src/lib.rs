//! Round-trip properties of the qk-crypto decoders, one function per fuzz
//! target (`fuzz_targets/*.rs` only call these).
//!
//! Each function: decoding arbitrary input must not panic; when it succeeds,
//! encoding the value again must give back exactly the input bytes (one
//! canonical encoding per value), and decoding that encoding must give the
//! same value.

use qk_crypto::{
    Ciphertext, Complaint, Deal, DkgPublicKey, KeyShare, PartialDecryption, PublicKeySet,
    PublicMessage,
};

#[cfg(test)]
mod seeds;

/// `Ciphertext::from_bytes`, plus the text form of whatever decodes.
pub fn ciphertext_from_bytes(data: &[u8]) {
    let Ok(ct) = Ciphertext::from_bytes(data) else {
        return;
    };
    assert_eq!(
        ct.to_bytes(),
        data,
        "Ciphertext: decode then encode changed the bytes"
    );
    let text = ct.to_text();
    assert_eq!(
        Ciphertext::from_text(&text).as_ref(),
        Ok(&ct),
        "Ciphertext: its own text form does not decode to the same value"
    );
}

/// `Ciphertext::from_text` on the input read as UTF-8 (lossy).
pub fn ciphertext_from_text(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(ct) = Ciphertext::from_text(&text) else {
        return;
    };
    assert_eq!(
        ct.to_text(),
        text,
        "Ciphertext: decode then encode changed the text"
    );
    assert_eq!(
        Ciphertext::from_bytes(&ct.to_bytes()).as_ref(),
        Ok(&ct),
        "Ciphertext: its own binary form does not decode to the same value"
    );
}

/// `PartialDecryption::from_bytes`.
pub fn partial_from_bytes(data: &[u8]) {
    let Ok(p) = PartialDecryption::from_bytes(data) else {
        return;
    };
    assert_eq!(
        p.to_bytes(),
        data,
        "PartialDecryption: decode then encode changed the bytes"
    );
    assert_eq!(
        PartialDecryption::from_bytes(&p.to_bytes()).as_ref(),
        Ok(&p)
    );
}

/// `PublicKeySet::from_bytes` (which also runs `PublicKeySet::new`).
pub fn public_key_set_from_bytes(data: &[u8]) {
    let Ok(keys) = PublicKeySet::from_bytes(data) else {
        return;
    };
    assert_eq!(
        keys.to_bytes(),
        data,
        "PublicKeySet: decode then encode changed the bytes"
    );
    assert_eq!(
        PublicKeySet::from_bytes(&keys.to_bytes()).as_ref(),
        Ok(&keys)
    );
    assert_eq!(keys.commitments().len(), usize::from(keys.threshold()));
    for i in keys.holders() {
        assert!(
            keys.holder_key(*i).is_ok(),
            "PublicKeySet: listed holder {i} has no key"
        );
    }
}

/// `PublicMessage::from_bytes`, which dispatches to the `Deal` and
/// `Complaint` decoders; the dispatcher and the typed decoders must agree on
/// every input.
pub fn public_message_from_bytes(data: &[u8]) {
    let deal = Deal::from_bytes(data).ok();
    let complaint = Complaint::from_bytes(data).ok();
    let Ok(msg) = PublicMessage::from_bytes(data) else {
        assert!(
            deal.is_none() && complaint.is_none(),
            "PublicMessage refused bytes that a typed decoder accepts"
        );
        return;
    };
    assert_eq!(
        msg.to_bytes(),
        data,
        "PublicMessage: decode then encode changed the bytes"
    );
    assert_eq!(
        PublicMessage::from_bytes(&msg.to_bytes()).as_ref(),
        Ok(&msg)
    );
    match &msg {
        PublicMessage::Deal(d) => {
            assert_eq!(deal.as_ref(), Some(d));
            assert_eq!(d.to_bytes(), data);
        }
        PublicMessage::Complaint(c) => {
            assert_eq!(complaint.as_ref(), Some(c));
            assert_eq!(c.to_bytes(), data);
        }
    }
}

/// `DkgPublicKey::from_bytes`.
pub fn dkg_public_key_from_bytes(data: &[u8]) {
    let Ok(key) = DkgPublicKey::from_bytes(data) else {
        return;
    };
    assert_eq!(
        key.to_bytes().as_slice(),
        data,
        "DkgPublicKey: decode then encode changed the bytes"
    );
    assert_eq!(DkgPublicKey::from_bytes(&key.to_bytes()).as_ref(), Ok(&key));
}

/// `KeyShare::from_secret_bytes`.
pub fn key_share_from_bytes(data: &[u8]) {
    let Ok(share) = KeyShare::from_secret_bytes(data) else {
        return;
    };
    assert_eq!(
        share.to_secret_bytes().as_slice(),
        data,
        "KeyShare: decode then encode changed the bytes"
    );
}
