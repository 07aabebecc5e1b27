//! Facts about the machine metaforge runs on that several layers need: where its caches
//! live and which Python interpreter runs candidates. A leaf: it imports nothing of the crate.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};

/// Folder for fetched weights: `$METAFORGE_CACHE`, else `$XDG_CACHE_HOME/metaforge`, else
/// `~/.cache/metaforge`.
pub fn cache_root() -> PathBuf {
    if let Ok(d) = std::env::var("METAFORGE_CACHE") {
        return PathBuf::from(d);
    }
    if let Ok(d) = std::env::var("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("metaforge");
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    PathBuf::from(home).join(".cache").join("metaforge")
}

/// The real Python interpreter, resolved once. Why: `python3` on PATH may be a version
/// manager shim costing ~100 ms a start; the interpreter it resolves to starts in ~10 ms.
/// `$METAFORGE_PYTHON` overrides.
pub fn python_interpreter() -> Result<PathBuf> {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    if let Some(p) = PY.get() {
        return Ok(p.clone());
    }
    let resolved = match std::env::var_os("METAFORGE_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => {
            let out = Command::new("python3")
                .args(["-c", "import sys; print(sys.executable)"])
                .output()
                .context(
                    "cannot run python3; fix: install Python 3 (apt-get install python3) or set METAFORGE_PYTHON",
                )?;
            if !out.status.success() {
                bail!("python3 failed to start; fix: install Python 3 or set METAFORGE_PYTHON to an interpreter");
            }
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        }
    };
    if !resolved.exists() {
        bail!(
            "Python interpreter {} does not exist; fix: set METAFORGE_PYTHON",
            resolved.display()
        );
    }
    Ok(PY.get_or_init(|| resolved).clone())
}
