//! Archives that travel: lineage, merge, bundles, and runs whose files live inside the
//! archive. Real binary, real SQLite files, real Python workers, SCRIPTED models (canned
//! replies from tests/fixtures/scripted_*.json).

use std::path::Path;

mod common;

use common::*;

#[test]
fn lineage_lists_every_candidate_ancestry_and_dot() {
    let dir = tempfile::tempdir().unwrap();
    let db = finished_run(dir.path(), "exp.toml", 3, ARITH);
    let db = db.to_str().unwrap();
    let report: serde_json::Value =
        serde_json::from_str(&ok(&metaforge(dir.path(), &["lineage", db, "--json"]))).unwrap();
    let nodes = report["nodes"].as_array().unwrap();
    assert_eq!(
        nodes.len() as i64,
        count(Path::new(db), "SELECT count(*) FROM candidates")
    );
    let edges: usize = nodes.iter().map(|n| n["parents"].as_array().unwrap().len()).sum();
    assert_eq!(edges as i64, count(Path::new(db), "SELECT count(*) FROM lineage"));
    // Every improvement names a producer and really beats its best parent.
    for imp in report["improvements"].as_array().unwrap() {
        assert!(imp["to"].as_f64() > imp["from"].as_f64(), "{imp}");
        assert_ne!(imp["operator"], "seed");
    }

    let child = nodes
        .iter()
        .rev()
        .find(|n| !n["parents"].as_array().unwrap().is_empty())
        .expect("a child");
    let id = child["id"].as_str().unwrap();
    let ancestry: serde_json::Value = serde_json::from_str(&ok(&metaforge(
        dir.path(),
        &["lineage", db, "--of", &id[..10], "--json"],
    )))
    .unwrap();
    let chain = ancestry["nodes"].as_array().unwrap();
    assert_eq!(chain.last().unwrap()["id"], id, "the candidate itself comes last");
    assert!(chain.len() >= 2);
    assert_eq!(chain[0]["operator"], "seed", "every ancestry starts at a seed");

    let dot = ok(&metaforge(dir.path(), &["lineage", db, "--dot"]));
    assert!(dot.starts_with("digraph lineage {"), "{dot}");
    assert_eq!(dot.matches(" -> ").count(), edges);
    let text = ok(&metaforge(dir.path(), &["lineage", db]));
    assert!(text.contains("improvements over the best parent"), "{text}");
    let err = refused(&metaforge(dir.path(), &["lineage", db, "--of", "zzzz"]));
    assert!(err.contains("no candidate id starts with \"zzzz\""), "{err}");
}

