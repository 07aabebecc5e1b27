//! An evaluation as the loop hands it to the archive: per-task results, totals, how it
//! ended and what the guards saw. Behaviour lives with the layer that computes each part
//! (`evaluate`, `guard`, `sandbox`); these are the records all of them share.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::call::Usage;

#[derive(Debug, Clone, Serialize)]
pub struct Evaluation {
    pub split: Split,
    pub stage: Stage,
    pub mean: f64,
    pub ci_lo: f64,
    pub ci_hi: f64,
    pub usage: Usage,
    pub wall_ms: f64,
    pub outcome: Outcome,
    /// Human-readable detail (first traceback, stderr tail): the proposer's debug feedback.
    pub detail: String,
    pub tasks: Vec<TaskResult>,
    /// The guards' totals over the tasks (None when the run has no guards).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guard: Option<GuardSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskResult {
    pub task_id: String,
    pub score: f64,
    pub outcome: TaskOutcome,
    pub output: Option<String>,
    pub error: Option<String>,
    pub usage: Usage,
    /// What the contract guards saw (None when the run has no guards).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guard: Option<TaskGuard>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    /// Every task raised an exception.
    Error,
    /// The candidate failed to load (syntax, import, missing `forward`).
    LoadError,
    /// The wall-clock deadline passed; the process group was killed.
    Timeout,
    /// Every task ran out of address space.
    MemoryLimit,
    /// The CPU-seconds limit killed the worker.
    CpuLimit,
    /// Captured output, a file or the scratch disk went over its limit.
    OutputLimit,
    /// The sandbox refused an operation; `what` names the first one.
    PolicyDenied {
        what: String,
    },
    /// Forged, malformed or oversized messages on the worker's pipes.
    ProtocolViolation,
    /// The worker died on a signal or exited before reporting every task.
    Crashed {
        signal: Option<i32>,
    },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok => f.write_str("ok"),
            Outcome::Error => f.write_str("error"),
            Outcome::LoadError => f.write_str("load_error"),
            Outcome::Timeout => f.write_str("timeout"),
            Outcome::MemoryLimit => f.write_str("memory_limit"),
            Outcome::CpuLimit => f.write_str("cpu_limit"),
            Outcome::OutputLimit => f.write_str("output_limit"),
            Outcome::PolicyDenied { .. } => f.write_str("policy_denied"),
            Outcome::ProtocolViolation => f.write_str("protocol_violation"),
            Outcome::Crashed { signal: Some(s) } => write!(f, "crashed:{s}"),
            Outcome::Crashed { signal: None } => f.write_str("crashed"),
        }
    }
}

/// The guards of one evaluation, summed over its tasks; stored with the evaluation.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct GuardSummary {
    pub tasks: u32,
    /// Tasks without any hard violation (ABC's hard compliance, counted per episode).
    #[serde(default)]
    pub hard_free: u32,
    pub hard: u32,
    pub soft: u32,
    pub persistent: u32,
    pub final_fallbacks: u32,
    pub monitor_us: f64,
    /// The guarded calls, all contracts together.
    pub calls: ContractStats,
    /// Tier of each call contract's fallback (verified, verified (z3), tested ...).
    pub tiers: BTreeMap<String, String>,
    /// Attempts, fallbacks, rejects per stage and guard CPU time per call contract.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub contracts: BTreeMap<String, ContractStats>,
}

/// What the guards saw in one task; stored with the task's result.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TaskGuard {
    /// invalid_task | compliant | recovered | soft_violation | hard_breach ("" without an
    /// agent contract)
    pub verdict: String,
    pub hard: u32,
    pub soft: u32,
    pub persistent: u32,
    /// The final answer failed the output contract and its fallback was scored instead.
    pub final_fallback: bool,
    /// A hard invariant ended the episode (scored 0).
    pub aborted: bool,
    /// Host CPU time of the agent-contract monitor, microseconds.
    pub monitor_us: f64,
    /// The guarded calls, all contracts together.
    pub calls: ContractStats,
    /// The guarded calls per contract.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub contracts: BTreeMap<String, ContractStats>,
    /// The first rules that fired (diagnostics for the proposer).
    pub hits: Vec<Hit>,
}

