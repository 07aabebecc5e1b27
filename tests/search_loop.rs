//! The whole loop through the real binary, real SQLite files and real Python workers, with
//! SCRIPTED models (canned replies from tests/fixtures/scripted_*.json): these tests cover
//! the loop's logic, resume and bad inputs, not search quality.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use rusqlite::Connection;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_metaforge")
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A small experiment on the arith domain with scripted models; `rewrite` share as given.
fn experiment(dir: &Path, rewrite: f64, generations: u32) -> PathBuf {
    let text = format!(
        r#"name = "loop-test"
seed = 3
[domain]
name = "arith"
val_size = 6
test_size = 6
[models.meta]
backend = "scripted"
model = "meta"
script = "{meta}"
[models.agent]
backend = "scripted"
model = "agent"
script = "{agent}"
[search]
seeds = ["direct_answer", "chain_of_thought", "self_consistency"]
generations = {generations}
proposals_per_generation = 3
test_top_k = 2
[proposers]
operators = {ops}
rewrite = {rewrite}
[proposers.rewrite_options]
reflexion_rounds = 2
debug_rounds = 1
[evaluation]
tasks_in_flight = 3
task_timeout_s = 20
"#,
        meta = fixtures().join("scripted_meta.json").display(),
        agent = fixtures().join("scripted_agent.json").display(),
        ops = 1.0 - rewrite,
    );
    let path = dir.join("exp.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn count(db: &Path, sql: &str) -> i64 {
    Connection::open(db).unwrap().query_row(sql, [], |r| r.get(0)).unwrap()
}

fn candidate_ids(db: &Path) -> Vec<String> {
    let c = Connection::open(db).unwrap();
    let mut s = c.prepare("SELECT id FROM candidates ORDER BY id").unwrap();
    s.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Invariants every archive must keep, whatever happened to the process.
fn assert_archive_sound(db: &Path) {
    assert_eq!(
        count(
            db,
            "SELECT count(*) FROM (SELECT id FROM candidates GROUP BY id HAVING count(*) > 1)"
        ),
        0
    );
    assert_eq!(
        count(
            db,
            "SELECT count(*) FROM evaluations e LEFT JOIN candidates c ON c.id = e.candidate_id WHERE c.id IS NULL"
        ),
        0,
        "orphaned evaluations"
    );
    assert_eq!(
        count(
            db,
            "SELECT count(*) FROM task_results t LEFT JOIN evaluations e ON e.id = t.evaluation_id WHERE e.id IS NULL"
        ),
        0,
        "orphaned task results"
    );
    assert_eq!(count(db, "SELECT count(*) FROM candidates c WHERE NOT EXISTS (SELECT 1 FROM evaluations e WHERE e.candidate_id = c.id AND e.split = 'val')"), 0, "candidate without its validation evaluation");
    assert_eq!(count(db, "SELECT count(*) FROM evaluations e WHERE e.n != (SELECT count(*) FROM task_results t WHERE t.evaluation_id = e.id)"), 0, "evaluation missing task results");
}

#[test]
fn full_run_then_status() {
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), 0.0, 2);
    let db = dir.path().join("run.db");
    let out = Command::new(bin())
        .args(["run", "--quiet"])
        .arg(&exp)
        .arg("--db")
        .arg(&db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Direct Answer") && text.contains("val [95% CI]") && text.contains("finished"),
        "{text}"
    );
    // 3 seeds + 2 generations x 3 proposals + the test step
    assert_eq!(
        count(&db, "SELECT max(step) FROM events WHERE kind = 'step_done'"),
        3 + 6
    );
    assert_eq!(count(&db, "SELECT count(*) FROM proposals"), 3 + 6);
    assert!(count(&db, "SELECT count(*) FROM evaluations WHERE split = 'test'") >= 2);
    assert!(count(&db, "SELECT count(*) FROM lineage") >= 1);
    assert_archive_sound(&db);
    // The direct-answer seed gets "7" from the scripted model; the gold varies, so scores
    // are numbers in [0, 1], stored as REAL.
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM evaluations WHERE typeof(mean) != 'real' OR mean < 0 OR mean > 1"
        ),
        0
    );
    // status reads the same archive again
    let st = Command::new(bin())
        .args(["status", "--json"])
        .arg(&db)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    assert_eq!(v["finished"], true);
    assert!(v["leaderboard"].as_array().unwrap().len() >= 3);
}

