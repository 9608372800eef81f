//! qk-crypto benchmarks: `cargo bench -p qk-crypto` (results in docs/BENCHMARKS.md).
//!
//! Every cost is also reported as a ratio to the unit, one variable-base
//! scalar multiplication `ProjectivePoint * Scalar` on k256, measured in the
//! same run. After the criterion runs, `main` prints a JSON summary to stdout:
//! each benchmark's median (µs) and ratio, and the performance targets
//! (wrap <= 2.5 mults, one partial with proof <= 4, combine t = 3 optimistic
//! <= 2.5 and verify-all <= 11) with a met/missed flag.
//!
//! Session benchmarks (DKG, refresh, reshare) run every participant in this
//! one process, so they measure the CPU of the whole holder set, not the
//! latency one node sees.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use criterion::{BenchmarkId, Criterion, SamplingMode};
use k256::elliptic_curve::Field;
use k256::{ProjectivePoint, Scalar};
use qk_crypto::{
    combine, partial_decrypt, testing, verify_partial, wrap, Ciphertext, CombineMode,
    EncryptionContext, KeyShare, PartialDecryption, PublicKeySet, SessionConfig, SessionKind,
    SessionOutput,
};
use qk_types::{KeyId, KeyVersion, ShareIndex};
use rand::rngs::StdRng;
use rand::SeedableRng;

const KEY_ID: KeyId = KeyId([7; 16]);
const VERSION: KeyVersion = KeyVersion(1);
/// `(t, n)` of the combine benchmarks.
const COMBINE_SIZES: [(u16, u16); 4] = [(2, 3), (3, 5), (5, 9), (11, 16)];
/// `(t, n)` of the DKG benchmarks: `t = floor(n/2) + 1` (majority), plus the
/// two-thirds threshold for n = 16.
const DKG_SIZES: [(u16, u16); 4] = [(2, 3), (3, 5), (9, 16), (11, 16)];

const UNIT_ID: &str = "ops/scalar_mul";

fn rng() -> StdRng {
    StdRng::seed_from_u64(0x716b_6265_6e63)
}

fn holders(n: u16) -> Vec<ShareIndex> {
    ShareIndex::first_n(n)
}

fn context() -> EncryptionContext {
    let mut ctx = EncryptionContext::new();
    ctx.insert("tenant".into(), "acme".into());
    ctx.insert("purpose".into(), "benchmark".into());
    ctx
}

/// Runs one honest session with every participant in this process
/// (`qk_crypto::testing`): deal (shares sealed inside), deliver every deal,
/// close dealing, finish.
fn run_session(
    rng: &mut StdRng,
    config: &SessionConfig,
    old: &BTreeMap<ShareIndex, KeyShare>,
) -> BTreeMap<ShareIndex, SessionOutput> {
    let old: Vec<KeyShare> = old.values().cloned().collect();
    let (outputs, transcript) = testing::run_session(config, &old, rng, &mut testing::honest);
    assert!(
        transcript.complaints.is_empty(),
        "an honest run has no complaint"
    );
    outputs
}

fn generate_config(t: u16, n: u16) -> SessionConfig {
    testing::config([1; 32], SessionKind::Generate, holders(n), holders(n), t)
}

fn refresh_config(old: &PublicKeySet) -> SessionConfig {
    testing::config(
        [2; 32],
        SessionKind::Refresh { old: old.clone() },
        old.holders().to_vec(),
        old.holders().to_vec(),
        old.threshold(),
    )
}

fn reshare_config(old: &PublicKeySet, t: u16, n: u16) -> SessionConfig {
    testing::config(
        [3; 32],
        SessionKind::Reshare { old: old.clone() },
        old.holders().to_vec(),
        holders(n),
        t,
    )
}

/// A generated key version: its public key set and every holder's share.
struct Key {
    keys: PublicKeySet,
    shares: BTreeMap<ShareIndex, KeyShare>,
}

fn generate(rng: &mut StdRng, t: u16, n: u16) -> Key {
    let outputs = run_session(rng, &generate_config(t, n), &BTreeMap::new());
    let keys = outputs.values().next().expect("participants").keys.clone();
    let shares = outputs
        .into_iter()
        .map(|(i, o)| (i, o.share.expect("every holder receives a share")))
        .collect();
    Key { keys, shares }
}

/// A ciphertext under `key` and the partials of its first `t` holders.
fn partials(
    rng: &mut StdRng,
    key: &Key,
    ctx: &EncryptionContext,
) -> (Ciphertext, Vec<PartialDecryption>) {
    let ct = wrap(
        rng,
        &key.keys.public_key(),
        KEY_ID,
        VERSION,
        ctx,
        &[0x42; 32],
    )
    .expect("wrap");
    let t = usize::from(key.keys.threshold());
    let partials = key
        .shares
        .iter()
        .take(t)
        .map(|(i, share)| {
            let holder_key = key.keys.holder_key(*i).expect("holder key");
            partial_decrypt(rng, share, &holder_key, KEY_ID, VERSION, &ct, ctx).expect("partial")
        })
        .collect();
    (ct, partials)
}