/// What call contracts did over some guarded calls.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ContractStats {
    pub calls: u32,
    pub first_try: u32,
    pub attempts: u32,
    pub fallbacks: u32,
    pub unsatisfied: u32,
    /// Calls refused by the precondition (no model call made).
    pub pre_failed: u32,
    pub repaired: u32,
    pub rejects: BTreeMap<String, u32>,
    /// Host CPU time spent checking, microseconds (model latency excluded).
    pub guard_us: f64,
}

/// One rule that fired.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Hit {
    /// pre | budget:<name> | tool-allow | tool-args | order | repeat | hard:<id> | soft:<id> | output
    pub rule: String,
    /// Index of the event (0-based) that fired it.
    pub event: usize,
    pub detail: String,
}

/// How a task's stored `error` starts when it holds the scorer's feedback, not an error: the
/// archive finds it there for the proposer's prompt.
pub const SCORER_FEEDBACK: &str = "scorer feedback: ";

/// How one task ended, as stored in `task_results.outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskOutcome {
    Ok,
    /// The agent raised.
    Error,
    Timeout,
    MemoryLimit,
    /// The agent's recursion passed the interpreter's depth limit (`RecursionError`).
    RecursionLimit,
    CpuLimit,
    OutputLimit,
    PolicyDenied,
    ProtocolViolation,
    Crashed,
    LoadError,
    /// The agent answered; the user's scorer code failed on the answer.
    ScorerError,
}

/// Which tasks an evaluation ran on. Selection reads `Val` only; `Test` is held out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Val,
    Test,
}

/// How far an evaluation got. Selection, the front and the held-out test read `Full` only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Every task of the split ran.
    Full,
    /// Stopped after the cascade's first share of tasks (`evaluation.cascade_fraction`).
    Cascade,
    /// Stopped later by the early-stop bound against its parent.
    Stopped,
    /// Behind its rival at a look of the race (`evaluation.race_first`).
    Raced,
}

/// The names of a closed set as the archive stores them, and the way back.
macro_rules! stored_names {
    ($ty:ident, $what:literal, $($variant:ident => $name:literal),+ $(,)?) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }

            /// Reads a stored name; one this build does not know is a clear error (an
            /// archive written by a newer metaforge, or edited by hand).
            pub fn parse(name: &str) -> anyhow::Result<Self> {
                match name {
                    $($name => Ok($ty::$variant),)+
                    other => Err(anyhow::anyhow!(
                        "unknown {} {other:?} (known: {}); fix: open the archive with the metaforge that wrote it",
                        $what,
                        [$($name),+].join(", ")
                    )),
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

stored_names!(Split, "split", Val => "val", Test => "test");
stored_names!(
    TaskOutcome,
    "task outcome",
    Ok => "ok",
    Error => "error",
    Timeout => "timeout",
    MemoryLimit => "memory_limit",
    RecursionLimit => "recursion_limit",
    CpuLimit => "cpu_limit",
    OutputLimit => "output_limit",
    PolicyDenied => "policy_denied",
    ProtocolViolation => "protocol_violation",
    Crashed => "crashed",
    LoadError => "load_error",
    ScorerError => "scorer_error",
);
stored_names!(Stage, "evaluation stage", Full => "full", Cascade => "cascade", Stopped => "stopped", Raced => "raced");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_names_round_trip_and_an_unknown_one_is_named() {
        for s in Stage::ALL {
            assert_eq!(Stage::parse(s.as_str()).unwrap(), *s);
            assert_eq!(serde_json::to_string(s).unwrap(), format!("\"{s}\""));
        }
        assert_eq!(Split::parse("test").unwrap(), Split::Test);
        let e = Stage::parse("halfway").unwrap_err().to_string();
        assert!(
            e.contains("unknown evaluation stage \"halfway\"") && e.contains("full, cascade") && e.contains("fix:"),
            "{e}"
        );
    }
}
