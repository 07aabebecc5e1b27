//! Evaluating a candidate over a split: shards of tasks run in parallel sandboxed workers,
//! every `llm()` call answered through the agent gateway, each output scored, and the mean
//! reported with a bootstrap 95% confidence interval.

pub mod paired;
pub mod racing;
pub mod scorer_code;
pub mod staged;
mod stats;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Result;
use sha2::{Digest, Sha256};

pub use stats::{bootstrap_ci, mean};

use crate::config::EvaluationConfig;
use crate::domain::{Scorer, Task};
use crate::executor::{Executor, ShardLimits};
use crate::guard::{guarded_call, AgentContract, Episodes, GuardOutcome};
use crate::llm::{CallParams, Gateway, Gateways, Message, Usage};
use crate::sandbox::{classify, task_outcome, unguarded_reply, CallError, LlmCall, LlmHandler};
use crate::types::{GuardSummary, TaskGuard};

/// How an evaluation ended (defined by the sandbox, which knows what a breach is).
pub use crate::types::{Evaluation, Outcome, Split, Stage, TaskOutcome, TaskResult};

impl Evaluation {
    /// An evaluation from its per-task results: mean and bootstrap 95% CI over their scores.
    #[allow(clippy::too_many_arguments)]
    pub fn from_tasks(
        split: Split,
        stage: Stage,
        tasks: Vec<TaskResult>,
        usage: Usage,
        wall_ms: f64,
        outcome: Outcome,
        detail: String,
        bootstrap_samples: usize,
    ) -> Self {
        let scores: Vec<f64> = tasks.iter().map(|r| r.score).collect();
        let (ci_lo, ci_hi) = bootstrap_ci(&scores, bootstrap_samples, 0x5eed);
        let guarded: Vec<&TaskGuard> = tasks.iter().filter_map(|t| t.guard.as_ref()).collect();
        let guard = (!guarded.is_empty()).then(|| {
            let mut g = GuardSummary::default();
            guarded.into_iter().for_each(|t| g.add(t));
            g
        });
        Self {
            split,
            stage,
            mean: mean(&scores),
            ci_lo,
            ci_hi,
            usage,
            wall_ms,
            outcome,
            detail,
            tasks,
            guard,
        }
    }

