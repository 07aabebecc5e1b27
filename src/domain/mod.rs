//! Domains: where tasks come from, how an output is scored, and the fixed splits.
//!
//! Built-in domains read data embedded from `data/`; a user domain is a JSONL file plus a
//! scorer name. Splits are a seeded shuffle, so validation and held-out test never overlap
//! and are identical on every machine.

mod answer;
mod f1;
mod scorers;

use std::path::Path;

use anyhow::{bail, Context, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::{json, Value};

pub use answer::{AnswerKind, AnswerSpec};
pub use scorers::{Scorer, ScorerCode};

use crate::candidate::CandidateKind;
use crate::config::{DomainConfig, EpisodesConfig};
use crate::types::{BadInput, Fold};

/// One task: what the agent sees (`input`, passed as the `task` dict) and the gold answer
/// (never sent to the worker).
#[derive(Debug, Clone)]
pub struct Task {
    pub id: String,
    pub input: Value,
    pub answer: Value,
}

pub use crate::config::EPISODIC_DOMAIN;

pub struct Domain {
    pub name: String,
    /// What a candidate of this domain is: an agent (`forward`) or, for the episodic
    /// domain, a memory design (`class Memory`).
    pub kind: CandidateKind,
    /// The episodic domain's settings (None for task domains).
    pub episodes: Option<crate::config::EpisodesConfig>,
    /// One paragraph for the proposer's prompt: what the tasks are and how they are scored.
    pub description: String,
    pub scorer: Scorer,
    /// What an answer looks like: the phrase seeds and prompts use, the labels if any.
    pub answer: AnswerSpec,
    pub tasks: Vec<Task>,
}

struct Builtin {
    name: &'static str,
    file: &'static str,
    scorer: Scorer,
    description: &'static str,
}

const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "arith",
        file: "arith.jsonl",
        scorer: Scorer::Numeric,
        description: "Short arithmetic word problems with whole-number answers (one or two steps: add, subtract, multiply). The task dict has a `question` string; the agent returns text whose final number is taken as the answer and compared exactly.",
    },
    Builtin {
        name: "units",
        file: "units.jsonl",
        scorer: Scorer::Numeric,
        description: "Unit conversions and counting questions whose answer needs a fact the question leaves unsaid (minutes in an hour, legs of a spider, cents in a dollar) combined with the numbers given. The task dict has a `question` string; the agent returns text whose final number is taken as the answer and compared exactly.",
    },
    Builtin {
        name: "mgsm",
        file: "mgsm.jsonl",
        scorer: Scorer::Numeric,
        description: "Grade-school math word problems (MGSM: GSM8K translated into 11 languages, ADAS's headline domain). The task dict has a `question` string and its `lang`; the agent returns text whose final number is taken as the answer and compared exactly.",
    },
    Builtin {
        name: "drop",
        file: "drop.jsonl",
        scorer: Scorer::F1,
        description: "Reading comprehension with discrete reasoning (DROP): a passage, then a question whose answer is a short span of the passage, a number or a date. The task dict has a `question` string holding both (`Passage: ...` then `Question: ...`); the agent returns the answer text, scored by DROP's F1 over the gold spans (partial credit; a number in the gold must appear in the answer).",
    },
    Builtin {
        name: "arc",
        file: "arc.jsonl",
        scorer: Scorer::Grid,
        description: "ARC-AGI-1 puzzles with small grids (ADAS's ARC selection): each task shows example input/output grids of digits 0-9 and a test input; the output grid for the test input must be exactly right. The task dict has a `question` string (the examples and the test input as text), `train` (the example pairs as lists of rows) and `test_input`; the agent returns text whose last `[[...]]` list of rows is taken as its grid.",
    },
    Builtin {
        name: "gsm8k",
        file: "gsm8k_test.jsonl",
        scorer: Scorer::Numeric,
        description: "Grade-school math word problems (GSM8K) needing 2 to 8 steps. The task dict has a `question` string; the agent returns text whose final number is taken as the answer and compared exactly.",
    },
];

