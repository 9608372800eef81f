//! Latency statistics for benchmark binaries.

use serde::Serialize;
use std::time::Duration;

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
