//! `qk-bench-quorum`: unwrap throughput and p50/p99 latency at concurrency 1
//! and 64 on loopback clusters of 3 nodes (t = 2) and 5 nodes (t = 3), with
//! server-side and client-side combining; encrypt throughput; key generation
//! latency; a share refresh's latency per key version, one at a time and
//! many at once. Each figure is set against the in-process crypto cost of the same
//! operation measured in the same run. Prints one JSON document.
//!
//! Run: `cargo build --release -p qk-node -p qk-testkit && target/release/qk-bench-quorum`

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use qk_crypto::{
    combine, partial_decrypt, wrap, Ciphertext, CombineMode, KeyShare, PartialDecryption,
    PublicKeySet,
};
use qk_raft::{PeerRequest, PeerResponse};
use qk_state::{Operation, VersionState};
use qk_testkit::bench::{cores, sibling_binary};
use qk_testkit::cluster::{ctx, Cluster};
use qk_testkit::stats::{load, LoadResult};
use qk_types::{KeyId, KeyVersion};
use qk_wire::{ClientRequest, ClientResponse};
use serde_json::json;

const CTX: &[(&str, &str)] = &[("tenant", "bench")];
const DATA_KEY: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

fn ops(concurrency: usize) -> usize {
    if concurrency == 1 {
        300
    } else {
        4000
    }
}

/// Median time of `f` over `runs` runs, in microseconds.
fn median_us(runs: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    times[times.len() / 2]
}

/// In-process DKG for the crypto baseline (all parties in this thread).
fn local_key(t: u16, n: u16) -> (PublicKeySet, Vec<KeyShare>) {
    qk_crypto::testing::generate(t, n, &mut rand::rng())
}

/// Median in-process costs (µs): wrap, one partial, combine (optimistic).
fn crypto_costs(t: u16, n: u16) -> (f64, f64, f64) {
    let (keys, shares) = local_key(t, n);
    let c = ctx(CTX);
    let mut rng = rand::rng();
    let id = KeyId([1; 16]);
    let v = KeyVersion(1);
    let ct = wrap(&mut rng, &keys.public_key(), id, v, &c, DATA_KEY).expect("wrap");
    let wrap_us = median_us(200, || {
        let _ = wrap(&mut rand::rng(), &keys.public_key(), id, v, &c, DATA_KEY);
    });
    let hk = keys.holder_key(shares[0].index()).expect("holder");
    let partial_us = median_us(200, || {
        let _ = partial_decrypt(&mut rand::rng(), &shares[0], &hk, id, v, &ct, &c);
    });
    let partials: Vec<PartialDecryption> = shares[..usize::from(t)]
        .iter()
        .map(|s| {
            let hk = keys.holder_key(s.index()).expect("holder");
            partial_decrypt(&mut rng, s, &hk, id, v, &ct, &c).expect("partial")
        })
        .collect();
    let combine_us = median_us(200, || {
        let _ = combine(&keys, &ct, &c, &partials, CombineMode::Optimistic);
    });
    (wrap_us, partial_us, combine_us)
}

async fn client_side_unwrap(
    clients: &[qk_net::PeerClient],
    keys: &PublicKeySet,
    text: &str,
    ct: &Ciphertext,
) -> bool {
    let req = PeerRequest::Client(ClientRequest::Partial {
        approval: None,
        ciphertext: text.to_string(),
        context: ctx(CTX),
    });
    let answers = futures::future::join_all(clients.iter().map(|c| c.call(&req))).await;
    let partials: Vec<PartialDecryption> = answers
        .into_iter()
        .filter_map(|a| match a {
            Ok(PeerResponse::Client(ClientResponse::Partial(b))) => {
                PartialDecryption::from_bytes(&b).ok()
            }
            _ => None,
        })
        .collect();
    matches!(combine(keys, ct, &ctx(CTX), &partials, CombineMode::Optimistic), Ok(p) if p.plaintext.as_slice() == DATA_KEY)
}

