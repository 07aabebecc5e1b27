//! In-process pieces of the loop, with criterion: `cargo bench --bench pipeline`.
//!
//! - tree-sitter check (parse, entry point, every rule in grammars/) of a 200-line candidate
//!   (target ≤ 2 ms);
//! - reading a meta-model reply (JSON in a fence, the common case) and a diff reply;
//! - rendering the rewrite prompt with three context programs and two failures.

use criterion::{criterion_group, criterion_main, Criterion};
use metaforge::candidate::CandidateKind;
use metaforge::check::Checker;
use metaforge::propose::diff::parse_edits;
use metaforge::propose::reply::parse_reply;
use metaforge::propose::Templates;

/// Every seed agent in one file, all but the last `forward` renamed: ~200 lines of real code.
fn two_hundred_lines() -> String {
    let seeds: Vec<(&str, &str)> = metaforge::assets::files_with_ext(&metaforge::assets::ARCHIVE, "agents", "py");
    let mut out = String::new();
    for (i, (_, code)) in seeds.iter().enumerate() {
        if i + 1 < seeds.len() {
            out.push_str(&code.replace("def forward(", &format!("def forward_{i}(")));
        } else {
            out.push_str(code);
        }
        out.push('\n');
    }
    while out.lines().count() < 200 {
        out.push_str("\ndef helper(text):\n    return text.strip()\n");
    }
    out
}

fn benches(c: &mut Criterion) {
    let checker = Checker::embedded().unwrap();
    let code = two_hundred_lines();
    let lines = code.lines().count();
    let report = checker.check("big.py", &code, CandidateKind::Agent);
    assert!(report.passes(), "{}", report.render());
    c.bench_function(&format!("check a {lines}-line candidate"), |b| {
        b.iter(|| checker.check("big.py", std::hint::black_box(&code), CandidateKind::Agent))
    });

    let reply = format!(
        "Here is my design.\n```json\n{}\n```\n",
        serde_json::json!({"thought": "Vote over five samples.", "name": "Vote", "code": code})
    );
    c.bench_function("parse a JSON-in-fence reply", |b| {
        b.iter(|| parse_reply(std::hint::black_box(&reply)).unwrap())
    });
    let diff = "<<<<<<< SEARCH\n    return answer\n=======\n    return answer.strip()\n>>>>>>> REPLACE\n".repeat(3);
    c.bench_function("parse a 3-block diff reply", |b| {
        b.iter(|| parse_edits(std::hint::black_box(&diff)).unwrap())
    });

    let templates = Templates::embedded().unwrap();
    let ctx = serde_json::json!({
        "domain": {"description": "Short arithmetic word problems."},
        "example": "{\"question\": \"What is 3 plus 4?\"}",
        "context": (0..3).map(|i| serde_json::json!({"name": format!("P{i}"), "code": &code, "score": 0.5, "ci_lo": 0.3, "ci_hi": 0.7, "tokens": 1000})).collect::<Vec<_>>(),
        "failures": [["check_failed", "line 3: no module-level forward"], ["runtime_error", "ZeroDivisionError"]],
        "base_code": null,
    });
    c.bench_function("render the rewrite prompt (3 programs, 2 failures)", |b| {
        b.iter(|| {
            templates
                .render_for("rewrite", "arith", "propose.j2", std::hint::black_box(&ctx))
                .unwrap()
        })
    });
}

criterion_group!(pipeline, benches);
criterion_main!(pipeline);
