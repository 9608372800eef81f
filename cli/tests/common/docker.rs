//! A compose cluster of real containers for the deploy and fault tests:
//! the image built by deploy/docker/build.sh, deploy/compose/cluster-3.yml
//! under a project name of its own, and `qk` against the published ports.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::{ok_output, stderr, stdout};

pub const NODES: [u16; 3] = [8201, 8202, 8203];

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Ok when a Docker engine and docker-compose answer; else why not.
pub fn docker_answers() -> Result<(), String> {
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
pub struct Project {
    pub name: String,
    pub image: String,
    pub pki: tempfile::TempDir,
}

impl Project {
    /// Builds the image (tagged for this test) and starts the 3-node file;
    /// returns once every node is ready. `what` names the test.
    pub fn build_and_start(what: &str) -> Project {
        let id = std::process::id();
        let p = Project {
            name: format!("qk{what}{id}"),
            image: format!("quorumkey:{what}-{id}"),
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
        p
    }

    pub fn compose(&self, args: &[&str]) -> Output {
        Command::new("docker-compose")
            .args(["-p", &self.name, "-f"])
            .arg(root().join("deploy/compose/cluster-3.yml"))
            .args(args)
            .env("QK_IMAGE", &self.image)
            .output()
            .expect("docker-compose runs")
    }

    pub fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.name)
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .args(args)
            .output()
            .expect("docker runs")
    }

    /// `qk` against the published API ports, as the admin client.
    pub fn qk(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let addr: Vec<String> = NODES
            .iter()
            .map(|p| format!("https://127.0.0.1:{p}"))
            .collect();
        self.qk_at(&addr.join(","), args, stdin)
    }

    /// `qk` against `addr` (comma-separated URLs), as the admin client.
    pub fn qk_at(&self, addr: &str, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let dir = self.pki.path();
        let mut all = vec![
            "--addr".to_owned(),
            addr.to_owned(),
            "--ca-cert".to_owned(),
            dir.join("ca.pem").display().to_string(),
            "--client-cert".to_owned(),
            dir.join("client-admin.pem").display().to_string(),
            "--client-key".to_owned(),
            dir.join("client-admin.key").display().to_string(),
        ];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        super::qk(dir, None, &refs, stdin)
    }

    pub fn ready(&self, port: u16) -> bool {
        let addr = format!("https://127.0.0.1:{port}");
        let ca = self.pki.path().join("ca.pem").display().to_string();
        super::qk(
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

    pub fn wait_ready(&self, ports: &[u16], what: &str) {
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

    pub fn copy_pki(&self) {
        let pki = self.container("pki");
        for file in ["ca.pem", "client-admin.pem", "client-admin.key"] {
            let to = self.pki.path().join(file).display().to_string();
            let from = format!("{pki}:/out/client-admin/{file}");
            ok_output("docker cp", self.docker(&["cp", &from, &to]));
        }
    }

    /// Whether `path` exists in `service`'s container (`docker cp` needs no
    /// shell, which the scratch image lacks).
    pub fn has_file(&self, service: &str, path: &str) -> bool {
        let to = tempfile::tempdir().expect("tempdir");
        let from = format!("{}:{path}", self.container(service));
        let copy = self.docker(&["cp", &from, &to.path().display().to_string()]);
        copy.status.success()
    }

    pub fn decrypts(&self, ciphertext: &[u8], extra: &[&str]) -> String {
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
