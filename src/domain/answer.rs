//! What an answer looks like in a domain: the phrase instructions use, and the closed set
//! of answers when there is one. Built-in seeds, the instruction library, the choice blocks
//! and the meta-model's prompt are written once over it, so none of them assumes a number.

use anyhow::{bail, Result};
use serde::Serialize;

use super::{Scorer, Task};
use crate::config::DomainConfig;

/// The shape of a domain's answers: a closed set, because the blocks that apply and the
/// instruction lines that fit depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AnswerKind {
    /// A number (`numeric` scorer).
    Number,
    /// The letter of one of the task's `options` (`mc` scorer).
    Letter,
    /// One of a set of labels: `domain.choices`, or each task's own `choices`.
    Label,
    /// Free text: a span, a grid, whatever the scorer reads.
    Text,
}

/// How prompts and seeds speak of the answer (`answer` in every template).
#[derive(Debug, Clone, Serialize)]
pub struct AnswerSpec {
    pub kind: AnswerKind,
    /// What the answer is, as an instruction says it: "a single number", "the letter of the
    /// correct option". `domain.answer_format`, else the scorer's default.
    pub format: String,
    /// One word for the answer in `Answer: <slot>`.
    pub slot: String,
    /// The domain's labels (`domain.choices`); empty where tasks carry their own.
    pub choices: Vec<String>,
}

impl AnswerSpec {
    /// Numbers, as the arithmetic domains and every number-only tool expect.
    pub fn number() -> Self {
        Self {
            kind: AnswerKind::Number,
            format: "a single number".into(),
            slot: "number".into(),
            choices: Vec::new(),
        }
    }

    /// Whether answers come from a closed set, so the choice blocks apply.
    pub fn is_closed(&self) -> bool {
        matches!(self.kind, AnswerKind::Letter | AnswerKind::Label)
    }

    /// The spec for a domain's config, scorer and tasks. A task's own `choices` or `options`
    /// make the answers closed even where the scorer alone would not say so.
    pub fn for_domain(cfg: &DomainConfig, scorer: &Scorer, tasks: &[Task]) -> Result<Self> {
        let carries = |field: &str| tasks.iter().any(|t| t.input.get(field).is_some_and(|v| v.is_array()));
        if let Some(Err(e)) = cfg.choices.as_deref().map(crate::types::check_choices) {
            bail!("domain.choices: {e}; fix: list the labels an answer may be, e.g. choices = [\"yes\", \"no\"]");
        }
        let choices = cfg.choices.clone().unwrap_or_default();
        let (kind, format, slot) = match scorer {
            Scorer::Mc if !choices.is_empty() => bail!(
                "domain.choices is for label tasks, but scorer = \"mc\" reads option letters; fix: drop domain.choices (each task's `options` are its choices), or use scorer = \"label\""
            ),
            Scorer::Mc => (AnswerKind::Letter, "the letter of the correct option".to_string(), "letter"),
            Scorer::Label(_) if choices.is_empty() => bail!(
                "scorer = \"label\" needs the labels; fix: set domain.choices, e.g. choices = [\"yes\", \"no\"]"
            ),
            _ if !choices.is_empty() || carries("choices") => {
                let format = match choices.as_slice() {
                    [] => "one of the task's choices".to_string(),
                    [only] => format!("the word {only}"),
                    [rest @ .., last] => format!("one word: {} or {last}", rest.join(", ")),
                };
                (AnswerKind::Label, format, "label")
            }
            _ if carries("options") => (AnswerKind::Letter, "the letter of the correct option".into(), "letter"),
            Scorer::Numeric => (AnswerKind::Number, "a single number".into(), "number"),
            Scorer::Grid => (
                AnswerKind::Text,
                "the output grid as a list of rows, like [[0, 1], [1, 0]]".into(),
                "grid",
            ),
            Scorer::F1 => (
                AnswerKind::Text,
                "a short answer: a few words, a number or a date".into(),
                "answer",
            ),
            _ => (AnswerKind::Text, "the answer alone".into(), "answer"),
        };
        Ok(Self {
            kind,
            format: cfg.answer_format.clone().unwrap_or(format),
            slot: slot.into(),
            choices,
        })
    }
}
