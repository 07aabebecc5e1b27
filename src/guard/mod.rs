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

use anyhow::{Context, Result};

pub use crate::types::{GuardSummary, TaskGuard};
pub use agent::{AgentContract, Decision, Event, Monitor, Verdict};
pub use contract::{Contract, ContractSpec, Stage, Violation};
pub use episode::Episodes;
pub use manifest::{checker, GuardRules, Manifest};
pub use sampler::{guarded_call, CallRecord, GuardOutcome};
pub use verify::{verify_fallback, Tier};

/// What `[guards]` means is guard's business: `config` only reads the section.
impl crate::config::GuardsConfig {
    pub fn rules(&self) -> GuardRules {
        GuardRules {
            require_call_contracts: self.require_call_contracts,
            allowed_imports: self.allowed_imports.clone(),
        }
    }

    /// Reads and compiles the agent contract, proving its output fallback; a contract that
    /// cannot be read, compiled or proved is `BadInput`.
    pub fn agent_contract(&self) -> Result<Option<AgentContract>> {
        self.agent_contract_unmarked().map_err(crate::types::BadInput::wrap)
    }

    fn agent_contract_unmarked(&self) -> Result<Option<AgentContract>> {
        let Some(path) = &self.contract else { return Ok(None) };
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "guards.contract: cannot read {}; fix: point it at a contract TOML file",
                path.display()
            )
        })?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        AgentContract::from_toml(&name, &text).map(Some)
    }
}
