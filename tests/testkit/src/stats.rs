//! Latency statistics for benchmark binaries.

use serde::Serialize;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Serialize)]
pub struct LoadResult {
    pub operations: usize,
    pub concurrency: usize,
    pub seconds: f64,
    pub ops_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: usize,
}

/// Summarizes per-operation latencies measured over `elapsed`.
pub fn summarize(
    mut latencies: Vec<Duration>,
    concurrency: usize,
    elapsed: Duration,
    errors: usize,
) -> LoadResult {
    latencies.sort();
    let pick = |q: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies[i].as_secs_f64() * 1000.0
    };
    let seconds = elapsed.as_secs_f64();
    LoadResult {
        operations: latencies.len(),
        concurrency,
        seconds,
        ops_per_second: if seconds > 0.0 {
            latencies.len() as f64 / seconds
        } else {
            0.0
        },
        p50_ms: pick(0.50),
        p99_ms: pick(0.99),
        errors,
    }
}

/// Runs `ops` operations with `concurrency` workers; `op(n)` returns success.
pub async fn load<F, Fut>(concurrency: usize, ops: usize, op: F) -> LoadResult
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let start = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let op = op.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0;
            let mut n = w;
            while n < ops {
                let t = Instant::now();
                if op(n as u64).await {
                    latencies.push(t.elapsed());
                } else {
                    errors += 1;
                }
                n += concurrency;
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::with_capacity(ops);
    let mut errors = 0;
    for w in workers {
        if let Ok((l, e)) = w.await {
            all.extend(l);
            errors += e;
        }
    }
    summarize(all, concurrency, start.elapsed(), errors)
}

/// Runs `op(worker, n)` in `concurrency` workers, each calling it again as
/// soon as its last call returned, for `warmup` and then `measure`. Only
/// calls that start inside the measured window count; the window ends when
/// the last of them returns. `op` returns success.
pub async fn load_timed<F, Fut>(
    concurrency: usize,
    warmup: Duration,
    measure: Duration,
    op: F,
) -> LoadResult
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let op = Arc::new(op);
    let begin = Instant::now() + warmup;
    let end = begin + measure;
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let op = op.clone();
        workers.push(tokio::spawn(async move {
            let (mut latencies, mut errors, mut last) = (Vec::new(), 0, begin);
            for n in 0u64.. {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                let ok = op(w, n).await;
                if t >= begin {
                    last = Instant::now();
                    match ok {
                        true => latencies.push(last - t),
                        false => errors += 1,
                    }
                }
            }
            (latencies, errors, last)
        }));
    }
    let (mut all, mut errors, mut last) = (Vec::new(), 0, begin);
    for w in workers {
        if let Ok((l, e, done)) = w.await {
            all.extend(l);
            errors += e;
            last = last.max(done);
        }
    }
    summarize(
        all,
        concurrency,
        last.saturating_duration_since(begin),
        errors,
    )
}
