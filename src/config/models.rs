//! The models of an experiment: `[models.meta]` (the proposer) and `[models.agent]` (what
//! candidates call), each one section or several named ones.
//!
//! Why a role may hold several models: users mix a cheap model with a strong one, and which
//! earns more per dollar is found by the search (`search::model_choice`), not guessed.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Models {
    /// The proposer's models (the meta-agent).
    #[serde(default)]
    pub meta: ModelSet,
    /// The models candidates call through `llm()`.
    #[serde(default)]
    pub agent: ModelSet,
}

/// The name a role's model has when the role is written as one section.
pub const SINGLE_MODEL: &str = "default";

/// One role's models: one `[models.<role>]` section (named [`SINGLE_MODEL`]), or named
/// sections `[models.<role>.<name>]`, kept in the order the file gives them (the agent's
/// first is what `llm()` reaches without `model=`).
#[derive(Debug, Clone)]
pub struct ModelSet {
    entries: Vec<(String, ModelConfig)>,
    /// Written as named sections (read back the same way when stored).
    named: bool,
}

impl Default for ModelSet {
    fn default() -> Self {
        Self::single(ModelConfig::default())
    }
}

impl ModelSet {
    pub fn single(cfg: ModelConfig) -> Self {
        Self {
            entries: vec![(SINGLE_MODEL.to_string(), cfg)],
            named: false,
        }
    }

    /// The first model: the one a role uses when nothing chooses among several.
    pub fn primary(&self) -> &ModelConfig {
        &self.entries[0].1
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &ModelConfig)> {
        self.entries.iter().map(|(n, m)| (n.as_str(), m))
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut ModelConfig)> {
        self.entries.iter_mut().map(|(n, m)| (n.as_str(), m))
    }

    pub fn get(&self, name: &str) -> Option<&ModelConfig> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, m)| m)
    }

    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|(n, _)| n.as_str()).collect()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Written as named sections.
    pub fn is_named(&self) -> bool {
        self.named
    }

    /// The config key of model `name` of `role` (`models.meta` or `models.meta.cheap`), for
    /// errors and file references.
    pub fn key(&self, role: &str, name: &str) -> String {
        if self.named {
            format!("models.{role}.{name}")
        } else {
            format!("models.{role}")
        }
    }
}

/// One section when its first key is a model setting, else named sections. Read as the
/// document streams (`model_sections`), so an error points at the key or value at fault
/// rather than at the section's header.
impl<'de> Deserialize<'de> for ModelSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use super::model_sections::{read, Sections};
        Ok(match read(d)? {
            Sections::One(cfg) => Self::single(cfg),
            Sections::Named(entries) => Self { entries, named: true },
        })
    }
}

impl Serialize for ModelSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        if !self.named {
            return self.primary().serialize(s);
        }
        let mut map = s.serialize_map(Some(self.entries.len()))?;
        for (name, cfg) in &self.entries {
            map.serialize_entry(name, cfg)?;
        }
        map.end()
    }
}

/// The embedded model a config gets when it names none (fetched on first use).
pub const DEFAULT_MODEL: &str = "smollm2-135m";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// Embedded llama.cpp running a GGUF file (the offline default).
    #[default]
    Local,
    /// Any OpenAI-compatible `/v1/chat/completions` endpoint.
    Openai,
    /// Replies from a file of canned answers: for unit tests of loop logic only.
    Scripted,
}

/// How the embedded model groups the requests it decodes together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Batching {
    /// A request joins the decode at the next step and is answered the moment it ends.
    #[default]
    Continuous,
    /// A batch forms from the requests waiting when the model is idle and runs until its
    /// longest answer ends. Slower; kept as the baseline `benches/local_throughput.rs`
    /// measures continuous batching against.
    Static,
}

