//! Access control end to end: `qk dev up` (real node processes), principals
//! authenticated by bearer tokens, the role matrix of docs/API.md, quorum
//! approvals (destroy and break-glass decrypt), token revocation and expiry,
//! and the audit trail's hash chain (including an edited export).

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{stderr, stdout, Cluster, EXIT_DENIED, EXIT_INVALID, EXIT_UNAUTHENTICATED};
use serde_json::Value;

const EXIT_APPROVAL_PENDING: i32 = 3;

/// A port block per test: QUIC at base.., API at base+100..; one block of
/// 200 per process slot so that neither range meets another test's.
fn base_port(test: u32) -> u16 {
    let slot = std::process::id() % 30;
    u16::try_from(26_000 + slot * 200 + test * 4).expect("port")
}

impl Cluster {
    /// As the bootstrap admin (the profile's client certificate); must succeed.
    fn admin(&self, args: &[&str]) -> String {
        self.ok(None, args, None)
    }

    fn ok(&self, token: Option<&str>, args: &[&str], stdin: Option<&[u8]>) -> String {
        let out = self.run(token, args, stdin);
        assert!(
            out.status.success(),
            "qk {args:?} (token: {}): exit {:?}: {}",
            token.is_some(),
            out.status.code(),
            stderr(&out)
        );
        stdout(&out)
    }

    fn json(&self, token: Option<&str>, args: &[&str]) -> Value {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-o", "json"]);
        let text = self.ok(token, &all, None);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("qk {args:?}: {e}: {text}"))
    }

    /// Creates a principal with `roles` (none: a principal without roles)
    /// and returns a 1h token for it, checked with whoami.
    fn principal_token(&self, name: &str, roles: &[&str]) -> String {
        if roles.is_empty() {
            // The CLI insists on a role; the API takes none.
            self.create_without_roles(name);
        } else {
            let mut args = vec!["principal", "create", name];
            for r in roles {
                args.extend(["--role", r]);
            }
            self.admin(&args);
        }
        if roles.contains(&"approver") {
            return self.self_issued_token(name, "1h");
        }
        self.token_for(name, "1h")
    }

    /// `POST /api/v1/principals` with `"roles": []`, as the admin (curl with
    /// the profile's client certificate and an admin token: a certificate
    /// alone cannot sign a write, and the answer says what to send).
    fn create_without_roles(&self, name: &str) {
        let unsigned = self.curl_principal(name, None);
        assert!(!unsigned.status.success(), "a write with no credential");
        assert!(
            stdout(&unsigned).contains("send a bearer token"),
            "{}",
            stdout(&unsigned)
        );
        let token = self.token_for("admin", "10m");
        let out = self.curl_principal(name, Some(&token));
        assert!(
            out.status.success(),
            "create {name} without roles: {} {}",
            stdout(&out),
            stderr(&out)
        );
    }

    fn curl_principal(&self, name: &str, token: Option<&str>) -> std::process::Output {
        let profile: toml::Value = toml::from_str(
            &std::fs::read_to_string(self.dir.join("profile.toml")).expect("profile"),
        )
        .expect("profile toml");
        let field = |k: &str| profile[k].as_str().expect(k).to_string();
        Command::new("curl")
            .args(["-sS", "--fail-with-body", "--cacert", &field("ca_cert")])
            .args([
                "--cert",
                &field("client_cert"),
                "--key",
                &field("client_key"),
            ])
            .args(
                token
                    .map(|t| format!("authorization: Bearer {t}"))
                    .iter()
                    .flat_map(|h| ["-H", h.as_str()]),
            )
            .args(["-H", "content-type: application/json", "-d"])
            .arg(format!(r#"{{"name": "{name}", "roles": []}}"#))
            .arg(format!(
                "{}/api/v1/principals",
                field("addr").trim_end_matches('/')
            ))
            .output()
            .expect("curl runs")
    }

    fn token_for(&self, name: &str, ttl: &str) -> String {
        let created = self.json(
            None,
            &["token", "create", "--principal", name, "--ttl", ttl],
        );
        let token = created["token"].as_str().expect("token field").to_string();
        assert!(token.starts_with("qkt."), "{created}");
        // A header token wins over the profile's admin client certificate.
        let me = self.json(Some(&token), &["token", "whoami"]);
        assert_eq!(me["principal"]["name"], name, "{me}");
        token
    }

    fn write_file(&self, name: &str, text: &str) -> String {
        let path = self.cwd().join(name);
        std::fs::write(&path, text).expect("write file");
        path.to_string_lossy().into_owned()
    }

    fn audit_export(&self) -> Vec<Value> {
        let text = self.admin(&["audit", "export"]);
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("audit record"))
            .collect()
    }
}

