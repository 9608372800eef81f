//! deploy/kubernetes: every manifest parses, and the fields the node relies
//! on agree with each other and with the per-node configs: names, ports,
//! mount paths, the start of each node (bootstrap or join), a Secret of its
//! own per node mounted only into the init container, and the hardened
//! security context.

use std::path::{Path, PathBuf};

use qk_node::config::Config;
use yaml_rust2::{Yaml, YamlLoader};

const NODE_USER: i64 = 10001;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// Every document of every manifest, by kind.
fn manifests() -> Vec<Yaml> {
    let mut docs = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir())
        .expect("deploy/kubernetes exists")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable");
        let parsed = YamlLoader::load_from_str(&text)
            .unwrap_or_else(|e| panic!("{} does not parse: {e}", file.display()));
        for doc in parsed {
            assert!(
                doc["kind"].as_str().is_some(),
                "{}: a document without kind",
                file.display()
            );
            docs.push(doc);
        }
    }
    docs
}

fn one<'a>(docs: &'a [Yaml], kind: &str, name: &str) -> &'a Yaml {
    let found: Vec<&Yaml> = docs
        .iter()
        .filter(|d| {
            d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name)
        })
        .collect();
    assert_eq!(found.len(), 1, "exactly one {kind} {name}");
    found[0]
}

fn list(y: &Yaml) -> &[Yaml] {
    y.as_vec().map_or(&[], Vec::as_slice)
}

fn strs(y: &Yaml) -> Vec<&str> {
    list(y).iter().filter_map(Yaml::as_str).collect()
}

fn named<'a>(items: &'a Yaml, name: &str) -> &'a Yaml {
    list(items)
        .iter()
        .find(|i| i["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no item named {name}"))
}

/// Mount path of volume `volume` in `container`, if mounted.
fn mount<'a>(container: &'a Yaml, volume: &str) -> Option<&'a Yaml> {
    list(&container["volumeMounts"])
        .iter()
        .find(|m| m["name"].as_str() == Some(volume))
}

fn mount_path(container: &Yaml, volume: &str) -> String {
    let m = mount(container, volume).unwrap_or_else(|| panic!("{volume} is not mounted"));
    m["mountPath"].as_str().expect("mountPath").to_owned()
}

fn port(container: &Yaml, name: &str) -> (i64, String) {
    let p = named(&container["ports"], name);
    let protocol = p["protocol"].as_str().unwrap_or("TCP").to_owned();
    (
        p["containerPort"].as_i64().expect("containerPort"),
        protocol,
    )
}

fn hardened(container: &Yaml) {
    let sc = &container["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"]);
}

