//! What every benchmark binary needs: the binaries built beside it and a
//! description of the machine it ran on.

use std::path::PathBuf;

use anyhow::{bail, Result};

/// `name` in the directory of the running binary (`target/release`).
pub fn sibling_binary(name: &str) -> Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} not found; build it first: cargo build --release -p qk -p qk-node -p qk-testkit",
            path.display()
        );
    }
    Ok(path)
}

/// The CPU model from /proc/cpuinfo (empty where there is none).
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_default()
}

/// Cores this process may use.
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0)
}
