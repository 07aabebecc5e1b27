//! Steps in flight: `cargo bench --bench pipeline_search`.
//!
//! A whole search against the SCRIPTED backend with a model's latency (a meta-model call
//! takes `META_MS`, an agent call `AGENT_MS`, 16 calls in flight per backend), every
//! proposal written by the meta-model, run one step at a time (`steps_in_flight = 1`) and
//! with eight steps in flight, in the same run. Twice: with one meta-model call per
//! proposal (debug rounds off), then with a debug round after each failed proposal (the
//! scripted meta-model writes many), where a step that takes two calls holds back the steps
//! that must see it. Prints the wall times and their ratios, and checks that two K = 8 runs
//! at different latencies stored the same archive (the lag rule).

use std::path::{Path, PathBuf};
use std::time::Instant;

use metaforge::search::Search;

const META_MS: u64 = 3000;
const AGENT_MS: u64 = 300;

fn experiment(dir: &Path, name: &str, k: usize, debug_rounds: u32, meta_ms: u64, agent_ms: u64) -> PathBuf {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let text = format!(
        "name = \"pipeline\"\nseed = 7\n[domain]\nname = \"arith\"\nval_size = 8\ntest_size = 8\n\
         [models.meta]\nbackend = \"scripted\"\nmodel = \"meta\"\nscript = \"{}\"\nlatency_ms = {meta_ms}\nmax_concurrency = 16\n\
         [models.agent]\nbackend = \"scripted\"\nmodel = \"agent\"\nscript = \"{}\"\nlatency_ms = {agent_ms}\nmax_concurrency = 16\n\
         [search]\nseeds = [\"direct_answer\", \"chain_of_thought\", \"self_consistency\"]\ngenerations = 4\nproposals_per_generation = 4\n\
         test_top_k = 2\nsteps_in_flight = {k}\n\
         [proposers]\noperators = 0.0\nrewrite = 1.0\n[proposers.rewrite_options]\nreflexion_rounds = 0\ndebug_rounds = {debug_rounds}\n\
         [evaluation]\ntasks_in_flight = 8\n",
        fixtures.join("scripted_meta.json").display(),
        fixtures.join("scripted_agent.json").display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn run(dir: &Path, name: &str, k: usize, debug_rounds: u32, meta_ms: u64, agent_ms: u64) -> (f64, String) {
    let exp = experiment(dir, name, k, debug_rounds, meta_ms, agent_ms);
    let db = dir.join(format!("{name}.db"));
    let started = Instant::now();
    let mut search = Search::create(&exp, &db, true).unwrap();
    search.run().unwrap();
    let secs = started.elapsed().as_secs_f64();
    let c = search.archive().connection();
    let rows = |sql: &str| -> Vec<String> {
        let mut stmt = c.prepare(sql).unwrap();
        stmt.query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let digest = format!(
        "{:?} {:?} {:?}",
        rows("SELECT id FROM candidates ORDER BY id"),
        rows("SELECT step || ':' || attempt || ':' || kind || ':' || status FROM proposals ORDER BY step, attempt"),
        rows("SELECT candidate_id || ':' || split || ':' || stage || ':' || n || ':' || round(mean, 6) FROM evaluations ORDER BY candidate_id, split")
    );
    (secs, digest)
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    println!(
        "pipeline_search: meta call {META_MS} ms, agent call {AGENT_MS} ms, 16 in flight per backend, 16 meta-model proposals"
    );
    let mut digest = String::new();
    for debug_rounds in [0, 1] {
        let (one, _) = run(
            dir.path(),
            &format!("k1-d{debug_rounds}"),
            1,
            debug_rounds,
            META_MS,
            AGENT_MS,
        );
        let (eight, d) = run(
            dir.path(),
            &format!("k8-d{debug_rounds}"),
            8,
            debug_rounds,
            META_MS,
            AGENT_MS,
        );
        println!(
            "  debug_rounds = {debug_rounds}: steps_in_flight = 1 {one:.1} s, steps_in_flight = 8 {eight:.1} s, speed-up {:.2}x",
            one / eight
        );
        if debug_rounds == 1 {
            digest = d;
        }
    }
    // The same K = 8 search with other latencies stores the same archive.
    let (_, other) = run(dir.path(), "k8-fast", 8, 1, META_MS / 10, AGENT_MS / 3);
    println!(
        "  K = 8 archive at other latencies: {}",
        if other == digest { "identical" } else { "DIFFERENT" }
    );
    assert_eq!(other, digest, "the lag rule makes K = 8 runs independent of timing");
}