fn bench_ops(c: &mut Criterion) {
    let mut rng = rng();
    let ctx = context();
    let key = generate(&mut rng, 3, 5);
    let mut group = c.benchmark_group("ops");

    let point = ProjectivePoint::GENERATOR * Scalar::random(&mut rng);
    let scalar = Scalar::random(&mut rng);
    group.bench_function("scalar_mul", |b| {
        b.iter(|| black_box(point) * black_box(scalar))
    });

    let public_key = key.keys.public_key();
    let plaintext = [0x42u8; 32];
    group.bench_function("wrap_32B", |b| {
        b.iter(|| {
            wrap(
                &mut rng,
                black_box(&public_key),
                KEY_ID,
                VERSION,
                black_box(&ctx),
                black_box(&plaintext),
            )
            .expect("wrap")
        })
    });

    let (ct, parts) = partials(&mut rng, &key, &ctx);
    let (index, share) = key.shares.iter().next().expect("holder 1");
    let holder_key = key.keys.holder_key(*index).expect("holder key");
    group.bench_function("partial_decrypt", |b| {
        b.iter(|| {
            partial_decrypt(
                &mut rng,
                black_box(share),
                &holder_key,
                KEY_ID,
                VERSION,
                black_box(&ct),
                black_box(&ctx),
            )
            .expect("partial")
        })
    });

    // The coordinator's check before it asks any holder (each holder
    // repeats it inside partial_decrypt).
    group.bench_function("verify_ciphertext", |b| {
        b.iter(|| black_box(&ct).verify(black_box(&ctx)).expect("valid"))
    });

    let label = ct.verify(&ctx).expect("label");
    group.bench_function("verify_partial", |b| {
        b.iter(|| {
            verify_partial(
                black_box(&key.keys),
                black_box(&ct),
                &label,
                black_box(&parts[0]),
            )
            .expect("valid")
        })
    });
    group.finish();
}

fn bench_combine(c: &mut Criterion) {
    let mut rng = rng();
    let ctx = context();
    let mut group = c.benchmark_group("combine");
    for (t, n) in COMBINE_SIZES {
        let key = generate(&mut rng, t, n);
        let (ct, parts) = partials(&mut rng, &key, &ctx);
        let size = format!("t{t}_n{n}");
        for (name, mode) in [
            ("optimistic", CombineMode::Optimistic),
            ("verify_all", CombineMode::VerifyAll),
        ] {
            group.bench_with_input(BenchmarkId::new(name, &size), &parts, |b, parts| {
                b.iter(|| {
                    let out = combine(
                        black_box(&key.keys),
                        black_box(&ct),
                        black_box(&ctx),
                        black_box(parts),
                        mode,
                    )
                    .expect("combine");
                    assert!(out.invalid.is_empty());
                    out
                })
            });
        }
    }
    group.finish();
}

fn bench_sessions(c: &mut Criterion) {
    let mut rng = rng();
    let mut group = c.benchmark_group("session");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for (t, n) in DKG_SIZES {
        let config = generate_config(t, n);
        let none = BTreeMap::new();
        group.bench_function(BenchmarkId::new("dkg", format!("t{t}_n{n}")), |b| {
            b.iter(|| run_session(&mut rng, black_box(&config), &none))
        });
    }

    let old = generate(&mut rng, 3, 5);
    let config = refresh_config(&old.keys);
    group.bench_function(BenchmarkId::new("refresh", "t3_n5"), |b| {
        b.iter(|| run_session(&mut rng, black_box(&config), &old.shares))
    });

    let old = generate(&mut rng, 2, 3);
    let config = reshare_config(&old.keys, 3, 5);
    group.bench_function(BenchmarkId::new("reshare", "t2_n3_to_t3_n5"), |b| {
        b.iter(|| run_session(&mut rng, black_box(&config), &old.shares))
    });
    group.finish();
}

// ---- JSON summary ----------------------------------------------------------

/// Every benchmark id, in report order.
fn all_ids() -> Vec<String> {
    let mut ids: Vec<String> = [
        "ops/scalar_mul",
        "ops/wrap_32B",
        "ops/partial_decrypt",
        "ops/verify_partial",
    ]
    .map(String::from)
    .into();
    for (t, n) in COMBINE_SIZES {
        ids.push(format!("combine/optimistic/t{t}_n{n}"));
        ids.push(format!("combine/verify_all/t{t}_n{n}"));
    }
    for (t, n) in DKG_SIZES {
        ids.push(format!("session/dkg/t{t}_n{n}"));
    }
    ids.push("session/refresh/t3_n5".into());
    ids.push("session/reshare/t2_n3_to_t3_n5".into());
    ids
}

