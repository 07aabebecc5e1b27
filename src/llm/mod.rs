//! The LLM gateway: every model call of the proposer and of candidates passes here.
//!
//! Why one gateway: caching, accounting, the budget cap and (later) output guards must hold
//! for every call, and a candidate must never hold a key or a socket. Backends only turn a
//! request into text; the gateway owns everything else.
//!
//! Architecture Invariant: nothing outside `llm` talks to a model.

mod fetch;
mod gateways;
#[cfg(feature = "local-model")]
pub mod local;
#[cfg(feature = "local-model")]
pub mod model_check;
#[cfg(feature = "local-model")]
mod model_process;
mod openai;
mod scripted;
mod serve;
#[cfg(feature = "local-model")]
pub mod supervisor;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use crate::host::cache_root;
pub use crate::types::{Calibration, CallParams, Message, Reply, Role, Usage, MAX_STOP};
pub use fetch::{resolve_local_model, DEFAULT_LOCAL_MODEL};
pub use gateways::Gateways;
pub use openai::OpenAiBackend;
pub use scripted::ScriptedBackend;
pub use serve::{serve, Endpoint};

/// The embedded model's process (`metaforge model-process`): answers the supervisor on
/// stdin/stdout until stdin closes.
#[cfg(feature = "local-model")]
pub fn serve_model_process(features: bool) -> Result<()> {
    if features {
        return model_process::print_features();
    }
    model_process::serve(std::io::stdin().lock(), std::io::stdout())
}

#[cfg(feature = "local-model")]
use crate::config::ModelProcess;
use crate::config::{BackendKind, BudgetConfig, ModelConfig};

/// Where answered calls are kept for replay. The archive implements it with its `llm_calls`
/// table; the gateway only asks and tells, so `llm` never learns how calls are stored.
pub trait CallStore: Send + Sync {
    /// A stored reply to exactly this request (key: `Gateway::cache_key`).
    fn get(&self, key: &str) -> Option<CachedCall>;
    /// Keeps an answered call; the store may write it later (see `flush`).
    fn put(&self, key: &str, role: Role, model: &str, req: &ChatRequest, reply: &Reply);
    /// Writes every call kept but not yet written.
    fn flush(&self);
}

impl ChatRequest {
    /// A constrained request may write its longest choice whatever `max_tokens` the role
    /// sets, and an endpoint's JSON around it: a token is at least a byte.
    fn with_room_for_choices(mut self) -> Self {
        if let Some(longest) = self.choices.iter().map(String::len).max() {
            self.max_tokens = self.max_tokens.max(longest as u32 + 24);
        }
        self
    }
}

pub use crate::types::pick_choice;

/// A reply as a `CallStore` returns it.
#[derive(Debug)]
pub struct CachedCall {
    pub text: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// A fully specified request: what the backend sees and what the cache key hashes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub temperature: f32,
    pub max_tokens: u32,
    pub json: bool,
    /// Generation ends where one of these appears; the reply stops before it. Left out of
    /// the serialised request (and so of the cache key) when empty, so calls without stop
    /// sequences keep the keys they always had.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// The answers allowed: the reply is exactly one of them (`pick_choice`). Left out of the
    /// serialised request when empty, as `stop` is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
    /// Answer the choices relative to a content-free question (`Calibration`); only a
    /// backend that scores choices (the embedded model) can, the others refuse. Left out of
    /// the serialised request when absent, as `stop` is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
    /// Which sample of an identical request this is; also seeds local sampling, so a repeat
    /// sample is distinct from the first yet reproducible.
    pub sample_index: u32,
}

#[derive(Debug, Clone)]
pub struct Completion {
    pub text: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// Worth retrying: 429, 5xx, timeouts, connection resets.
    #[error("transient model error: {0}")]
    Transient(String),
    /// The endpoint said how long to wait (429 or 503 with `Retry-After`).
    #[error("throttled: {message}")]
    Throttled {
        message: String,
        retry_after: std::time::Duration,
    },
    /// Not worth retrying: 4xx, malformed response, model failure.
    #[error("model error: {0}")]
    Fatal(String),
    #[error("budget exhausted: {0}")]
    Budget(String),
}

