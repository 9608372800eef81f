//! The fault suite: the 3-node compose cluster of real containers, a seeded
//! workload of concurrent clients (encrypt, decrypt client- and server-side,
//! read, create, rotate, disable and enable, schedule destruction) and a
//! nemesis that kills, pauses, partitions (both ways, and one way: a node
//! that hears nothing from its peers while they still hear it) and restarts
//! containers and restarts one node on an empty volume. Then, with every fault healed, a checker proves:
//!
//! - every acknowledged encryption under a version not destroyed decrypts
//!   to its plaintext, and no decrypt ever returned another plaintext;
//! - no ciphertext of a destroyed version decrypts;
//! - every acknowledged rotation and key creation is on every node, and every
//!   node reports the same state and versions for every key;
//! - per-key metadata reads (`qk key show` of k0 or k2 at one node, chosen
//!   at random) are linearizable: the recorded history of reads and rotations passes
//!   the check in `common/history.rs`;
//! - every node's copy of the audit chain verifies, and no node process
//!   panicked.
//!
//! It prints a summary: operations by outcome, nemesis events, the seed.
//! `QK_FAULTS_SECS` (default 180) sets how long the nemesis runs and
//! `QK_FAULTS_SEED` (default 1) the seed. Without a Docker engine the test
//! says SKIPPED and why, and passes.

mod common;
#[path = "common/history.rs"]
mod history;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::docker::{docker_answers, Project, NODES};
use common::{ok_output, stderr, stdout};
use serde_json::Value;

const KEYS: [&str; 3] = ["k0", "k1", "k2"];
const CLIENTS: u64 = 3;
const SERVICES: [&str; 3] = ["qk1", "qk2", "qk3"];
/// Threads decrypting the acknowledged ciphertexts at the end.
const CHECKERS: usize = 8;

/// splitmix64: a small seeded generator, so a run is named by its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// An acknowledged encryption.
#[derive(Clone, Debug)]
struct Acked {
    key: String,
    version: u64,
    plaintext: String,
    ciphertext: Vec<u8>,
}

#[derive(Default)]
struct History {
    acked: Vec<Acked>,
    rotations: Vec<history::Rotation>,
    reads: Vec<history::Read>,
    created: Vec<String>,
    outcomes: BTreeMap<String, u64>,
    violations: Vec<String>,
    nemesis: Vec<String>,
}

