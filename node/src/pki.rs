//! `qk-node pki`: cluster CA and certificates.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use qk_net::pki::ClusterCa;

#[derive(Subcommand, Debug)]
pub enum PkiCommand {
    /// Create a new cluster CA in DIR (ca.pem, ca.key).
    ///
    /// Example: qk-node pki init --dir pki
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a node certificate (node-ID.pem, node-ID.key) from the CA in DIR.
    ///
    /// Example: qk-node pki issue-node --dir pki --id 2 --host 10.0.0.2
    IssueNode {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        id: u64,
        /// Host names or IP addresses the node is reached at (repeatable).
        #[arg(long = "host", default_value = "127.0.0.1")]
        hosts: Vec<String>,
    },
    /// Issue a client certificate (client-NAME.pem, client-NAME.key).
    ///
    /// Example: qk-node pki issue-client --dir pki --name admin
    IssueClient {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        name: String,
    },
    /// One-shot PKI of a whole cluster, for containers: a CA, node
    /// certificates 1..=NODES (host PREFIX<id>, 127.0.0.1 and localhost) and
    /// a client certificate. When DIR already holds the CA, it checks that
    /// every file is there and changes nothing, so it can run on every start.
    ///
    /// With --out, it also writes one directory per holder, so each node
    /// mounts only what it needs and never the CA key: OUT/node-ID (ca.pem,
    /// node-ID.pem, node-ID.key and the node's seal.key, created once) and
    /// OUT/client-NAME (ca.pem, client-NAME.pem, client-NAME.key).
    ///
    /// Example: qk-node pki cluster --dir /pki --nodes 3 --host-prefix qk --client admin --out /out
    Cluster {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=64))]
        nodes: u64,
        #[arg(long, default_value = "qk")]
        host_prefix: String,
        /// More names in every node certificate (repeatable); `{id}` is the
        /// node id and `{index}` the id minus one (a StatefulSet ordinal):
        /// --node-host 'quorumkey-{index}.quorumkey'
        #[arg(long = "node-host")]
        node_hosts: Vec<String>,
        #[arg(long, default_value = "admin")]
        client: String,
        /// Where to write the per-node and client directories.
        #[arg(long)]
        out: Option<PathBuf>,
        /// UID:GID to own what --out writes (when run as root, for a node
        /// that runs as another user).
        #[arg(long, value_parser = parse_owner)]
        owner: Option<(u32, u32)>,
    },
    /// Copy this node's files out of a directory holding every node's (a
    /// Kubernetes Secret mounted only into an init container) to the paths
    /// its config names, mode 0600: ca.pem to tls.ca_cert, node-ID.pem to
    /// tls.cert, node-ID.key to tls.key and node-ID.seal.key to
    /// seal.key_file (when set). ID is the config's node_id.
    ///
    /// Example: qk-node pki install --config /etc/quorumkey/quorumkey-0.toml --from /secret
    Install {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        from: PathBuf,
    },
}

fn parse_owner(text: &str) -> std::result::Result<(u32, u32), String> {
    let bad = || format!("--owner takes UID:GID in numbers, like 10001:10001; got {text:?}");
    let (uid, gid) = text.split_once(':').ok_or_else(bad)?;
    Ok((
        uid.parse().map_err(|_| bad())?,
        gid.parse().map_err(|_| bad())?,
    ))
}

