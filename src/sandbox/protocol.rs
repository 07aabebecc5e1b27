//! The worker protocol: JSON lines. Worker -> host messages are parsed strictly; anything
//! else is a protocol violation, counted and never trusted.

use serde::{Deserialize, Serialize};

use crate::types::Message;

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerMessage {
    Ready,
    LoadError {
        error: String,
        #[serde(default)]
        traceback: Option<String>,
    },
    Llm {
        id: u64,
        #[serde(default)]
        task_id: Option<String>,
        #[serde(flatten)]
        call: LlmCall,
    },
    Result {
        task_id: String,
        #[serde(default)]
        output: Option<String>,
        #[serde(default)]
        error: Option<String>,
        #[serde(default)]
        traceback: Option<String>,
        #[serde(default)]
        stdout: Option<String>,
        /// Echo of the nonce the task was sent with.
        #[serde(default)]
        nonce: Option<u64>,
    },
    /// A memory design's evaluation asks the host to play an episode with the base agent
    /// (`memory`: the retrieved text, None in the fill phase). The host plays and scores.
    Episode {
        id: u64,
        #[serde(default)]
        task_id: Option<String>,
        episode: String,
        #[serde(default)]
        memory: Option<String>,
    },
    /// The worker's policy hook refused an operation (named in `what`) before the kernel
    /// would have. Only a label: enforcement is the kernel's.
    Denied {
        #[serde(default)]
        task_id: Option<String>,
        what: String,
    },
    Bye,
}

/// A model call requested by a candidate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LlmCall {
    pub messages: Vec<Message>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default = "one")]
    pub n: u32,
    #[serde(default)]
    pub json: bool,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub stop: Option<Vec<String>>,
    /// The answers allowed: the reply is exactly one of them.
    #[serde(default)]
    pub choices: Option<Vec<String>>,
    /// Which of the experiment's agent models answers (a `[models.agent.<name>]` name);
    /// None: the first. A name the experiment does not hold is refused, naming those it does.
    #[serde(default)]
    pub model: Option<String>,
    /// The id of a contract in the candidate's `CONTRACTS`; the host enforces it.
    #[serde(default)]
    pub contract: Option<String>,
    /// What the contract's `pre`, `post` and fallback read.
    #[serde(default)]
    pub input: Option<serde_json::Value>,
}

fn one() -> u32 {
    1
}

/// Largest prompt (characters, all messages) a candidate may send in one call.
pub const MAX_PROMPT_CHARS: usize = 200_000;
/// Largest `n` per call.
pub const MAX_SAMPLES: u32 = 16;

impl LlmCall {
    /// The sampling parameters the call asks for (the gateway applies the defaults).
    pub fn params(&self) -> crate::types::CallParams {
        crate::types::CallParams {
            temperature: self.temperature,
            max_tokens: self.max_tokens,
            json: self.json,
            stop: self.stop.clone().unwrap_or_default(),
            choices: self.choices.clone().unwrap_or_default(),
            // Agents choose by plain likelihood; calibration is the episodic player's own.
            calibration: None,
        }
    }

    /// Refuses requests that no honest agent makes (the worker's API checks too, but the
    /// worker is not trusted).
    pub fn validate(&self) -> Result<(), String> {
        if let Some(m) = &self.model {
            if m.is_empty() || m.len() > 64 {
                return Err(format!("model {m:?} is not a model name (1 to 64 characters)"));
            }
        }
        if self.n == 0 || self.n > MAX_SAMPLES {
            return Err(format!("n = {} is outside 1..={MAX_SAMPLES}", self.n));
        }
        let chars: usize = self.messages.iter().map(|m| m.content.len()).sum();
        if chars > MAX_PROMPT_CHARS {
            return Err(format!("prompt of {chars} characters exceeds {MAX_PROMPT_CHARS}"));
        }
        if self.contract.is_some() && self.n != 1 {
            return Err(format!(
                "a guarded call returns one value; n = {} (call it in a loop instead)",
                self.n
            ));
        }
        if let Some(stop) = &self.stop {
            if stop.is_empty()
                || stop.len() > crate::types::MAX_STOP
                || stop.iter().any(|s| s.is_empty() || s.len() > 64)
            {
                return Err(format!(
                    "stop must hold 1 to {} non-empty strings of at most 64 bytes",
                    crate::types::MAX_STOP
                ));
            }
        }
        if let Some(choices) = &self.choices {
            crate::types::check_choices(choices)?;
            if self.json || self.contract.is_some() {
                return Err("choices cannot be combined with json or a contract".into());
            }
        }
        if self.messages.is_empty() {
            return Err("no messages".into());
        }
        if let Some(t) = self.temperature {
            if !(0.0..=2.0).contains(&t) || t.is_nan() {
                return Err(format!("temperature {t} is outside 0..=2"));
            }
        }
        Ok(())
    }
}
