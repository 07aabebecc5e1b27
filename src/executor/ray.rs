//! The Ray executor: a bridge process (`runtime/ray/bridge.py`, in Ray's own venv) joins the
//! cluster and submits each shard as a Ray task; the task runs `metaforge shard` on its node;
//! the node calls back to this process for every model call; Ray returns the worker's result.
//!
//! Exactly once: a shard's result is taken from the one value Ray returns for its task, so a
//! rerun cannot add a second copy; model calls are answered here, by the evaluation's own
//! handler, so cache rows, the budget and guard records are written by this process alone;
//! and when Ray reruns a shard, the rerun's connection supersedes the dead attempt's, the
//! handler forgets that attempt (sample numbering, guard monitors), and the rerun's calls
//! repeat the same requests, which the cache answers without a second model call.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::unbounded;
use rand::RngCore;
use serde_json::{json, Value};

use super::callback::{listen, serve_attempt, Registry, ShardEvent};
use super::{ExecutorStats, ShardLimits, ShardRequest};
use crate::config::ExecutorConfig;
use crate::pyenv::PinnedEnv;
use crate::sandbox::{LlmHandler, WorkerRun};

/// Ray, pinned, in its own venv under the cache folder (`$METAFORGE_RAY_PYTHON` overrides:
/// a Python with the cluster's Ray version, which must match the head's).
pub const RAY_ENV: PinnedEnv = PinnedEnv {
    requirement: "ray==2.40.0",
    folder: "ray-2.40.0",
    override_var: "METAFORGE_RAY_PYTHON",
};

pub struct RayExecutor {
    bridge: Mutex<Bridge>,
    registry: Registry,
    token: String,
    callback: String,
    shards: AtomicU64,
    retried: AtomicU64,
    /// The bridge's log (Ray's own messages); named in errors.
    log: PathBuf,
}

struct Bridge {
    child: Child,
    stdin: Option<ChildStdin>,
}

/// The CPU instructions this binary was compiled to use beyond the architecture's baseline,
/// as `/proc/cpuinfo` names them. The bridge checks a node has them before it runs the
/// shipped binary there. Why: the project's build is portable (`.cargo/config.toml`) and this
/// is empty, but a build with `RUSTFLAGS="-C target-cpu=..."` uses that CPU's instructions,
/// and a node whose CPU lacks one would die of SIGILL, named nowhere.
pub fn cpu_flags_built_for() -> Vec<&'static str> {
    let mut flags = Vec::new();
    macro_rules! flag {
        ($($feature:literal => $cpuinfo:literal),*) => {
            $(if cfg!(target_feature = $feature) { flags.push($cpuinfo); })*
        };
    }
    flag!(
        "sse3" => "pni", "ssse3" => "ssse3", "sse4.1" => "sse4_1", "sse4.2" => "sse4_2",
        "popcnt" => "popcnt", "avx" => "avx", "avx2" => "avx2", "fma" => "fma", "f16c" => "f16c",
        "bmi1" => "bmi1", "bmi2" => "bmi2", "lzcnt" => "abm", "movbe" => "movbe",
        "avx512f" => "avx512f", "avx512bw" => "avx512bw", "avx512vl" => "avx512vl",
        "avx512dq" => "avx512dq", "avx512cd" => "avx512cd"
    );
    flags
}

