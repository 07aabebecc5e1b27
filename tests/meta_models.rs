//! Several meta-models: the bandit over models, its credit across a kill -9, and a model's
//! own budget. The models are SCRIPTED behind two OpenAI-compatible endpoints on 127.0.0.1
//! (`common::two_meta_models`): the test is of the choice, not of a model.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::two_meta_models::{experiment, model_credit, proposals_by_model, start, USELESS_CHEAP, USELESS_DEAR};
use common::*;

/// The useless model is the cheaper one, so the price prior tries it first; within a few
/// steps its failures send the proposals to the model that earns more per dollar, where
/// fixed equal weights keep sending half. A run killed with -9 mid-way and resumed ends with
/// the same proposals per model and the same credit, step by step.
#[test]
fn the_bandit_favours_the_model_that_earns_most_per_dollar_and_a_resume_keeps_its_counts() {
    let dir = tempfile::tempdir().unwrap();
    let models = start(dir.path());
    let exp = experiment(dir.path(), &models, 5, "thompson", 14, USELESS_CHEAP, "");
    let reference = dir.path().join("reference.db");
    run_to_end(&exp, &reference);
    let counts = proposals_by_model(&reference);
    let of = |name: &str| counts.iter().find(|(m, _)| m == name).map_or(0, |(_, n)| *n);
    println!("proposals by model: {counts:?}");
    assert_eq!(
        of("good") + of("useless"),
        14,
        "every proposal names its model: {counts:?}"
    );
    let credit = model_credit(&reference);
    assert_eq!(credit[0].0, "useless", "the cheaper model is tried first: {credit:?}");
    assert!(of("good") >= 9, "most proposals go to the model that earns: {counts:?}");
    assert!(
        credit.iter().any(|(m, improved, _)| m == "good" && *improved),
        "{credit:?}"
    );
    assert!(
        credit.iter().all(|(m, improved, _)| m != "useless" || !improved),
        "{credit:?}"
    );
    let spent = |name: &str| credit.iter().filter(|(m, ..)| m == name).map(|(.., c)| c).sum::<f64>();
    assert!(spent("useless") / (of("useless") as f64) < spent("good") / of("good") as f64);

    let fixed_dir = dir.path().join("fixed");
    std::fs::create_dir(&fixed_dir).unwrap();
    let fixed = experiment(&fixed_dir, &models, 5, "fixed", 14, USELESS_CHEAP, "");
    let fixed_db = fixed_dir.join("fixed.db");
    run_to_end(&fixed, &fixed_db);
    let fixed_counts = proposals_by_model(&fixed_db);
    println!("fixed weights: {fixed_counts:?}");
    let fixed_good = fixed_counts.iter().find(|(m, _)| m == "good").map_or(0, |(_, n)| *n);
    assert!(of("good") > fixed_good, "{counts:?} against {fixed_counts:?}");

    let status = ok(&metaforge(dir.path(), &["status", reference.to_str().unwrap()]));
    assert!(
        status.contains("meta-model credit") && status.contains("useless"),
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

/// Before either has written anything the bandit goes by price, so a useless model at
/// twenty times the price is hardly ever tried.
#[test]
fn the_bandit_does_not_pay_to_try_a_model_twenty_times_dearer() {
    let dir = tempfile::tempdir().unwrap();
    let models = start(dir.path());
    let exp = experiment(dir.path(), &models, 5, "thompson", 14, USELESS_DEAR, "");
    let db = dir.path().join("dear.db");
    run_to_end(&exp, &db);
    let counts = proposals_by_model(&db);
    let good = counts.iter().find(|(m, _)| m == "good").map_or(0, |(_, n)| *n);
    assert!(good >= 13, "{counts:?}");
}

/// A model's own cap: once the useless model's dollars are spent it is no longer offered,
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
        USELESS_DEAR,
        "budget_usd = 0.000001\nweight = 100.0",
    );
    let db = dir.path().join("capped.db");
    run_to_end(&exp, &db);
    let counts = proposals_by_model(&db);
    let of = |name: &str| counts.iter().find(|(m, _)| m == name).map_or(0, |(_, n)| *n);
    assert_eq!(of("useless"), 1, "one refused call, then never again: {counts:?}");
    assert_eq!(of("good"), 7, "{counts:?}");
    let reason: String = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT reason FROM proposals WHERE model = 'useless'", [], |r| r.get(0))
        .unwrap();
    assert!(reason.contains("models.meta.useless: cost cap"), "{reason}");
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
        &[
            "merge",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
    ));
    assert!(
        err.contains("agent model") && err.contains("main:") && err.contains("other"),
        "{err}"
    );
}
