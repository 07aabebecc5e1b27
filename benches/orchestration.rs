//! Orchestration overhead of a whole search with an instant model: `cargo bench --bench
//! orchestration`.
//!
//! A real search (sandboxed workers, RPC, scoring, archive writes, operators) runs with the
//! SCRIPTED backend, which answers instantly, so its wall time is what metaforge itself
//! costs. Printed: tasks evaluated, amortised time per task and tasks/s, against the baseline
//! ADAS uses — every program exec'd in one Python process with no sandbox, no RPC and no
//! archive — timed in the same run on the same programs and tasks, with the ratio. Then the
//! same experiment is rerun with `--cache-from` semantics and the model calls it had to send
//! are counted (the cache-hit path: zero).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use metaforge::search::Search;

fn experiment(dir: &Path) -> std::path::PathBuf {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let text = format!(
        "name = \"orchestration\"\nseed = 5\n[domain]\nname = \"arith\"\nval_size = 20\ntest_size = 20\n\
         [models.meta]\nbackend = \"scripted\"\nmodel = \"meta\"\nscript = \"{}\"\n\
         [models.agent]\nbackend = \"scripted\"\nmodel = \"agent\"\nscript = \"{}\"\n\
         [search]\nseeds = [\"all\"]\ngenerations = 4\nproposals_per_generation = 4\ntest_top_k = 3\n\
         [evaluation]\ntasks_in_flight = 4\n",
        fixtures.join("scripted_meta.json").display(),
        fixtures.join("scripted_agent.json").display()
    );
    let path = dir.join("exp.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn count(search: &Search, sql: &str) -> i64 {
    search.archive().connection().query_row(sql, [], |r| r.get(0)).unwrap()
}

/// ADAS's way: exec every program in this one process, instant stub model, no isolation.
const BASELINE: &str = r#"
import json, sys, time, types
jobs = json.load(open(sys.argv[1]))
m = types.ModuleType("metaforge")
def llm(p, *, temperature=None, n=1, json=False, max_tokens=None):
    return "Answer: 7" if n == 1 else ["Answer: 7"] * n
def answer_key(t):
    return str(t).strip().split()[-1] if str(t).strip() else ""
def majority(a):
    a = list(a)
    return max(a, key=a.count) if a else ""
m.llm, m.answer_key, m.majority = llm, answer_key, majority
sys.modules["metaforge"] = m
start = time.perf_counter()
done = 0
for job in jobs:
    ns = {"__name__": "candidate"}
    try:
        exec(compile(job["code"], "candidate.py", "exec"), ns)
    except Exception:
        continue
    for _ in range(job["n"]):
        try:
            ns["forward"]({"question": "What is 3 plus 4?"})
        except Exception:
            pass
        done += 1
print(done, (time.perf_counter() - start) * 1000)
"#;

/// Runs the experiment into `db`; returns the search and its wall time in seconds.
fn timed_search(exp: &Path, db: &Path) -> (Search, f64) {
    let start = Instant::now();
    let mut search = Search::create(exp, db, true).unwrap();
    search.run().unwrap();
    (search, start.elapsed().as_secs_f64())
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let exp = experiment(dir.path());
    // Once per process, not per search: resolving the interpreter (`python3` may be a
    // version-manager shim), probing the kernel's layers, starting the fork server,
    // compiling the check rules. Done before the clock starts, and printed, so both
    // searches below are timed warm.
    let start = Instant::now();
    metaforge::sandbox::python_interpreter().unwrap();
    metaforge::sandbox::python_prefixes().unwrap();
    metaforge::sandbox::Isolation::available();
    metaforge::check::RuleSet::embedded().unwrap();
    let server = metaforge::sandbox::fork_server::shared().is_some();
    println!(
        "start-up, once per process (interpreter, kernel probes, check rules, fork server {}): {:.0} ms",
        if server { "started" } else { "UNAVAILABLE" },
        start.elapsed().as_secs_f64() * 1e3
    );
    // The same search twice in this run: each worker exec'd as its own interpreter (the
    // path before the fork server), then forked by the fork server (the default).
    std::env::set_var("METAFORGE_FORK_SERVER", "0");
    let (exec_search, exec_wall) = timed_search(&exp, &dir.path().join("exec.db"));
    std::env::remove_var("METAFORGE_FORK_SERVER");
    let db = dir.path().join("run.db");
    let (search, wall) = timed_search(&exp, &db);
    let tasks = count(&search, "SELECT sum(n) FROM evaluations");
    let evaluations = count(&search, "SELECT count(*) FROM evaluations");
    let calls = count(&search, "SELECT sum(llm_calls) FROM evaluations");
    assert_eq!(tasks, count(&exec_search, "SELECT sum(n) FROM evaluations"));
    for (label, wall) in [("a fresh interpreter per worker", exec_wall), ("fork server", wall)] {
        println!(
            "search with an instant model, {label}: {evaluations} evaluations, {tasks} tasks, {calls} llm() calls in {wall:.2} s \
             → {:.2} ms per task amortised, {:.0} tasks/s (2 cores)",
            wall * 1e3 / tasks as f64,
            tasks as f64 / wall
        );
    }
    println!("fork server / fresh interpreter: {:.2}x wall", wall / exec_wall);

    // Baseline on the same programs and task counts.
    let mut stmt = search
        .archive()
        .connection()
        .prepare("SELECT c.code, e.n FROM evaluations e JOIN candidates c ON c.id = e.candidate_id")
        .unwrap();
    let jobs: Vec<serde_json::Value> = stmt
        .query_map([], |r| {
            Ok(serde_json::json!({"code": r.get::<_, String>(0)?, "n": r.get::<_, i64>(1)?}))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let jobs_file = dir.path().join("jobs.json");
    std::fs::write(&jobs_file, serde_json::to_string(&jobs).unwrap()).unwrap();
    // The interpreter the sandbox uses (`python3` on PATH may be a slow shim).
    let python = metaforge::sandbox::python_interpreter().unwrap();
    let out = Command::new(&python)
        .args(["-c", BASELINE])
        .arg(&jobs_file)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.split_whitespace();
    let done: f64 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let base_ms: f64 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
    let process_start = {
        let t = Instant::now();
        Command::new(&python).args(["-I", "-S", "-c", "pass"]).status().unwrap();
        t.elapsed().as_secs_f64() * 1e3
    };
    println!(
        "baseline (ADAS-style exec in one process, no sandbox/RPC/archive): {done:.0} tasks in {:.0} ms + one Python start {:.0} ms \
         → {:.3} ms per task; metaforge / baseline = {:.0}x per task",
        base_ms,
        process_start,
        (base_ms + process_start) / done.max(1.0),
        (wall * 1e3 / tasks as f64) / ((base_ms + process_start) / done.max(1.0))
    );
    println!(
        "  where metaforge's time goes: {:.1} ms of wall per evaluation over {evaluations} (a forked sandboxed worker each, \
         and the loop around it); the worker's share: `cargo bench --bench sandbox_overhead`",
        wall * 1e3 / evaluations as f64
    );

    // The cache-hit path: the same experiment again, seeded with the first run's cache.
    let rerun_db = dir.path().join("rerun.db");
    let start = Instant::now();
    let mut rerun = Search::create(&exp, &rerun_db, true).unwrap();
    let imported = rerun.archive().import_call_cache(&db).unwrap() as i64;
    rerun.run().unwrap();
    let rerun_wall = start.elapsed().as_secs_f64();
    let sent = count(&rerun, "SELECT count(*) FROM llm_calls") - imported;
    println!(
        "rerun of the finished experiment with its cache: {sent} model calls sent (of {} answered), {rerun_wall:.2} s",
        count(&rerun, "SELECT sum(llm_calls) FROM evaluations")
    );
}
