//! Value types shared across layers: a model call and its cost, an evaluation record and
//! its outcome, and the closed sets an experiment chooses from.
//!
//! Architecture Invariant: a leaf. It imports nothing of the crate, so every layer may use
//! it and none is pulled upward by doing so.

mod call;
mod choice;
mod evaluation;
mod input;

pub use call::{
    check_choices, pick_choice, Calibration, CallParams, Message, Reply, Role, Usage, MAX_CHOICES, MAX_CHOICE_BYTES,
    MAX_STOP,
};
pub use choice::{Fold, IsolationMode, Objective, ParentSelection, RaceRule, DEFAULT_OBJECTIVES};
pub use evaluation::{
    ContractStats, Evaluation, GuardSummary, Hit, Outcome, Split, Stage, TaskGuard, TaskOutcome, TaskResult,
    SCORER_FEEDBACK,
};
pub use input::{is_bad_input, BadInput};
