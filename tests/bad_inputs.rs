//! Bad inputs get clear errors naming the file/key/line and the fix, exit code 2 (or 1 for
//! a candidate that fails `check`), and nothing stored is lost.

use std::path::Path;
use std::process::Command;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_metaforge")
}

fn run_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin()).current_dir(dir).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

const GOOD: &str = "name = \"x\"\n[domain]\nname = \"arith\"\n[models.meta]\nbackend = \"local\"\nmodel = \"smollm2-135m\"\n[models.agent]\nbackend = \"local\"\nmodel = \"smollm2-135m\"\n";

#[test]
fn config_with_unknown_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("exp.toml"),
        GOOD.replace("[domain]\n", "[domain]\nvalsize = 10\n"),
    )
    .unwrap();
    let (code, _, err) = run_in(dir.path(), &["run", "exp.toml"]);
    assert_eq!(code, 2);
    insta::assert_snapshot!(err);
}

#[test]
fn config_with_wrong_type() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("exp.toml"),
        GOOD.replace("[domain]\n", "[domain]\ntest_size = \"lots\"\n"),
    )
    .unwrap();
    let (code, _, err) = run_in(dir.path(), &["run", "exp.toml"]);
    assert_eq!(code, 2);
    insta::assert_snapshot!(err);
}

/// `dir/exp.toml`: GOOD on a user domain read from `dir/tasks.jsonl`.
fn write_user_domain_experiment(dir: &Path) {
    std::fs::write(
        dir.join("exp.toml"),
        GOOD.replace(
            "name = \"arith\"",
            "name = \"mine\"\npath = \"tasks.jsonl\"\nscorer = \"numeric\"",
        ),
    )
    .unwrap();
}

#[test]
fn missing_dataset() {
    let dir = tempfile::tempdir().unwrap();
    write_user_domain_experiment(dir.path());
    let (code, _, err) = run_in(dir.path(), &["run", "exp.toml", "--db", "r.db"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("domain.path") && err.contains("tasks.jsonl") && err.contains("fix:"),
        "{err}"
    );
}

#[test]
fn candidate_with_syntax_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("agent.py"),
        "from metaforge import llm\n\ndef forward(task:\n    return llm(task['question'])\n",
    )
    .unwrap();
    let (code, out, _) = run_in(dir.path(), &["check", "agent.py"]);
    assert_eq!(code, 1);
    insta::assert_snapshot!(out);
}

#[test]
fn resume_of_a_missing_archive_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run_in(dir.path(), &["resume", "nope.db"]);
    assert_eq!(code, 2);
    assert!(err.contains("nope.db") && err.contains("metaforge run"), "{err}");
}

#[test]
fn run_refuses_to_overwrite_an_existing_archive() {
    // An archive that already holds a run is never overwritten by `run`.
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    metaforge::archive::migrate(&conn).unwrap();
    conn.execute(
        "INSERT INTO runs(name, seed, config_toml, domain, created_at) VALUES ('old', 1, 'x', 'arith', 'now')",
        [],
    )
    .unwrap();
    drop(conn);
    std::fs::write(dir.path().join("exp.toml"), GOOD).unwrap();
    let (code, _, err) = run_in(dir.path(), &["run", "exp.toml", "--db", "r.db"]);
    assert_eq!(code, 2);
    assert!(err.contains("already holds a run") && err.contains("resume"), "{err}");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let name: String = conn.query_row("SELECT name FROM runs", [], |r| r.get(0)).unwrap();
    assert_eq!(name, "old");
}

/// Exit codes: 0 the command did what it was asked; 1 the thing run failed (a check error, a
/// sandbox that cannot start); 2 the input was wrong (arguments, config, files).
#[test]
fn exit_codes_separate_bad_input_from_a_failed_run() {
    let dir = tempfile::tempdir().unwrap();
    let seed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("archive/agents/direct_answer.py");
    let seed = seed.to_str().unwrap();
    std::fs::write(dir.path().join("broken.py"), "def forward(task):\n    return llm(\n").unwrap();
    let code = |args: &[&str], python: Option<&str>| {
        let mut cmd = Command::new(bin());
        cmd.current_dir(dir.path()).args(args);
        if let Some(p) = python {
            cmd.env("METAFORGE_PYTHON", p);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let cases: &[(&[&str], Option<&str>, i32, &str)] = &[
        (&["check", seed], None, 0, "ok"),
        (&["check", "broken.py"], None, 1, "error"),
        (
            &["eval", "broken.py", "--domain", "arith", "--n", "2"],
            None,
            1,
            "does not pass check",
        ),
        (&["doctor"], Some("/nonexistent/python3"), 1, "METAFORGE_PYTHON"),
        (&["check", "missing.py"], None, 2, "cannot read missing.py"),
        (
            &["eval", seed, "--domain", "nope", "--n", "2"],
            None,
            2,
            "not a built-in domain",
        ),
        (&["run", "missing.toml"], None, 2, "cannot read experiment file"),
        (&["status", "missing.db"], None, 2, "does not exist"),
        (&["no-such-command"], None, 2, "unrecognized subcommand"),
    ];
    for (args, python, want, says) in cases {
        let (got, err) = code(args, *python);
        assert_eq!(got, *want, "metaforge {}: {err}", args.join(" "));
        assert!(
            err.contains(says),
            "metaforge {}: expected {says:?} in:\n{err}",
            args.join(" ")
        );
    }
}

/// A bad line of the user's dataset is named in the user's file, not in a copy, and a run
/// that cannot start leaves no archive behind (the corrected rerun would be refused).
#[test]
fn a_bad_dataset_line_names_the_users_file_and_leaves_no_archive() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tasks.jsonl"),
        "{\"question\": \"1+1?\", \"answer\": 2}\nnot json\n",
    )
    .unwrap();
    write_user_domain_experiment(dir.path());
    let (code, _, err) = run_in(dir.path(), &["run", "exp.toml", "--db", "r.db"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("error: tasks.jsonl:2: not a JSON object"), "{err}");
    assert!(!err.contains("metaforge-run-files"), "{err}");
    assert!(!dir.path().join("r.db").exists(), "nothing is left behind");
    let (code, _, err) = run_in(dir.path(), &["run", "exp.toml", "--db", "r.db"]);
    assert_eq!(code, 2, "the same refusal, not 'already holds a run': {err}");
}
