//! Bringing your own task: scorer code (`domain.scorer = "score.py"`, the user's
//! `score(task, output)` in its own sandboxed worker), hidden fields, README's example, and
//! `metaforge eval --experiment`. Real Python subprocesses and sandboxes; the agent model is
//! SCRIPTED (tests/fixtures/scripted_agent.json), so scores are known in advance.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use metaforge::config::EvaluationConfig;
use metaforge::domain::{Scorer, ScorerCode, Task};
use metaforge::types::{Evaluation, Split};

/// Partial credit with feedback: full marks for the gold number, a quarter for any other.
const PARTIAL: &str = r#"import re

def score(task, output):
    got = re.findall(r"-?\d+", output)
    if got and int(got[-1]) == task["answer"]:
        return {"score": 1.0, "feedback": "right"}
    return {"score": 0.25, "feedback": "expected %d %s, got %r" % (task["answer"], task["unit"], output[:40])}
"#;

/// Tasks whose gold is `answer` (7 or 8; the scripted agent always says 7) and whose `unit`
/// is hidden from the agent too.
fn tasks_file(dir: &Path) {
    let tasks: String = (0..24)
        .map(|i| {
            format!(
                "{{\"id\": \"s{i}\", \"question\": \"What is {i} minus {i} plus 7?\", \"answer\": {}, \"unit\": \"apples\"}}\n",
                7 + i % 2
            )
        })
        .collect();
    std::fs::write(dir.join("sevens.jsonl"), tasks).unwrap();
}

fn evaluate_with(source: &str, code: &str, task_timeout_s: u64) -> Evaluation {
    let gateway = scripted_gateway("7");
    let cfg = EvaluationConfig {
        task_timeout_s,
        ..EvaluationConfig::default()
    };
    let evaluator = plain_evaluator(
        &gateway,
        &cfg,
        Scorer::Code(Arc::new(ScorerCode {
            file: "score.py".into(),
            source: source.into(),
        })),
    );
    let tasks: Vec<Task> = (0..2)
        .map(|i| Task {
            id: format!("t{i}"),
            input: serde_json::json!({"question": "q"}),
            answer: serde_json::json!({"answer": 7}),
        })
        .collect();
    evaluator.evaluate(code, &tasks, Split::Val, &|| {}).unwrap()
}

const ANSWERS_SEVEN: &str = "def forward(task):\n    return 'seven is 7'\n";

#[test]
fn a_failing_scorer_gives_a_typed_error_per_task_and_the_evaluation_goes_on() {
    let cases = [
        ("def score(task, output):\n    raise KeyError('gold')\n", "error", "KeyError"),
        ("def score(task, output):\n    while True:\n        pass\n", "timeout", "timeout"),
        (
            "import socket\n\ndef score(task, output):\n    socket.create_connection(('127.0.0.1', 9), timeout=1)\n    return 1.0\n",
            "policy_denied",
            "policy_denied",
        ),
        ("def score(task, output):\n    return 'yes'\n", "error", "return a number in [0, 1]"),
    ];
    for (scorer, kind, says) in cases {
        let e = evaluate_with(scorer, ANSWERS_SEVEN, 2);
        assert_eq!(e.tasks.len(), 2);
        for t in &e.tasks {
            assert_eq!((t.outcome.as_str(), t.score), ("scorer_error", 0.0), "{scorer}: {t:?}");
            let error = t.error.as_deref().unwrap_or("");
            assert!(
                error.contains("score.py on task t") && error.contains(says) && error.contains("fix:"),
                "{scorer}: {error}"
            );
        }
        assert!(
            e.detail
                .contains(&format!("the scorer failed on 2 of 2 tasks (first, {kind})")),
            "{scorer}: {}",
            e.detail
        );
    }
    // A scorer that works: the same candidate now scores.
    let e = evaluate_with(
        "def score(task, output):\n    return str(task['answer']) in output\n",
        ANSWERS_SEVEN,
        2,
    );
    assert_eq!(e.mean, 1.0, "{:?}", e.tasks);
}

