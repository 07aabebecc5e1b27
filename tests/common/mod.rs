//! Helpers shared by the integration tests that drive the real binary with SCRIPTED models
//! (canned replies from tests/fixtures/scripted_*.json): loop logic, resume, archives.
#![allow(dead_code)]

pub mod faulty_endpoint;
pub mod two_meta_models;

use std::path::{Path, PathBuf};

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

use rusqlite::Connection;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_metaforge")
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The `[domain]` block of the small built-in arith experiment.
pub const ARITH: &str = "name = \"arith\"\nval_size = 6\ntest_size = 6\n";

/// A small experiment on the arith domain with scripted models; `rewrite` share as given.
pub fn experiment(dir: &Path, rewrite: f64, generations: u32) -> PathBuf {
    write_experiment(dir, "exp.toml", 3, ARITH, rewrite, generations)
}

/// Writes `dir/file`: an experiment with scripted models, run seed `seed` and the given
/// `[domain]` block.
pub fn write_experiment(dir: &Path, file: &str, seed: u64, domain: &str, rewrite: f64, generations: u32) -> PathBuf {
    let text = format!(
        r#"name = "loop-test"
seed = {seed}
[domain]
{domain}[models.meta]
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
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    path
}

/// An agent-role gateway on a SCRIPTED backend that answers every call with `reply`, with no
/// cache and no budget: for library-level tests of the evaluator.
pub fn scripted_gateway(reply: &str) -> metaforge::llm::Gateway {
    use metaforge::llm::{Budget, Gateway, Role, ScriptedBackend};
    let mcfg: metaforge::config::ModelConfig =
        toml::from_str("backend = \"scripted\"\nmodel = \"s\"\nscript = \"x\"").unwrap();
    Gateway::new(
        Role::Agent,
        std::sync::Arc::new(ScriptedBackend::new("s", vec![reply.into()])),
        &mcfg,
        None,
        std::sync::Arc::new(Budget::unlimited()),
    )
}

/// The search's evaluator on this machine, without guards or episodes, over `gateway`: for
/// library-level tests of evaluation.
pub fn plain_evaluator<'a>(
    gateway: &'a metaforge::llm::Gateway,
    cfg: &'a metaforge::config::EvaluationConfig,
    scorer: metaforge::domain::Scorer,
) -> metaforge::evaluate::Evaluator<'a> {
    metaforge::evaluate::Evaluator {
        gateway,
        models: None,
        cfg,
        scorer,
        agent_contract: None,
        require_call_contracts: false,
        episodic: None,
        executor: &metaforge::executor::Executor::Local,
    }
}

pub fn count(db: &Path, sql: &str) -> i64 {
    Connection::open(db).unwrap().query_row(sql, [], |r| r.get(0)).unwrap()
}

/// Polls a live or half-made archive without creating it: 0 until the run has made it (a
/// process killed before its first commit leaves a file without tables).
pub fn count_or_zero(db: &Path, sql: &str) -> i64 {
    if !db.exists() {
        return 0;
    }
    Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| c.query_row(sql, [], |r| r.get(0)))
        .unwrap_or(0)
}

