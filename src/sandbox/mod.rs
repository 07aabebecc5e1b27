//! Sandboxed Python workers. One worker process runs one candidate over a shard of tasks and
//! speaks JSON lines with the host on two dedicated pipes (fds 3 and 4), never on stdout.
//!
//! Why a process, a process group and rlimits: candidate code is model-written. A thread
//! cannot be killed (OpenEvolve's most reported bug class); a process group can, together
//! with anything it spawned. The worker holds no key and no socket: `llm()` is a request on
//! the pipe that the host answers through the gateway.
//!
//! Architecture Invariant: the sandbox never touches the archive; it returns values.

mod protocol;
mod worker;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};

pub use protocol::{LlmCall, WorkerMessage};
pub use worker::{run_worker, LlmHandler, TaskRun, WorkerExit, WorkerLimits, WorkerRun};

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

/// The embedded `runtime/` written once to the cache folder under a content hash, so every
/// worker reads the same files and concurrent metaforge processes never race on them.
pub fn runtime_dir() -> Result<PathBuf> {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    if let Some(d) = DIR.get() {
        return Ok(d.clone());
    }
    use sha2::{Digest, Sha256};
    let mut files = Vec::new();
    collect(&crate::assets::RUNTIME, &mut files);
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = Sha256::new();
    for (p, c) in &files {
        h.update(p.as_bytes());
        h.update(c);
    }
    let hash = hex::encode(&h.finalize()[..8]);
    let root = crate::llm::cache_root().join("runtime");
    let dir = root.join(&hash);
    if !dir.join("worker.py").exists() {
        std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
        let staging = tempfile::tempdir_in(&root)?;
        for (p, c) in &files {
            let target = staging.path().join(p);
            std::fs::create_dir_all(target.parent().unwrap())?;
            std::fs::write(&target, c)?;
        }
        let staged = staging.keep();
        if std::fs::rename(&staged, &dir).is_err() {
            // Another process won the race; its copy is identical.
            let _ = std::fs::remove_dir_all(&staged);
        }
    }
    Ok(DIR.get_or_init(|| dir).clone())
}

fn collect(dir: &include_dir::Dir<'static>, out: &mut Vec<(String, &'static [u8])>) {
    for f in dir.files() {
        let p = f.path().to_string_lossy().to_string();
        if !p.contains("__pycache__") {
            out.push((p, f.contents()));
        }
    }
    for d in dir.dirs() {
        collect(d, out);
    }
}

/// Path of the worker script inside the runtime folder.
pub fn worker_script(runtime: &Path) -> PathBuf {
    runtime.join("worker.py")
}
