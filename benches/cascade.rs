//! The cascade block on the embedded model: `cargo bench --bench cascade`.
//!
//! Two agent models share the embedded SmolLM2 weights: "cheap" may write 24 tokens a reply
//! and "strong" 256, priced at nominal hosted rates (0.1 and 1.0 dollars a million tokens)
//! so that the cost axis reads in dollars. On arith validation tasks it evaluates the
//! Chain-of-Thought seed on each model alone and the seed wrapped by `cascade_models` (as
//! the operator writes it, each check), and prints each program's score, tokens and dollars,
//! and whether it is on the (score up, cost down) front of the four.

use std::sync::Arc;

use rand::SeedableRng;

use metaforge::candidate::{Candidate, CandidateKind};
use metaforge::config::Experiment;
use metaforge::domain::Domain;
use metaforge::evaluate::Evaluator;
use metaforge::llm::{BackendFactory, Budget, Gateways, Role};
use metaforge::propose::Templates;

const TASKS: usize = 40;

const EXPERIMENT: &str = r#"name = "cascade-bench"
[domain]
name = "arith"
val_size = 40
test_size = 10
[models.agent.cheap]
max_tokens = 24
price_prompt_per_mtok = 0.1
price_completion_per_mtok = 0.1
[models.agent.strong]
max_tokens = 256
price_prompt_per_mtok = 1.0
price_completion_per_mtok = 1.0
"#;

fn main() {
    let exp = Experiment::parse(EXPERIMENT, "cascade bench", std::path::Path::new(".")).unwrap();
    let domain = Domain::load(&exp.domain).unwrap();
    let (val, _) = domain.splits(exp.seed, TASKS, 10).unwrap();
    let templates = Templates::embedded()
        .unwrap()
        .with_answer(&domain.answer)
        .with_agent_models(&exp.models.agent);
    let source = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("archive/agents/chain_of_thought.py"),
    )
    .unwrap();
    let seed_code = templates.render_seed("chain_of_thought", &source).unwrap();
    let seed = Candidate {
        id: "seed".into(),
        kind: CandidateKind::Agent,
        name: "Chain-of-Thought".into(),
        thought: String::new(),
        code: seed_code.clone(),
        operator: "seed".into(),
        generation: 0,
        parents: vec![],
        fingerprint: String::new(),
    };
    let checker = metaforge::check::Checker::embedded().unwrap();
    let mut cascades = Vec::new();
    for s in 0..20u64 {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(s);
        if let Ok(p) = metaforge::propose::operators::propose(
            &mut rng,
            &seed,
            None,
            &templates,
            &checker,
            &|_| false,
            Some("cascade_models"),
        ) {
            if p.kind == "op:cascade_models" && !cascades.iter().any(|(n, _): &(String, String)| *n == p.name) {
                cascades.push((p.name, p.code));
            }
        }
    }
    let models = Gateways::build(
        Role::Agent,
        &exp.models.agent,
        &BackendFactory::new(),
        None,
        Arc::new(Budget::unlimited()),
    )
    .unwrap();
    let mut programs: Vec<(String, String, &str)> = vec![
        ("Chain-of-Thought on cheap".into(), seed_code.clone(), "cheap"),
        ("Chain-of-Thought on strong".into(), seed_code, "strong"),
    ];
    programs.extend(cascades.into_iter().map(|(n, c)| (n, c, "cheap")));
    let mut rows = Vec::new();
    for (name, code, default) in &programs {
        let evaluator = Evaluator {
            gateway: models.get(default).unwrap(),
            models: Some(&models),
            cfg: &exp.evaluation,
            scorer: domain.scorer.clone(),
            agent_contract: None,
            require_call_contracts: false,
            episodic: None,
            executor: &metaforge::executor::Executor::Local,
        };
        let started = std::time::Instant::now();
        let e = evaluator
            .evaluate(code, &val, metaforge::types::Split::Val, &|| {})
            .unwrap();
        rows.push((
            name.clone(),
            e.mean,
            e.usage.tokens(),
            e.usage.cost_usd,
            started.elapsed().as_secs_f64(),
        ));
    }
    println!("cascade bench: {TASKS} arith validation tasks, embedded SmolLM2-135M (cheap: 24 tokens, $0.1/Mtok; strong: 256 tokens, $1/Mtok)");
    println!(
        "{:<58} {:>6} {:>8} {:>10} {:>7} {:>6}",
        "program", "score", "tokens", "USD", "wall s", "front"
    );
    for (name, score, tokens, cost, wall) in &rows {
        let dominated = rows
            .iter()
            .any(|(_, s, _, c, _)| s >= score && c <= cost && (s > score || c < cost));
        println!(
            "{name:<58} {score:>6.3} {tokens:>8} {cost:>10.6} {wall:>7.1} {:>6}",
            if dominated { "" } else { "yes" }
        );
    }
    let strong = rows.iter().find(|r| r.0.ends_with("on strong")).unwrap();
    for r in rows.iter().filter(|r| r.0.contains("cascade")) {
        println!(
            "{}: cost {:.2}x the strong model alone, score {:+.3} against it",
            r.0,
            r.3 / strong.3.max(f64::MIN_POSITIVE),
            r.1 - strong.1
        );
    }
}