/// Turns a request into text. Implementations: embedded llama.cpp, OpenAI-compatible HTTP,
/// and a scripted list of replies for unit tests of loop logic.
pub trait Backend: Send + Sync {
    /// Identifies the model in cache keys: two backends serving the same weights with the
    /// same identity share cached replies.
    fn model_id(&self) -> String;
    fn complete(&self, request: &ChatRequest) -> Result<Completion, LlmError>;
    /// Time the inference engine itself measured in decoding so far (llama.cpp's perf
    /// counters), for comparing with metaforge's wall time; None for remote backends.
    fn engine_time(&self) -> Option<std::time::Duration> {
        None
    }
    /// The tokens one request may hold, prompt and reply together, where the backend knows
    /// it (the embedded model's `context_per_sequence`); None for an endpoint, whose window
    /// a prompt builder cannot see.
    fn context_window(&self) -> Option<u32> {
        None
    }
    /// What happened to the model since the last call that a run should keep (a model
    /// process that died and was restarted), each once.
    fn incidents(&self) -> Vec<serde_json::Value> {
        Vec::new()
    }
    /// Why this backend can answer nothing any more (its model died for good), if so.
    fn failure(&self) -> Option<String> {
        None
    }
}

/// A hard cap on tokens or dollars shared by all gateways of a run. Requests reserve their
/// worst case before they are sent, so concurrent in-flight requests cannot overshoot.
#[derive(Debug, Default)]
pub struct Budget {
    /// The config key whose caps these are (`budget`, `models.meta.strong`), for errors.
    key: String,
    max_tokens: Option<u64>,
    max_micro_usd: Option<u64>,
    used_tokens: AtomicU64,
    used_micro_usd: AtomicU64,
    reserved: Mutex<(u64, u64)>,
    /// A call was refused for want of room: a chooser stops offering this model (in this
    /// process; the refusal itself sends nothing and costs nothing).
    refused: std::sync::atomic::AtomicBool,
}

impl Budget {
    pub fn new(cfg: &BudgetConfig) -> Self {
        Self {
            key: "budget".into(),
            max_tokens: cfg.max_tokens,
            max_micro_usd: cfg.max_cost_usd.map(|d| (d * 1e6) as u64),
            ..Default::default()
        }
    }

    /// One model's own caps (`budget_usd`, `budget_tokens` of the section at `key`); None
    /// when it sets neither.
    pub fn for_model(key: &str, cfg: &ModelConfig) -> Option<Self> {
        (cfg.budget_usd.is_some() || cfg.budget_tokens.is_some()).then(|| Self {
            key: key.into(),
            max_tokens: cfg.budget_tokens,
            max_micro_usd: cfg.budget_usd.map(|d| (d * 1e6) as u64),
            ..Default::default()
        })
    }

    /// Spent up to a cap, or a call was refused for want of room.
    pub fn exhausted(&self) -> bool {
        if self.refused.load(Ordering::SeqCst) {
            return true;
        }
        let r = self.reserved.lock().unwrap();
        let tokens = self.used_tokens.load(Ordering::SeqCst) + r.0;
        let micro = self.used_micro_usd.load(Ordering::SeqCst) + r.1;
        self.max_tokens.is_some_and(|m| tokens >= m) || self.max_micro_usd.is_some_and(|m| micro >= m)
    }

    pub fn unlimited() -> Self {
        Self::default()
    }

    /// Adds spending that happened before this process (resume), so the cap spans the run.
    pub fn preload(&self, tokens: u64, cost_usd: f64) {
        self.used_tokens.fetch_add(tokens, Ordering::SeqCst);
        self.used_micro_usd.fetch_add((cost_usd * 1e6) as u64, Ordering::SeqCst);
    }

