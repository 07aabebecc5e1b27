//! Evaluating a candidate over a split: shards of tasks run in parallel sandboxed workers,
//! every `llm()` call answered through the agent gateway, each output scored, and the mean
//! reported with a bootstrap 95% confidence interval.

pub mod staged;
mod stats;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;
use sha2::{Digest, Sha256};

pub use stats::{bootstrap_ci, mean};

use crate::config::EvaluationConfig;
use crate::domain::{Scorer, Task};
use crate::llm::{CallParams, Gateway, Usage};
use crate::sandbox::{classify, run_worker, task_outcome, Isolation, LlmCall, LlmHandler, WorkerLimits};

/// How an evaluation ended (defined by the sandbox, which knows what a breach is).
pub use crate::sandbox::Outcome;

#[derive(Debug, Clone, Serialize)]
pub struct TaskResult {
    pub task_id: String,
    pub score: f64,
    /// ok | error | timeout | memory_limit | cpu_limit | output_limit | policy_denied |
    /// protocol_violation | crashed | load_error
    pub outcome: String,
    pub output: Option<String>,
    pub error: Option<String>,
    pub usage: Usage,
}

#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub split: String,
    pub stage: String,
    pub mean: f64,
    pub ci_lo: f64,
    pub ci_hi: f64,
    pub usage: Usage,
    pub wall_ms: f64,
    pub outcome: Outcome,
    /// Human-readable detail (first traceback, stderr tail): the proposer's debug feedback.
    pub detail: String,
    pub tasks: Vec<TaskResult>,
}

impl Evaluation {
    /// An evaluation from its per-task results: mean and bootstrap 95% CI over their scores.
    #[allow(clippy::too_many_arguments)]
    pub fn from_tasks(
        split: &str,
        stage: &str,
        tasks: Vec<TaskResult>,
        usage: Usage,
        wall_ms: f64,
        outcome: Outcome,
        detail: String,
        bootstrap_samples: usize,
    ) -> Self {
        let scores: Vec<f64> = tasks.iter().map(|r| r.score).collect();
        let (ci_lo, ci_hi) = bootstrap_ci(&scores, bootstrap_samples, 0x5eed);
        Self {
            split: split.into(),
            stage: stage.into(),
            mean: mean(&scores),
            ci_lo,
            ci_hi,
            usage,
            wall_ms,
            outcome,
            detail,
            tasks,
        }
    }

    /// Feedback text for the proposer when the candidate misbehaved; None when it ran.
    pub fn failure_feedback(&self) -> Option<String> {
        match self.outcome {
            Outcome::Ok => None,
            _ => Some(format!("outcome: {}\n{}", self.outcome, self.detail)),
        }
    }
}

/// Runs candidates; holds what every evaluation of a run shares.
pub struct Evaluator<'a> {
    pub gateway: &'a Gateway,
    pub cfg: &'a EvaluationConfig,
    pub scorer: Scorer,
}

/// Called once per finished task (progress bars).
pub type TaskDone<'a> = &'a (dyn Fn() + Sync);