#[test]
fn merge_unites_by_content_hash_and_the_result_resumes() {
    let dir = tempfile::tempdir().unwrap();
    // Two searches with different seeds over the same validation split.
    let same_split = format!("{ARITH}split_seed = 11\n");
    let a = finished_run(dir.path(), "a.toml", 3, &same_split);
    let b = finished_run(dir.path(), "b.toml", 5, &same_split);
    let merged = dir.path().join("merged.db");
    let (a_s, b_s, m_s) = (a.to_str().unwrap(), b.to_str().unwrap(), merged.to_str().unwrap());
    let summary: serde_json::Value =
        serde_json::from_str(&ok(&metaforge(dir.path(), &["merge", a_s, b_s, "-o", m_s, "--json"]))).unwrap();

    let mut union = candidate_ids(&a);
    union.extend(candidate_ids(&b));
    union.sort();
    union.dedup();
    assert_eq!(candidate_ids(&merged), union, "one row per program, from both runs");
    assert!(
        summary["candidates_shared"].as_u64().unwrap() >= 3,
        "the seeds are shared: {summary}"
    );
    assert_eq!(
        summary["candidates_added"].as_u64().unwrap() as usize,
        union.len() - candidate_ids(&a).len()
    );
    let lineage_union = count(&a, "SELECT count(*) FROM lineage") + summary["lineage_added"].as_i64().unwrap();
    assert_eq!(count(&merged, "SELECT count(*) FROM lineage"), lineage_union);
    assert_eq!(
        count(&merged, "SELECT count(*) FROM evaluations"),
        count(&a, "SELECT count(*) FROM evaluations") + summary["evaluations_added"].as_i64().unwrap()
    );
    assert_eq!(
        count(&merged, "SELECT count(*) FROM merged_proposals"),
        count(&b, "SELECT count(*) FROM proposals"),
        "B's proposal history is kept"
    );
    assert_archive_sound(&merged);
    // B's candidates were written after all of A's: selection still sees every candidate
    // once, in step order (`Archive::scored` no longer asks SQLite to sort).
    let scored = metaforge::archive::Archive::open_existing(&merged)
        .unwrap()
        .scored(metaforge::types::Split::Val)
        .unwrap();
    let order: Vec<(u64, String)> = scored.iter().map(|s| (s.step, s.id.clone())).collect();
    let mut sorted = order.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(order, sorted, "scored candidates in (step, id) order, each once");
    assert_eq!(order.len(), union.len(), "every candidate is fully evaluated on val");
    // The merged archive is A's run, with B's candidates as possible parents: it resumes,
    // reports, and A and B are untouched.
    ok(&metaforge(dir.path(), &["status", m_s]));
    ok(&metaforge(dir.path(), &["resume", "--quiet", m_s]));
    assert_eq!(count(&a, "SELECT count(*) FROM runs"), 1);
    assert_eq!(
        count(&merged, "SELECT count(*) FROM runs WHERE merged_at IS NOT NULL"),
        1
    );

    // Refusals: an existing output, and runs scored on different validation tasks.
    let err = refused(&metaforge(dir.path(), &["merge", a_s, b_s, "-o", m_s]));
    assert!(err.contains("already exists"), "{err}");
    let c = finished_run(dir.path(), "c.toml", 9, ARITH);
    let other = dir.path().join("other.db");
    let err = refused(&metaforge(
        dir.path(),
        &["merge", a_s, c.to_str().unwrap(), "-o", other.to_str().unwrap()],
    ));
    assert!(
        err.contains("validation tasks") && err.contains("split_seed") && err.contains("--force"),
        "{err}"
    );
    assert!(!other.exists(), "a refused merge writes nothing");
    ok(&metaforge(
        dir.path(),
        &[
            "merge",
            a_s,
            c.to_str().unwrap(),
            "-o",
            other.to_str().unwrap(),
            "--force",
        ],
    ));
    assert_archive_sound(&other);
}

#[test]
fn a_user_domain_run_moves_as_one_bundle_and_resumes_elsewhere() {
    let home = tempfile::tempdir().unwrap();
    let tasks: String = (1..=30)
        .map(|i| {
            format!(
                "{{\"id\": \"t{i}\", \"question\": \"What is {i} plus {i}?\", \"answer\": {}}}\n",
                2 * i
            )
        })
        .collect();
    std::fs::write(home.path().join("doubles.jsonl"), tasks).unwrap();
    let domain = "name = \"doubles\"\npath = \"doubles.jsonl\"\nscorer = \"numeric\"\nval_size = 6\ntest_size = 6\n";
    let exp = write_experiment(home.path(), "exp.toml", 3, domain, 0.0, 2);
    let db = home.path().join("run.db");
    interrupted_run(&exp, &db, 2);
    let config: String = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("SELECT config_toml FROM runs", [], |r| r.get(0))
        .unwrap();
    assert!(
        !config.contains(home.path().to_str().unwrap()),
        "no machine path is stored:\n{config}"
    );

    let bundle = home.path().join("run.mfbundle");
    ok(&metaforge(
        home.path(),
        &["export-bundle", "run.db", "-o", bundle.to_str().unwrap()],
    ));
    // Another machine: a different folder layout, the original folder (data, config) gone.
    let elsewhere = tempfile::tempdir().unwrap();
    let arrived = elsewhere.path().join("incoming").join("run.mfbundle");
    std::fs::create_dir_all(arrived.parent().unwrap()).unwrap();
    std::fs::copy(&bundle, &arrived).unwrap();
    drop(home);
    let imported = ok(&metaforge(
        elsewhere.path(),
        &["import-bundle", "incoming/run.mfbundle", "-o", "restored.db"],
    ));
    assert!(
        imported.contains("3 stored file(s)"),
        "the tasks and both scripts travel: {imported}"
    );
    let resumed = ok(&metaforge(elsewhere.path(), &["resume", "--quiet", "restored.db"]));
    assert!(resumed.contains("finished"), "{resumed}");
    let restored = elsewhere.path().join("restored.db");
    assert_archive_sound(&restored);
    assert!(
        count(&restored, "SELECT count(*) FROM task_results WHERE task_id LIKE 't%'") > 0,
        "the user domain's tasks"
    );

    // A damaged transfer is refused, and nothing is written.
    let bytes = std::fs::read(&arrived).unwrap();
    let cut = elsewhere.path().join("cut.mfbundle");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let err = refused(&metaforge(
        elsewhere.path(),
        &["import-bundle", "cut.mfbundle", "-o", "cut.db"],
    ));
    assert!(
        err.contains("not a usable metaforge bundle") && err.contains("fix:"),
        "{err}"
    );
    assert!(!elsewhere.path().join("cut.db").exists());
}

