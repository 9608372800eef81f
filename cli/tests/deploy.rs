//! deploy/ across real containers: build the FROM-scratch image with
//! deploy/docker/build.sh, start deploy/compose/cluster-3.yml, and use the
//! cluster from the host with `qk` as the README does: status, a key, encrypt
//! and decrypt; then lose a node (`docker kill`), cut one off the network
//! (`docker network disconnect`), and restart the whole cluster with
//! `docker-compose down` and `up`, which must keep every key.
//!
//! Needs a Docker engine and docker-compose; where `docker info` does not
//! answer, the test says SKIPPED and why, and passes.

mod common;

use std::process::Command;
use std::time::Duration;

use common::docker::{docker_answers, root, Project, NODES};
use common::{ok_output, stderr, stdout};

#[test]
fn compose_cluster_serves_survives_node_loss_and_keeps_keys_across_restart() {
    if let Err(why) = docker_answers() {
        eprintln!("SKIPPED: the container test needs a Docker engine: {why}");
        return;
    }
    let p = Project::build_and_start("deploy");
    let status = stdout(&ok_output(
        "qk cluster status",
        p.qk(&["cluster", "status"], None),
    ));
    assert!(status.contains("leader:"), "{status}");
    ok_output("qk key create", p.qk(&["key", "create", "payments"], None));
    let ct = ok_output(
        "qk encrypt",
        p.qk(&["encrypt", "payments"], Some(b"card 4111")),
    );
    let ct = ct.stdout;
    assert_eq!(p.decrypts(&ct, &[]), "card 4111");
    each_node_holds_only_its_own_secrets(&p);
    vault_round_trip_with_curl(&p);

    // Node loss: a 2-of-3 key still decrypts with one node killed.
    ok_output("docker kill", p.docker(&["kill", &p.container("qk3")]));
    assert_eq!(p.decrypts(&ct, &["--server-side"]), "card 4111");
    ok_output("docker start", p.docker(&["start", &p.container("qk3")]));
    p.wait_ready(&NODES, "after restarting the killed node");

    // A partition: node 2 cut off the cluster network; nodes 1 and 3 serve.
    let network = format!("{}_cluster", p.name);
    let qk2 = p.container("qk2");
    ok_output(
        "network disconnect",
        p.docker(&["network", "disconnect", &network, &qk2]),
    );
    assert_eq!(p.decrypts(&ct, &["--server-side"]), "card 4111");
    ok_output(
        "network connect",
        p.docker(&["network", "connect", &network, &qk2]),
    );
    p.wait_ready(&NODES, "after the partition healed");

    // down and up again: the volumes keep every key and share.
    ok_output(
        "docker-compose down",
        p.compose(&["down", "--timeout", "20"]),
    );
    ok_output("docker-compose up again", p.compose(&["up", "-d"]));
    p.wait_ready(&NODES, "after down and up");
    assert_eq!(p.decrypts(&ct, &[]), "card 4111");
    let keys = stdout(&ok_output("qk key list", p.qk(&["key", "list"], None)));
    assert!(keys.contains("payments"), "{keys}");

    rolling_upgrade(&p, &ct);
}

/// A node container sees the CA certificate, its own certificate, key and
/// seal key, and nothing else of the PKI: not the CA key (which would mint
/// an admin certificate), not another node's key, not the admin's; and its
/// data volume holds no seal key, so a copy of it alone opens no share.
fn each_node_holds_only_its_own_secrets(p: &Project) {
    for (node, id) in [("qk1", 1), ("qk2", 2), ("qk3", 3)] {
        for own in ["ca.pem", &format!("node-{id}.key"), "seal.key"] {
            assert!(
                p.has_file(node, &format!("/pki/{own}")),
                "{node} lacks {own}"
            );
        }
        let other = id % 3 + 1;
        for foreign in [
            "/pki/ca.key".to_owned(),
            format!("/pki/node-{other}.key"),
            "/pki/client-admin.key".to_owned(),
            "/var/lib/quorumkey/seal.key".to_owned(),
        ] {
            assert!(!p.has_file(node, &foreign), "{node} can read {foreign}");
        }
    }
}

