//! The embedded model on a candidate's tasks: `cargo bench --bench local_throughput`.
//!
//! Direct Answer (`archive/agents/direct_answer.py`: the same instruction before every
//! question) on arith tasks, four calls in flight as a worker's tasks make them, through the
//! gateway to the embedded SmolLM2-135M. Two paths in one run, same model, threads and
//! tasks: the plain path (no stop sequence, so an answer runs on until the model ends it or
//! `max_tokens`; every prompt decoded whole) and stop + prefix reuse (`stop = ["\n"]`, as
//! the `add_stop` operator writes it; the shared instruction's cache decoded once). Prints
//! tasks/s and the ratio, and tokens/s against llama.cpp's own measurement of its decode.

use std::sync::Arc;
use std::time::Instant;

use metaforge::llm::{BackendFactory, Budget, CallParams, Gateway, Message, Role};

const TASKS: usize = 40;
const INSTRUCTION: &str = "Answer the question with a single number and nothing else.";

struct Measured {
    tasks_per_s: f64,
    tokens: u64,
    wall: f64,
    engine: f64,
}

fn run(questions: &[String], stop: bool, prefix_reuse: bool) -> Measured {
    let cfg: metaforge::config::ModelConfig = toml::from_str(&format!(
        "backend = \"local\"\nmodel = \"smollm2-135m\"\ntemperature = 0.0\nmax_concurrency = 4\nprefix_reuse = {prefix_reuse}"
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
    let workers: Vec<_> = (0..4)
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
    println!("local_throughput: Direct Answer on {TASKS} arith tasks, 4 in flight, SmolLM2-135M Q4_1");
    let mut plain_rate = 0.0;
    for (label, stop, reuse) in [
        ("plain (no stop, whole prompts)", false, false),
        ("stop only", true, false),
        ("stop + prefix reuse", true, true),
    ] {
        let m = run(&questions, stop, reuse);
        if plain_rate == 0.0 {
            plain_rate = m.tasks_per_s;
        }
        println!(
            "  {label:<32} {:>6.2} tasks/s ({:.1} s, {} tokens generated) {:.2}x; llama.cpp's decode {:.1} s, metaforge's wall / llama.cpp's = {:.2}x",
            m.tasks_per_s,
            m.wall,
            m.tokens,
            m.tasks_per_s / plain_rate,
            m.engine,
            m.wall / m.engine
        );
    }
}