/// Each node's config file, parsed as the node parses it, by file name.
fn configs(config_map: &Yaml) -> Vec<(String, Config)> {
    let data = config_map["data"].as_hash().expect("data");
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut out: Vec<(String, Config)> = data
        .iter()
        .map(|(name, text)| {
            let name = name.as_str().expect("file name").to_owned();
            let path = tmp.path().join(&name);
            std::fs::write(&path, text.as_str().expect("text")).expect("write");
            let config = Config::load(&path).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            (name, config)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// What one node's StatefulSet says, checked on the way.
struct NodeSet {
    id: u64,
    config_file: String,
    secret: String,
    data_dir: String,
    pki_dir: String,
    cluster_port: i64,
    api_port: i64,
    probe: Vec<String>,
}

fn node_set(sts: &Yaml, headless: &str) -> NodeSet {
    let name = sts["metadata"]["name"].as_str().expect("name");
    let id: u64 = name
        .strip_prefix("quorumkey-")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("StatefulSet {name} is not quorumkey-<node id>"));
    let spec = &sts["spec"];
    assert_eq!(
        spec["replicas"].as_i64(),
        Some(1),
        "{name}: one pod per node"
    );
    assert_eq!(spec["serviceName"].as_str(), Some(headless), "{name}");
    let pod = &spec["template"]["spec"];
    let node = named(&pod["containers"], "node");
    let init = named(&pod["initContainers"], "pki");

    // The config: one file of the ConfigMap, mounted as node.toml.
    let config_dir = mount_path(node, "config");
    assert_eq!(mount_path(init, "config"), config_dir, "{name}");
    let config_file = format!("{config_dir}/node.toml");
    let items = list(&named(&pod["volumes"], "config")["configMap"]["items"]);
    assert_eq!(items.len(), 1, "{name} mounts exactly its own config");
    assert_eq!(items[0]["path"].as_str(), Some("node.toml"));
    assert_eq!(strs(&node["args"]), ["start", "--config", &config_file]);

    // The PKI: its own Secret, mounted only into the init container.
    let secret_dir = mount_path(init, "secret");
    assert_eq!(
        strs(&init["args"]),
        [
            "pki",
            "install",
            "--config",
            &config_file,
            "--from",
            &secret_dir
        ]
    );
    assert!(
        mount(node, "secret").is_none(),
        "{name}: the node must not mount the Secret"
    );
    let pki_dir = mount_path(node, "pki");
    assert_eq!(mount_path(init, "pki"), pki_dir);
    assert_eq!(
        mount(node, "pki").expect("pki")["readOnly"].as_bool(),
        Some(true)
    );
    assert_eq!(
        named(&pod["volumes"], "pki")["emptyDir"]["medium"].as_str(),
        Some("Memory")
    );
    let secret = named(&pod["volumes"], "secret")["secret"]["secretName"]
        .as_str()
        .expect("secretName")
        .to_owned();

    // Security: the image's unprivileged user, no API token, hardened.
    assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(false));
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(
        pod["securityContext"]["runAsUser"].as_i64(),
        Some(NODE_USER)
    );
    hardened(node);
    hardened(init);

    let (cluster_port, cluster_protocol) = port(node, "cluster");
    assert_eq!(cluster_protocol, "UDP", "Raft and cluster RPCs are QUIC");
    let claims: Vec<&str> = list(&spec["volumeClaimTemplates"])
        .iter()
        .filter_map(|c| c["metadata"]["name"].as_str())
        .collect();
    assert_eq!(claims, ["data"]);
    NodeSet {
        id,
        config_file: items[0]["key"].as_str().expect("key").to_owned(),
        secret,
        data_dir: mount_path(node, "data"),
        pki_dir,
        cluster_port,
        api_port: port(node, "api").0,
        probe: strs(&node["readinessProbe"]["exec"]["command"])
            .into_iter()
            .map(str::to_owned)
            .collect(),
    }
}

/// The node's config agrees with its StatefulSet.
fn config_agrees(set: &NodeSet, c: &Config, headless: &str, first: &str) {
    let file = &set.config_file;
    let host = format!("quorumkey-{}-0.{headless}", set.id);
    assert_eq!(c.node_id, set.id, "{file}");
    assert_eq!(c.listen.port() as i64, set.cluster_port, "{file}");
    assert_eq!(
        c.api_listen.map(|a| a.port() as i64),
        Some(set.api_port),
        "{file}"
    );
    assert_eq!(
        c.advertise_addr(),
        format!("{host}:{}", set.cluster_port),
        "{file}"
    );
    assert_eq!(
        c.api_url(),
        format!("https://{host}:{}", set.api_port),
        "{file}"
    );
    assert_eq!(c.data_dir, Path::new(&set.data_dir), "{file}");
    for path in [&c.tls.ca_cert, &c.tls.cert, &c.tls.key] {
        assert!(path.starts_with(&set.pki_dir), "{file}: {}", path.display());
    }
    let seal = c.seal.key_file.as_ref().expect("a seal key file");
    assert!(
        seal.starts_with(&set.pki_dir),
        "{file}: the seal key is off the data volume"
    );
    let ca = c.tls.ca_cert.to_str().expect("utf-8");
    assert!(set.probe.iter().any(|a| a == ca), "{:?}", set.probe);
    let api = format!("https://127.0.0.1:{}", set.api_port);
    assert!(set.probe.contains(&api), "{:?}", set.probe);
    if set.id == 1 {
        assert!(
            c.start.bootstrap && c.start.join.is_none(),
            "{file} bootstraps"
        );
    } else {
        assert!(!c.start.bootstrap, "{file}: only node 1 bootstraps");
        assert_eq!(c.start.join.as_deref(), Some(first), "{file}");
    }
}

#[test]
fn kubernetes_manifests_agree_with_the_node_configs() {
    let docs = manifests();
    let headless = one(&docs, "Service", "quorumkey");
    let headless_name = "quorumkey";
    assert_eq!(headless["spec"]["clusterIP"].as_str(), Some("None"));
    assert_eq!(
        headless["spec"]["publishNotReadyAddresses"].as_bool(),
        Some(true)
    );
    let pdb = one(&docs, "PodDisruptionBudget", "quorumkey");
    let sets: Vec<NodeSet> = docs
        .iter()
        .filter(|d| d["kind"].as_str() == Some("StatefulSet"))
        .map(|sts| {
            let labels = &sts["spec"]["template"]["metadata"]["labels"];
            let app = labels["app.kubernetes.io/name"].as_str();
            for selector in [
                &headless["spec"]["selector"],
                &one(&docs, "Service", "quorumkey-api")["spec"]["selector"],
                &pdb["spec"]["selector"]["matchLabels"],
            ] {
                assert_eq!(selector["app.kubernetes.io/name"].as_str(), app);
            }
            node_set(sts, headless_name)
        })
        .collect();
    let ids: Vec<u64> = sets.iter().map(|s| s.id).collect();
    assert_eq!(
        ids,
        (1..=sets.len() as u64).collect::<Vec<_>>(),
        "node ids 1..n in order"
    );
    assert!(sets.len() >= 3);
    let secrets: std::collections::BTreeSet<&str> =
        sets.iter().map(|s| s.secret.as_str()).collect();
    assert_eq!(secrets.len(), sets.len(), "no two nodes share a Secret");

    let service_port = named(&headless["spec"]["ports"], "cluster");
    assert_eq!(service_port["port"].as_i64(), Some(sets[0].cluster_port));
    assert_eq!(service_port["protocol"].as_str(), Some("UDP"));

    let configs = configs(one(&docs, "ConfigMap", "quorumkey-config"));
    assert_eq!(configs.len(), sets.len());
    let first = format!("quorumkey-1-0.{headless_name}:{}", sets[0].cluster_port);
    for set in &sets {
        let (_, config) = configs
            .iter()
            .find(|(file, _)| *file == set.config_file)
            .unwrap_or_else(|| panic!("no {} in the ConfigMap", set.config_file));
        config_agrees(set, config, headless_name, &first);
    }
    // A voluntary disruption never takes the majority.
    let n = sets.len() as i64;
    let max_unavailable = pdb["spec"]["maxUnavailable"]
        .as_i64()
        .expect("maxUnavailable");
    assert!(max_unavailable >= 1 && max_unavailable <= n - (n / 2 + 1));
}
