//! Contract guards: static contract rules on candidate code, output contracts enforced on
//! every guarded model call in the host, and agent-level contracts over each episode.
//!
//! Architecture Invariant: guards run in the host. The candidate only ever receives a
//! value that passed its contract or a fallback checked before evaluation; nothing on the
//! Python side can skip a check.

pub mod agent;
pub mod contract;
pub mod episode;
pub mod expr;
pub mod manifest;
pub mod sampler;
pub mod verify;

pub use agent::{AgentContract, Decision, Event, Monitor, Verdict};
pub use contract::{Contract, ContractSpec, Stage, Violation};
pub use episode::{Episodes, GuardSummary, TaskGuard};
pub use manifest::{GuardRules, Manifest};
pub use sampler::{guarded_call, CallRecord, GuardOutcome};
pub use verify::{verify_fallback, Tier};
