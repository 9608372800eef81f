//! The scale study: one key's DKG, unwrap and refresh as `n` grows, and
//! many keys at once, under LAN and WAN latency, with no faults.

use qk_state::VersionState;
use qk_types::{KeyVersion, NodeId};

use crate::{Driver, NetProfile, ScaleResult, SimConfig};

/// What the many-keys study measured.
#[derive(Clone, Debug, Default)]
pub struct KeysResult {
    pub keys: usize,
    pub enabled: usize,
    /// From proposing every key to the last one enabled (simulated ms).
    pub all_enabled_ms: u64,
    /// Median and 99th percentile of each key's own DKG time.
    pub dkg_p50_ms: u64,
    pub dkg_p99_ms: u64,
    pub log_entries: u64,
    pub commands: u64,
    pub protocol_messages: u64,
    pub raft_messages: u64,
    pub unwraps: usize,
    pub unwrap_p50_ms: u64,
    pub unwrap_p99_ms: u64,
}

fn quiet_config(nodes: u64, threshold: u16, net: NetProfile, seed: u64) -> SimConfig {
    let mut cfg = SimConfig::new(seed);
    cfg.nodes = nodes;
    cfg.threshold = threshold;
    cfg.net = net;
    cfg.faults = false;
    cfg.byzantine = false;
    cfg
}

/// Counters the study takes differences of.
fn counters(d: &Driver) -> (u64, u64, u64, u64) {
    d.with(|w| {
        let s = &w.stats;
        (s.messages_sent, s.raft_messages, s.commits, s.commands)
    })
}

impl Driver {
    /// A driver with no workload and no faults: only ticks run.
    async fn quiet(cfg: SimConfig) -> Driver {
        let d = Driver::new(cfg).await;
        d.with(|w| {
            w.load.workload_on = false;
            w.sched.queue.retain(|_, e| matches!(e, crate::Ev::Tick));
        });
        d.run_until_idle(60_000).await;
        d
    }

    /// Steps until `done` holds or `max_ms` of simulated time passed.
    async fn step_until(&self, max_ms: u64, done: impl Fn(&crate::World) -> bool) -> bool {
        let end = self.with(|w| w.now()) + max_ms;
        loop {
            if self.with(|w| done(w)) {
                return true;
            }
            if self.violated() || self.with(|w| w.now()) >= end || !self.step().await {
                return false;
            }
        }
    }
}

/// One key's DKG, one unwrap at node 1, one refresh of the version.
pub fn scale(nodes: u64, threshold: u16, net: NetProfile, seed: u64) -> ScaleResult {
    crate::runtime().block_on(async move {
        let d = Driver::quiet(quiet_config(nodes, threshold, net, seed)).await;
        let mut r = ScaleResult::default();
        let (m0, rm0, c0, k0) = counters(&d);
        let t0 = d.with(|w| {
            w.create_key("k0");
            w.now()
        });
        let key = ("k0".to_string(), KeyVersion(1));
        d.step_until(120_000, |w| w.timeline.settled_at.contains_key(&key))
            .await;
        let (m1, rm1, c1, k1) = counters(&d);
        r.dkg_ms = d
            .with(|w| w.timeline.settled_at.get(&key).copied())
            .unwrap_or(t0)
            - t0;
        (r.dkg_messages, r.dkg_raft_messages) = (m1 - m0, rm1 - rm0);
        (r.dkg_log_entries, r.dkg_commands) = (c1 - c0, k1 - k0);
        d.run_until_idle(60_000).await;

        let (m0, ..) = counters(&d);
        let started = d.with(|w| {
            let i = w.wrap_one("k0", KeyVersion(1))?;
            let (ct, pt) = (
                w.load.wrapped[i].ciphertext.clone(),
                w.load.wrapped[i].plaintext.clone(),
            );
            let op = w.start_unwrap(NodeId(1), "k0", ct, pt);
            Some((op, w.now()))
        });
        if let Some((op, t0)) = started {
            d.step_until(30_000, |w| w.load.probe.contains_key(&(NodeId(1), op)))
                .await;
            r.unwrap_ms = d
                .with(|w| w.timeline.done_at.get(&(NodeId(1), op)).copied())
                .unwrap_or(t0)
                - t0;
            r.unwrap_messages = counters(&d).0 - m0;
        }
        d.run_until_idle(60_000).await;

        let (m0, rm0, c0, k0) = counters(&d);
        let t0 = d.with(|w| {
            w.propose(
                "admin".into(),
                qk_state::Operation::Refresh {
                    name: "k0".into(),
                    version: KeyVersion(1),
                    timeout_ms: None,
                },
                None,
            );
            w.now()
        });
        let key = ("k0".to_string(), KeyVersion(1));
        d.step_until(120_000, |w| w.timeline.refresh_done.contains_key(&key))
            .await;
        let (m1, rm1, c1, k1) = counters(&d);
        r.refresh_ms = d
            .with(|w| w.timeline.refresh_done.get(&key).copied())
            .unwrap_or(t0)
            - t0;
        (r.refresh_messages, r.refresh_raft_messages) = (m1 - m0, rm1 - rm0);
        (r.refresh_log_entries, r.refresh_commands) = (c1 - c0, k1 - k0);
        r
    })
}

