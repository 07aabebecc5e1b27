//! The contract scenario suite: raw event traces and raw text outputs under four agent
//! contracts (tests/guard_scenarios/contracts), each with the verdict a reader can check by
//! hand. Prints per-rule precision and recall, as AgentAssert's benchmark does, but over
//! predicates the monitor computes itself (regexes, schemas, CEL) rather than given flags.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use metaforge::guard::{AgentContract, Monitor};
use serde::Deserialize;
use serde_json::Value;

#[derive(Deserialize)]
struct Scenario {
    id: String,
    contract: String,
    #[serde(default)]
    task: Option<Value>,
    events: Vec<metaforge::guard::Event>,
    expected: Expected,
}

#[derive(Deserialize)]
struct Expected {
    verdict: String,
    rules: BTreeSet<String>,
    hard: Option<u32>,
    soft: Option<u32>,
    recovered: Option<u32>,
    persistent: Option<u32>,
    denied: Option<Vec<String>>,
    fallback: Option<bool>,
    #[serde(rename = "final")]
    final_output: Option<Value>,
}

#[test]
fn scenario_suite_verdicts_and_per_rule_precision_recall() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guard_scenarios");
    let mut contracts = BTreeMap::new();
    for entry in std::fs::read_dir(dir.join("contracts")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        contracts.insert(name.clone(), AgentContract::from_toml(&name, &text).unwrap());
    }
    let text = std::fs::read_to_string(dir.join("scenarios.jsonl")).unwrap();
    let scenarios: Vec<Scenario> = text
        .lines()
        .enumerate()
        .map(|(i, l)| serde_json::from_str(l).unwrap_or_else(|e| panic!("scenarios.jsonl:{}: {e}", i + 1)))
        .collect();
    assert!(scenarios.len() >= 100, "the suite has {} scenarios", scenarios.len());
    let mut failures = Vec::new();
    // rule -> (tp, fp, fn)
    let mut counts: BTreeMap<String, (u32, u32, u32)> = BTreeMap::new();
    let mut verdicts: BTreeMap<String, u32> = BTreeMap::new();
    for s in &scenarios {
        let contract = &contracts[&s.contract];
        let task = s.task.clone().unwrap_or_else(|| serde_json::json!({}));
        let verdict = match Monitor::start(contract, &task) {
            Err(why) => Monitor::invalid(why),
            Ok(mut m) => {
                for e in &s.events {
                    m.observe(e);
                }
                m.finish()
            }
        };
        *verdicts.entry(s.expected.verdict.clone()).or_default() += 1;
        let got: BTreeSet<String> = verdict.hits.iter().map(|h| h.rule.clone()).collect();
        for rule in got.union(&s.expected.rules) {
            let c = counts.entry(rule.clone()).or_default();
            match (got.contains(rule), s.expected.rules.contains(rule)) {
                (true, true) => c.0 += 1,
                (true, false) => c.1 += 1,
                (false, true) => c.2 += 1,
                _ => {}
            }
        }
        let mut wrong = Vec::new();
        let mut differ = |what: &str, want: String, have: String| {
            if want != have {
                wrong.push(format!("{what}: expected {want}, got {have}"));
            }
        };
        let e = &s.expected;
        differ("verdict", e.verdict.clone(), verdict.verdict.clone());
        differ("rules", format!("{:?}", e.rules), format!("{got:?}"));
        let pairs = [
            ("hard", e.hard, verdict.hard),
            ("soft", e.soft, verdict.soft),
            ("recovered", e.recovered, verdict.recovered),
            ("persistent", e.persistent, verdict.persistent),
        ];
        for (what, want, have) in pairs {
            if let Some(w) = want {
                differ(what, w.to_string(), have.to_string());
            }
        }
        if let Some(d) = &e.denied {
            differ("denied", format!("{d:?}"), format!("{:?}", verdict.denied));
        }
        if let Some(f) = e.fallback {
            differ("fallback", f.to_string(), verdict.fallback.to_string());
        }
        if let Some(f) = &e.final_output {
            differ(
                "final",
                f.to_string(),
                verdict.final_output.as_ref().map_or("none".into(), |v| v.to_string()),
            );
        }
        if !wrong.is_empty() {
            failures.push(format!("{}: {}\n  hits: {:?}", s.id, wrong.join("; "), verdict.hits));
        }
    }
    println!("{} scenarios; verdicts {verdicts:?}", scenarios.len());
    println!(
        "{:<26} {:>4} {:>4} {:>4} {:>9} {:>7}",
        "rule", "tp", "fp", "fn", "precision", "recall"
    );
    for (rule, (tp, fp, fneg)) in &counts {
        let p = *tp as f64 / (tp + fp).max(1) as f64;
        let r = *tp as f64 / (tp + fneg).max(1) as f64;
        println!("{rule:<26} {tp:>4} {fp:>4} {fneg:>4} {p:>9.3} {r:>7.3}");
    }
    assert!(
        failures.is_empty(),
        "{} scenarios disagree:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
