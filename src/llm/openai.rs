//! Any OpenAI-compatible `/v1/chat/completions` endpoint (OpenAI, vLLM, SGLang, Ollama,
//! llama.cpp's server). The key is read from the environment variable the config names, at
//! start-up, and never stored or passed to a worker.

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
}

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
        }
    }
}

impl Backend for OpenAiBackend {
    fn model_id(&self) -> String {
        format!("openai:{}", self.model)
    }

    fn complete(&self, req: &ChatRequest) -> Result<Completion, LlmError> {
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