async fn generation_ms(c: &Cluster, t: u16, holders: &[u64], name: &str) -> Result<f64> {
    let start = Instant::now();
    c.create(1, name, t, holders)
        .await
        .map_err(anyhow::Error::msg)?;
    loop {
        if let Some(k) = c.key(1, name).await {
            if k.version(KeyVersion(1))
                .is_some_and(|v| v.state == VersionState::Enabled)
            {
                return Ok(start.elapsed().as_secs_f64() * 1000.0);
            }
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!("key {name} was not generated within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Versions refreshed at once for the batch figure.
const REFRESH_BATCH: usize = 20;

/// Asks for a refresh of version 1 of each of `names` at once; how long
/// until every one of them reached a new epoch (ms).
async fn refresh_ms(c: &Cluster, names: &[String]) -> Result<f64> {
    let mut before = Vec::new();
    for name in names {
        let v = c.key(1, name).await.context("key record")?;
        before.push(v.version(KeyVersion(1)).context("version 1")?.epoch.0);
    }
    let start = Instant::now();
    let asks = names.iter().map(|name| {
        let op = Operation::Refresh {
            name: name.clone(),
            version: KeyVersion(1),
            timeout_ms: None,
        };
        c.op(1, op)
    });
    for asked in futures::future::join_all(asks).await {
        asked.map_err(anyhow::Error::msg)?;
    }
    for (name, epoch) in names.iter().zip(before) {
        loop {
            let v = c
                .key(1, name)
                .await
                .and_then(|k| k.version(KeyVersion(1)).cloned());
            if v.as_ref()
                .is_some_and(|v| v.epoch.0 > epoch && v.refresh.is_none())
            {
                break;
            }
            if v.as_ref()
                .is_some_and(|v| v.refresh.is_none() && v.epoch.0 == epoch)
                && start.elapsed() > Duration::from_secs(1)
            {
                bail!(
                    "the refresh of {name} was abandoned: {:?}",
                    v.and_then(|v| v.last_refresh_failure)
                );
            }
            if start.elapsed() > Duration::from_secs(120) {
                bail!("{name} was not refreshed within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    Ok(start.elapsed().as_secs_f64() * 1000.0)
}

/// One refresh at a time of each of five versions, then `REFRESH_BATCH`
/// versions at once.
async fn refresh_figures(c: &Cluster, t: u16, holders: &[u64]) -> Result<serde_json::Value> {
    let mut one = Vec::new();
    for i in 0..5 {
        one.push(refresh_ms(c, &[format!("gen-{i}")]).await?);
    }
    one.sort_by(|a, b| a.total_cmp(b));
    let names: Vec<String> = (0..REFRESH_BATCH).map(|i| format!("refresh-{i}")).collect();
    for name in &names {
        generation_ms(c, t, holders, name).await?;
    }
    let batch_ms = refresh_ms(c, &names).await?;
    Ok(json!({
        "one_at_a_time_ms": { "median": one[one.len() / 2], "all": one },
        "at_once": {
            "versions": REFRESH_BATCH,
            "total_ms": batch_ms,
            "per_version_ms": batch_ms / REFRESH_BATCH as f64,
        },
    }))
}

async fn bench_cluster(bin: &Path, n: u64, t: u16) -> Result<serde_json::Value> {
    let cluster = Cluster::start(bin, n, 100_000);
    let holders: Vec<u64> = (1..=n).collect();
    let mut gen = Vec::new();
    for i in 0..5 {
        gen.push(generation_ms(&cluster, t, &holders, &format!("gen-{i}")).await?);
    }
    gen.sort_by(|a, b| a.total_cmp(b));
    let name = "gen-0";
    let (text, _) = cluster
        .encrypt(1, name, CTX, DATA_KEY)
        .await
        .map_err(anyhow::Error::msg)?;
    let ct = Ciphertext::from_text(&text).context("ciphertext")?;
    let record = cluster.key(1, name).await.context("key record")?;
    let keys = PublicKeySet::from_bytes(
        &record
            .version(KeyVersion(1))
            .and_then(|v| v.public_keys.clone())
            .context("key set")?,
    )?;
    let cluster = Arc::new(cluster);
    let mut results = BTreeMap::new();
    for concurrency in [1usize, 64] {
        let c = cluster.clone();
        let tx = text.clone();
        results.insert(
            format!("unwrap_server_c{concurrency}"),
            load(concurrency, ops(concurrency), move |i| {
                let c = c.clone();
                let tx = tx.clone();
                let via = 1 + i % n;
                async move { matches!(c.decrypt(via, &tx, CTX).await, Ok(p) if p == DATA_KEY) }
            })
            .await,
        );
        let clients: Arc<Vec<qk_net::PeerClient>> = Arc::new(
            (1..=u64::from(t))
                .map(|id| cluster.pool.node(id, &cluster.addr(id)))
                .collect(),
        );
        let (k, ct, tx) = (Arc::new(keys.clone()), Arc::new(ct.clone()), text.clone());
        results.insert(
            format!("unwrap_client_c{concurrency}"),
            load(concurrency, ops(concurrency), move |_| {
                let (clients, k, ct, tx) = (clients.clone(), k.clone(), ct.clone(), tx.clone());
                async move { client_side_unwrap(&clients, &k, &tx, &ct).await }
            })
            .await,
        );
        let c = cluster.clone();
        results.insert(
            format!("encrypt_c{concurrency}"),
            load(concurrency, ops(concurrency), move |i| {
                let c = c.clone();
                async move { c.encrypt(1 + i % n, "gen-0", CTX, DATA_KEY).await.is_ok() }
            })
            .await,
        );
    }
    let refresh = refresh_figures(&cluster, t, &holders).await?;
    let (wrap_us, partial_us, combine_us) = crypto_costs(t, n as u16);
    let unwrap_cpu_us = f64::from(t) * partial_us + combine_us;
    let cores = cores().max(1) as f64;
    let crypto_bound_ops = cores * 1e6 / unwrap_cpu_us;
    let get = |k: &str| {
        results
            .get(k)
            .map(|r: &LoadResult| (r.ops_per_second, r.p50_ms))
            .unwrap_or((0.0, 0.0))
    };
    let (server_c64, _) = get("unwrap_server_c64");
    let (_, server_p50_c1) = get("unwrap_server_c1");
    Ok(json!({
        "nodes": n, "threshold": t,
        "key_generation_ms": { "median": gen[gen.len() / 2], "all": gen },
        "refresh": refresh,
        "crypto_in_process_us": {
            "wrap": wrap_us, "partial_with_proof": partial_us, "combine_optimistic": combine_us,
            "unwrap_all_parties": unwrap_cpu_us,
        },
        "results": results,
        "ratios": {
            "unwrap_server_c1_p50_over_crypto": server_p50_c1 * 1000.0 / unwrap_cpu_us,
            "encrypt_c1_p50_over_wrap": get("encrypt_c1").1 * 1000.0 / wrap_us,
            "unwrap_server_c64_over_crypto_bound": server_c64 / crypto_bound_ops,
        },
        "crypto_bound_unwraps_per_second": crypto_bound_ops,
        "targets": {
            "unwrap_p50_c1_under_3ms": server_p50_c1 < 3.0,
            "c64_at_least_half_crypto_bound": server_c64 >= crypto_bound_ops / 2.0,
        }
    }))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let bin = sibling_binary("qk-node")?;
    let three = bench_cluster(&bin, 3, 2).await?;
    let five = bench_cluster(&bin, 5, 3).await?;
    let report = json!({
        "benchmark": "quorum operations on loopback clusters",
        "cores": cores(),
        "clusters": [three, five],
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