fn percentile(sorted: &[u64], p: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[(sorted.len() - 1) * p / 100]
}

/// `keys` keys created at once on `nodes` nodes, then one unwrap per key
/// (up to 200), each through a node chosen by the seed.
pub fn keys_study(
    nodes: u64,
    threshold: u16,
    keys: usize,
    net: NetProfile,
    seed: u64,
) -> KeysResult {
    crate::runtime().block_on(async move {
        let mut cfg = quiet_config(nodes, threshold, net, seed);
        cfg.snapshot_every = 100_000;
        let d = Driver::quiet(cfg).await;
        let (m0, rm0, c0, k0) = counters(&d);
        let names: Vec<String> = (0..keys).map(|i| format!("k{i}")).collect();
        let t0 = d.with(|w| {
            for n in &names {
                w.create_key(n);
            }
            w.now()
        });
        d.step_until(600_000, |w| {
            names.iter().all(|n| {
                w.timeline
                    .settled_at
                    .contains_key(&(n.clone(), KeyVersion(1)))
            })
        })
        .await;
        let (m1, rm1, c1, k1) = counters(&d);
        let mut dkg: Vec<u64> = d.with(|w| {
            names
                .iter()
                .filter_map(|n| w.timeline.settled_at.get(&(n.clone(), KeyVersion(1))))
                .map(|t| t - t0)
                .collect()
        });
        dkg.sort_unstable();
        let enabled = d.with(|w| {
            names
                .iter()
                .filter(|n| {
                    w.oracle
                        .truth
                        .key(n)
                        .and_then(|k| k.version(KeyVersion(1)))
                        .is_some_and(|v| v.state == VersionState::Enabled)
                })
                .count()
        });
        let mut r = KeysResult {
            keys,
            enabled,
            all_enabled_ms: dkg.last().copied().unwrap_or(0),
            dkg_p50_ms: percentile(&dkg, 50),
            dkg_p99_ms: percentile(&dkg, 99),
            log_entries: c1 - c0,
            commands: k1 - k0,
            protocol_messages: m1 - m0,
            raft_messages: rm1 - rm0,
            ..KeysResult::default()
        };
        d.run_until_idle(60_000).await;
        let mut ops = Vec::new();
        d.with(|w| {
            let live = w.live_ids();
            for n in names.iter().take(200) {
                if let Some(i) = w.wrap_one(n, KeyVersion(1)) {
                    let (ct, pt) = (
                        w.load.wrapped[i].ciphertext.clone(),
                        w.load.wrapped[i].plaintext.clone(),
                    );
                    let via = live[(i * 7) % live.len()];
                    let op = w.start_unwrap(via, n, ct, pt);
                    ops.push((via, op, w.now()));
                }
            }
        });
        d.step_until(60_000, |w| {
            ops.iter()
                .all(|(v, o, _)| w.timeline.done_at.contains_key(&(*v, *o)))
        })
        .await;
        let mut lat: Vec<u64> = d.with(|w| {
            ops.iter()
                .filter(|(v, o, _)| matches!(w.load.probe.get(&(*v, *o)), Some(Ok(_))))
                .filter_map(|(v, o, t)| w.timeline.done_at.get(&(*v, *o)).map(|d| d - t))
                .collect()
        });
        lat.sort_unstable();
        r.unwraps = lat.len();
        r.unwrap_p50_ms = percentile(&lat, 50);
        r.unwrap_p99_ms = percentile(&lat, 99);
        r
    })
}