    /// Feedback for the proposer when the candidate broke a hard rule of the agent contract
    /// (it ran, but is infeasible): how often, and the first rules that fired.
    pub fn contract_feedback(&self) -> Option<String> {
        let g = self.guard.as_ref().filter(|g| g.hard > 0)?;
        let hits: Vec<String> = self
            .tasks
            .iter()
            .filter_map(|t| t.guard.as_ref())
            .flat_map(|g| g.hits.iter())
            .filter(|h| !h.rule.starts_with("soft:") && h.rule != "output")
            .take(3)
            .map(|h| format!("- task event {}: {}: {}", h.event, h.rule, h.detail))
            .collect();
        Some(format!(
            "{} hard contract violations over {} tasks (a candidate with any is infeasible):\n{}",
            g.hard,
            g.tasks,
            hits.join("\n")
        ))
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
    /// The agent model `llm()` reaches when it names none.
    pub gateway: &'a Gateway,
    /// Every agent model by name, for `llm(model=...)`; None when the experiment has one.
    pub models: Option<&'a Gateways>,
    pub cfg: &'a EvaluationConfig,
    pub scorer: Scorer,
    /// The experiment's agent contract (`guards.contract`).
    pub agent_contract: Option<&'a AgentContract>,
    /// `guards.require_call_contracts`: the host refuses `llm()` calls without a contract.
    pub require_call_contracts: bool,
    /// The episodic domain's game servers and baseline plays, when candidates are memory
    /// designs.
    pub episodic: Option<&'a dyn EpisodeRunner>,
    /// Where the shards run (this machine, or a Ray cluster).
    pub executor: &'a Executor,
}

/// Evaluates memory designs, which play episodes instead of answering tasks
/// (`episodic::Episodic`). Why a trait: episodic evaluation is built on this layer (its
/// gateway, limits and records), so this layer only hands candidates to it and never
/// imports it.
pub trait EpisodeRunner: Sync {
    fn evaluate(
        &self,
        ev: &Evaluator,
        code: &str,
        tasks: &[Task],
        split: Split,
        on_task: TaskDone,
    ) -> Result<Evaluation>;
}

/// Called once per finished task (progress bars).
pub type TaskDone<'a> = &'a (dyn Fn() + Sync);

impl Evaluator<'_> {
    pub fn evaluate(&self, code: &str, tasks: &[Task], split: Split, on_task: TaskDone) -> Result<Evaluation> {
        if let Some(episodic) = self.episodic {
            return episodic.evaluate(self, code, tasks, split, on_task);
        }
        let inputs: Vec<(String, serde_json::Value)> = tasks.iter().map(|t| (t.id.clone(), t.input.clone())).collect();
        // Contracts are registered (compiled, fallbacks proved) before any task runs; an
        // unsound one fails the candidate like a load error, with the reason as feedback.
        let episodes = match Episodes::register(code, self.agent_contract, self.require_call_contracts, &inputs) {
            Ok(e) => e,
            Err(why) => return Ok(Self::unregistered(tasks, split, why, self.cfg.bootstrap_samples)),
        };
        let shards = self.cfg.shards.min(tasks.len()).max(1);
        let chunk = tasks.len().div_ceil(shards).max(1);
        let pieces: Vec<&[Task]> = tasks.chunks(chunk).collect();
        let episodes = &episodes;
        let runs: Vec<Result<crate::sandbox::WorkerRun>> = std::thread::scope(|scope| {
            let handles: Vec<_> = pieces
                .iter()
                .map(|piece| scope.spawn(move || self.run_shard(code, piece, episodes, on_task)))
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
                let (output, guard) = if episodes.active() {
                    let answered = if kind == TaskOutcome::Ok {
                        tr.output.as_deref()
                    } else {
                        None
                    };
                    let (answer, g) = episodes.finish(&task.id, answered);
                    (if kind == TaskOutcome::Ok { answer } else { tr.output }, Some(g))
                } else {
                    (tr.output, None)
                };
                let aborted = guard.as_ref().is_some_and(|g| g.aborted);
                let score = match &self.scorer {
                    _ if kind != TaskOutcome::Ok || aborted => 0.0,
                    Scorer::Code(_) => 0.0, // scored below, in the scorer's own sandbox
                    builtin => builtin.score(output.as_deref().unwrap_or(""), &task.answer),
                };
                results.push(TaskResult {
                    task_id: task.id.clone(),
                    score,
                    outcome: kind,
                    output,
                    error: tr.error.or(tr.traceback),
                    usage: tr.usage,
                    guard,
                });
            }
        }
        let mut details = details;
        if let Scorer::Code(code) = &self.scorer {
            if let Some(failed) = self.score_with_code(code, tasks, &mut results)? {
                details.push(failed);
            }
        }
        let mut e = Evaluation::from_tasks(
            split,
            Stage::Full,
            results,
            usage,
            wall.as_secs_f64() * 1e3,
            outcome,
            details.join("\n---\n"),
            self.cfg.bootstrap_samples,
        );
        if let Some(g) = &mut e.guard {
            g.tiers = episodes.tiers();
        }
        Ok(e)
    }

    /// Scores the tasks that ran to an answer with scorer code (`scorer_code`): each gets the
    /// scorer's score and its feedback, or score 0, outcome `scorer_error` and the typed
    /// error. Returns a line for the evaluation's detail when the scorer failed somewhere.
    fn score_with_code(
        &self,
        code: &crate::domain::ScorerCode,
        tasks: &[Task],
        results: &mut [TaskResult],
    ) -> Result<Option<String>> {
        let by_id: HashMap<&str, &Task> = tasks.iter().map(|t| (t.id.as_str(), t)).collect();
        let answered: Vec<(&Task, String)> = results
            .iter()
            .filter(|r| r.outcome == TaskOutcome::Ok && !r.guard.as_ref().is_some_and(|g| g.aborted))
            .map(|r| (by_id[r.task_id.as_str()], r.output.clone().unwrap_or_default()))
            .collect();
        let outputs: Vec<(&Task, &str)> = answered.iter().map(|(t, o)| (*t, o.as_str())).collect();
        let scores = scorer_code::score_outputs(code, &outputs, self.cfg, self.executor)?;
        let mut failures = Vec::new();
        for r in results.iter_mut() {
            match scores.get(&r.task_id) {
                Some(Ok(s)) => {
                    r.score = s.score;
                    if !s.feedback.is_empty() {
                        r.error = Some(format!("{}{}", crate::types::SCORER_FEEDBACK, s.feedback));
                    }
                }
                Some(Err(e)) => {
                    r.outcome = TaskOutcome::ScorerError;
                    r.error = Some(e.message.clone());
                    failures.push(e);
                }
                None => {}
            }
        }
        Ok(failures.first().map(|e| {
            format!(
                "the scorer failed on {} of {} tasks (first, {}): {}",
                failures.len(),
                answered.len(),
                e.kind,
                e.message
            )
        }))
    }