impl RayExecutor {
    pub fn start(cfg: &ExecutorConfig) -> Result<Self> {
        let python = RAY_ENV.python()?;
        let script = crate::sandbox::runtime_dir()?.join("ray").join("bridge.py");
        let binary = match &cfg.node_binary {
            Some(path) => json!({"path": path, "ship": false}),
            None => json!({
                "path": std::env::current_exe()?.display().to_string(),
                "ship": true,
                "cpu_flags": cpu_flags_built_for(),
            }),
        };
        let settings = json!({
            "address": cfg.address,
            "max_retries": cfg.max_retries,
            "cpus_per_shard": cfg.cpus_per_shard,
            "binary": binary,
        });
        let log = std::env::temp_dir().join(format!("metaforge-ray-bridge-{}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let mut child = Command::new(&python)
            .arg("-u")
            .arg(&script)
            .arg(settings.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start the Ray bridge with {}", python.display()))?;
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().context("bridge stdout")?).lines();
        let registry: Registry = Arc::new(Mutex::new(HashMap::new()));
        let (ready_tx, ready_rx) = crossbeam_channel::bounded(1);
        let r = registry.clone();
        std::thread::Builder::new()
            .name("ray-bridge".into())
            .spawn(move || dispatch(lines, ready_tx, &r))?;
        let fail = |child: &mut Child, why: String| {
            let _ = child.kill();
            let _ = child.wait();
            // The config names an address where no cluster answers: bad input, like a
            // dataset path where no file is.
            crate::types::BadInput::wrap(anyhow!(
                "cannot join the Ray cluster at {:?}: {why}\nfix: start it (`ray start --head`) or correct executor.address; the bridge's log: {}\n{}",
                cfg.address.as_deref().unwrap_or(""),
                log.display(),
                crate::sandbox::tail(&std::fs::read_to_string(&log).unwrap_or_default(), 1500)
            ))
        };
        // ray.init retries an unreachable head for ever; two minutes is plenty for a live one.
        let ready: Value = match ready_rx.recv_timeout(std::time::Duration::from_secs(120)) {
            Ok(line) => match serde_json::from_str(&line) {
                Ok(v) => v,
                Err(_) => return Err(fail(&mut child, format!("the bridge said {line:?}"))),
            },
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                return Err(fail(&mut child, "no answer within 120 s".into()))
            }
            Err(_) => return Err(fail(&mut child, "the bridge exited".into())),
        };
        if let Some(why) = ready.get("fatal").and_then(Value::as_str) {
            return Err(fail(&mut child, why.to_string()));
        }
        let node_ip = ready["node_ip"].as_str().unwrap_or("127.0.0.1").to_string();
        let host = cfg.callback_host.clone().unwrap_or(node_ip);
        let mut token = [0u8; 32];
        rand::rng().fill_bytes(&mut token);
        let token = hex::encode(token);
        let bound = listen(
            &format!("{host}:{}", cfg.callback_port),
            token.clone(),
            registry.clone(),
        )?;
        let callback = format!("{host}:{}", bound.port());
        tracing::info!(cluster = %ready, %callback, "joined the Ray cluster");
        Ok(Self {
            bridge: Mutex::new(Bridge { child, stdin }),
            registry,
            token,
            callback,
            shards: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            log,
        })
    }

    pub fn stats(&self) -> ExecutorStats {
        ExecutorStats {
            shards: self.shards.load(Ordering::SeqCst),
            retried_attempts: self.retried.load(Ordering::SeqCst),
        }
    }

    pub fn run_shard(
        &self,
        code: &str,
        inputs: &[(String, Value)],
        limits: &ShardLimits,
        handler: &dyn LlmHandler,
    ) -> Result<WorkerRun> {
        let mut id = [0u8; 12];
        rand::rng().fill_bytes(&mut id);
        let shard = hex::encode(id);
        let request = ShardRequest {
            shard: shard.clone(),
            token: self.token.clone(),
            callback: self.callback.clone(),
            code: code.to_string(),
            inputs: inputs.to_vec(),
            limits: limits.clone(),
        };
        let (tx, rx) = unbounded();
        self.registry.lock().unwrap().insert(shard.clone(), tx);
        self.shards.fetch_add(1, Ordering::SeqCst);
        let submitted = self.submit(&shard, &serde_json::to_string(&request)?);
        let finished = submitted.and_then(|()| self.follow(&shard, &rx, handler));
        self.registry.lock().unwrap().remove(&shard);
        let output = finished?;
        serde_json::from_str(&output).with_context(|| {
            format!(
                "shard {shard}: the node's answer is not a worker result: {}",
                crate::sandbox::tail(&output, 300)
            )
        })
    }

    fn submit(&self, shard: &str, spec: &str) -> Result<()> {
        let mut bridge = self.bridge.lock().unwrap();
        let line = json!({"submit": {"id": shard, "spec": spec}}).to_string() + "\n";
        let sent = bridge
            .stdin
            .as_mut()
            .map(|s| s.write_all(line.as_bytes()).and_then(|()| s.flush()));
        if !matches!(sent, Some(Ok(()))) {
            bail!("the Ray bridge is gone; its log: {}", self.log.display());
        }
        Ok(())
    }

    /// Serves the shard's attempts until Ray returns. A new attempt supersedes the one before:
    /// its connection is shut down and its in-flight calls finish before the handler forgets
    /// it, so the rerun starts from a clean state.
    fn follow(
        &self,
        shard: &str,
        events: &crossbeam_channel::Receiver<ShardEvent>,
        handler: &dyn LlmHandler,
    ) -> Result<String> {
        std::thread::scope(|scope| {
            let mut current: Option<(TcpStream, std::thread::ScopedJoinHandle<'_, ()>)> = None;
            let mut attempts = 0u32;
            loop {
                let event = events
                    .recv()
                    .map_err(|_| anyhow!("shard {shard}: nobody will answer (the executor stopped)"))?;
                match event {
                    ShardEvent::Attempt(stream) => {
                        attempts += 1;
                        if let Some((old, serving)) = current.take() {
                            let _ = old.shutdown(Shutdown::Both);
                            let _ = serving.join();
                        }
                        if attempts > 1 {
                            self.retried.fetch_add(1, Ordering::SeqCst);
                            tracing::warn!(shard, attempts, "Ray reran a shard; the earlier attempt is discarded");
                            handler.restart();
                        }
                        let control = stream.try_clone()?;
                        current = Some((control, scope.spawn(move || serve_attempt(stream, handler))));
                    }
                    ShardEvent::Finished(result) => {
                        // A node that returned closed its connection first, so the attempt's
                        // reader ends by itself after its last messages; a failed one may have
                        // left it half-open (a dead machine sends no FIN), so it is shut.
                        if let Some((control, serving)) = current.take() {
                            if result.is_err() {
                                let _ = control.shutdown(Shutdown::Both);
                            }
                            let _ = serving.join();
                        }
                        return result.map_err(|e| {
                            anyhow!(
                                "shard {shard} failed on the Ray cluster: {}\nfix: see the bridge's log {} and the node's Ray logs; a shard is rerun {} times when its worker dies",
                                crate::sandbox::tail(&e, 2000),
                                self.log.display(),
                                "executor.max_retries"
                            )
                        });
                    }
                }
            }
        })
    }
}

/// Reads the bridge: its first line (ready or fatal) goes to `ready`; every later one is a
/// shard's result, delivered to the shard if it still waits.
fn dispatch(
    mut lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    ready: crossbeam_channel::Sender<String>,
    registry: &Registry,
) {
    match lines.next() {
        Some(Ok(line)) => {
            let _ = ready.send(line);
        }
        _ => return,
    }
    for line in lines {
        let Ok(line) = line else { break };
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let Some(id) = msg["id"].as_str() else { continue };
        let result = match (msg["ok"].as_str(), msg["error"].as_str()) {
            (Some(out), _) => Ok(out.to_string()),
            (_, Some(e)) => Err(e.to_string()),
            _ => Err(format!("the bridge answered {line}")),
        };
        if let Some(tx) = registry.lock().unwrap().get(id) {
            let _ = tx.send(ShardEvent::Finished(result));
        }
    }
    // The bridge is gone: every shard still waiting fails.
    for tx in registry.lock().unwrap().values() {
        let _ = tx.send(ShardEvent::Finished(Err("the Ray bridge exited".into())));
    }
}

impl Drop for RayExecutor {
    fn drop(&mut self) {
        let mut bridge = self.bridge.lock().unwrap();
        // Closing stdin asks the bridge to leave the cluster; it is killed if it lingers.
        drop(bridge.stdin.take());
        for _ in 0..50 {
            if matches!(bridge.child.try_wait(), Ok(Some(_))) {
                let _ = std::fs::remove_file(&self.log);
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = bridge.child.kill();
        let _ = bridge.child.wait();
    }
}

/// Keeps Ray on the loopback address: without it Ray swaps 127.0.0.1 for the machine's
/// routable address (`ray._private.services.resolve_ip_for_localhost`).
pub const LOOPBACK_ONLY: (&str, &str) = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0");

/// A one-machine Ray cluster on 127.0.0.1 (`ray start --head --block` in its own process
/// group), for trying the executor without a cluster, the tests and the benchmark. Dropping
/// it kills the head and every process it started.
pub struct LocalRayHead {
    child: Child,
    pub address: String,
    _dir: tempfile::TempDir,
}

impl LocalRayHead {
    /// Starts a head with `cpus` worker slots (Ray starts a worker process per running task)
    /// and waits until it accepts drivers.
    pub fn start(cpus: u32) -> Result<Self> {
        use std::os::unix::process::CommandExt;
        let python = RAY_ENV.python()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        // Ray's session sockets must fit a unix socket path: a short folder under /tmp.
        let dir = tempfile::Builder::new().prefix("ray").tempdir_in("/tmp")?;
        let log = dir.path().join("head.log");
        let log_file = std::fs::File::create(&log)?;
        let child = Command::new(&python)
            .args(["-u", "-m", "ray.scripts.scripts", "start", "--head", "--block"])
            .args(["--node-ip-address", "127.0.0.1", "--port", &port.to_string()])
            .args(["--num-cpus", &cpus.to_string()])
            .args(["--include-dashboard", "false", "--disable-usage-stats"])
            .arg("--temp-dir")
            .arg(dir.path())
            .env(LOOPBACK_ONLY.0, LOOPBACK_ONLY.1)
            .process_group(0)
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("cannot start `ray start --head`")?;
        let mut head = Self {
            child,
            address: format!("127.0.0.1:{port}"),
            _dir: dir,
        };
        // `ray start` prints a banner that says so once the head is up.
        let started = std::time::Instant::now();
        loop {
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            if said.contains("Ray runtime started") {
                return Ok(head);
            }
            if head.child.try_wait()?.is_some() || started.elapsed() > std::time::Duration::from_secs(120) {
                bail!(
                    "`ray start --head` did not start:\n{}",
                    crate::sandbox::tail(&said, 3000)
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

impl Drop for LocalRayHead {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}
