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

/// A request from outside (SIGINT, SIGTERM) to stop at the next safe point. Process-wide,
/// as signals are: the handler that records it (`app`) and the loop that honours it
/// (`search`) share nothing else.
static STOP_REQUESTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
static STOP_SIGNAL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Records a stop request by `signal`; returns how many have come so far.
pub fn request_stop(signal: i32) -> u32 {
    use std::sync::atomic::Ordering;
    STOP_SIGNAL.store(signal, Ordering::SeqCst);
    STOP_REQUESTS.fetch_add(1, Ordering::SeqCst) + 1
}

/// The signal that asked to stop, if one did.
pub fn stop_requested() -> Option<i32> {
    use std::sync::atomic::Ordering;
    (STOP_REQUESTS.load(Ordering::SeqCst) > 0).then(|| STOP_SIGNAL.load(Ordering::SeqCst))
}