impl Domain {
    pub fn builtin_names() -> Vec<&'static str> {
        BUILTINS.iter().map(|b| b.name).chain([EPISODIC_DOMAIN]).collect()
    }

    /// Loads the domain named by the config (built-in, or a user JSONL with a scorer). Its
    /// errors are `BadInput`: they are about the config or the user's dataset.
    pub fn load(cfg: &DomainConfig) -> Result<Self> {
        Self::load_unmarked(cfg).map_err(BadInput::wrap)
    }

    fn load_unmarked(cfg: &DomainConfig) -> Result<Self> {
        if let Some(path) = &cfg.path {
            let scorer = user_scorer(cfg.scorer.as_deref(), cfg.choices.as_deref())?;
            let scorer_name = match &scorer {
                Scorer::Code(code) => code.file.clone(),
                _ => cfg.scorer.as_ref().map_or("exact".into(), |s| s.display().to_string()),
            };
            let text = std::fs::read_to_string(path).with_context(|| {
                format!(
                    "domain.path: cannot read {}; fix: point it at a JSONL file of tasks",
                    path.display()
                )
            })?;
            let gold = match scorer {
                Scorer::Code(_) => Gold::AllHidden,
                _ => Gold::Answer,
            };
            let mut tasks = parse_jsonl(&text, &path.display().to_string(), &cfg.hidden_fields, gold)?;
            let answer = AnswerSpec::for_domain(cfg, &scorer, &tasks)?;
            give_choices(&mut tasks, &answer.choices, &path.display().to_string())?;
            return Ok(Self {
                answer,
                name: cfg.name.clone(),
                kind: CandidateKind::Agent,
                episodes: None,
                description: cfg.description.clone().unwrap_or_else(|| {
                    format!(
                        "Tasks from {}; scored with the `{scorer_name}` scorer.",
                        file_name(path)
                    )
                }),
                scorer,
                tasks,
            });
        }
        if cfg.name == EPISODIC_DOMAIN {
            let episodes = cfg.episodes.clone().unwrap_or_default();
            return Ok(Self {
                name: EPISODIC_DOMAIN.into(),
                kind: CandidateKind::Memory,
                description: format!(
                    "TextWorldExpress TextWorld-Commonsense games ({} fold): the player is in a house and must pick up {} objects and put each in its usual location (dirty clothes in the laundry basket, a copybook in the desk). A fixed base agent plays; a memory design decides what it keeps after each episode and what text the agent is given before the next. Fitness is the gain in game score (0 to 1) over the same agent without memory, on episodes after the memory was filled.",
                    episodes.fold, episodes.items
                ),
                scorer: Scorer::Exact,
                answer: AnswerSpec {
                    kind: AnswerKind::Text,
                    format: "the next action".into(),
                    slot: "action".into(),
                    choices: Vec::new(),
                },
                tasks: episode_tasks(&episodes),
                episodes: Some(episodes),
            });
        }
        let Some(b) = BUILTINS.iter().find(|b| b.name == cfg.name) else {
            bail!(
                "domain.name = {:?} is not a built-in domain ({}); fix: use one of those, or set domain.path to a JSONL file and domain.scorer",
                cfg.name,
                Self::builtin_names().join(", ")
            );
        };
        let text = crate::assets::text(&crate::assets::DATA, b.file)
            .with_context(|| format!("built-in data file data/{} is missing from this build", b.file))?;
        let tasks = parse_jsonl(text, &format!("data/{}", b.file), &cfg.hidden_fields, Gold::Answer)?;
        Ok(Self {
            name: b.name.into(),
            kind: CandidateKind::Agent,
            episodes: None,
            description: b.description.into(),
            answer: AnswerSpec::for_domain(cfg, &b.scorer, &tasks)?,
            scorer: b.scorer.clone(),
            tasks,
        })
    }

    /// Validation and held-out test splits, disjoint, fixed by `seed`.
    pub fn splits(&self, seed: u64, val: usize, test: usize) -> Result<(Vec<Task>, Vec<Task>)> {
        if val + test > self.tasks.len() {
            bail!(
                "domain {} has {} tasks but val_size + test_size = {}; fix: lower domain.val_size or domain.test_size",
                self.name,
                self.tasks.len(),
                val + test
            );
        }
        let mut order: Vec<usize> = (0..self.tasks.len()).collect();
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        let pick = |r: &[usize]| r.iter().map(|&i| self.tasks[i].clone()).collect::<Vec<_>>();
        Ok((pick(&order[..val]), pick(&order[val..val + test])))
    }
}

