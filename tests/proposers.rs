//! The LLM proposal kinds (`rewrite`, `diff`, `crossover`) through the real binary, real
//! SQLite files and real Python workers.
//!
//! Two sources of meta-model replies, named as what they are:
//! - a RECORDED TRANSCRIPT of the real embedded model (SmolLM2-135M, recorded once by
//!   `scripts/record-transcripts.sh` into `tests/fixtures/recorded_meta_smollm2.json`): the
//!   parse and failure paths a real small model actually produces;
//! - SCRIPTED replies written here, for the success paths a 135M model rarely reaches (a diff
//!   that applies, a retry after a failed edit, a near-duplicate).
//!
//! The agent model is scripted in both (canned answers): these tests are about proposing.

use std::path::{Path, PathBuf};

use metaforge::propose::diff::{apply_edits, parse_edits};
use metaforge::propose::reply::parse_reply;
use rusqlite::Connection;

mod common;

use common::{fixtures, run_to_end as run};

fn recorded() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures().join("recorded_meta_smollm2.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn experiment(dir: &Path, meta_script: &Path, mix: &str, extra: &str, generations: u32) -> PathBuf {
    let text = format!(
        r#"name = "proposers-test"
seed = 11
[domain]
name = "arith"
val_size = 4
test_size = 0
[models.meta]
backend = "scripted"
model = "meta"
script = "{meta}"
[models.agent]
backend = "scripted"
model = "agent"
script = "{agent}"
[search]
seeds = ["direct_answer", "self_consistency"]
generations = {generations}
proposals_per_generation = 3
test_top_k = 0
[proposers]
{mix}
{extra}
[proposers.rewrite_options]
reflexion_rounds = 1
debug_rounds = 1
context_candidates = 2
parse_retries = 1
[evaluation]
tasks_in_flight = 4
task_timeout_s = 20
"#,
        meta = meta_script.display(),
        agent = fixtures().join("scripted_agent.json").display(),
    );
    let path = dir.join("exp.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn rows(db: &Path, sql: &str) -> Vec<Vec<String>> {
    let c = Connection::open(db).unwrap();
    let mut s = c.prepare(sql).unwrap();
    let n = s.column_count();
    s.query_map([], |r| {
        (0..n)
            .map(|i| r.get::<_, Option<String>>(i).map(|v| v.unwrap_or_default()))
            .collect::<Result<Vec<_>, _>>()
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

/// Every reply the real model gave, through both readers: the diagnostics are pinned so a
/// parser change that reads real replies differently is seen in review.
#[test]
fn recorded_replies_through_both_readers() {
    let rec = recorded();
    let parent =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("archive/agents/direct_answer.py")).unwrap();
    let mut lines = Vec::new();
    for (i, reply) in rec["replies"].as_array().unwrap().iter().enumerate() {
        let reply = reply.as_str().unwrap();
        let whole = match parse_reply(reply) {
            Ok(p) => format!("program via {} ({} lines)", p.via, p.code.lines().count()),
            Err(e) => format!("unreadable: {}", e.lines().next().unwrap_or("")),
        };
        let edits = match parse_edits(reply) {
            Ok(e) => match apply_edits(&parent, &e) {
                Ok(_) => format!("{} edit(s), apply to direct_answer", e.len()),
                Err(err) => format!("{} edit(s), {}", e.len(), err.chars().take(60).collect::<String>()),
            },
            Err(e) => e.chars().take(40).collect(),
        };
        lines.push(format!("{i:>2}: {whole} | {edits}"));
    }
    assert!(lines.len() >= 10, "the transcript is too short to cover anything");
    insta::assert_snapshot!(lines.join("\n"));
}

/// The loop, replaying the real model's transcript: every proposal kind is tried, every
/// attempt is a row with its prompt, reply and reason, and the funnel shows each kind.
#[test]
fn loop_replays_the_recorded_transcript() {
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(
        dir.path(),
        &fixtures().join("recorded_meta_smollm2.json"),
        "operators = 0.0\nrewrite = 1.0\ndiff = 1.0\ncrossover = 1.0",
        "",
        3,
    );
    let db = dir.path().join("run.db");
    let out = run(&exp, &db);
    let props = rows(
        &db,
        "SELECT kind, status, reason, coalesce(prompt, ''), coalesce(reply, '') FROM proposals WHERE kind != 'seed'",
    );
    assert!(props.len() >= 9, "{props:?}");
    for kinds in ["rewrite", "diff", "crossover"] {
        assert!(
            props.iter().any(|p| p[0].starts_with(kinds)),
            "no {kinds} proposal in {:?}",
            props.iter().map(|p| &p[0]).collect::<Vec<_>>()
        );
    }
    for p in &props {
        assert!(!p[3].is_empty(), "a {} proposal has no stored prompt", p[0]);
        if p[1] != "llm_error" {
            assert!(!p[4].is_empty(), "a {} proposal has no stored reply", p[0]);
        }
        if p[1] != "evaluated" {
            assert!(!p[2].is_empty(), "a failed {} proposal ({}) has no reason", p[0], p[1]);
        }
        if p[0].starts_with("diff") && !p[0].contains("debug") {
            assert!(p[3].contains("<<<<<<< SEARCH"), "a diff prompt without the edit format");
        }
        if p[0] == "crossover" {
            assert!(
                p[3].contains("Parent 2"),
                "a crossover prompt without its second parent"
            );
        }
    }
    for family in ["rewrite", "diff", "crossover"] {
        assert!(
            out.lines()
                .any(|l| l.trim_start().starts_with(family) && l.contains("proposed")),
            "status funnel has no {family} line:\n{out}"
        );
    }
    // Context budget decisions are recorded per step.
    assert!(!rows(&db, "SELECT detail FROM events WHERE kind = 'context'").is_empty());
}

/// SCRIPTED replies: a diff whose first edit does not match is fed back once with the
/// block named, and the corrected edit applies and is evaluated.
#[test]
fn a_failed_edit_is_fed_back_and_the_fix_evaluated() {
    let dir = tempfile::tempdir().unwrap();
    let line = "    return llm(prompt, temperature=TEMPERATURE)";
    let replies = vec![
        "name: broken\n<<<<<<< SEARCH\n    nothing like this line\n=======\n    x = 1\n>>>>>>> REPLACE\n".to_string(),
        format!(
            "name: stripped\nStrip the answer.\n<<<<<<< SEARCH\n{line}\n=======\n    answer = llm(prompt, temperature=TEMPERATURE)\n    return answer.strip()\n>>>>>>> REPLACE\n"
        ),
        "No further changes.".to_string(),
    ];
    let script = dir.path().join("meta.json");
    std::fs::write(&script, serde_json::to_string(&replies).unwrap()).unwrap();
    let exp = experiment(dir.path(), &script, "operators = 0.0\ndiff = 1.0", "", 1);
    let db = dir.path().join("run.db");
    run(&exp, &db);
    let diff_rows = rows(
        &db,
        "SELECT p.status, p.reason, p.prompt, coalesce(c.code, '') FROM proposals p LEFT JOIN candidates c ON c.id = p.candidate_id WHERE p.kind = 'diff' ORDER BY p.step",
    );
    let first = &diff_rows[0];
    assert_eq!(first[0], "evaluated", "{first:?}");
    assert!(
        first[2].contains(
            "edit block 1: its SEARCH text does not occur in the program (first line: `nothing like this line`)"
        ),
        "the failed edit was not fed back by name"
    );
    assert!(
        first[3].contains("return answer.strip()"),
        "the edit was not applied: {}",
        first[3]
    );
    assert!(
        first[3].contains("INSTRUCTION = "),
        "the edit dropped the rest of the parent"
    );
    let malformed = rows(&db, "SELECT detail FROM events WHERE kind = 'malformed_replies'");
    assert!(!malformed.is_empty(), "the malformed reply was not counted");
}

/// SCRIPTED replies: a rewrite that changes one constant of its parent is refused as a
/// near-duplicate (threshold 0.7) before evaluation; a genuinely new crossover is evaluated.
#[test]
fn near_duplicates_are_refused_before_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let parent =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("archive/agents/direct_answer.py")).unwrap();
    let tweaked = parent.replace("TEMPERATURE = 0.0", "TEMPERATURE = 0.1");
    assert_ne!(tweaked, parent);
    let near = serde_json::json!({"thought": "warmer", "name": "copy", "code": tweaked});
    let fresh = serde_json::json!({"thought": "both", "name": "mix",
        "code": "from metaforge import llm\n\ndef forward(task):\n    reply = llm('Solve: ' + task['question'] + ' Reply with the number only.')\n    return reply.strip()\n"});
    // Reflexion is answered with prose (kept as unreadable, so the first proposal stands).
    let script = dir.path().join("meta.json");
    let rules = serde_json::json!({
        "rules": [
            {"contains": "Review your proposal", "reply": "I keep it."},
            {"contains": "I could not read your reply", "reply": "I keep it."},
            {"contains": "Parent 2", "reply": fresh.to_string()},
        ],
        "default": near.to_string(),
    });
    std::fs::write(&script, rules.to_string()).unwrap();
    let exp = experiment(
        dir.path(),
        &script,
        "operators = 0.0\nrewrite = 1.0\ncrossover = 1.0",
        "novelty_threshold = 0.7",
        2,
    );
    let db = dir.path().join("run.db");
    let out = run(&exp, &db);
    let props = rows(&db, "SELECT kind, status, reason FROM proposals WHERE kind != 'seed'");
    let refused: Vec<_> = props.iter().filter(|r| r[1] == "not_novel").collect();
    assert!(!refused.is_empty(), "the one-constant copy was evaluated: {props:?}");
    assert!(
        refused.iter().all(|r| r[2].starts_with("near-duplicate: similarity")),
        "{refused:?}"
    );
    assert!(
        props.iter().any(|r| r[1] == "evaluated"),
        "nothing new was evaluated: {props:?}"
    );
    let seeds = rows(&db, "SELECT status FROM proposals WHERE kind = 'seed'");
    assert!(
        seeds.iter().all(|s| s[0] == "evaluated"),
        "distinct seeds were refused: {seeds:?}"
    );
    assert!(out.contains("novel"), "{out}");
}

/// SCRIPTED replies: with `llm_instruction = 1.0` and fixed weights every operator proposal
/// asks the meta-model to rewrite one instruction string; a usable line replaces it and nothing else, an
/// unusable reply is a stored `parse_error`.
#[test]
fn the_meta_model_rewrites_one_instruction_string() {
    let dir = tempfile::tempdir().unwrap();
    let replies = vec![
        "New instruction: \"Reply with just the final number, no words.\"\nThis is clearer.".to_string(),
        "ok".to_string(),
    ];
    let script = dir.path().join("meta.json");
    std::fs::write(&script, serde_json::to_string(&replies).unwrap()).unwrap();
    let exp = experiment(
        dir.path(),
        &script,
        "operators = 1.0\nllm_instruction = 1.0\nbandit = \"fixed\"",
        "",
        2,
    );
    let db = dir.path().join("run.db");
    run(&exp, &db);
    let props = rows(
        &db,
        "SELECT p.status, p.reason, coalesce(p.prompt, ''), coalesce(c.code, '') FROM proposals p LEFT JOIN candidates c ON c.id = p.candidate_id WHERE p.kind = 'op:llm_instruction'",
    );
    assert!(!props.is_empty(), "no instruction rewrite was proposed");
    let done: Vec<_> = props.iter().filter(|p| p[0] == "evaluated").collect();
    assert!(!done.is_empty(), "{props:?}");
    for p in &done {
        assert!(
            p[3].contains("\"Reply with just the final number, no words.\""),
            "{}",
            p[3]
        );
        assert!(p[2].contains("Write a better instruction"), "the prompt was not stored");
    }
    assert!(
        props
            .iter()
            .any(|p| p[0] == "parse_error" && p[1] == "the reply holds no instruction line"),
        "{props:?}"
    );
}
