//! Attacks by one compromised node against a real cluster (docs/THREATS.md):
//! the attacker holds a member's certificate and key (or a CA-issued
//! certificate of a node that never joined) and speaks the wire protocol
//! directly. Each attack is refused and audited; honest traffic goes on.

use std::path::Path;

use qk_raft::{PeerRequest, PeerResponse};
use qk_state::{Operation, VersionState};
use qk_testkit::adversary::{self, write_outcome, Adversary};
use qk_testkit::cluster::*;
use qk_types::{KeyVersion, NodeId};
use qk_wire::{ClientRequest, ClientResponse};

const BIN: &str = env!("CARGO_BIN_EXE_qk-node");
const CTX: &[(&str, &str)] = &[("tenant", "acme")];

fn bin() -> &'static Path {
    Path::new(BIN)
}

fn refused(resp: Result<PeerResponse, String>, why: &str) {
    match resp {
        Ok(PeerResponse::Refused(reason)) => assert!(reason.contains(why), "{reason}"),
        other => panic!("accepted (expected a refusal saying {why:?}): {other:?}"),
    }
}

/// Waits until the replicated audit trail has a refused `operation` by `principal`.
fn wait_audited(c: &Cluster, principal: &str, operation: &str) {
    let h = tokio::runtime::Handle::current();
    wait_until(&format!("{operation} by {principal} audited"), || {
        let req = ClientRequest::Audit {
            from_seq: 1,
            limit: 1000,
        };
        let answer = tokio::task::block_in_place(|| h.block_on(c.request(1, req)));
        let Ok(ClientResponse::Audit(records)) = answer else {
            return None;
        };
        records
            .iter()
            .any(|r| {
                r.principal == principal
                    && r.operation == operation
                    && r.outcome.starts_with("refused")
            })
            .then_some(())
    });
}

async fn cluster_with_key(n: u64) -> (Cluster, String) {
    let c = Cluster::start(bin(), n, 100_000);
    let holders: Vec<u64> = (1..=n).collect();
    c.create(1, "k", 2, &holders).await.expect("create");
    c.wait_key(1, "k", |k| {
        k.version(KeyVersion(1))
            .is_some_and(|v| v.state == VersionState::Enabled)
    });
    let (ct, _) = c.encrypt(1, "k", CTX, b"honest").await.expect("encrypt");
    (c, ct)
}

