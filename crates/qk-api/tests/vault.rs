//! The Vault Transit-compatible API over real TLS against the fake backend,
//! with the headers and verbs hvac sends.
#![allow(clippy::unwrap_used)]

mod common;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::{Harness, ALICE_TOKEN, MALLORY_TOKEN};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A request as hvac makes it.
fn vault(h: &Harness, method: Method, path: &str) -> reqwest::RequestBuilder {
    h.client()
        .request(method, h.url(path))
        .header("X-Vault-Token", ALICE_TOKEN)
        .header("X-Vault-Request", "true")
}

fn assert_envelope(body: &Value) {
    for field in [
        "request_id",
        "lease_id",
        "renewable",
        "lease_duration",
        "data",
    ] {
        assert!(body.get(field).is_some(), "missing {field}: {body}");
    }
    assert_eq!(body["lease_id"], "");
    assert_eq!(body["renewable"], false);
    assert_eq!(body["wrap_info"], Value::Null);
    assert_eq!(body["auth"], Value::Null);
}

#[tokio::test]
async fn create_read_list_and_errors() {
    let h = Harness::start().await;
    let r = vault(&h, Method::PUT, "/v1/transit/keys/orders")
        .json(&json!({"type": "aes256-gcm96"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_envelope(&body);
    assert_eq!(body["data"]["type"], "aes256-gcm96");

    // POST on an existing key is fine, like Vault.
    let r = vault(&h, Method::POST, "/v1/transit/keys/orders")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    let r = vault(&h, Method::GET, "/v1/transit/keys/orders")
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_envelope(&body);
    let data = &body["data"];
    assert_eq!(data["name"], "orders");
    assert_eq!(data["latest_version"], 1);
    assert_eq!(data["min_decryption_version"], 1);
    assert_eq!(data["deletion_allowed"], false);
    assert_eq!(data["supports_encryption"], true);
    assert!(data["keys"]["1"].is_u64(), "{data}");

    let list = Method::from_bytes(b"LIST").unwrap();
    let r = vault(&h, list, "/v1/transit/keys").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap()["data"]["keys"],
        json!(["orders"])
    );
    let r = vault(&h, Method::GET, "/v1/transit/keys?list=true")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.json::<Value>().await.unwrap()["data"]["keys"],
        json!(["orders"])
    );

    // Errors: Vault's shape and statuses.
    let r = vault(&h, Method::GET, "/v1/transit/keys/missing")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body: Value = r.json().await.unwrap();
    assert!(body["errors"].as_array().unwrap()[0].is_string(), "{body}");

    let r = vault(&h, Method::DELETE, "/v1/transit/keys/orders")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        r.json::<Value>().await.unwrap()["errors"][0],
        "deletion is not allowed for this key"
    );

    let r = vault(&h, Method::PATCH, "/v1/transit/encrypt/orders")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert!(r.json::<Value>().await.unwrap()["errors"].is_array());

    // No token: Vault answers 403.
    let r = h
        .client()
        .get(h.url("/v1/transit/keys/orders"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.json::<Value>().await.unwrap()["errors"].is_array());

    let r = h
        .client()
        .get(h.url("/v1/transit/keys/orders"))
        .header("X-Vault-Token", MALLORY_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    h.server.shutdown().await;
}

#[tokio::test]
async fn config_allows_delete() {
    let h = Harness::start().await;
    vault(&h, Method::POST, "/v1/transit/keys/k")
        .send()
        .await
        .unwrap();
    let r = vault(&h, Method::POST, "/v1/transit/keys/k/config")
        .json(&json!({"deletion_allowed": true, "auto_rotate_period": "24h"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let data = r.json::<Value>().await.unwrap()["data"].clone();
    assert_eq!(data["deletion_allowed"], true);
    let r = vault(&h, Method::DELETE, "/v1/transit/keys/k")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    h.server.shutdown().await;
}

#[tokio::test]
async fn encrypt_decrypt_single_and_batch() {
    let h = Harness::start().await;
    vault(&h, Method::POST, "/v1/transit/keys/k")
        .send()
        .await
        .unwrap();
    let ctx = B64.encode(b"tenant-1");
    let r = vault(&h, Method::POST, "/v1/transit/encrypt/k")
        .json(&json!({"plaintext": B64.encode(b"secret"), "context": ctx}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_envelope(&body);
    let ct = body["data"]["ciphertext"].as_str().unwrap().to_owned();
    assert!(ct.starts_with("vault:v1:"), "{ct}");
    assert_eq!(body["data"]["key_version"], 1);

    let r = vault(&h, Method::PUT, "/v1/transit/decrypt/k")
        .json(&json!({"ciphertext": ct, "context": ctx}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["data"]["plaintext"], B64.encode(b"secret"));

    // Batch: two good items and one bad one.
    let r = vault(&h, Method::POST, "/v1/transit/encrypt/k")
        .json(&json!({"batch_input": [
            {"plaintext": B64.encode(b"one")},
            {"plaintext": "not base64!"},
            {"plaintext": B64.encode(b"two"), "context": ctx},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    let results = body["data"]["batch_results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 3);
    assert!(results[0]["ciphertext"].is_string());
    assert!(results[1]["error"].is_string(), "{}", results[1]);
    assert!(results[2]["ciphertext"].is_string());

    let r = vault(&h, Method::POST, "/v1/transit/decrypt/k")
        .json(&json!({"batch_input": [
            {"ciphertext": results[0]["ciphertext"]},
            {"ciphertext": "vault:v1:garbage"},
            {"ciphertext": results[2]["ciphertext"], "context": ctx},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    let results = body["data"]["batch_results"].as_array().unwrap().clone();
    assert_eq!(results[0]["plaintext"], B64.encode(b"one"));
    assert!(results[1]["error"].is_string());
    assert_eq!(results[2]["plaintext"], B64.encode(b"two"));

    // Rewrap keeps the vault form.
    let r = vault(&h, Method::POST, "/v1/transit/rewrap/k")
        .json(&json!({"ciphertext": ct, "context": ctx}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert!(body["data"]["ciphertext"]
        .as_str()
        .unwrap()
        .starts_with("vault:v1:"));

    // Garbage single ciphertext: 400 with Vault's errors.
    let r = vault(&h, Method::POST, "/v1/transit/decrypt/k")
        .json(&json!({"ciphertext": "vault:v1:AAAA"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.json::<Value>().await.unwrap()["errors"][0].is_string());
    h.server.shutdown().await;
}

#[tokio::test]
async fn datakeys_lookup_self_and_health() {
    let h = Harness::start().await;
    vault(&h, Method::POST, "/v1/transit/keys/k")
        .send()
        .await
        .unwrap();
    let r = vault(&h, Method::POST, "/v1/transit/datakey/plaintext/k")
        .json(&json!({"bits": 512}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let data = r.json::<Value>().await.unwrap()["data"].clone();
    let plain = B64.decode(data["plaintext"].as_str().unwrap()).unwrap();
    assert_eq!(plain.len(), 64);
    assert!(data["ciphertext"]
        .as_str()
        .unwrap()
        .starts_with("vault:v1:"));

    let r = vault(&h, Method::POST, "/v1/transit/datakey/wrapped/k")
        .send()
        .await
        .unwrap();
    let data = r.json::<Value>().await.unwrap()["data"].clone();
    assert!(data.get("plaintext").is_none());

    let r = vault(&h, Method::POST, "/v1/transit/datakey/plaintext/k")
        .json(&json!({"bits": 100}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    let r = vault(&h, Method::GET, "/v1/auth/token/lookup-self")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_envelope(&body);
    assert_eq!(body["data"]["id"], "t1");
    assert_eq!(body["data"]["display_name"], "alice");
    assert_eq!(body["data"]["policies"], json!(["admin"]));

    let r = h
        .client()
        .get(h.url("/v1/sys/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["initialized"], true);
    assert_eq!(body["sealed"], false);
    assert_eq!(body["standby"], false);
    assert_eq!(body["cluster_name"], "quorumkey");
    assert!(body["version"].as_str().unwrap().starts_with("qk-"));
    h.server.shutdown().await;
}