/// Where the embedded model runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModelProcess {
    /// A process of its own that metaforge watches: if it dies (a fault in llama.cpp, an
    /// abort, the kernel's out-of-memory killer) it is started again once, with prefix reuse
    /// off, and the requests it held are sent again, so a run goes on; a second death stops
    /// the run at a step boundary with a message naming what died.
    #[default]
    Supervised,
    /// A thread of metaforge itself: a fault in llama.cpp ends the whole run. Kept as the
    /// baseline `benches/local_throughput.rs` measures the supervised process against.
    InProcess,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    #[serde(default)]
    pub backend: BackendKind,
    /// `local`: `smollm2-135m` (fetched on first use) or a path to a `.gguf` file.
    /// `openai`: the model name sent to the endpoint. `scripted`: a label.
    #[serde(default = "default_model")]
    pub model: String,
    /// `openai` only: base URL ending in `/v1`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// `openai` only: name of the environment variable that holds the API key (never the key).
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// `scripted` only: a JSON file with the list of replies.
    #[serde(default)]
    pub script: Option<PathBuf>,
    /// `scripted` only: milliseconds each reply takes, standing in for a model's latency
    /// (tests that must catch a shard mid-flight; overhead benchmarks).
    #[serde(default)]
    pub latency_ms: u64,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
    /// Temperature used when a call does not set one.
    #[serde(default)]
    pub temperature: f32,
    /// Requests to this backend in flight at once.
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    #[serde(default = "default_timeout")]
    pub timeout_s: u64,
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// Wall-clock seconds one call may take over all its attempts and waits: no retry
    /// starts past it (an attempt in flight still ends by `timeout_s`). Why: retries stacked
    /// behind a throttling or hanging endpoint must not wedge a run for hours.
    #[serde(default = "default_call_deadline")]
    pub call_deadline_s: u64,
    /// US dollars per million prompt tokens (0 = free / unknown).
    #[serde(default)]
    pub price_prompt_per_mtok: f64,
    #[serde(default)]
    pub price_completion_per_mtok: f64,
    /// `local` only: model threads (0 = all cores).
    #[serde(default)]
    pub threads: i32,
    /// `local` only: context tokens per concurrent sequence.
    #[serde(default = "default_ctx")]
    pub context_per_sequence: u32,
    /// `local` only: requests that start alike share their prompt prefix's key-value cache
    /// (a sequence keeps its cells for the next prompt that starts the same way).
    #[serde(default = "yes")]
    pub prefix_reuse: bool,
    /// `local` only: continuous (the default) or static batching.
    #[serde(default)]
    pub batching: Batching,
    /// `local` only: `supervised` (the default, a process of its own, restarted once if it
    /// dies) or `in-process`.
    #[serde(default)]
    pub process: ModelProcess,
    /// `local`, supervised only: a model process that holds requests and answers none of them
    /// for this many seconds is taken as hung, killed and restarted like one that crashed.
    #[serde(default = "default_hang_timeout")]
    pub hang_timeout_s: u64,
    /// Of several models of a role: this one's share of the draws when
    /// `proposers.bandit = "fixed"` (meta), relative to the others'.
    #[serde(default = "default_weight")]
    pub weight: f64,
    /// This model's own cap on dollars over the run (its calls, at its prices), as well as
    /// `budget.max_cost_usd` over all.
    #[serde(default)]
    pub budget_usd: Option<f64>,
    /// This model's own cap on tokens (prompt and completion) over the run.
    #[serde(default)]
    pub budget_tokens: Option<u64>,
}

fn default_weight() -> f64 {
    1.0
}

fn default_hang_timeout() -> u64 {
    600
}

/// Every key at its default: the embedded model. Built by reading an empty table, so the
/// serde defaults above stay the one place defaults are written.
impl Default for ModelConfig {
    fn default() -> Self {
        toml::from_str("").expect("every ModelConfig key has a default")
    }
}

fn default_model() -> String {
    DEFAULT_MODEL.into()
}

fn default_max_tokens() -> u32 {
    256
}
fn default_concurrency() -> usize {
    4
}
fn default_timeout() -> u64 {
    120
}
fn default_retries() -> u32 {
    4
}
fn default_call_deadline() -> u64 {
    600
}
fn yes() -> bool {
    true
}
fn default_ctx() -> u32 {
    2048
}

