//! Scorer code: the user's `score(task, output)` (`domain.scorer = "score.py"`), run after
//! the candidate's worker has ended, in a sandboxed worker of its own.
//!
//! Why a worker of its own: the scorer sees the gold fields, which the candidate must never
//! reach, and the candidate must not be able to alter how it is scored. Both hold because the
//! candidate's process is gone before the scorer starts, and all that passes between them is
//! the candidate's output text. Why the same sandbox as a candidate: scorer code is the
//! user's code, and a scorer that hangs, raises or reaches for the network must cost one
//! task's score and a clear message, never the run.

use std::collections::HashMap;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::config::EvaluationConfig;
use crate::domain::{ScorerCode, Task};
use crate::executor::{Executor, ShardLimits};
use crate::sandbox::{task_outcome, LlmCall, LlmHandler};
use crate::types::{TaskOutcome, Usage};

/// What the scorer said of one task.
#[derive(Debug, Clone, PartialEq)]
pub struct CodeScore {
    pub score: f64,
    /// Text for the proposer (empty when the scorer gave none).
    pub feedback: String,
}

/// Why the scorer gave no score for a task: its kind (`error`, `timeout`, `policy_denied`,
/// ...) and a message naming the file, the task and the fix.
#[derive(Debug, Clone, PartialEq)]
pub struct ScorerError {
    pub kind: TaskOutcome,
    pub message: String,
}

/// Refuses every model call: a scorer judges outputs, it does not ask the model.
struct NoModel;

impl LlmHandler for NoModel {
    fn handle(&self, _: Option<&str>, _: &LlmCall) -> Result<(Vec<String>, Usage), String> {
        Err("a scorer cannot call the model".into())
    }
}

/// The task as the scorer sees it: what the agent saw plus every hidden field.
pub fn whole_task(task: &Task) -> Value {
    let mut whole = task.input.clone();
    if let (Some(obj), Value::Object(hidden)) = (whole.as_object_mut(), &task.answer) {
        obj.extend(hidden.clone());
    }
    whole
}

/// Scores `outputs` (task, candidate output) with the scorer code, in one sandboxed worker
/// under the experiment's limits. Every task gets a score or a typed error.
pub fn score_outputs(
    scorer: &ScorerCode,
    outputs: &[(&Task, &str)],
    cfg: &EvaluationConfig,
    executor: &Executor,
) -> Result<HashMap<String, Result<CodeScore, ScorerError>>> {
    if outputs.is_empty() {
        return Ok(HashMap::new());
    }
    let wrapper = crate::assets::text(&crate::assets::RUNTIME, "score_forward.py")
        .context("runtime/score_forward.py is missing from this build")?;
    let code = format!("{}\n\n{wrapper}", scorer.source);
    let items: Vec<(String, Value)> = outputs
        .iter()
        .map(|(task, output)| (task.id.clone(), json!({"task": whole_task(task), "output": output})))
        .collect();
    let limits = ShardLimits::for_tasks(cfg, items.len());
    let run = executor.run_shard(&code, &items, &limits, &NoModel)?;
    let file = &scorer.file;
    Ok(items
        .iter()
        .map(|(id, _)| {
            let tr = run.tasks.get(id).cloned().unwrap_or_default();
            let kind = task_outcome(&tr, &run.exit);
            let result = if kind == TaskOutcome::Ok {
                parse_reply(tr.output.as_deref().unwrap_or("")).map_err(|why| ScorerError {
                    kind: TaskOutcome::Error,
                    message: format!("{file} on task {id}: {why}"),
                })
            } else {
                let why = tr
                    .error
                    .or_else(|| run.denials.iter().find(|d| d.task_id.as_deref() == Some(id)).map(|d| d.what.clone()))
                    .or_else(|| run.denials.first().map(|d| d.what.clone()))
                    .unwrap_or_else(|| format!("{:?}", run.exit));
                Err(ScorerError {
                    kind,
                    message: format!(
                        "{file} on task {id}: {kind}: {}; fix: make score(task, output) return within evaluation.task_timeout_s, without the network or files outside its folder",
                        crate::sandbox::tail(&why, 600)
                    ),
                })
            };
            (id.clone(), result)
        })
        .collect())
}

/// The wrapper's JSON reply (`runtime/score_forward.py` checked the type and the range).
fn parse_reply(text: &str) -> Result<CodeScore, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("unreadable reply {text:?}: {e}"))?;
    let score = v["score"]
        .as_f64()
        .filter(|s| (0.0..=1.0).contains(s))
        .ok_or("no score in [0, 1]")?;
    Ok(CodeScore {
        score,
        feedback: v["feedback"].as_str().unwrap_or_default().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scorer_sees_the_task_with_its_hidden_fields() {
        let task = Task {
            id: "t1".into(),
            input: json!({"question": "2+2?"}),
            answer: json!({"answer": 4, "unit": "apples"}),
        };
        assert_eq!(
            whole_task(&task),
            json!({"question": "2+2?", "answer": 4, "unit": "apples"})
        );
    }

    #[test]
    fn a_reply_outside_the_unit_interval_is_refused() {
        assert_eq!(
            parse_reply(r#"{"score": 0.5, "feedback": "half"}"#),
            Ok(CodeScore {
                score: 0.5,
                feedback: "half".into()
            })
        );
        assert!(parse_reply(r#"{"score": 1.5}"#).is_err());
        assert!(parse_reply("nope").unwrap_err().contains("unreadable"));
    }
}