pub fn run(cmd: PkiCommand) -> Result<()> {
    match cmd {
        PkiCommand::Init { dir } => {
            init(&dir)?;
            println!("cluster CA written to {}", dir.join("ca.pem").display());
        }
        PkiCommand::IssueNode { dir, id, hosts } => {
            let (cert, key) = issue_node(&dir, id, &hosts)?;
            println!("node {id}: {} {}", cert.display(), key.display());
        }
        PkiCommand::IssueClient { dir, name } => {
            let (cert, key) = issue_client(&dir, &name)?;
            println!("client {name}: {} {}", cert.display(), key.display());
        }
        PkiCommand::Cluster {
            dir,
            nodes,
            host_prefix,
            node_hosts,
            client,
            out,
            owner,
        } => {
            let hosts = NodeHosts {
                prefix: &host_prefix,
                templates: &node_hosts,
            };
            cluster(&dir, nodes, &hosts, &client)?;
            if let Some(out) = out {
                let bundles = Bundles {
                    dir: &dir,
                    out: &out,
                    owner,
                };
                bundles.write(nodes, &client)?;
                println!(
                    "per-node and client directories written to {}",
                    out.display()
                );
            }
        }
        PkiCommand::Install { config, from } => {
            let config = crate::config::Config::load(&config)?;
            for (from, to) in install_plan(&config, &from) {
                install_file(&from, &to)?;
                println!("{} -> {}", from.display(), to.display());
            }
        }
    }
    Ok(())
}

/// The files `pki cluster` writes into its directory.
fn cluster_files(nodes: u64, client: &str) -> Vec<String> {
    let mut files = vec!["ca.pem".to_owned(), "ca.key".to_owned()];
    for id in 1..=nodes {
        files.push(format!("node-{id}.pem"));
        files.push(format!("node-{id}.key"));
    }
    files.push(format!("client-{client}.pem"));
    files.push(format!("client-{client}.key"));
    files
}

/// The names in each node certificate besides 127.0.0.1 and localhost.
struct NodeHosts<'a> {
    prefix: &'a str,
    templates: &'a [String],
}

impl NodeHosts<'_> {
    fn of(&self, id: u64) -> Vec<String> {
        let mut hosts = vec![
            format!("{}{id}", self.prefix),
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
        ];
        hosts.extend(self.templates.iter().map(|t| {
            t.replace("{id}", &id.to_string())
                .replace("{index}", &(id - 1).to_string())
        }));
        hosts
    }
}

/// (source, destination) of each file `pki install` copies.
fn install_plan(config: &crate::config::Config, from: &Path) -> Vec<(PathBuf, PathBuf)> {
    let id = config.node_id;
    let mut plan = vec![
        (from.join("ca.pem"), config.tls.ca_cert.clone()),
        (from.join(format!("node-{id}.pem")), config.tls.cert.clone()),
        (from.join(format!("node-{id}.key")), config.tls.key.clone()),
    ];
    if let Some(seal) = &config.seal.key_file {
        plan.push((from.join(format!("node-{id}.seal.key")), seal.clone()));
    }
    plan
}

/// Copies `from` to `to` (replacing it), readable by the owner only.
fn install_file(from: &Path, to: &Path) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let bytes = zeroize::Zeroizing::new(
        std::fs::read(from).with_context(|| format!("cannot read {}", from.display()))?,
    );
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let _ = std::fs::remove_file(to);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)
        .with_context(|| format!("cannot create {}", to.display()))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", to.display()))
}

fn cluster(dir: &Path, nodes: u64, hosts: &NodeHosts, client: &str) -> Result<()> {
    if dir.join("ca.pem").exists() {
        let missing: Vec<String> = cluster_files(nodes, client)
            .into_iter()
            .filter(|f| !dir.join(f).is_file())
            .collect();
        if !missing.is_empty() {
            bail!(
                "{} holds a CA but not {}; issue them with `qk-node pki issue-node` and \
                 `issue-client`, or start from an empty directory",
                dir.display(),
                missing.join(", ")
            );
        }
        println!("{} already holds the cluster PKI; kept", dir.display());
        return Ok(());
    }
    init(dir)?;
    for id in 1..=nodes {
        issue_node(dir, id, &hosts.of(id))?;
    }
    issue_client(dir, client)?;
    println!(
        "cluster PKI for nodes 1..={nodes} and client {client} written to {}",
        dir.display()
    );
    Ok(())
}

/// The per-holder directories of `pki cluster --out`.
struct Bundles<'a> {
    dir: &'a Path,
    out: &'a Path,
    owner: Option<(u32, u32)>,
}

