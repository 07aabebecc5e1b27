//! Per-shard overhead of the Ray executor against the local one, in one run:
//! `cargo bench --bench ray_shards`. Starts a one-machine Ray head on 127.0.0.1 (2 CPUs).
//!
//! Prints (1) the first Ray shard (ships the binary to the node, starts a Ray worker),
//! (2) start-to-result of a 4-task shard, local vs Ray, sequentially, and the ratio,
//! (3) the callback's cost per model call (a shard making 100 sequential calls), and
//! (4) 16 shards two at a time, as a search would submit them. The model answers at once, so
//! every figure is pure orchestration. `METAFORGE_BENCH_SHARDS` sets the count for (2).

use std::time::Instant;

use metaforge::config::{EvaluationConfig, ExecutorConfig, ExecutorKind};
use metaforge::executor::{Executor, LocalRayHead, ShardLimits};
use metaforge::llm::Usage;
use metaforge::sandbox::{LlmCall, LlmHandler, WorkerExit};
use serde_json::json;

struct Echo;
impl LlmHandler for Echo {
    fn handle(&self, _task: Option<&str>, _call: &LlmCall) -> Result<(Vec<String>, Usage), String> {
        Ok((vec!["42".into()], Usage::default()))
    }
}

const ONE_CALL: &str = "from metaforge import llm\ndef forward(task):\n    return llm(task['q'])\n";
const MANY_CALLS: &str =
    "from metaforge import llm\ndef forward(task):\n    for i in range(100):\n        llm(str(i))\n    return 'done'\n";

fn tasks(n: usize) -> Vec<(String, serde_json::Value)> {
    (0..n).map(|i| (format!("t{i}"), json!({"q": i.to_string()}))).collect()
}

fn shard_ms(executor: &Executor, code: &str, n_tasks: usize) -> f64 {
    let limits = ShardLimits::for_tasks(&EvaluationConfig::default(), n_tasks);
    let start = Instant::now();
    let run = executor
        .run_shard(code, &tasks(n_tasks), &limits, &Echo)
        .expect("shard");
    assert_eq!(run.exit, WorkerExit::Completed, "{run:?}");
    assert!(run.tasks.values().all(|t| t.error.is_none()), "{run:?}");
    start.elapsed().as_secs_f64() * 1e3
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn concurrent_ms(executor: &Executor, shards: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..shards / 2 {
        std::thread::scope(|s| {
            s.spawn(|| shard_ms(executor, ONE_CALL, 4));
            s.spawn(|| shard_ms(executor, ONE_CALL, 4));
        });
    }
    start.elapsed().as_secs_f64() * 1e3
}

fn main() {
    let reps: usize = std::env::var("METAFORGE_BENCH_SHARDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let started = Instant::now();
    let head = LocalRayHead::start(2).expect("a local Ray head");
    println!("local Ray head up in {:.1} s", started.elapsed().as_secs_f64());
    let cfg = ExecutorConfig {
        kind: ExecutorKind::Ray,
        address: Some(head.address.clone()),
        callback_host: Some("127.0.0.1".into()),
        node_binary: Some(env!("CARGO_BIN_EXE_metaforge").into()),
        ..ExecutorConfig::default()
    };
    let started = Instant::now();
    let ray = Executor::start(&cfg).expect("ray executor");
    println!("driver joined the cluster in {:.1} s", started.elapsed().as_secs_f64());
    let local = Executor::Local;
    println!(
        "first Ray shard (starts a Ray worker): {:.0} ms",
        shard_ms(&ray, ONE_CALL, 4)
    );
    // Warm both.
    for _ in 0..3 {
        shard_ms(&ray, ONE_CALL, 4);
        shard_ms(&local, ONE_CALL, 4);
    }
    let l = median((0..reps).map(|_| shard_ms(&local, ONE_CALL, 4)).collect());
    let r = median((0..reps).map(|_| shard_ms(&ray, ONE_CALL, 4)).collect());
    println!(
        "4-task shard, start to result (median of {reps}): local {l:.1} ms, Ray {r:.1} ms: ratio {:.2}x, Ray adds {:.1} ms per shard",
        r / l,
        r - l
    );
    let l100 = median((0..5).map(|_| shard_ms(&local, MANY_CALLS, 1)).collect());
    let r100 = median((0..5).map(|_| shard_ms(&ray, MANY_CALLS, 1)).collect());
    println!(
        "100 sequential model calls in one shard: local {l100:.1} ms, Ray {r100:.1} ms: the callback adds {:.3} ms per call (beyond the per-shard cost)",
        ((r100 - l100) - (r - l)).max(0.0) / 100.0
    );
    let lc = concurrent_ms(&local, 16);
    let rc = concurrent_ms(&ray, 16);
    println!(
        "16 shards two at a time: local {lc:.0} ms, Ray {rc:.0} ms: ratio {:.2}x ({:.1} vs {:.1} ms per shard)",
        rc / lc,
        lc / 16.0,
        rc / 16.0
    );
    let stats = ray.stats();
    println!("Ray shards run: {}, reruns: {}", stats.shards, stats.retried_attempts);
    drop(ray);
    drop(head);
}
