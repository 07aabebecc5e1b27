//! Proposers make new candidates from parents: `operators` (LLM-free structural mutations
//! and crossovers with tree-sitter) and `rewrite` (the ADAS-style meta-agent with reflexion
//! and debug rounds). The loop picks one per proposal by the configured probabilities.

pub mod agent_api;
pub mod diff;
pub mod instruction;
pub mod operators;
pub mod reply;
pub mod rewrite;
mod templates;

pub use templates::Templates;

/// A proposed program, before it is checked and evaluated.
#[derive(Debug, Clone)]
pub struct Proposal {
    /// `op:<operator>` or `rewrite` / `rewrite:debug<n>`.
    pub kind: String,
    pub name: String,
    pub thought: String,
    pub code: String,
    pub parents: Vec<String>,
    /// The rendered prompt and the raw reply (rewrite only), stored with the proposal.
    pub prompt: Option<String>,
    pub reply: Option<String>,
}
