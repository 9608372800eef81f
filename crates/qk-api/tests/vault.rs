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

const KEY_TYPE: &str = "threshold-ecies-secp256k1";

/// The status and JSON answer of a request.
async fn answer(r: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let r = r.send().await.unwrap();
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
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
    // A type the cluster does not implement is refused, never substituted.
    for key_type in ["aes256-gcm96", "ed25519", "rsa-2048"] {
        let r = vault(&h, Method::PUT, "/v1/transit/keys/orders")
            .json(&json!({ "type": key_type }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{key_type}");
        let error = r.json::<Value>().await.unwrap()["errors"][0].clone();
        let error = error.as_str().unwrap_or_default().to_owned();
        assert!(
            error.contains(key_type) && error.contains(KEY_TYPE),
            "{error}"
        );
    }
    // `bao write -f transit/keys/orders` sends the body `null`.
    let r = vault(&h, Method::PUT, "/v1/transit/keys/orders")
        .body("null")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_envelope(&body);
    assert_eq!(body["data"]["type"], KEY_TYPE);
    assert_eq!(body["data"]["supports_signing"], false);
    assert_eq!(body["data"]["exportable"], false);
    assert_eq!(body["data"]["derived"], false);

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

    // Batch: two good items and one bad one answer 400, as in Vault, with
    // every item's result and its reference.
    let r = vault(&h, Method::POST, "/v1/transit/encrypt/k")
        .json(&json!({"batch_input": [
            {"plaintext": B64.encode(b"one"), "reference": "first"},
            {"plaintext": "not base64!"},
            {"plaintext": B64.encode(b"two"), "context": ctx},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await.unwrap();
    let results = body["data"]["batch_results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 3);
    assert!(results[0]["ciphertext"].is_string());
    assert_eq!(results[0]["reference"], "first");
    assert_eq!(results[1]["reference"], "");
    assert!(results[1]["error"].is_string(), "{}", results[1]);
    assert!(results[2]["ciphertext"].is_string());

    let r = vault(&h, Method::POST, "/v1/transit/decrypt/k")
        .json(&json!({"batch_input": [
            {"ciphertext": results[0]["ciphertext"]},
            {"ciphertext": "vault:v1:garbage"},
            {"ciphertext": results[2]["ciphertext"], "context": ctx},
        ], "partial_failure_response_code": "207"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::MULTI_STATUS);
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

#[tokio::test]
async fn cli_style_bodies_and_refused_options() {
    let h = Harness::start().await;
    // The CLI's `k=v` arguments arrive as strings; a form body is accepted too.
    let (status, _) = answer(vault(&h, Method::PUT, "/v1/transit/keys/k").body("null")).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = answer(vault(&h, Method::POST, "/v1/transit/encrypt/k").body("{}")).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "no plaintext, nothing encrypted: {body}"
    );
    assert_eq!(body["errors"][0], "missing plaintext to encrypt");
    let config = json!({"deletion_allowed": "true", "min_decryption_version": "1"});
    let (status, body) =
        answer(vault(&h, Method::PUT, "/v1/transit/keys/k/config").json(&config)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["deletion_allowed"], true);
    let form = vault(&h, Method::POST, "/v1/transit/keys/k/config")
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("deletion_allowed=false");
    let (status, body) = answer(form).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["deletion_allowed"], false);
    let (status, body) = answer(
        vault(&h, Method::PUT, "/v1/transit/keys/k/config")
            .json(&json!({"deletion_allowed": "maybe"})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Options the cluster does not implement are refused with the reason.
    for (path, option) in [
        ("/v1/transit/keys/k2", "exportable"),
        ("/v1/transit/keys/k2", "allow_plaintext_backup"),
        ("/v1/transit/keys/k2", "derived"),
        ("/v1/transit/keys/k2", "convergent_encryption"),
        ("/v1/transit/keys/k/config", "exportable"),
        ("/v1/transit/keys/k/config", "min_encryption_version"),
    ] {
        let value = if option == "min_encryption_version" {
            "2"
        } else {
            "true"
        };
        let (status, body) =
            answer(vault(&h, Method::POST, path).json(&json!({ option: value }))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {option}: {body}");
        let error = body["errors"][0].as_str().unwrap_or_default();
        assert!(
            error.contains(option) && error.contains("not supported"),
            "{error}"
        );
    }
    let (status, _) = answer(vault(&h, Method::GET, "/v1/transit/keys/k2")).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a refused create creates nothing"
    );

    // No export, backup, signing or HMAC: each refused with its reason.
    for (method, path, why) in [
        (Method::GET, "/v1/transit/backup/k", "Shamir shares"),
        (
            Method::GET,
            "/v1/transit/export/encryption-key/k",
            "Shamir shares",
        ),
        (Method::POST, "/v1/transit/restore", "Shamir shares"),
        (
            Method::POST,
            "/v1/transit/hmac/k",
            "encrypt and decrypt only",
        ),
        (
            Method::POST,
            "/v1/transit/sign/k/sha2-256",
            "encrypt and decrypt only",
        ),
        (
            Method::POST,
            "/v1/transit/verify/k",
            "encrypt and decrypt only",
        ),
    ] {
        let (status, body) = answer(vault(&h, method, path).body("{}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert!(
            body["errors"][0].as_str().unwrap_or_default().contains(why),
            "{body}"
        );
    }
    h.server.shutdown().await;
}

#[tokio::test]
async fn trim_destroys_only_versions_below_the_decryption_floor() {
    let h = Harness::start().await;
    vault(&h, Method::POST, "/v1/transit/keys/k")
        .send()
        .await
        .unwrap();
    for _ in 0..2 {
        let (status, _) = answer(vault(&h, Method::POST, "/v1/transit/keys/k/rotate")).await;
        assert_eq!(status, StatusCode::OK);
    }
    let trim = |v: &str| {
        vault(&h, Method::POST, "/v1/transit/keys/k/trim")
            .json(&json!({ "min_available_version": v }))
    };
    let (status, body) = answer(trim("2")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "above the floor: {body}");
    assert!(body["errors"][0]
        .as_str()
        .unwrap_or_default()
        .contains("min_decryption_version"));
    let (status, body) = answer(trim("0")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let floor = json!({"min_decryption_version": 3});
    answer(vault(&h, Method::POST, "/v1/transit/keys/k/config").json(&floor)).await;
    let (status, body) = answer(trim("3")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["min_available_version"], 3);
    assert_eq!(body["data"]["keys"].as_object().map(|k| k.len()), Some(1));
    let (_, key) = answer(vault(&h, Method::GET, "/v1/transit/keys/k")).await;
    assert_eq!(key["data"]["latest_version"], 3);
    h.server.shutdown().await;
}

#[tokio::test]
async fn sys_endpoints_random_and_hash() {
    let h = Harness::start().await;
    let (status, seal) = answer(h.client().get(h.url("/v1/sys/seal-status"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seal["sealed"], false);
    assert_eq!(seal["initialized"], true);
    assert_eq!((seal["t"].clone(), seal["n"].clone()), (json!(2), json!(3)));
    let (status, leader) = answer(h.client().get(h.url("/v1/sys/leader"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(leader["is_self"], true);
    assert_eq!(leader["leader_address"], "https://127.0.0.1:7201");

    let (status, mounts) = answer(vault(&h, Method::GET, "/v1/sys/mounts")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(mounts["transit/"]["type"], "transit");
    assert_eq!(mounts["data"]["transit/"]["type"], "transit");
    let (status, _) = answer(h.client().get(h.url("/v1/sys/mounts"))).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "listing mounts needs a token"
    );
    let (status, body) = answer(vault(&h, Method::POST, "/v1/sys/mounts/transit")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["errors"][0]
        .as_str()
        .unwrap_or_default()
        .contains("already in use"));

    let (status, body) = answer(vault(&h, Method::PUT, "/v1/auth/token/renew-self")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["errors"][0]
        .as_str()
        .unwrap_or_default()
        .contains("qk token create"));

    let (status, r) = answer(vault(&h, Method::PUT, "/v1/transit/random/16").body("null")).await;
    assert_eq!(status, StatusCode::OK);
    let bytes = B64
        .decode(r["data"]["random_bytes"].as_str().unwrap())
        .unwrap();
    assert_eq!(bytes.len(), 16);
    let body = json!({"bytes": "8", "format": "hex"});
    let (_, r) = answer(vault(&h, Method::POST, "/v1/transit/random").json(&body)).await;
    assert_eq!(r["data"]["random_bytes"].as_str().map(str::len), Some(16));
    let (status, _) = answer(vault(&h, Method::POST, "/v1/transit/random/seal/8")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = answer(h.client().post(h.url("/v1/transit/random/8"))).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "random needs a token, as in Vault"
    );

    let input = json!({"input": B64.encode(b"hi")});
    let (status, r) = answer(vault(&h, Method::PUT, "/v1/transit/hash").json(&input)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        r["data"]["sum"],
        "8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4"
    );
    let body = json!({"input": B64.encode(b"hi"), "format": "base64"});
    let (_, r) = answer(vault(&h, Method::PUT, "/v1/transit/hash/sha3-256").json(&body)).await;
    assert_eq!(
        r["data"]["sum"],
        "s5wUyNo7I4EfZBW34LM1JtfgekbyzwSEF5Q1dn5KiAQ="
    );
    let (status, _) = answer(vault(&h, Method::PUT, "/v1/transit/hash/md5").json(&input)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, r) = answer(vault(&h, Method::GET, "/v1/transit/cache-config")).await;
    assert_eq!(
        (status, r["data"]["size"].clone()),
        (StatusCode::OK, json!(0))
    );
    let size = json!({"size": "10"});
    let (status, _) = answer(vault(&h, Method::POST, "/v1/transit/cache-config").json(&size)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    h.server.shutdown().await;
}

#[tokio::test]
async fn a_batch_larger_than_its_parallelism_answers_every_item_in_order() {
    let h = Harness::start().await;
    vault(&h, Method::POST, "/v1/transit/keys/k")
        .send()
        .await
        .unwrap();
    let items: Vec<Value> = (0..37)
        .map(
            |i| json!({"plaintext": B64.encode(format!("item-{i}")), "reference": format!("r{i}")}),
        )
        .collect();
    let (status, body) = answer(
        vault(&h, Method::POST, "/v1/transit/encrypt/k").json(&json!({"batch_input": items})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let encrypted = body["data"]["batch_results"].as_array().unwrap().clone();
    assert_eq!(encrypted.len(), 37);
    let inputs: Vec<Value> = encrypted
        .iter()
        .map(|r| json!({"ciphertext": r["ciphertext"], "reference": r["reference"]}))
        .collect();
    let (status, body) = answer(
        vault(&h, Method::POST, "/v1/transit/decrypt/k").json(&json!({"batch_input": inputs})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let decrypted = body["data"]["batch_results"].as_array().unwrap();
    for (i, result) in decrypted.iter().enumerate() {
        assert_eq!(result["reference"], format!("r{i}"), "{result}");
        assert_eq!(
            result["plaintext"],
            B64.encode(format!("item-{i}")),
            "{result}"
        );
    }
    assert_eq!(decrypted.len(), 37);
    h.server.shutdown().await;
}