/// The approval id from `waiting for approval ID: ...` (exit code 3).
fn pending_id(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(EXIT_APPROVAL_PENDING),
        "expected approval pending: {}",
        stderr(out)
    );
    let err = stderr(out);
    let rest = err
        .split("waiting for approval ")
        .nth(1)
        .unwrap_or_else(|| panic!("no approval id in: {err}"));
    rest.split(':').next().expect("id").trim().to_string()
}

fn is_denied(out: &Output) -> bool {
    let err = stderr(out).to_lowercase();
    out.status.code() == Some(EXIT_DENIED) && (err.contains("denied") || err.contains("permission"))
}

// ---------------------------------------------------------------------------
// 1. The role matrix.

/// docs/API.md, "Authorization": what each role grants.
fn role_grants(role: &str, permission: &str) -> bool {
    const OPERATOR: &[&str] = &[
        "key-create",
        "key-read",
        "key-rotate",
        "key-disable",
        "key-enable",
        "key-mark-compromised",
        "key-destroy",
        "key-cancel-destroy",
        "key-configure",
        "cluster-read",
    ];
    match role {
        "admin" => permission != "approve",
        "operator" => OPERATOR.contains(&permission),
        "approver" => ["approve", "key-read", "cluster-read"].contains(&permission),
        "auditor" => ["audit-read", "key-read", "cluster-read"].contains(&permission),
        "key-user" => ["encrypt", "decrypt", "key-read"].contains(&permission),
        _ => false,
    }
}

/// What an operation needs: every permission of `all`, and one of `any`
/// (when not empty).
struct Needs {
    all: &'static [&'static str],
    any: &'static [&'static str],
}

const fn all(p: &'static [&'static str]) -> Needs {
    Needs { all: p, any: &[] }
}

fn allowed(role: Option<&str>, needs: &Needs) -> bool {
    let has = |p: &str| role.is_some_and(|r| role_grants(r, p));
    needs.all.iter().all(|p| has(p)) && (needs.any.is_empty() || needs.any.iter().any(|p| has(p)))
}

struct Row {
    name: &'static str,
    needs: Needs,
    /// Run as admin before each attempt; failures ignored (puts the target
    /// back in the state the operation needs).
    prep: &'static [&'static str],
    /// `{who}` is replaced with the principal's name; `{ct}` means stdin is
    /// the ciphertext; `{policy}` the policy file.
    args: &'static [&'static str],
}

