//! ADAS compatibility: an archive in ADAS's own format (`tests/fixtures/adas_archive.json`,
//! written for this test from ADAS's seed agents: `forward(self, taskInfo)` with `Info` and
//! `LLMAgentBase`) is imported, its agents run unchanged in the real sandbox, and the search
//! continues from them. Models are SCRIPTED (canned replies, tests/fixtures/scripted_*.json).

use std::path::Path;

mod common;

use common::*;

#[test]
fn an_adas_archive_seeds_a_run_that_continues_the_search() {
    let dir = tempfile::tempdir().unwrap();
    // Every answer is 7, which the scripted model answers in ADAS's JSON format.
    let domain = sevens_domain(dir.path(), 8, 4);
    let base = write_experiment(dir.path(), "base.toml", 3, &domain, 0.0, 1);
    let text = std::fs::read_to_string(&base).unwrap().replace(
        "seeds = [\"direct_answer\", \"chain_of_thought\", \"self_consistency\"]",
        "seeds = []",
    );
    std::fs::write(&base, text).unwrap();
    let archive = fixtures().join("adas_archive.json");
    let db = dir.path().join("adas.db");
    let printed = ok(&metaforge(
        dir.path(),
        &[
            "import-adas",
            archive.to_str().unwrap(),
            "--experiment",
            base.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
        ],
    ));
    assert!(
        printed.contains("imported 3 ADAS agents") && printed.contains("14.1% [8.6%, 20.3%]"),
        "{printed}"
    );
    assert!(printed.contains("metaforge resume"), "{printed}");
    let fitness: String = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT detail FROM events WHERE kind = 'adas_import'", [], |r| r.get(0))
        .unwrap();
    let fitness: serde_json::Value = serde_json::from_str(&fitness).unwrap();
    assert_eq!(fitness["agents"][2]["generation"], 1);
    assert!((fitness["agents"][2]["test_fitness"]["median"].as_f64().unwrap() - 0.156).abs() < 1e-9);

    let status = ok(&metaforge(dir.path(), &["resume", "--quiet", db.to_str().unwrap()]));
    assert_archive_sound(&db);
    // Each imported seed shows the ADAS generation that made it.
    assert!(status.contains("ADAS generation 1"), "{status}");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&metaforge(dir.path(), &["--json", "status", db.to_str().unwrap()]))).unwrap();
    assert_eq!(json["adas_generations"].as_object().map(|m| m.len()), Some(3), "{json}");
    // The three ADAS programs ran unchanged, through Info/LLMAgentBase, and solved every task.
    let seeds = count(&db, "SELECT count(*) FROM candidates c JOIN evaluations e ON e.candidate_id = c.id AND e.split = 'val' WHERE c.operator = 'seed' AND c.code LIKE '%def forward(self, taskInfo)%' AND e.outcome = 'ok' AND e.mean = 1.0");
    assert_eq!(seeds, 3, "every imported agent scored 1.0");
    // The critic loop stopped at once ("correct": "True"), so Reflexion made exactly 2 calls per task.
    let calls = count(&db, "SELECT e.llm_calls FROM evaluations e JOIN candidates c ON c.id = e.candidate_id WHERE c.name = 'Self-Refine (Reflexion)' AND e.split = 'val'");
    assert_eq!(calls, 16, "2 calls x 8 tasks");
    assert!(
        count(&db, "SELECT count(*) FROM proposals WHERE kind != 'seed'") > 0,
        "the search went on"
    );
    assert!(
        count(&db, "SELECT count(*) FROM candidates WHERE operator != 'seed'") > 0,
        "and found children"
    );

    // An ADAS agent exports as a standalone file that carries Info and LLMAgentBase.
    let out = dir.path().join("export");
    ok(&metaforge(
        dir.path(),
        &[
            "export",
            db.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--top",
            "1",
        ],
    ));
    let agents: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("agents.json")).unwrap()).unwrap();
    let file = std::fs::read_to_string(out.join(agents[0]["file"].as_str().unwrap())).unwrap();
    assert_eq!(agents[0]["adas"], true);
    assert!(file.contains("class LLMAgentBase") && file.contains("run_adas_forward(_adas_forward, task)"));
}