/// As the README shows Vault clients: a token from `qk token create`, then
/// Transit encrypt at node 2 and decrypt at node 3 with plain curl.
fn vault_round_trip_with_curl(p: &Project) {
    let token = common::token_printed(p.qk(&common::ADMIN_TOKEN_ARGS, None));
    let ca = p.pki.path().join("ca.pem");
    let curl = |port: u16, path: &str, body: serde_json::Value| -> serde_json::Value {
        let out = Command::new("curl")
            .args(["-sS", "--fail-with-body", "--cacert"])
            .arg(&ca)
            .args([
                "-H",
                &format!("X-Vault-Token: {token}"),
                "-d",
                &body.to_string(),
            ])
            .arg(format!("https://127.0.0.1:{port}/v1/transit/{path}"))
            .output()
            .expect("curl runs");
        let out = ok_output("curl", out);
        serde_json::from_slice(&out.stdout).expect("a JSON answer")
    };
    let plaintext = "Y2FyZCA0MTEx"; // base64 of "card 4111"
    let sealed = curl(
        NODES[1],
        "encrypt/payments",
        serde_json::json!({"plaintext": plaintext}),
    );
    let ciphertext = sealed["data"]["ciphertext"].as_str().expect("ciphertext");
    assert!(ciphertext.starts_with("vault:v1:"), "{sealed}");
    let opened = curl(
        NODES[2],
        "decrypt/payments",
        serde_json::json!({"ciphertext": ciphertext}),
    );
    assert_eq!(
        opened["data"]["plaintext"].as_str(),
        Some(plaintext),
        "{opened}"
    );
}

/// Replaces the nodes one at a time by containers of a new image while a
/// client keeps decrypting: every decrypt succeeds, at worst after retries.
fn rolling_upgrade(p: &Project, ct: &[u8]) {
    let next = format!("{}-next", p.image);
    ok_output("docker tag", p.docker(&["tag", &p.image, &next]));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (done, retried, failed) = std::thread::scope(|scope| {
        let client = scope.spawn(|| decrypt_until(p, ct, &stop));
        for (node, port) in ["qk1", "qk2", "qk3"].into_iter().zip(NODES) {
            let up = Command::new("docker-compose")
                .args(["-p", &p.name, "-f"])
                .arg(root().join("deploy/compose/cluster-3.yml"))
                .args(["up", "-d", "--no-deps", node])
                .env("QK_IMAGE", &next)
                .output()
                .expect("docker-compose runs");
            ok_output("docker-compose up (new image)", up);
            p.wait_ready(&[port], "after replacing a node");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        client.join().expect("the client thread ends")
    });
    eprintln!("rolling upgrade: {done} decrypts, {retried} needed a retry, {failed} failed");
    assert!(done > 0, "the client decrypted during the upgrade");
    assert_eq!(
        failed, 0,
        "decrypts failed even after retries during the upgrade"
    );
    for node in ["qk1", "qk2", "qk3"] {
        let image = p.docker(&["inspect", "-f", "{{.Config.Image}}", &p.container(node)]);
        assert_eq!(stdout(&image).trim(), next, "{node} runs the new image");
    }
    let _ = p.docker(&["rmi", "-f", &next]);
}

/// Decrypts `ct` server-side until `stop`: (decrypts, retried, failed),
/// where a decrypt fails only after 10 attempts 500 ms apart.
fn decrypt_until(p: &Project, ct: &[u8], stop: &std::sync::atomic::AtomicBool) -> (u32, u32, u32) {
    let (mut done, mut retried, mut failed) = (0, 0, 0);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let out = p.qk(&["decrypt", "--server-side", "--timeout", "10s"], Some(ct));
            if out.status.success() && stdout(&out) == "card 4111" {
                break;
            }
            if attempts == 10 {
                eprintln!("decrypt failed 10 times: {}", stderr(&out));
                failed += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        done += 1;
        retried += u32::from(attempts > 1);
    }
    (done, retried, failed)
}
