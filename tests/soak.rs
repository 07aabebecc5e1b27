//! Soak: a whole search whose two models sit behind a faulty OpenAI-compatible endpoint
//! (tests/common/faulty_endpoint.rs: 5xx, 429 with Retry-After, garbled bodies, hangs, bodies
//! cut midway, on a share of calls), killed with SIGKILL every few steps and resumed. It
//! must finish, lose and duplicate nothing, stay within its token budget, and end with the
//! archive of the same search against a healthy endpoint. The models behind the endpoint are
//! SCRIPTED (tests/fixtures/scripted_*.json): this is about transport and recovery.
//!
//! CI runs a short search; `scripts/soak.sh` runs 300 steps with a kill every 30.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

mod common;

use common::faulty_endpoint::{Fault, FaultyEndpoint};
use common::*;

const BUDGET_TOKENS: u64 = 50_000_000;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn endpoint(seed: u64, rate: f64) -> FaultyEndpoint {
    // A reply without `usage` is charged an estimate, so a run that met one differs in cost
    // from the healthy run by design; the other faults must leave no trace.
    let faults = [
        Fault::ServerError,
        Fault::Throttled,
        Fault::Malformed,
        Fault::Hang,
        Fault::CutMidBody,
    ];
    FaultyEndpoint::start(
        seed,
        rate,
        &faults,
        vec![
            ("meta", FaultyEndpoint::scripted(&fixtures().join("scripted_meta.json"))),
            (
                "agent",
                FaultyEndpoint::scripted(&fixtures().join("scripted_agent.json")),
            ),
        ],
    )
}

fn experiment(dir: &Path, file: &str, url: &str, generations: u64) -> PathBuf {
    let model = |name: &str, concurrency: u32| {
        format!(
            "[models.{name}]\nbackend = \"openai\"\nmodel = \"{name}\"\nbase_url = \"{url}\"\ntimeout_s = 1\nmax_retries = 12\nmax_concurrency = {concurrency}\n"
        )
    };
    let text = format!(
        r#"name = "soak"
seed = 3
[domain]
{ARITH}{meta}{agent}[search]
seeds = ["direct_answer", "chain_of_thought", "self_consistency"]
generations = {generations}
proposals_per_generation = 3
test_top_k = 2
[proposers]
operators = 0.7
rewrite = 0.3
[proposers.rewrite_options]
reflexion_rounds = 2
debug_rounds = 1
[evaluation]
tasks_in_flight = 3
task_timeout_s = 60
[budget]
max_tokens = {BUDGET_TOKENS}
"#,
        meta = model("meta", 4),
        agent = model("agent", 8),
    );
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn a_search_against_a_faulty_endpoint_killed_every_few_steps_ends_as_a_healthy_one() {
    let generations = env_or("METAFORGE_SOAK_GENERATIONS", 4);
    let kill_every = env_or("METAFORGE_SOAK_KILL_EVERY", 5) as i64;
    let dir = tempfile::tempdir().unwrap();

    let healthy = endpoint(11, 0.0);
    let reference = dir.path().join("healthy.db");
    run_to_end(
        &experiment(dir.path(), "healthy.toml", &healthy.url, generations),
        &reference,
    );

    let faulty = endpoint(11, 0.2);
    let exp = experiment(dir.path(), "faulty.toml", &faulty.url, generations);
    let db = dir.path().join("faulty.db");
    let mut kills = 0;
    loop {
        let mut child = run_or_resume(&exp, &db)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let target = steps_done(&db) + kill_every;
        let finished = loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
                assert!(status.success(), "the run failed: {err}");
                break true;
            }
            if steps_done(&db) >= target {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                kills += 1;
                break false;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_archive_sound(&db);
        if finished {
            break;
        }
    }
    let tally = faulty.tally();
    let faults: u64 = tally.faults.values().sum();
    let steps = steps_done(&db);
    println!(
        "soak: {steps} steps, {kills} kills, {} answered calls, {faults} faults ({:?})",
        tally.answered, tally.faults
    );
    assert!(kills >= 1, "a kill landed mid-run");
    assert!(faults > 0, "faults happened");
    assert_eq!(
        count(&db, "SELECT count(*) FROM proposals WHERE status = 'llm_error'"),
        0,
        "every fault was ridden out"
    );
    assert_eq!(
        candidate_ids(&db),
        candidate_ids(&reference),
        "the healthy run's candidates"
    );
    for sql in [
        "SELECT count(*) FROM evaluations",
        "SELECT count(*) FROM task_results",
        "SELECT count(*) FROM proposals",
        "SELECT max(step) FROM events WHERE kind = 'step_done'",
    ] {
        assert_eq!(count(&db, sql), count(&reference, sql), "{sql}");
    }
    // What the budget counts: both roles' calls, as a resume preloads them.
    let (tokens, _, _) = metaforge::archive::Archive::open_existing(&db)
        .unwrap()
        .usage()
        .unwrap();
    assert!(tokens > 0 && tokens <= BUDGET_TOKENS, "the budget held: {tokens}");
}
