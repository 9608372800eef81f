//! The audit trail as a holder and an abusive client see it: every partial a
//! holder releases (server-side or client-side) leaves its own record, and
//! over-long names in refused requests are cut, never dropping other
//! callers' records from the same batch.

use std::path::Path;

use qk_state::{AuditRecord, VersionState};
use qk_testkit::cluster::*;
use qk_types::{ErrorKind, KeyVersion};
use qk_wire::{ClientRequest, ClientResponse};

const BIN: &str = env!("CARGO_BIN_EXE_qk-node");
const CTX: &[(&str, &str)] = &[("tenant", "acme")];

/// Polls node 1's audit trail until `pred` holds for it.
fn wait_records(
    c: &Cluster,
    what: &str,
    pred: impl Fn(&[AuditRecord]) -> bool,
) -> Vec<AuditRecord> {
    wait_records_at(c, 1, what, pred)
}

/// Polls node `via`'s audit trail until `pred` holds for it.
fn wait_records_at(
    c: &Cluster,
    via: u64,
    what: &str,
    pred: impl Fn(&[AuditRecord]) -> bool,
) -> Vec<AuditRecord> {
    let h = tokio::runtime::Handle::current();
    wait_until(what, || {
        let req = ClientRequest::Audit {
            from_seq: 1,
            limit: 10_000,
        };
        let answer = tokio::task::block_in_place(|| h.block_on(c.request(via, req)));
        match answer {
            Ok(ClientResponse::Audit(records)) if pred(&records) => Some(records),
            _ => None,
        }
    })
}

/// Holders (by their `holder node-N` text) with an `ok` partial record by
/// `admin` asked by `via`.
fn holders_recorded(records: &[AuditRecord], via: &str) -> Vec<String> {
    let mut holders: Vec<String> = records
        .iter()
        .filter(|r| r.operation == "partial" && r.principal == "admin")
        .filter(|r| r.outcome.starts_with("ok;") && r.outcome.contains(via))
        .filter_map(|r| r.outcome.split("holder ").nth(1))
        .filter_map(|rest| rest.split(',').next().map(str::to_string))
        .collect();
    holders.sort();
    holders.dedup();
    holders
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_partial_is_recorded_and_long_names_never_drop_records() {
    let c = Cluster::start(Path::new(BIN), 3, 100_000);
    c.create(1, "k", 2, &[1, 2, 3]).await.expect("create");
    c.wait_key(1, "k", |k| {
        k.version(KeyVersion(1))
            .is_some_and(|v| v.state == VersionState::Enabled)
    });
    let (ct, _) = c.encrypt(1, "k", CTX, b"secret").await.expect("encrypt");

    // An abusive caller floods requests naming a 200-byte key while an
    // honest server-side and client-side decrypt run.
    let long_name = "x".repeat(200);
    for _ in 0..30 {
        let flood = ClientRequest::Encrypt {
            name: long_name.clone(),
            context: ctx(CTX),
            plaintext: qk_wire::Redacted(b"p".to_vec()),
        };
        let answer = c.request(1, flood).await.expect("answered");
        assert!(!matches!(answer, ClientResponse::Ciphertext { .. }));
    }
    assert_eq!(c.decrypt(1, &ct, CTX).await.expect("decrypt"), b"secret");
    let plain = c
        .decrypt_client_side("k", &ct, CTX)
        .await
        .expect("client-side");
    assert_eq!(plain, b"secret");

    let records = wait_records(&c, "a partial record from two holders each way", |r| {
        holders_recorded(r, "asked by node-1").len() >= 2
            && holders_recorded(r, "asked by the client itself").len() >= 2
    });
    let decrypt = records
        .iter()
        .find(|r| r.operation == "decrypt" && r.principal == "admin");
    assert!(
        decrypt.is_some_and(|r| r.outcome.starts_with("ok")),
        "{decrypt:?}"
    );
    let partial = records
        .iter()
        .find(|r| r.operation == "partial" && r.outcome.starts_with("ok;"))
        .expect("a partial record");
    assert!(
        partial.outcome.contains("ciphertext sha256 "),
        "{partial:?}"
    );
    assert!(partial.outcome.contains("context sha256 "), "{partial:?}");
    let floods: Vec<&AuditRecord> = records
        .iter()
        .filter(|r| r.key.as_deref() == Some(&long_name[..128]))
        .collect();
    assert_eq!(
        floods.len(),
        30,
        "every flood request recorded, its name cut"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_withheld_for_want_of_a_durable_record_is_recorded_as_withheld() {
    let mut c = Cluster::start(Path::new(BIN), 3, 100_000);
    c.create(1, "k", 2, &[1, 2, 3]).await.expect("create");
    c.wait_key(1, "k", |k| {
        k.version(KeyVersion(1))
            .is_some_and(|v| v.state == VersionState::Enabled)
    });
    let (ct, _) = c.encrypt(1, "k", CTX, b"secret").await.expect("encrypt");
    let leader = c
        .wait_status(1, |s| s.leader.is_some())
        .leader
        .expect("leader");
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    for id in &followers {
        c.stop(*id);
    }
    // The leader alone cannot commit its record of the partial: no partial.
    let asked = ClientRequest::Partial {
        ciphertext: ct.clone(),
        context: ctx(CTX),
        approval: None,
    };
    let answer = c.request(leader, asked).await;
    assert!(
        matches!(&answer, Ok(ClientResponse::Error(e))
            if e.kind == ErrorKind::Unavailable && e.message.contains("not committed within 5 s")),
        "{answer:?}"
    );
    for id in &followers {
        c.restart(*id);
    }
    // Whatever the "ok" record became, the trail says the partial stayed.
    let holder = format!("holder node-{leader}, asked by the client itself");
    let records = wait_records_at(&c, leader, "the withheld record", |r| {
        r.iter()
            .any(|r| r.outcome.starts_with("withheld:") && r.outcome.contains(&holder))
    });
    let ok_then_withheld = records
        .iter()
        .filter(|r| r.operation == "partial" && r.outcome.contains(&holder))
        .map(|r| r.outcome.split(';').next().unwrap_or_default())
        .collect::<Vec<_>>();
    assert!(
        ok_then_withheld
            .last()
            .is_some_and(|o| o.starts_with("withheld")),
        "{ok_then_withheld:?}"
    );
}