impl Evaluator<'_> {
    pub fn evaluate(&self, code: &str, tasks: &[Task], split: &str, on_task: TaskDone) -> Result<Evaluation> {
        let shards = self.cfg.shards.min(tasks.len()).max(1);
        let chunk = tasks.len().div_ceil(shards).max(1);
        let pieces: Vec<&[Task]> = tasks.chunks(chunk).collect();
        let runs: Vec<Result<crate::sandbox::WorkerRun>> = std::thread::scope(|scope| {
            let handles: Vec<_> = pieces
                .iter()
                .map(|piece| scope.spawn(move || self.run_shard(code, piece, on_task)))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("shard thread panicked"))
                .collect()
        });
        let runs = runs.into_iter().collect::<Result<Vec<_>>>()?;
        let (outcome, details) = classify(&runs.iter().collect::<Vec<_>>(), self.cfg.cpu_s);
        let mut results = Vec::with_capacity(tasks.len());
        let mut usage = Usage::default();
        let mut wall = Duration::ZERO;
        for (piece, run) in pieces.iter().zip(&runs) {
            wall = wall.max(run.wall);
            for task in piece.iter() {
                let tr = run.tasks.get(&task.id).cloned().unwrap_or_default();
                usage.merge(&tr.usage);
                let kind = task_outcome(&tr, &run.exit);
                let score = if kind == "ok" {
                    self.scorer.score(tr.output.as_deref().unwrap_or(""), &task.answer)
                } else {
                    0.0
                };
                results.push(TaskResult {
                    task_id: task.id.clone(),
                    score,
                    outcome: kind.to_string(),
                    output: tr.output,
                    error: tr.error.or(tr.traceback),
                    usage: tr.usage,
                });
            }
        }
        Ok(Evaluation::from_tasks(
            split,
            "full",
            results,
            usage,
            wall.as_secs_f64() * 1e3,
            outcome,
            details.join("\n---\n"),
            self.cfg.bootstrap_samples,
        ))
    }

    fn run_shard(&self, code: &str, tasks: &[Task], on_task: TaskDone) -> Result<crate::sandbox::WorkerRun> {
        let inputs: Vec<(String, serde_json::Value)> = tasks.iter().map(|t| (t.id.clone(), t.input.clone())).collect();
        let waves = tasks.len().div_ceil(self.cfg.tasks_in_flight.max(1)) as u64;
        let limits = WorkerLimits {
            deadline: Duration::from_secs(10 + self.cfg.task_timeout_s * waves.max(1)),
            memory_mb: self.cfg.memory_mb,
            cpu_s: self.cfg.cpu_s,
            tasks_in_flight: self.cfg.tasks_in_flight,
            disk_mb: self.cfg.disk_mb,
            isolation: Isolation::for_mode(self.cfg.isolation)?,
            ..WorkerLimits::default()
        };
        let handler = AgentCalls {
            gateway: self.gateway,
            samples: Mutex::new(HashMap::new()),
            on_task,
        };
        run_worker(code, &inputs, &handler, &limits)
    }
}

/// Answers a worker's `llm()` calls through the gateway. Identical requests within one task
/// get increasing sample indices, so `n` samples (or a loop of identical calls) are distinct
/// yet replay exactly from the cache.
struct AgentCalls<'a> {
    gateway: &'a Gateway,
    samples: Mutex<HashMap<String, u32>>,
    on_task: TaskDone<'a>,
}

impl LlmHandler for AgentCalls<'_> {
    fn handle(&self, task_id: Option<&str>, call: &LlmCall) -> Result<(Vec<String>, Usage), String> {
        let params = CallParams {
            temperature: call.temperature,
            max_tokens: call.max_tokens,
            json: call.json,
        };
        let probe = self.gateway.request(call.messages.clone(), params, 0);
        let mut h = Sha256::new();
        h.update(task_id.unwrap_or("").as_bytes());
        h.update(self.gateway.cache_key(&probe).as_bytes());
        let key = hex::encode(h.finalize());
        let first = {
            let mut s = self.samples.lock().unwrap();
            let e = s.entry(key).or_insert(0);
            let first = *e;
            *e += call.n;
            first
        };
        // Samples run concurrently so a batching backend decodes them together.
        let replies: Vec<_> = std::thread::scope(|scope| {
            let hs: Vec<_> = (0..call.n)
                .map(|i| {
                    let req = self.gateway.request(call.messages.clone(), params, first + i);
                    scope.spawn(move || self.gateway.complete(&req))
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("llm thread panicked")).collect()
        });
        let mut usage = Usage::default();
        let mut texts = Vec::with_capacity(replies.len());
        for r in replies {
            let r = r.map_err(|e| e.to_string())?;
            usage.add(&r);
            texts.push(r.text);
        }
        Ok((texts, usage))
    }

    fn task_finished(&self) {
        (self.on_task)();
    }
}
