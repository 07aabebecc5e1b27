//! The Ray executor against a real Ray cluster: a head started here on 127.0.0.1 with two
//! worker processes (`--num-cpus 2`), Ray from PyPI in metaforge's own venv. The agent model
//! is SCRIPTED (order-independent rules, so its replies do not depend on which node asks
//! first): the tests compare archives, they say nothing of search quality.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rusqlite::Connection;

mod common;

use common::*;

/// One Ray cluster at a time: two heads would fight over the machine's two cores.
static ONE_CLUSTER: Mutex<()> = Mutex::new(());

use metaforge::executor::{LocalRayHead, LOOPBACK_ONLY};

fn start_head() -> LocalRayHead {
    LocalRayHead::start(2).expect("a local Ray head")
}

/// The scripted arith experiment with two shards per evaluation, `in_flight` tasks at once in
/// a shard and, for `ray`, the executor section; the agent model answers after `latency_ms`.
fn experiment(dir: &Path, file: &str, in_flight: u32, latency_ms: u64, executor: Option<&str>) -> PathBuf {
    let path = write_experiment(dir, file, 5, ARITH, 0.0, 1);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text = text.replace(
        "tasks_in_flight = 3\n",
        &format!("tasks_in_flight = {in_flight}\nshards = 2\n"),
    );
    text = text.replace("script = \"", &format!("latency_ms = {latency_ms}\nscript = \""));
    if let Some(address) = executor {
        text.push_str(&format!(
            "[executor]\nkind = \"ray\"\naddress = \"{address}\"\ncallback_host = \"127.0.0.1\"\n"
        ));
    }
    std::fs::write(&path, text).unwrap();
    path
}

fn run(exp: &Path, db: &Path) -> std::process::Output {
    Command::new(bin())
        .args(["run", "--quiet"])
        .arg(exp)
        .arg("--db")
        .arg(db)
        .env(LOOPBACK_ONLY.0, LOOPBACK_ONLY.1)
        .output()
        .unwrap()
}

/// What a search decided and measured, without what differs by machine or moment
/// (timestamps, latencies, which calls the cache answered).
fn outcome(db: &Path) -> Vec<String> {
    let c = Connection::open(db).unwrap();
    let queries = [
        "SELECT id || ' ' || kind || ' ' || operator || ' ' || generation || ' ' || step FROM candidates ORDER BY id",
        "SELECT step || ' ' || attempt || ' ' || kind || ' ' || status || ' ' || ifnull(candidate_id, '-') FROM proposals ORDER BY step, attempt",
        "SELECT candidate_id || ' ' || split || ' ' || stage || ' ' || n || ' ' || mean || ' ' || ci_lo || ' ' || ci_hi || ' ' || prompt_tokens || ' ' || completion_tokens || ' ' || llm_calls || ' ' || cost_usd FROM evaluations ORDER BY candidate_id, split",
        "SELECT e.candidate_id || ' ' || e.split || ' ' || t.task_id || ' ' || t.score || ' ' || t.outcome || ' ' || ifnull(t.output, '-') || ' ' || t.llm_calls || ' ' || t.tokens FROM task_results t JOIN evaluations e ON e.id = t.evaluation_id ORDER BY e.candidate_id, e.split, t.task_id",
        "SELECT key || ' ' || role || ' ' || prompt_tokens || ' ' || completion_tokens FROM llm_calls ORDER BY key",
        "SELECT parent || ' ' || child || ' ' || operator FROM lineage ORDER BY parent, child",
    ];
    queries
        .iter()
        .flat_map(|q| {
            let mut s = c.prepare(q).unwrap();
            s.query_map([], |r| r.get::<_, String>(0))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
        })
        .collect()
}

fn executor_event(db: &Path) -> serde_json::Value {
    let c = Connection::open(db).unwrap();
    let detail: String = c
        .query_row("SELECT detail FROM events WHERE kind = 'executor'", [], |r| r.get(0))
        .expect("a ray run records an executor event");
    serde_json::from_str(&detail).unwrap()
}

fn assert_same(local: &Path, ray: &Path) {
    let (a, b) = (outcome(local), outcome(ray));
    let differ: Vec<String> = a
        .iter()
        .zip(&b)
        .filter(|(x, y)| x != y)
        .take(5)
        .map(|(x, y)| format!("local: {x}\n  ray: {y}"))
        .collect();
    assert!(
        a.len() == b.len() && differ.is_empty(),
        "{} vs {} rows; first differences:\n{}",
        a.len(),
        b.len(),
        differ.join("\n")
    );
}

