//! Two meta-models behind OpenAI-compatible endpoints on 127.0.0.1, for tests and the bench
//! of the bandit over models. Both are SCRIPTED (the point is the choice between them, not
//! a model): "good" writes the next rung of a ladder program, which beats its parent;
//! "useless" writes a program that answers 0, which never does. Their prices are the
//! caller's: the useless one dearer (does the bandit avoid it?) or cheaper (does it learn
//! to leave it?).
//!
//! The ladder: task n (0 to 23) asks for n; `LEVEL = k` answers the tasks below 2k, so there
//! are twelve rungs to climb. The good
//! model's rules key on the highest rung its prompt shows, so its replies are a function of
//! the prompt alone: a resumed run gets the same ones.
#![allow(dead_code)]

use super::faulty_endpoint::FaultyEndpoint;
use std::path::{Path, PathBuf};

/// The endpoints; dropped with the test.
pub struct TwoModels {
    pub good: FaultyEndpoint,
    pub useless: FaultyEndpoint,
}

fn ladder(level: u32) -> String {
    format!(
        "LEVEL = {level}\n\n\ndef forward(task):\n    n = int(task['question'])\n    return str(n) if n < LEVEL * 2 else '0'\n"
    )
}

fn reply(name: &str, code: &str) -> String {
    serde_json::json!({"thought": "climb one rung", "name": name, "code": code}).to_string()
}

/// Starts both endpoints, with their scripts written under `dir`.
pub fn start(dir: &Path) -> TwoModels {
    let rules: Vec<serde_json::Value> = (1..12)
        .rev()
        .map(|k| serde_json::json!({"contains": format!("LEVEL = {k}"), "reply": reply(&format!("Ladder {}", k + 1), &ladder(k + 1))}))
        .collect();
    let good = dir.join("good.json");
    std::fs::write(
        &good,
        serde_json::json!({"rules": rules, "default": reply("Ladder 12", &ladder(12))}).to_string(),
    )
    .unwrap();
    let useless = dir.join("useless.json");
    std::fs::write(
        &useless,
        serde_json::json!({"rules": [], "default": reply("Zero", "def forward(task):\n    return '0'\n")}).to_string(),
    )
    .unwrap();
    TwoModels {
        good: FaultyEndpoint::start(1, 0.0, &[], vec![("good", FaultyEndpoint::scripted(&good))]),
        useless: FaultyEndpoint::start(2, 0.0, &[], vec![("useless", FaultyEndpoint::scripted(&useless))]),
    }
}

/// What a million tokens cost on each model, in dollars.
#[derive(Debug, Clone, Copy)]
pub struct Prices {
    pub good: f64,
    pub useless: f64,
}

/// The useless model at twenty times the good one's price.
pub const USELESS_DEAR: Prices = Prices {
    good: 1.0,
    useless: 20.0,
};
/// The useless model at a third of the good one's price.
pub const USELESS_CHEAP: Prices = Prices {
    good: 3.0,
    useless: 1.0,
};

/// Writes the ladder tasks, the first rung as the seed, and an experiment whose proposals
/// all come from the meta-models at `prices`, chosen by `bandit` (`thompson` or `fixed`),
/// with `extra` lines added to the useless model's section. Returns the experiment's path.
pub fn experiment(
    dir: &Path,
    models: &TwoModels,
    seed: u64,
    bandit: &str,
    steps: u32,
    prices: Prices,
    extra: &str,
) -> PathBuf {
    let tasks: String = (0..24)
        .map(|n| format!("{{\"id\": \"n{n}\", \"question\": \"{n}\", \"answer\": {n}}}\n"))
        .collect();
    std::fs::write(dir.join("ladder.jsonl"), tasks).unwrap();
    std::fs::write(
        dir.join("ladder_1.py"),
        format!("\"\"\"Ladder 1\n\nThe first rung.\"\"\"\n{}", ladder(1)),
    )
    .unwrap();
    let agent = super::fixtures().join("scripted_agent.json");
    let text = format!(
        r#"name = "two-meta-models"
seed = {seed}
[domain]
name = "ladder"
path = "ladder.jsonl"
scorer = "numeric"
val_size = 16
test_size = 4
[models.meta.good]
backend = "openai"
model = "good"
base_url = "{good}"
price_prompt_per_mtok = {good_price}
price_completion_per_mtok = {good_price}
[models.meta.useless]
backend = "openai"
model = "useless"
base_url = "{useless}"
price_prompt_per_mtok = {useless_price}
price_completion_per_mtok = {useless_price}
{extra}
[models.agent]
backend = "scripted"
model = "agent"
script = "{agent}"
[search]
seeds = ["ladder_1.py"]
generations = {steps}
proposals_per_generation = 1
test_top_k = 1
[proposers]
operators = 0.0
rewrite = 1.0
bandit = "{bandit}"
[proposers.rewrite_options]
reflexion_rounds = 0
debug_rounds = 0
[evaluation]
tasks_in_flight = 4
task_timeout_s = 20
"#,
        good = models.good.url,
        good_price = prices.good,
        useless_price = prices.useless,
        useless = models.useless.url,
        agent = agent.display(),
    );
    let path = dir.join("exp.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Proposals by model, from the archive's proposals table.
pub fn proposals_by_model(db: &Path) -> Vec<(String, i64)> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut s = c
        .prepare("SELECT coalesce(model, '-'), count(*) FROM proposals WHERE kind != 'seed' GROUP BY 1 ORDER BY 1")
        .unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// The `credit` events in step order: (model, improved, dollars the model spent).
pub fn model_credit(db: &Path) -> Vec<(String, bool, f64)> {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut s = c
        .prepare("SELECT detail FROM events WHERE kind = 'credit' ORDER BY step")
        .unwrap();
    s.query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|d| {
            let e: serde_json::Value = serde_json::from_str(&d.unwrap()).unwrap();
            (
                e["model"].as_str().unwrap_or("-").to_string(),
                e["improved"].as_bool().unwrap_or(false),
                e["model_cost_usd"].as_f64().unwrap_or(0.0),
            )
        })
        .collect()
}
