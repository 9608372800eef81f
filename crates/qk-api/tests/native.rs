//! The native API over real TLS against the fake backend.
#![allow(clippy::unwrap_used)]

mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::{Harness, ALICE_TOKEN, MALLORY_TOKEN};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn create_key(h: &Harness, name: &str) -> reqwest::Response {
    h.client()
        .post(h.url("/api/v1/keys"))
        .bearer_auth(ALICE_TOKEN)
        .json(&json!({"name": name}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn no_credential_is_401_with_error_shape() {
    let h = Harness::start().await;
    let r = h.client().get(h.url("/api/v1/keys")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthenticated");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Bearer"));
    // Nothing reached the backend.
    assert!(h.backend.calls().is_empty());
    h.server.shutdown().await;
}

#[tokio::test]
async fn unknown_token_is_401() {
    let h = Harness::start().await;
    let r = h
        .client()
        .get(h.url("/api/v1/whoami"))
        .bearer_auth("qkt.nope.nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    h.server.shutdown().await;
}

#[tokio::test]
async fn bearer_and_vault_token_and_certificate_authenticate() {
    let h = Harness::start().await;
    let r = h
        .client()
        .get(h.url("/api/v1/whoami"))
        .bearer_auth(ALICE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["principal"]["name"], "alice");
    assert_eq!(body["token"]["id"], "t1");
    assert!(body["token"].get("secret_sha256").is_none());

    let r = h
        .client()
        .get(h.url("/api/v1/whoami"))
        .header("X-Vault-Token", ALICE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let r = h
        .cert_client()
        .get(h.url("/api/v1/whoami"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["principal"]["name"], "bob");
    assert_eq!(body["token"], Value::Null);

    // A header token wins over the certificate.
    let r = h
        .cert_client()
        .get(h.url("/api/v1/whoami"))
        .bearer_auth(ALICE_TOKEN)
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["principal"]["name"], "alice");
    h.server.shutdown().await;
}

#[tokio::test]
async fn key_lifecycle_and_error_codes() {
    let h = Harness::start().await;
    let r = create_key(&h, "k1").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let key: Value = r.json().await.unwrap();
    assert_eq!(key["name"], "k1");
    assert_eq!(key["owner"], "alice");
    assert_eq!(
        key["versions"][0]["state"], "enabled",
        "waited for generation"
    );
    assert_eq!(key["id"].as_str().unwrap().len(), 32);

    // Exists -> 409.
    let r = create_key(&h, "k1").await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "conflict");

    // Missing -> 404.
    let c = h.client();
    let r = c
        .get(h.url("/api/v1/keys/nope"))
        .bearer_auth(ALICE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "not-found"
    );

    // Rotate waits for the new version.
    let r = c
        .post(h.url("/api/v1/keys/k1/rotate"))
        .bearer_auth(ALICE_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let key: Value = r.json().await.unwrap();
    assert_eq!(key["versions"][1]["state"], "enabled");
    assert_eq!(key["primary_version"], 2);

    // Disable without a version disables every enabled version.
    let r = c
        .post(h.url("/api/v1/keys/k1/disable"))
        .bearer_auth(ALICE_TOKEN)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let key: Value = r.json().await.unwrap();
    assert_eq!(key["versions"][0]["state"], "disabled");
    assert_eq!(key["versions"][1]["state"], "disabled");

    // Disabling a disabled version -> 409 from the state machine.
    let r = c
        .post(h.url("/api/v1/keys/k1/disable"))
        .bearer_auth(ALICE_TOKEN)
        .json(&json!({"version": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CONFLICT);

    // Destroy needs after_ms -> 400.
    let r = c
        .post(h.url("/api/v1/keys/k1/destroy"))
        .bearer_auth(ALICE_TOKEN)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = c
        .post(h.url("/api/v1/keys/k1/destroy"))
        .bearer_auth(ALICE_TOKEN)
        .json(&json!({"after_ms": 5000}))
        .send()
        .await
        .unwrap();
    let key: Value = r.json().await.unwrap();
    assert_eq!(key["versions"][1]["state"], "pending-destruction");
    assert_eq!(key["versions"][1]["due_ms"], 5000);

    // Denied by the backend -> 403.
    let r = c
        .get(h.url("/api/v1/keys/k1"))
        .bearer_auth(MALLORY_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "denied");
    h.server.shutdown().await;
}

#[tokio::test]
async fn approval_answers_202_with_the_record() {
    let h = Harness::start().await;
    create_key(&h, "guarded").await;
    let r = h
        .client()
        .post(h.url("/api/v1/keys/guarded/disable"))
        .bearer_auth(ALICE_TOKEN)
        .json(&json!({"version": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["approval"]["id"], "ap1");
    assert_eq!(body["approval"]["status"], "pending");
    assert_eq!(body["approval"]["permission"], "key-disable");
    h.server.shutdown().await;
}

#[tokio::test]
async fn encrypt_decrypt_round_trip_and_unavailable() {
    let h = Harness::start().await;
    create_key(&h, "k1").await;
    create_key(&h, "down").await;
    let c = h.client();
    let r = c
        .post(h.url("/api/v1/keys/k1/encrypt"))
        .bearer_auth(ALICE_TOKEN)
        .json(&json!({"plaintext": B64.encode(b"hello"), "context": {"app": "x"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    let ct = body["ciphertext"].as_str().unwrap().to_owned();
    assert!(ct.starts_with("qk:v1:"));
    assert_eq!(body["version"], 1);

    let r = c
        .post(h.url("/api/v1/decrypt"))
        .bearer_auth(ALICE_TOKEN)
        .json(&json!({"ciphertext": ct, "context": {"app": "x"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["plaintext"], B64.encode(b"hello"));
    assert_eq!(body["key"], "k1");
    assert_eq!(body["version"], 1);

    // Wrong context: the backend's error -> 400.
    let r = c
        .post(h.url("/api/v1/decrypt"))
        .bearer_auth(ALICE_TOKEN)
        .json(&json!({"ciphertext": ct}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // Not a ciphertext at all -> 400.
    let r = c
        .post(h.url("/api/v1/decrypt"))
        .bearer_auth(ALICE_TOKEN)
        .json(&json!({"ciphertext": "qk:v1:AAAA"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // Quorum unreachable -> 503.
    let r = c
        .post(h.url("/api/v1/keys/down/encrypt"))
        .bearer_auth(ALICE_TOKEN)
        .json(&json!({"plaintext": B64.encode(b"x")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "unavailable"
    );

    // Bad base64 -> 400.
    let r = c
        .post(h.url("/api/v1/keys/k1/encrypt"))
        .bearer_auth(ALICE_TOKEN)
        .json(&json!({"plaintext": "!!!"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    h.server.shutdown().await;
}

#[tokio::test]
async fn oversized_and_garbage_bodies() {
    let h = Harness::start().await;
    let c = h.client();
    let big = vec![b'a'; 2 * 1024 * 1024];
    let r = c
        .post(h.url("/api/v1/keys"))
        .bearer_auth(ALICE_TOKEN)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "too-large"
    );

    for garbage in [
        &b"{not json"[..],
        b"\xff\xfe\x00",
        b"[1,2,3]",
        b"{\"name\": 5}",
    ] {
        let r = c
            .post(h.url("/api/v1/keys"))
            .bearer_auth(ALICE_TOKEN)
            .body(garbage.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.json::<Value>().await.unwrap()["error"]["code"], "invalid");
    }
    // The server still answers.
    let r = c.get(h.url("/api/v1/health/live")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    h.server.shutdown().await;
}

#[tokio::test]
async fn health_metrics_and_unknown_paths() {
    let h = Harness::start().await;
    let c = h.client();
    let r = c.get(h.url("/api/v1/health/ready")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap()["leader"], 1);
    let r = c.get(h.url("/nope")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    let text = c
        .get(h.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            r#"qk_api_requests_total{route="/api/v1/health/ready",method="GET",status="2xx"} 1"#
        ),
        "{text}"
    );
    assert!(text.contains("qk_api_request_duration_seconds"), "{text}");
    assert!(text.contains("qk_api_raft_last_applied 42"), "{text}");
    assert!(text.contains("qk_api_is_leader 1"), "{text}");
    h.server.shutdown().await;
}

#[tokio::test]
async fn session_index_is_answered_and_waited_for() {
    let h = Harness::start().await;
    let get = |index: Option<&str>| {
        let mut req = h
            .client()
            .get(h.url("/api/v1/keys"))
            .bearer_auth(ALICE_TOKEN);
        if let Some(i) = index {
            req = req.header(qk_views::INDEX_HEADER, i);
        }
        req.send()
    };
    // Every answer names the node's applied index.
    let r = get(None).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let applied = common::FAKE_APPLIED.to_string();
    assert_eq!(r.headers()[qk_views::INDEX_HEADER], applied.as_str());
    // An index the node has applied is served...
    assert_eq!(get(Some(&applied)).await.unwrap().status(), StatusCode::OK);
    // ...one it has not is refused as "behind, retry" (503), before the backend runs.
    let calls = h.backend.calls().len();
    let ahead = (common::FAKE_APPLIED + 1).to_string();
    let r = get(Some(&ahead)).await.unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = r.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("node is behind") && message.contains("retry"),
        "{message}"
    );
    assert_eq!(h.backend.calls().len(), calls);
    // An anonymous caller is not waited for: it is refused as such.
    let r = h
        .client()
        .get(h.url("/api/v1/keys"))
        .header(qk_views::INDEX_HEADER, ahead.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A malformed index is the caller's error.
    let r = get(Some("ten")).await.unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Vault clients get Vault's error shape.
    let r = h
        .client()
        .post(h.url("/v1/transit/encrypt/k"))
        .header("x-vault-token", ALICE_TOKEN)
        .header(qk_views::INDEX_HEADER, ahead.as_str())
        .json(&json!({"plaintext": "aGk="}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = r.json().await.unwrap();
    assert!(body["errors"][0]
        .as_str()
        .unwrap()
        .contains("node is behind"));
    h.server.shutdown().await;
}

/// A request named by `X-Qk-Request-Id` writes under that id (sent again,
/// the same id: the state machine answers it as applied); an unnamed one
/// under a fresh id each time; a malformed name is refused before anything
/// reaches the backend.
#[tokio::test]
async fn a_named_request_writes_under_its_id() {
    let h = Harness::start().await;
    assert_eq!(create_key(&h, "k1").await.status(), StatusCode::CREATED);
    let rotate = |id: Option<&'static str>| {
        let mut r = h
            .client()
            .post(h.url("/api/v1/keys/k1/rotate"))
            .bearer_auth(ALICE_TOKEN);
        if let Some(id) = id {
            r = r.header("x-qk-request-id", id);
        }
        r.send()
    };
    let named = "00112233445566778899AABBCCDDEEFF";
    for _ in 0..2 {
        assert_eq!(rotate(Some(named)).await.unwrap().status(), StatusCode::OK);
    }
    for _ in 0..2 {
        assert_eq!(rotate(None).await.unwrap().status(), StatusCode::OK);
    }
    let ids = h.backend.write_ids();
    assert_eq!(ids.len(), 5, "create and four rotations");
    assert_eq!(ids[1], ids[2], "the same request, the same write: one id");
    assert!(ids[3] != ids[4] && ids[3] != ids[1] && ids[4] != ids[1]);
    let calls = h.backend.calls().len();
    for bad in ["xyz", "+0112233445566778899aabbccddeeff", "0011"] {
        let r = rotate(Some(bad)).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
        let body: Value = r.json().await.unwrap();
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("x-qk-request-id"));
    }
    assert_eq!(h.backend.calls().len(), calls, "refused at the edge");
    h.server.shutdown().await;
}
