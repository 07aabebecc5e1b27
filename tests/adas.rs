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

    ok(&metaforge(dir.path(), &["resume", "--quiet", db.to_str().unwrap()]));
    assert_archive_sound(&db);
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
