//! End to end through the HTTPS API: `qk dev up` a 3-node cluster, create a
//! key, encrypt, decrypt client- and server-side (with one node down too),
//! rotate, rewrap, audit export + offline verify, destroy, `qk dev down`.

mod common;

use common::{stderr, Cluster, EXIT_DENIED, EXIT_INVALID};

/// A cluster of `nodes` on ports of its own: distinct per test of this
/// process (they run in parallel) and per process.
fn up(nodes: u32) -> Cluster {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let slot = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let base = 21_000 + (std::process::id() % 150) * 20 + slot * 10;
    Cluster::up(nodes, u16::try_from(base).expect("port"))
}

impl Cluster {
    /// Runs `qk args` in the cluster's working directory; asserts success.
    fn ok(&self, args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
        let out = self.run(None, args, stdin);
        assert!(
            out.status.success(),
            "qk {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).expect("utf-8")
}

#[test]
fn key_lifecycle_and_data_through_the_cli() {
    let c = up(3);
    let status = text(c.ok(&["cluster", "status", "-o", "json"], None));
    assert!(status.contains("\"leader\""), "{status}");

    c.ok(
        &[
            "key",
            "create",
            "payments",
            "--description",
            "e2e",
            "--threshold",
            "2",
            "--rotate-every",
            "30d",
        ],
        None,
    );
    let list = text(c.ok(&["key", "list"], None));
    assert!(
        list.contains("payments") && list.contains("enabled"),
        "{list}"
    );

    let ct = text(c.ok(
        &["encrypt", "payments", "--context", "tenant=acme"],
        Some(b"card 4111"),
    ));
    assert!(ct.starts_with("qk:v1:"), "{ct}");
    let client_side = c.ok(
        &["decrypt", "--context", "tenant=acme"],
        Some(ct.as_bytes()),
    );
    assert_eq!(client_side, b"card 4111");
    let server_side = c.ok(
        &["decrypt", "--server-side", "--context", "tenant=acme"],
        Some(ct.as_bytes()),
    );
    assert_eq!(server_side, b"card 4111");

    // Wrong context: refused with a nonzero exit.
    let bad = c.run(
        None,
        &["decrypt", "--context", "tenant=evil"],
        Some(ct.as_bytes()),
    );
    assert_eq!(bad.status.code(), Some(EXIT_INVALID), "{}", stderr(&bad));

    // One holder down: 2 of 3 still decrypt.
    c.ok(
        &[
            "dev",
            "node",
            "stop",
            "3",
            "--dir",
            c.dir.to_str().unwrap_or_default(),
        ],
        None,
    );
    let degraded = c.ok(
        &["decrypt", "--context", "tenant=acme"],
        Some(ct.as_bytes()),
    );
    assert_eq!(degraded, b"card 4111");
    c.ok(
        &[
            "dev",
            "node",
            "start",
            "3",
            "--dir",
            c.dir.to_str().unwrap_or_default(),
        ],
        None,
    );

    c.ok(&["key", "rotate", "payments"], None);
    let show = text(c.ok(&["key", "show", "payments", "-o", "json"], None));
    assert!(show.contains("\"primary_version\": 2"), "{show}");
    let rewrapped = text(c.ok(&["rewrap", "--context", "tenant=acme"], Some(ct.as_bytes())));
    let again = c.ok(
        &["decrypt", "--context", "tenant=acme"],
        Some(rewrapped.as_bytes()),
    );
    assert_eq!(again, b"card 4111");

    // A share refresh: every version's holders move to a new epoch, and
    // what was encrypted before still decrypts.
    let refreshed = text(c.ok(&["key", "refresh", "payments", "-o", "json"], None));
    let view: serde_json::Value = serde_json::from_str(&refreshed).expect("key JSON");
    let epochs: Vec<u64> = view["versions"]
        .as_array()
        .map(|vs| vs.iter().filter_map(|v| v["epoch"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(epochs, [1, 1], "{refreshed}");
    let after = c.ok(
        &["decrypt", "--context", "tenant=acme"],
        Some(ct.as_bytes()),
    );
    assert_eq!(after, b"card 4111");
    // Every key at once: payments' two versions move to epoch 2.
    let all = text(c.ok(&["key", "refresh", "--all", "-o", "json"], None));
    let outcomes: serde_json::Value = serde_json::from_str(&all).expect("refresh JSON");
    let payments = outcomes
        .as_array()
        .and_then(|list| list.iter().find(|o| o["name"] == "payments"))
        .unwrap_or_else(|| panic!("payments refreshed: {all}"));
    assert!(payments["error"].is_null(), "{all}");
    assert_eq!(
        payments["epochs"],
        serde_json::json!([[1, 2], [2, 2]]),
        "{all}"
    );
    let refused = c.run(None, &["key", "refresh", "--all", "payments"], None);
    assert_eq!(
        refused.status.code(),
        Some(2),
        "--all with a name is a usage error"
    );

    let dk = text(c.ok(&["datakey", "payments", "-o", "json"], None));
    assert!(
        dk.contains("\"plaintext\"") && dk.contains("\"ciphertext\""),
        "{dk}"
    );

    let export = c.cwd().join("audit.jsonl");
    c.ok(
        &[
            "audit",
            "export",
            "--out",
            export.to_str().unwrap_or_default(),
        ],
        None,
    );
    c.ok(
        &[
            "audit",
            "verify",
            "--file",
            export.to_str().unwrap_or_default(),
        ],
        None,
    );
    c.ok(&["audit", "verify"], None);

    let destroyed = text(c.ok(
        &["key", "destroy", "payments", "--after", "1s", "-o", "json"],
        None,
    ));
    assert!(
        destroyed.contains("pending-destruction") || destroyed.contains("destroy"),
        "{destroyed}"
    );
}

#[test]
fn tokens_principals_and_whoami() {
    let c = up(1);
    c.ok(
        &["principal", "create", "alice", "--role", "key-user"],
        None,
    );
    let token = text(c.ok(
        &["token", "create", "--principal", "alice", "--ttl", "1h"],
        None,
    ));
    let token = token.trim();
    assert!(token.starts_with("qkt."), "the token line");
    let me = text(c.ok(&["token", "whoami", "--token", token, "-o", "json"], None));
    assert!(me.contains("\"alice\""), "{me}");
    // key-user may not create keys.
    let denied = c.run(None, &["key", "create", "nope", "--token", token], None);
    assert_eq!(denied.status.code(), Some(EXIT_DENIED));
    assert!(String::from_utf8_lossy(&denied.stderr).contains("denied"));
    // Nor turn the cluster's request shares on or off.
    let args = ["cluster", "enable-request-shares", "--token", token];
    let denied = c.run(None, &args, None);
    assert_eq!(denied.status.code(), Some(EXIT_DENIED));
}

/// A new cluster counts each principal's share of the request memory from
/// its bootstrap; turning it on again is harmless and says so.
#[test]
fn a_new_cluster_has_request_shares_on() {
    let c = up(1);
    let status = text(c.ok(&["cluster", "status", "-o", "json"], None));
    let status: serde_json::Value = serde_json::from_str(&status).expect("json");
    let memory = &status["request_memory"];
    assert_eq!(memory["shares_enabled"], true, "{status}");
    assert_eq!(memory["fresh_limit"], 400_000, "{status}");
    assert!(
        memory["remembered"].as_u64().is_some_and(|n| n > 0),
        "{status}"
    );
    let again = text(c.ok(&["cluster", "enable-request-shares"], None));
    assert!(again.contains("per-principal shares on"), "{again}");
}

/// `POST {node}/api/v1/keys/{key}/rotate` with curl, as `token`, naming the
/// request `request_id`: the HTTP status and the body.
fn curl_rotate(c: &Cluster, node: &str, key: &str, token: &str, request_id: &str) -> (u16, String) {
    let profile: toml::Value =
        toml::from_str(&std::fs::read_to_string(c.dir.join("profile.toml")).expect("profile"))
            .expect("profile toml");
    let out = std::process::Command::new("curl")
        // HTTP/1.1: a refusal sent before the body is read (the node does
        // not read bodies of requests it refuses) ends an HTTP/2 stream with
        // a reset that curl 7.88 reports as a framing error.
        .args(["-sS", "--http1.1", "-w", "\n%{http_code}", "--cacert"])
        .arg(profile["ca_cert"].as_str().expect("ca_cert"))
        .args(["-H", &format!("authorization: Bearer {token}")])
        .args(["-H", &format!("x-qk-request-id: {request_id}")])
        .args(["-H", "content-type: application/json", "-d", "{}"])
        .arg(format!(
            "{}/api/v1/keys/{key}/rotate",
            node.trim_end_matches('/')
        ))
        .output()
        .expect("curl runs");
    let all = text(out.stdout);
    let (body, status) = all.rsplit_once('\n').expect("status line");
    let body = format!("{body}{}", String::from_utf8_lossy(&out.stderr));
    (status.trim().parse().expect("http status"), body)
}

fn primary_version(body: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["primary_version"]
        .as_u64()
        .unwrap_or_else(|| panic!("{body}"))
}

/// qk-client sends a write to the next node when the first gives no
/// answer, under the same request id: a node that did apply it must not
/// apply it again (the fault suite once saw two versions from one
/// `qk key rotate`).
#[test]
fn a_write_sent_again_under_its_request_id_is_applied_once() {
    let c = up(3);
    c.ok(&["key", "create", "once"], None);
    let token = c.admin_token();
    let profile: toml::Value =
        toml::from_str(&std::fs::read_to_string(c.dir.join("profile.toml")).expect("profile"))
            .expect("profile toml");
    let nodes: Vec<&str> = profile["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n.as_str().expect("node url"))
        .collect();
    assert_eq!(nodes.len(), 3, "{profile}");
    let first = "00112233445566778899aabbccddeeff";
    let (status, body) = curl_rotate(&c, nodes[0], "once", &token, first);
    assert_eq!((status, primary_version(&body)), (200, 2), "{body}");
    let (status, body) = curl_rotate(&c, nodes[1], "once", &token, first);
    assert_eq!(
        (status, primary_version(&body)),
        (200, 2),
        "sent again: {body}"
    );
    let show = text(c.ok(&["key", "show", "once", "-o", "json"], None));
    let versions = serde_json::from_str::<serde_json::Value>(&show).expect("json")["versions"]
        .as_array()
        .map(Vec::len);
    assert_eq!(versions, Some(2), "one rotation, two versions: {show}");
    let (status, body) = curl_rotate(
        &c,
        nodes[2],
        "once",
        &token,
        "ffeeddccbbaa99887766554433221100",
    );
    assert_eq!(
        (status, primary_version(&body)),
        (200, 3),
        "a new request: {body}"
    );
    for bad in ["xyz", "+0112233445566778899aabbccddeeff", "00112233"] {
        let (status, body) = curl_rotate(&c, nodes[0], "once", &token, bad);
        assert_eq!(status, 400, "request id {bad:?}: {body}");
        assert!(body.contains("x-qk-request-id"), "{body}");
    }
    let show = text(c.ok(&["key", "show", "once", "-o", "json"], None));
    assert_eq!(primary_version(&show), 3, "{show}");
}

/// The epochs of `key`'s versions, from `qk key show -o json`.
fn epochs(c: &Cluster, key: &str) -> Vec<u64> {
    let shown = text(c.ok(&["key", "show", key, "-o", "json"], None));
    let view: serde_json::Value = serde_json::from_str(&shown).expect("key JSON");
    view["versions"]
        .as_array()
        .map(|vs| vs.iter().filter_map(|v| v["epoch"].as_u64()).collect())
        .unwrap_or_default()
}

/// With a refresh schedule every enabled version gets new share epochs by
/// itself (the nodes propose it when due by the time they vouch for), and
/// what was encrypted before still decrypts, client- and server-side.
#[test]
fn a_refresh_schedule_refreshes_every_version_by_itself() {
    let c = up(3);
    c.ok(&["key", "create", "ledger", "--threshold", "2"], None);
    let ct = text(c.ok(
        &["encrypt", "ledger", "--context", "tenant=acme"],
        Some(b"entry 1"),
    ));
    let too_often = c.run(
        None,
        &["cluster", "refresh-schedule", "--every", "1s"],
        None,
    );
    assert_eq!(too_often.status.code(), Some(EXIT_INVALID));
    assert!(
        stderr(&too_often).contains("at least 10000 ms"),
        "{}",
        stderr(&too_often)
    );
    let set = text(c.ok(&["cluster", "refresh-schedule", "--every", "10s"], None));
    assert!(set.contains("every 10s"), "{set}");

    let start = std::time::Instant::now();
    while epochs(&c, "ledger").first().copied().unwrap_or(0) < 2 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(90),
            "no second scheduled refresh within 90 s: epochs {:?}",
            epochs(&c, "ledger")
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    for args in [
        &["decrypt", "--context", "tenant=acme"][..],
        &["decrypt", "--server-side", "--context", "tenant=acme"][..],
    ] {
        assert_eq!(c.ok(args, Some(ct.as_bytes())), b"entry 1");
    }
    let trail = text(c.ok(&["audit", "tail", "--limit", "1000", "-o", "json"], None));
    assert!(trail.contains("version.scheduled-refresh"), "audited");

    let off = text(c.ok(&["cluster", "refresh-schedule", "--off"], None));
    assert!(off.contains("by hand only"), "{off}");
}
