//! Experiment configuration: one TOML file describes a whole search.
//!
//! Why `deny_unknown_fields` everywhere: a misspelt key that is silently ignored turns into an
//! overnight run with the wrong settings. Every error names the file, the key and the fix.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::types::{BadInput, Fold, IsolationMode, Objective, ParentSelection, DEFAULT_OBJECTIVES};

mod model_sections;
mod models;
pub use models::*;

/// The episodic domain for memory designs (TextWorldExpress TextWorld-Commonsense games).
pub const EPISODIC_DOMAIN: &str = "twc";

/// A whole experiment, as written in `experiments/*.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Short name used in the leaderboard and the default archive file name.
    pub name: String,
    /// Seed for splits, parent selection and operators; a run is a function of it.
    #[serde(default = "default_seed")]
    pub seed: u64,
    pub domain: DomainConfig,
    /// Unset: the embedded default model for both roles.
    #[serde(default)]
    pub models: Models,
    #[serde(default)]
    pub search: SearchConfig,
    #[serde(default)]
    pub proposers: ProposerMix,
    #[serde(default)]
    pub evaluation: EvaluationConfig,
    #[serde(default)]
    pub budget: BudgetConfig,
    #[serde(default)]
    pub guards: GuardsConfig,
    #[serde(default)]
    pub executor: ExecutorConfig,
}

/// Where evaluation shards run (`src/executor`): this machine's sandboxes, or Ray tasks that
/// run the same sandboxed worker on a cluster's nodes. The search and the archive stay here.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutorConfig {
    #[serde(default)]
    pub kind: ExecutorKind,
    /// `ray`: the cluster to join, as `ray start --head` prints it (`host:port`), or `auto`
    /// (`$RAY_ADDRESS`, else the cluster started on this machine).
    #[serde(default)]
    pub address: Option<String>,
    /// `ray`: the address the nodes reach this machine's model gateway on; default: this
    /// machine's address as Ray sees it.
    #[serde(default)]
    pub callback_host: Option<String>,
    /// `ray`: the gateway's port for the nodes (0 = any free port; fix one for a firewall).
    #[serde(default)]
    pub callback_port: u16,
    /// `ray`: how often Ray reruns a shard whose worker process or node died.
    #[serde(default = "default_ray_retries")]
    pub max_retries: u32,
    /// `ray`: CPUs a shard reserves on its node (its worker mostly waits on the model).
    #[serde(default = "one_f64")]
    pub cpus_per_shard: f64,
    /// `ray`: the metaforge binary's path on the nodes; unset: this binary is shipped through
    /// Ray's object store (the nodes must then share this machine's OS and architecture).
    #[serde(default)]
    pub node_binary: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutorKind {
    #[default]
    Local,
    Ray,
}

fn default_ray_retries() -> u32 {
    3
}
fn one_f64() -> f64 {
    1.0
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            kind: ExecutorKind::Local,
            address: None,
            callback_host: None,
            callback_port: 0,
            max_retries: default_ray_retries(),
            cpus_per_shard: one_f64(),
            node_binary: None,
        }
    }
}

impl ExecutorConfig {
    fn validate(&self) -> Result<()> {
        match self.kind {
            ExecutorKind::Local => {
                let ray_only = [
                    ("address", self.address.is_some()),
                    ("callback_host", self.callback_host.is_some()),
                    ("callback_port", self.callback_port != 0),
                    ("node_binary", self.node_binary.is_some()),
                ];
                if let Some((key, _)) = ray_only.iter().find(|(_, set)| *set) {
                    bail!(
                        "executor.{key} applies to kind = \"ray\" only; fix: set executor.kind = \"ray\", or remove it"
                    );
                }
            }
            ExecutorKind::Ray => {
                if self.address.as_deref().is_none_or(|a| a.trim().is_empty()) {
                    bail!("executor.kind = \"ray\" needs executor.address; fix: the head's address as `ray start --head` prints it (e.g. \"10.0.0.5:6379\"), or \"auto\"");
                }
                if self.cpus_per_shard.is_nan() || self.cpus_per_shard <= 0.0 {
                    bail!(
                        "executor.cpus_per_shard = {} must be above 0; fix: 1 (a shard mostly waits on the model)",
                        self.cpus_per_shard
                    );
                }
            }
        }
        Ok(())
    }
}

/// Contract guards (`src/guard`): off unless a key here is set.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardsConfig {
    /// An agent contract (TOML): task preconditions, budgets, invariants and a final-output
    /// contract with a proved fallback. Relative to the experiment; stored inside the run.
    #[serde(default)]
    pub contract: Option<PathBuf>,
    /// Every `llm()` call must name a contract declared in the candidate's `CONTRACTS`.
    #[serde(default)]
    pub require_call_contracts: bool,
    /// Modules candidates may import (`metaforge` always); unset: only the built-in deny-list.
    #[serde(default)]
    pub allowed_imports: Option<Vec<String>>,
}

