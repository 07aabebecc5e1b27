//! The embedded model's own process (`metaforge model-process`, started by `supervisor`):
//! one `LocalBackend` answering requests that arrive on stdin, one JSON line each, with
//! replies on stdout as they finish, in any order.
//!
//! Why a process: a fault inside llama.cpp (a bad kernel for this CPU, a failed assertion)
//! kills the process it happens in. Here that is this one, and the supervisor sees it die,
//! says how, and starts it again; in-process it ended the whole run without a word.
//!
//! The process ends when stdin closes, so it never outlives the metaforge that started it,
//! however that one ends.

use std::io::{BufRead, Write};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::local::{system_info, LocalBackend, LocalSettings};
use super::{Backend, ChatRequest, Completion, LlmError};

/// The first line the supervisor sends: how to load the model, and which life this is.
#[derive(Debug, Serialize, Deserialize)]
pub struct Start {
    pub settings: LocalSettings,
    pub role: String,
}

/// Every later line the supervisor sends.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    pub request: ChatRequest,
}

/// What the model process writes, one JSON line each.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Message {
    /// The model is loaded and answers from now on; what this build's kernels use.
    Ready { system_info: String, build_flags: String },
    /// The model could not be loaded: the process ends after this line.
    Failed { error: String },
    /// The answer to request `id`, and the microseconds llama.cpp spent decoding since the
    /// previous reply.
    Reply {
        id: u64,
        result: Result<Answer, WireError>,
        engine_us: u64,
    },
}

/// A completion as it crosses the pipe.
#[derive(Debug, Serialize, Deserialize)]
pub struct Answer {
    pub text: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// An `LlmError` as it crosses the pipe (the local backend raises only these two kinds).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireError {
    Transient(String),
    Fatal(String),
}

impl From<Completion> for Answer {
    fn from(c: Completion) -> Self {
        Self {
            text: c.text,
            prompt_tokens: c.prompt_tokens,
            completion_tokens: c.completion_tokens,
        }
    }
}

impl From<Answer> for Completion {
    fn from(a: Answer) -> Self {
        Self {
            text: a.text,
            prompt_tokens: a.prompt_tokens,
            completion_tokens: a.completion_tokens,
        }
    }
}

impl From<LlmError> for WireError {
    fn from(e: LlmError) -> Self {
        match e {
            LlmError::Transient(m) | LlmError::Throttled { message: m, .. } => WireError::Transient(m),
            LlmError::Fatal(m) | LlmError::Budget(m) => WireError::Fatal(m),
        }
    }
}

impl From<WireError> for LlmError {
    fn from(e: WireError) -> Self {
        match e {
            WireError::Transient(m) => LlmError::Transient(m),
            WireError::Fatal(m) => LlmError::Fatal(m),
        }
    }
}

/// This source's protocol, as `build.rs` hashed it: a variant build must speak the same.
pub const PROTOCOL: &str = env!("METAFORGE_MODEL_PROTOCOL");

/// What `metaforge model-process --features` prints: the protocol and the CPU features this
/// build's kernels need; how the supervisor tells whether a variant build can serve here.
#[derive(Debug, Serialize, Deserialize)]
pub struct Features {
    pub protocol: String,
    pub needs: Vec<String>,
}

pub fn print_features() -> Result<()> {
    let features = Features {
        protocol: PROTOCOL.into(),
        needs: super::local::build_features().iter().map(|f| f.to_string()).collect(),
    };
    println!("{}", serde_json::to_string(&features)?);
    Ok(())
}

/// The model process's main loop: load, say so, then answer each request on a thread of its
/// own (the backend batches whatever is in flight), until stdin closes.
pub fn serve(input: impl BufRead, output: impl Write + Send + 'static) -> Result<()> {
    let output = Arc::new(Mutex::new(output));
    let mut lines = input.lines();
    let first = lines.next().context("the supervisor sent nothing")??;
    let start: Start = serde_json::from_str(&first).context("the supervisor's first line is not a start message")?;
    let backend = match LocalBackend::start(start.settings, &start.role) {
        Ok(b) => Arc::new(b),
        Err(e) => {
            write_line(
                &output,
                &Message::Failed {
                    error: format!("{e:#}"),
                },
            );
            return Ok(());
        }
    };
    write_line(
        &output,
        &Message::Ready {
            system_info: system_info(),
            build_flags: super::local::build_flags().to_string(),
        },
    );
    let engine_seen = Arc::new(Mutex::new(std::time::Duration::ZERO));
    for line in lines {
        let line = line.context("cannot read from the supervisor")?;
        let req: Request = serde_json::from_str(&line).context("the supervisor sent a line that is not a request")?;
        let (backend, output, engine_seen) = (backend.clone(), output.clone(), engine_seen.clone());
        std::thread::spawn(move || {
            let result = backend
                .complete(&req.request)
                .map(Answer::from)
                .map_err(WireError::from);
            let engine_us = {
                let mut seen = engine_seen.lock().unwrap();
                let now = backend.engine_time().unwrap_or_default();
                let delta = now.saturating_sub(*seen);
                *seen = now;
                delta.as_micros() as u64
            };
            write_line(
                &output,
                &Message::Reply {
                    id: req.id,
                    result,
                    engine_us,
                },
            );
        });
    }
    Ok(())
}

fn write_line(output: &Mutex<impl Write>, message: &Message) {
    let mut line = serde_json::to_vec(message).expect("messages serialise");
    line.push(b'\n');
    let mut out = output.lock().unwrap();
    // A supervisor that is gone has nobody to answer: the loop ends when stdin closes.
    let _ = out.write_all(&line).and_then(|_| out.flush());
}