pub fn candidate_ids(db: &Path) -> Vec<String> {
    let c = Connection::open(db).unwrap();
    let mut s = c.prepare("SELECT id FROM candidates ORDER BY id").unwrap();
    s.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Invariants every archive must keep, whatever happened to the process.
pub fn assert_archive_sound(db: &Path) {
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

pub fn metaforge(cwd: &Path, args: &[&str]) -> Output {
    Command::new(bin()).current_dir(cwd).args(args).output().unwrap()
}

pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn refused(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(2), "expected a refusal, got {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs a scripted experiment to the end in `dir`, returning its archive.
pub fn finished_run(dir: &Path, file: &str, seed: u64, domain: &str) -> std::path::PathBuf {
    let exp = write_experiment(dir, file, seed, domain, 0.0, 2);
    let db = dir.join(file.replace(".toml", ".db"));
    run_to_end(&exp, &db);
    db
}

/// What `metaforge status --json` says of the archive `db`.
pub fn status_json(db: &Path) -> serde_json::Value {
    let out = Command::new(bin()).args(["status", "--json"]).arg(db).output().unwrap();
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}: {}", String::from_utf8_lossy(&out.stderr)))
}

/// Makes the scripted agent model of the experiment at `exp` take `latency_ms` a call, so
/// a search is slow enough to watch, stop or kill mid-step.
pub fn slow_agent(exp: &Path, latency_ms: u64) {
    let text = std::fs::read_to_string(exp).unwrap().replace(
        "model = \"agent\"\n",
        &format!("model = \"agent\"\nlatency_ms = {latency_ms}\n"),
    );
    std::fs::write(exp, text).unwrap();
}

/// `metaforge run --quiet EXP --db DB`, which must succeed; returns what it printed.
pub fn run_to_end(exp: &Path, db: &Path) -> String {
    let out = Command::new(bin())
        .args(["run", "--quiet"])
        .arg(exp)
        .arg("--db")
        .arg(db)
        .output()
        .unwrap();
    ok(&out)
}

/// One embedded model decoding at a time in a test binary. Each takes every core, and two
/// or more on a small CI machine spin against each other until a deadline passes.
pub fn one_model_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A `metaforge serve` child, killed on drop; it holds the binary's one model while it lives.
pub struct Server {
    child: Child,
    _model: std::sync::MutexGuard<'static, ()>,
}
impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `metaforge serve` running the embedded model on a free port; killed when dropped.
pub fn start_server(max_tokens: u32) -> (Server, String) {
    let one = one_model_at_a_time();
    let mut child = Command::new(env!("CARGO_BIN_EXE_metaforge"))
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--max-tokens",
            &max_tokens.to_string(),
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let url = loop {
        let line = lines.next().expect("server exited before listening").unwrap();
        if let Some(u) = line.strip_prefix("listening on ") {
            break u.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (Server { child, _model: one }, url)
}

/// The Python that `scripts/setup.sh` made with the `openai` package (for exported agents).
pub fn python_with_openai() -> PathBuf {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/python");
    assert!(
        python.exists(),
        "{} is missing; fix: run scripts/setup.sh (it installs the openai package there)",
        python.display()
    );
    python
}

/// Writes `dir/sevens.jsonl`, 24 tasks whose answer is always 7 (the scripted agent's "7"
/// replies score 1.0, its "Answer: 5" 0), and returns the `[domain]` block that uses it.
pub fn sevens_domain(dir: &Path, val_size: usize, test_size: usize) -> String {
    let tasks: String = (0..24)
        .map(|i| format!("{{\"id\": \"s{i}\", \"question\": \"What is {i} minus {i} plus 7?\", \"answer\": 7}}\n"))
        .collect();
    std::fs::write(dir.join("sevens.jsonl"), tasks).unwrap();
    format!("name = \"sevens\"\npath = \"sevens.jsonl\"\nscorer = \"numeric\"\nval_size = {val_size}\ntest_size = {test_size}\n")
}

/// `metaforge run --quiet EXP --db DB`, its stdout dropped and its stderr as given: a search
/// to watch, signal or kill.
pub fn spawn_run(exp: &Path, db: &Path, stderr: Stdio) -> Child {
    Command::new(bin())
        .args(["run", "--quiet"])
        .arg(exp)
        .arg("--db")
        .arg(db)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// What continues the search of `exp` in `db`: `run` while `db` holds no run, else `resume`.
pub fn run_or_resume(exp: &Path, db: &Path) -> Command {
    let mut cmd = Command::new(bin());
    if count_or_zero(db, "SELECT count(*) FROM runs") == 0 {
        cmd.args(["run", "--quiet"]).arg(exp).arg("--db").arg(db);
    } else {
        cmd.args(["resume", "--quiet"]).arg(db);
    }
    cmd
}

/// Steps committed to `db` so far (0 before the archive exists).
pub fn steps_done(db: &Path) -> i64 {
    count_or_zero(db, "SELECT count(*) FROM events WHERE kind = 'step_done'")
}

/// What two runs of one search must agree on: the candidates, every proposal (step, attempt,
/// kind, status, candidate) and every evaluation (candidate, split, stage, tasks, score).
pub fn archive_digest(db: &Path) -> (Vec<String>, Vec<String>, Vec<String>) {
    let c = Connection::open(db).unwrap();
    let rows = |sql: &str| -> Vec<String> {
        let mut s = c.prepare(sql).unwrap();
        s.query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    (
        rows("SELECT id FROM candidates ORDER BY id"),
        rows("SELECT step || ':' || attempt || ':' || kind || ':' || status || ':' || coalesce(candidate_id, '') FROM proposals ORDER BY step, attempt"),
        rows("SELECT candidate_id || ':' || split || ':' || stage || ':' || n || ':' || printf('%.6f', mean) FROM evaluations ORDER BY candidate_id, split, stage"),
    )
}

/// A gateway over the backend the model config `toml` names, with no cache and no budget.
pub fn gateway_from(toml: &str) -> metaforge::llm::Gateway {
    use metaforge::llm::{BackendFactory, Budget, Gateway, Role};
    let cfg: metaforge::config::ModelConfig = toml::from_str(toml).unwrap();
    let backend = BackendFactory::new().build(&cfg, "agent").unwrap();
    Gateway::new(
        Role::Agent,
        backend,
        &cfg,
        None,
        std::sync::Arc::new(Budget::unlimited()),
    )
}

/// Starts `metaforge run EXP --db DB` and SIGKILLs it once `steps` steps are committed, as a
/// machine going down would.
pub fn interrupted_run(exp: &Path, db: &Path, steps: i64) {
    let mut child = spawn_run(exp, db, Stdio::null());
    while steps_done(db) < steps {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The `twc` domain's settings with the SCRIPTED base agent (a fixed policy; no model).
pub fn scripted_episodes() -> metaforge::config::EpisodesConfig {
    metaforge::config::EpisodesConfig {
        base_agent: metaforge::config::BaseAgentKind::Scripted,
        max_steps: 8,
        items: 2,
        ..Default::default()
    }
}

/// The `twc` validation sequence of `n` episodes (the first half fills, the second is scored).
pub fn sequence(n: usize) -> Vec<metaforge::domain::Task> {
    let domain = metaforge::domain::Domain::load(&metaforge::config::DomainConfig {
        name: "twc".into(),
        path: None,
        scorer: None,
        val_size: n,
        test_size: 2,
        split_seed: Some(1),
        episodes: Some(scripted_episodes()),
        hidden_fields: metaforge::config::default_hidden_fields(),
        description: None,
        answer_format: None,
        choices: None,
    })
    .unwrap();
    domain.splits(1, n, 2).unwrap().0
}