#[test]
fn a_malformed_adas_archive_is_refused_with_the_entry_named() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"[{"name": "x", "code": "def forward(self, taskInfo):\n    return 1\n", "fitness": "great"}]"#,
    )
    .unwrap();
    let err = refused(&metaforge(
        dir.path(),
        &["import-adas", bad.to_str().unwrap(), "--domain", "arith"],
    ));
    assert!(
        err.contains("entry 0 (x)") && err.contains("fitness") && err.contains("fix:"),
        "{err}"
    );
    assert!(!Path::new(&dir.path().join("runs")).exists(), "nothing was created");
    std::fs::write(&bad, r#"{"not": "a list"}"#).unwrap();
    let err = refused(&metaforge(dir.path(), &["import-adas", bad.to_str().unwrap()]));
    assert!(err.contains("is not an ADAS archive"), "{err}");
}

/// Each of the five archives ADAS published (tests/fixtures/adas/, copied unchanged) imports,
/// every agent of it, for the domains metaforge has built in and the default one otherwise.
#[test]
fn every_archive_adas_published_imports_whole() {
    let dir = tempfile::tempdir().unwrap();
    for (name, domain) in [
        ("arc", Some("arc")),
        ("drop", Some("drop")),
        ("mgsm", Some("mgsm")),
        ("gpqa", None),
        ("mmlu", None),
    ] {
        let file = fixtures().join(format!("adas/{name}_gpt3.5_results.json"));
        let entries: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let db = dir.path().join(format!("{name}.db"));
        let mut args = vec![
            "--json",
            "import-adas",
            file.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
        ];
        if let Some(d) = domain {
            args.extend(["--domain", d]);
        }
        let out: serde_json::Value = serde_json::from_str(&ok(&metaforge(dir.path(), &args))).unwrap();
        assert_eq!(out["agents"].as_array().unwrap().len(), entries.len(), "{name}");
    }
}

/// Every agent of ADAS's ARC, MGSM and DROP archives runs unchanged on the built-in domain
/// without a runtime error. ARC's agents ask their `self` to run generated `transform` code
/// on the examples and the test input; those helpers exist. The SCRIPTED model answers every
/// call with one JSON object carrying every field these agents ask for.
#[test]
fn adas_agents_run_unchanged_on_the_built_in_domains() {
    use metaforge::config::EvaluationConfig;
    use metaforge::domain::{Domain, Scorer};

    let reply = serde_json::json!({
        "thinking": "Copy the grid.",
        "reasoning": "Copy the grid.",
        "code": "def transform(grid):\n    return [list(row) for row in grid]",
        "answer": "7",
        "feedback": "fine",
        "correct": "True",
    })
    .to_string();
    let gateway = scripted_gateway(&reply);
    let cfg = EvaluationConfig::default();
    let numpy = numpy_installed();
    let dir = tempfile::tempdir().unwrap();
    for (name, scorer) in [("arc", Scorer::Grid), ("mgsm", Scorer::Numeric), ("drop", Scorer::F1)] {
        let file = fixtures().join(format!("adas/{name}_gpt3.5_results.json"));
        let entries: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let exp = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &exp,
            format!("name = \"{name}\"\n[domain]\nname = \"{name}\"\nval_size = 2\ntest_size = 2\n"),
        )
        .unwrap();
        let exp = metaforge::config::Experiment::load(&exp).unwrap();
        let domain = Domain::load(&exp.domain).unwrap();
        assert_eq!(domain.scorer, scorer);
        let tasks: Vec<_> = domain.tasks.iter().take(2).cloned().collect();
        let evaluator = plain_evaluator(&gateway, &cfg, domain.scorer.clone());
        let mut with_helpers = 0;
        for entry in &entries {
            let code = entry["code"].as_str().unwrap();
            let e = evaluator
                .evaluate(code, &tasks, metaforge::types::Split::Val, &|| {})
                .unwrap();
            for t in &e.tasks {
                // Two of ADAS's ARC agents import numpy themselves; where it is not installed
                // that is their error, and it must say so.
                if !numpy && code.contains("import numpy") {
                    assert!(
                        t.error.as_deref().unwrap_or("").contains("No module named 'numpy'"),
                        "{t:?}"
                    );
                    continue;
                }
                assert_eq!(
                    t.outcome.as_str(),
                    "ok",
                    "{name}: {}: {}",
                    entry["name"],
                    t.error.as_deref().unwrap_or("")
                );
            }
            with_helpers += usize::from(code.contains("get_test_output_from_code"));
        }
        if name == "arc" {
            assert!(
                with_helpers > 10,
                "most ADAS ARC agents call the helpers ({with_helpers})"
            );
        }
    }
}

