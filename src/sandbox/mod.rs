//! Sandboxed Python workers. One worker process runs one candidate over a shard of tasks and
//! speaks JSON lines with the host on two dedicated pipes (fds 3 and 4), never on stdout.
//!
//! Why a process, a process group and rlimits: candidate code is model-written. A thread
//! cannot be killed (OpenEvolve's most reported bug class); a process group can, together
//! with anything it spawned. The worker holds no key and no socket: `llm()` is a request on
//! the pipe that the host answers through the gateway.
//!
//! Architecture Invariant: the sandbox never touches the archive; it returns values.

pub mod fork_server;
pub mod isolation;
mod outcome;
mod protocol;
mod worker;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result};

pub use crate::host::python_interpreter;
pub use crate::types::{IsolationMode, Outcome};
pub use isolation::Isolation;
pub use outcome::{classify, error_kind, task_outcome};
pub use protocol::{LlmCall, WorkerMessage};
pub use worker::{
    run_worker, sweep_stale_workdirs, tail, unguarded_reply, CallError, Denial, LlmHandler, TaskRun, WorkerExit,
    WorkerLimits, WorkerRun, WorkerStart,
};

/// glibc's malloc gives each new thread its own arena, reserving 64 MiB of address space
/// each (up to 8 per core). Under the worker's RLIMIT_AS that made a 512 MB worker refuse
/// its 14th thread, and a thread flood could leave the interpreter no room to report its
/// tasks (a timeout instead of an error). Two arenas keep a thread at its stack's cost. Set
/// where the interpreter starts (the fork server, an exec'd worker): glibc reads it once.
const MALLOC_ARENAS: (&str, &str) = ("MALLOC_ARENA_MAX", "2");

/// Starts a real worker under every available layer with `runtime/probe_candidate.py`, which
/// tries a connection, a secret file, a fork and a write outside; one line per attempt.
pub fn live_probe() -> Result<Vec<String>> {
    struct NoModel;
    impl LlmHandler for NoModel {
        fn handle(&self, _: Option<&str>, _: &LlmCall) -> Result<(Vec<String>, crate::types::Usage), String> {
            Err("no model in the probe".into())
        }
    }
    let code = std::fs::read_to_string(runtime_dir()?.join("probe_candidate.py"))?;
    let limits = WorkerLimits {
        deadline: std::time::Duration::from_secs(20),
        ..WorkerLimits::default()
    };
    let run = run_worker(&code, &[("probe".into(), serde_json::json!({}))], &NoModel, &limits)?;
    let mut lines: Vec<String> = match run.tasks.get("probe").and_then(|t| t.output.clone()) {
        Some(out) => out.lines().map(str::to_string).collect(),
        None => vec![format!("the probe worker did not report: {:?}", run.exit)],
    };
    lines.push(format!(
        "worker start-to-finish: {:.1} ms, {}",
        run.wall.as_secs_f64() * 1e3,
        match fork_server::unavailable() {
            _ if run.forked => "forked by the fork server".to_string(),
            Some(why) => format!("its own interpreter (no fork server: {why})"),
            None => "its own interpreter".to_string(),
        }
    ));
    Ok(lines)
}

/// Folders of the Python installation the worker must read (landlock's read roots): its
/// prefixes and the folder of the executable, resolved once.
pub fn python_prefixes() -> Result<&'static [PathBuf]> {
    static PREFIXES: OnceLock<Vec<PathBuf>> = OnceLock::new();
    if let Some(p) = PREFIXES.get() {
        return Ok(p);
    }
    let python = python_interpreter()?;
    let out = Command::new(&python)
        .args([
            "-I",
            "-S",
            "-c",
            "import sys; print(sys.prefix); print(sys.base_prefix); print(sys.exec_prefix)",
        ])
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    let mut prefixes: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
        .collect();
    if let Some(bin) = python.parent() {
        prefixes.push(bin.to_path_buf());
    }
    if let Ok(real) = std::fs::canonicalize(&python) {
        prefixes.extend(real.parent().map(Path::to_path_buf));
    }
    prefixes.sort();
    prefixes.dedup();
    Ok(PREFIXES.get_or_init(|| prefixes))
}

/// The embedded `runtime/` written once to the cache folder under a content hash, so every
/// worker reads the same files and concurrent metaforge processes never race on them. The
/// modules are byte-compiled once here: workers run with `-B` on a read-only view and would
/// otherwise compile them from source at every start (~7 ms each, `benches/RESULTS.md`).
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
    let root = crate::host::cache_root().join("runtime");
    let dir = root.join(&hash);
    if !dir.join("worker.py").exists() {
        std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
        let staging = tempfile::tempdir_in(&root)?;
        for (p, c) in &files {
            let target = staging.path().join(p);
            std::fs::create_dir_all(target.parent().unwrap())?;
            std::fs::write(&target, c)?;
        }
        // Best effort: without bytecode the workers still run, only slower to start.
        let compiled = python_interpreter().ok().and_then(|py| {
            Command::new(py)
                .args(["-I", "-S", "-m", "compileall", "-q"])
                .arg(staging.path())
                .stdout(std::process::Stdio::null())
                .status()
                .ok()
        });
        if !compiled.is_some_and(|s| s.success()) {
            tracing::warn!("could not byte-compile the worker runtime; workers will compile it at each start");
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