impl History {
    fn count(&mut self, op: &str, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        *self.outcomes.entry(format!("{op} {outcome}")).or_default() += 1;
    }
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn json(out: &std::process::Output) -> Option<Value> {
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// Milliseconds since the run started: the history's clock.
fn since(t0: Instant) -> u64 {
    t0.elapsed().as_millis() as u64
}

/// A client's view of the run.
struct Client<'a> {
    p: &'a Project,
    h: &'a Mutex<History>,
    t0: Instant,
    id: u64,
}

/// One client operation, chosen by `rng`, recorded in `h`.
fn client_step(c: &Client, rng: &mut Rng, n: u64) {
    let (p, h, client) = (c.p, c.h, c.id);
    let roll = rng.below(100);
    let key = KEYS[rng.below(KEYS.len() as u64) as usize];
    if roll < 20 {
        read_key(c, rng);
    } else if roll < 23 {
        let name = format!("c{client}-{n}");
        let out = p.qk(&["key", "create", &name, "--timeout", "20s"], None);
        let mut h = h.lock().expect("history");
        h.count("create", out.status.success());
        if out.status.success() {
            h.created.push(name);
        }
    } else if roll < 25 {
        // k1 is briefly disabled (its encryptions and decryptions refused),
        // then enabled again; the run ends with it enabled.
        let off = p.qk(&["key", "disable", "k1", "--timeout", "10s"], None);
        std::thread::sleep(Duration::from_millis(rng.below(1000)));
        let on = p.qk(&["key", "enable", "k1", "--timeout", "10s"], None);
        let mut h = h.lock().expect("history");
        h.count("disable k1", off.status.success());
        h.count("enable k1", on.status.success());
    } else if roll < 55 {
        let plaintext = format!("c{client}-{n}");
        let out = p.qk(
            &["encrypt", key, "-o", "json", "--timeout", "10s"],
            Some(plaintext.as_bytes()),
        );
        let v = json(&out);
        let mut h = h.lock().expect("history");
        h.count("encrypt", v.is_some());
        if let Some(v) = v {
            h.acked.push(Acked {
                key: key.to_owned(),
                version: v["version"].as_u64().unwrap_or(0),
                plaintext,
                ciphertext: v["ciphertext"]
                    .as_str()
                    .unwrap_or_default()
                    .as_bytes()
                    .to_vec(),
            });
        }
    } else if roll < 88 {
        let pick = {
            let h = h.lock().expect("history");
            (!h.acked.is_empty()).then(|| h.acked[rng.below(h.acked.len() as u64) as usize].clone())
        };
        let Some(a) = pick else { return };
        let server_side = rng.below(2) == 0;
        let mut args = vec!["decrypt", "--timeout", "10s"];
        if server_side {
            args.push("--server-side");
        }
        let out = p.qk(&args, Some(&a.ciphertext));
        let mut h = h.lock().expect("history");
        let op = if server_side {
            "decrypt server-side"
        } else {
            "decrypt client-side"
        };
        h.count(op, out.status.success());
        if out.status.success() && stdout(&out) != a.plaintext {
            h.violations.push(format!(
                "a decrypt of {}'s ciphertext of {:?} returned {:?}",
                a.key,
                a.plaintext,
                stdout(&out)
            ));
        }
    } else if roll < 97 {
        let invoked_ms = since(c.t0);
        let v = json(&p.qk(
            &["key", "rotate", key, "-o", "json", "--timeout", "20s"],
            None,
        ));
        let returned_ms = since(c.t0);
        let mut h = h.lock().expect("history");
        h.count("rotate", v.is_some());
        let version = v.and_then(|v| v["primary_version"].as_u64());
        h.rotations.push(history::Rotation {
            key: key.to_owned(),
            invoked_ms,
            acknowledged: version.map(|v| (returned_ms, v)),
        });
    } else {
        // Destruction of version 1 of k2 (once it has a newer primary).
        let out = p.qk(
            &[
                "key",
                "destroy",
                "k2",
                "--version",
                "1",
                "--after",
                "0s",
                "--timeout",
                "10s",
            ],
            None,
        );
        h.lock()
            .expect("history")
            .count("destroy k2 v1", out.status.success());
    }
}

/// `qk key show` at one node: its primary version joins the history. Only
/// keys whose primary version only a rotation moves are read: k1's also
/// moves with disable and enable, version by version.
fn read_key(c: &Client, rng: &mut Rng) {
    let key = ["k0", "k2"][rng.below(2) as usize];
    let node = NODES[rng.below(NODES.len() as u64) as usize];
    let invoked_ms = since(c.t0);
    let out = c.p.qk_at(
        &format!("https://127.0.0.1:{node}"),
        &["key", "show", key, "-o", "json", "--timeout", "5s"],
        None,
    );
    let returned_ms = since(c.t0);
    let version = json(&out).and_then(|v| v["primary_version"].as_u64());
    let mut h = c.h.lock().expect("history");
    h.count("read", version.is_some());
    if let Some(version) = version {
        h.reads.push(history::Read {
            key: key.to_owned(),
            invoked_ms,
            returned_ms,
            version,
            node,
        });
    }
}

fn run_client(c: &Client, seed: u64, stop: &AtomicBool) {
    let mut rng = Rng(seed.wrapping_mul(1000).wrapping_add(c.id));
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        client_step(c, &mut rng, n);
    }
}

/// One fault, held for a few seconds, then healed.
fn nemesis_step(p: &Project, rng: &mut Rng, wiped: &mut bool) -> String {
    let n = rng.below(3) as usize;
    let (service, c) = (SERVICES[n], p.container(SERVICES[n]));
    let network = format!("{}_cluster", p.name);
    let hold = Duration::from_millis(3000 + rng.below(5000));
    let event = match rng.below(6) {
        0 => {
            let _ = p.docker(&["kill", &c]);
            std::thread::sleep(hold);
            let _ = p.docker(&["start", &c]);
            format!("kill {service}")
        }
        1 => {
            let _ = p.docker(&["pause", &c]);
            std::thread::sleep(hold);
            let _ = p.docker(&["unpause", &c]);
            format!("pause {service}")
        }
        2 => {
            let _ = p.docker(&["network", "disconnect", &network, &c]);
            std::thread::sleep(hold);
            let _ = p.docker(&["network", "connect", &network, &c]);
            format!("partition {service}")
        }
        // Node 1 bootstraps when its volume is empty, so only 2 and 3 are
        // wiped, and only once: two wiped nodes would lose the shares.
        3 if !*wiped && n > 0 => {
            *wiped = true;
            let _ = p.docker(&["rm", "-f", "-v", &c]);
            let _ = p.docker(&["volume", "rm", &format!("{}_{service}", p.name)]);
            let _ = p.compose(&["up", "-d", "--no-deps", service]);
            format!("wipe {service} (empty volume)")
        }
        4 => {
            let _ = p.docker(&["restart", "-t", "2", &c]);
            format!("restart {service}")
        }
        _ => {
            let deaf = one_way(p, service);
            std::thread::sleep(hold);
            hear_again(p, service);
            match deaf {
                Ok(()) => format!("one-way {service} (hears nothing from its peers)"),
                Err(why) => format!("one-way-skipped {service}: {why}"),
            }
        }
    };
    std::thread::sleep(Duration::from_millis(2000 + rng.below(3000)));
    event
}