    /// The evaluation of a candidate whose contracts could not be registered.
    fn unregistered(tasks: &[Task], split: Split, why: String, bootstrap_samples: usize) -> Evaluation {
        let results = tasks
            .iter()
            .map(|t| TaskResult {
                task_id: t.id.clone(),
                score: 0.0,
                outcome: TaskOutcome::LoadError,
                output: None,
                error: Some(why.clone()),
                usage: Usage::default(),
                guard: None,
            })
            .collect();
        Evaluation::from_tasks(
            split,
            Stage::Full,
            results,
            Usage::default(),
            0.0,
            Outcome::LoadError,
            format!("contract registration failed: {why}\nfix: correct the contract or its fallback so the fallback satisfies it for every input"),
            bootstrap_samples,
        )
    }

    fn run_shard(
        &self,
        code: &str,
        tasks: &[Task],
        episodes: &Episodes,
        on_task: TaskDone,
    ) -> Result<crate::sandbox::WorkerRun> {
        let inputs: Vec<(String, serde_json::Value)> = tasks.iter().map(|t| (t.id.clone(), t.input.clone())).collect();
        let limits = ShardLimits::for_tasks(self.cfg, tasks.len());
        let handler = AgentCalls {
            gateway: self.gateway,
            models: self.models,
            samples: Mutex::new(HashMap::new()),
            episodes,
            inputs: &inputs,
            on_task,
        };
        self.executor.run_shard(code, &inputs, &limits, &handler)
    }
}

/// Answers a worker's `llm()` calls through the gateway. Identical requests within one task
/// get increasing sample indices, so `n` samples (or a loop of identical calls) are distinct
/// yet replay exactly from the cache. With guards, every call passes the agent contract's
/// governance first and a guarded call is sampled until its contract holds.
struct AgentCalls<'a, 'c> {
    gateway: &'a Gateway,
    models: Option<&'a Gateways>,
    samples: Mutex<HashMap<String, u32>>,
    episodes: &'a Episodes<'c>,
    /// The shard's tasks (a rerun restarts their guard state).
    inputs: &'a [(String, serde_json::Value)],
    on_task: TaskDone<'a>,
}

impl AgentCalls<'_, '_> {
    /// The gateway of the model a call names, or the default one.
    fn gateway_for(&self, model: Option<&str>) -> Result<&Gateway, String> {
        let Some(name) = model else {
            return Ok(self.gateway);
        };
        match self.models {
            Some(models) => models.get(name).ok_or_else(|| {
                format!(
                    "llm(model={name:?}): the experiment has no agent model of that name; use one of {:?}",
                    models.names()
                )
            }),
            None if name == crate::config::SINGLE_MODEL => Ok(self.gateway),
            None => Err(format!(
                "llm(model={name:?}): the experiment has one agent model; leave model= out (or name it in [models.agent.{name}])"
            )),
        }
    }