#[test]
fn a_candidate_cannot_read_the_gold_answers_or_touch_the_scorer() {
    let dir = tempfile::tempdir().unwrap();
    tasks_file(dir.path());
    let gold = dir.path().join("sevens.jsonl");
    let sneaky = format!(
        "def forward(task):\n    return open({:?}).read()[:200]\n",
        gold.display().to_string()
    );
    let e = evaluate_with(PARTIAL.replace("task[\"unit\"]", "'apples'").as_str(), &sneaky, 5);
    for t in &e.tasks {
        assert_eq!((t.outcome.as_str(), t.score), ("policy_denied", 0.0), "{t:?}");
    }
    // The task it is given holds no gold field.
    let peek = "def forward(task):\n    return 'answer' in task and str(task['answer']) or 'none'\n";
    let e = evaluate_with("def score(task, output):\n    return output == 'none'\n", peek, 5);
    assert_eq!(e.mean, 1.0, "{:?}", e.tasks);
}

#[test]
fn a_run_with_scorer_code_stores_partial_credit_and_shows_the_feedback_to_the_proposer() {
    let dir = tempfile::tempdir().unwrap();
    tasks_file(dir.path());
    std::fs::write(dir.path().join("score.py"), PARTIAL).unwrap();
    let domain = "name = \"sevens\"\npath = \"sevens.jsonl\"\nscorer = \"score.py\"\nval_size = 6\ntest_size = 6\n";
    let exp = write_experiment(dir.path(), "exp.toml", 3, domain, 1.0, 1);
    let db = dir.path().join("run.db");
    run_to_end(&exp, &db);
    let partial = count(&db, "SELECT count(*) FROM task_results WHERE score = 0.25");
    let full = count(&db, "SELECT count(*) FROM task_results WHERE score = 1.0");
    assert!(partial > 0 && full > 0, "partial {partial}, full {full}");
    assert!(
        count(
            &db,
            "SELECT count(*) FROM task_results WHERE error LIKE 'scorer feedback: expected 8 apples%'"
        ) > 0,
        "the scorer saw the hidden `unit` field and its feedback is stored"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM run_files WHERE key = 'domain.scorer'"),
        1
    );
    assert!(
        count(
            &db,
            "SELECT count(*) FROM proposals WHERE prompt LIKE '%Scorer feedback: expected 8 apples%'"
        ) > 0,
        "a rewrite prompt shows the scorer's feedback beside its program"
    );
    assert_archive_sound(&db);
}

#[test]
fn a_scorer_file_without_score_is_refused_before_the_run() {
    let dir = tempfile::tempdir().unwrap();
    tasks_file(dir.path());
    std::fs::write(
        dir.path().join("score.py"),
        "def grade(task, output):\n    return 1.0\n",
    )
    .unwrap();
    let domain = "name = \"sevens\"\npath = \"sevens.jsonl\"\nscorer = \"score.py\"\nval_size = 6\ntest_size = 6\n";
    let exp = write_experiment(dir.path(), "exp.toml", 3, domain, 0.0, 1);
    let err = refused(&metaforge(dir.path(), &["run", exp.to_str().unwrap(), "--db", "r.db"]));
    assert!(
        err.contains("score.py defines no top-level `score(task, output)`") && err.contains("fix:"),
        "{err}"
    );
    assert!(!dir.path().join("r.db").exists(), "nothing is created");
}

