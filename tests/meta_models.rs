//! Several meta-models: the bandit over models, its credit across a kill -9, and a model's
//! own budget. The models are SCRIPTED behind two OpenAI-compatible endpoints on 127.0.0.1
//! (`common::two_meta_models`): the test is of the choice, not of a model.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::two_meta_models::{experiment, model_credit, proposals_by_model, start};
use common::*;

/// Within a dozen steps the cost-aware bandit sends most proposals to the model that
/// improves programs at a twentieth of the price; a run killed with -9 mid-way and resumed
/// ends with the same proposals per model and the same credit, step by step.
#[test]
fn the_bandit_favours_the_model_that_earns_most_per_dollar_and_a_resume_keeps_its_counts() {
    let dir = tempfile::tempdir().unwrap();
    let models = start(dir.path());
    let exp = experiment(dir.path(), &models, 5, "thompson", 14, "");
    let reference = dir.path().join("reference.db");
    run_to_end(&exp, &reference);
    let counts = proposals_by_model(&reference);
    let of = |name: &str| counts.iter().find(|(m, _)| m == name).map_or(0, |(_, n)| *n);
    println!("proposals by model: {counts:?}");
    assert_eq!(
        of("good") + of("costly"),
        14,
        "every proposal names its model: {counts:?}"
    );
    assert!(of("costly") >= 1, "the costly model is tried: {counts:?}");
    assert!(
        of("good") >= 10,
        "most proposals go to the model that earns: {counts:?}"
    );
    let credit = model_credit(&reference);
    assert!(
        credit.iter().any(|(m, improved, _)| m == "good" && *improved),
        "{credit:?}"
    );
    assert!(
        credit.iter().all(|(m, improved, _)| m != "costly" || !improved),
        "{credit:?}"
    );
    let spent = |name: &str| credit.iter().filter(|(m, ..)| m == name).map(|(.., c)| c).sum::<f64>();
    assert!(spent("costly") / of("costly") as f64 > 5.0 * spent("good") / of("good") as f64);

    let status = ok(&metaforge(dir.path(), &["status", reference.to_str().unwrap()]));
    assert!(
        status.contains("meta-model credit") && status.contains("costly"),
        "{status}"
    );

    // The same run, killed once it has stored a few proposal steps, then resumed.
    let db = dir.path().join("killed.db");
    let mut child = spawn_run(&exp, &db, Stdio::null());
    while steps_done(&db) < 5 && child.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(child.try_wait().unwrap().is_none(), "the run ended before the kill");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    run_or_resume(&exp, &db)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(
        proposals_by_model(&db),
        counts,
        "proposals per model after kill -9 and resume"
    );
    assert_eq!(model_credit(&db), credit, "the credit, step by step");
}

/// A model's own cap: once the costly model's dollars are spent it is no longer offered,
/// the run goes on with the other, and the refused call names the cap.
#[test]
fn a_model_whose_own_budget_is_spent_is_no_longer_chosen() {
    let dir = tempfile::tempdir().unwrap();
    let models = start(dir.path());
    let exp = experiment(
        dir.path(),
        &models,
        5,
        "fixed",
        8,
        "budget_usd = 0.000001\nweight = 100.0",
    );
    let db = dir.path().join("capped.db");
    run_to_end(&exp, &db);
    let counts = proposals_by_model(&db);
    let of = |name: &str| counts.iter().find(|(m, _)| m == name).map_or(0, |(_, n)| *n);
    assert_eq!(of("costly"), 1, "one refused call, then never again: {counts:?}");
    assert_eq!(of("good"), 7, "{counts:?}");
    let reason: String = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT reason FROM proposals WHERE model = 'costly'", [], |r| r.get(0))
        .unwrap();
    assert!(reason.contains("models.meta.costly: cost cap"), "{reason}");
}

/// `llm(model=...)` and `use_model` reach the agent model they name through the real
/// sandbox and host; a name the experiment does not hold fails the task, naming those it
/// does, and each model's calls are counted on its own gateway.
#[test]
fn an_agent_call_reaches_the_model_it_names() {
    use metaforge::llm::{Budget, Gateway, Gateways, Role, ScriptedBackend};
    let cfg_text = "backend = \"scripted\"\nmodel = \"s\"\nscript = \"x\"";
    let mcfg: metaforge::config::ModelConfig = toml::from_str(cfg_text).unwrap();
    let gateway = |label: &str, reply: &str| {
        Gateway::new(
            Role::Agent,
            std::sync::Arc::new(ScriptedBackend::new(label, vec![reply.into()])),
            &mcfg,
            None,
            std::sync::Arc::new(Budget::unlimited()),
        )
    };
    let models = Gateways::from_entries(vec![
        ("cheap".into(), gateway("cheap", "3")),
        ("strong".into(), gateway("strong", "4")),
    ]);
    let cfg = metaforge::config::EvaluationConfig::default();
    let mut evaluator = plain_evaluator(models.primary(), &cfg, metaforge::domain::Scorer::Exact);
    evaluator.models = Some(&models);
    let tasks: Vec<metaforge::domain::Task> = (0..3)
        .map(|i| metaforge::domain::Task {
            id: format!("t{i}"),
            input: serde_json::json!({"question": "q"}),
            answer: serde_json::json!("3 4 4"),
        })
        .collect();
    let code = "from metaforge import llm, use_model\n\n\ndef forward(task):\n    a = llm(task['question'])\n    with use_model('strong'):\n        b = llm(task['question'])\n    c = llm(task['question'], model='strong')\n    return f'{a} {b} {c}'\n";
    let e = evaluator
        .evaluate(code, &tasks, metaforge::types::Split::Val, &|| {})
        .unwrap();
    assert!(e.tasks.iter().all(|t| t.score == 1.0), "{:?}", e.tasks);
    assert_eq!(models.get("cheap").unwrap().totals().calls, 3);
    assert_eq!(models.get("strong").unwrap().totals().calls, 6);

    let bad = "from metaforge import llm\n\n\ndef forward(task):\n    return llm(task['question'], model='huge')\n";
    let e = evaluator
        .evaluate(bad, &tasks[..1], metaforge::types::Split::Val, &|| {})
        .unwrap();
    let error = e.tasks[0].error.clone().unwrap_or_default();
    assert!(
        error.contains("no agent model of that name") && error.contains("cheap") && error.contains("strong"),
        "{error}"
    );
}

/// Two runs whose named agent models differ are scored by different models: `merge` refuses
/// them, naming the models, as it does single sections that differ.
#[test]
fn archives_whose_named_agent_models_differ_do_not_merge() {
    let dir = tempfile::tempdir().unwrap();
    let run = |file: &str, label: &str| {
        let exp = write_experiment(dir.path(), file, 3, ARITH, 0.0, 1);
        let text = std::fs::read_to_string(&exp).unwrap().replace(
            "[models.agent]\nbackend = \"scripted\"\nmodel = \"agent\"",
            &format!("[models.agent.main]\nbackend = \"scripted\"\nmodel = \"{label}\""),
        );
        assert!(text.contains("[models.agent.main]"));
        std::fs::write(&exp, text).unwrap();
        let db = dir.path().join(file.replace(".toml", ".db"));
        run_to_end(&exp, &db);
        db
    };
    let a = run("a.toml", "agent");
    let b = run("b.toml", "other");
    let out = dir.path().join("merged.db");
    let err = refused(&metaforge(
        dir.path(),
        &["merge", a.to_str().unwrap(), b.to_str().unwrap(), "-o", out.to_str().unwrap()],
    ));
    assert!(err.contains("agent model") && err.contains("main:") && err.contains("other"), "{err}");
}