#[test]
fn a_search_through_ray_stores_what_the_local_executor_stores() {
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let head = start_head();
    let dir = tempfile::tempdir().unwrap();
    let local_db = dir.path().join("local.db");
    ok(&run(&experiment(dir.path(), "local.toml", 3, 0, None), &local_db));
    let ray_db = dir.path().join("ray.db");
    let said = ok(&run(
        &experiment(dir.path(), "ray.toml", 3, 0, Some(&head.address)),
        &ray_db,
    ));
    assert!(said.contains("worker or node died: 0 "), "{said}");
    assert_archive_sound(&ray_db);
    assert_same(&local_db, &ray_db);
    let ev = executor_event(&ray_db);
    // 3 seeds + 3 proposals + held-out tests, two shards each.
    assert!(ev["shards"].as_u64().unwrap() >= 12, "{ev}");
    assert_eq!(ev["retried_attempts"], 0, "{ev}");
    assert_eq!(
        count(
            &ray_db,
            "SELECT count(*) FROM events WHERE kind = 'run_started' AND json_extract(detail, '$.executor') = 'ray'"
        ),
        1
    );
}

/// The pid and parent pid of a running `metaforge shard` (a Ray task's child), if any.
fn running_shard() -> Option<(i32, i32)> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.len() >= 2 && args[0].ends_with(b"metaforge") && args[1] == b"shard" {
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // pid (comm) state ppid ...: the comm may hold spaces, so split after its ')'.
            let ppid = stat.rsplit(')').next()?.split_whitespace().nth(1)?.parse().ok()?;
            return Some((pid, ppid));
        }
    }
    None
}

