//! Guards during one candidate's evaluation: the candidate's call contracts (compiled and
//! their fallbacks proved when it is registered, before any task runs), the experiment's
//! agent contract, and one monitor per task. The evaluator's gateway handler asks it
//! before and after every model call and hands it each task's final answer.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Instant;

use serde_json::Value;

use super::agent::{AgentContract, Decision, Event, Monitor};
use super::contract::Contract;
use super::manifest::Manifest;
use super::sampler::{CallEnd, CallRecord};
use super::verify::{verify_fallback, Tier};
use crate::types::{ContractStats, GuardSummary, TaskGuard};

impl ContractStats {
    fn record(&mut self, c: &CallRecord) {
        self.calls += 1;
        self.attempts += c.attempts;
        self.fallbacks += u32::from(c.outcome == CallEnd::Fallback);
        self.unsatisfied += u32::from(c.outcome == CallEnd::Unsatisfied);
        self.pre_failed += u32::from(c.outcome == CallEnd::Pre);
        self.first_try += u32::from(c.outcome == CallEnd::Accepted && c.attempts == 1);
        self.repaired += u32::from(c.repaired);
        for s in &c.rejects {
            *self.rejects.entry(s.as_str().to_string()).or_default() += 1;
        }
        self.guard_us += c.check_time.as_secs_f64() * 1e6;
    }

    fn merge(&mut self, o: &ContractStats) {
        self.calls += o.calls;
        self.first_try += o.first_try;
        self.attempts += o.attempts;
        self.fallbacks += o.fallbacks;
        self.unsatisfied += o.unsatisfied;
        self.pre_failed += o.pre_failed;
        self.repaired += o.repaired;
        for (k, v) in &o.rejects {
            *self.rejects.entry(k.clone()).or_default() += v;
        }
        self.guard_us += o.guard_us;
    }
}

impl GuardSummary {
    pub fn add(&mut self, t: &TaskGuard) {
        self.tasks += 1;
        self.hard_free += u32::from(t.hard == 0);
        self.hard += t.hard;
        self.soft += t.soft;
        self.persistent += t.persistent;
        self.final_fallbacks += u32::from(t.final_fallback);
        self.monitor_us += t.monitor_us;
        self.calls.merge(&t.calls);
        for (id, c) in &t.contracts {
            self.contracts.entry(id.clone()).or_default().merge(c);
        }
    }

    /// Share of guarded values (final answers and guarded calls) that were fallbacks.
    pub fn fallback_rate(&self) -> f64 {
        let guarded = self.tasks + self.calls.calls;
        if guarded == 0 {
            0.0
        } else {
            f64::from(self.final_fallbacks + self.calls.fallbacks) / f64::from(guarded)
        }
    }

    /// Share of tasks without a hard violation and the one-sided 95% Wilson lower bound of
    /// it: our operational reading of ABC's p in (p, δ, k)-satisfaction (a candidate whose
    /// bound is at least p is certified at that level on these tasks).
    pub fn hard_compliance(&self) -> (f64, f64) {
        if self.tasks == 0 {
            return (1.0, 0.0);
        }
        let n = f64::from(self.tasks);
        let p = f64::from(self.hard_free) / n;
        let z: f64 = 1.645;
        let centre = p + z * z / (2.0 * n);
        let margin = z * (p * (1.0 - p) / n + z * z / (4.0 * n * n)).sqrt();
        (p, ((centre - margin) / (1.0 + z * z / n)).max(0.0))
    }

    /// Soft violations per task.
    pub fn soft_rate(&self) -> f64 {
        if self.tasks == 0 {
            0.0
        } else {
            f64::from(self.soft) / f64::from(self.tasks)
        }
    }

    /// Host CPU time of all guard work, microseconds.
    pub fn guard_us(&self) -> f64 {
        self.calls.guard_us + self.monitor_us
    }
}

struct TaskState<'a> {
    /// Set at the task's first model call: tasks wait in the worker's queue before they
    /// start, and the host does not see when; `wall_ms` counts from the first call.
    started: Option<Instant>,
    monitor: Option<Monitor<'a>>,
    invalid: Option<String>,
    calls: Vec<CallRecord>,
}

impl<'a> TaskState<'a> {
    fn new(agent: Option<&'a AgentContract>, input: &Value) -> Self {
        let (monitor, invalid) = match agent.map(|a| Monitor::start(a, input)) {
            None => (None, None),
            Some(Ok(m)) => (Some(m), None),
            Some(Err(why)) => (None, Some(why)),
        };
        TaskState {
            started: None,
            monitor,
            invalid,
            calls: Vec::new(),
        }
    }
}

pub struct Episodes<'a> {
    contracts: BTreeMap<String, Contract>,
    tiers: BTreeMap<String, Tier>,
    agent: Option<&'a AgentContract>,
    require: bool,
    tasks: Mutex<HashMap<String, TaskState<'a>>>,
}

/// How many rule hits a task keeps.
const KEPT_HITS: usize = 5;

impl<'a> Episodes<'a> {
    /// Registers a candidate: compiles its contracts and proves (or tests) their fallbacks.
    /// `Err` says which contract is unsound and why — feedback for the proposer.
    pub fn register(
        code: &str,
        agent: Option<&'a AgentContract>,
        require: bool,
        tasks: &[(String, Value)],
    ) -> Result<Self, String> {
        let contracts = Manifest::of(code).compile()?;
        let mut tiers = BTreeMap::new();
        for (id, c) in &contracts {
            tiers.insert(
                id.clone(),
                verify_fallback(c, &[]).map_err(|e| format!("contract {id:?}: {e}"))?,
            );
        }
        let states = tasks
            .iter()
            .map(|(id, input)| (id.clone(), TaskState::new(agent, input)))
            .collect();
        Ok(Self {
            contracts,
            tiers,
            agent,
            require,
            tasks: Mutex::new(states),
        })
    }

