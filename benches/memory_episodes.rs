//! The episodic domain's cost, in one run: `cargo bench --bench memory_episodes`.
//!
//! Prints (1) a TextWorldExpress server's start (a JVM), (2) one played episode and one game
//! step with the scripted base agent (no model, so only the game and the host loop count),
//! (3) a whole memory evaluation of the key-value-facts seed on a 40-episode sequence, the
//! first one (which plays the 40 no-memory baselines) and a second one (baselines cached),
//! and (4) the ratio of that second evaluation to the floor: the same 20 scored episodes
//! played directly by the host (warm JVM, one at a time, as the evaluation here) with no
//! memory design, no worker and no sandbox. The ratio is what sandboxing the design (worker
//! start, retrieve/update calls, the play RPCs) costs.

use std::sync::Arc;
use std::time::Instant;

use metaforge::config::{BaseAgentKind, DomainConfig, EpisodesConfig, EvaluationConfig, ModelConfig};
use metaforge::domain::Domain;
use metaforge::episodic::{game_of, BaseAgent, EnvPool, Episodic};
use metaforge::evaluate::Evaluator;
use metaforge::llm::{Budget, Gateway, Role, ScriptedBackend};

fn main() {
    let episodes = EpisodesConfig {
        base_agent: BaseAgentKind::Scripted,
        max_steps: 8,
        ..EpisodesConfig::default()
    };
    let domain = Domain::load(&DomainConfig {
        name: "twc".into(),
        path: None,
        scorer: None,
        val_size: 40,
        test_size: 2,
        split_seed: Some(1),
        episodes: Some(episodes.clone()),
        hidden_fields: metaforge::config::default_hidden_fields(),
        description: None,
        answer_format: None,
        choices: None,
    })
    .unwrap();
    let (val, _) = domain.splits(1, 40, 2).unwrap();

    let t = Instant::now();
    let pool = EnvPool::new().unwrap();
    println!(
        "game server start (JVM, first one):      {:8.1} ms",
        t.elapsed().as_secs_f64() * 1e3
    );

    let scored = &val[val.len() / 2..];
    let play_all = || {
        let t = Instant::now();
        let mut steps = 0;
        for task in scored {
            let game = game_of(task).unwrap();
            let play = pool
                .with(|env| BaseAgent::Scripted.play(env, &game, "", episodes.max_steps))
                .unwrap();
            steps += play.trajectory.len();
        }
        (t.elapsed().as_secs_f64(), steps)
    };
    let (cold, _) = play_all();
    println!("20 episodes on a fresh JVM (JIT warming):    {:8.1} ms", cold * 1e3);
    // Best of three warm passes: the JVM keeps compiling for a while.
    let (floor, steps) = (0..3).map(|_| play_all()).min_by(|a, b| a.0.total_cmp(&b.0)).unwrap();
    println!(
        "one episode, scripted agent (reset + {:.1} steps): {:8.2} ms   one step: {:.3} ms",
        steps as f64 / scored.len() as f64,
        floor * 1e3 / scored.len() as f64,
        floor * 1e3 / steps.max(1) as f64
    );

    let code = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/archive/memory/kv_facts.py")).unwrap();
    let episodic = Episodic::new(&episodes).unwrap();
    let mcfg: ModelConfig = toml::from_str("backend = \"scripted\"\nmodel = \"s\"\nscript = \"x\"").unwrap();
    let gateway = Gateway::new(
        Role::Agent,
        Arc::new(ScriptedBackend::new("s", vec!["unused".into()])),
        &mcfg,
        None,
        Arc::new(Budget::unlimited()),
    );
    // One play at a time, like the floor above, so the ratio compares like with like.
    let cfg = EvaluationConfig {
        tasks_in_flight: 1,
        ..EvaluationConfig::default()
    };
    let evaluator = Evaluator {
        gateway: &gateway,
        models: None,
        cfg: &cfg,
        scorer: domain.scorer,
        agent_contract: None,
        require_call_contracts: false,
        episodic: Some(&episodic),
        executor: &metaforge::executor::Executor::Local,
    };
    let t = Instant::now();
    let first = evaluator
        .evaluate(&code, &val, metaforge::types::Split::Val, &|| {})
        .unwrap();
    let with_baselines = t.elapsed().as_secs_f64();
    let mut cached = f64::MAX;
    let mut second = first.clone();
    for _ in 0..3 {
        let t = Instant::now();
        second = evaluator
            .evaluate(&code, &val, metaforge::types::Split::Val, &|| {})
            .unwrap();
        cached = cached.min(t.elapsed().as_secs_f64());
    }
    assert_eq!(
        first.mean, second.mean,
        "a memory evaluation is deterministic with the scripted agent"
    );
    println!(
        "memory evaluation, 40 episodes (kv_facts): {:8.1} ms with the 40 baseline plays, {:.1} ms with them cached (best of 3; gain {:.3})",
        with_baselines * 1e3,
        cached * 1e3,
        second.mean
    );
    println!(
        "sandboxed design vs host-only plays of the 20 scored episodes: {:.1} ms vs {:.1} ms = {:.2}x ({:.1} ms per scored episode over the floor)",
        cached * 1e3,
        floor * 1e3,
        cached / floor,
        (cached - floor) * 1e3 / scored.len() as f64
    );
}
