//! The embedded model with several sequences at once: `cargo bench --bench local_batching`.
//!
//! Eight distinct prompts arrive together, as when several candidate tasks call `llm()` at the
//! same moment. With `max_concurrency = 1` the backend decodes them one after another; with 4
//! it decodes up to four as parallel sequences of one llama.cpp batch. Prints generated tokens
//! per second for both and the ratio (same model, threads and prompts, in one run).

use std::sync::Arc;
use std::time::Instant;

use metaforge::llm::{BackendFactory, Budget, CallParams, Gateway, Message, Role};

fn tokens_per_second(concurrency: usize) -> (f64, u64, f64, f64) {
    let cfg: metaforge::config::ModelConfig = toml::from_str(&format!(
        "backend = \"local\"\nmodel = \"smollm2-135m\"\nmax_tokens = 48\ntemperature = 0.0\nmax_concurrency = {concurrency}\ncontext_per_sequence = 1024"
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
    let start = Instant::now();
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let gateway = gateway.clone();
            std::thread::spawn(move || {
                let question = format!("What is {} plus {}? Explain step by step.", 10 + i, 3 * i);
                let req = gateway.request(vec![Message::new("user", question)], CallParams::default(), 0);
                gateway.complete(&req).unwrap().completion_tokens
            })
        })
        .collect();
    let tokens: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    let wall = start.elapsed().as_secs_f64();
    let engine = (backend.engine_time().unwrap_or_default() - engine_before).as_secs_f64();
    (tokens as f64 / wall, tokens, wall, engine)
}

fn main() {
    let (one, t1, w1, e1) = tokens_per_second(1);
    println!("max_concurrency 1: {t1} tokens in {w1:.2} s = {one:.0} tokens/s");
    // llama.cpp's own measurement (its perf counters: time inside decode, prompt and
    // generation) of the same requests, same model and threads: metaforge's wall time over
    // it is everything metaforge adds (tokenising, sampling, batching, gateway, threads).
    println!(
        "  llama.cpp's own measurement: {:.2} s in decode = {:.0} tokens/s; metaforge's wall / llama.cpp's = {:.2}x (target <= 1.20x)",
        e1,
        t1 as f64 / e1,
        w1 / e1
    );
    let (four, t4, w4, e4) = tokens_per_second(4);
    println!(
        "max_concurrency 4: {t4} tokens in {w4:.2} s = {four:.0} tokens/s — {:.2}x",
        four / one
    );
    println!(
        "  llama.cpp's own measurement: {:.2} s in decode = {:.0} tokens/s; metaforge's wall / llama.cpp's = {:.2}x",
        e4,
        t4 as f64 / e4,
        w4 / e4
    );
}
