//! Client-side combining: gather partials from the holders and combine here,
//! so no node sees the plaintext.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use qk_crypto::{combine, Ciphertext, CombineMode, PartialDecryption, PublicKeySet};
use qk_raft::{ClientRequest, ClientResponse, PeerRequest, PeerResponse};
use zeroize::Zeroizing;

use crate::ctl::{call, Target};

pub async fn decrypt_client_side(
    target: &Target,
    text: &str,
    context: BTreeMap<String, String>,
) -> Result<Zeroizing<Vec<u8>>> {
    let ct = Ciphertext::from_text(text).context("the ciphertext does not decode")?;
    let ClientResponse::Status(status) = call(target, ClientRequest::Status).await? else {
        bail!("unexpected status answer");
    };
    let ClientResponse::Keys(names) = call(target, ClientRequest::ListKeys).await? else {
        bail!("unexpected key list answer");
    };
    let mut keys = None;
    for name in names {
        if let ClientResponse::Key(Some(k)) = call(target, ClientRequest::GetKey { name }).await? {
            if k.id == ct.key_id {
                keys = k.version(ct.version).and_then(|v| v.public_keys.clone());
                break;
            }
        }
    }
    let Some(keys) = keys else {
        bail!(
            "no usable version {} of key {} in this cluster",
            ct.version.0,
            ct.key_id
        );
    };
    let keys = PublicKeySet::from_bytes(&keys).context("the replicated key set does not decode")?;
    let addrs: Vec<(u64, String)> = status.addrs.clone().into_iter().collect();
    let mut partials = Vec::new();
    let mut refusals = Vec::new();
    let request = PeerRequest::Client(ClientRequest::Partial {
        ciphertext: text.to_string(),
        context: context.clone(),
    });
    let answers = futures::future::join_all(addrs.iter().map(|(id, addr)| {
        let client = target.dialer.node(*id, addr);
        let req = &request;
        async move { (*id, client.call(req).await) }
    }))
    .await;
    for (id, answer) in answers {
        match answer {
            Ok(PeerResponse::Client(ClientResponse::Partial(bytes))) => {
                match PartialDecryption::from_bytes(&bytes) {
                    Ok(p) => partials.push(p),
                    Err(e) => refusals.push(format!("node {id}: malformed partial ({e})")),
                }
            }
            Ok(PeerResponse::Client(ClientResponse::Error(e))) => refusals.push(e),
            Ok(other) => refusals.push(format!("node {id}: unexpected answer {other:?}")),
            Err(e) => refusals.push(format!("node {id}: unreachable ({e})")),
        }
    }
    match combine(&keys, &ct, &context, &partials, CombineMode::Optimistic) {
        Ok(out) => Ok(out.plaintext),
        Err(e) => bail!(
            "client-side decryption failed: {e}; holders said: {}",
            refusals.join("; ")
        ),
    }
}