    fn reserve(&self, tokens: u64, micro_usd: u64) -> Result<(), LlmError> {
        let refused = self.try_reserve(tokens, micro_usd);
        if refused.is_err() {
            self.refused.store(true, Ordering::SeqCst);
        }
        refused
    }

    fn try_reserve(&self, tokens: u64, micro_usd: u64) -> Result<(), LlmError> {
        let mut r = self.reserved.lock().unwrap();
        if let Some(max) = self.max_tokens {
            let used = self.used_tokens.load(Ordering::SeqCst) + r.0 + tokens;
            if used > max {
                return Err(LlmError::Budget(format!(
                    "{}: token cap {max} reached (used {}, in flight {})",
                    self.key,
                    self.used_tokens.load(Ordering::SeqCst),
                    r.0
                )));
            }
        }
        if let Some(max) = self.max_micro_usd {
            let used = self.used_micro_usd.load(Ordering::SeqCst) + r.1 + micro_usd;
            if used > max {
                return Err(LlmError::Budget(format!(
                    "{}: cost cap ${:.4} reached",
                    self.key,
                    max as f64 / 1e6
                )));
            }
        }
        r.0 += tokens;
        r.1 += micro_usd;
        Ok(())
    }

    fn settle(&self, reserved: (u64, u64), tokens: u64, micro_usd: u64) {
        let mut r = self.reserved.lock().unwrap();
        r.0 -= reserved.0;
        r.1 -= reserved.1;
        self.used_tokens.fetch_add(tokens, Ordering::SeqCst);
        self.used_micro_usd.fetch_add(micro_usd, Ordering::SeqCst);
    }
}

/// Bounds requests in flight per backend.
struct Limiter {
    free: Mutex<usize>,
    cv: Condvar,
}

impl Limiter {
    fn new(n: usize) -> Self {
        Self {
            free: Mutex::new(n.max(1)),
            cv: Condvar::new(),
        }
    }
    fn acquire(&self) -> LimiterGuard<'_> {
        let mut f = self.free.lock().unwrap();
        while *f == 0 {
            f = self.cv.wait(f).unwrap();
        }
        *f -= 1;
        LimiterGuard(self)
    }
}

struct LimiterGuard<'a>(&'a Limiter);
impl Drop for LimiterGuard<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap() += 1;
        self.0.cv.notify_one();
    }
}

/// The longest `Retry-After` honoured; a longer one waits this long, then tries again.
const MAX_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// `text` cut before the earliest stop sequence in it. Every backend's reply passes here, so
/// `stop` means the same whether the backend honours it (llama.cpp stops decoding, an
/// endpoint cuts) or not (the scripted backend).
pub fn cut_at_stop(text: &str, stop: &[String]) -> Option<usize> {
    stop.iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
}

pub struct Gateway {
    role: Role,
    backend: Arc<dyn Backend>,
    cache: Option<Arc<dyn CallStore>>,
    limiter: Arc<Limiter>,
    budget: Arc<Budget>,
    /// The model's own caps, besides the run's (`budget_usd`, `budget_tokens`).
    own_budget: Option<Arc<Budget>>,
    default_temperature: f32,
    default_max_tokens: u32,
    price_prompt: f64,
    price_completion: f64,
    retries: u32,
    call_deadline: std::time::Duration,
    totals: Mutex<Usage>,
}

