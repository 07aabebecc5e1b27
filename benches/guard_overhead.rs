//! What contract guards cost: `cargo bench --bench guard_overhead`.
//!
//! 1. The check pipeline of one guarded call (repair, regex, JSON parse, JSON Schema, CEL
//!    postcondition) in process: mean and p99 over 20,000 calls.
//! 2. The agent-contract monitor over the scenario suite's traces: µs per event.
//! 3. End to end through real sandboxes with an instant scripted model: a candidate making 20
//!    model calls per task, unguarded without an agent contract (guards off) and guarded with
//!    an agent contract (guards on); per-call wall time of each and the ratio, median of 3.

use std::sync::Arc;
use std::time::{Duration, Instant};

use metaforge::config::{EvaluationConfig, ModelConfig};
use metaforge::domain::Task;
use metaforge::evaluate::Evaluator;
use metaforge::guard::{guarded_call, AgentContract, Contract, ContractSpec, Monitor};
use metaforge::llm::{Budget, Gateway, Role, ScriptedBackend};
use serde_json::json;

const CALLS_PER_TASK: usize = 20;
const TASKS: usize = 24;

fn contract() -> Contract {
    let spec: ContractSpec = serde_json::from_value(json!({
        "repair": ["strip_code_fences", "first_json_object"],
        "regex": "qty",
        "parse": "json",
        "schema": {"type": "object", "required": ["qty"], "properties": {"qty": {"type": "integer", "minimum": 0}}},
        "post": "output.qty <= input.max",
        "fallback": {"const": {"qty": 0}}
    }))
    .unwrap();
    Contract::compile("qty", spec).unwrap()
}

fn pipeline() {
    let c = contract();
    let input = json!({"max": 10});
    let mut times = Vec::with_capacity(20_000);
    for _ in 0..20_000 {
        let t = Instant::now();
        let out = guarded_call(&c, &input, |_, _| Ok("Sure: {\"qty\": 3}".to_string()));
        times.push(t.elapsed());
        std::hint::black_box(out);
    }
    times.sort();
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    println!(
        "guarded call, check pipeline only (instant model): mean {:.1} µs, p99 {:.1} µs",
        mean.as_secs_f64() * 1e6,
        times[times.len() * 99 / 100].as_secs_f64() * 1e6
    );
}

fn monitor() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guard_scenarios");
    let text = std::fs::read_to_string(dir.join("scenarios.jsonl")).unwrap();
    let scenarios: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for name in ["retail", "math", "ordered", "budget"] {
        let toml = std::fs::read_to_string(dir.join(format!("contracts/{name}.toml"))).unwrap();
        let contract = AgentContract::from_toml(name, &toml).unwrap();
        let traces: Vec<(serde_json::Value, Vec<metaforge::guard::Event>)> = scenarios
            .iter()
            .filter(|s| s["contract"] == name)
            .map(|s| {
                (
                    s.get("task").cloned().unwrap_or(json!({})),
                    serde_json::from_value(s["events"].clone()).unwrap(),
                )
            })
            .collect();
        let events: usize = traces.iter().map(|t| t.1.len()).sum();
        let rounds = 100;
        let mut times = Vec::new();
        for _ in 0..rounds {
            for (task, trace) in &traces {
                let Ok(mut m) = Monitor::start(&contract, task) else {
                    continue;
                };
                for e in trace {
                    let t = Instant::now();
                    std::hint::black_box(m.observe(e));
                    times.push(t.elapsed());
                }
                std::hint::black_box(m.finish());
            }
        }
        times.sort();
        let mean = times.iter().sum::<Duration>() / times.len().max(1) as u32;
        println!(
            "agent-contract monitor, {name} contract ({events} events x {rounds}): mean {:.1} µs, p99 {:.1} µs per event",
            mean.as_secs_f64() * 1e6,
            times[times.len() * 99 / 100].as_secs_f64() * 1e6
        );
    }
}

fn end_to_end(guarded: bool, agent: Option<&AgentContract>) -> f64 {
    let code = if guarded {
        format!(
            "from metaforge import llm\nCONTRACTS = {{\"qty\": {{\"pre\": \"input.max >= 0\", \"repair\": [\"first_json_object\"], \"parse\": \"json\", \"schema\": {{\"type\": \"object\", \"required\": [\"qty\"]}}, \"post\": \"output.qty <= input.max\", \"fallback\": {{\"const\": {{\"qty\": 0}}}}}}}}\n\
             def forward(task):\n    total = 0\n    for i in range({CALLS_PER_TASK}):\n        total += llm(task['question'] + str(i), contract=\"qty\", input={{\"max\": 10}})[\"qty\"]\n    return str(total)\n"
        )
    } else {
        format!(
            "from metaforge import llm\nimport json\ndef forward(task):\n    total = 0\n    for i in range({CALLS_PER_TASK}):\n        total += json.loads(llm(task['question'] + str(i)))[\"qty\"]\n    return str(total)\n"
        )
    };
    let backend = Arc::new(ScriptedBackend::new("instant", vec!["{\"qty\": 3}".into()]));
    let mcfg: ModelConfig =
        toml::from_str("backend = \"scripted\"\nmodel = \"s\"\nscript = \"x\"\nmax_concurrency = 64").unwrap();
    let gateway = Gateway::new(Role::Agent, backend, &mcfg, None, Arc::new(Budget::unlimited()));
    let cfg = EvaluationConfig {
        tasks_in_flight: 8,
        ..EvaluationConfig::default()
    };
    let tasks: Vec<Task> = (0..TASKS)
        .map(|i| Task {
            id: format!("t{i}"),
            input: json!({"question": format!("q{i}")}),
            answer: json!(60),
        })
        .collect();
    let evaluator = Evaluator {
        gateway: &gateway,
        models: None,
        cfg: &cfg,
        scorer: metaforge::domain::Scorer::Numeric,
        agent_contract: agent,
        require_call_contracts: false,
        episodic: None,
        executor: &metaforge::executor::Executor::Local,
    };
    let mut runs = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let e = evaluator
            .evaluate(&code, &tasks, metaforge::types::Split::Val, &|| {})
            .unwrap();
        assert_eq!(e.mean, 1.0, "{}", e.detail);
        runs.push(t.elapsed().as_secs_f64() * 1e3 / (TASKS * CALLS_PER_TASK) as f64);
    }
    runs.sort_by(f64::total_cmp);
    runs[1]
}

fn main() {
    pipeline();
    monitor();
    let agent = AgentContract::from_toml(
        "bench",
        "[budgets]\nllm_calls = 50\n[[invariants.soft]]\nid = \"few\"\nexpr = \"state.counters.call_fallbacks <= 1\"\n[output]\nrepair = [\"last_number\"]\nregex = '^[0-9]+$'\nfallback = { const = \"0\" }\n",
    )
    .unwrap();
    let off = end_to_end(false, None);
    let on = end_to_end(true, Some(&agent));
    println!(
        "end to end, {TASKS} tasks x {CALLS_PER_TASK} calls, instant model: guards off {off:.3} ms/call, guards on {on:.3} ms/call, ratio {:.2}x (+{:.1} µs/call)",
        on / off,
        (on - off) * 1e3
    );
}