#[test]
fn held_out_test_on_demand_only_adds_and_only_for_finished_runs() {
    let dir = tempfile::tempdir().unwrap();
    let db = finished_run(dir.path(), "exp.toml", 3, ARITH);
    let s = db.to_str().unwrap();
    let tested = "SELECT count(*) FROM evaluations WHERE split = 'test'";
    let before = count(&db, tested);
    let out = metaforge(dir.path(), &["test", s, "--top", "50", "--front"]);
    ok(&out);
    let after = count(&db, tested);
    let feasible = count(
        &db,
        "SELECT count(*) FROM evaluations WHERE split = 'val' AND stage = 'full' AND outcome = 'ok'",
    );
    assert_eq!(
        after, feasible,
        "every feasible candidate is tested with --top 50 (before: {before})"
    );
    assert!(after > before);
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("{} new held-out test", after - before)));
    ok(&metaforge(dir.path(), &["test", s, "--top", "50"]));
    assert_eq!(count(&db, tested), after, "nothing is tested twice");
    assert_archive_sound(&db);

    // An unfinished run: refused with the fix.
    let exp = write_experiment(dir.path(), "live.toml", 4, ARITH, 0.0, 2);
    let live = dir.path().join("live.db");
    interrupted_run(&exp, &live, 1);
    let err = refused(&metaforge(dir.path(), &["test", live.to_str().unwrap()]));
    assert!(
        err.contains("still in progress") && err.contains("metaforge resume"),
        "{err}"
    );
}

/// The user's own seed agents, named by a glob beside a built-in seed, start a run; the run
/// carries them, and resumes on another machine where they are gone.
#[test]
fn seeds_given_as_files_start_a_run_that_resumes_without_them() {
    let home = tempfile::tempdir().unwrap();
    let agents = home.path().join("my_agents");
    std::fs::create_dir(&agents).unwrap();
    for (file, name, instruction) in [
        ("terse.py", "Terse", "Reply with a single number."),
        ("careful.py", "Careful", "Think step by step, then answer."),
    ] {
        std::fs::write(
            agents.join(file),
            format!("\"\"\"name: {name}\nidea: mine.\n\"\"\"\nfrom metaforge import llm\n\n\ndef forward(task):\n    return llm(\"{instruction} \" + task[\"question\"])\n"),
        )
        .unwrap();
    }
    let exp = write_experiment(home.path(), "exp.toml", 3, ARITH, 0.0, 1);
    let text = std::fs::read_to_string(&exp).unwrap().replace(
        "seeds = [\"direct_answer\", \"chain_of_thought\", \"self_consistency\"]",
        "seeds = [\"my_agents/*.py\", \"direct_answer\"]",
    );
    std::fs::write(&exp, text).unwrap();
    let db = home.path().join("run.db");
    interrupted_run(&exp, &db, 1);
    assert_eq!(
        count(&db, "SELECT count(*) FROM run_files WHERE key LIKE 'search.seeds.%'"),
        2
    );
    let bundle = home.path().join("run.mfbundle");
    ok(&metaforge(
        home.path(),
        &["export-bundle", "run.db", "-o", bundle.to_str().unwrap()],
    ));
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::copy(&bundle, elsewhere.path().join("run.mfbundle")).unwrap();
    drop(home);
    ok(&metaforge(
        elsewhere.path(),
        &["import-bundle", "run.mfbundle", "-o", "restored.db"],
    ));
    let resumed = ok(&metaforge(elsewhere.path(), &["resume", "--quiet", "restored.db"]));
    assert!(resumed.contains("finished"), "{resumed}");
    let restored = elsewhere.path().join("restored.db");
    assert_archive_sound(&restored);
    let seeds: Vec<String> = rusqlite::Connection::open(&restored)
        .unwrap()
        .prepare("SELECT c.name FROM candidates c JOIN proposals p ON p.candidate_id = c.id WHERE p.kind = 'seed' ORDER BY p.step")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        seeds,
        ["Careful", "Terse", "Direct Answer"],
        "the glob's files in order, then the built-in"
    );

    // A glob that matches nothing is refused before anything is created.
    let dir = tempfile::tempdir().unwrap();
    let exp = write_experiment(dir.path(), "exp.toml", 3, ARITH, 0.0, 1);
    let text = std::fs::read_to_string(&exp).unwrap().replace(
        "seeds = [\"direct_answer\", \"chain_of_thought\", \"self_consistency\"]",
        "seeds = [\"none/*.py\"]",
    );
    std::fs::write(&exp, text).unwrap();
    let err = refused(&metaforge(dir.path(), &["run", "exp.toml", "--db", "r.db"]));
    assert!(
        err.contains("\"none/*.py\" matches no .py file") && err.contains("fix:"),
        "{err}"
    );
    assert!(!dir.path().join("r.db").exists());
}

