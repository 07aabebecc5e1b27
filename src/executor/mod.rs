//! Where a shard of an evaluation (one candidate × a subset of tasks) runs: `local` starts the
//! sandboxed worker on this machine; `ray` submits the shard as a Ray task that starts the
//! same sandboxed worker on a cluster node (`metaforge shard`), whose model calls come back
//! here over the callback connection.
//!
//! Why the driver keeps the gateway: the cache, the budget, the accounting and the guards
//! each need one point of truth. A gateway per node would split the budget, duplicate cache
//! writes, need the API key on every node and make "each call once" a distributed problem;
//! calling back costs one round trip per model call, small beside the model's own latency
//! (`benches/ray_shards.rs`). See ARCHITECTURE.md.
//!
//! Architecture Invariant: the executor only moves a shard and its answers; what a shard
//! computes is the same whichever executor ran it.

mod callback;
mod ray;
mod remote;

use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{EvaluationConfig, ExecutorConfig, ExecutorKind};
use crate::sandbox::{run_worker, Isolation, IsolationMode, LlmHandler, WorkerLimits, WorkerRun};

pub use ray::{cpu_flags_built_for, LocalRayHead, RayExecutor, LOOPBACK_ONLY, RAY_ENV};
pub use remote::{die_with_parent, serve_shard};

/// The limits of one shard's worker, as data: a node resolves the isolation layers its own
/// kernel offers, so `IsolationMode` travels rather than `Isolation`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardLimits {
    pub deadline: Duration,
    /// How long the program may take to load (its module-level code) before its first task.
    #[serde(default = "default_load_deadline")]
    pub load_deadline: Duration,
    pub memory_mb: u64,
    pub cpu_s: u64,
    pub tasks_in_flight: usize,
    pub disk_mb: u64,
    pub isolation: IsolationMode,
}

impl ShardLimits {
    /// The limits of a shard of `tasks` tasks under the experiment's evaluation settings.
    pub fn for_tasks(cfg: &EvaluationConfig, tasks: usize) -> Self {
        let waves = tasks.div_ceil(cfg.tasks_in_flight.max(1)) as u64;
        Self {
            deadline: Duration::from_secs(10 + cfg.task_timeout_s * waves.max(1)),
            load_deadline: Duration::from_secs(cfg.load_timeout_s),
            memory_mb: cfg.memory_mb,
            cpu_s: cfg.cpu_s,
            tasks_in_flight: cfg.tasks_in_flight,
            disk_mb: cfg.disk_mb,
            isolation: cfg.isolation,
        }
    }

    /// The worker limits on the machine that runs the shard.
    pub fn worker_limits(&self) -> Result<WorkerLimits> {
        Ok(WorkerLimits {
            deadline: self.deadline,
            load_deadline: self.load_deadline,
            memory_mb: self.memory_mb,
            cpu_s: self.cpu_s,
            tasks_in_flight: self.tasks_in_flight,
            disk_mb: self.disk_mb,
            isolation: Isolation::for_mode(self.isolation)?,
            ..WorkerLimits::default()
        })
    }
}

fn default_load_deadline() -> Duration {
    WorkerLimits::default().load_deadline
}

/// Runs shards. Built once per run from `[executor]`.
pub enum Executor {
    Local,
    Ray(RayExecutor),
}

/// What an executor did over a run (the `executor` event at the end of a run).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ExecutorStats {
    pub shards: u64,
    /// Attempts superseded by a rerun (a worker or node died mid-shard). An attempt that
    /// died before it reached the driver is invisible here, and harmless: it asked nothing.
    pub retried_attempts: u64,
}

impl Executor {
    /// Starts what `cfg` names: nothing for `local`; for `ray`, the bridge process that joins
    /// the cluster (installing Ray into its own venv on first use) and the callback listener.
    pub fn start(cfg: &ExecutorConfig) -> Result<Self> {
        Ok(match cfg.kind {
            ExecutorKind::Local => Executor::Local,
            ExecutorKind::Ray => Executor::Ray(RayExecutor::start(cfg)?),
        })
    }

    /// Runs `code` over `inputs` in a sandboxed worker and returns what it produced; every
    /// model call of the worker is answered by `handler`, here.
    pub fn run_shard(
        &self,
        code: &str,
        inputs: &[(String, Value)],
        limits: &ShardLimits,
        handler: &dyn LlmHandler,
    ) -> Result<WorkerRun> {
        match self {
            Executor::Local => run_worker(code, inputs, handler, &limits.worker_limits()?),
            Executor::Ray(ray) => ray.run_shard(code, inputs, limits, handler),
        }
    }