impl Gateway {
    pub fn new(
        role: Role,
        backend: Arc<dyn Backend>,
        cfg: &ModelConfig,
        cache: Option<Arc<dyn CallStore>>,
        budget: Arc<Budget>,
    ) -> Self {
        Self {
            role,
            backend,
            cache,
            limiter: Arc::new(Limiter::new(cfg.max_concurrency)),
            budget,
            own_budget: None,
            default_temperature: cfg.temperature,
            default_max_tokens: cfg.max_tokens,
            price_prompt: cfg.price_prompt_per_mtok,
            price_completion: cfg.price_completion_per_mtok,
            retries: cfg.max_retries,
            call_deadline: std::time::Duration::from_secs(cfg.call_deadline_s),
            totals: Mutex::new(Usage::default()),
        }
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// The same gateway with caps of its model's own, besides the run's.
    pub fn with_own_budget(mut self, budget: Option<Budget>) -> Self {
        self.own_budget = budget.map(Arc::new);
        self
    }

    /// The model's own caps are spent: choosers skip it while another model is left.
    pub fn exhausted(&self) -> bool {
        self.own_budget.as_ref().is_some_and(|b| b.exhausted())
    }

    /// Adds what the model spent before this process (resume) to its own caps.
    pub fn preload_own(&self, tokens: u64, cost_usd: f64) {
        if let Some(b) = &self.own_budget {
            b.preload(tokens, cost_usd);
        }
    }

    /// Whether calls through it cost dollars (a price is set).
    pub fn priced(&self) -> bool {
        self.price_prompt > 0.0 || self.price_completion > 0.0
    }

    /// The same gateway (backend, cache, concurrency bound, budget) with totals of its own:
    /// what one of several steps running at once spent, counted apart from the others.
    pub fn scoped(&self) -> Gateway {
        Gateway {
            role: self.role,
            backend: self.backend.clone(),
            cache: self.cache.clone(),
            limiter: self.limiter.clone(),
            budget: self.budget.clone(),
            own_budget: self.own_budget.clone(),
            default_temperature: self.default_temperature,
            default_max_tokens: self.default_max_tokens,
            price_prompt: self.price_prompt,
            price_completion: self.price_completion,
            retries: self.retries,
            call_deadline: self.call_deadline,
            totals: Mutex::new(Usage::default()),
        }
    }

    /// Writes the calls the cache keeps waiting (`CallStore::put`).
    pub fn flush_cache(&self) {
        if let Some(cache) = &self.cache {
            cache.flush();
        }
    }

    /// The prompt tokens a request with the default `max_tokens` may carry, where the
    /// backend knows its window: prompt builders drop what they can spare to stay inside it.
    pub fn prompt_room(&self) -> Option<u32> {
        self.backend
            .context_window()
            .map(|w| w.saturating_sub(self.default_max_tokens.max(1)))
    }

    pub fn model_id(&self) -> String {
        self.backend.model_id()
    }

    /// The backend's incidents since the last call (`Backend::incidents`).
    pub fn incidents(&self) -> Vec<serde_json::Value> {
        self.backend.incidents()
    }

    /// Why the backend can answer nothing any more, if it died for good.
    pub fn failure(&self) -> Option<String> {
        self.backend.failure()
    }

    /// Totals over the life of this gateway (this process).
    pub fn totals(&self) -> Usage {
        *self.totals.lock().unwrap()
    }

    pub fn request(&self, messages: Vec<Message>, params: CallParams, sample_index: u32) -> ChatRequest {
        ChatRequest {
            messages,
            temperature: params.temperature.unwrap_or(self.default_temperature).clamp(0.0, 2.0),
            max_tokens: params
                .max_tokens
                .unwrap_or(self.default_max_tokens)
                .min(self.default_max_tokens.max(1)),
            json: params.json,
            stop: params.stop,
            choices: params.choices,
            calibration: params.calibration,
            sample_index,
        }
        .with_room_for_choices()
    }

    /// Cache key: hash of (model, messages, params, sample index).
    pub fn cache_key(&self, req: &ChatRequest) -> String {
        let mut h = Sha256::new();
        h.update(self.backend.model_id().as_bytes());
        h.update([0]);
        h.update(serde_json::to_vec(req).expect("requests serialise"));
        hex::encode(h.finalize())
    }

    /// One completion, from the cache when this exact request (and sample) was made before.
    pub fn complete(&self, req: &ChatRequest) -> Result<Reply, LlmError> {
        let key = self.cache_key(req);
        if let Some(cache) = &self.cache {
            if let Some(hit) = cache.get(&key) {
                let reply = Reply {
                    text: hit.text,
                    prompt_tokens: hit.prompt_tokens,
                    completion_tokens: hit.completion_tokens,
                    cost_usd: self.price(hit.prompt_tokens, hit.completion_tokens),
                    latency_ms: 0.0,
                    cached: true,
                };
                self.totals.lock().unwrap().add(&reply);
                return Ok(reply);
            }
        }
        let prompt_chars: usize = req.messages.iter().map(|m| m.content.len()).sum();
        let worst_tokens = (prompt_chars / 3) as u64 + u64::from(req.max_tokens);
        let worst_cost = self.price(worst_tokens, u64::from(req.max_tokens));
        let reservation = (worst_tokens, (worst_cost * 1e6) as u64);
        self.budget.reserve(reservation.0, reservation.1)?;
        if let Some(own) = &self.own_budget {
            if let Err(e) = own.reserve(reservation.0, reservation.1) {
                self.budget.settle(reservation, 0, 0);
                return Err(e);
            }
        }
        let started = Instant::now();
        let result = {
            let _slot = self.limiter.acquire();
            self.with_retries(req)
        };
        let (tokens, micro) = match &result {
            Ok(c) => (
                c.prompt_tokens + c.completion_tokens,
                (self.price(c.prompt_tokens, c.completion_tokens) * 1e6) as u64,
            ),
            Err(_) => (0, 0),
        };
        self.budget.settle(reservation, tokens, micro);
        if let Some(own) = &self.own_budget {
            own.settle(reservation, tokens, micro);
        }
        let mut completion = result?;
        if let Some(at) = cut_at_stop(&completion.text, &req.stop) {
            completion.text.truncate(at);
        }
        if !req.choices.is_empty() {
            completion.text = pick_choice(&completion.text, &req.choices)
                .ok_or_else(|| {
                    LlmError::Fatal(format!(
                        "the model's reply {:?} names none of the choices {:?}",
                        completion.text.chars().take(200).collect::<String>(),
                        req.choices
                    ))
                })?
                .to_string();
        }
        let reply = Reply {
            cost_usd: self.price(completion.prompt_tokens, completion.completion_tokens),
            latency_ms: started.elapsed().as_secs_f64() * 1e3,
            text: completion.text,
            prompt_tokens: completion.prompt_tokens,
            completion_tokens: completion.completion_tokens,
            cached: false,
        };
        if let Some(cache) = &self.cache {
            cache.put(&key, self.role, &self.backend.model_id(), req, &reply);
        }
        self.totals.lock().unwrap().add(&reply);
        Ok(reply)
    }

    /// Retries transient failures: after the endpoint's `Retry-After` when it gave one
    /// (capped), else after an exponential backoff with jitter, so calls that failed together
    /// do not all come back at the same moment. No retry starts once the call has taken
    /// `call_deadline_s`: its last error is returned, saying so.
    fn with_retries(&self, req: &ChatRequest) -> Result<Completion, LlmError> {
        let started = std::time::Instant::now();
        let mut attempt = 0;
        loop {
            let (msg, wait) = match self.backend.complete(req) {
                Err(LlmError::Transient(msg)) if attempt < self.retries => {
                    let base = 250.0 * f64::from(1u32 << attempt.min(6));
                    let jitter = 0.5 + rand::random::<f64>() / 2.0;
                    (msg, std::time::Duration::from_millis((base * jitter) as u64))
                }
                Err(LlmError::Throttled { message, retry_after }) if attempt < self.retries => {
                    (message, retry_after.min(MAX_RETRY_AFTER))
                }
                other => return other,
            };
            if started.elapsed() + wait >= self.call_deadline {
                return Err(LlmError::Transient(format!(
                    "{msg} (gave up after {} attempts in {:.0} s: models.{}.call_deadline_s is {} s)",
                    attempt + 1,
                    started.elapsed().as_secs_f64(),
                    self.role.as_str(),
                    self.call_deadline.as_secs()
                )));
            }
            tracing::warn!(role = self.role.as_str(), %msg, ?wait, "retrying model call");
            std::thread::sleep(wait);
            attempt += 1;
        }
    }

    fn price(&self, prompt: u64, completion: u64) -> f64 {
        (prompt as f64 * self.price_prompt + completion as f64 * self.price_completion) / 1e6
    }
}

/// Builds backends from config, sharing one embedded model between roles that name the
/// same weights (one model instance behind the gateway; two would fight for the cores).
pub struct BackendFactory {
    #[cfg(feature = "local-model")]
    locals: Mutex<Vec<(String, Arc<dyn Backend>)>>,
}

impl Default for BackendFactory {
    fn default() -> Self {
        Self::new()
    }
}

impl BackendFactory {
    pub fn new() -> Self {
        Self {
            #[cfg(feature = "local-model")]
            locals: Mutex::new(Vec::new()),
        }
    }

