//! Any OpenAI-compatible `/v1/chat/completions` endpoint (OpenAI, vLLM, SGLang, Ollama,
//! llama.cpp's server). The key is read from the environment variable the config names, at
//! start-up, and never stored or passed to a worker.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::{Backend, ChatRequest, Completion, LlmError};
use crate::config::ModelConfig;

pub struct OpenAiBackend {
    agent: ureq::Agent,
    url: String,
    model: String,
    key: Option<String>,
    /// Whether the endpoint honours a JSON-schema `response_format` (`Structured`), learnt
    /// at its first constrained call.
    structured: AtomicU8,
}

/// How a constrained call (`choices`) is held to its choices at this endpoint.
const UNTRIED: u8 = 0;
const STRUCTURED: u8 = 1;
const MATCHED: u8 = 2;

/// Free replies asked for, at most, before a constrained call without structured output
/// fails.
const CHOICE_ATTEMPTS: u32 = 3;

impl OpenAiBackend {
    pub fn from_config(cfg: &ModelConfig, role: &str) -> Result<Self> {
        let base = cfg.base_url.clone().unwrap_or_default();
        let key = match &cfg.api_key_env {
            Some(var) => match std::env::var(var) {
                Ok(k) if !k.is_empty() => Some(k),
                _ => bail!(
                    "models.{role}.api_key_env names {var}, but that environment variable is not set; fix: export {var}=... (or remove api_key_env for a local server without keys)"
                ),
            },
            None => None,
        };
        Ok(Self::new(
            &base,
            &cfg.model,
            key,
            Duration::from_secs(cfg.timeout_s),
            cfg.max_concurrency,
        ))
    }

    /// `connections`: the calls in flight at once (the gateway's `max_concurrency`), each
    /// kept alive for the next call. Why: ureq keeps 3 idle connections a host by default,
    /// so with 8 in flight 5 of every 8 calls opened a new connection (a TCP and, against a
    /// hosted API, a TLS handshake each); the endpoint saturation bench showed the gaps.
    pub fn new(base_url: &str, model: &str, key: Option<String>, timeout: Duration, connections: usize) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .max_idle_connections(connections.max(10))
            .max_idle_connections_per_host(connections.max(3))
            .build()
            .into();
        Self {
            agent,
            url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            model: model.to_string(),
            key,
            structured: AtomicU8::new(UNTRIED),
        }
    }
}

impl Backend for OpenAiBackend {
    fn model_id(&self) -> String {
        format!("openai:{}", self.model)
    }

    fn complete(&self, req: &ChatRequest) -> Result<Completion, LlmError> {
        if req.calibration.is_some() {
            return Err(LlmError::Fatal(format!(
                "a calibrated choice needs each choice's likelihood, which {} does not give; \
                 use the embedded model for this call, or a player that does not calibrate \
                 (base_agent = \"place_avoid\", the default, or \"place_choice\")",
                self.model_id()
            )));
        }
        if req.choices.is_empty() {
            self.send(req, None)
        } else {
            self.choose(req)
        }
    }
}

impl OpenAiBackend {
    /// A constrained call: the choices as a JSON-schema `enum` (OpenAI's structured output,
    /// also vLLM's, SGLang's, Ollama's and llama.cpp's server), the reply's `answer` taken.
    /// An endpoint that refuses the schema, or answers outside it, is asked for free replies
    /// from then on, the choices listed at the end of the prompt; a reply that names one is
    /// read as it (`pick_choice`), and one that names none is asked again.
    fn choose(&self, req: &ChatRequest) -> Result<Completion, LlmError> {
        if self.structured.load(Ordering::Relaxed) != MATCHED {
            let schema = json!({
                "type": "json_schema",
                "json_schema": {"name": "choice", "strict": true, "schema": {
                    "type": "object",
                    "properties": {"answer": {"type": "string", "enum": req.choices}},
                    "required": ["answer"],
                    "additionalProperties": false,
                }},
            });
            match self.send(req, Some(schema)) {
                Ok(c) => {
                    let answer = serde_json::from_str::<Value>(&c.text)
                        .ok()
                        .and_then(|v| v["answer"].as_str().map(str::to_string));
                    if let Some(answer) = answer.filter(|a| req.choices.contains(a)) {
                        self.learn(STRUCTURED);
                        return Ok(Completion { text: answer, ..c });
                    }
                    self.learn(MATCHED);
                    if super::pick_choice(&c.text, &req.choices).is_some() {
                        return Ok(c);
                    }
                }
                // A 4xx that is about the schema: the endpoint has no structured output.
                Err(LlmError::Fatal(m)) if m.starts_with("HTTP 4") => self.learn(MATCHED),
                Err(e) => return Err(e),
            }
        }
        let listed: Vec<String> = req.choices.iter().map(|c| format!("- {c}")).collect();
        let mut asked = req.clone();
        asked.messages.push(super::Message::new(
            "user",
            format!(
                "Reply with exactly one of these, and nothing else:\n{}",
                listed.join("\n")
            ),
        ));
        let mut last = String::new();
        for attempt in 0..CHOICE_ATTEMPTS {
            asked.sample_index = req.sample_index.wrapping_add(attempt * 1000);
            let c = self.send(&asked, None)?;
            if super::pick_choice(&c.text, &req.choices).is_some() {
                return Ok(c);
            }
            last = c.text;
        }
        Err(LlmError::Fatal(format!(
            "{} named none of the choices {:?} in {CHOICE_ATTEMPTS} replies (the last: {:?})",
            self.url,
            req.choices,
            snippet(&last)
        )))
    }