/// The container's IP address on the cluster network.
fn address(p: &Project, service: &str) -> String {
    let format = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}";
    stdout(&p.docker(&["inspect", "-f", format, &p.container(service)]))
        .trim()
        .to_owned()
}

/// iptables in `service`'s network namespace (the image has no shell or
/// iptables; the host's run there through nsenter, which needs root).
fn iptables_in(p: &Project, service: &str, rule: &[&str]) -> Result<(), String> {
    let pid = stdout(&p.docker(&["inspect", "-f", "{{.State.Pid}}", &p.container(service)]));
    let out = std::process::Command::new("nsenter")
        .args(["-t", pid.trim(), "-n", "iptables"])
        .args(rule)
        .output()
        .map_err(|e| format!("cannot run nsenter: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(stderr(&out).trim().to_owned())
    }
}

/// A one-way partition: `service` drops every packet from its peers, which
/// still receive what it sends.
fn one_way(p: &Project, service: &str) -> Result<(), String> {
    for peer in SERVICES.into_iter().filter(|s| *s != service) {
        let from = address(p, peer);
        if from.is_empty() {
            return Err(format!("{peer} has no address (not running)"));
        }
        iptables_in(p, service, &["-I", "INPUT", "-s", &from, "-j", "DROP"])?;
    }
    Ok(())
}

fn hear_again(p: &Project, service: &str) {
    let _ = iptables_in(p, service, &["-F", "INPUT"]);
}

fn heal(p: &Project) {
    let network = format!("{}_cluster", p.name);
    for s in SERVICES {
        hear_again(p, s);
        let c = p.container(s);
        let _ = p.docker(&["unpause", &c]);
        let _ = p.docker(&["network", "connect", &network, &c]);
        let _ = p.docker(&["start", &c]);
    }
    p.wait_ready(&NODES, "after the faults healed");
    // The run ends with k1 enabled (a client may have left it disabled;
    // enabling a key none of whose versions is disabled is refused).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let k1 = show_at(p, &format!("https://127.0.0.1:{}", NODES[0]), "k1");
        let disabled = k1["versions"]
            .as_array()
            .is_some_and(|vs| vs.iter().any(|v| v["state"] == "disabled"));
        if k1 != Value::Null && !disabled {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "cannot enable k1 after the faults: {k1}"
        );
        let _ = p.qk(&["key", "enable", "k1"], None);
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Retries a server-side decrypt for up to `wait` (holders catching up).
fn final_decrypt(p: &Project, ct: &[u8], wait: Duration) -> Result<String, String> {
    let deadline = Instant::now() + wait;
    loop {
        let out = p.qk(&["decrypt", "--server-side", "--timeout", "10s"], Some(ct));
        if out.status.success() {
            return Ok(stdout(&out));
        }
        if Instant::now() > deadline || stderr(&out).contains("destroyed") {
            return Err(stderr(&out));
        }
        std::thread::sleep(Duration::from_millis(1000));
    }
}

/// `qk key show` at `addr`, retried for a few seconds (a node that just
/// healed may answer "retry" until it reaches the leader).
fn show_at(p: &Project, addr: &str, key: &str) -> Value {
    for _ in 0..10 {
        if let Some(v) = json(&p.qk_at(addr, &["key", "show", key, "-o", "json"], None)) {
            return v;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Value::Null
}

/// Each key's versions and their states, as node `port` answers; version 0
/// holds the state `qk key show` reports for the key as a whole.
fn versions_at(p: &Project, port: u16, keys: &[String]) -> Versions {
    let addr = format!("https://127.0.0.1:{port}");
    let mut all = BTreeMap::new();
    for key in keys {
        let v = show_at(p, &addr, key);
        let versions = v["versions"]
            .as_array()
            .map(|vs| {
                let key_state = (0, v["state"].as_str().unwrap_or("?").to_owned());
                std::iter::once(key_state)
                    .chain(vs.iter().map(|x| {
                        let state = x["state"].as_str().unwrap_or("?").to_owned();
                        (x["version"].as_u64().unwrap_or(0), state)
                    }))
                    .collect()
            })
            .unwrap_or_default();
        all.insert(key.clone(), versions);
    }
    all
}

/// Whether node `port` reports the same versions and states as `expected`
/// within 30 s (erase receipts and the last entries may still be applying).
type Versions = BTreeMap<String, Vec<(u64, String)>>;

fn converges(p: &Project, port: u16, expected: &Versions) -> Result<(), String> {
    let keys: Vec<String> = expected.keys().cloned().collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let here = versions_at(p, port, &keys);
        if &here == expected {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "node at {port} reports {here:?}, node at {} {expected:?}",
                NODES[0]
            ));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The versions once no destruction is still under way (at most 60 s).
fn settled_versions(p: &Project, keys: &[String]) -> Versions {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let states = versions_at(p, NODES[0], keys);
        let busy = states.values().flatten().any(|(_, s)| {
            matches!(
                s.as_str(),
                "pending-destruction" | "destroying" | "generating"
            )
        });
        if !busy || Instant::now() > deadline {
            return states;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The violation, if any, in what checking `a` found.
fn judge(a: &Acked, decrypted: Result<String, String>, destroyed: bool) -> Option<String> {
    match (decrypted, destroyed) {
        (Ok(text), true) => Some(format!(
            "{} v{} is destroyed, yet its ciphertext decrypted (to {text:?})",
            a.key, a.version
        )),
        (Ok(text), false) if text != a.plaintext => Some(format!(
            "{} v{}: acknowledged {:?} decrypts to {text:?}",
            a.key, a.version, a.plaintext
        )),
        (Err(e), false) => Some(format!(
            "{} v{}: acknowledged {:?} does not decrypt: {e}",
            a.key, a.version, a.plaintext
        )),
        _ => None,
    }
}

fn check(p: &Project, h: &mut History, initial: &BTreeMap<String, u64>) {
    let mut keys: Vec<String> = KEYS.iter().map(|k| (*k).to_owned()).collect();
    keys.extend(h.created.iter().cloned());
    let states = settled_versions(p, &keys);
    let destroyed = |key: &str, version: u64| {
        states.get(key).is_some_and(|vs| {
            vs.iter()
                .any(|(v, s)| *v == version && matches!(s.as_str(), "destroyed" | "destroying"))
        })
    };
    // The first check may wait for holders to catch up; then every
    // acknowledged encryption is checked, by CHECKERS threads, each decrypt
    // getting a few seconds; a run with many failures stops after 20.
    if let Some(first) = h.acked.first() {
        let _ = final_decrypt(p, &first.ciphertext, Duration::from_secs(60));
    }
    let found = Mutex::new(Vec::new());
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..CHECKERS {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(a) = h.acked.get(i) else { break };
                if found.lock().expect("found").len() >= 20 {
                    break;
                }
                let decrypted = final_decrypt(p, &a.ciphertext, Duration::from_secs(3));
                if let Some(v) = judge(a, decrypted, destroyed(&a.key, a.version)) {
                    found.lock().expect("found").push(v);
                }
            });
        }
    });
    h.violations.extend(found.into_inner().expect("found"));
    for (key, version) in h
        .rotations
        .iter()
        .filter_map(|r| Some((r.key.clone(), r.acknowledged?.1)))
    {
        if !states
            .get(&key)
            .is_some_and(|vs| vs.iter().any(|(v, _)| *v == version))
        {
            h.violations
                .push(format!("acknowledged rotation {key} v{version} is missing"));
        }
    }
    for key in &h.created {
        if states.get(key).is_none_or(|vs| vs.is_empty()) {
            h.violations
                .push(format!("acknowledged creation of {key} is missing"));
        }
    }
    // Only the keys that are read: k1's primary version also moves with
    // disable and enable, so its rotations' read-backs are no register reads.
    let read_keys: Vec<history::Rotation> = h
        .rotations
        .iter()
        .filter(|r| initial.contains_key(&r.key) && r.key != "k1")
        .cloned()
        .collect();
    let linear = history::violations(initial, &h.reads, &read_keys);
    h.violations.extend(linear);
    for port in &NODES[1..] {
        if let Err(differs) = converges(p, *port, &states) {
            h.violations.push(differs);
        }
    }
    // Each node's own copy of the audit chain still verifies.
    for port in NODES {
        let out = p.qk_at(
            &format!("https://127.0.0.1:{port}"),
            &["audit", "verify"],
            None,
        );
        if !out.status.success() {
            h.violations.push(format!(
                "the audit chain at {port} does not verify: {}",
                stderr(&out).trim()
            ));
        }
    }
    for s in SERVICES {
        let logs = p.docker(&["logs", &p.container(s)]);
        if stderr(&logs).contains("panicked") || stdout(&logs).contains("panicked") {
            h.violations.push(format!("{s} panicked (see docker logs)"));
        }
    }
}

/// What the run did and found, as printed at its end.
fn summary(h: &History, seed: u64, secs: u64, took: Duration) -> String {
    let acked_rotations = h.rotations.iter().filter(|r| r.acknowledged.is_some());
    let mut events: BTreeMap<String, u64> = BTreeMap::new();
    for e in &h.nemesis {
        let kind = e.split(' ').next().unwrap_or_default().to_owned();
        *events.entry(kind).or_default() += 1;
    }
    [
        format!(
            "fault suite: seed {seed}, {secs} s of nemesis activity, {} s from the first fault to the verdict",
            took.as_secs()
        ),
        format!("operations: {:?}", h.outcomes),
        format!("acknowledged encryptions checked: {}", h.acked.len()),
        format!("rotations acknowledged: {}", acked_rotations.count()),
        format!("keys created: {}", h.created.len()),
        format!(
            "metadata reads in the linearizability history: {}",
            h.reads.len()
        ),
        format!("nemesis events: {} {events:?}", h.nemesis.len()),
        format!("violations: {}", h.violations.len()),
    ]
    .join("\n")
}

#[test]
fn faults_never_lose_an_acknowledged_write_or_revive_a_destroyed_version() {
    if let Err(why) = docker_answers() {
        eprintln!("SKIPPED: the fault suite needs a Docker engine: {why}");
        return;
    }
    let seed = env_u64("QK_FAULTS_SEED", 1);
    let secs = env_u64("QK_FAULTS_SECS", 180);
    let p = Project::build_and_start("faults");
    for key in KEYS {
        ok_output("qk key create", p.qk(&["key", "create", key], None));
    }
    ok_output("qk key rotate k2", p.qk(&["key", "rotate", "k2"], None));
    let initial = BTreeMap::from([("k0".into(), 1), ("k1".into(), 1), ("k2".into(), 2)]);

    let history = Mutex::new(History::default());
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for id in 0..CLIENTS {
            let stop = &stop;
            let c = Client {
                p: &p,
                h: &history,
                t0: started,
                id,
            };
            scope.spawn(move || run_client(&c, seed, stop));
        }
        let mut rng = Rng(seed ^ 0xFA17);
        let mut wiped = false;
        while started.elapsed() < Duration::from_secs(secs) {
            let event = nemesis_step(&p, &mut rng, &mut wiped);
            eprintln!("nemesis at {:>4}s: {event}", started.elapsed().as_secs());
            history.lock().expect("history").nemesis.push(event);
        }
        stop.store(true, Ordering::Relaxed);
    });
    heal(&p);
    // Let scheduled destructions run and every node apply the last entries.
    std::thread::sleep(Duration::from_secs(5));
    let mut h = history.into_inner().expect("history");
    check(&p, &mut h, &initial);

    let summary = summary(&h, seed, secs, started.elapsed());
    println!("{summary}");
    // Also in a file: `cargo test` shows a passing test's output to no one.
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("faults-summary.txt");
    if let Err(e) = std::fs::write(&file, &summary) {
        eprintln!("cannot write {}: {e}", file.display());
    }
    assert!(
        h.violations.is_empty(),
        "seed {seed}: {} violations:\n{}",
        h.violations.len(),
        h.violations.join("\n")
    );
    assert!(
        h.acked.len() > 10 && h.reads.len() > 10,
        "the workload made too few encryptions or key reads to check: {:?}",
        h.outcomes
    );
}
