//! `metaforge export`: agents found by a real (scripted-model) search, written as standalone
//! files and run with the real `openai` package against a real OpenAI-compatible server
//! (`metaforge serve` with the embedded model).

use std::path::Path;
use std::process::Command;

mod common;

use common::*;

fn agents_json(dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(dir.join("agents.json")).unwrap();
    serde_json::from_str::<serde_json::Value>(&text)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn exported_agents_run_outside_metaforge_against_a_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let db = finished_run(dir.path(), "exp.toml", 3, ARITH);
    let db = db.to_str().unwrap();
    let out = dir.path().join("agents");
    ok(&metaforge(
        dir.path(),
        &["export", db, "--out", out.to_str().unwrap(), "--top", "2"],
    ));
    let agents = agents_json(&out);
    assert_eq!(agents.len(), 2);
    let readme = std::fs::read_to_string(out.join("README.md")).unwrap();
    for a in &agents {
        let file = a["file"].as_str().unwrap();
        assert!(out.join(file).exists(), "{file}");
        assert!(
            readme.contains(file) && readme.contains(a["val_text"].as_str().unwrap()),
            "{readme}"
        );
        assert!(a["val"]["mean"].is_number() && a["model"] == "agent" && !a["lineage"].as_array().unwrap().is_empty());
    }
    let err = refused(&metaforge(
        dir.path(),
        &["export", db, "--out", out.to_str().unwrap(), "--front"],
    ));
    assert!(err.contains("not empty") && err.contains("fix:"), "{err}");
    let front_dir = dir.path().join("front");
    ok(&metaforge(
        dir.path(),
        &["export", db, "--out", front_dir.to_str().unwrap(), "--front"],
    ));
    let archive = metaforge::archive::Archive::open_existing(Path::new(db)).unwrap();
    let scored = archive.scored(metaforge::types::Split::Val).unwrap();
    assert_eq!(
        agents_json(&front_dir).len(),
        metaforge::archive::pareto_front(&scored, metaforge::archive::DEFAULT_OBJECTIVES).len()
    );

    let (_server, url) = start_server(24);
    let python = python_with_openai();
    for a in &agents {
        let file = out.join(a["file"].as_str().unwrap());
        let run = Command::new(&python)
            .arg(&file)
            .args(["--question", "What is 2 plus 3?", "--base-url", &url])
            .env_remove("OPENAI_BASE_URL")
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(
            !String::from_utf8_lossy(&run.stdout).trim().is_empty(),
            "{} printed nothing",
            file.display()
        );
    }
    let module = agents[0]["module"].as_str().unwrap();
    let imported = Command::new(&python)
        .current_dir(&out)
        .arg("-c")
        .arg(format!(
            "from {module} import forward; print(repr(forward({{'question': 'What is 4 plus 4?'}})))"
        ))
        .env("OPENAI_BASE_URL", &url)
        .output()
        .unwrap();
    assert!(
        imported.status.success(),
        "{}",
        String::from_utf8_lossy(&imported.stderr)
    );
    assert!(
        String::from_utf8_lossy(&imported.stdout).starts_with('\''),
        "forward returns a string"
    );
    // `choices` in an exported agent: the server's structured output holds the reply to
    // them, and a free reply is read as the gateway reads it (whole words: not the "a" of
    // "answer").
    let constrained = Command::new(&python)
        .current_dir(&out)
        .arg("-c")
        .arg(format!(
            "import {module} as m\nassert m._pick_choice('The answer is C.', list('ABCD')) == 'C'\nprint(m.llm('Is \"a wonderful film\" positive or negative?', choices=['positive', 'negative']))"
        ))
        .env("OPENAI_BASE_URL", &url)
        .output()
        .unwrap();
    assert!(
        constrained.status.success(),
        "{}",
        String::from_utf8_lossy(&constrained.stderr)
    );
    let label = String::from_utf8_lossy(&constrained.stdout).trim().to_string();
    assert!(["positive", "negative"].contains(&label.as_str()), "{label:?}");
}

/// `export-traces` writes one JSON line per proposal and per evaluation, with the prompt,
/// the reply, the diff from the parent, scores and cost; an existing file is never
/// overwritten (exit 2, the fix named).
#[test]
fn traces_hold_every_proposal_and_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    // Rewrites only: each stores the meta-model's prompt and reply.
    let exp = experiment(dir.path(), 1.0, 2);
    let db = dir.path().join("run.db");
    run_to_end(&exp, &db);
    let out = dir.path().join("traces.jsonl");
    let printed = ok(&metaforge(
        dir.path(),
        &["export-traces", db.to_str().unwrap(), "-o", out.to_str().unwrap()],
    ));
    assert!(printed.contains("proposals and"), "{printed}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |t: &str| lines.iter().filter(|l| l["type"] == t).collect::<Vec<_>>();
    assert_eq!(
        of("proposal").len() as i64,
        count(&db, "SELECT count(*) FROM proposals")
    );
    assert_eq!(
        of("evaluation").len() as i64,
        count(&db, "SELECT count(*) FROM evaluations")
    );
    let children: Vec<_> = of("proposal")
        .into_iter()
        .filter(|p| p["kind"] != "seed" && p["status"] == "evaluated")
        .collect();
    assert!(!children.is_empty());
    for p in &children {
        assert!(p["diff"].as_str().unwrap().starts_with("--- parent.py"), "{p}");
        assert!(p["val_score"].is_number() && p["parent_val_score"].is_number(), "{p}");
    }
    assert!(
        of("proposal")
            .iter()
            .any(|p| p["prompt"].is_string() && p["reply"].is_string()),
        "the meta-model's prompt and reply are there"
    );
    for e in of("evaluation") {
        assert!(
            e["cost_usd"].is_number() && e["score"].is_number() && e["candidate_name"].is_string(),
            "{e}"
        );
    }
    let again = metaforge(
        dir.path(),
        &["export-traces", db.to_str().unwrap(), "-o", out.to_str().unwrap()],
    );
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists; fix:"));
}
