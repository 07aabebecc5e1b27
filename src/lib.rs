//! metaforge: meta-agent search. See ARCHITECTURE.md for the map of modules.

pub mod adas;
pub mod app;
pub mod archive;
pub mod assets;
pub mod candidate;
pub mod check;
pub mod config;
pub mod domain;
pub mod episodic;
pub mod evaluate;
pub mod executor;
pub mod export;
#[cfg(metaforge_fuzz)]
pub mod fuzz_coverage;
pub mod guard;
pub mod host;
pub mod http;
pub mod llm;
pub mod propose;
pub mod pyenv;
pub mod report;
pub mod sandbox;
pub mod search;
pub mod types;
pub mod ui;