/// A conventional environment variable name (`OPENAI_API_KEY`): what `api_key_env` holds.
fn is_env_var_name(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && !v.starts_with(|c: char| c.is_ascii_digit())
        && v.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// A `search.seeds` entry that names a file (`.py`) rather than a built-in seed.
pub fn is_seed_file(entry: &Path) -> bool {
    entry.extension().is_some_and(|e| e == "py")
}

/// `search.seeds` with every glob replaced by the files it matches (sorted), relative to
/// `base`. A glob that matches nothing is an error: a run without the seeds meant for it
/// would look like a run with them.
fn expand_seed_globs(seeds: &[PathBuf], base: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in seeds {
        let text = entry.to_string_lossy();
        if !text.contains(['*', '?', '[']) {
            out.push(entry.clone());
            continue;
        }
        let pattern = base.join(entry);
        let mut found: Vec<PathBuf> = glob::glob(&pattern.to_string_lossy())
            .with_context(|| format!("search.seeds: {text:?} is not a valid glob; fix: e.g. \"agents/*.py\""))?
            .filter_map(Result::ok)
            .filter(|p| is_seed_file(p))
            .collect();
        if found.is_empty() {
            bail!(
                "search.seeds: {text:?} matches no .py file under {}; fix: check the pattern (relative to the experiment file)",
                base.display()
            );
        }
        found.sort();
        out.extend(found);
    }
    Ok(out)
}

/// The fields withheld from the agent unless `domain.hidden_fields` says otherwise.
pub fn default_hidden_fields() -> Vec<String> {
    vec!["answer".into(), "answers".into()]
}

fn default_seed() -> u64 {
    0
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainConfig {
    /// A built-in domain (`arith`, `gsm8k`) or a name for a user domain given by `path`.
    pub name: String,
    /// A JSONL file of tasks for a user domain (each line an object with `id`, `question`,
    /// `answer`); relative paths are read from the experiment file's folder.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Scorer for a user domain: `numeric`, `exact`, `f1`, `mc`, or a Python file defining
    /// `score(task, output)` (relative to the experiment; stored inside the run).
    #[serde(default)]
    pub scorer: Option<PathBuf>,
    /// Task fields withheld from the agent: the built-in scorers read `answer` (or
    /// `answers`); scorer code receives the whole task.
    #[serde(default = "default_hidden_fields")]
    pub hidden_fields: Vec<String>,
    /// What the tasks are, for the proposer's prompt (default: a line naming the file and
    /// the scorer).
    #[serde(default)]
    pub description: Option<String>,
    /// What an answer is, as an instruction says it ("the letter of the correct option",
    /// "a date like 2024-05-01"). Built-in seeds and the meta-model's prompt use it. Default:
    /// the scorer's (`numeric`: "a single number"; `mc`: the option's letter; `label`: one of
    /// `choices`; others: "the answer alone", so set it for `exact`, `f1` and scorer code).
    #[serde(default)]
    pub answer_format: Option<String>,
    /// The labels an answer may be, for label tasks (`scorer = "label"`, or `exact`): every
    /// task is given them as its `choices` field unless it carries its own.
    #[serde(default)]
    pub choices: Option<Vec<String>>,
    #[serde(default = "default_val_size")]
    pub val_size: usize,
    /// Seed of the validation/test shuffle; defaults to the run's `seed`. Runs that should be
    /// merged later (`metaforge merge`) share it while their search seeds differ.
    #[serde(default)]
    pub split_seed: Option<u64>,
    #[serde(default = "default_test_size")]
    pub test_size: usize,
    /// The episodic domain (`twc`) only: how episodes are played. For that domain
    /// `val_size` and `test_size` count episodes (the first fill the memory, the rest are scored).
    #[serde(default)]
    pub episodes: Option<EpisodesConfig>,
}

/// How the episodes of the `twc` domain are generated and played (`[domain.episodes]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpisodesConfig {
    /// Who plays: `place_avoid` (the agent model chooses where each object goes, never a
    /// place the memory warns against for it), `place_choice` (the same, warnings shown to
    /// the model like any line), `place_calibrated` (as `place_choice`, each place judged
    /// against a question about no object in particular), `model` (the agent model, one call
    /// per step) or `scripted` (a fixed policy that reads the memory text; for tests of the
    /// protocol, not for figures).
    #[serde(default)]
    pub base_agent: BaseAgentKind,
    /// Actions per episode before it is cut off.
    #[serde(default = "default_max_steps")]
    pub max_steps: u32,
    /// Objects to put away per game (TextWorldExpress `numItemsToPutAway`).
    #[serde(default = "default_items")]
    pub items: u32,
    /// Rooms per game (`numLocations`).
    #[serde(default = "one_u32")]
    pub locations: u32,
    /// Game fold: `train` (objects recur across episodes), `dev` or `test` (unseen objects).
    #[serde(default)]
    pub fold: Fold,
    /// Longest retrieved text handed to the base agent; longer is cut (and recorded).
    #[serde(default = "default_retrieve_chars")]
    pub retrieve_chars: usize,
    /// Episodes at the start of each split that fill the memory; the rest are scored. Unset:
    /// half of each split. One count for both splits lets selection see the memory as full as
    /// the held-out test does: a design that only pays on a small memory (or a large one)
    /// would otherwise be ranked on validation for a protocol the test does not run.
    #[serde(default)]
    pub fill: Option<usize>,
}

impl EpisodesConfig {
    /// How many of a split's `episodes` fill the memory (the rest are scored).
    pub fn fill_count(&self, episodes: usize) -> usize {
        self.fill.unwrap_or(episodes / 2)
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseAgentKind {
    /// The agent model reads the numbered valid actions and replies with one. Kept for
    /// comparison: the small embedded model never puts an object away this way.
    Model,
    /// The agent model chooses where each object goes (its likelihood of each place, the
    /// memory text in its context); taking and opening are done for it (`placement.rs` says
    /// why). Kept for comparison: a warning in its memory draws it to the place it names.
    #[serde(rename = "place_choice")]
    PlaceChoice,
    /// As `place_choice`, each place judged by how much likelier the real question makes it
    /// than a question about no object in particular, so what the memory names cancels unless
    /// it is about the object held. Needs the embedded model as the agent model.
    #[serde(rename = "place_calibrated")]
    PlaceCalibrated,
    /// As `place_choice`, and a memory line that warns against a place for the object held
    /// takes that place off its choices instead of being shown to the model, which would be
    /// drawn to the place it names (`agent::heed_warnings`). The default: of the players the
    /// small model can play, it is the one that can use both what a memory confirms and what
    /// it warns against.
    #[default]
    #[serde(rename = "place_avoid")]
    PlaceAvoid,
    /// A fixed policy that reads `object -> place` lines: for tests of the protocol only.
    Scripted,
}

fn default_max_steps() -> u32 {
    12
}
fn default_items() -> u32 {
    2
}
fn default_retrieve_chars() -> usize {
    2000
}

impl Default for EpisodesConfig {
    fn default() -> Self {
        Self {
            base_agent: BaseAgentKind::default(),
            max_steps: default_max_steps(),
            items: default_items(),
            locations: 1,
            fold: Fold::default(),
            retrieve_chars: default_retrieve_chars(),
            fill: None,
        }
    }
}

fn default_val_size() -> usize {
    32
}
fn default_test_size() -> usize {
    64
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchConfig {
    /// Seed agents to start from: file stems under `archive/agents/`, `["all"]`, or `.py`
    /// files and globs (`"agents/*.py"`) relative to the experiment, stored inside the run.
    #[serde(default = "default_seeds")]
    pub seeds: Vec<PathBuf>,
    #[serde(default = "default_generations")]
    pub generations: u32,
    #[serde(default = "default_per_generation")]
    pub proposals_per_generation: u32,
    /// How many of the best validation candidates get a held-out test evaluation at the end.
    #[serde(default = "default_test_top_k")]
    pub test_top_k: usize,
    /// `pareto` (front sampled by score sigmoid x 1/(1+children)), `tournament`, `softmax`
    /// (with a visit penalty), `instance` (GEPA per-task fronts) or `uniform`; see
    /// `archive::front::select_parent`.
    #[serde(default)]
    pub parent_selection: ParentSelection,
    /// What the Pareto front trades off: `score` (maximised) and any of `cost`, `tokens`,
    /// `latency`, `code_size` (minimised).
    #[serde(default = "default_objectives")]
    pub objectives: Vec<Objective>,
    /// Islands: proposal step N selects only among candidates made at steps of the same
    /// island (N mod islands). 1 = one population.
    #[serde(default = "one_u32")]
    pub islands: u32,
    /// Every this many generations each island may also select its neighbour's best.
    #[serde(default = "default_migration")]
    pub migration_interval: u32,
    /// An ADAS archive (`*_run_archive.json`) whose agents join the seeds (`metaforge
    /// import-adas` writes this); stored inside the run like every file the config names.
    #[serde(default)]
    pub import_adas: Option<PathBuf>,
    /// Steps run at once (K): each step's model calls, checks and evaluations overlap those
    /// of the K − 1 steps before it. Step N decides from the archive's steps up to N − K
    /// alone (the lag rule), so a run is the same however its calls are timed, and 1 is the
    /// one-step-at-a-time loop. See `search::pipeline`.
    #[serde(default = "one_usize_search")]
    pub steps_in_flight: usize,
}

fn one_usize_search() -> usize {
    1
}

fn default_migration() -> u32 {
    2
}

fn default_objectives() -> Vec<Objective> {
    DEFAULT_OBJECTIVES.to_vec()
}

fn default_seeds() -> Vec<PathBuf> {
    vec!["all".into()]
}
fn default_generations() -> u32 {
    3
}
fn default_per_generation() -> u32 {
    4
}
fn default_test_top_k() -> usize {
    3
}
impl Default for SearchConfig {
    fn default() -> Self {
        Self {
            seeds: default_seeds(),
            generations: default_generations(),
            proposals_per_generation: default_per_generation(),
            test_top_k: default_test_top_k(),
            parent_selection: ParentSelection::default(),
            objectives: default_objectives(),
            islands: 1,
            migration_interval: default_migration(),
            import_adas: None,
            steps_in_flight: 1,
        }
    }
}

/// Probability of each proposal kind; they need not sum to one (they are normalised).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProposerMix {
    /// LLM-free structural mutations and crossovers.
    #[serde(default = "one")]
    pub operators: f64,
    /// The meta-model writes a whole program (ADAS style).
    #[serde(default)]
    pub rewrite: f64,
    /// The meta-model edits the parent with SEARCH/REPLACE blocks.
    #[serde(default)]
    pub diff: f64,
    /// The meta-model writes one program from two parents.
    #[serde(default)]
    pub crossover: f64,
    /// Share of `operators` proposals in which the meta-model rewrites one instruction string
    /// of the parent instead of a structural mutation (0 = LLM-free operators only).
    #[serde(default)]
    pub llm_instruction: f64,
    /// Proposals whose similarity to an archived program (Jaccard over token 3-grams: MinHash
    /// with 64 slots shortlists, the exact sets decide) reaches this are rejected as
    /// near-duplicates before evaluation.
    /// 1.0 (default) rejects only programs with the same 3-gram set (reordered or repeated
    /// lines); 0.9 also rejects one-constant tweaks of short programs; above 1.0 disables it.
    #[serde(default = "default_novelty")]
    pub novelty_threshold: f64,
    /// Options of the three LLM kinds.
    #[serde(default)]
    pub rewrite_options: RewriteOptions,
    /// How a proposal step picks its operator or kind: `thompson` learns from the archive
    /// which ones improve programs per model call (`search::bandit`); `fixed` draws by the
    /// weights above alone (the random-search baseline).
    #[serde(default)]
    pub bandit: Bandit,
    /// Under `thompson`, try every operator and kind that applies once before any twice,
    /// those made for the domain's answer format first (`search::bandit`).
    #[serde(default = "yes")]
    pub untried_first: bool,
}

/// How proposal steps choose among proposers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bandit {
    #[default]
    Thompson,
    Fixed,
}

fn default_novelty() -> f64 {
    1.0
}

fn one() -> f64 {
    1.0
}

impl Default for ProposerMix {
    fn default() -> Self {
        Self {
            operators: 1.0,
            rewrite: 0.0,
            diff: 0.0,
            crossover: 0.0,
            llm_instruction: 0.0,
            novelty_threshold: default_novelty(),
            rewrite_options: RewriteOptions::default(),
            bandit: Bandit::default(),
            untried_first: true,
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteOptions {
    /// Self-reflection rounds after the first proposal (ADAS uses 2).
    #[serde(default = "two")]
    pub reflexion_rounds: u32,
    /// Debug rounds fed with check diagnostics or runtime errors; the last fix is evaluated too.
    #[serde(default = "two")]
    pub debug_rounds: u32,
    /// Programs shown in the prompt: the parent(s), then inspirations alternating between
    /// the Pareto front and other structural niches (sampled, never the whole archive).
    #[serde(default = "three")]
    pub context_candidates: usize,
    /// Malformed replies are retried this many times with the parse error.
    #[serde(default = "one_u32")]
    pub parse_retries: u32,
    /// Budget for the sampled context (programs and failures) in a prompt, in tokens
    /// estimated at 4 characters each; inspirations are dropped until it fits. The tokens
    /// actually sent are measured in the archive's `llm_calls`.
    #[serde(default = "default_context_tokens")]
    pub context_tokens: usize,
}

fn default_context_tokens() -> usize {
    6000
}

fn two() -> u32 {
    2
}
fn three() -> usize {
    3
}
fn one_u32() -> u32 {
    1
}

impl Default for RewriteOptions {
    fn default() -> Self {
        Self {
            reflexion_rounds: 2,
            debug_rounds: 2,
            context_candidates: 3,
            parse_retries: 1,
            context_tokens: default_context_tokens(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvaluationConfig {
    /// Tasks run concurrently inside one worker (threads), so model latency overlaps.
    #[serde(default = "default_in_flight")]
    pub tasks_in_flight: usize,
    /// Worker processes per candidate evaluation; tasks are split between them.
    #[serde(default = "one_usize")]
    pub shards: usize,
    /// Wall-clock seconds one task may take; the worker deadline is derived from it.
    #[serde(default = "default_task_timeout")]
    pub task_timeout_s: u64,
    /// Wall-clock seconds a program may take to load (its module-level code, run once before
    /// any task). A short deadline of its own, so a loop at module level costs seconds, not
    /// the whole task deadline.
    #[serde(default = "default_load_timeout")]
    pub load_timeout_s: u64,
    /// Address-space limit of a worker, MiB.
    #[serde(default = "default_memory")]
    pub memory_mb: u64,
    /// CPU seconds a worker may use.
    #[serde(default = "default_cpu")]
    pub cpu_s: u64,
    /// Bootstrap resamples for the 95% confidence interval.
    #[serde(default = "default_bootstrap")]
    pub bootstrap_samples: usize,
    /// `best-effort` (default: every kernel layer available, a warning naming any missing),
    /// `strict` (refuse to run unless all are active) or `off` (rlimits only).
    #[serde(default)]
    pub isolation: IsolationMode,
    /// Size of a worker's scratch tmpfs, MiB (also the largest file it may write).
    #[serde(default = "default_disk")]
    pub disk_mb: u64,
    /// Staged evaluation: the share of validation tasks a proposal runs first (0 = off; seeds
    /// and the held-out test always run whole). See `evaluate::staged`.
    #[serde(default)]
    pub cascade_fraction: f64,
    /// A proposal goes on only while it can still reach this share of its best parent's
    /// validation score.
    #[serde(default = "default_cascade_threshold")]
    pub cascade_threshold: f64,
    /// Racing: a proposal first runs this many validation tasks, then twice as many, and so
    /// on, while it stays ahead of its rival (its parent; for a seed, the best seed so far)
    /// on the same tasks; 0 = off. See `evaluate::racing`.
    #[serde(default)]
    pub race_first: usize,
    /// When a look before the last drops a raced proposal: `ahead` (only a lead goes on),
    /// `first_tie_goes_on` (also a tie at the first look) or `sequential` (dropped only when
    /// a sign test on the tasks where the two differ says worse).
    #[serde(default)]
    pub race_rule: crate::types::RaceRule,
}

fn default_cascade_threshold() -> f64 {
    0.8
}

fn default_in_flight() -> usize {
    4
}
fn one_usize() -> usize {
    1
}
fn default_task_timeout() -> u64 {
    120
}
fn default_load_timeout() -> u64 {
    10
}
fn default_memory() -> u64 {
    1024
}
fn default_cpu() -> u64 {
    300
}
fn default_bootstrap() -> usize {
    2000
}
fn default_disk() -> u64 {
    64
}

impl Default for EvaluationConfig {
    fn default() -> Self {
        Self {
            tasks_in_flight: default_in_flight(),
            shards: 1,
            task_timeout_s: default_task_timeout(),
            load_timeout_s: default_load_timeout(),
            memory_mb: default_memory(),
            cpu_s: default_cpu(),
            bootstrap_samples: default_bootstrap(),
            isolation: IsolationMode::default(),
            disk_mb: default_disk(),
            cascade_fraction: 0.0,
            cascade_threshold: default_cascade_threshold(),
            race_first: 0,
            race_rule: crate::types::RaceRule::default(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Hard cap on prompt + completion tokens over the run (both roles), counted before a
    /// request is sent so in-flight requests cannot overshoot it.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Hard cap in US dollars, from the configured prices.
    #[serde(default)]
    pub max_cost_usd: Option<f64>,
}

impl Experiment {
    /// Reads and validates an experiment file. Relative paths inside it are resolved against
    /// the file's folder, so a config works from any working directory.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read experiment file {}", path.display()))
            .map_err(BadInput::wrap)?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, &path.display().to_string(), base)
    }

    /// The experiment stored in the archive at `archive` (`Archive::config_text`).
    pub fn parse_stored(text: &str, archive: &Path) -> Result<Self> {
        Self::parse(text, &format!("{} (stored config)", archive.display()), Path::new("."))
    }

    /// Parses TOML text; `origin` names the source in errors, which are `BadInput`.
    pub fn parse(text: &str, origin: &str, base: &Path) -> Result<Self> {
        Self::parse_unmarked(text, origin, base).map_err(BadInput::wrap)
    }

    fn parse_unmarked(text: &str, origin: &str, base: &Path) -> Result<Self> {
        let mut exp: Experiment = toml::from_str(text).map_err(|e| {
            anyhow::anyhow!(
                "{origin}: {}\nfix: correct the key or value shown above; every key is listed in docs/experiment.md",
                e.to_string().trim_end()
            )
        })?;
        exp.search.seeds = expand_seed_globs(&exp.search.seeds, base)?;
        for (_, path) in exp.file_refs_mut() {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        }
        exp.validate()
            .with_context(|| format!("{origin}: invalid experiment"))?;
        Ok(exp)
    }

    /// The files the experiment names, by config key: they travel inside the archive. Seed
    /// files are `search.seeds.<i>`, by their place in the list.
    pub fn file_refs_mut(&mut self) -> Vec<(String, &mut PathBuf)> {
        let seeds = self
            .search
            .seeds
            .iter_mut()
            .enumerate()
            .filter(|(_, p)| is_seed_file(p))
            .map(|(i, p)| (format!("search.seeds.{i}"), p));
        let mut refs: Vec<(String, &mut Option<PathBuf>)> = vec![
            ("domain.path".into(), &mut self.domain.path),
            ("domain.scorer".into(), &mut self.domain.scorer),
            ("search.import_adas".into(), &mut self.search.import_adas),
            ("guards.contract".into(), &mut self.guards.contract),
        ];
        for (role, set) in [("meta", &mut self.models.meta), ("agent", &mut self.models.agent)] {
            let named = set.is_named();
            for (name, m) in set.iter_mut() {
                let key = if named {
                    format!("models.{role}.{name}.script")
                } else {
                    format!("models.{role}.script")
                };
                refs.push((key, &mut m.script));
            }
        }
        refs.into_iter()
            .filter_map(|(key, p)| p.as_mut().map(|p| (key, p)))
            // `domain.scorer` is a file only when it names scorer code; else a scorer's name.
            .filter(|(key, p)| key != "domain.scorer" || p.extension().is_some_and(|e| e == "py"))
            .chain(seeds)
            .collect()
    }

    pub fn validate(&self) -> Result<()> {
        let ev = &self.evaluation;
        if !(0.0..1.0).contains(&ev.cascade_fraction) {
            bail!(
                "evaluation.cascade_fraction = {} must be at least 0 and below 1; fix: 0 turns staged evaluation off, 0.25 runs a quarter of the validation tasks first",
                ev.cascade_fraction
            );
        }
        if !(ev.cascade_threshold > 0.0 && ev.cascade_threshold <= 1.0) {
            bail!(
                "evaluation.cascade_threshold = {} must be in (0, 1]; fix: 0.8 continues while a proposal can still reach 80% of its parent's score",
                ev.cascade_threshold
            );
        }
        if ev.race_first > 0 && ev.cascade_fraction > 0.0 {
            bail!(
                "evaluation.race_first and evaluation.cascade_fraction are both set; fix: keep one (racing compares each proposal with its parent task by task, the cascade with the parent's score)"
            );
        }
        if ev.race_first > 0 && ev.race_first >= self.domain.val_size {
            bail!(
                "evaluation.race_first = {} is not below domain.val_size = {}; fix: a first look of about a tenth of the validation pool, e.g. race_first = {}",
                ev.race_first,
                self.domain.val_size,
                (self.domain.val_size / 10).max(1)
            );
        }
        let roles = [("meta", &self.models.meta), ("agent", &self.models.agent)];
        let each_model = roles
            .iter()
            .flat_map(|(role, set)| set.iter().map(move |(name, m)| (set.key(role, name), set, m)));
        for (role, set, m) in each_model {
            let role = role.as_str();
            if set.len() > 1 && !(m.weight >= 0.0 && m.weight.is_finite()) {
                bail!(
                    "{role}.weight = {} must be a share of 0 or more; fix: e.g. weight = 1",
                    m.weight
                );
            }
            if m.budget_usd.is_some_and(|b| b.is_nan() || b <= 0.0) || m.budget_tokens == Some(0) {
                bail!(
                    "{role}: budget_usd and budget_tokens must be above 0; fix: remove the key for no cap of its own"
                );
            }
            // The value is never printed: a key pasted here by mistake must not reach a
            // terminal or a log.
            if m.api_key_env.as_deref().is_some_and(|v| !is_env_var_name(v)) {
                bail!(
                    "{role}.api_key_env is not the name of an environment variable (upper-case letters, digits and _); fix: if it holds the key itself, delete it from the file, export the key as e.g. OPENAI_API_KEY and set api_key_env = \"OPENAI_API_KEY\""
                );
            }
            match m.backend {
                BackendKind::Openai => {
                    if m.base_url.is_none() {
                        bail!("{role}.base_url is missing; fix: set it to the endpoint, e.g. \"http://127.0.0.1:8080/v1\"");
                    }
                }
                BackendKind::Scripted => {
                    if m.script.is_none() {
                        bail!(
                            "{role}.script is missing; fix: point it at a JSON list of replies (scripted is for tests)"
                        );
                    }
                }
                BackendKind::Local => {}
            }
            if m.latency_ms > 0 && m.backend != BackendKind::Scripted {
                bail!(
                    "{role}.latency_ms applies to the scripted backend only (a real model has its own); fix: remove it"
                );
            }
            if !(0.0..=2.0).contains(&m.temperature) {
                bail!(
                    "{role}.temperature = {} is out of range; fix: use a value in 0.0..=2.0",
                    m.temperature
                );
            }
            if m.max_concurrency == 0 {
                bail!("{role}.max_concurrency must be at least 1");
            }
        }
        for (role, set) in roles {
            if set.len() > 1 && set.iter().all(|(_, m)| m.weight <= 0.0) {
                bail!("every model of models.{role} has weight 0; fix: give at least one a weight above 0");
            }
        }
        if self.domain.val_size == 0 {
            bail!("domain.val_size must be at least 1");
        }
        let episodic = self.domain.name == EPISODIC_DOMAIN && self.domain.path.is_none();
        if let Some(ep) = &self.domain.episodes {
            if !episodic {
                bail!(
                    "[domain.episodes] is set but domain {:?} is not episodic; fix: remove it, or set domain.name = \"{}\"",
                    self.domain.name,
                    EPISODIC_DOMAIN
                );
            }
            if ep.max_steps == 0 || ep.items == 0 || ep.locations == 0 || ep.retrieve_chars == 0 {
                bail!("domain.episodes: max_steps, items, locations and retrieve_chars must be at least 1");
            }
            if let Some(fill) = ep.fill {
                let smallest = self.domain.val_size.min(self.domain.test_size);
                if fill >= smallest {
                    bail!(
                        "domain.episodes.fill = {fill} leaves no scored episode in a split of {smallest} (val_size = {}, test_size = {}); fix: lower fill, or raise both sizes above it",
                        self.domain.val_size,
                        self.domain.test_size
                    );
                }
            }
        }
        if episodic {
            // Settings that act on agents' task evaluations only: refused rather than ignored.
            let g = &self.guards;
            let refused = [
                (
                    self.search.import_adas.is_some(),
                    "search.import_adas (ADAS agents are not memory designs)",
                ),
                (
                    g.contract.is_some() || g.require_call_contracts || g.allowed_imports.is_some(),
                    "[guards] (contracts guard agents' model calls)",
                ),
                (
                    self.evaluation.cascade_fraction > 0.0,
                    "evaluation.cascade_fraction (an episode sequence is not staged)",
                ),
                (
                    self.evaluation.race_first > 0,
                    "evaluation.race_first (an episode sequence is one unit)",
                ),
                (
                    self.evaluation.shards > 1,
                    "evaluation.shards > 1 (one worker holds the memory across a sequence)",
                ),
            ];
            if let Some((_, what)) = refused.iter().find(|(set, _)| *set) {
                bail!(
                    "{what} does not apply to the {} domain, whose candidates are memory designs; fix: remove it",
                    EPISODIC_DOMAIN
                );
            }
        }
        self.executor.validate()?;
        if episodic && (self.domain.val_size < 2 || self.domain.test_size < 2) {
            bail!(
                "domain.val_size = {} and domain.test_size = {}: an episodic split needs at least 2 episodes (half fill the memory, half are scored); fix: set both to 2 or more",
                self.domain.val_size,
                self.domain.test_size
            );
        }
        if self.evaluation.tasks_in_flight == 0 || self.evaluation.shards == 0 {
            bail!("evaluation.tasks_in_flight and evaluation.shards must be at least 1");
        }
        let p = &self.proposers;
        if [p.operators, p.rewrite, p.diff, p.crossover]
            .iter()
            .any(|w| *w < 0.0 || w.is_nan())
        {
            bail!("proposers.* probabilities must be >= 0");
        }
        if !(0.0..=1.0).contains(&p.llm_instruction) {
            bail!(
                "proposers.llm_instruction = {} must be between 0 and 1",
                p.llm_instruction
            );
        }
        if p.operators + p.rewrite + p.diff + p.crossover <= 0.0 {
            bail!("proposers: all probabilities are zero; fix: set proposers.operators = 1.0");
        }
        if self.search.steps_in_flight == 0 {
            bail!("search.steps_in_flight = 0; fix: 1 for one step at a time, or more to overlap steps");
        }
        if self.search.islands == 0 {
            bail!("search.islands = 0; fix: 1 for one population, or more for islands");
        }
        let objectives = &self.search.objectives;
        if !objectives.contains(&Objective::Score) {
            bail!("search.objectives = {objectives:?} lacks \"score\"; fix: list it first, e.g. [\"score\", \"cost\"]");
        }
        if (1..objectives.len()).any(|i| objectives[..i].contains(&objectives[i])) {
            bail!("search.objectives = {objectives:?} names an objective twice; fix: list each once");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "t"
[domain]
name = "arith"
[models.meta]
backend = "local"
model = "smollm2-135m"
[models.agent]
backend = "local"
model = "smollm2-135m"
"#;

    #[test]
    fn minimal_config_gets_defaults() {
        let e = Experiment::parse(MINIMAL, "t.toml", Path::new(".")).unwrap();
        assert_eq!(e.search.generations, 3);
        assert_eq!(e.evaluation.tasks_in_flight, 4);
        assert_eq!(e.proposers.operators, 1.0);
    }

    #[test]
    fn a_key_pasted_as_api_key_env_is_refused_without_being_echoed() {
        for secret in ["sk-proj-Abc123secretXYZ", "abcdefsecret123456", "OPENAI API KEY"] {
            let text = format!(
                "name = \"t\"\n[domain]\nname = \"arith\"\n[models.agent]\nbackend = \"openai\"\nmodel = \"m\"\nbase_url = \"http://127.0.0.1:1/v1\"\napi_key_env = \"{secret}\"\n"
            );
            let e = format!("{:#}", Experiment::parse(&text, "t.toml", Path::new(".")).unwrap_err());
            assert!(
                e.contains("models.agent.api_key_env is not the name") && e.contains("fix:"),
                "{e}"
            );
            let shown = e.replace("t.toml: invalid experiment: ", "");
            assert!(!shown.contains(secret), "the value is echoed: {e}");
        }
        let ok = "name = \"t\"\n[domain]\nname = \"arith\"\n[models.agent]\nbackend = \"openai\"\nmodel = \"m\"\nbase_url = \"http://127.0.0.1:1/v1\"\napi_key_env = \"MY_KEY_2\"\n";
        assert!(Experiment::parse(ok, "t.toml", Path::new(".")).is_ok());
    }

    #[test]
    fn a_name_and_a_domain_are_a_whole_experiment_on_the_embedded_model() {
        let e = Experiment::parse("name = \"t\"\n[domain]\nname = \"arith\"\n", "t.toml", Path::new(".")).unwrap();
        for m in [e.models.meta.primary(), e.models.agent.primary()] {
            assert_eq!((m.backend, m.model.as_str()), (BackendKind::Local, DEFAULT_MODEL));
            assert_eq!(m.max_tokens, ModelConfig::default().max_tokens);
        }
        assert_eq!(e.domain.hidden_fields, ["answer", "answers"]);
        let half = Experiment::parse(
            "name = \"t\"\n[domain]\nname = \"arith\"\n[models.agent]\nmax_tokens = 64\n",
            "t.toml",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(
            (
                half.models.agent.primary().max_tokens,
                half.models.meta.primary().model.as_str()
            ),
            (64, DEFAULT_MODEL)
        );
    }

    #[test]
    fn episodic_settings_are_checked_against_the_domain() {
        let twc = MINIMAL.replace("name = \"arith\"", "name = \"twc\"\nval_size = 8\ntest_size = 8");
        let e = Experiment::parse(&twc, "t.toml", Path::new(".")).unwrap();
        assert!(
            e.domain.episodes.is_none(),
            "defaults apply when [domain.episodes] is absent"
        );
        let err = |text: &str| format!("{:#}", Experiment::parse(text, "t.toml", Path::new(".")).unwrap_err());
        let on_arith = MINIMAL.replace("name = \"arith\"", "name = \"arith\"\n[domain.episodes]\nmax_steps = 3");
        assert!(err(&on_arith).contains("[domain.episodes] is set but domain \"arith\" is not episodic"));
        let staged = format!("{twc}[evaluation]\ncascade_fraction = 0.5\n");
        assert!(err(&staged).contains("evaluation.cascade_fraction (an episode sequence is not staged) does not apply"));
        let one = twc.replace("val_size = 8", "val_size = 1");
        assert!(err(&one).contains("needs at least 2 episodes"));
        let fold = twc.replace("test_size = 8", "test_size = 8\n[domain.episodes]\nfold = \"valid\"");
        let e = err(&fold);
        assert!(e.contains("fold") && e.contains("valid") && e.contains("train"), "{e}");
        let with_fill = |n: usize| {
            twc.replace(
                "test_size = 8",
                &format!("test_size = 8\n[domain.episodes]\nfill = {n}"),
            )
        };
        let e = Experiment::parse(&with_fill(7), "t.toml", Path::new(".")).unwrap();
        assert_eq!(e.domain.episodes.unwrap().fill_count(8), 7);
        assert_eq!(
            err(&with_fill(8)),
            "t.toml: invalid experiment: domain.episodes.fill = 8 leaves no scored episode in a split of 8 (val_size = 8, test_size = 8); fix: lower fill, or raise both sizes above it"
        );
    }

    #[test]
    fn executor_settings_are_checked_against_the_kind() {
        let err = |tail: &str| {
            format!(
                "{:#}",
                Experiment::parse(&format!("{MINIMAL}{tail}"), "t.toml", Path::new(".")).unwrap_err()
            )
        };
        let ok = Experiment::parse(
            &format!("{MINIMAL}[executor]\nkind = \"ray\"\naddress = \"10.0.0.5:6379\"\n"),
            "t.toml",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(ok.executor.max_retries, 3);
        assert!(err("[executor]\nkind = \"ray\"\n").contains("needs executor.address"));
        assert!(err("[executor]\naddress = \"10.0.0.5:6379\"\n")
            .contains("executor.address applies to kind = \"ray\" only"));
        assert!(
            err("[executor]\nkind = \"ray\"\naddress = \"auto\"\ncpus_per_shard = 0\n")
                .contains("cpus_per_shard = 0 must be above 0")
        );
        assert!(err("[executor]\nkind = \"slurm\"\n").contains("local"));
    }

    #[test]
    fn latency_is_for_the_scripted_backend_only() {
        let text = MINIMAL.replacen("backend = \"local\"", "backend = \"local\"\nlatency_ms = 5", 1);
        let err = format!("{:#}", Experiment::parse(&text, "t.toml", Path::new(".")).unwrap_err());
        assert!(
            err.contains("models.meta.latency_ms applies to the scripted backend only"),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let text = MINIMAL.replace("[domain]", "[domain]\nval_sise = 3");
        let err = format!(
            "{:#}",
            Experiment::parse(&text, "bad.toml", Path::new(".")).unwrap_err()
        );
        insta::assert_snapshot!(err);
    }

    #[test]
    fn wrong_type_is_named() {
        let text = MINIMAL.replace("[domain]", "[domain]\nval_size = \"many\"");
        let err = format!(
            "{:#}",
            Experiment::parse(&text, "bad.toml", Path::new(".")).unwrap_err()
        );
        insta::assert_snapshot!(err);
    }

    #[test]
    fn unknown_backend_lists_the_choices() {
        let text = MINIMAL.replacen("backend = \"local\"", "backend = \"gpt\"", 1);
        let err = format!(
            "{:#}",
            Experiment::parse(&text, "bad.toml", Path::new(".")).unwrap_err()
        );
        assert!(err.contains("local") && err.contains("openai"), "{err}");
    }

    #[test]
    fn openai_without_url_says_how_to_fix() {
        let text = MINIMAL.replacen("backend = \"local\"", "backend = \"openai\"", 1);
        let err = format!(
            "{:#}",
            Experiment::parse(&text, "bad.toml", Path::new(".")).unwrap_err()
        );
        assert!(err.contains("models.meta.base_url") && err.contains("fix:"), "{err}");
    }

    #[test]
    fn objectives_and_stages_are_checked() {
        let parse = |extra: &str| {
            Experiment::parse(&format!("{MINIMAL}{extra}"), "t.toml", Path::new(".")).map_err(|e| format!("{e:#}"))
        };
        let e = parse("[search]\nobjectives = [\"score\", \"latency\", \"code_size\"]\n").unwrap();
        assert_eq!(
            e.search.objectives,
            [Objective::Score, Objective::Latency, Objective::CodeSize]
        );
        let err = parse("[search]\nobjectives = [\"score\", \"speed\"]\n").unwrap_err();
        assert!(err.contains("speed") && err.contains("code_size"), "{err}");
        let err = parse("[search]\nobjectives = [\"cost\"]\n").unwrap_err();
        assert!(err.contains("lacks \"score\"") && err.contains("fix:"), "{err}");
        let err = parse("[search]\nobjectives = [\"score\", \"cost\", \"cost\"]\n").unwrap_err();
        assert!(err.contains("twice"), "{err}");
        let err = parse("[evaluation]\ncascade_fraction = 1.5\n").unwrap_err();
        assert!(
            err.contains("evaluation.cascade_fraction = 1.5") && err.contains("fix:"),
            "{err}"
        );
        let err = parse("[evaluation]\ncascade_threshold = 0\n").unwrap_err();
        assert!(err.contains("cascade_threshold"), "{err}");
    }
}
