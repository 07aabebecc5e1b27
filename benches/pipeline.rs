//! In-process pieces of the loop, with criterion: `cargo bench --bench pipeline`.
//!
//! - tree-sitter check (parse, entry point, every rule in grammars/) of a 200-line candidate
//!   (target ≤ 2 ms);
//! - reading a meta-model reply (JSON in a fence, the common case) and a diff reply;
//! - rendering the rewrite prompt with three context programs and two failures;
//! - the near-duplicate signatures of 2000 archived programs, as resume computes them: one
//!   thread against rayon's pool, with the ratio.

use criterion::{criterion_group, criterion_main, Criterion};
use metaforge::candidate::CandidateKind;
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

/// Signs 2000 distinct programs (the seeds with a numbered constant each) one by one and
/// with `check::signatures` (rayon), and prints both times and their ratio.
fn signatures_at_resume() {
    let seeds: Vec<(&str, &str)> = metaforge::assets::files_with_ext(&metaforge::assets::ARCHIVE, "agents", "py");
    let programs: Vec<String> = (0..2000)
        .map(|i| format!("{}\nLIMIT_{i} = {i}\n", seeds[i % seeds.len()].1))
        .collect();
    let sources: Vec<&str> = programs.iter().map(String::as_str).collect();
    let best = |f: &dyn Fn() -> Vec<metaforge::check::Signature>| {
        (0..3)
            .map(|_| {
                let t = std::time::Instant::now();
                assert_eq!(f().len(), sources.len());
                t.elapsed().as_secs_f64() * 1e3
            })
            .fold(f64::MAX, f64::min)
    };
    let serial = best(&|| sources.iter().map(|s| metaforge::check::signature_of(s)).collect());
    let parallel = best(&|| metaforge::check::signatures(&sources));
    println!(
        "signatures of {} programs: one thread {serial:.1} ms, rayon ({} threads) {parallel:.1} ms, ratio {:.2}x",
        sources.len(),
        rayon::current_num_threads(),
        serial / parallel
    );
}

fn benches(c: &mut Criterion) {
    signatures_at_resume();
    let checker = metaforge::guard::checker(Default::default()).unwrap();
    let code = two_hundred_lines();
    let lines = code.lines().count();
    let report = checker.check("big.py", &code, CandidateKind::Agent);
    assert!(report.passes(), "{}", report.render());
    // More variants than the checker remembers reports, so every check is a fresh one.
    let variants: Vec<String> = (0..32).map(|i| format!("{code}\n# variant {i}\n")).collect();
    let mut next = 0;
    c.bench_function(&format!("check a {lines}-line candidate"), |b| {
        b.iter(|| {
            next = (next + 1) % variants.len();
            checker.check("big.py", std::hint::black_box(&variants[next]), CandidateKind::Agent)
        })
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
