//! Read-your-writes across real `qk-node` processes: a change acknowledged
//! by one node is what every other node decides by, for the client that saw
//! it (session index) and, for revocations, for everyone.

use std::path::Path;

use qk_state::{Operation, Role, VersionState};
use qk_testkit::cluster::*;
use qk_types::{ErrorKind, KeyVersion};
use qk_wire::{ClientRequest, ClientResponse, Redacted};

const BIN: &str = env!("CARGO_BIN_EXE_qk-node");
const CTX: &[(&str, &str)] = &[("tenant", "acme")];
const ROUNDS: u32 = 200;

fn bin() -> &'static Path {
    Path::new(BIN)
}

fn tag(value: u32) -> Operation {
    Operation::SetTag {
        name: "k".into(),
        tag: "round".into(),
        value: Some(value.to_string().into_bytes()),
    }
}

fn version_enabled(k: &qk_state::KeyRecord) -> bool {
    k.version(KeyVersion(1))
        .is_some_and(|v| v.state == VersionState::Enabled)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_one_node_are_read_and_enforced_by_the_others() {
    let c = Cluster::start(bin(), 3, 100_000);
    c.create(1, "k", 2, &[1, 2, 3]).await.expect("create");
    c.wait_key(1, "k", version_enabled);
    let (ct, _) = c.encrypt(1, "k", CTX, b"secret").await.expect("encrypt");
    for round in 0..ROUNDS {
        c.op(1, tag(round)).await.expect("tag");
        for via in [2, 3] {
            let key = c.key(via, "k").await.expect("key");
            assert_eq!(
                key.tags.get("round"),
                Some(&round.to_string().into_bytes()),
                "round {round}: node {via} answered from state older than the acknowledged write"
            );
            let plain = c.decrypt(via, &ct, CTX).await;
            assert_eq!(
                plain.as_deref(),
                Ok(&b"secret"[..]),
                "round {round} via {via}"
            );
        }
    }
    // A disable acknowledged through node 1 is in force on every node at once,
    // also for a client that never saw the write.
    let disable = Operation::Disable {
        name: "k".into(),
        version: KeyVersion(1),
    };
    let (_, resp) = c.write(1, disable, 7_000_001).await.expect("disable");
    resp.result.expect("disabled");
    for via in [1, 2, 3] {
        let req = ClientRequest::Decrypt {
            ciphertext: ct.clone(),
            context: ctx(CTX),
            approval: None,
        };
        match c.request_fresh(via, req).await.expect("answer") {
            ClientResponse::Error(e) => assert!(e.message.contains("disabled"), "node {via}: {e}"),
            other => panic!("node {via} decrypted with a disabled version: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_is_refused_by_every_node_once_the_revoke_is_acknowledged() {
    let c = Cluster::start(bin(), 3, 100_000);
    let app = Operation::CreatePrincipal {
        name: "app".into(),
        roles: [Role::KeyUser].into(),
    };
    c.op(1, app).await.expect("principal");
    for round in 0..20u64 {
        let issue = ClientRequest::IssueToken {
            principal: "app".into(),
            ttl_ms: 3_600_000,
            description: format!("round {round}"),
            kind: qk_wire::CredentialKind::Bearer,
        };
        let (token, id) = match c.request(1, issue).await.expect("issue") {
            ClientResponse::Token { token, record, .. } => (token, record.id),
            other => panic!("no token: {other:?}"),
        };
        for via in [1, 2, 3] {
            let auth = ClientRequest::Authenticate {
                token: Redacted(token.0.clone()),
            };
            let answer = c.request(via, auth).await.expect("answer");
            assert!(
                matches!(answer, ClientResponse::Identity { .. }),
                "round {round}: node {via} does not know the new token: {answer:?}"
            );
        }
        let (_, resp) = c
            .write(1, Operation::RevokeToken { id }, 8_000_000 + round)
            .await
            .expect("revoke");
        resp.result.expect("revoked");
        // A client that never saw the revoke (the token's holder) is refused
        // by every node immediately.
        for via in [1, 2, 3] {
            let auth = ClientRequest::Authenticate {
                token: Redacted(token.0.clone()),
            };
            let answer = c.request_fresh(via, auth).await.expect("answer");
            assert!(
                matches!(answer, ClientResponse::Denied(_)),
                "round {round}: node {via} still accepts a revoked token: {answer:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_catch_up_says_it_is_behind() {
    let c = Cluster::start(bin(), 3, 100_000);
    c.create(1, "k", 2, &[1, 2, 3]).await.expect("create");
    let far = c.seen_index.load(std::sync::atomic::Ordering::Acquire) + 1_000_000;
    c.seen_index
        .store(far, std::sync::atomic::Ordering::Release);
    let answer = c
        .request(2, ClientRequest::GetKey { name: "k".into() })
        .await
        .expect("answer");
    match answer {
        ClientResponse::Error(e) => assert!(
            e.kind == ErrorKind::Unavailable
                && e.message.contains("node is behind")
                && e.message.contains(&far.to_string()),
            "{e:?}"
        ),
        other => panic!("answered from state older than the client saw: {other:?}"),
    }
}

/// Per-key metadata reads are linearizable, not only read-your-writes: a
/// client that saw no write reads, at any node, every change acknowledged
/// before its read began; a node cut off from the leader refuses to answer
/// rather than serve what may be stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_reads_by_an_unrelated_client_see_every_acknowledged_write() {
    let mut c = Cluster::start(bin(), 3, 100_000);
    c.create(1, "k", 2, &[1, 2, 3]).await.expect("create");
    for round in 0..ROUNDS {
        c.op(1, tag(round)).await.expect("tag");
        for via in [2, 3] {
            let read = c
                .request_fresh(via, ClientRequest::GetKey { name: "k".into() })
                .await;
            let Ok(ClientResponse::Key(Some(key))) = read else {
                panic!("round {round}: node {via} answered {read:?}");
            };
            assert_eq!(
                key.tags.get("round"),
                Some(&round.to_string().into_bytes()),
                "round {round}: node {via} served a read older than an acknowledged write"
            );
        }
    }
    c.kill(1);
    c.kill(2);
    let alone = c
        .request_fresh(3, ClientRequest::GetKey { name: "k".into() })
        .await;
    match alone {
        Ok(ClientResponse::Error(e)) => assert!(
            e.kind == ErrorKind::Unavailable && e.message.contains("retry"),
            "{e:?}"
        ),
        other => panic!("a node without a majority served a read: {other:?}"),
    }
}