    pub fn build(&self, cfg: &ModelConfig, role: &str) -> Result<Arc<dyn Backend>> {
        match cfg.backend {
            BackendKind::Openai => Ok(Arc::new(OpenAiBackend::from_config(cfg, role)?)),
            BackendKind::Scripted => Ok(Arc::new(ScriptedBackend::from_config(cfg, role)?)),
            BackendKind::Local => self.local(cfg, role),
        }
    }

    #[cfg(feature = "local-model")]
    fn local(&self, cfg: &ModelConfig, role: &str) -> Result<Arc<dyn Backend>> {
        let path = resolve_local_model(&cfg.model)?;
        let key = path.display().to_string();
        let mut locals = self.locals.lock().unwrap();
        if let Some((_, b)) = locals.iter().find(|(k, _)| *k == key) {
            return Ok(b.clone());
        }
        let backend: Arc<dyn Backend> = match cfg.process {
            ModelProcess::Supervised => Arc::new(supervisor::SupervisedBackend::start(
                local::LocalSettings::new(&path, cfg),
                role,
                1,
                std::time::Duration::from_secs(cfg.hang_timeout_s.max(1)),
            )?),
            ModelProcess::InProcess => Arc::new(local::LocalBackend::load(&path, cfg, role)?),
        };
        locals.push((key, backend.clone()));
        Ok(backend)
    }