#[test]
fn a_ray_worker_killed_mid_shard_loses_and_doubles_nothing() {
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let head = start_head();
    let dir = tempfile::tempdir().unwrap();
    // Tasks one at a time and 600 ms a model call: a shard of 3 tasks runs for ~2 s, long
    // enough to kill it after its first call was answered (and cached) and while the next
    // is in flight, with 300 ms to spare either side for a worker slow to start on a busy
    // machine.
    let local_db = dir.path().join("local.db");
    ok(&run(&experiment(dir.path(), "local.toml", 1, 600, None), &local_db));
    let ray_db = dir.path().join("ray.db");
    let mut search = Command::new(bin())
        .args(["run", "--quiet"])
        .arg(experiment(dir.path(), "ray.toml", 1, 600, Some(&head.address)))
        .arg("--db")
        .arg(&ray_db)
        .env(LOOPBACK_ONLY.0, LOOPBACK_ONLY.1)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let (shard, worker) = loop {
        if let Some(found) = running_shard() {
            break found;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no shard ever ran");
        assert!(
            search.try_wait().unwrap().is_none(),
            "the search ended before a shard was seen"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    // Mid-shard: once its sandboxed worker runs, the first task's call takes 600 ms.
    while !has_child(shard) {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the shard never started its worker"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(900));
    assert!(
        Path::new(&format!("/proc/{shard}")).exists(),
        "the shard ended before the kill"
    );
    // The Ray worker process that runs the shard dies; Ray reruns the task elsewhere.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(worker), nix::sys::signal::Signal::SIGKILL).unwrap();
    let out = search.wait_with_output().unwrap();
    let said = ok(&out);
    // `status` (printed at the end of a run) says the cluster reran something.
    assert!(
        said.contains("shards on the Ray cluster") && !said.contains("died: 0 "),
        "{said}"
    );
    // The shard process died with its worker (it would otherwise go on calling the driver).
    assert!(
        !Path::new(&format!("/proc/{shard}")).exists()
            || std::fs::read_to_string(format!("/proc/{shard}/stat")).is_ok_and(|s| s.contains(") Z ")),
        "the killed worker's shard process {shard} is still running"
    );
    assert_archive_sound(&ray_db);
    assert_same(&local_db, &ray_db);
    let ev = executor_event(&ray_db);
    assert!(ev["retried_attempts"].as_u64().unwrap() >= 1, "{ev}");
    // The rerun repeated the dead attempt's answered call, and the cache answered it.
    let cached = "SELECT sum(cached_calls) FROM evaluations";
    assert!(
        count(&ray_db, cached) > count(&local_db, cached),
        "no call was replayed from the cache"
    );
}

fn has_child(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).is_ok_and(|c| !c.trim().is_empty())
}

#[test]
fn an_unreachable_cluster_is_named_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let exp = experiment(dir.path(), "ray.toml", 3, 0, Some(&closed.to_string()));
    // The port was free a moment ago and nothing listens there now.
    let started = Instant::now();
    let err = refused(&run(&exp, &dir.path().join("ray.db")));
    assert!(
        err.contains("cannot join the Ray cluster") && err.contains("nothing answers") && err.contains("fix:"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
}

/// A memory design (the `twc` domain) through Ray: the design runs on a node, asks the driver
/// for every play, and its record is the local one. SCRIPTED base agent (a fixed policy).
#[test]
fn a_memory_design_evaluated_through_ray_matches_the_local_evaluation() {
    use metaforge::config::{EvaluationConfig, ExecutorConfig, ExecutorKind};
    use metaforge::domain::Scorer;
    use metaforge::episodic::Episodic;
    use metaforge::evaluate::{Evaluator, Outcome};
    use metaforge::executor::Executor;

    let _one = ONE_CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let head = start_head();
    let val = sequence(16);
    let episodic = Episodic::new(&scripted_episodes()).unwrap();
    let gateway = scripted_gateway("unused");
    let cfg = EvaluationConfig::default();
    let ray = Executor::start(&ExecutorConfig {
        kind: ExecutorKind::Ray,
        address: Some(head.address.clone()),
        callback_host: Some("127.0.0.1".into()),
        node_binary: Some(bin().into()),
        ..ExecutorConfig::default()
    })
    .unwrap();
    let code = std::fs::read_to_string(format!("{}/archive/memory/kv_facts.py", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let evaluate = |executor: &Executor| {
        Evaluator {
            gateway: &gateway,
            models: None,
            cfg: &cfg,
            scorer: Scorer::Exact,
            agent_contract: None,
            require_call_contracts: false,
            episodic: Some(&episodic),
            executor,
        }
        .evaluate(&code, &val, metaforge::types::Split::Val, &|| {})
        .unwrap()
    };
    let local = evaluate(&Executor::Local);
    let remote = evaluate(&ray);
    assert_eq!(local.outcome, Outcome::Ok, "{}", local.detail);
    assert_eq!(remote.outcome, Outcome::Ok, "{}", remote.detail);
    assert_eq!(ray.stats().shards, 1);
    let rows = |e: &metaforge::evaluate::Evaluation| {
        e.tasks
            .iter()
            .map(|t| format!("{} {} {} {:?}", t.task_id, t.score, t.outcome, t.output))
            .collect::<Vec<_>>()
    };
    assert_eq!(rows(&local), rows(&remote));
    assert_eq!(
        (local.mean, local.ci_lo, local.ci_hi),
        (remote.mean, remote.ci_lo, remote.ci_hi)
    );
}

/// The shipped binary needs the CPU instructions it was built for (with `target-cpu` set).
/// This machine has every one (it runs its own build); a node lacking one gets a shard error
/// that names it and the fix, before the binary could die of SIGILL there. Runs the bridge's
/// own check with plain Python (no cluster needed).
#[test]
fn a_node_without_the_binarys_cpu_instructions_is_told_which_and_the_fix() {
    let flags = metaforge::executor::cpu_flags_built_for();
    let script = r#"
import json, sys
sys.path.insert(0, "runtime/ray")
import bridge
required = json.loads(sys.argv[1])
assert bridge.missing_cpu_flags(required) == [], bridge.missing_cpu_flags(required)
try:
    bridge.run_shard("{}", "/nonexistent", "digest", [], required + ["made_up_flag"])
except RuntimeError as e:
    sys.stderr.write(str(e))
    sys.exit(3)
"#;
    let out = std::process::Command::new("python3")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["-c", script, &serde_json::to_string(&flags).unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("lacks CPU instructions")
            && stderr.contains("made_up_flag")
            && stderr.contains("scripts/build-node-binary.sh")
            && stderr.contains("node_binary"),
        "{stderr}"
    );
    // The project's build is portable (.cargo/config.toml): its Rust code uses nothing past
    // the architecture's baseline, so the shipped binary runs on any node of the architecture.
    assert!(
        flags.is_empty(),
        "the portable build uses instructions past the baseline: {flags:?}"
    );
}