    /// How this endpoint's constrained calls were held to their choices: "structured output"
    /// (a JSON-schema enum), "matched replies" (read as a choice, asked again), or "untried".
    pub fn choices_enforced_by(&self) -> &'static str {
        match self.structured.load(Ordering::Relaxed) {
            STRUCTURED => "structured output",
            MATCHED => "matched replies",
            _ => "untried",
        }
    }

    /// Records how this endpoint holds a call to its choices, saying so once.
    fn learn(&self, how: u8) {
        if self.structured.swap(how, Ordering::Relaxed) != how {
            match how {
                STRUCTURED => {
                    tracing::info!(url = %self.url, "choices are enforced by the endpoint's structured output (a JSON-schema enum)")
                }
                _ => {
                    tracing::warn!(url = %self.url, "the endpoint has no structured output: replies to calls with choices are read as a choice and asked again")
                }
            }
        }
    }

    /// One chat completion; `response_format` replaces the plain or `json` one.
    fn send(&self, req: &ChatRequest, response_format: Option<Value>) -> Result<Completion, LlmError> {
        let mut body = json!({
            "model": self.model,
            "messages": req.messages,
            "temperature": req.temperature,
            "max_tokens": req.max_tokens,
            "seed": req.sample_index,
        });
        if !req.stop.is_empty() {
            body["stop"] = json!(req.stop);
        }
        if req.json {
            body["response_format"] = json!({"type": "json_object"});
        }
        if let Some(format) = response_format {
            body["response_format"] = format;
        }
        let mut request = self.agent.post(&self.url).header("Content-Type", "application/json");
        if let Some(key) = &self.key {
            request = request.header("Authorization", &format!("Bearer {key}"));
        }
        let mut response = match request.send_json(&body) {
            Ok(r) => r,
            Err(e) if is_transient(&e) => return Err(LlmError::Transient(format!("{}: {e}", self.url))),
            Err(e) => {
                return Err(LlmError::Fatal(format!(
                    "{}: {e}; fix: check models.*.base_url (a retry would fail the same way)",
                    self.url
                )))
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response
            .body_mut()
            .with_config()
            .limit(16 * 1024 * 1024)
            .read_to_string()
            .map_err(|e| LlmError::Transient(format!("reading response: {e}")))?;
        if status == 429 || status >= 500 {
            let message = format!("HTTP {status}: {}", snippet(&text));
            return Err(match retry_after {
                Some(retry_after) => LlmError::Throttled { message, retry_after },
                None => LlmError::Transient(message),
            });
        }
        if status >= 400 {
            return Err(LlmError::Fatal(format!(
                "HTTP {status} from {}: {}",
                self.url,
                snippet(&text)
            )));
        }
        // A reply that is not JSON at all is a garbled transfer (a proxy, a cut connection)
        // more often than a wrong endpoint, and worth another attempt; valid JSON of the
        // wrong shape is not.
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| LlmError::Transient(format!("response is not JSON ({e}): {}", snippet(&text))))?;
        let content = v["choices"][0]["message"]["content"].as_str().ok_or_else(|| {
            LlmError::Fatal(format!(
                "response has no choices[0].message.content: {}",
                snippet(&text)
            ))
        })?;
        // An endpoint that reports no usage is charged an estimate (a token per 4 characters),
        // so a token budget still binds against it.
        let estimate = |chars: usize| (chars as u64).div_ceil(4);
        let prompt_chars: usize = req.messages.iter().map(|m| m.content.len()).sum();
        Ok(Completion {
            prompt_tokens: v["usage"]["prompt_tokens"]
                .as_u64()
                .unwrap_or_else(|| estimate(prompt_chars)),
            completion_tokens: v["usage"]["completion_tokens"]
                .as_u64()
                .unwrap_or_else(|| estimate(content.len())),
            text: content.to_string(),
        })
    }
}

/// Whether a failed send is worth retrying: the network or the server's moment, not a URL
/// or a configuration that fails the same way every time.
fn is_transient(e: &ureq::Error) -> bool {
    !matches!(
        e,
        ureq::Error::BadUri(_)
            | ureq::Error::Http(_)
            | ureq::Error::InvalidProxyUrl
            | ureq::Error::RequireHttpsOnly(_)
            | ureq::Error::TlsRequired
            | ureq::Error::Json(_)
    )
}

fn snippet(s: &str) -> String {
    s.chars().take(300).collect()
}
