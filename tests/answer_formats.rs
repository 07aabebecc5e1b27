//! One search over any answer: the built-in seeds, the instruction library and the blocks are
//! written once over the domain's answer format (`domain::AnswerSpec`) and rendered for it.
//! Checked here on the three shipped kinds of domain: numbers (arith), letters (opposites,
//! scored `mc`) and labels (kinds, scored `label`), and on the errors a user meets when the
//! format and the data disagree.

use std::path::Path;

use metaforge::candidate::CandidateKind;
use metaforge::config::Experiment;
use metaforge::domain::{AnswerKind, Domain};
use metaforge::propose::Templates;

fn experiment(file: &str) -> Experiment {
    Experiment::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments").join(file)).unwrap()
}

fn seeds_for(file: &str) -> (Domain, Vec<(String, String)>) {
    let exp = experiment(file);
    let domain = Domain::load(&exp.domain).unwrap();
    let templates = Templates::embedded().unwrap().with_answer(&domain.answer);
    let all = [std::path::PathBuf::from("all")];
    let seeds = metaforge::search::resolve_seeds(&all, CandidateKind::Agent, &templates).unwrap();
    (domain, seeds)
}

fn instruction_of(seeds: &[(String, String)], stem: &str) -> String {
    let code = &seeds.iter().find(|(s, _)| s == stem).unwrap().1;
    metaforge::propose::operators::instruction_constants(code)
        .into_iter()
        .find(|(n, _)| n == "INSTRUCTION")
        .unwrap()
        .1
}

/// Direct Answer and Chain-of-Thought say what the scorer wants in each domain; the numeric
/// rendering is today's text to the byte, so arith runs exactly as before.
#[test]
fn a_seed_is_rendered_for_three_answer_formats() {
    let cases = [
        ("search-proof.toml", AnswerKind::Number, "Answer the question with a single number and nothing else.", "'Answer: <number>'"),
        ("search-proof-opposites.toml", AnswerKind::Letter, "Answer the question with the letter of the correct option and nothing else.", "'Answer: <letter>'"),
        ("search-proof-kinds.toml", AnswerKind::Label, "Answer the question with one word: animal, clothing, color, drink, fruit, instrument, job, sport, tool or vehicle and nothing else.", "'Answer: <label>'"),
    ];
    let checker = metaforge::guard::checker(Default::default()).unwrap();
    for (file, kind, direct, cot) in cases {
        let (domain, seeds) = seeds_for(file);
        assert_eq!(domain.answer.kind, kind, "{file}");
        assert_eq!(instruction_of(&seeds, "direct_answer"), direct, "{file}");
        assert!(instruction_of(&seeds, "chain_of_thought").contains(cot), "{file}");
        for (stem, code) in &seeds {
            assert!(
                !code.contains("{{") && !code.contains("{%"),
                "{file}: {stem} left a placeholder"
            );
            let report = checker.check(&format!("{stem}.py"), code, CandidateKind::Agent);
            assert!(report.passes(), "{file}: {stem}: {}", report.render());
            if kind != AnswerKind::Number {
                assert!(
                    !code.contains("<number>") && !code.contains("single number"),
                    "{file}: {stem} asks for a number"
                );
            }
        }
        // Guarded Answer parses an integer: it is a seed for numbers only.
        let has_guarded = seeds.iter().any(|(s, _)| s == "guarded_answer");
        assert_eq!(has_guarded, kind == AnswerKind::Number, "{file}");
    }
}

/// The choice blocks are offered where answers are closed, the calculator where they are
/// numbers, and each block's code passes `check` on a real seed.
#[test]
fn blocks_are_offered_for_the_answers_they_fit() {
    use metaforge::propose::operators::applicable;
    let names = |file: &str| {
        let (domain, _) = seeds_for(file);
        applicable(CandidateKind::Agent, false, &domain.answer, 1)
            .map(|o| o.name)
            .collect::<Vec<_>>()
    };
    let arith = names("search-proof.toml");
    let opposites = names("search-proof-opposites.toml");
    let kinds = names("search-proof-kinds.toml");
    for block in [
        "constrain_choice",
        "judge_options",
        "rank_options",
        "map_choice",
        "vote_labels",
    ] {
        assert!(!arith.contains(&block), "{block} offered on arith");
        assert!(opposites.contains(&block) && kinds.contains(&block), "{block} missing");
    }
    assert!(arith.contains(&"use_calculator") && !kinds.contains(&"use_calculator"));
}

fn load_error(toml_domain: &str, tasks: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tasks.jsonl"), tasks).unwrap();
    let text = format!(
        "name = \"x\"\n[domain]\nname = \"mine\"\npath = \"tasks.jsonl\"\n{toml_domain}\n[models.meta]\nbackend = \"local\"\nmodel = \"smollm2-135m\"\n[models.agent]\nbackend = \"local\"\nmodel = \"smollm2-135m\"\n"
    );
    std::fs::write(dir.path().join("exp.toml"), text).unwrap();
    let exp = Experiment::load(&dir.path().join("exp.toml")).unwrap();
    let err = Domain::load(&exp.domain).err().expect("refused");
    format!("{err:#}").replace(&dir.path().display().to_string(), "DIR")
}

/// Where the answer format and the data disagree, the error names the key and the fix.
#[test]
fn answer_format_mistakes_are_named_with_their_fix() {
    let label = "{\"question\": \"q\", \"answer\": \"maybe\"}\n";
    let mc = "{\"question\": \"q\", \"options\": [\"x\", \"y\"], \"answer\": \"A\"}\n";
    insta::assert_snapshot!([
        load_error("scorer = \"label\"", label),
        load_error("scorer = \"label\"\nchoices = [\"yes\", \"no\"]", label),
        load_error("scorer = \"mc\"\nchoices = [\"yes\", \"no\"]", mc),
        load_error("scorer = \"exact\"\nchoices = [\"yes\", \"yes\"]", label),
    ]
    .join("\n"));
}

/// The two non-numeric proof domains are generated, and their generators reproduce the
/// shipped files byte for byte; every gold answer is one its task allows.
#[test]
fn the_choice_and_label_sets_are_reproduced_by_their_scripts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in ["opposites", "kinds"] {
        let out = std::process::Command::new("python3")
            .arg(root.join(format!("data/make_{name}.py")))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let shipped = std::fs::read(root.join(format!("data/{name}.jsonl"))).unwrap();
        assert!(
            out.stdout == shipped,
            "data/make_{name}.py no longer makes data/{name}.jsonl"
        );
    }
    let (domain, _) = seeds_for("search-proof-opposites.toml");
    assert!(domain
        .tasks
        .iter()
        .all(|t| t.input["options"].as_array().is_some_and(|o| o.len() == 4)));
    let (domain, _) = seeds_for("search-proof-kinds.toml");
    assert!(domain
        .tasks
        .iter()
        .all(|t| t.input["choices"].as_array().is_some_and(|c| c.len() == 10)));
}
