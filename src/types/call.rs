//! What a model call is made of and what it costs: shared by the gateway that makes calls,
//! the sandbox protocol that carries them and the archive that stores their totals.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Which side of the search a gateway serves; stored with every cached call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Meta,
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Meta => "meta",
            Role::Agent => "agent",
        }
    }
}

/// Parameters a caller may set per call; unset ones take the role's configured defaults.
#[derive(Debug, Clone, Default)]
pub struct CallParams {
    pub temperature: Option<f32>,
    pub max_tokens: Option<u32>,
    pub json: bool,
    /// Stop sequences (at most `MAX_STOP`), as OpenAI-compatible endpoints take them.
    pub stop: Vec<String>,
    /// The answers allowed (at most `MAX_CHOICES`): the reply is exactly one of them.
    pub choices: Vec<String>,
    /// A content-free version of the same question, for a constrained call at temperature 0
    /// to be answered by likelihood relative to it (`Calibration`).
    pub calibration: Option<Calibration>,
}

/// The same question with its content left out ("You hold the thing" for "You hold the
/// cushion"), each choice worded for it, in the order of the call's own choices. A scoring
/// backend picks the choice whose log-likelihood rises most from this question to the real
/// one (contextual calibration, Zhao et al. 2021). Why: a small model scoring choices is
/// pulled toward whatever the context names, whatever the question; the pull is there in the
/// content-free question too, and so cancels, while what the question's content adds stays,
/// as far as the model ties the context to that content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    pub messages: Vec<Message>,
    pub choices: Vec<String>,
}

/// Most stop sequences a call may carry (OpenAI's limit).
pub const MAX_STOP: usize = 4;

/// Most answers a constrained call may allow, and the longest one (bytes).
pub const MAX_CHOICES: usize = 64;
pub const MAX_CHOICE_BYTES: usize = 200;

/// Refuses a list of choices no constrained call can honour, saying why.
pub fn check_choices(choices: &[String]) -> Result<(), String> {
    if choices.is_empty() || choices.len() > MAX_CHOICES {
        return Err(format!(
            "choices must hold 1 to {MAX_CHOICES} strings, not {}",
            choices.len()
        ));
    }
    if let Some(c) = choices
        .iter()
        .find(|c| c.trim().is_empty() || c.len() > MAX_CHOICE_BYTES)
    {
        return Err(format!(
            "choice {c:?} is empty or longer than {MAX_CHOICE_BYTES} bytes; each choice must be a short answer"
        ));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(c) = choices.iter().find(|c| !seen.insert(c.as_str())) {
        return Err(format!("choice {c:?} is listed twice"));
    }
    Ok(())
}

/// The choice a reply names: the reply itself (trimmed of spaces, quotes and a final period,
/// in any case), else the choice it mentions first (the longest of those that start at the
/// same place). None when it names none. Every backend's constrained reply passes here, so
/// `choices` means the same whether the backend enforced them while decoding or not.
pub fn pick_choice<'c>(reply: &str, choices: &'c [String]) -> Option<&'c str> {
    let bare = reply.trim().trim_matches(|c: char| ".\"'`*".contains(c)).trim();
    if let Some(c) = choices
        .iter()
        .find(|c| c.as_str() == bare || c.to_lowercase() == bare.to_lowercase())
    {
        return Some(c);
    }
    let low = reply.to_lowercase();
    choices
        .iter()
        .filter_map(|c| find_word(&low, &c.to_lowercase()).map(|at| (at, std::cmp::Reverse(c.len()), c)))
        .min()
        .map(|(_, _, c)| c.as_str())
}

/// Where `word` first stands in `text` as a whole word: neither side touches a letter or
/// digit, so the choice "a" is not found in "answer".
fn find_word(text: &str, word: &str) -> Option<usize> {
    let alnum = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    text.match_indices(word)
        .map(|(at, _)| at)
        .find(|&at| !alnum(text[..at].chars().next_back()) && !alnum(text[at + word.len()..].chars().next()))
}

/// The answer to a gateway call, with what it cost.
#[derive(Debug, Clone, Serialize)]
pub struct Reply {
    pub text: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
    pub latency_ms: f64,
    pub cached: bool,
}

/// Token and dollar totals; used per candidate evaluation and per run.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Usage {
    pub calls: u64,
    pub cached_calls: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
    pub latency_ms: f64,
}

impl Usage {
    pub fn add(&mut self, r: &Reply) {
        self.calls += 1;
        self.cached_calls += u64::from(r.cached);
        self.prompt_tokens += r.prompt_tokens;
        self.completion_tokens += r.completion_tokens;
        self.cost_usd += r.cost_usd;
        self.latency_ms += r.latency_ms;
    }

    pub fn merge(&mut self, o: &Usage) {
        self.calls += o.calls;
        self.cached_calls += o.cached_calls;
        self.prompt_tokens += o.prompt_tokens;
        self.completion_tokens += o.completion_tokens;
        self.cost_usd += o.cost_usd;
        self.latency_ms += o.latency_ms;
    }

    pub fn tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}
