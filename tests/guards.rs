//! Contract guards end to end: a real run (real sandboxes, real SQLite) with a SCRIPTED agent
//! model under an agent contract. Each seed meets a different guard: Chain-of-Thought complies,
//! Direct Answer's final answer fails the output contract (its fallback is scored), Guarded
//! Answer's own guarded call never gets a valid reply (its fallback is returned after three
//! attempts), and Quality-Diversity's fourth call breaks the call budget (a hard violation:
//! infeasible, never a parent).

mod common;

use std::path::Path;

use common::*;
use rusqlite::Connection;
use serde_json::Value;

const CONTRACT: &str = r#"
[pre]
hard = ["size(task.question) > 0"]
[budgets]
llm_calls = 3
[output]
repair = ["last_number"]
regex = '^-?[0-9]+$'
fallback = { const = "0" }
"#;

fn write_guarded_experiment(dir: &Path) -> std::path::PathBuf {
    let domain = sevens_domain(dir, 6, 4);
    std::fs::write(dir.join("contract.toml"), CONTRACT).unwrap();
    std::fs::write(
        dir.join("agent.json"),
        r#"{"rules": [
          {"contains": "single number", "reply": "seven"},
          {"contains": "final number only", "reply": "I am not sure"},
          {"contains": "was rejected", "reply": "still not sure"}
        ], "default": "i - i + 7 = 7. Answer: 7"}"#,
    )
    .unwrap();
    let text = format!(
        r#"name = "guarded"
seed = 5
[domain]
{domain}[models.meta]
backend = "scripted"
model = "meta"
script = "{meta}"
[models.agent]
backend = "scripted"
model = "agent"
script = "agent.json"
[search]
seeds = ["chain_of_thought", "direct_answer", "guarded_answer", "quality_diversity"]
generations = 1
proposals_per_generation = 2
test_top_k = 1
objectives = ["score", "fallback_rate"]
[proposers]
operators = 1.0
[guards]
contract = "contract.toml"
allowed_imports = ["re", "math"]
[evaluation]
tasks_in_flight = 3
task_timeout_s = 20
"#,
        meta = fixtures().join("scripted_meta.json").display(),
    );
    let path = dir.join("guarded.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn guard_of(db: &Path, name: &str) -> (String, Value) {
    let conn = Connection::open(db).unwrap();
    let (id, text): (String, String) = conn
        .query_row(
            "SELECT c.id, e.guard FROM candidates c JOIN evaluations e ON e.candidate_id = c.id
             WHERE e.split = 'val' AND c.name = ?1 AND c.operator = 'seed'",
            [name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap_or_else(|e| panic!("no guarded evaluation of {name}: {e}"));
    (id, serde_json::from_str(&text).unwrap())
}

#[test]
fn guards_record_violations_and_fallbacks_per_candidate() {
    let dir = tempfile::tempdir().unwrap();
    let exp = write_guarded_experiment(dir.path());
    let db = dir.path().join("guarded.db");
    run_to_end(&exp, &db);

    let (_, cot) = guard_of(&db, "Chain-of-Thought");
    assert_eq!(
        (cot["hard"].as_u64(), cot["final_fallbacks"].as_u64()),
        (Some(0), Some(0)),
        "{cot}"
    );

    let (_, direct) = guard_of(&db, "Direct Answer");
    assert_eq!(
        direct["final_fallbacks"], direct["tasks"],
        "every 'seven' is replaced by the fallback: {direct}"
    );
    assert_eq!(direct["hard"], 0);

    let (_, guarded) = guard_of(&db, "Guarded Answer");
    let tasks = guarded["tasks"].as_u64().unwrap();
    let calls = &guarded["calls"];
    assert_eq!(calls["calls"].as_u64(), Some(tasks), "{guarded}");
    assert_eq!(calls["fallbacks"].as_u64(), Some(tasks), "{guarded}");
    assert_eq!(
        calls["attempts"].as_u64(),
        Some(3 * tasks),
        "three attempts, then the fallback: {guarded}"
    );
    assert_eq!(calls["rejects"]["regex"].as_u64(), Some(3 * tasks), "{guarded}");
    assert_eq!(guarded["tiers"]["answer"], "verified", "{guarded}");
    assert_eq!(
        guarded["tiers"]["[output]"], "verified",
        "the agent contract's output fallback: {guarded}"
    );
    let per_contract = &guarded["contracts"]["answer"];
    assert_eq!(
        (
            per_contract["fallbacks"].as_u64(),
            per_contract["rejects"]["regex"].as_u64()
        ),
        (Some(tasks), Some(3 * tasks)),
        "{guarded}"
    );

    // Exported files have no host to enforce contracts: guarded candidates are left out of a
    // ranked export and refused by id.
    let (guarded_id, _) = guard_of(&db, "Guarded Answer");
    let out = dir.path().join("export");
    let exported = metaforge(
        dir.path(),
        &[
            "export",
            db.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--top",
            "20",
        ],
    );
    ok(&exported);
    assert!(
        String::from_utf8_lossy(&exported.stderr).contains("skipping"),
        "{exported:?}"
    );
    let listed = std::fs::read_to_string(out.join("agents.json")).unwrap();
    assert!(
        !listed.contains(&guarded_id) && listed.contains("Chain-of-Thought"),
        "{listed}"
    );
    let by_id = metaforge(
        dir.path(),
        &[
            "export",
            db.to_str().unwrap(),
            "--out",
            dir.path().join("e2").to_str().unwrap(),
            "--id",
            &guarded_id[..12],
        ],
    );
    assert!(
        !by_id.status.success() && String::from_utf8_lossy(&by_id.stderr).contains("fix"),
        "{by_id:?}"
    );

    let (qd_id, qd) = guard_of(&db, "Quality-Diversity");
    assert!(
        qd["hard"].as_u64().unwrap() >= tasks,
        "the fourth call of every task is denied: {qd}"
    );
    assert_eq!(qd["hard_free"].as_u64(), Some(0), "{qd}");
    assert_eq!(cot["hard_free"], cot["tasks"], "{cot}");
    assert_eq!(
        count(&db, &format!("SELECT count(*) FROM lineage WHERE parent = '{qd_id}'")),
        0,
        "a candidate with hard violations is infeasible: never a parent"
    );
    let breach: String = Connection::open(&db)
        .unwrap()
        .query_row("SELECT reason FROM proposals WHERE candidate_id = ?1", [&qd_id], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(
        breach.contains("hard contract violations") && breach.contains("budget:llm_calls"),
        "{breach}"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM task_results t JOIN evaluations e ON e.id = t.evaluation_id WHERE e.split = 'val' AND t.guard IS NULL"),
        0,
        "every task of a guarded run has its guard record"
    );

    let status = ok(&metaforge(dir.path(), &["status", db.to_str().unwrap()]));
    assert!(status.contains("contract guards on validation"), "{status}");
    let line = status
        .lines()
        .find(|l| l.contains("Guarded Answer") && l.contains('%'))
        .unwrap_or_else(|| panic!("{status}"));
    // Six final answers (the fallback's "0" passes the output contract) and six guarded calls
    // (all fallbacks): half of the guarded values were fallbacks.
    assert!(
        line.contains("50.0%") && line.contains("6/6") && line.contains("regex 18"),
        "Guarded Answer: {line}"
    );
    assert!(
        status
            .contains("contract \"answer\" (verified): 6 calls, 0 accepted first try, 3.0 attempts/call, 6 fallbacks"),
        "{status}"
    );
    let report = dir.path().join("report.html");
    ok(&metaforge(
        dir.path(),
        &["report", db.to_str().unwrap(), "-o", report.to_str().unwrap()],
    ));
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(
        html.contains("id=\"guard-table\"") && html.contains("<td>Guarded Answer</td>"),
        "the report's guard table"
    );

    // A guard record this build cannot read is an error, not a row that vanishes.
    Connection::open(&db)
        .unwrap()
        .execute(
            "UPDATE evaluations SET guard = '{\"tasks\": \"many\"}' WHERE guard IS NOT NULL",
            [],
        )
        .unwrap();
    let out = metaforge(dir.path(), &["status", db.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("evaluations.guard holds a record this metaforge cannot read")
            && err.contains("fix:"),
        "{err}"
    );
}

#[test]
fn bad_contracts_are_refused_naming_the_file_and_the_fix() {
    for (contract, expect) in [
        ("[budget]\nllm_calls = 3\n", "budget"),
        (
            "[[invariants.hard]]\nid = \"x\"\nexpr = \"state.counters.llm_calls <\"\n",
            "does not compile",
        ),
        ("[output]\nregex = '(?<=a)b'\nfallback = { const = \"b\" }\n", "regex"),
        (
            "[[invariants.soft]]\nid = \"a\"\nexpr = \"true\"\n[[invariants.soft]]\nid = \"a\"\nexpr = \"true\"\n",
            "two rules",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let exp = write_guarded_experiment(dir.path());
        std::fs::write(dir.path().join("contract.toml"), contract).unwrap();
        let db = dir.path().join("refused.db");
        let err = refused(&metaforge(
            dir.path(),
            &["run", exp.to_str().unwrap(), "--db", db.to_str().unwrap()],
        ));
        assert!(
            err.contains("contract.toml") && err.contains(expect) && err.contains("fix"),
            "{contract}\n{err}"
        );
        assert!(!db.exists());
    }
}

#[test]
fn an_unprovable_output_fallback_is_refused_before_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let exp = write_guarded_experiment(dir.path());
    std::fs::write(
        dir.path().join("contract.toml"),
        "[output]\nparse = \"int\"\npost = \"output > 0\"\nfallback = { const = 0 }\n",
    )
    .unwrap();
    let db = dir.path().join("refused.db");
    let err = refused(&metaforge(
        dir.path(),
        &["run", exp.to_str().unwrap(), "--db", db.to_str().unwrap()],
    ));
    assert!(
        err.contains("contract.toml") && err.contains("fallback") && err.contains("fix"),
        "{err}"
    );
    assert!(!db.exists(), "nothing is created for a refused experiment");
}

/// Calls a task makes from threads it starts count against that task's budget: the worker
/// attributes them, and the host refuses calls attributed to no task.
#[test]
fn calls_from_a_tasks_threads_count_against_its_budget() {
    use metaforge::config::EvaluationConfig;
    use metaforge::domain::{Scorer, Task};
    use metaforge::evaluate::Evaluator;
    use metaforge::guard::AgentContract;

    let contract = AgentContract::from_toml("two-calls", "[budgets]\nllm_calls = 2\n").unwrap();
    let gateway = scripted_gateway("7");
    let cfg = EvaluationConfig::default();
    let evaluator = Evaluator {
        gateway: &gateway,
        models: None,
        cfg: &cfg,
        scorer: Scorer::Numeric,
        agent_contract: Some(&contract),
        require_call_contracts: false,
        episodic: None,
        executor: &metaforge::executor::Executor::Local,
    };
    let code = "from metaforge import llm, LLMError\nimport threading\n\ndef forward(task):\n    out = []\n    def ask(i):\n        try:\n            out.append(llm('q' + str(i)))\n        except LLMError as e:\n            out.append('denied')\n    ts = [threading.Thread(target=ask, args=(i,)) for i in range(3)]\n    [t.start() for t in ts]\n    [t.join() for t in ts]\n    return str(sorted(out))\n";
    let tasks = vec![Task {
        id: "t0".into(),
        input: serde_json::json!({"question": "q"}),
        answer: serde_json::json!(7),
    }];
    let e = evaluator
        .evaluate(code, &tasks, metaforge::types::Split::Val, &|| {})
        .unwrap();
    let g = e.tasks[0].guard.as_ref().expect("guarded");
    assert_eq!(
        g.hard, 1,
        "the third call of the task, made from a thread, is denied: {g:?}"
    );
    assert!(
        e.tasks[0].output.as_deref().unwrap_or("").contains("denied"),
        "{:?}",
        e.tasks[0]
    );
}