/// `(name, benchmark id, limit in scalar multiplications)`.
const TARGETS: [(&str, &str, f64); 4] = [
    ("wrap", "ops/wrap_32B", 2.5),
    ("partial_with_proof", "ops/partial_decrypt", 4.0),
    ("combine_t3_optimistic", "combine/optimistic/t3_n5", 2.5),
    ("combine_t3_verify_all", "combine/verify_all/t3_n5", 11.0),
];

/// Where criterion writes, found the way criterion finds it.
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(target).join("criterion");
    }
    let from_metadata = std::env::var_os("CARGO").and_then(|cargo| {
        let out = Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--no-deps"])
            .output()
            .ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        json_string_after(&text, "\"target_directory\":")
    });
    match from_metadata {
        Some(target) => PathBuf::from(target).join("criterion"),
        None => PathBuf::from("target/criterion"),
    }
}

/// The JSON string value following `key` (handles `\"` and `\\` escapes).
fn json_string_after(text: &str, key: &str) -> Option<String> {
    let rest = &text[text.find(key)? + key.len()..];
    let rest = rest.trim_start().strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(ch) = chars.next() {
        match ch {
            '"' => return Some(out),
            '\\' => out.push(chars.next()?),
            other => out.push(other),
        }
    }
    None
}

/// The median point estimate (ns) of one benchmark, if criterion wrote it
/// during this run.
fn median_ns(dir: &Path, id: &str, since: SystemTime) -> Option<f64> {
    let path = dir.join(id).join("new").join("estimates.json");
    let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
    if modified < since {
        return None;
    }
    let text = std::fs::read_to_string(&path).ok()?;
    let median = &text[text.find("\"median\"")?..];
    let key = "\"point_estimate\":";
    let value = &median[median.find(key)? + key.len()..];
    let end = value.find([',', '}'])?;
    value[..end].trim().parse().ok()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn json_number(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "null".into(),
    }
}

fn print_summary(since: SystemTime) {
    let dir = criterion_dir();
    let medians: Vec<(String, Option<f64>)> = all_ids()
        .into_iter()
        .map(|id| {
            let m = median_ns(&dir, &id, since);
            (id, m)
        })
        .collect();
    if medians.iter().all(|(_, m)| m.is_none()) {
        eprintln!(
            "no benchmark results from this run under {}; no JSON summary",
            dir.display()
        );
        return;
    }
    let unit_ns = medians
        .iter()
        .find(|(id, _)| id == UNIT_ID)
        .and_then(|(_, m)| *m);
    let ratio = |m: Option<f64>| Some(m? / unit_ns?);
    let mut out = String::from("{\n");
    out += &format!(
        "  \"crate\": \"qk-crypto\",\n  \"cpu\": \"{}\",\n",
        cpu_model().replace('"', "'")
    );
    out += &format!(
        "  \"unit\": \"{UNIT_ID}\",\n  \"unit_median_us\": {},\n",
        json_number(unit_ns.map(|n| n / 1e3), 3)
    );
    out += "  \"benchmarks\": [\n";
    let rows: Vec<String> = medians
        .iter()
        .map(|(id, m)| {
            format!(
                "    {{\"id\": \"{id}\", \"median_us\": {}, \"ratio_to_unit\": {}}}",
                json_number(m.map(|n| n / 1e3), 3),
                json_number(ratio(*m), 3)
            )
        })
        .collect();
    out += &rows.join(",\n");
    out += "\n  ],\n  \"targets\": [\n";
    let rows: Vec<String> = TARGETS
        .iter()
        .map(|(name, id, limit)| {
            let r = medians.iter().find(|(i, _)| i == id).and_then(|(_, m)| ratio(*m));
            let status = match r {
                Some(r) if r <= *limit => "\"met\"",
                Some(_) => "\"missed\"",
                None => "null",
            };
            format!(
                "    {{\"name\": \"{name}\", \"id\": \"{id}\", \"limit_mults\": {limit}, \"ratio_to_unit\": {}, \"status\": {status}, \"met\": {}}}",
                json_number(r, 3),
                r.map_or("null".to_string(), |r| (r <= *limit).to_string())
            )
        })
        .collect();
    out += &rows.join(",\n");
    out += "\n  ]\n}";
    println!("{out}");
}

fn main() {
    let started = SystemTime::now();
    let mut c = Criterion::default()
        .sample_size(40)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .nresamples(20_000)
        .configure_from_args();
    bench_ops(&mut c);
    bench_combine(&mut c);
    bench_sessions(&mut c);
    c.final_summary();
    print_summary(started);
}
