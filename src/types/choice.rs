//! The closed sets an experiment chooses from, parsed once where a config or an archive row
//! is read, so the rest of the code matches on variants instead of comparing strings.

use serde::{Deserialize, Serialize};

/// What the front trades off (`search.objectives`). Score is maximised, the rest minimised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// Validation score.
    Score,
    /// Dollars when the model is priced, else tokens (a free local model still costs time).
    Cost,
    /// Prompt + completion tokens of the validation evaluation.
    Tokens,
    /// Wall-clock time of the validation evaluation.
    Latency,
    /// Length of the program source.
    CodeSize,
    /// Share of guarded values that were contract fallbacks (`[guards]`).
    FallbackRate,
    /// Soft contract violations per task (`[guards]`).
    SoftViolations,
}

/// The default objectives: validation score up, cost down.
pub const DEFAULT_OBJECTIVES: &[Objective] = &[Objective::Score, Objective::Cost];

/// How the loop picks a parent (`search.parent_selection`); `archive::select_parent` says
/// what each one weighs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParentSelection {
    #[default]
    Pareto,
    Tournament,
    Softmax,
    Instance,
    Uniform,
}

impl ParentSelection {
    pub const ALL: [ParentSelection; 5] = [
        ParentSelection::Pareto,
        ParentSelection::Tournament,
        ParentSelection::Softmax,
        ParentSelection::Instance,
        ParentSelection::Uniform,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ParentSelection::Pareto => "pareto",
            ParentSelection::Tournament => "tournament",
            ParentSelection::Softmax => "softmax",
            ParentSelection::Instance => "instance",
            ParentSelection::Uniform => "uniform",
        }
    }
}

impl std::fmt::Display for ParentSelection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do when a layer is unavailable on this kernel (`evaluation.isolation`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IsolationMode {
    /// Refuse to evaluate unless every layer is active.
    Strict,
    /// Use every layer this kernel has; warn once, naming what is missing.
    #[default]
    BestEffort,
    /// rlimits, process group and cleared environment only (for debugging and benchmarks).
    Off,
}

/// Which games of the episodic domain are played (`domain.episodes.fold`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fold {
    /// Objects recur across episodes.
    #[default]
    Train,
    /// Unseen objects, for tuning.
    Dev,
    /// Unseen objects, held out.
    Test,
}

impl Fold {
    pub fn as_str(self) -> &'static str {
        match self {
            Fold::Train => "train",
            Fold::Dev => "dev",
            Fold::Test => "test",
        }
    }
}

impl std::fmt::Display for Fold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When racing drops a proposal at a look before the last (`evaluation.race_rule`); at the
/// last look every rule keeps only a proposal ahead of its rival. `evaluate::racing` says
/// why the default is what it is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RaceRule {
    /// Goes on only while strictly ahead: a tie at any look drops it.
    Ahead,
    /// A tie at the first look goes on to the second; later looks need a lead.
    #[default]
    FirstTieGoesOn,
    /// Dropped only when the tasks on which the two differ say it is worse (a one-sided
    /// sign test at p < 0.1); ties and small deficits go on to the next look.
    Sequential,
}