/// README's "Your own task" files, written as a reader would copy them: the experiment
/// loads, the scorer is scorer code, and both seeds resolve.
#[test]
fn the_readme_example_of_an_own_task_loads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = &readme[readme.find("## Your own task").expect("README has the section")..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("data")).unwrap();
    std::fs::copy(root.join("data/units.jsonl"), dir.path().join("data/units.jsonl")).unwrap();
    let mut files = 0;
    for block in section.split("```").skip(1).step_by(2) {
        let body = block.split_once('\n').unwrap().1;
        let name = body
            .lines()
            .next()
            .unwrap()
            .trim_start_matches("# ")
            .split(':')
            .next()
            .unwrap();
        std::fs::write(dir.path().join(name), body).unwrap();
        files += 1;
    }
    assert_eq!(files, 3);
    let exp = metaforge::config::Experiment::load(&dir.path().join("my-task.toml")).unwrap();
    let domain = metaforge::domain::Domain::load(&exp.domain).unwrap();
    assert!(matches!(domain.scorer, Scorer::Code(_)));
    assert!(domain.tasks[0].input.get("answer").is_none(), "the answer is hidden");
    let templates = metaforge::propose::Templates::embedded()
        .unwrap()
        .with_answer(&domain.answer);
    let seeds = metaforge::search::resolve_seeds(&exp.search.seeds, domain.kind, &templates).unwrap();
    assert_eq!(
        seeds.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["direct_answer", "my_agent"]
    );
    // The built-in seed asks for the format the README's experiment states.
    assert!(seeds[0]
        .1
        .contains("\"Answer the question with a single number and nothing else.\""));
    // The scorer and the agent run: the scripted model answers "24" to every call.
    let e = {
        let tasks: Vec<Task> = domain.tasks.iter().take(2).cloned().collect();
        let gateway = scripted_gateway("24");
        let cfg = EvaluationConfig::default();
        let evaluator = plain_evaluator(&gateway, &cfg, domain.scorer.clone());
        evaluator.evaluate(&seeds[1].1, &tasks, Split::Val, &|| {}).unwrap()
    };
    assert_eq!(e.tasks[0].score, 1.0, "units-000's answer is 24: {:?}", e.tasks[0]);
    assert_eq!(e.tasks[1].score, 0.0, "{:?}", e.tasks[1]);
    assert_eq!(e.tasks[1].error.as_deref(), Some("scorer feedback: expected 22"));
}

/// `eval --experiment`: the experiment's domain, splits and (here scripted) agent model.
#[test]
fn eval_runs_a_file_on_an_experiments_split_and_model() {
    let dir = tempfile::tempdir().unwrap();
    let domain = sevens_domain(dir.path(), 6, 8);
    let exp = write_experiment(dir.path(), "exp.toml", 3, &domain, 0.0, 1);
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("archive/agents/direct_answer.py");
    let out = ok(&metaforge(
        dir.path(),
        &[
            "--json",
            "eval",
            seed.to_str().unwrap(),
            "--experiment",
            exp.to_str().unwrap(),
            "--split",
            "test",
            "--n",
            "5",
        ],
    ));
    let e: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (e["split"].as_str(), e["tasks"].as_array().unwrap().len()),
        (Some("test"), 5)
    );
    assert_eq!(e["mean"], 1.0, "the scripted agent answers 7 to every sevens task");
    let err = refused(&metaforge(
        dir.path(),
        &[
            "eval",
            seed.to_str().unwrap(),
            "--experiment",
            exp.to_str().unwrap(),
            "--split",
            "train",
        ],
    ));
    assert!(err.contains("unknown split \"train\"") && err.contains("fix:"), "{err}");
}

/// `llm(prompt, choices=[...])` from a candidate in the sandbox: the call reaches the gateway
/// with its choices, and what comes back is one of them whatever the model wrote around it
/// (here a SCRIPTED model's sentence). A candidate's bad choices are refused by the API.
#[test]
fn a_candidates_choices_reach_the_gateway_and_come_back_as_one_of_them() {
    let gateway = scripted_gateway("I would call it Negative, on balance.");
    let cfg = EvaluationConfig::default();
    let evaluator = plain_evaluator(&gateway, &cfg, Scorer::Exact);
    let task = |answer: &str| Task {
        id: answer.into(),
        input: serde_json::json!({"question": "Review: dull and long."}),
        answer: serde_json::json!(answer),
    };
    let code = "from metaforge import llm\n\ndef forward(task):\n    return llm(task['question'], choices=['positive', 'negative'])\n";
    let e = evaluator
        .evaluate(code, &[task("negative")], Split::Val, &|| {})
        .unwrap();
    assert_eq!(e.tasks[0].output.as_deref(), Some("negative"), "{:?}", e.tasks[0]);
    assert_eq!(e.mean, 1.0);
    for (bad, says) in [
        ("'yes'", "list of strings"),
        ("[]", "1 to 64"),
        ("['a', 'a']", "distinct"),
    ] {
        let code = format!("from metaforge import llm\n\ndef forward(task):\n    return llm('q', choices={bad})\n");
        let e = evaluator.evaluate(&code, &[task("a")], Split::Val, &|| {}).unwrap();
        let error = e.tasks[0].error.clone().unwrap_or_default();
        assert!(error.contains(says), "{bad}: {:?}", e.tasks[0]);
    }
}