#[test]
fn authorization_matrix_every_operation_by_every_role() {
    let c = Cluster::up(3, base_port(0));
    // (principal, role); the admin is the profile's client certificate.
    let people: [(&str, Option<&str>); 6] = [
        ("admin", Some("admin")),
        ("op", Some("operator")),
        ("ap", Some("approver")),
        ("au", Some("auditor")),
        ("ku", Some("key-user")),
        ("nobody", None),
    ];
    let mut tokens: Vec<Option<String>> = vec![None];
    for (name, role) in &people[1..] {
        let roles: Vec<&str> = role.iter().copied().collect();
        tokens.push(Some(c.principal_token(name, &roles)));
    }
    let me = c.json(
        Some(tokens[5].as_deref().expect("token")),
        &["token", "whoami"],
    );
    assert_eq!(me["principal"]["roles"], serde_json::json!([]), "{me}");

    for key in ["main", "tog", "mc", "dx", "pd", "pol"] {
        c.admin(&["key", "create", key]);
    }
    let ct = c.ok(None, &["encrypt", "main"], Some(b"matrix secret"));
    let policy = c.write_file("open.json", r#"{"rules": [], "approval": null}"#);

    let rows = [
        Row {
            name: "key create",
            needs: all(&["key-create"]),
            prep: &[],
            args: &["key", "create", "new-{who}"],
        },
        Row {
            name: "key list",
            needs: all(&["key-read"]),
            prep: &[],
            args: &["key", "list"],
        },
        Row {
            name: "key show",
            needs: all(&["key-read"]),
            prep: &[],
            args: &["key", "show", "main"],
        },
        Row {
            name: "key rotate",
            needs: all(&["key-rotate"]),
            prep: &[],
            args: &["key", "rotate", "main"],
        },
        Row {
            name: "key disable",
            needs: all(&["key-disable"]),
            prep: &["key", "enable", "tog"],
            args: &["key", "disable", "tog"],
        },
        Row {
            name: "key enable",
            needs: all(&["key-enable"]),
            prep: &["key", "disable", "tog"],
            args: &["key", "enable", "tog"],
        },
        Row {
            name: "key config",
            needs: all(&["key-configure"]),
            prep: &[],
            args: &["key", "config", "main", "--rotate-every", "30d"],
        },
        Row {
            name: "key mark-compromised",
            needs: all(&["key-mark-compromised"]),
            // A new version each time: a compromised version stays so.
            prep: &["key", "rotate", "mc"],
            args: &["key", "mark-compromised", "mc", "--reason", "matrix"],
        },
        Row {
            name: "key destroy",
            needs: all(&["key-destroy"]),
            prep: &["key", "cancel-destroy", "dx"],
            args: &["key", "destroy", "dx", "--after", "1h"],
        },
        Row {
            name: "key cancel-destroy",
            needs: all(&["key-cancel-destroy"]),
            prep: &["key", "destroy", "pd", "--after", "1h"],
            args: &["key", "cancel-destroy", "pd"],
        },
        Row {
            name: "policy set",
            needs: all(&["key-set-policy"]),
            prep: &[],
            args: &["policy", "set", "pol", "--file", "{policy}"],
        },
        Row {
            name: "encrypt",
            needs: all(&["encrypt"]),
            prep: &[],
            args: &["encrypt", "main"],
        },
        Row {
            name: "decrypt",
            needs: all(&["decrypt"]),
            prep: &[],
            args: &["decrypt", "{ct}"],
        },
        Row {
            name: "decrypt --server-side",
            needs: all(&["decrypt"]),
            prep: &[],
            args: &["decrypt", "--server-side", "{ct}"],
        },
        Row {
            name: "datakey",
            needs: all(&["encrypt"]),
            prep: &[],
            args: &["datakey", "main"],
        },
        Row {
            name: "rewrap",
            needs: all(&["decrypt", "encrypt"]),
            prep: &[],
            args: &["rewrap", "{ct}"],
        },
        Row {
            name: "principal create",
            needs: all(&["principal-manage"]),
            prep: &[],
            args: &["principal", "create", "made-by-{who}", "--role", "auditor"],
        },
        // Auditors review who has access: listing needs the manage
        // permission or audit-read.
        Row {
            name: "principal list",
            needs: Needs {
                all: &[],
                any: &["principal-manage", "audit-read"],
            },
            prep: &[],
            args: &["principal", "list"],
        },
        Row {
            name: "token create",
            needs: all(&["token-manage"]),
            prep: &[],
            args: &["token", "create", "--principal", "au", "--ttl", "1h"],
        },
        Row {
            name: "token list",
            needs: Needs {
                all: &[],
                any: &["token-manage", "audit-read"],
            },
            prep: &[],
            args: &["token", "list"],
        },
        Row {
            name: "audit tail",
            needs: all(&["audit-read"]),
            prep: &[],
            args: &["audit", "tail"],
        },
        Row {
            name: "audit verify",
            needs: all(&["audit-read"]),
            prep: &[],
            args: &["audit", "verify"],
        },
        Row {
            name: "cluster status",
            // Client-side decryption reads the members' API addresses, so
            // decrypting principals may read the cluster status too.
            needs: Needs {
                all: &[],
                any: &["cluster-read", "decrypt"],
            },
            prep: &[],
            args: &["cluster", "status"],
        },
    ];

    let mut denied: Vec<(&str, &str)> = Vec::new();
    let mut wrong: Vec<String> = Vec::new();
    for row in &rows {
        for ((who, role), token) in people.iter().zip(&tokens) {
            if !row.prep.is_empty() {
                let _ = c.run(None, row.prep, None);
            }
            let mut stdin: Option<&[u8]> = None;
            let mut args: Vec<String> = Vec::new();
            for a in row.args {
                match *a {
                    "{ct}" => stdin = Some(ct.as_bytes()),
                    "{policy}" => args.push(policy.clone()),
                    a => args.push(a.replace("{who}", who)),
                }
            }
            if row.name == "encrypt" {
                stdin = Some(b"plain");
            }
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = c.run(token.as_deref(), &argv, stdin);
            let expect = allowed(*role, &row.needs);
            let verdict = if out.status.success() {
                "allowed"
            } else if is_denied(&out) {
                "denied"
            } else {
                "failed"
            };
            if verdict != if expect { "allowed" } else { "denied" } {
                wrong.push(format!(
                    "{} as {who} ({}): expected {}, got {verdict}: {}",
                    row.name,
                    role.unwrap_or("no roles"),
                    if expect { "allowed" } else { "denied" },
                    stderr(&out).trim()
                ));
            }
            if !expect && verdict == "denied" {
                denied.push((who, row.name));
            }
        }
    }
    // Listing approvals: everyone sees at least their own requests.
    for token in &tokens {
        let list = c.json(token.as_deref(), &["approval", "list"]);
        assert!(list.is_array() || list.is_object(), "{list}");
    }
    assert!(
        wrong.is_empty(),
        "role matrix mismatches:\n{}",
        wrong.join("\n")
    );

    // Every refusal is in the audit trail (records may reach it a moment
    // after the answer).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let records = c.audit_export();
        let refused = |who: &str| {
            records
                .iter()
                .filter(|r| {
                    r["principal"] == who
                        && r["outcome"]
                            .as_str()
                            .is_some_and(|o| o.starts_with("refused"))
                })
                .count()
        };
        let missing: Vec<String> = people
            .iter()
            .map(|(who, _)| *who)
            .filter_map(|who| {
                let expected = denied.iter().filter(|(w, _)| *w == who).count();
                let found = refused(who);
                (found < expected).then(|| {
                    let ops: Vec<&str> = denied
                        .iter()
                        .filter(|(w, _)| *w == who)
                        .map(|(_, o)| *o)
                        .collect();
                    format!("{who}: {found} refused records for {expected} refusals {ops:?}")
                })
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "refusals missing from the audit trail:\n{}",
            missing.join("\n")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

// ---------------------------------------------------------------------------
// 2. Approvals.

fn approval_status(c: &Cluster, id: &str) -> String {
    let list = c.json(None, &["approval", "list"]);
    let items = list
        .as_array()
        .or_else(|| list["approvals"].as_array())
        .unwrap_or_else(|| panic!("approval list: {list}"));
    let a = items
        .iter()
        .find(|a| a["id"] == id)
        .unwrap_or_else(|| panic!("approval {id} not listed: {list}"));
    a["status"].as_str().unwrap_or_default().to_string()
}

fn version_states(c: &Cluster, key: &str) -> Vec<String> {
    let show = c.json(None, &["key", "show", key]);
    show["versions"]
        .as_array()
        .unwrap_or_else(|| panic!("{show}"))
        .iter()
        .map(|v| v["state"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn approval_flow_for_destroy_and_break_glass_decrypt() {
    let c = Cluster::up(3, base_port(1));
    let op = c.principal_token("op", &["operator"]);
    let ann = c.principal_token("ann", &["approver"]);
    let bob = c.principal_token("bob", &["approver"]);
    let ku = c.principal_token("ku", &["key-user"]);
    for key in ["k", "glass", "frozen"] {
        c.admin(&["key", "create", key]);
    }

    let rule = |required: u32| {
        format!(
            r#"{{"rules": [], "approval": {{"required": {required}, "approvers": ["role:approver"], "permissions": ["key-destroy", "decrypt"]}}}}"#
        )
    };
    let zero = c.write_file("zero.json", &rule(0));
    let three = c.write_file("three.json", &rule(3));
    let two = c.write_file("two.json", &rule(2));
    for bad in [&zero, &three] {
        let out = c.run(None, &["policy", "set", "k", "--file", bad], None);
        assert_eq!(
            out.status.code(),
            Some(EXIT_INVALID),
            "policy {bad}: {}",
            stderr(&out)
        );
    }
    for key in ["k", "glass", "frozen"] {
        c.admin(&["policy", "set", key, "--file", &two]);
    }
    let shown = c.admin(&["policy", "show", "k"]);
    assert!(shown.contains("\"required\": 2"), "{shown}");

    // Destroy waits for two approvers other than the requester.
    let out = c.run(Some(&op), &["key", "destroy", "k", "--after", "0s"], None);
    let id = pending_id(&out);
    assert_eq!(approval_status(&c, &id), "pending");
    assert_eq!(version_states(&c, "k"), ["enabled"]);
    let self_approve = c.run(Some(&op), &["approval", "approve", &id], None);
    assert_eq!(
        self_approve.status.code(),
        Some(EXIT_DENIED),
        "{}",
        stderr(&self_approve)
    );
    c.ok(Some(&ann), &["approval", "approve", &id], None);
    assert_eq!(approval_status(&c, &id), "pending");
    let again = c.run(Some(&ann), &["approval", "approve", &id], None);
    assert_eq!(
        again.status.code(),
        Some(EXIT_INVALID),
        "the same approver twice: {}",
        stderr(&again)
    );
    assert_eq!(approval_status(&c, &id), "pending");
    assert_eq!(version_states(&c, "k"), ["enabled"]);
    c.ok(Some(&bob), &["approval", "approve", &id], None);
    assert_eq!(approval_status(&c, &id), "executed");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let states = version_states(&c, "k");
        if states
            .iter()
            .all(|s| ["pending-destruction", "destroying", "destroyed"].contains(&s.as_str()))
        {
            break;
        }
        assert!(Instant::now() < deadline, "k not destroyed: {states:?}");
        std::thread::sleep(Duration::from_millis(300));
    }

    // Break-glass decrypt.
    let ct = c.ok(Some(&ku), &["encrypt", "glass"], Some(b"in case of fire"));
    // A break-glass decrypt runs server-side: the holders give no partials
    // for client-side combining (refused, pointing at --server-side).
    let client_side = c.run(Some(&ku), &["decrypt"], Some(ct.as_bytes()));
    assert_eq!(
        client_side.status.code(),
        Some(EXIT_DENIED),
        "{}",
        stderr(&client_side)
    );
    assert!(
        stderr(&client_side).contains("--server-side"),
        "{}",
        stderr(&client_side)
    );
    let out = c.run(
        Some(&ku),
        &["decrypt", "--server-side"],
        Some(ct.as_bytes()),
    );
    let glass = pending_id(&out);
    let early = c.run(
        Some(&ku),
        &["decrypt", "--server-side", "--approval", &glass],
        Some(ct.as_bytes()),
    );
    assert_ne!(early.status.code(), Some(0), "decrypt before approval");
    c.ok(Some(&ann), &["approval", "approve", &glass], None);
    c.ok(Some(&bob), &["approval", "approve", &glass], None);
    assert_eq!(approval_status(&c, &glass), "approved");
    // Someone else cannot use ku's approval.
    let theft = c.run(
        None,
        &["decrypt", "--server-side", "--approval", &glass],
        Some(ct.as_bytes()),
    );
    assert_ne!(theft.status.code(), Some(0), "admin used ku's approval");
    let plain = c.run(
        Some(&ku),
        &["decrypt", "--server-side", "--approval", &glass],
        Some(ct.as_bytes()),
    );
    assert!(plain.status.success(), "{}", stderr(&plain));
    assert_eq!(plain.stdout, b"in case of fire");
    assert_eq!(approval_status(&c, &glass), "consumed");
    let twice = c.run(
        Some(&ku),
        &["decrypt", "--server-side", "--approval", &glass],
        Some(ct.as_bytes()),
    );
    assert_ne!(twice.status.code(), Some(0), "an approval decrypts once");
    assert!(twice.stdout.is_empty());

    // A denied request never runs, whatever approvals come after.
    let out = c.run(
        Some(&op),
        &["key", "destroy", "frozen", "--after", "0s"],
        None,
    );
    let denied = pending_id(&out);
    c.ok(
        Some(&ann),
        &["approval", "deny", &denied, "--reason", "freeze"],
        None,
    );
    assert!(approval_status(&c, &denied).starts_with("denied"));
    let late = c.run(Some(&bob), &["approval", "approve", &denied], None);
    assert_eq!(late.status.code(), Some(EXIT_INVALID), "{}", stderr(&late));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(version_states(&c, "frozen"), ["enabled"]);
    assert!(approval_status(&c, &denied).starts_with("denied"));
    let data = c.ok(None, &["encrypt", "frozen"], Some(b"still here"));
    assert!(data.starts_with("qk:v1:"), "{data}");
}

// ---------------------------------------------------------------------------
// 3. Tokens.

fn is_unauthenticated(out: &Output) -> bool {
    let err = stderr(out).to_lowercase();
    out.status.code() == Some(EXIT_UNAUTHENTICATED)
        && ["unauthenticated", "token", "expired", "revoked", "401"]
            .iter()
            .any(|w| err.contains(w))
}

#[test]
fn token_revocation_and_expiry() {
    let c = Cluster::up(3, base_port(2));
    let t = c.principal_token("alice", &["auditor"]);
    c.ok(Some(&t), &["key", "list"], None);
    let id = c.json(Some(&t), &["token", "whoami"])["token"]["id"]
        .as_str()
        .expect("token id")
        .to_string();
    c.admin(&["token", "revoke", &id]);
    let out = c.run(Some(&t), &["key", "list"], None);
    assert!(
        is_unauthenticated(&out),
        "after revoke: {:?} {}",
        out.status,
        stderr(&out)
    );
    let listed = c.json(None, &["token", "list"]);
    let text = listed.to_string();
    assert!(text.contains(&id) && text.contains("revoked_ms"), "{text}");

    // Long enough to be used once on a loaded one-core machine; the wait
    // below is for the wall clock to pass its expiry (log time stamps it).
    let short = c.token_for("alice", "10s");
    c.ok(Some(&short), &["key", "list"], None);
    std::thread::sleep(Duration::from_millis(10_500));
    let out = c.run(Some(&short), &["key", "list"], None);
    assert!(
        is_unauthenticated(&out),
        "after expiry: {:?} {}",
        out.status,
        stderr(&out)
    );
    // The admin's certificate is unaffected.
    c.admin(&["key", "list"]);
}

// ---------------------------------------------------------------------------
// 4. The audit chain.

#[test]
fn audit_chain_verifies_and_detects_tampering() {
    let c = Cluster::up(3, base_port(3));
    c.admin(&["key", "create", "a"]);
    let ku = c.principal_token("ku", &["key-user"]);
    c.ok(Some(&ku), &["encrypt", "a"], Some(b"x"));
    let _ = c.run(Some(&ku), &["key", "create", "nope"], None);
    c.admin(&["audit", "verify"]);

    let file = c.cwd().join("audit.jsonl");
    let path = file.to_string_lossy().into_owned();
    c.admin(&["audit", "export", "--out", &path]);
    c.admin(&["audit", "verify", "--file", &path]);
    let text = std::fs::read_to_string(&file).expect("export");
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 4, "{text}");

    let write = |name: &str, lines: &[String]| -> String {
        let p = c.cwd().join(name);
        std::fs::write(&p, lines.join("\n") + "\n").expect("write");
        p.to_string_lossy().into_owned()
    };
    let mid = lines.len() / 2;
    let record: Value = serde_json::from_str(lines[mid]).expect("record");
    let seq = record["seq"].as_u64().expect("seq");

    for field in ["outcome", "principal"] {
        let mut edited: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        let mut r = record.clone();
        r[field] = Value::String("tampered".into());
        edited[mid] = r.to_string();
        let f = write(&format!("edited-{field}.jsonl"), &edited);
        let out = c.run(None, &["audit", "verify", "--file", &f], None);
        assert!(!out.status.success(), "edited {field} verified");
        let err = stderr(&out);
        assert!(err.contains(&seq.to_string()), "names seq {seq}: {err}");
    }

    let mut cut: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    cut.remove(mid);
    let f = write("cut.jsonl", &cut);
    let out = c.run(None, &["audit", "verify", "--file", &f], None);
    assert!(
        !out.status.success(),
        "a deleted record verified: {}",
        stdout(&out)
    );

    // The untouched export still verifies, and so does the cluster.
    c.admin(&["audit", "verify", "--file", &path]);
    c.admin(&["audit", "verify"]);

    // Every member holds the same chain, and the export matches it.
    let out = c.admin(&["audit", "verify", "--cross-check"]);
    assert!(out.contains("3 of 3 voters agree"), "{out}");
    let out = c.admin(&["audit", "verify", "--file", &path, "--cross-check"]);
    assert!(out.contains("3 of 3 voters agree"), "{out}");

    // A trail rewritten consistently from one record on (what a node with
    // disk access could hand out) verifies alone, but not against the
    // members' own copies.
    let forged = rewritten_from(&lines, mid);
    let f = write("rewritten.jsonl", &forged);
    c.admin(&["audit", "verify", "--file", &f]);
    let out = c.run(
        None,
        &["audit", "verify", "--file", &f, "--cross-check"],
        None,
    );
    assert!(
        !out.status.success(),
        "a rewritten trail passed the cross-check"
    );
    let err = stderr(&out);
    assert!(err.contains("differs") && err.contains("node 1"), "{err}");

    signed_checkpoints_prove_an_export_offline(&c, &path, &f);
}

/// Checkpoints signed by the nodes' certificates let a reader holding only
/// the CA certificate tell the export from a consistent rewrite, offline.
fn signed_checkpoints_prove_an_export_offline(c: &Cluster, export: &str, rewritten: &str) {
    let cps = c.cwd().join("audit.checkpoints");
    let cps_s = cps.to_string_lossy().into_owned();
    c.admin(&["audit", "checkpoint", "--file", export, "--out", &cps_s]);
    let lines: Vec<String> = std::fs::read_to_string(&cps)
        .expect("checkpoints")
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(lines.len(), 3, "one checkpoint per node: {lines:?}");
    let ca = c
        .dir
        .join("pki")
        .join("ca.pem")
        .to_string_lossy()
        .into_owned();
    // Offline: no cluster address, the CA certificate alone.
    let offline = |file: &str, checkpoints: &str, extra: &[&str]| {
        let mut args = vec![
            "audit",
            "verify",
            "--file",
            file,
            "--checkpoints",
            checkpoints,
            "--ca-cert",
            &ca,
            "--addr",
            "https://127.0.0.1:1",
        ];
        args.extend_from_slice(extra);
        c.run(None, &args, None)
    };
    let out = offline(export, &cps_s, &[]);
    assert!(
        out.status.success(),
        "the export with its checkpoints: {}",
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("3 of at least 2 nodes vouch"),
        "{}",
        stdout(&out)
    );

    let out = offline(rewritten, &cps_s, &[]);
    assert!(
        !out.status.success(),
        "a rewritten trail passed its checkpoints"
    );
    assert!(stderr(&out).contains("was altered"), "{}", stderr(&out));

    let write = |name: &str, lines: &[String]| {
        let p = c.cwd().join(name);
        std::fs::write(&p, lines.join("\n") + "\n").expect("write");
        p.to_string_lossy().into_owned()
    };
    let one = write("one.checkpoints", &lines[..1]);
    let out = offline(export, &one, &[]);
    assert!(!out.status.success(), "one node's checkpoint was enough");
    assert!(stderr(&out).contains("fewer than 2"), "{}", stderr(&out));
    assert!(offline(export, &one, &["--min-signers", "1"])
        .status
        .success());

    // A checkpoint whose hash is changed to match a rewrite no longer verifies.
    let mut forged: Value = serde_json::from_str(&lines[0]).expect("checkpoint");
    forged["hash"] = Value::String("ab".repeat(32));
    let forged = write("forged.checkpoints", &[forged.to_string()]);
    let out = offline(export, &forged, &["--min-signers", "1"]);
    assert!(!out.status.success(), "a forged checkpoint verified");
    assert!(
        stderr(&out).contains("does not verify against the CA"),
        "{}",
        stderr(&out)
    );
}

/// The export's lines with record `from` edited and every hash from there on
/// recomputed, so the chain is consistent in itself.
fn rewritten_from(lines: &[&str], from: usize) -> Vec<String> {
    use qk_client::views::AuditRecordView;
    let mut records: Vec<qk_state::AuditRecord> = lines
        .iter()
        .map(|l| {
            let view: AuditRecordView = serde_json::from_str(l).expect("record");
            qk_state::AuditRecord::try_from(&view).expect("decodes")
        })
        .collect();
    records[from].outcome = "ok (rewritten)".into();
    for i in from..records.len() {
        if i > 0 {
            records[i].prev_hash = records[i - 1].hash;
        }
        records[i].hash = records[i].compute_hash();
    }
    records
        .iter()
        .map(|r| serde_json::to_string(&AuditRecordView::from(r)).expect("json"))
        .collect()
}

#[test]
fn a_single_admin_cannot_satisfy_a_two_approver_rule_alone() {
    let c = Cluster::up(3, base_port(4));
    c.admin(&["key", "create", "k"]);
    for name in ["ann", "bob"] {
        c.admin(&["principal", "create", name, "--role", "approver"]);
    }
    let rule = r#"{"rules": [], "approval": {"required": 2, "approvers": ["role:approver"], "permissions": ["key-destroy"]}}"#;
    let file = c.write_file("two.json", rule);
    c.admin(&["policy", "set", "k", "--file", &file]);
    let id = pending_id(&c.run(None, &["key", "destroy", "k", "--after", "0s"], None));
    // The admin mints tokens for the two approvers...
    for name in ["ann", "bob"] {
        let out = c.run(
            None,
            &["token", "create", "--principal", name, "--ttl", "1h"],
            None,
        );
        assert_eq!(
            out.status.code(),
            Some(EXIT_DENIED),
            "minted for {name}: {}",
            stdout(&out)
        );
        assert!(
            stderr(&out).contains("only") && stderr(&out).contains("itself"),
            "{}",
            stderr(&out)
        );
    }
    // ...or makes a puppet with a token first and grants it the role after.
    c.admin(&["principal", "create", "sock", "--role", "key-user"]);
    let sock = c.token_for("sock", "1h");
    c.admin(&["principal", "update", "sock", "--role", "approver"]);
    let out = c.run(Some(&sock), &["approval", "approve", &id], None);
    assert_ne!(
        out.status.code(),
        Some(0),
        "the puppet's old token approved: {}",
        stdout(&out)
    );
    assert_eq!(approval_status(&c, &id), "pending");
    assert_eq!(version_states(&c, "k"), ["enabled"]);
    // The approvers, with their own credentials, can.
    for name in ["ann", "bob"] {
        let token = c.self_issued_token(name, "1h");
        c.ok(Some(&token), &["approval", "approve", &id], None);
    }
    assert_eq!(approval_status(&c, &id), "executed");
}

#[test]
fn a_policy_with_a_misspelled_field_is_refused_naming_it() {
    let c = Cluster::up(3, base_port(5));
    c.admin(&["key", "create", "k"]);
    let typo = c.write_file(
        "typo.json",
        r#"{"aproval": {"required": 2, "approvers": ["role:approver"], "permissions": ["key-destroy"]}}"#,
    );
    let out = c.run(None, &["policy", "set", "k", "--file", &typo], None);
    assert_eq!(
        out.status.code(),
        Some(1),
        "refused by qk itself: {}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("aproval"), "{}", stderr(&out));
    let shown = c.admin(&["policy", "show", "k"]);
    assert!(!shown.contains("approval"), "nothing was set: {shown}");
}

#[test]
fn under_the_access_rule_a_single_admin_cannot_make_an_approver_mint_a_token_or_drop_the_rule() {
    let c = Cluster::up(3, base_port(6));
    for name in ["ann", "bob"] {
        c.admin(&["principal", "create", name, "--role", "approver"]);
    }
    c.admin(&["principal", "create", "svc", "--role", "key-user"]);
    let typo = c.write_file(
        "typo.json",
        r#"{"required": 2, "aprovers": ["role:approver"], "permissions": ["token-manage"]}"#,
    );
    let out = c.run(None, &["access-rule", "set", "--file", &typo], None);
    assert_eq!(
        out.status.code(),
        Some(1),
        "refused by qk itself: {}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("aprovers"), "{}", stderr(&out));
    let rule = r#"{"required": 2, "approvers": ["role:approver"], "permissions": ["principal-manage", "token-manage"]}"#;
    let file = c.write_file("rule.json", rule);
    c.admin(&["access-rule", "set", "--file", &file]);
    assert!(c
        .admin(&["access-rule", "show"])
        .contains("principal-manage"));

    // A puppet approver, a token for another principal, dropping the rule:
    // each only asks.
    let out = c.run(
        None,
        &["principal", "create", "sock", "--role", "approver"],
        None,
    );
    let create = pending_id(&out);
    assert!(
        stderr(&out).contains("cluster's access rule"),
        "{}",
        stderr(&out)
    );
    assert!(!c.admin(&["principal", "list"]).contains("sock"));
    let out = c.run(
        None,
        &["token", "create", "--principal", "svc", "--ttl", "1h"],
        None,
    );
    let mint = pending_id(&out);
    let svc_token = stdout(&out).trim().to_string();
    let early = c.run(Some(&svc_token), &["token", "whoami"], None);
    assert_eq!(
        early.status.code(),
        Some(EXIT_UNAUTHENTICATED),
        "the token works before approval"
    );
    assert!(stderr(&early).contains("token"), "{}", stderr(&early));
    let drop = pending_id(&c.run(None, &["access-rule", "clear"], None));
    assert!(c
        .admin(&["access-rule", "show"])
        .contains("principal-manage"));
    let own = c.run(None, &["approval", "approve", &create], None);
    assert_ne!(own.status.code(), Some(0), "the admin approved itself");

    // Two approvers, with their own credentials, make each happen.
    let approvers: Vec<String> = ["ann", "bob"]
        .iter()
        .map(|name| c.self_issued_token(name, "1h"))
        .collect();
    for id in [&create, &mint, &drop] {
        for token in &approvers {
            c.ok(Some(token), &["approval", "approve", id], None);
        }
        assert_eq!(approval_status(&c, id), "executed");
    }
    assert!(c.admin(&["principal", "list"]).contains("sock"));
    assert!(c
        .ok(Some(&svc_token), &["token", "whoami"], None)
        .contains("svc"));
    assert_eq!(c.admin(&["access-rule", "show"]).trim(), "null");
}