/// Every agent of ADAS's ARC, MGSM and DROP archives, imported with `import-adas --domain`,
/// runs unchanged through a whole `resume` whose agent model is an OpenAI-compatible endpoint
/// on 127.0.0.1 (`metaforge::llm::Endpoint`, the server of `metaforge serve`, fronting a
/// SCRIPTED model that answers every call with one JSON object carrying every field these
/// agents ask for). The funnel shows no runtime error.
#[test]
fn imported_adas_agents_run_through_a_local_endpoint_without_runtime_errors() {
    use metaforge::llm::{Endpoint, ScriptedBackend};
    let reply = serde_json::json!({
        "thinking": "Copy the grid.",
        "reasoning": "Copy the grid.",
        "code": "def transform(grid):\n    return [list(row) for row in grid]",
        "answer": "7",
        "feedback": "fine",
        "correct": "True",
    })
    .to_string();
    let endpoint = Endpoint::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", endpoint.local_addr());
    std::thread::spawn(move || endpoint.run(std::sync::Arc::new(ScriptedBackend::new("adas", vec![reply])), 512));
    let numpy = numpy_installed();
    let dir = tempfile::tempdir().unwrap();
    let exp = dir.path().join("adas.toml");
    std::fs::write(
        &exp,
        format!(
            r#"name = "adas"
[domain]
name = "arith"
val_size = 2
test_size = 1
[models.meta]
backend = "openai"
model = "adas"
base_url = "{url}"
[models.agent]
backend = "openai"
model = "adas"
base_url = "{url}"
max_concurrency = 16
[search]
seeds = []
generations = 0
test_top_k = 1
[evaluation]
tasks_in_flight = 2
"#
        ),
    )
    .unwrap();
    for name in ["arc", "mgsm", "drop"] {
        let file = fixtures().join(format!("adas/{name}_gpt3.5_results.json"));
        let entries: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let db = dir.path().join(format!("{name}.db"));
        ok(&metaforge(
            dir.path(),
            &[
                "import-adas",
                file.to_str().unwrap(),
                "--domain",
                name,
                "--experiment",
                exp.to_str().unwrap(),
                "--db",
                db.to_str().unwrap(),
            ],
        ));
        let status = ok(&metaforge(dir.path(), &["resume", "--quiet", db.to_str().unwrap()]));
        assert_archive_sound(&db);
        let seeds = count(&db, "SELECT count(*) FROM proposals WHERE kind = 'seed'");
        assert_eq!(
            seeds as usize,
            entries.len(),
            "{name}: every agent was evaluated\n{status}"
        );
        // Two of ADAS's ARC agents import numpy themselves; where it is not installed that
        // is their own runtime error, and the funnel counts exactly those.
        let need_numpy = entries
            .iter()
            .filter(|e| e["code"].as_str().unwrap().contains("import numpy"))
            .count();
        let expected = if numpy { 0 } else { need_numpy };
        assert!(
            status.contains(&format!("(runtime errors {expected})")),
            "{name}: expected {expected} runtime errors\n{status}"
        );
        let model_calls = count(&db, "SELECT coalesce(sum(llm_calls), 0) FROM evaluations");
        assert!(
            model_calls >= seeds * 2,
            "{name}: the agents called the endpoint ({model_calls})"
        );
    }
}

/// Whether the Python that runs candidates can import numpy: two of ADAS's ARC agents import
/// it themselves, and where it is missing that is their own error.
fn numpy_installed() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import numpy"])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}