    #[cfg(not(feature = "local-model"))]
    fn local(&self, _cfg: &ModelConfig, role: &str) -> Result<Arc<dyn Backend>> {
        anyhow::bail!(
            "models.{role}.backend = \"local\" but this binary was built without the `local-model` feature; fix: rebuild with default features, or use backend = \"openai\""
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ModelConfig {
        toml::from_str("backend = \"scripted\"\nmodel = \"s\"\nscript = \"x\"\nmax_tokens = 10").unwrap()
    }

    #[test]
    fn budget_refuses_before_sending() {
        let backend = Arc::new(ScriptedBackend::new("s", vec!["a".into(); 10]));
        let budget = Arc::new(Budget::new(&BudgetConfig {
            max_tokens: Some(30),
            max_cost_usd: None,
        }));
        let gw = Gateway::new(Role::Agent, backend.clone(), &cfg(), None, budget);
        let req = gw.request(vec![Message::new("user", "hello")], CallParams::default(), 0);
        assert!(gw.complete(&req).is_ok());
        let mut refused = 0;
        for i in 1..10 {
            let req = gw.request(vec![Message::new("user", "hello")], CallParams::default(), i);
            if matches!(gw.complete(&req), Err(LlmError::Budget(_))) {
                refused += 1;
            }
        }
        assert!(refused > 0, "a 30-token cap must refuse some of 10 calls");
        assert!(backend.calls() < 10);
    }

    #[test]
    fn a_reply_ends_before_its_first_stop_sequence_and_stop_keys_the_cache() {
        let backend = Arc::new(ScriptedBackend::new("s", vec!["42 apples\nQuestion: 7".into(); 4]));
        let gw = Gateway::new(Role::Agent, backend, &cfg(), None, Arc::new(Budget::unlimited()));
        let stop = |s: &[&str]| CallParams {
            stop: s.iter().map(|x| x.to_string()).collect(),
            ..CallParams::default()
        };
        let plain = gw.request(vec![Message::new("user", "q")], CallParams::default(), 0);
        let cut = gw.request(vec![Message::new("user", "q")], stop(&["Question:", "\n"]), 0);
        assert_eq!(gw.complete(&plain).unwrap().text, "42 apples\nQuestion: 7");
        assert_eq!(gw.complete(&cut).unwrap().text, "42 apples");
        assert_ne!(gw.cache_key(&plain), gw.cache_key(&cut));
        // A request without stop sequences serialises (and so is keyed) as it always was.
        assert!(!serde_json::to_string(&plain).unwrap().contains("stop"));
        assert_eq!(cut_at_stop("abc", &["".into()]), None, "an empty stop never matches");
    }

    #[test]
    fn a_constrained_reply_is_read_as_one_of_its_choices() {
        let choices: Vec<String> = ["positive", "negative", "B", "Blue whale"]
            .iter()
            .map(|c| c.to_string())
            .collect();
        let pick = |r: &str| pick_choice(r, &choices);
        assert_eq!(pick("negative"), Some("negative"));
        assert_eq!(pick(" \"Positive\".\n"), Some("positive"));
        assert_eq!(pick("b"), Some("B"));
        assert_eq!(pick("I think it is negative, not positive"), Some("negative"));
        assert_eq!(
            pick("Blue whale, surely"),
            Some("Blue whale"),
            "the longest choice at the same place"
        );
        assert_eq!(pick("no idea"), None);
        let letters: Vec<String> = ["A", "B", "C", "D"].iter().map(|c| c.to_string()).collect();
        assert_eq!(
            pick_choice("The answer is C.", &letters),
            Some("C"),
            "not the a of answer"
        );
        assert_eq!(pick_choice("(d) because", &letters), Some("D"));
        // A choice of the call is part of its key, and a call without choices keeps its key.
        let backend = Arc::new(ScriptedBackend::new(
            "s",
            vec!["The answer is negative.".into(), "dunno".into()],
        ));
        let gw = Gateway::new(Role::Agent, backend, &cfg(), None, Arc::new(Budget::unlimited()));
        let params = CallParams {
            choices: choices.clone(),
            ..CallParams::default()
        };
        let req = gw.request(vec![Message::new("user", "q")], params, 0);
        assert!(
            req.max_tokens >= "Blue whale".len() as u32,
            "room for the longest choice"
        );
        assert_eq!(gw.complete(&req).unwrap().text, "negative");
        let e = gw.complete(&gw.request(
            vec![Message::new("user", "q2")],
            CallParams {
                choices,
                ..CallParams::default()
            },
            0,
        ));
        assert!(matches!(e, Err(LlmError::Fatal(m)) if m.contains("names none of the choices")));
        let plain = gw.request(vec![Message::new("user", "q")], CallParams::default(), 0);
        assert!(!serde_json::to_string(&plain).unwrap().contains("choices"));
    }

    #[test]
    fn sample_index_changes_the_key() {
        let backend = Arc::new(ScriptedBackend::new("s", vec![]));
        let gw = Gateway::new(Role::Agent, backend, &cfg(), None, Arc::new(Budget::unlimited()));
        let a = gw.request(vec![Message::new("user", "x")], CallParams::default(), 0);
        let b = gw.request(vec![Message::new("user", "x")], CallParams::default(), 1);
        assert_ne!(gw.cache_key(&a), gw.cache_key(&b));
        assert_eq!(gw.cache_key(&a), gw.cache_key(&a.clone()));
    }
}
