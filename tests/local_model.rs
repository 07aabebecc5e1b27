//! The real embedded model (SmolLM2-135M through llama.cpp), fetched on first use. Slow-ish:
//! a handful of short calls.

use std::process::Command;

mod common;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_metaforge")
}

#[test]
fn eval_with_the_embedded_model_then_replay_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let agent = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("archive/agents/direct_answer.py");
    let db = dir.path().join("cache.db");
    let eval = || {
        let out = Command::new(bin())
            .args(["eval", "--json", "--domain", "arith", "--n", "6"])
            .arg(&agent)
            .arg("--db")
            .arg(&db)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let first = eval();
    assert_eq!(first["outcome"]["kind"], "ok");
    assert_eq!(first["usage"]["calls"], 6);
    assert!(
        first["usage"]["completion_tokens"].as_u64().unwrap() > 0,
        "the model generated tokens"
    );
    assert_eq!(first["usage"]["cached_calls"], 0);
    let outputs: Vec<_> = first["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["output"].clone())
        .collect();
    assert!(outputs.iter().all(|o| o.is_string()));
    // The same evaluation again replays every call from the archive, exactly.
    let second = eval();
    assert_eq!(second["usage"]["cached_calls"], 6);
    let again: Vec<_> = second["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["output"].clone())
        .collect();
    assert_eq!(outputs, again);
    assert_eq!(first["mean"], second["mean"]);
}

/// Prefix reuse changes what is decoded, not what is answered: prompts that share an
/// instruction, four in flight over several batches, get the same greedy answers with the
/// shared prefix's cache reused as with every prompt decoded whole.
#[test]
fn prefix_reuse_gives_the_same_answers() {
    use metaforge::llm::{CallParams, Message};
    use std::sync::Arc;
    let answers = |reuse: bool| -> Vec<String> {
        let gateway = Arc::new(common::gateway_from(&format!(
            "backend = \"local\"\nmodel = \"smollm2-135m\"\ntemperature = 0.0\nmax_tokens = 12\nmax_concurrency = 4\nprefix_reuse = {reuse}"
        )));
        let workers: Vec<_> = (0..10)
            .map(|i| {
                let gateway = gateway.clone();
                std::thread::spawn(move || {
                    let prompt = format!(
                        "Answer the question with a single number and nothing else.\n\nQuestion: What is {i} plus {}?\nAnswer:",
                        2 * i + 1
                    );
                    let req = gateway.request(vec![Message::new("user", prompt)], CallParams::default(), 0);
                    gateway.complete(&req).unwrap().text
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    };
    assert_eq!(answers(true), answers(false));
}