    fn complete(
        &self,
        task_id: Option<&str>,
        model: Option<&str>,
        messages: &[Message],
        params: CallParams,
        n: u32,
    ) -> Result<(Vec<String>, Usage), String> {
        let gateway = self.gateway_for(model)?;
        let probe = gateway.request(messages.to_vec(), params.clone(), 0);
        let mut h = Sha256::new();
        h.update(task_id.unwrap_or("").as_bytes());
        h.update(gateway.cache_key(&probe).as_bytes());
        let key = hex::encode(h.finalize());
        let first = {
            let mut s = self.samples.lock().unwrap();
            let e = s.entry(key).or_insert(0);
            let first = *e;
            *e += n;
            first
        };
        // Samples run concurrently so a batching backend decodes them together; the first on
        // this thread (a thread per sample cost more than an instant model's whole call).
        let replies: Vec<_> = std::thread::scope(|scope| {
            let others: Vec<_> = (1..n)
                .map(|i| {
                    let req = gateway.request(messages.to_vec(), params.clone(), first + i);
                    scope.spawn(move || gateway.complete(&req))
                })
                .collect();
            let own = gateway.complete(&gateway.request(messages.to_vec(), params, first));
            std::iter::once(own)
                .chain(others.into_iter().map(|h| h.join().expect("llm thread panicked")))
                .collect()
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

    fn guarded(
        &self,
        task_id: Option<&str>,
        call: &LlmCall,
        id: &str,
    ) -> Result<(Vec<serde_json::Value>, Usage), CallError> {
        let contract = self.episodes.contract(id).ok_or_else(|| {
            CallError::contract(format!("contract {id:?} is not declared in this program's CONTRACTS"))
        })?;
        let params = call.params();
        let input = call.input.clone().unwrap_or_else(|| serde_json::json!({}));
        let mut usage = Usage::default();
        let mut last_text = String::new();
        let (outcome, record) = guarded_call(contract, &input, |_, feedback| {
            let mut messages = call.messages.clone();
            if contract.spec.on_fail == crate::guard::contract::OnFail::Reask {
                if let Some(v) = feedback.last() {
                    messages.push(Message::new("assistant", last_text.clone()));
                    messages.push(Message::new("user", crate::guard::sampler::reask_feedback(v)));
                }
            }
            let (texts, u) = self.complete(task_id, call.model.as_deref(), &messages, params.clone(), 1)?;
            usage.merge(&u);
            last_text = texts.into_iter().next().unwrap_or_default();
            Ok(last_text.clone())
        });
        let tokens = usage.tokens();
        let label = record.outcome.as_str();
        self.episodes
            .after_call(task_id, Some(id), label, tokens, &last_text, Some(record));
        match outcome {
            GuardOutcome::Accepted { value, .. } | GuardOutcome::Fallback { value } => Ok((vec![value], usage)),
            GuardOutcome::PreconditionViolated(v) => Err(CallError::contract(format!(
                "contract {id:?}: precondition failed: {}",
                v.detail
            ))),
            GuardOutcome::Unsatisfied(why) => Err(CallError::contract(why)),
        }
    }
}

impl LlmHandler for AgentCalls<'_, '_> {
    fn handle(&self, task_id: Option<&str>, call: &LlmCall) -> Result<(Vec<String>, Usage), String> {
        let params = call.params();
        self.complete(task_id, call.model.as_deref(), &call.messages, params, call.n)
    }

    fn handle_call(&self, task_id: Option<&str>, call: &LlmCall) -> Result<(Vec<serde_json::Value>, Usage), CallError> {
        if !self.episodes.active() {
            return unguarded_reply(self.handle(task_id, call));
        }
        if task_id.is_none() && self.episodes.governs_tasks() {
            // Per-task budgets and invariants need to know whose call this is; the worker
            // attributes calls from threads a task starts (runtime/metaforge/_rpc.py).
            return Err(CallError::contract(
                "a model call outside any task is refused under an agent contract (make calls from forward() or threads it starts)".into(),
            ));
        }
        if call.contract.is_none() && self.episodes.requires_contracts() {
            return Err(CallError::contract(
                "this experiment requires every llm() call to name a contract (contract=\"<id>\")".into(),
            ));
        }
        self.episodes
            .before_call(task_id, call.contract.as_deref())
            .map_err(CallError::contract)?;
        if let Some(id) = &call.contract {
            return self.guarded(task_id, call, id);
        }
        let result = self.handle(task_id, call);
        let (label, tokens, text) = match &result {
            Ok((texts, usage)) => ("unguarded", usage.tokens(), texts.first().cloned().unwrap_or_default()),
            Err(e) => ("error", 0, e.clone()),
        };
        self.episodes.after_call(task_id, None, label, tokens, &text, None);
        unguarded_reply(result)
    }

    fn check_model(&self, name: &str) -> Result<(), String> {
        self.gateway_for(Some(name)).map(|_| ())
    }

    fn task_finished(&self) {
        (self.on_task)();
    }

    fn restart(&self) {
        self.samples.lock().unwrap().clear();
        self.episodes.restart(self.inputs);
    }
}

/// Stand-ins for the sandbox that the staged, raced and loop tests share.
#[cfg(test)]
pub(crate) mod testing {
    use super::{Evaluation, Outcome, Split, Stage, TaskOutcome, TaskResult};
    use crate::domain::Task;
    use crate::llm::Usage;

    /// Tasks `t0` .. `t<n-1>`.
    pub fn tasks(n: usize) -> Vec<Task> {
        (0..n)
            .map(|i| Task {
                id: format!("t{i}"),
                input: serde_json::json!({}),
                answer: serde_json::json!(1),
            })
            .collect()
    }

    /// A successful result of task `id` with `score`.
    pub fn ok_result(id: &str, score: f64) -> TaskResult {
        TaskResult {
            task_id: id.to_string(),
            score,
            outcome: TaskOutcome::Ok,
            output: None,
            error: None,
            usage: Usage::default(),
            guard: None,
        }
    }

    /// Evaluates a slice as the sandbox would: task `t<i>` scores `pattern[i]`; counts the
    /// tasks run.
    pub fn runner<'a>(
        pattern: &'a [f64],
        ran: &'a mut usize,
    ) -> impl FnMut(&[Task]) -> anyhow::Result<Evaluation> + 'a {
        move |slice: &[Task]| {
            *ran += slice.len();
            let results = slice
                .iter()
                .map(|t| ok_result(&t.id, pattern[t.id[1..].parse::<usize>().unwrap()]))
                .collect();
            Ok(Evaluation::from_tasks(
                Split::Val,
                Stage::Full,
                results,
                Usage::default(),
                1.0,
                Outcome::Ok,
                String::new(),
                100,
            ))
        }
    }
}
