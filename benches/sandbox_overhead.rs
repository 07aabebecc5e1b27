//! Sandbox cost, isolation on vs off, in one run: `cargo bench --bench sandbox_overhead`.
//!
//! Prints (1) a bare Python start as the floor, (2) start-to-finish of a one-task worker,
//! (3) per-task cost inside one worker, each with every layer on (namespaces, landlock,
//! seccomp, policy hook) and off (rlimits only), with the ratio; then (4) host memory, open
//! descriptors and threads across many isolated evaluations (a leak shows as growth).
//! `METAFORGE_BENCH_EVALS` sets the count for (4) (default 1000).

use std::time::{Duration, Instant};

use metaforge::llm::Usage;
use metaforge::sandbox::{run_worker, Isolation, LlmCall, LlmHandler, WorkerExit, WorkerLimits, WorkerStart};
use serde_json::json;

struct Echo;
impl LlmHandler for Echo {
    fn handle(&self, _task: Option<&str>, _call: &LlmCall) -> Result<(Vec<String>, Usage), String> {
        Ok((vec!["42".into()], Usage::default()))
    }
}

const CANDIDATE: &str = "from metaforge import llm\ndef forward(task):\n    return llm(str(task['q']))\n";

fn limits(on: bool) -> WorkerLimits {
    WorkerLimits {
        deadline: Duration::from_secs(60),
        tasks_in_flight: 4,
        isolation: if on { Isolation::available() } else { Isolation::NONE },
        policy_hook: on,
        ..WorkerLimits::default()
    }
}

fn tasks(n: usize) -> Vec<(String, serde_json::Value)> {
    (0..n).map(|i| (format!("t{i}"), json!({"q": i}))).collect()
}

fn median_ms(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

fn time_worker(on: bool, n_tasks: usize, reps: usize) -> f64 {
    time_started(on, WorkerStart::ForkServer, n_tasks, reps)
}

fn time_started(on: bool, start: WorkerStart, n_tasks: usize, reps: usize) -> f64 {
    let l = WorkerLimits { start, ..limits(on) };
    let t = tasks(n_tasks);
    let runs: Vec<Duration> = (0..reps)
        .map(|_| {
            let t0 = Instant::now();
            let run = run_worker(CANDIDATE, &t, &Echo, &l).expect("worker");
            assert_eq!(run.exit, WorkerExit::Completed);
            assert!(
                run.tasks.values().all(|t| t.output.as_deref() == Some("42")),
                "{:?}",
                run.tasks
            );
            assert_eq!(run.forked, l.start == WorkerStart::ForkServer);
            t0.elapsed()
        })
        .collect();
    median_ms(runs)
}

fn status_field(name: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

fn main() {
    let python = metaforge::sandbox::python_interpreter().unwrap();
    let iso = Isolation::available();
    println!("layers available: {iso:?}");
    // Warm up: runtime folder, Python prefixes, seccomp program, page cache.
    time_worker(true, 1, 3);
    time_worker(false, 1, 3);

    let bare: Vec<Duration> = (0..30)
        .map(|_| {
            let start = Instant::now();
            let ok = std::process::Command::new(&python)
                .args(["-I", "-S", "-c", "pass"])
                .status()
                .unwrap();
            assert!(ok.success());
            start.elapsed()
        })
        .collect();
    println!(
        "bare python start (-I -S -c pass): {:.1} ms median of 30",
        median_ms(bare)
    );

    time_started(true, WorkerStart::Exec, 1, 3);
    let exec_on = time_started(true, WorkerStart::Exec, 1, 30);
    let fork_on = time_worker(true, 1, 30);
    println!(
        "one-task isolated worker, start to finish: forked by the fork server {fork_on:.1} ms, own interpreter exec'd {exec_on:.1} ms, ratio {:.2}x",
        fork_on / exec_on
    );

    let spawn_on = time_worker(true, 1, 30);
    let spawn_off = time_worker(false, 1, 30);
    println!(
        "one-task worker, start to finish: isolated {spawn_on:.1} ms, rlimits only {spawn_off:.1} ms, ratio {:.2}x (+{:.1} ms)",
        spawn_on / spawn_off,
        spawn_on - spawn_off
    );

    let n = 400;
    let many_on = time_worker(true, n, 5);
    let many_off = time_worker(false, n, 5);
    let per_on = (many_on - spawn_on) / (n - 1) as f64 * 1e3;
    let per_off = (many_off - spawn_off) / (n - 1) as f64 * 1e3;
    println!(
        "per task (one llm() round trip each, {n} tasks in one worker): isolated {per_on:.0} us, rlimits only {per_off:.0} us, ratio {:.2}x",
        per_on / per_off
    );

    let workdirs = || {
        std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("metaforge-worker-{}-", std::process::id()))
            })
            .count()
    };
    let evals: usize = std::env::var("METAFORGE_BENCH_EVALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let l = limits(true);
    let t = tasks(2);
    for _ in 0..50 {
        run_worker(CANDIDATE, &t, &Echo, &l).unwrap();
    }
    let (rss0, fds0, thr0) = (status_field("VmRSS:"), open_fds(), status_field("Threads:"));
    let start = Instant::now();
    for _ in 0..evals {
        let run = run_worker(CANDIDATE, &t, &Echo, &l).unwrap();
        assert_eq!(run.exit, WorkerExit::Completed);
    }
    let wall = start.elapsed();
    let (rss1, fds1, thr1) = (status_field("VmRSS:"), open_fds(), status_field("Threads:"));
    println!(
        "{evals} isolated evaluations in {:.1} s ({:.1} ms each): host RSS {rss0} -> {rss1} KiB ({:+} KiB), open fds {fds0} -> {fds1}, threads {thr0} -> {thr1}",
        wall.as_secs_f64(),
        wall.as_secs_f64() * 1e3 / evals as f64,
        rss1 as i64 - rss0 as i64
    );
    println!("worker folders of this process left in the temp dir: {}", workdirs());
}
