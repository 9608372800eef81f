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

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{ok_output, stderr, stdout};

const NODES: [u16; 3] = [8201, 8202, 8203];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn docker_answers() -> Result<(), String> {
    let info = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if !info.status.success() {
        return Err(format!("docker info failed: {}", stderr(&info).trim()));
    }
    let compose = Command::new("docker-compose").arg("version").output();
    match compose {
        Ok(o) if o.status.success() => Ok(()),
        _ => Err("docker-compose is not installed".into()),
    }
}

/// The compose project of this test; `down -v` and the image removal on drop.
struct Project {
    name: String,
    image: String,
    pki: tempfile::TempDir,
}

impl Project {
    fn compose(&self, args: &[&str]) -> Output {
        Command::new("docker-compose")
            .args(["-p", &self.name, "-f"])
            .arg(root().join("deploy/compose/cluster-3.yml"))
            .args(args)
            .env("QK_IMAGE", &self.image)
            .output()
            .expect("docker-compose runs")
    }

    fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.name)
    }

    fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .args(args)
            .output()
            .expect("docker runs")
    }

    /// `qk` against the published API ports, as the admin client.
    fn qk(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let addr: Vec<String> = NODES
            .iter()
            .map(|p| format!("https://127.0.0.1:{p}"))
            .collect();
        let dir = self.pki.path();
        let mut all = vec![
            "--addr".to_owned(),
            addr.join(","),
            "--ca-cert".to_owned(),
            dir.join("ca.pem").display().to_string(),
            "--client-cert".to_owned(),
            dir.join("client-admin.pem").display().to_string(),
            "--client-key".to_owned(),
            dir.join("client-admin.key").display().to_string(),
        ];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        common::qk(dir, None, &refs, stdin)
    }

    fn ready(&self, port: u16) -> bool {
        let addr = format!("https://127.0.0.1:{port}");
        let ca = self.pki.path().join("ca.pem").display().to_string();
        common::qk(
            self.pki.path(),
            None,
            &[
                "cluster",
                "ready",
                "--addr",
                &addr,
                "--ca-cert",
                &ca,
                "--timeout",
                "3s",
            ],
            None,
        )
        .status
        .success()
    }

    fn wait_ready(&self, ports: &[u16], what: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !ports.iter().all(|p| self.ready(*p)) {
            assert!(
                Instant::now() < deadline,
                "{what}: nodes {ports:?} not ready within 120 s:\n{}",
                stdout(&self.compose(&["logs", "--tail", "30"]))
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn copy_pki(&self) {
        let pki = self.container("pki");
        for file in ["ca.pem", "client-admin.pem", "client-admin.key"] {
            let to = self.pki.path().join(file).display().to_string();
            let from = format!("{pki}:/pki/{file}");
            ok_output("docker cp", self.docker(&["cp", &from, &to]));
        }
    }

    fn decrypts(&self, ciphertext: &[u8], extra: &[&str]) -> String {
        let mut args = vec!["decrypt"];
        args.extend(extra);
        stdout(&ok_output("qk decrypt", self.qk(&args, Some(ciphertext))))
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let down = self.compose(&["down", "-v", "--timeout", "5"]);
        if !down.status.success() {
            eprintln!("docker-compose down failed: {}", stderr(&down));
        }
        let _ = self.docker(&["rmi", "-f", &self.image]);
    }
}

#[test]
fn compose_cluster_serves_survives_node_loss_and_keeps_keys_across_restart() {
    if let Err(why) = docker_answers() {
        eprintln!("SKIPPED: the container test needs a Docker engine: {why}");
        return;
    }
    let id = std::process::id();
    let p = Project {
        name: format!("qktest{id}"),
        image: format!("quorumkey:test-{id}"),
        pki: tempfile::tempdir().expect("tempdir"),
    };
    let started = Instant::now();
    let build = Command::new("bash")
        .arg(root().join("deploy/docker/build.sh"))
        .arg(&p.image)
        .output()
        .expect("build.sh runs");
    ok_output("deploy/docker/build.sh", build);
    eprintln!("image built in {:?}", started.elapsed());

    ok_output("docker-compose up", p.compose(&["up", "-d"]));
    p.copy_pki();
    p.wait_ready(&NODES, "after up");
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