    /// Starts `tasks` afresh (a remote executor reran their shard): the dead attempt's calls
    /// and monitor state must not count against the rerun.
    pub fn restart(&self, tasks: &[(String, Value)]) {
        let mut states = self.tasks.lock().unwrap();
        for (id, input) in tasks {
            states.insert(id.clone(), TaskState::new(self.agent, input));
        }
    }

    /// Whether anything is guarded (otherwise the evaluator skips the bookkeeping).
    pub fn active(&self) -> bool {
        self.agent.is_some() || self.require || !self.contracts.is_empty()
    }

    /// An agent contract governs every task: calls must be attributable to one.
    pub fn governs_tasks(&self) -> bool {
        self.agent.is_some()
    }

    pub fn requires_contracts(&self) -> bool {
        self.require
    }

    pub fn contract(&self, id: &str) -> Option<&Contract> {
        self.contracts.get(id)
    }

    fn observe(&self, task_id: Option<&str>, event: impl FnOnce(u64) -> Event) -> Decision {
        let mut tasks = self.tasks.lock().unwrap();
        let Some(t) = task_id.and_then(|id| tasks.get_mut(id)) else {
            return Decision::Allow;
        };
        let ms = t.started.get_or_insert_with(Instant::now).elapsed().as_millis() as u64;
        match &mut t.monitor {
            Some(m) => m.observe(&event(ms)),
            None => Decision::Allow,
        }
    }

    /// Governance before a model call; `Err` is the refusal the candidate sees.
    pub fn before_call(&self, task_id: Option<&str>, contract: Option<&str>) -> Result<(), String> {
        match self.observe(task_id, |t_ms| Event::PreLlmCall {
            contract: contract.map(str::to_string),
            t_ms,
        }) {
            Decision::Allow => Ok(()),
            Decision::Deny(why) | Decision::Abort(why) => Err(format!("denied by the agent contract: {why}")),
        }
    }

    /// Records a finished model call (guarded or not).
    pub fn after_call(
        &self,
        task_id: Option<&str>,
        contract: Option<&str>,
        outcome: &str,
        tokens: u64,
        text: &str,
        record: Option<CallRecord>,
    ) {
        self.observe(task_id, |t_ms| Event::PostLlmCall {
            contract: contract.map(str::to_string),
            outcome: outcome.to_string(),
            tokens,
            text: text.chars().take(4000).collect(),
            t_ms,
        });
        if let (Some(rec), Some(id)) = (record, task_id) {
            if let Some(t) = self.tasks.lock().unwrap().get_mut(id) {
                t.calls.push(rec);
            }
        }
    }

    /// Ends a task: the final answer (None when the task failed) passes the output contract
    /// or is replaced by its fallback. Returns the answer to score and the task's record.
    pub fn finish(&self, task_id: &str, output: Option<&str>) -> (Option<String>, TaskGuard) {
        let state = self.tasks.lock().unwrap().remove(task_id);
        let Some(state) = state else {
            return (output.map(str::to_string), TaskGuard::default());
        };
        let mut g = TaskGuard::default();
        for c in &state.calls {
            g.calls.record(c);
            g.contracts.entry(c.contract.clone()).or_default().record(c);
        }
        if let Some(why) = state.invalid {
            let v = Monitor::invalid(why);
            g.verdict = v.verdict;
            g.hits = v.hits;
            return (output.map(str::to_string), g);
        }
        let mut answer = output.map(str::to_string);
        if let Some(mut m) = state.monitor {
            let t = Instant::now();
            let aborted_before = m.aborted();
            if let (Some(out), false) = (output, aborted_before) {
                m.observe(&Event::Final {
                    output: Value::String(out.to_string()),
                    t_ms: state.started.map_or(0, |s| s.elapsed().as_millis() as u64),
                });
            }
            g.aborted = m.aborted();
            let v = m.finish();
            g.monitor_us += t.elapsed().as_secs_f64() * 1e6;
            if v.fallback {
                answer = v.final_output.as_ref().map(|f| match f {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                });
            } else if let (Some(Value::String(s)), Some(_)) = (&v.final_output, output) {
                answer = Some(s.clone());
            }
            g.verdict = v.verdict;
            g.hard = v.hard;
            g.soft = v.soft;
            g.persistent = v.persistent;
            g.final_fallback = v.fallback;
            g.hits = v.hits.into_iter().take(KEPT_HITS).collect();
        }
        (answer, g)
    }

    /// The tier of each call contract's fallback, and of the agent contract's `[output]`.
    pub fn tiers(&self) -> BTreeMap<String, String> {
        let mut tiers: BTreeMap<String, String> = self.tiers.iter().map(|(k, v)| (k.clone(), v.label())).collect();
        if let Some(t) = self.agent.and_then(|a| a.output_tier.as_ref()) {
            tiers.insert("[output]".into(), t.label());
        }
        tiers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hard_compliance_has_a_wilson_lower_bound() {
        let mut g = GuardSummary::default();
        for hard in [0, 0, 0, 0, 0, 0, 0, 0, 0, 2] {
            g.add(&TaskGuard {
                hard,
                ..Default::default()
            });
        }
        let (p, lo) = g.hard_compliance();
        assert_eq!(p, 0.9);
        assert!(
            (lo - 0.6523).abs() < 1e-3,
            "Wilson bound {lo} (one-sided 95%, z = 1.645)"
        );
        g = GuardSummary::default();
        for _ in 0..100 {
            g.add(&TaskGuard::default());
        }
        let (p, lo) = g.hard_compliance();
        assert!(p == 1.0 && lo > 0.97 && lo < 1.0, "{lo}");
    }
}