    pub fn stats(&self) -> ExecutorStats {
        match self {
            Executor::Local => ExecutorStats::default(),
            Executor::Ray(ray) => ray.stats(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Executor::Local => "local",
            Executor::Ray(_) => "ray",
        }
    }
}

/// What the driver sends a node for one shard (`metaforge shard` reads it on stdin).
#[derive(Debug, Serialize, Deserialize)]
pub struct ShardRequest {
    /// Names the shard on the callback connection; random per submission.
    pub shard: String,
    /// The run's secret: a connection that does not present it is refused.
    pub token: String,
    /// `host:port` of the driver's callback listener.
    pub callback: String,
    pub code: String,
    pub inputs: Vec<(String, Value)>,
    pub limits: ShardLimits,
}

#[cfg(test)]
mod tests {
    //! The callback path without Ray: `serve_shard` (the node side) in a thread, the driver's
    //! listener and `serve_attempt` answering with a SCRIPTED handler.
    use super::callback::{listen, serve_attempt, Registry, ShardEvent};
    use super::*;
    use crate::llm::Usage;
    use crate::sandbox::{LlmCall, WorkerExit};

    struct Upper;
    impl LlmHandler for Upper {
        fn handle(&self, task: Option<&str>, call: &LlmCall) -> Result<(Vec<String>, Usage), String> {
            let text = call
                .messages
                .last()
                .map(|m| m.content.to_uppercase())
                .unwrap_or_default();
            Ok((vec![format!("{}:{text}", task.unwrap_or("-"))], Usage::default()))
        }
    }

    fn request(shard: &str, token: &str, callback: String) -> ShardRequest {
        ShardRequest {
            shard: shard.into(),
            token: token.into(),
            callback,
            code: "from metaforge import llm\ndef forward(task):\n    return llm(task['q'])\n".into(),
            inputs: vec![
                ("a".into(), serde_json::json!({"q": "x"})),
                ("b".into(), serde_json::json!({"q": "y"})),
            ],
            limits: ShardLimits::for_tasks(&EvaluationConfig::default(), 2),
        }
    }

    #[test]
    fn a_remote_shard_asks_the_driver_for_its_model_calls() {
        let registry: Registry = Default::default();
        let addr = listen("127.0.0.1:0", "secret".into(), registry.clone()).unwrap();
        let (tx, rx) = crossbeam_channel::unbounded();
        registry.lock().unwrap().insert("s1".into(), tx);
        let req = serde_json::to_vec(&request("s1", "secret", addr.to_string())).unwrap();
        let node = std::thread::spawn(move || {
            let mut out = Vec::new();
            serve_shard(&req[..], &mut out).map(|()| out)
        });
        let Ok(ShardEvent::Attempt(stream)) = rx.recv() else {
            panic!("no attempt")
        };
        serve_attempt(stream, &Upper);
        let out = node.join().unwrap().unwrap();
        let run: WorkerRun = serde_json::from_slice(&out).unwrap();
        assert_eq!(run.exit, WorkerExit::Completed);
        assert_eq!(run.tasks["a"].output.as_deref(), Some("a:X"));
        assert_eq!(run.tasks["b"].output.as_deref(), Some("b:Y"));
    }

    /// Connections that never say hello cost the driver no thread each: admission reads the
    /// hello before anything is spent on a connection (a thread per connection, blocked in
    /// its read, was started before the token was checked).
    #[test]
    fn silent_connections_get_no_thread_of_their_own() {
        fn threads() -> usize {
            std::fs::read_to_string("/proc/self/status")
                .unwrap()
                .lines()
                .find_map(|l| l.strip_prefix("Threads:").map(|n| n.trim().parse().unwrap()))
                .unwrap()
        }
        let registry: Registry = Default::default();
        let addr = listen("127.0.0.1:0", "secret".into(), registry.clone()).unwrap();
        let before = threads();
        let silent: Vec<_> = (0..100).map(|_| std::net::TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let during = threads();
        assert!(
            during < before + 40,
            "{before} threads before, {during} with 100 silent connections"
        );
        drop(silent);
        // The listener still answers, in turn.
        let req = serde_json::to_vec(&request("s1", "guess", addr.to_string())).unwrap();
        let err = format!("{:#}", serve_shard(&req[..], Vec::new()).unwrap_err());
        assert!(
            err.contains("wrong run token") || err.contains("no such shard"),
            "{err}"
        );
    }

    #[test]
    fn a_wrong_token_or_an_unknown_shard_is_refused() {
        let registry: Registry = Default::default();
        let addr = listen("127.0.0.1:0", "secret".into(), registry.clone()).unwrap();
        let (tx, _rx) = crossbeam_channel::unbounded();
        registry.lock().unwrap().insert("s1".into(), tx);
        for (shard, token, why) in [("s1", "guess", "wrong run token"), ("s9", "secret", "no such shard")] {
            let req = serde_json::to_vec(&request(shard, token, addr.to_string())).unwrap();
            let err = format!("{:#}", serve_shard(&req[..], Vec::new()).unwrap_err());
            assert!(
                err.contains("the driver refused this shard") && err.contains(why),
                "{err}"
            );
        }
    }
}