impl Bundles<'_> {
    fn write(&self, nodes: u64, client: &str) -> Result<()> {
        for id in 1..=nodes {
            let name = format!("node-{id}");
            let files = [format!("node-{id}.pem"), format!("node-{id}.key")];
            let holder = self.holder(&name, &files)?;
            let seal = holder.join("seal.key");
            if !seal.exists() {
                qk_storage::SealKey::create_key_file(&seal)
                    .with_context(|| format!("cannot create {}", seal.display()))?;
            }
            self.own(&seal)?;
        }
        let files = [
            format!("client-{client}.pem"),
            format!("client-{client}.key"),
        ];
        self.holder(&format!("client-{client}"), &files)?;
        Ok(())
    }

    /// OUT/NAME with ca.pem and `files` copied from the CA directory.
    fn holder(&self, name: &str, files: &[String]) -> Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let holder = self.out.join(name);
        std::fs::create_dir_all(&holder)
            .with_context(|| format!("cannot create {}", holder.display()))?;
        std::fs::set_permissions(&holder, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {}", holder.display()))?;
        self.own(&holder)?;
        for file in std::iter::once("ca.pem").chain(files.iter().map(String::as_str)) {
            let (from, to) = (self.dir.join(file), holder.join(file));
            std::fs::copy(&from, &to)
                .with_context(|| format!("cannot copy {} to {}", from.display(), to.display()))?;
            self.own(&to)?;
        }
        Ok(holder)
    }

    fn own(&self, path: &Path) -> Result<()> {
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).with_context(|| {
                format!(
                    "cannot give {} to {uid}:{gid}; run as root or drop --owner",
                    path.display()
                )
            })?;
        }
        Ok(())
    }
}