/// Whether `source` defines a top-level function `name` (a decorated one too).
fn defines_function(source: &str, name: &str) -> bool {
    let tree = crate::check::parse_python(source);
    let mut cursor = tree.root_node().walk();
    let found = tree.root_node().children(&mut cursor).any(|node| {
        let def = match node.kind() {
            "decorated_definition" => node.child_by_field_name("definition"),
            _ => Some(node),
        };
        def.filter(|d| d.kind() == "function_definition")
            .and_then(|d| d.child_by_field_name("name"))
            .is_some_and(|n| &source[n.byte_range()] == name)
    });
    found
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|f| f.to_string_lossy().to_string())
        .unwrap_or_default()
}

/// Each line: an object with `answer` (or `answers`) and the fields the agent sees; `id` is
/// optional (the line number is used). Errors name the file and line.
/// What a task's `answer` holds.
#[derive(Clone, Copy)]
enum Gold {
    /// The `answer` (or `answers`) field, for the built-in scorers.
    Answer,
    /// Every hidden field as one object, for scorer code (which sees the whole task).
    AllHidden,
}

/// Hands the domain's labels to every task as its `choices` (a task's own are kept), and
/// refuses a task whose gold answer is none of its choices: it could never be scored right.
fn give_choices(tasks: &mut [Task], labels: &[String], origin: &str) -> Result<()> {
    for t in tasks.iter_mut() {
        if !labels.is_empty() && t.input.get("choices").is_none() {
            if let Some(obj) = t.input.as_object_mut() {
                obj.insert("choices".into(), json!(labels));
            }
        }
        let Some(choices) = t.input.get("choices") else {
            continue;
        };
        let Some(list) = choices.as_array().filter(|l| l.iter().all(Value::is_string)) else {
            bail!(
                "{origin}: task {}: `choices` must be a list of strings; fix: write it like [\"yes\", \"no\"]",
                t.id
            );
        };
        let gold = t.answer.as_str().map(|g| g.trim().to_lowercase());
        if let Some(g) = gold.filter(|g| {
            !list
                .iter()
                .any(|c| c.as_str().is_some_and(|c| c.trim().to_lowercase() == *g))
        }) {
            bail!(
                "{origin}: task {}: its answer {g:?} is not one of its choices; fix: correct the answer, or add it to domain.choices",
                t.id
            );
        }
    }
    Ok(())
}

/// The scorer `domain.scorer` names: a built-in name, or a `.py` file of scorer code.
fn user_scorer(spec: Option<&Path>, labels: Option<&[String]>) -> Result<Scorer> {
    let Some(spec) = spec else { return Ok(Scorer::Exact) };
    if spec.extension().is_some_and(|e| e == "py") {
        let source = std::fs::read_to_string(spec).with_context(|| {
            format!(
                "domain.scorer: cannot read {}; fix: point it at a Python file defining score(task, output)",
                spec.display()
            )
        })?;
        if !defines_function(&source, "score") {
            bail!(
                "domain.scorer: {} defines no top-level `score(task, output)`; fix: add `def score(task, output):` returning a number in [0, 1], a bool, or {{\"score\": ..., \"feedback\": ...}}",
                spec.display()
            );
        }
        return Ok(Scorer::Code(std::sync::Arc::new(ScorerCode {
            file: file_name(spec),
            source,
        })));
    }
    let name = spec.display().to_string();
    Scorer::parse(&name, labels).with_context(|| format!("domain.scorer = {name:?}"))
}

