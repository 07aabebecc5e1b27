//! Agent-level contracts, written by the experiment author in TOML (trusted), and the
//! monitor that enforces them over one episode's event trace.
//!
//! The host emits the events (a candidate's `llm()` calls and its final answer), so the
//! predicates are computed here, not supplied by the agent (AgentAssert's library only
//! evaluates flags an adapter computed). Governance runs on `pre_*` events and can deny the
//! action before it happens; invariants run after every event; the final answer passes the
//! `[output]` contract or is replaced by its proved fallback.

use std::collections::{BTreeSet, VecDeque};

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::contract::{Contract, ContractSpec};
use super::expr::Cel;
use super::verify::{verify_fallback, Tier};
pub use crate::types::Hit;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentContractSpec {
    #[serde(default)]
    pub pre: PreSpec,
    #[serde(default)]
    pub governance: GovernanceSpec,
    #[serde(default)]
    pub budgets: Budgets,
    #[serde(default)]
    pub invariants: InvariantsSpec,
    /// The final-output contract; its fallback must be proved (`verified` or `verified_smt`).
    #[serde(default)]
    pub output: Option<ContractSpec>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreSpec {
    /// CEL over `task`; a task failing one is invalid and not run.
    #[serde(default)]
    pub hard: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GovernanceSpec {
    /// Tools the agent may call; absent: any.
    #[serde(default)]
    pub allow_tools: Option<Vec<String>>,
    /// JSON Schema of each tool's arguments.
    #[serde(default)]
    pub arg_schemas: serde_json::Map<String, Value>,
    /// `[a, b]`: `b` may be called only after `a` was.
    #[serde(default)]
    pub before: Vec<(String, String)>,
    #[serde(default)]
    pub max_repeats: Option<Repeats>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Repeats {
    /// How many recent tool calls are looked at.
    pub window: usize,
    /// Most identical calls (same tool, same arguments) allowed within the window.
    pub max: usize,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budgets {
    pub llm_calls: Option<u64>,
    pub tool_calls: Option<u64>,
    pub tokens: Option<u64>,
    pub wall_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvariantsSpec {
    #[serde(default)]
    pub hard: Vec<InvariantSpec>,
    #[serde(default)]
    pub soft: Vec<InvariantSpec>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvariantSpec {
    pub id: String,
    /// CEL over `state` and `event`.
    pub expr: String,
    /// Soft only: events within which the invariant must hold again to count as recovered.
    #[serde(default = "default_recovery")]
    pub recover_within: usize,
}

fn default_recovery() -> usize {
    2
}

struct Invariant {
    id: String,
    expr: Cel,
    recover_within: usize,
}

/// A compiled agent contract.
pub struct AgentContract {
    pub spec: AgentContractSpec,
    pre: Vec<Cel>,
    arg_schemas: Vec<(String, jsonschema::Validator)>,
    hard: Vec<Invariant>,
    soft: Vec<Invariant>,
    output: Option<Contract>,
    pub output_tier: Option<Tier>,
}

impl AgentContract {
    /// Parses and compiles a contract file; `name` is how errors refer to it.
    pub fn from_toml(name: &str, text: &str) -> Result<Self> {
        let spec: AgentContractSpec =
            toml::from_str(text).map_err(|e| anyhow!("{name}: {e}fix: see docs/guards.md for the keys"))?;
        Self::compile(name, spec)
    }

    pub fn compile(name: &str, spec: AgentContractSpec) -> Result<Self> {
        let cel = |what: &str, src: &str| {
            Cel::compile(src).map_err(|e| {
                anyhow!("{name}: {what}: {e}\nfix: write a CEL expression over `state`, `event` and `task`, e.g. `state.counters.llm_calls <= 5`")
            })
        };
        let pre = spec
            .pre
            .hard
            .iter()
            .map(|p| cel("pre.hard", p))
            .collect::<Result<_>>()?;
        let mut arg_schemas = Vec::new();
        for (tool, schema) in &spec.governance.arg_schemas {
            let v = super::contract::compile_schema(schema)
                .map_err(|e| anyhow!("{name}: governance.arg_schemas.{tool} is not a valid JSON Schema: {e}"))?;
            arg_schemas.push((tool.clone(), v));
        }
        let invariants = |list: &[InvariantSpec], kind: &str| -> Result<Vec<Invariant>> {
            let mut seen = BTreeSet::new();
            list.iter()
                .map(|i| {
                    if !seen.insert(i.id.clone()) {
                        bail!(
                            "{name}: invariants.{kind} has two rules with id {:?}; fix: give each its own id",
                            i.id
                        );
                    }
                    Ok(Invariant {
                        id: i.id.clone(),
                        expr: cel(&format!("invariants.{kind} {:?}", i.id), &i.expr)?,
                        recover_within: i.recover_within,
                    })
                })
                .collect()
        };
        let hard = invariants(&spec.invariants.hard, "hard")?;
        let soft = invariants(&spec.invariants.soft, "soft")?;
        let (output, output_tier) = match &spec.output {
            None => (None, None),
            Some(o) => {
                let c = Contract::compile("output", o.clone())
                    .map_err(|p| anyhow!("{name}: [output]: {}", p.join("; ")))?;
                let tier = verify_fallback(&c, &[]).map_err(|e| {
                    anyhow!("{name}: [output] fallback: {e}; fix: choose a fallback that passes the [output] checks for every task")
                })?;
                if !tier.is_proof() {
                    bail!(
                        "{name}: [output] fallback is {}; a final-output fallback must be proved; fix: use a constant fallback, or keep `post` and the fallback inside the fragment z3 decides (and install z3)",
                        tier.label()
                    );
                }
                (Some(c), Some(tier))
            }
        };
        Ok(Self {
            spec,
            pre,
            arg_schemas,
            hard,
            soft,
            output,
            output_tier,
        })
    }

    /// The task preconditions; `Err` names the first that fails.
    pub fn admits(&self, task: &Value) -> Result<(), String> {
        for p in &self.pre {
            p.holds(&[("task", task)])?;
        }
        Ok(())
    }
}

/// One event of an episode. `t_ms` is the time since the episode started; the host fills
/// it, scenarios may give it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    PreLlmCall {
        #[serde(default)]
        contract: Option<String>,
        #[serde(default)]
        t_ms: u64,
    },
    PostLlmCall {
        #[serde(default)]
        contract: Option<String>,
        /// accepted | fallback | unguarded | error
        #[serde(default = "unguarded")]
        outcome: String,
        #[serde(default)]
        tokens: u64,
        #[serde(default)]
        text: String,
        #[serde(default)]
        t_ms: u64,
    },
    PreToolCall {
        tool: String,
        #[serde(default)]
        args: Value,
        #[serde(default)]
        t_ms: u64,
    },
    PostToolCall {
        tool: String,
        #[serde(default)]
        args: Value,
        #[serde(default)]
        result: Value,
        #[serde(default)]
        error: Option<String>,
        #[serde(default)]
        t_ms: u64,
    },
    Final {
        output: Value,
        #[serde(default)]
        t_ms: u64,
    },
}

fn unguarded() -> String {
    "unguarded".into()
}

impl Event {
    fn t_ms(&self) -> u64 {
        match self {
            Event::PreLlmCall { t_ms, .. }
            | Event::PostLlmCall { t_ms, .. }
            | Event::PreToolCall { t_ms, .. }
            | Event::PostToolCall { t_ms, .. }
            | Event::Final { t_ms, .. } => *t_ms,
        }
    }
}

/// The monitor's answer to an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// The action must not happen (a hard attempted violation).
    Deny(String),
    /// A hard invariant broke: the episode ends and scores 0.
    Abort(String),
}

/// The outcome of one episode under an agent contract.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    /// invalid_task | compliant | recovered | soft_violation | hard_breach
    pub verdict: String,
    pub hard: u32,
    pub soft: u32,
    pub recovered: u32,
    pub persistent: u32,
    pub denied: Vec<String>,
    /// The final answer failed `[output]` and the fallback replaced it.
    pub fallback: bool,
    /// The answer after the output contract (the fallback when it was used).
    pub final_output: Option<Value>,
    pub hits: Vec<Hit>,
}

#[derive(Clone, Copy, PartialEq)]
enum SoftState {
    Holds,
    Open(usize),
    Persistent,
}

pub struct Monitor<'c> {
    contract: &'c AgentContract,
    task: Value,
    llm_calls: u64,
    tool_calls: u64,
    tokens: u64,
    call_fallbacks: u64,
    tool_errors: u64,
    seen_tools: BTreeSet<String>,
    recent_tools: VecDeque<(String, Value)>,
    last_output: String,
    soft_state: Vec<SoftState>,
    events: usize,
    aborted: bool,
    verdict: Verdict,
}

impl<'c> Monitor<'c> {
    /// Starts an episode; `Err` when the task breaks a precondition (the episode is invalid).
    pub fn start(contract: &'c AgentContract, task: &Value) -> Result<Self, String> {
        contract.admits(task)?;
        Ok(Self {
            contract,
            task: task.clone(),
            llm_calls: 0,
            tool_calls: 0,
            tokens: 0,
            call_fallbacks: 0,
            tool_errors: 0,
            seen_tools: BTreeSet::new(),
            recent_tools: VecDeque::new(),
            last_output: String::new(),
            soft_state: vec![SoftState::Holds; contract.soft.len()],
            events: 0,
            aborted: false,
            verdict: Verdict::default(),
        })
    }

    /// The verdict of a task that broke a precondition.
    pub fn invalid(reason: String) -> Verdict {
        Verdict {
            verdict: "invalid_task".into(),
            hits: vec![Hit {
                rule: "pre".into(),
                event: 0,
                detail: reason,
            }],
            ..Default::default()
        }
    }

    pub fn aborted(&self) -> bool {
        self.aborted
    }

    fn hit(&mut self, rule: String, detail: String) {
        self.verdict.hits.push(Hit {
            rule,
            event: self.events,
            detail,
        });
    }

    fn state(&self) -> Value {
        json!({
            "counters": {
                "llm_calls": self.llm_calls, "tool_calls": self.tool_calls, "tokens": self.tokens,
                "call_fallbacks": self.call_fallbacks, "tool_errors": self.tool_errors,
                "events": self.events,
            },
            "seen_tools": self.seen_tools.iter().collect::<Vec<_>>(),
            "last_output": self.last_output,
            "task": self.task,
        })
    }

    /// Governance of an action before it happens.
    fn govern(&self, event: &Event) -> Option<(String, String)> {
        let b = &self.contract.spec.budgets;
        let g = &self.contract.spec.governance;
        if let Some(max) = b.wall_ms {
            if matches!(event, Event::PreLlmCall { .. } | Event::PreToolCall { .. }) && event.t_ms() > max {
                return Some((
                    "budget:wall_ms".into(),
                    format!("{} ms spent, budget {max} ms", event.t_ms()),
                ));
            }
        }
        match event {
            Event::PreLlmCall { .. } => {
                if let Some(max) = b.llm_calls.filter(|&m| self.llm_calls >= m) {
                    return Some((
                        "budget:llm_calls".into(),
                        format!("model call {} exceeds the budget of {max}", self.llm_calls + 1),
                    ));
                }
                if let Some(max) = b.tokens.filter(|&m| self.tokens >= m) {
                    return Some((
                        "budget:tokens".into(),
                        format!("{} tokens used, budget {max}", self.tokens),
                    ));
                }
            }
            Event::PreToolCall { tool, args, .. } => {
                if let Some(max) = b.tool_calls.filter(|&m| self.tool_calls >= m) {
                    return Some((
                        "budget:tool_calls".into(),
                        format!("tool call {} exceeds the budget of {max}", self.tool_calls + 1),
                    ));
                }
                if let Some(allow) = &g.allow_tools {
                    if !allow.contains(tool) {
                        return Some((
                            "tool-allow".into(),
                            format!("tool {tool:?} is not in allow_tools {allow:?}"),
                        ));
                    }
                }
                if let Some((_, schema)) = self.contract.arg_schemas.iter().find(|(t, _)| t == tool) {
                    if let Some(e) = schema.iter_errors(args).next() {
                        return Some((
                            "tool-args".into(),
                            format!("{tool} arguments: {}: {e}", e.instance_path()),
                        ));
                    }
                }
                for (first, then) in &g.before {
                    if then == tool && !self.seen_tools.contains(first) {
                        return Some(("order".into(), format!("{tool} called before {first}")));
                    }
                }
                if let Some(r) = g.max_repeats {
                    let same = self
                        .recent_tools
                        .iter()
                        .rev()
                        .take(r.window.saturating_sub(1))
                        .filter(|(t, a)| t == tool && a == args)
                        .count();
                    if same + 1 > r.max {
                        return Some((
                            "repeat".into(),
                            format!(
                                "{tool} with the same arguments {} times within {} calls",
                                same + 1,
                                r.window
                            ),
                        ));
                    }
                }
            }
            _ => {}
        }
        None
    }

    /// Observes one event: governance first (on `pre_*`), then the state update, then the
    /// invariants.
    pub fn observe(&mut self, event: &Event) -> Decision {
        if self.aborted {
            self.events += 1;
            return Decision::Deny("the episode was aborted by a hard invariant".into());
        }
        let mut decision = Decision::Allow;
        if let Some((rule, detail)) = self.govern(event) {
            self.verdict.hard += 1;
            let what = match event {
                Event::PreToolCall { tool, .. } => tool.clone(),
                _ => "llm".into(),
            };
            self.verdict.denied.push(what);
            self.hit(rule, detail.clone());
            decision = Decision::Deny(detail);
        } else {
            self.apply(event);
        }
        if let Some(reason) = self.invariants(event) {
            decision = Decision::Abort(reason);
        }
        self.events += 1;
        decision
    }

    fn apply(&mut self, event: &Event) {
        match event {
            Event::PreLlmCall { .. } => self.llm_calls += 1,
            Event::PostLlmCall {
                outcome, tokens, text, ..
            } => {
                self.tokens += tokens;
                self.call_fallbacks += u64::from(outcome == "fallback");
                self.last_output = text.clone();
            }
            Event::PreToolCall { tool, args, .. } => {
                self.tool_calls += 1;
                self.seen_tools.insert(tool.clone());
                self.recent_tools.push_back((tool.clone(), args.clone()));
                if let Some(r) = self.contract.spec.governance.max_repeats {
                    while self.recent_tools.len() > r.window {
                        self.recent_tools.pop_front();
                    }
                }
            }
            Event::PostToolCall { error, .. } => self.tool_errors += u64::from(error.is_some()),
            Event::Final { output, .. } => self.final_output(output),
        }
    }

    fn final_output(&mut self, output: &Value) {
        let Some(c) = &self.contract.output else {
            self.verdict.final_output = Some(output.clone());
            return;
        };
        let checked = match output {
            Value::String(raw) => c.check(&self.task, raw).map(|ok| ok.value),
            other => c.check_value(&self.task, other).map(|()| other.clone()),
        };
        match checked {
            Ok(v) => self.verdict.final_output = Some(v),
            Err(v) => {
                let fb = c
                    .fallback_value(&self.task)
                    .and_then(Result::ok)
                    .expect("the output fallback was proved when the contract was compiled");
                self.verdict.fallback = true;
                self.verdict.final_output = Some(fb);
                self.hit("output".into(), v.to_string());
            }
        }
    }

    /// Evaluates the invariants after an event; returns the abort reason of a hard one.
    fn invariants(&mut self, event: &Event) -> Option<String> {
        let state = self.state();
        let event_json = serde_json::to_value(event).expect("events serialise");
        let task = self.task.clone();
        let vars = [("state", &state), ("event", &event_json), ("task", &task)];
        let contract = self.contract;
        for inv in &contract.hard {
            if let Err(detail) = inv.expr.holds(&vars) {
                self.verdict.hard += 1;
                self.aborted = true;
                self.hit(format!("hard:{}", inv.id), detail.clone());
                return Some(format!("hard invariant {:?} broke: {detail}", inv.id));
            }
        }
        for (i, inv) in contract.soft.iter().enumerate() {
            let holds = inv.expr.holds(&vars);
            self.soft_state[i] = match (self.soft_state[i], holds) {
                (SoftState::Holds, Ok(())) => SoftState::Holds,
                (SoftState::Holds, Err(detail)) => {
                    self.verdict.soft += 1;
                    self.hit(format!("soft:{}", inv.id), detail);
                    SoftState::Open(self.events)
                }
                (SoftState::Open(_), Ok(())) => {
                    self.verdict.recovered += 1;
                    SoftState::Holds
                }
                (SoftState::Open(at), Err(_)) if self.events - at >= inv.recover_within => {
                    self.verdict.persistent += 1;
                    SoftState::Persistent
                }
                (open @ SoftState::Open(_), Err(_)) => open,
                (SoftState::Persistent, Ok(())) => SoftState::Holds,
                (SoftState::Persistent, Err(_)) => SoftState::Persistent,
            };
        }
        None
    }

    /// Ends the episode: a soft violation still open did not recover.
    pub fn finish(mut self) -> Verdict {
        for s in &self.soft_state {
            if let SoftState::Open(_) = s {
                self.verdict.persistent += 1;
            }
        }
        let v = &mut self.verdict;
        v.verdict = if v.hard > 0 {
            "hard_breach"
        } else if v.persistent > 0 {
            "soft_violation"
        } else if v.soft > 0 {
            "recovered"
        } else {
            "compliant"
        }
        .into();
        self.verdict
    }
}
