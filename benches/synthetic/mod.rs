//! A synthetic archive for the benches: one candidate per step with a 20-task validation
//! evaluation and one lineage edge, scores and costs that trade off as in real archives.

use metaforge::archive::{ProposalRecord, ProposalStatus, StepRecord};
use metaforge::candidate::{Candidate, CandidateKind};
use metaforge::evaluate::{Evaluation, Outcome, TaskResult};
use metaforge::llm::Usage;
use rand::Rng;

pub const CONFIG: &str = "name = \"scale\"\n[domain]\nname = \"arith\"\n[models.meta]\nbackend = \"local\"\nmodel = \"smollm2-135m\"\n[models.agent]\nbackend = \"local\"\nmodel = \"smollm2-135m\"\n";

pub fn step(i: u64, rng: &mut impl Rng) -> StepRecord {
    let code = format!(
        "from metaforge import llm\n\ndef forward(task):\n    \"\"\"Variant {i}.\"\"\"\n    answer = llm('Solve step by step: ' + task['question'], temperature=0.{})\n    return answer.strip()\n",
        i % 10
    );
    // Stronger programs tend to spend more tokens (ensembles, debate): score and cost trade
    // off, as in real archives, which is what makes fronts non-trivial.
    let score: f64 = rng.random_range(0.0..1.0);
    let tokens = (500.0 + 15_000.0 * score + rng.random_range(-2_000.0..2_000.0f64)).max(100.0) as u64;
    let parents = if i == 0 {
        vec![]
    } else {
        vec![format!("{:064x}", rng.random_range(0..i))]
    };
    let tasks = (0..20)
        .map(|t| TaskResult {
            task_id: format!("arith-{t}"),
            score: if rng.random_bool(score) { 1.0 } else { 0.0 },
            outcome: metaforge::types::TaskOutcome::Ok,
            output: Some("42".into()),
            error: None,
            usage: Usage {
                calls: 1,
                prompt_tokens: tokens / 40,
                completion_tokens: tokens / 40,
                ..Usage::default()
            },
            guard: None,
        })
        .collect();
    let evaluation = Evaluation {
        split: metaforge::types::Split::Val,
        stage: metaforge::types::Stage::Full,
        mean: score,
        ci_lo: (score - 0.2).max(0.0),
        ci_hi: (score + 0.2).min(1.0),
        usage: Usage {
            calls: 20,
            prompt_tokens: tokens / 2,
            completion_tokens: tokens / 2,
            ..Usage::default()
        },
        wall_ms: 900.0,
        outcome: Outcome::Ok,
        detail: String::new(),
        tasks,
        guard: None,
    };
    let candidate = Candidate {
        id: format!("{i:064x}"),
        kind: CandidateKind::Agent,
        name: format!("Variant {i}"),
        thought: "synthetic".into(),
        code,
        operator: if i == 0 {
            "seed".into()
        } else {
            "op:swap_instruction".into()
        },
        generation: (i / 100) as u32,
        parents: parents.clone(),
        fingerprint: format!("{:016x}", i % 977),
    };
    StepRecord {
        step: i,
        generation: (i / 100) as u32,
        proposals: vec![ProposalRecord {
            attempt: 0,
            kind: candidate.operator.clone(),
            parents,
            status: ProposalStatus::Evaluated,
            reason: String::new(),
            candidate: Some(candidate),
            evaluation: Some(evaluation),
            prompt: None,
            reply: None,
            race: None,
            model: None,
        }],
        ..StepRecord::default()
    }
}