fn parse_jsonl(text: &str, origin: &str, hidden_fields: &[String], gold: Gold) -> Result<Vec<Task>> {
    let mut tasks = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let mut v: Value = serde_json::from_str(line)
            .with_context(|| format!("{origin}:{}: not a JSON object; fix: one JSON object per line", i + 1))?;
        let Some(obj) = v.as_object_mut() else {
            bail!("{origin}:{}: expected a JSON object", i + 1);
        };
        // Hidden fields never reach the agent's worker.
        let hidden: serde_json::Map<String, Value> = hidden_fields
            .iter()
            .filter_map(|f| obj.remove(f).map(|v| (f.clone(), v)))
            .collect();
        let answer = match gold {
            Gold::AllHidden => Value::Object(hidden),
            Gold::Answer => hidden
                .get("answer")
                .or_else(|| hidden.get("answers"))
                .cloned()
                .with_context(|| {
                    format!(
                        "{origin}:{}: no `answer` field; fix: add the gold answer as `answer` (and keep it in domain.hidden_fields)",
                        i + 1
                    )
                })?,
        };
        let id = match obj.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => format!("{}", i + 1),
        };
        tasks.push(Task { id, input: v, answer });
    }
    if tasks.is_empty() {
        bail!("{origin}: no tasks; fix: add one JSON object per line");
    }
    Ok(tasks)
}

/// The episode tasks of the `twc` domain: seeds of the configured fold, with the game
/// parameters of the config.
pub fn episode_tasks(cfg: &EpisodesConfig) -> Vec<Task> {
    let first = match cfg.fold {
        Fold::Train => 0,
        Fold::Dev => 10_000,
        Fold::Test => 20_000,
    };
    let params = format!(
        "numLocations={},numItemsToPutAway={},includeDoors=0,limitInventorySize=0",
        cfg.locations, cfg.items
    );
    (first..first + 1000)
        .map(|seed| Task {
            id: format!("twc-{}-{seed}", cfg.fold),
            input: json!({"game": "twc", "fold": cfg.fold.as_str(), "seed": seed, "params": params}),
            answer: serde_json::Value::Null,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(name: &str) -> DomainConfig {
        DomainConfig {
            name: name.into(),
            path: None,
            scorer: None,
            val_size: 10,
            test_size: 20,
            split_seed: None,
            episodes: None,
            hidden_fields: crate::config::default_hidden_fields(),
            description: None,
            answer_format: None,
            choices: None,
        }
    }

    #[test]
    fn builtins_load_and_splits_are_disjoint_and_stable() {
        for name in Domain::builtin_names() {
            let d = Domain::load(&cfg(name)).unwrap();
            let (v, t) = d.splits(3, 10, 20).unwrap();
            let (v2, _) = d.splits(3, 10, 20).unwrap();
            assert_eq!(
                v.iter().map(|t| &t.id).collect::<Vec<_>>(),
                v2.iter().map(|t| &t.id).collect::<Vec<_>>()
            );
            assert!(v.iter().all(|a| t.iter().all(|b| a.id != b.id)));
            assert!(
                v.iter().all(|t| t.input.get("answer").is_none()),
                "gold must not reach the agent"
            );
        }
    }

    #[test]
    fn missing_dataset_names_the_file_and_fix() {
        let mut c = cfg("mine");
        c.path = Some("/nonexistent/tasks.jsonl".into());
        let err = format!("{:#}", Domain::load(&c).err().unwrap());
        assert!(
            err.contains("/nonexistent/tasks.jsonl") && err.contains("fix:"),
            "{err}"
        );
    }

    #[test]
    fn bad_line_names_the_line() {
        let err = format!(
            "{:#}",
            parse_jsonl(
                "{\"answer\": 1}\nnot json\n",
                "t.jsonl",
                &crate::config::default_hidden_fields(),
                Gold::Answer
            )
            .unwrap_err()
        );
        assert!(err.contains("t.jsonl:2"), "{err}");
    }

    #[test]
    fn unknown_domain_lists_builtins() {
        let err = format!("{:#}", Domain::load(&cfg("mmlu")).err().unwrap());
        assert!(err.contains("gsm8k") && err.contains("domain.path"), "{err}");
    }
}