#[test]
fn rewrite_failures_are_stored_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), 1.0, 1);
    let db = dir.path().join("run.db");
    let out = Command::new(bin())
        .args(["run", "--quiet"])
        .arg(&exp)
        .arg("--db")
        .arg(&db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The scripted meta model first proposes code that fails at run time (undefined name),
    // its reflexion replies are prose (unparseable, so the proposal stands), the debug
    // round returns a fix that is checked and evaluated too.
    let statuses: Vec<(String, String)> = {
        let c = Connection::open(&db).unwrap();
        let mut s = c
            .prepare("SELECT kind, status FROM proposals WHERE kind LIKE 'rewrite%' ORDER BY step, attempt")
            .unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert!(
        statuses.contains(&("rewrite".into(), "runtime_error".into())),
        "{statuses:?}"
    );
    assert!(
        statuses
            .iter()
            .any(|(k, s)| k == "rewrite:debug1" && (s == "evaluated" || s == "duplicate")),
        "{statuses:?}"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM proposals WHERE kind LIKE 'rewrite%' AND (prompt IS NULL OR reply IS NULL)"
        ),
        0,
        "prompt and reply are stored"
    );
    assert_archive_sound(&db);
}

#[test]
fn kill_9_at_random_moments_then_resume_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), 0.3, 3);
    // Reference: one uninterrupted run.
    let reference = dir.path().join("reference.db");
    let out = Command::new(bin())
        .args(["run", "--quiet"])
        .arg(&exp)
        .arg("--db")
        .arg(&reference)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let kills: usize = std::env::var("METAFORGE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let db = dir.path().join("killed.db");
    let mut rng_state = 0x2545_f491_4f6c_dd1du64;
    let mut killed = 0;
    let mut first = true;
    for _ in 0..kills {
        let mut cmd = Command::new(bin());
        if first {
            cmd.args(["run", "--quiet"]).arg(&exp).arg("--db").arg(&db);
        } else {
            cmd.args(["resume", "--quiet"]).arg(&db);
        }
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        let wait = Duration::from_millis(150 + rng_state % 900);
        std::thread::sleep(wait);
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
        }
        child.wait().unwrap();
        if db.exists() && count(&db, "SELECT count(*) FROM runs") > 0 {
            first = false;
            assert_archive_sound(&db);
        }
    }
    let out = Command::new(bin())
        .args(["resume", "--quiet"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_archive_sound(&db);
    let steps = count(&db, "SELECT count(DISTINCT step) FROM events WHERE kind = 'step_done'");
    println!(
        "kill-9 harness: {killed} kills, {steps} steps, {} candidates, {} evaluations checked",
        candidate_ids(&db).len(),
        count(&db, "SELECT count(*) FROM evaluations")
    );
    assert!(killed >= 1, "no kill landed mid-run");
    assert_eq!(
        candidate_ids(&db),
        candidate_ids(&reference),
        "same candidates as the uninterrupted run"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM evaluations"),
        count(&reference, "SELECT count(*) FROM evaluations"),
        "same evaluations as the uninterrupted run"
    );
}

#[test]
fn resume_works_from_another_directory() {
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path(), 0.0, 1);
    let db = dir.path().join("run.db");
    let mut child = Command::new(bin())
        .args(["run", "--quiet"])
        .arg(&exp)
        .arg("--db")
        .arg(&db)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    let _ = child.kill();
    child.wait().unwrap();
    let moved = tempfile::tempdir().unwrap();
    let target = moved.path().join("copy.db");
    // Copy the main file and WAL, as a user moving the run would.
    for ext in ["", "-wal", "-shm"] {
        let src = PathBuf::from(format!("{}{ext}", db.display()));
        if src.exists() {
            std::fs::copy(&src, format!("{}{ext}", target.display())).unwrap();
        }
    }
    std::fs::remove_dir_all(dir.path()).unwrap();
    let out = Command::new(bin())
        .current_dir(moved.path())
        .args(["resume", "--quiet", "copy.db"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_archive_sound(&target);
}