pub fn init(dir: &Path) -> Result<()> {
    if dir.join("ca.pem").exists() {
        bail!(
            "{} already holds a CA; refusing to overwrite it",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ca = ClusterCa::generate("quorumkey cluster CA").context("cannot generate the CA")?;
    ca.save(&dir.join("ca.pem"), &dir.join("ca.key"))
        .context("cannot save the CA")?;
    Ok(())
}

fn load_ca(dir: &Path) -> Result<ClusterCa> {
    ClusterCa::load(&dir.join("ca.pem"), &dir.join("ca.key")).with_context(|| {
        format!(
            "cannot load the CA from {}; create one with `qk-node pki init --dir {}`",
            dir.display(),
            dir.display()
        )
    })
}

pub fn issue_node(dir: &Path, id: u64, hosts: &[String]) -> Result<(PathBuf, PathBuf)> {
    let ca = load_ca(dir)?;
    let issued = ca
        .issue_node(id, hosts)
        .context("cannot issue the node certificate")?;
    let cert = dir.join(format!("node-{id}.pem"));
    let key = dir.join(format!("node-{id}.key"));
    issued
        .save(&cert, &key)
        .context("cannot save the node certificate")?;
    Ok((cert, key))
}

pub fn issue_client(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
    let ca = load_ca(dir)?;
    let issued = ca
        .issue_client(name)
        .context("cannot issue the client certificate")?;
    let cert = dir.join(format!("client-{name}.pem"));
    let key = dir.join(format!("client-{name}.key"));
    issued
        .save(&cert, &key)
        .context("cannot save the client certificate")?;
    Ok((cert, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    const QK: NodeHosts = NodeHosts {
        prefix: "qk",
        templates: &[],
    };

    #[test]
    fn node_host_templates_name_the_id_and_the_ordinal() {
        let templates = ["quorumkey-{index}.quorumkey".to_owned(), "n{id}".to_owned()];
        let hosts = NodeHosts {
            prefix: "qk",
            templates: &templates,
        };
        assert_eq!(
            hosts.of(2),
            [
                "qk2",
                "127.0.0.1",
                "localhost",
                "quorumkey-1.quorumkey",
                "n2"
            ]
        );
    }

    /// `pki install` takes only the node's own files, to its config's
    /// paths, owner-only, and replaces what a previous start left.
    #[test]
    fn install_copies_only_this_nodes_files_privately() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = dir.path().join("secret");
        std::fs::create_dir_all(&secret).expect("mkdir");
        for f in [
            "ca.pem",
            "node-1.pem",
            "node-1.key",
            "node-2.pem",
            "node-2.key",
        ] {
            std::fs::write(secret.join(f), f).expect("write");
        }
        std::fs::write(secret.join("node-2.seal.key"), [7u8; 32]).expect("write");
        let config_text = "node_id = 2\ndata_dir = \"data\"\nlisten = \"127.0.0.1:7100\"\n\
             [tls]\nca_cert = \"pki/ca.pem\"\ncert = \"pki/node.pem\"\nkey = \"pki/node.key\"\n\
             [seal]\nkey_file = \"pki/seal.key\"\n";
        let config_path = dir.path().join("node.toml");
        std::fs::write(&config_path, config_text).expect("config");
        let config = crate::config::Config::load(&config_path).expect("config loads");
        let plan = install_plan(&config, &secret);
        assert_eq!(plan.len(), 4);
        for (from, to) in &plan {
            install_file(from, to).expect("first install");
            install_file(from, to).expect("a restart installs again");
        }
        let pki = dir.path().join("pki");
        assert_eq!(
            std::fs::read(pki.join("node.key")).expect("key"),
            b"node-2.key"
        );
        assert_eq!(std::fs::read(pki.join("ca.pem")).expect("ca"), b"ca.pem");
        let mut names: Vec<String> = std::fs::read_dir(&pki)
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["ca.pem", "node.key", "node.pem", "seal.key"]);
        let mode = std::fs::metadata(pki.join("seal.key"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        qk_storage::SealKey::load_key_file(&pki.join("seal.key")).expect("seal key loads");
        std::fs::remove_file(secret.join("node-2.key")).expect("remove");
        let missing = install_file(&secret.join("node-2.key"), &pki.join("node.key"));
        assert!(missing
            .expect_err("named")
            .to_string()
            .contains("node-2.key"));
    }

    #[test]
    fn cluster_pki_is_written_once_then_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = dir.path().join("pki");
        cluster(&pki, 3, &QK, "admin").expect("first run writes");
        let files = cluster_files(3, "admin");
        assert_eq!(files.len(), 10);
        for f in &files {
            assert!(pki.join(f).is_file(), "{f}");
        }
        let ca = std::fs::read(pki.join("ca.pem")).expect("ca");
        cluster(&pki, 3, &QK, "admin").expect("second run keeps");
        assert_eq!(std::fs::read(pki.join("ca.pem")).expect("ca"), ca);
        std::fs::remove_file(pki.join("node-2.key")).expect("remove");
        let e = cluster(&pki, 3, &QK, "admin").expect_err("a missing file is named");
        assert!(e.to_string().contains("node-2.key"), "{e}");
    }

    /// Each node's directory holds its own key and seal key, never the CA
    /// key or another node's key; the seal key survives a second run.
    #[test]
    fn each_holder_gets_only_its_own_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let (pki, out) = (dir.path().join("pki"), dir.path().join("out"));
        cluster(&pki, 3, &QK, "admin").expect("pki");
        let bundles = Bundles {
            dir: &pki,
            out: &out,
            owner: None,
        };
        bundles.write(3, "admin").expect("bundles");
        let listing = |name: &str| {
            let mut names: Vec<String> = std::fs::read_dir(out.join(name))
                .expect("read_dir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        };
        assert_eq!(
            listing("node-2"),
            ["ca.pem", "node-2.key", "node-2.pem", "seal.key"]
        );
        assert_eq!(
            listing("client-admin"),
            ["ca.pem", "client-admin.key", "client-admin.pem"]
        );
        let mode = std::fs::metadata(out.join("node-2"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let seal = std::fs::read(out.join("node-2/seal.key")).expect("seal");
        assert_eq!(seal.len(), 32);
        assert_ne!(
            seal,
            std::fs::read(out.join("node-3/seal.key")).expect("seal")
        );
        bundles.write(3, "admin").expect("second run");
        assert_eq!(
            seal,
            std::fs::read(out.join("node-2/seal.key")).expect("seal")
        );
        qk_storage::SealKey::load_key_file(&out.join("node-2/seal.key")).expect("loads");
    }
}