/// A merged archive holds B's candidates under B's step numbers, not in step order after A's.
/// Resuming it with steps in flight, whose lagged views filter rows by step, must still finish
/// soundly and be a pure function of the archive: two resumes of copies agree row by row.
#[test]
fn a_merged_archive_resumes_with_steps_in_flight_deterministically() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let same_split = format!("{ARITH}split_seed = 11\n");
    let exp = write_experiment(dir.path(), "a.toml", 3, &same_split, 0.3, 4);
    let text = std::fs::read_to_string(&exp)
        .unwrap()
        .replace("[search]\n", "[search]\nsteps_in_flight = 3\n");
    std::fs::write(&exp, text).unwrap();
    slow_agent(&exp, 20);
    // A stops partway (after the steps in flight commit); B runs to its end.
    let a = dir.path().join("a.db");
    let child = common::spawn_run(&exp, &a, Stdio::null());
    while common::steps_done(&a) < 5 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    assert_eq!(child.wait_with_output().unwrap().status.code(), Some(130));
    let b = finished_run(dir.path(), "b.toml", 5, &same_split);
    let merged = dir.path().join("merged.db");
    ok(&metaforge(
        dir.path(),
        &[
            "merge",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "-o",
            merged.to_str().unwrap(),
        ],
    ));
    let copy = dir.path().join("copy.db");
    std::fs::copy(&merged, &copy).unwrap();
    for db in [&merged, &copy] {
        ok(&metaforge(dir.path(), &["resume", "--quiet", db.to_str().unwrap()]));
        assert_archive_sound(db);
    }
    let json: serde_json::Value = serde_json::from_str(&ok(&metaforge(
        dir.path(),
        &["--json", "status", merged.to_str().unwrap()],
    )))
    .unwrap();
    assert_eq!(json["finished"], true, "{json}");
    assert_eq!(common::archive_digest(&merged), common::archive_digest(&copy));
}

/// Calls brought in with `--cache-from` were paid by the run that sent them: a resumed run
/// preloads a model's own caps with what it sent itself, not with what it imported.
#[test]
fn a_models_own_spend_leaves_out_calls_imported_from_another_run() {
    use metaforge::archive::Archive;
    use metaforge::types::Role;
    let dir = tempfile::tempdir().unwrap();
    let other = finished_run(dir.path(), "other.toml", 4, ARITH);
    let db = finished_run(dir.path(), "exp.toml", 3, ARITH);
    let archive = Archive::open_existing(&db).unwrap();
    let model: String = archive
        .connection()
        .query_row("SELECT model FROM llm_calls WHERE role = 'agent' LIMIT 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    let before = archive.model_usage(Role::Agent, &model).unwrap();
    assert!(before.0 > 0, "the run sent agent calls: {before:?}");
    let calls = |a: &Archive| count(a.path(), "SELECT count(*) FROM llm_calls");
    let held = calls(&archive);
    let copied = archive.import_call_cache(&other).unwrap();
    assert!(
        copied > 0,
        "the other run's split differs, so some of its calls are new"
    );
    assert_eq!(calls(&archive), held + copied as i64);
    assert_eq!(archive.model_usage(Role::Agent, &model).unwrap(), before);
    assert_eq!(
        archive.import_call_cache(&other).unwrap(),
        0,
        "a second import adds nothing"
    );
    assert_eq!(archive.model_usage(Role::Agent, &model).unwrap(), before);
}