#[cfg(test)]
mod tests {
    use super::*;

    fn models(text: &str) -> Result<Models, String> {
        toml::from_str::<Models>(text).map_err(|e| e.to_string())
    }

    #[test]
    fn one_section_is_one_model_named_default_and_reads_back_unchanged() {
        let m = models("[meta]\nmodel = \"m\"\nmax_tokens = 64\n[agent]\n").unwrap();
        assert_eq!(m.meta.names(), [SINGLE_MODEL]);
        assert!(!m.meta.is_named());
        assert_eq!(
            (m.meta.primary().model.as_str(), m.meta.primary().max_tokens),
            ("m", 64)
        );
        assert_eq!(m.meta.key("meta", SINGLE_MODEL), "models.meta");
        let again = models(&toml::to_string(&m).unwrap()).unwrap();
        assert_eq!(again.meta.names(), [SINGLE_MODEL]);
        assert_eq!(again.meta.primary().max_tokens, 64);
    }

    #[test]
    fn named_sections_keep_the_file_order_and_read_back_named() {
        let m = models(
            "[meta.strong]\nmodel = \"s\"\nweight = 1\n[meta.cheap]\nmodel = \"c\"\nweight = 3\nbudget_usd = 2.5\n",
        )
        .unwrap();
        assert_eq!(m.meta.names(), ["strong", "cheap"]);
        assert_eq!(m.meta.primary().model, "s");
        assert_eq!(m.meta.get("cheap").unwrap().budget_usd, Some(2.5));
        assert_eq!(m.meta.key("meta", "cheap"), "models.meta.cheap");
        let again = models(&toml::to_string(&m).unwrap()).unwrap();
        assert_eq!(again.meta.names(), ["strong", "cheap"]);
        assert!(again.meta.is_named());
    }

    #[test]
    fn mixing_settings_with_named_sections_or_a_bad_key_is_refused_at_the_key_with_the_fix() {
        let err = models("[meta]\nmodel = \"m\"\n[meta.cheap]\nmodel = \"c\"\n").unwrap_err();
        assert!(
            err.contains("line 3") && err.contains("`cheap` is not a model setting") && err.contains("named section"),
            "{err}"
        );
        let err = models("[meta.cheap]\nmodel = \"c\"\n[meta.strong]\n[meta]\nmodel = \"m\"\n").unwrap_err();
        assert!(
            err.contains("line 5") && err.contains("`model` follows named model sections (cheap, strong)"),
            "{err}"
        );
        let err = models("[meta.cheap]\nmodle = \"c\"\n").unwrap_err();
        assert!(
            err.contains("line 2") && err.contains("`modle` is not a model setting"),
            "{err}"
        );
        assert!(!err.contains("names a model"), "inside a named section: {err}");
        let err = models("[agent]\nmax_tokens = \"lots\"\n").unwrap_err();
        assert!(
            err.contains("line 2, column 14") && err.contains("expected u32"),
            "{err}"
        );
        let err = models("[agent]\nmax_tokenz = 5\n").unwrap_err();
        assert!(
            err.contains("line 2") && err.contains("expected a model section [models.<role>.max_tokenz]"),
            "{err}"
        );
        let err = models("[agent.\"my model\"]\nmodel = \"c\"\n").unwrap_err();
        assert!(
            err.contains("line 1") && err.contains("nor a plain model name"),
            "{err}"
        );
    }

    #[test]
    fn the_settings_read_from_the_struct_are_its_fields() {
        for text in ["[meta]\nmodel = \"m\"\nbogus = 1\n", "[meta]\nbogus = 1\n"] {
            let err = models(text).unwrap_err();
            for key in ["backend", "max_tokens", "budget_tokens", "hang_timeout_s"] {
                assert!(err.contains(key), "{key} missing from {err}");
            }
        }
    }
}
