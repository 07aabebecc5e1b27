//! Scripted backend: canned replies, for unit tests of the loop's logic ONLY. It is not a
//! model and no figure may be reported from it.
//!
//! Script file: a JSON list of replies (served in order, cycling), or an object
//! `{"rules": [{"contains": "...", "reply": "..."}], "default": "..."}` whose first rule
//! matching the last message wins (order-independent, so safe under concurrency), or a
//! recorded transcript `{"replies": [...]}` of a real model, replayed in order.

use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result};
use serde::Deserialize;

use super::{Backend, ChatRequest, Completion, LlmError};
use crate::config::ModelConfig;

#[derive(Deserialize)]
#[serde(untagged)]
enum Script {
    List(Vec<String>),
    Rules {
        rules: Vec<RuleEntry>,
        default: String,
    },
    /// A recorded transcript of a real model (`scripts/record-transcripts.sh`): its replies
    /// served in call order.
    Transcript {
        replies: Vec<String>,
    },
}

#[derive(Deserialize)]
struct RuleEntry {
    contains: String,
    reply: String,
}

pub struct ScriptedBackend {
    label: String,
    script: Script,
    next: AtomicUsize,
    /// Simulated model latency per reply (`latency_ms`).
    latency: std::time::Duration,
}

impl ScriptedBackend {
    pub fn new(label: &str, replies: Vec<String>) -> Self {
        Self {
            label: label.into(),
            script: Script::List(replies),
            next: AtomicUsize::new(0),
            latency: std::time::Duration::ZERO,
        }
    }

    pub fn from_config(cfg: &ModelConfig, role: &str) -> Result<Self> {
        let path = cfg.script.as_ref().context("scripted backend needs `script`")?;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("models.{role}.script: cannot read {}", path.display()))?;
        let script: Script = serde_json::from_str(&text).with_context(|| {
            format!("models.{role}.script {}: expected a JSON list of strings or {{\"rules\": [...], \"default\": \"...\"}}", path.display())
        })?;
        Ok(Self {
            label: cfg.model.clone(),
            script,
            next: AtomicUsize::new(0),
            latency: std::time::Duration::from_millis(cfg.latency_ms),
        })
    }

    pub fn calls(&self) -> usize {
        self.next.load(Ordering::SeqCst)
    }
}

impl Backend for ScriptedBackend {
    fn model_id(&self) -> String {
        format!("scripted:{}", self.label)
    }

    fn complete(&self, req: &ChatRequest) -> Result<Completion, LlmError> {
        std::thread::sleep(self.latency);
        let i = self.next.fetch_add(1, Ordering::SeqCst);
        let text = match &self.script {
            Script::List(replies) | Script::Transcript { replies } if replies.is_empty() => {
                return Err(LlmError::Fatal("script is empty".into()))
            }
            Script::List(replies) | Script::Transcript { replies } => replies[i % replies.len()].clone(),
            Script::Rules { rules, default } => {
                let last = req.messages.last().map(|m| m.content.as_str()).unwrap_or("");
                rules
                    .iter()
                    .find(|r| last.contains(&r.contains))
                    .map(|r| r.reply.clone())
                    .unwrap_or_else(|| default.clone())
            }
        };
        let prompt_chars: usize = req.messages.iter().map(|m| m.content.len()).sum();
        Ok(Completion {
            prompt_tokens: (prompt_chars / 4) as u64 + 1,
            completion_tokens: (text.len() / 4) as u64 + 1,
            text,
        })
    }
}
