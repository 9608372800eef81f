//! deploy/kubernetes: every manifest parses, and the fields the node relies
//! on agree with each other and with the per-pod configs: names, ports,
//! mount paths, the start of each pod (bootstrap or join), the PKI mounted
//! only into the init container, and the hardened security context.

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

fn pod_env_is_its_name(container: &Yaml) {
    let env = named(&container["env"], "POD_NAME");
    assert_eq!(
        env["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
        Some("metadata.name"),
        "$(POD_NAME) must be the pod's own name"
    );
}

fn hardened(container: &Yaml) {
    let sc = &container["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(strs(&sc["capabilities"]["drop"]), ["ALL"]);
}

/// Each pod's config, parsed as the node parses it.
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

#[test]
fn kubernetes_manifests_agree_with_the_node_configs() {
    let docs = manifests();
    let sts = one(&docs, "StatefulSet", "quorumkey");
    let spec = &sts["spec"];
    let pod = &spec["template"]["spec"];
    let labels = &spec["template"]["metadata"]["labels"];
    let app = labels["app.kubernetes.io/name"]
        .as_str()
        .expect("app label");

    // Names and selectors.
    let headless = one(
        &docs,
        "Service",
        spec["serviceName"].as_str().expect("serviceName"),
    );
    assert_eq!(headless["spec"]["clusterIP"].as_str(), Some("None"));
    assert_eq!(
        headless["spec"]["publishNotReadyAddresses"].as_bool(),
        Some(true)
    );
    assert_eq!(spec["podManagementPolicy"].as_str(), Some("Parallel"));
    let pdb = one(&docs, "PodDisruptionBudget", "quorumkey");
    for selector in [
        &spec["selector"]["matchLabels"],
        &headless["spec"]["selector"],
        &one(&docs, "Service", "quorumkey-api")["spec"]["selector"],
        &pdb["spec"]["selector"]["matchLabels"],
    ] {
        assert_eq!(selector["app.kubernetes.io/name"].as_str(), Some(app));
    }

    // Containers: the node and the init container that installs its PKI.
    let node = named(&pod["containers"], "node");
    let init = named(&pod["initContainers"], "pki");
    let (config_dir, pki_dir, data_dir, secret_dir) = (
        mount_path(node, "config"),
        mount_path(node, "pki"),
        mount_path(node, "data"),
        mount_path(init, "secret"),
    );
    let config_file = format!("{config_dir}/$(POD_NAME).toml");
    assert_eq!(strs(&node["args"]), ["start", "--config", &config_file]);
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
    assert_eq!(mount_path(init, "config"), config_dir);
    assert_eq!(mount_path(init, "pki"), pki_dir);
    pod_env_is_its_name(node);
    pod_env_is_its_name(init);
    assert!(
        mount(node, "secret").is_none(),
        "the node must not see every node's keys"
    );
    assert_eq!(
        mount(node, "pki").expect("pki")["readOnly"].as_bool(),
        Some(true)
    );
    let secret = named(&pod["volumes"], "secret");
    assert_eq!(
        secret["secret"]["secretName"].as_str(),
        Some("quorumkey-pki")
    );
    assert_eq!(
        named(&pod["volumes"], "pki")["emptyDir"]["medium"].as_str(),
        Some("Memory")
    );
    let claims: Vec<&str> = list(&spec["volumeClaimTemplates"])
        .iter()
        .filter_map(|c| c["metadata"]["name"].as_str())
        .collect();
    assert_eq!(claims, ["data"]);

    // Security: the image's unprivileged user, no API token, hardened.
    assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(false));
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(
        pod["securityContext"]["runAsUser"].as_i64(),
        Some(NODE_USER)
    );
    hardened(node);
    hardened(init);

    // Ports agree with the configs and the headless Service.
    let (cluster_port, cluster_protocol) = port(node, "cluster");
    let (api_port, _) = port(node, "api");
    assert_eq!(cluster_protocol, "UDP", "Raft and cluster RPCs are QUIC");
    let service_port = named(&headless["spec"]["ports"], "cluster");
    assert_eq!(service_port["port"].as_i64(), Some(cluster_port));
    assert_eq!(service_port["protocol"].as_str(), Some("UDP"));
    let probe = strs(&node["readinessProbe"]["exec"]["command"]);
    assert!(
        probe.contains(&format!("https://127.0.0.1:{api_port}").as_str()),
        "{probe:?}"
    );

    // One config per replica; pod quorumkey-N is node N+1; pod 0 bootstraps.
    let replicas = spec["replicas"].as_i64().expect("replicas");
    let configs = configs(one(&docs, "ConfigMap", "quorumkey-config"));
    assert_eq!(configs.len() as i64, replicas);
    let headless_name = headless["metadata"]["name"].as_str().expect("name");
    let first = format!("quorumkey-0.{headless_name}:{cluster_port}");
    for (ordinal, (file, c)) in configs.iter().enumerate() {
        let pod_name = format!("quorumkey-{ordinal}");
        let host = format!("{pod_name}.{headless_name}");
        assert_eq!(file, &format!("{pod_name}.toml"));
        assert_eq!(c.node_id, ordinal as u64 + 1, "{file}");
        assert_eq!(c.listen.port() as i64, cluster_port, "{file}");
        assert_eq!(
            c.api_listen.map(|a| a.port() as i64),
            Some(api_port),
            "{file}"
        );
        assert_eq!(
            c.advertise_addr(),
            format!("{host}:{cluster_port}"),
            "{file}"
        );
        assert_eq!(c.api_url(), format!("https://{host}:{api_port}"), "{file}");
        assert_eq!(c.data_dir, Path::new(&data_dir), "{file}");
        for path in [&c.tls.ca_cert, &c.tls.cert, &c.tls.key] {
            assert!(path.starts_with(&pki_dir), "{file}: {}", path.display());
        }
        let seal = c.seal.key_file.as_ref().expect("a seal key file");
        assert!(
            seal.starts_with(&pki_dir),
            "{file}: the seal key is off the data volume"
        );
        assert!(
            probe.contains(&c.tls.ca_cert.to_str().expect("utf-8")),
            "{probe:?}"
        );
        if ordinal == 0 {
            assert!(
                c.start.bootstrap && c.start.join.is_none(),
                "{file} bootstraps"
            );
        } else {
            assert!(!c.start.bootstrap, "{file}: only pod 0 bootstraps");
            assert_eq!(c.start.join.as_deref(), Some(first.as_str()), "{file}");
        }
    }
    // A voluntary disruption never takes the majority.
    let max_unavailable = pdb["spec"]["maxUnavailable"]
        .as_i64()
        .expect("maxUnavailable");
    assert!(max_unavailable >= 1 && max_unavailable <= replicas - (replicas / 2 + 1));
}