async fn raft_rpcs_speak_only_for_their_sender(n: u64) {
    let (c, ct) = cluster_with_key(n).await;
    let before = c.status(1).await.expect("status");
    let leader = before.leader.expect("leader");
    let thief_id = (1..=n).find(|id| *id != leader).expect("a follower");
    let target = (1..=n)
        .find(|id| *id != leader && *id != thief_id)
        .expect("another follower");
    let thief = Adversary::stolen(&c, thief_id);
    let term = before.term + 10;
    // A member stands in for the leader, with a higher term...
    let as_leader = thief
        .send(&c, target, Adversary::append_entries(leader, term))
        .await;
    refused(as_leader, "on behalf of");
    // ...or asks votes for another candidate.
    let as_candidate = thief.send(&c, target, Adversary::vote(leader, term)).await;
    refused(as_candidate, "on behalf of");
    // A node the CA issued but that never joined sends Raft messages as itself.
    let outsider = Adversary::non_member(&c, 9);
    refused(
        outsider.send(&c, target, Adversary::vote(9, term)).await,
        "not a member",
    );
    refused(
        outsider
            .send(&c, target, Adversary::append_entries(9, term))
            .await,
        "not a member",
    );
    // Honest traffic goes on: same leader and term, decryption works.
    for id in 1..=n {
        let now = c.status(id).await.expect("status");
        assert_eq!(
            now.term, before.term,
            "node {id}: the forged term took hold"
        );
        assert_eq!(now.leader, Some(leader), "node {id}");
    }
    assert_eq!(
        c.decrypt(target, &ct, CTX).await.as_deref(),
        Ok(&b"honest"[..])
    );
    wait_audited(&c, &NodeId(thief_id).to_string(), "raft.append-entries");
    wait_audited(&c, "node-9", "raft.vote");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_rpcs_speak_only_for_their_sender_3_nodes() {
    raft_rpcs_speak_only_for_their_sender(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_rpcs_speak_only_for_their_sender_5_nodes() {
    raft_rpcs_speak_only_for_their_sender(5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cannot_file_erase_receipts_for_others() {
    let (c, ct) = cluster_with_key(3).await;
    let thief = Adversary::stolen(&c, 3);
    let leader = c.status(1).await.expect("status").leader.expect("leader");
    for victim in [1, 2] {
        let forged = Operation::EraseReceipt {
            name: "k".into(),
            version: KeyVersion(1),
            node: NodeId(victim),
        };
        let mut id = [0u8; 16];
        id[0] = 0xad;
        id[15] = victim as u8;
        let outcome = write_outcome(
            thief
                .send(&c, leader, thief.write("node-3", id, forged))
                .await,
        );
        let err = outcome.expect_err("a receipt for another node");
        assert!(err.contains("itself"), "{err}");
    }
    let key = c.key(1, "k").await.expect("key");
    assert!(key
        .version(KeyVersion(1))
        .expect("v1")
        .erase_receipts
        .is_empty());
    assert_eq!(c.decrypt(2, &ct, CTX).await.as_deref(), Ok(&b"honest"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cannot_ack_or_step_a_dkg_for_another_holder() {
    let (c, _) = cluster_with_key(3).await;
    let thief = Adversary::stolen(&c, 3);
    let leader = c.status(1).await.expect("status").leader.expect("leader");
    let rotate = Operation::Rotate {
        name: "k".into(),
        holders: vec![NodeId(1), NodeId(2), NodeId(3)],
        generation_timeout_ms: None,
    };
    c.op(1, rotate).await.expect("rotate");
    // Node 3 acks a key set of its choosing in node 1's name, under its own
    // principal and under node 1's.
    for principal in ["node-3", "node-1"] {
        let forged = Operation::Dkg {
            name: "k".into(),
            version: KeyVersion(2),
            from: NodeId(1),
            step: qk_state::DkgStep::Ack {
                public_keys: vec![7; 64],
            },
            session: Default::default(),
        };
        let mut id = [0u8; 16];
        id[0] = 0xac;
        id[1] = principal.len() as u8 + principal.as_bytes()[5];
        let outcome = write_outcome(
            thief
                .send(&c, leader, thief.write(principal, id, forged))
                .await,
        );
        let err = outcome.expect_err("an ack for another holder");
        assert!(err.contains("itself"), "{principal}: {err}");
    }
    // The honest DKG finishes with the holders' own key set.
    let key = c.wait_key(1, "k", |k| {
        k.version(KeyVersion(2))
            .is_some_and(|v| v.state == VersionState::Enabled)
    });
    let v2 = key.version(KeyVersion(2)).expect("v2");
    assert_ne!(v2.public_keys.as_deref(), Some(&[7u8; 64][..]));
}

/// One compromised node tries to put a DKG key it knows in another node's
/// place (so that dealers would seal that node's shares to it): under its
/// own name and under the victim's. Refused at apply; the next key
/// generation seals to the honest keys and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cannot_publish_another_nodes_dkg_key() {
    let (c, ct) = cluster_with_key(3).await;
    let thief = Adversary::stolen(&c, 3);
    let leader = c.status(1).await.expect("status").leader.expect("leader");
    let known = qk_crypto::DkgSecretKey::from_seed(&[0x66; 64]);
    for (i, principal) in ["node-3", "node-1"].into_iter().enumerate() {
        let forged = Operation::PublishDkgKey {
            node: NodeId(1),
            public_key: known.public_key().to_bytes().to_vec(),
        };
        let mut id = [0u8; 16];
        id[0] = 0xd6;
        id[15] = i as u8;
        let outcome = write_outcome(
            thief
                .send(&c, leader, thief.write(principal, id, forged))
                .await,
        );
        assert!(outcome.is_err(), "{principal}: {outcome:?}");
    }
    let rotate = Operation::Rotate {
        name: "k".into(),
        holders: vec![NodeId(1), NodeId(2), NodeId(3)],
        generation_timeout_ms: None,
    };
    c.op(1, rotate).await.expect("rotate");
    c.wait_key(1, "k", |k| {
        k.version(KeyVersion(2))
            .is_some_and(|v| v.state == VersionState::Enabled)
    });
    assert_eq!(c.decrypt(2, &ct, CTX).await.as_deref(), Ok(&b"honest"[..]));
}

/// One compromised node forwards writes in the admin's name: a token for
/// the admin whose secret it would know, and a new admin principal, once
/// with no proof and once signed with its own (real) node key. Every replica
/// refuses them at apply and the audit names them `unauthenticated`, never
/// the admin; honest writes and decrypts go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cannot_write_in_a_principals_name() {
    let (c, ct) = cluster_with_key(3).await;
    let thief = Adversary::stolen(&c, 3);
    let leader = c.status(1).await.expect("status").leader.expect("leader");
    let secret = "attacker-chosen secret";
    let token = Operation::IssueToken {
        id: "00000000000000ad".into(),
        principal: "admin".into(),
        description: "backdoor".into(),
        secret_sha256: [0; 32],
        verify_key: qk_state::proof::token_verify_key(secret).expect("key"),
        expires_at_ms: u64::MAX / 2,
    };
    let mallory = Operation::CreatePrincipal {
        name: "mallory".into(),
        roles: [qk_state::Role::Admin].into(),
    };
    for (n, op) in [token, mallory].into_iter().enumerate() {
        let unsigned = Adversary::unsigned_write("admin", [0xa0 + n as u8; 16], op.clone());
        let signed = thief.write("admin", [0xb0 + n as u8; 16], op.clone());
        for forged in [unsigned, signed] {
            let err = write_outcome(thief.send(&c, leader, forged).await)
                .expect_err("a write in the admin's name");
            assert!(err.contains("not proven"), "{}: {err}", op.name());
        }
        wait_audited(&c, "unauthenticated", op.name());
    }
    let audit = c
        .request(
            2,
            ClientRequest::Audit {
                from_seq: 1,
                limit: 1000,
            },
        )
        .await
        .expect("audit");
    let ClientResponse::Audit(records) = audit else {
        panic!("audit: {audit:?}");
    };
    assert!(
        !records.iter().any(|r| r.principal == "admin"
            && matches!(r.operation.as_str(), "token.issue" | "principal.create")),
        "the audit never names the admin for the forged writes"
    );
    let principals = c.request(1, ClientRequest::ListPrincipals).await;
    assert!(
        matches!(&principals, Ok(ClientResponse::Principals(p)) if !p.iter().any(|p| p.name == "mallory")),
        "{principals:?}"
    );
    // Honest traffic goes on.
    c.op(2, tag("k", 1)).await.expect("honest write");
    assert_eq!(c.decrypt(2, &ct, CTX).await.as_deref(), Ok(&b"honest"[..]));
}

/// A compromised node replays the administrator's signed commands it
/// finds in the Raft log on its own disk: a `Disable` the administrator
/// later undid, as it was (answered as a duplicate: nothing changes) and
/// under a new request id (the signature covers the id: refused, audited
/// `unauthenticated`). The version stays enabled and decrypts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cannot_replay_a_principals_signed_commands() {
    let (mut c, ct) = cluster_with_key(3).await;
    let v1 = KeyVersion(1);
    let disable = Operation::Disable {
        name: "k".into(),
        version: v1,
    };
    c.op(1, disable.clone()).await.expect("disable");
    let enable = Operation::Enable {
        name: "k".into(),
        version: v1,
    };
    c.op(1, enable).await.expect("enable");
    let applied = c.status(1).await.expect("status").last_applied;
    c.wait_status(3, |s| s.last_applied >= applied);
    c.stop(3);
    let seen = adversary::signed_commands_on_disk(&c, 3).await;
    let original = seen
        .into_iter()
        .find(|cmd| cmd.op == disable)
        .expect("the admin's signed Disable is in node 3's log");
    c.restart(3);
    let thief = Adversary::stolen(&c, 3);
    let leader = c.status(1).await.expect("status").leader.expect("leader");
    let as_it_was = PeerRequest::Client(ClientRequest::Write(original.clone()));
    match thief.send(&c, leader, as_it_was).await {
        Ok(PeerResponse::Client(ClientResponse::Written { response, .. })) => {
            assert!(response.duplicate, "{response:?}")
        }
        other => panic!("a replay as it was: {other:?}"),
    }
    let mut renamed = original;
    renamed.request_id = qk_state::RequestId([0x5e; 16]);
    let err = write_outcome(
        thief
            .send(
                &c,
                leader,
                PeerRequest::Client(ClientRequest::Write(renamed)),
            )
            .await,
    )
    .expect_err("a replay under a new request id");
    assert!(err.contains("not proven"), "{err}");
    wait_audited(&c, "unauthenticated", disable.name());
    let key = c.key(1, "k").await.expect("key");
    assert_eq!(
        key.version(v1).expect("v1").state,
        VersionState::Enabled,
        "the replayed Disable changed nothing"
    );
    assert_eq!(c.decrypt(2, &ct, CTX).await.as_deref(), Ok(&b"honest"[..]));
}

/// One compromised node (its certificate, in place of the real process)
/// asks the other holders for partials of a ciphertext in an allowed
/// principal's name: with no proof, with a proof it saw for another
/// ciphertext, with the principal's proof for this ciphertext made out to
/// the node the principal called (as a holder sees it), with a stale
/// proof, and with a signer it made up. Every holder refuses and audits the
/// node that asked; with t = 2, one partial would have been enough to
/// decrypt with the stolen share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cannot_collect_partials_in_a_principals_name() {
    use qk_protocol::{PartialRequest, ProtocolMessage};
    use qk_state::proof::{Credential, Intent};
    use std::collections::BTreeMap;

    let (mut c, ct) = cluster_with_key(3).await;
    let (other_ct, _) = c.encrypt(1, "k", CTX, b"other").await.expect("encrypt");
    let parsed = qk_crypto::Ciphertext::from_text(&ct).expect("ciphertext");
    let ciphertext = parsed.to_bytes();
    let context: BTreeMap<String, String> = CTX
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let admin = c.pool.session().expect("the test client's session");
    let other_bytes = qk_crypto::Ciphertext::from_text(&other_ct)
        .expect("ciphertext")
        .to_bytes();
    let this = Intent {
        principal: "admin",
        ciphertext: &ciphertext,
        context: &context,
    };
    let other = Intent {
        ciphertext: &other_bytes,
        ..this
    };
    let sign = |cred: &Credential, intent: &Intent<'_>, requester: u64, time_ms: u64| {
        Some(Box::new(
            cred.prove(intent, requester, time_ms).expect("sign"),
        ))
    };
    let made_up = Credential::from_token("0123456789abcdef", &"ab".repeat(32));
    let attempts = [
        (None, "carries no proof from admin"),
        (sign(&admin, &other, 3, now_ms), "does not verify"),
        (
            sign(&admin, &this, 1, now_ms),
            "names node 1 as the one that combines",
        ),
        (
            sign(&admin, &this, 3, now_ms - 10 * 60 * 1000),
            "from this node's clock",
        ),
        (sign(&made_up, &this, 3, now_ms), "does not know"),
    ];

    c.stop(3);
    let thief = Adversary::stolen(&c, 3);
    let mut impostor = thief.impersonate(&c).await;
    for (op_id, (proof, why)) in (7_000u64..).zip(attempts) {
        let request = ProtocolMessage::PartialRequest(PartialRequest {
            op_id,
            key: parsed.key_id,
            name: "k".into(),
            version: parsed.version,
            ciphertext: ciphertext.clone(),
            context: context.clone(),
            principal: "admin".into(),
            epoch: None,
            min_applied: 0,
            proof,
        });
        for holder in [1, 2] {
            let answer = impostor.ask(&thief, &c, holder, op_id, &request).await;
            let reason = answer.expect_err("a partial released without the principal's proof");
            assert!(reason.contains(why), "node {holder}: {reason}");
        }
    }
    wait_audited(&c, "node-3", "partial");

    // As a client, the node certificate gets no decrypt and no partial.
    for req in [
        ClientRequest::Decrypt {
            ciphertext: ct.clone(),
            context: context.clone(),
            approval: None,
        },
        ClientRequest::Partial {
            ciphertext: ct.clone(),
            context: context.clone(),
            approval: None,
        },
    ] {
        let answer = thief
            .send(&c, 1, qk_raft::PeerRequest::Client(req))
            .await
            .expect("answered");
        assert!(
            matches!(
                answer,
                PeerResponse::Client(ClientResponse::Denied(_) | ClientResponse::Error(_))
            ),
            "{answer:?}"
        );
    }

    // Honest traffic goes on: the caller's own proof opens it.
    let plain = c.decrypt(1, &ct, CTX).await.expect("honest decrypt");
    assert_eq!(plain, b"honest");
}
