//! LLM-free operators: structural mutations and crossovers of agent programs with
//! tree-sitter. They are the offline default meta-proposer because small local models
//! cannot write useful agent code; every result must pass `check` or it is discarded and
//! another operator is tried.
//!
//! Each operator is one entry of `OPERATORS` with a doc line saying what it does.

use std::collections::HashMap;

use rand::seq::IndexedRandom;
use rand::{Rng, RngCore};
use serde_json::json;
use tree_sitter::Node;

use super::{Proposal, Templates};
use crate::candidate::{Candidate, CandidateKind};
use crate::check::{parse_python, Checker};

type Apply = fn(&mut dyn RngCore, &Candidate, Option<&Candidate>, &Templates) -> Option<(String, String, String)>;

pub struct Operator {
    pub name: &'static str,
    /// Needs a second parent (crossover).
    pub binary: bool,
    /// The candidate kind it applies to; None: any (it edits module constants only).
    pub kind: Option<CandidateKind>,
    /// The answers it is made for: a calculator helps number tasks only, the choice blocks
    /// tasks with a closed set of answers.
    pub answers: Answers,
    /// The fewest agent models it needs (a cascade needs a cheap and a strong one).
    pub models: usize,
    /// What it does, for `--help`-style listings and the architecture doc.
    pub doc: &'static str,
    apply: Apply,
}

pub const OPERATORS: &[Operator] = &[
    Operator {
        name: "tune_constant",
        binary: false,
        answers: Answers::Any,
        models: 1,
        kind: None,
        doc: "change one numeric module constant (sample count, rounds, temperature)",
        apply: tune_constant,
    },
    Operator {
        name: "swap_instruction",
        binary: false,
        answers: Answers::Any,
        models: 1,
        kind: Some(CandidateKind::Agent),
        doc: "replace one instruction string constant with another from templates/operators/instructions.txt",
        apply: swap_instruction,
    },
    Operator {
        name: "wrap_vote",
        binary: false,
        answers: Answers::Any,
        models: 1,
        kind: Some(CandidateKind::Agent),
        doc: "wrap the agent in a majority vote over N runs",
        apply: wrap_vote,
    },
    Operator {
        name: "wrap_refine",
        binary: false,
        answers: Answers::Any,
        models: 1,
        kind: Some(CandidateKind::Agent),
        doc: "add a self-check and correction pass after the agent",
        apply: wrap_refine,
    },
    Operator {
        name: "wrap_verify",
        binary: false,
        answers: Answers::Any,
        models: 1,
        kind: Some(CandidateKind::Agent),
        doc: "verify the agent's answer and rerun it when the verifier rejects it",
        apply: wrap_verify,
    },
    Operator {
        name: "wrap_extract",
        binary: false,
        answers: Answers::Any,
        models: 1,
        kind: Some(CandidateKind::Agent),
        doc: "keep only one part of the agent's answer (first line, text after 'Answer:', first or last number; templates/operators/extractors.txt)",
        apply: wrap_extract,
    },
    Operator {
        name: "add_stop",
        binary: false,
        answers: Answers::Any,
        models: 1,
        kind: Some(CandidateKind::Agent),
        doc: "give every llm() call without one a stop sequence (templates/operators/stops.txt), so replies end where the answer does",
        apply: add_stop,
    },
    Operator {
        name: "use_calculator",
        binary: false,
        answers: Answers::Number,
        models: 1,
        kind: Some(CandidateKind::Agent),
        doc: "let the model write a calculation that metaforge.calc computes; the agent answers when none comes back (templates/operators/tool_prompts.txt)",
        apply: use_calculator,
    },
    Operator {
        name: "wrap_decompose",
        binary: false,
        answers: Answers::Any,
        models: 1,
        kind: Some(CandidateKind::Agent),
        doc: "have the model break the question into parts first and pass its notes to the agent (templates/operators/decompose_prompts.txt)",
        apply: wrap_decompose,
    },
    Operator {
        name: "constrain_choice",
        binary: false,
        answers: Answers::Closed,
        models: 1,
        kind: Some(CandidateKind::Agent),
        doc: "the model answers again, held to the task's choices while it decodes (templates/operators/choice_prompts.txt)",
        apply: constrain_choice,
    },
    Operator {
        name: "judge_options",
        binary: false,
        answers: Answers::Closed,
        models: 1,
        kind: Some(CandidateKind::Agent),
        doc: "ask the model yes or no about each option on its own, and answer with the one it accepts",
        apply: judge_options,
    },
    Operator {
        name: "rank_options",
        binary: false,
        answers: Answers::Closed,
        models: 1,
        kind: Some(CandidateKind::Agent),
        doc: "answer with the option whose own words the model finds likeliest after the question, rather than its letter",
        apply: rank_options,
    },
    Operator {
        name: "map_choice",
        binary: false,
        answers: Answers::Closed,
        models: 1,
        kind: Some(CandidateKind::Agent),
        doc: "read the agent's free-text reply as the choice it names, or the option nearest to it",
        apply: map_choice,
    },
    Operator {
        name: "vote_labels",
        binary: false,
        answers: Answers::Closed,
        models: 1,
        kind: Some(CandidateKind::Agent),
        doc: "run the agent N times, read each reply as a choice, and answer with the most common",
        apply: vote_labels,
    },
    Operator {
        name: "crossover_constants",
        binary: true,
        answers: Answers::Any,
        models: 1,
        kind: None,
        doc: "take the values of constants both parents define from the second parent",
        apply: crossover_constants,
    },
    Operator {
        name: "crossover_ensemble",
        binary: true,
        answers: Answers::Any,
        models: 1,
        kind: Some(CandidateKind::Agent),
        doc: "splice both parents into one module and vote between them",
        apply: crossover_ensemble,
    },
    Operator {
        name: "memory_focus",
        binary: false,
        answers: Answers::Any,
        models: 1,
        kind: Some(CandidateKind::Memory),
        doc: "keep only the retrieved lines that share the most distinctive words (ones few lines have) with the new observation",
        apply: memory_focus,
    },
    Operator {
        name: "memory_success_only",
        binary: false,
        answers: Answers::Any,
        models: 1,
        kind: Some(CandidateKind::Memory),
        doc: "store an episode only when its reward reaches a threshold",
        apply: memory_success_only,
    },
    Operator {
        name: "memory_feedback",
        binary: false,
        answers: Answers::Any,
        models: 1,
        kind: Some(CandidateKind::Memory),
        doc: "also store the environment's reply to steps that raised (or lowered) the reward, retrieved by shared words",
        apply: memory_feedback,
    },
    Operator {
        name: "memory_union",
        binary: true,
        answers: Answers::Any,
        models: 1,
        kind: Some(CandidateKind::Memory),
        doc: "one memory made of both parents: both are updated, both retrievals are joined",
        apply: memory_union,
    },
    Operator {
        name: "cascade_models",
        binary: false,
        answers: Answers::Any,
        models: 2,
        kind: Some(CandidateKind::Agent),
        doc: "run the agent on the cheapest agent model first and again on the strongest when its answer fails a check (templates/operators/cascade_checks.txt)",
        apply: cascade_models,
    },
];

/// Which answers an operator is made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answers {
    Any,
    Number,
    /// A letter or a label: a closed set of answers (`AnswerSpec::is_closed`).
    Closed,
}

impl Answers {
    fn fit(self, answer: &crate::domain::AnswerSpec) -> bool {
        match self {
            Answers::Any => true,
            Answers::Number => answer.kind == crate::domain::AnswerKind::Number,
            Answers::Closed => answer.is_closed(),
        }
    }
}

/// Tries the operators in a random order and returns the first result that passes `check`
/// and that `is_known` (given the normalised source) does not recognise as an archived
/// program: deterministic operators on the same parents would otherwise keep proposing the
/// same child.
/// `first` names the operator to try before the others (the bandit's choice).
pub fn propose(
    rng: &mut dyn RngCore,
    parent: &Candidate,
    other: Option<&Candidate>,
    templates: &Templates,
    checker: &Checker,
    is_known: &dyn Fn(&str) -> bool,
    first: Option<&str>,
) -> Result<Proposal, String> {
    let mut order: Vec<&Operator> = applicable(
        parent.kind,
        other.is_some(),
        templates.answer(),
        templates.agent_models().len(),
    )
    .collect();
    // Shuffle by repeated random picks (keeps the rng stream simple and reproducible).
    let mut shuffled = Vec::with_capacity(order.len());
    if let Some(i) = first.and_then(|f| order.iter().position(|o| o.name == f)) {
        shuffled.push(order.remove(i));
    }
    while !order.is_empty() {
        let i = rng.random_range(0..order.len());
        shuffled.push(order.remove(i));
    }
    let mut failures = Vec::new();
    for op in shuffled {
        let Some((code, name, thought)) = (op.apply)(rng, parent, other, templates) else {
            failures.push(format!("{}: not applicable", op.name));
            continue;
        };
        let report = checker.check("candidate.py", &code, parent.kind);
        if !report.passes() {
            failures.push(format!(
                "{}: produced code that fails check: {}",
                op.name,
                report.render()
            ));
            continue;
        }
        if code == parent.code {
            failures.push(format!("{}: no change", op.name));
            continue;
        }
        if is_known(&report.normalized) {
            failures.push(format!("{}: its result is already archived", op.name));
            continue;
        }
        let mut parents = vec![parent.id.clone()];
        if op.binary {
            parents.extend(other.map(|o| o.id.clone()));
        }
        return Ok(Proposal {
            kind: format!("op:{}", op.name),
            name,
            thought,
            code,
            parents,
            prompt: None,
            reply: None,
        });
    }
    Err(format!("no operator applied: {}", failures.join("; ")))
}

/// The operators that apply to a parent of `kind` (binary ones only with a second parent)
/// in a domain whose answers look like `answer`.
pub fn applicable<'a>(
    kind: CandidateKind,
    has_other: bool,
    answer: &'a crate::domain::AnswerSpec,
    agent_models: usize,
) -> impl Iterator<Item = &'static Operator> + 'a {
    OPERATORS
        .iter()
        .filter(move |o| !o.binary || has_other)
        .filter(move |o| o.models <= agent_models.max(1))
        .filter(move |o| o.kind.is_none_or(|k| k == kind))
        .filter(move |o| o.answers.fit(answer))
}

/// A module-level `NAME = literal` with an upper-case name.
#[derive(Debug, Clone)]
struct Constant {
    name: String,
    kind: &'static str,
    start: usize,
    end: usize,
    text: String,
}

fn module_constants(src: &str) -> Vec<Constant> {
    let tree = parse_python(src);
    let root = tree.root_node();
    let mut out = Vec::new();
    let mut cursor = root.walk();
    for stmt in root.children(&mut cursor) {
        if stmt.kind() != "expression_statement" {
            continue;
        }
        let Some(assign) = stmt.named_child(0).filter(|n| n.kind() == "assignment") else {
            continue;
        };
        let (Some(left), Some(right)) = (assign.child_by_field_name("left"), assign.child_by_field_name("right"))
        else {
            continue;
        };
        let name = &src[left.byte_range()];
        if left.kind() != "identifier" || name.chars().any(|c| c.is_ascii_lowercase()) {
            continue;
        }
        let kind = match right.kind() {
            "integer" => "int",
            "float" => "float",
            "string" if !src[right.byte_range()].starts_with('f') => "str",
            _ => continue,
        };
        out.push(Constant {
            name: name.into(),
            kind,
            start: right.start_byte(),
            end: right.end_byte(),
            text: src[right.byte_range()].into(),
        });
    }
    out
}

/// The parent's module-level `*INSTRUCTION*` strings, as (name, value).
pub fn instruction_constants(src: &str) -> Vec<(String, String)> {
    module_constants(src)
        .into_iter()
        .filter(|c| c.kind == "str" && c.name.contains("INSTRUCTION"))
        .filter_map(|c| {
            let value: String = serde_json::from_str(&c.text).ok().or_else(|| {
                let t = c.text.as_str();
                (t.len() >= 2).then(|| t[1..t.len() - 1].to_string())
            })?;
            Some((c.name, value))
        })
        .collect()
}

/// `src` with the module-level string constant `name` set to `value`.
pub fn set_string_constant(src: &str, name: &str, value: &str) -> Option<String> {
    let c = module_constants(src)
        .into_iter()
        .find(|c| c.kind == "str" && c.name == name)?;
    Some(replace(src, &mut [(c.start, c.end, python_string(value))]))
}

fn replace(src: &str, edits: &mut [(usize, usize, String)]) -> String {
    edits.sort_by_key(|e| std::cmp::Reverse(e.0));
    let mut out = src.to_string();
    for (s, e, text) in edits.iter() {
        out.replace_range(*s..*e, text);
    }
    out
}

fn python_string(s: &str) -> String {
    // A JSON string literal of printable text is a valid Python string literal.
    json!(s).to_string()
}

fn display_name(c: &Candidate) -> String {
    c.name.chars().take(60).collect()
}

fn tune_constant(
    rng: &mut dyn RngCore,
    p: &Candidate,
    _: Option<&Candidate>,
    _: &Templates,
) -> Option<(String, String, String)> {
    let numeric: Vec<Constant> = module_constants(&p.code)
        .into_iter()
        .filter(|c| c.kind != "str")
        .collect();
    let c = numeric.choose(rng)?.clone();
    let new = if c.kind == "int" {
        let v: i64 = c.text.parse().ok()?;
        let choices: Vec<i64> = [v - 1, v + 1, v * 2, (v + 1) / 2]
            .into_iter()
            .filter(|&x| (1..=9).contains(&x) && x != v)
            .collect();
        choices.choose(rng)?.to_string()
    } else {
        let v: f64 = c.text.parse().ok()?;
        let choices: Vec<f64> = [0.0, 0.3, 0.5, 0.7, 0.9, 1.1]
            .into_iter()
            .filter(|x| (x - v).abs() > 1e-9)
            .collect();
        format!("{:.1}", choices.choose(rng)?)
    };
    let code = replace(&p.code, &mut [(c.start, c.end, new.clone())]);
    Some((
        code,
        format!("{} ({}={})", display_name(p), c.name, new),
        format!("tune_constant: {} {} -> {}", c.name, c.text, new),
    ))
}

fn swap_instruction(
    rng: &mut dyn RngCore,
    p: &Candidate,
    _: Option<&Candidate>,
    t: &Templates,
) -> Option<(String, String, String)> {
    let strings: Vec<Constant> = module_constants(&p.code)
        .into_iter()
        .filter(|c| c.kind == "str" && c.name.contains("INSTRUCTION"))
        .collect();
    let c = strings.choose(rng)?.clone();
    let lines = t.lines("operators/instructions.txt");
    let bank: Vec<&String> = lines
        .iter()
        .filter(|l| c.text.trim_matches('"') != l.as_str())
        .collect();
    let new = bank.choose(rng)?;
    let code = replace(&p.code, &mut [(c.start, c.end, python_string(new))]);
    let short: String = new.chars().take(40).collect();
    Some((
        code,
        format!("{} (instr: {short}…)", display_name(p)),
        format!("swap_instruction: {} := {new:?}", c.name),
    ))
}

/// Smallest k such that none of the names a wrapper adds exists yet.
fn fresh_suffix(code: &str) -> usize {
    (1..)
        .find(|k| {
            !code.contains(&format!("_{k}(")) && !code.contains(&format!("_{k} ")) && !code.contains(&format!("_{k}\n"))
        })
        .unwrap()
}

/// Identifiers that refer to names (not attribute or keyword-argument names).
fn identifier_refs<'a>(node: Node<'a>, out: &mut Vec<Node<'a>>) {
    if node.kind() == "identifier" {
        let parent = node.parent();
        let is_attr =
            parent.is_some_and(|p| p.kind() == "attribute" && p.child_by_field_name("attribute") == Some(node));
        let is_kw =
            parent.is_some_and(|p| p.kind() == "keyword_argument" && p.child_by_field_name("name") == Some(node));
        if !is_attr && !is_kw {
            out.push(node);
        }
    }
    let mut cursor = node.walk();
    for child in node.children(&mut cursor) {
        identifier_refs(child, out);
    }
}

fn rename(code: &str, map: &HashMap<String, String>) -> String {
    let tree = parse_python(code);
    let mut refs = Vec::new();
    identifier_refs(tree.root_node(), &mut refs);
    let mut edits: Vec<(usize, usize, String)> = refs
        .iter()
        .filter_map(|n| {
            map.get(&code[n.byte_range()])
                .map(|new| (n.start_byte(), n.end_byte(), new.clone()))
        })
        .collect();
    replace(code, &mut edits)
}

/// Names a module defines at top level (functions, classes, assignment targets). Imports
/// are left alone: both parents import the same modules, and renaming an imported name
/// would import a name that does not exist.
fn top_level_names(code: &str) -> Vec<String> {
    let tree = parse_python(code);
    let root = tree.root_node();
    let mut out = Vec::new();
    let mut cursor = root.walk();
    for stmt in root.children(&mut cursor) {
        let stmt = if stmt.kind() == "decorated_definition" {
            stmt.child_by_field_name("definition").unwrap_or(stmt)
        } else {
            stmt
        };
        match stmt.kind() {
            "function_definition" | "class_definition" => {
                if let Some(n) = stmt.child_by_field_name("name") {
                    out.push(code[n.byte_range()].to_string());
                }
            }
            "expression_statement" => {
                if let Some(left) = stmt
                    .named_child(0)
                    .filter(|a| a.kind() == "assignment")
                    .and_then(|a| a.child_by_field_name("left"))
                {
                    if left.kind() == "identifier" {
                        out.push(code[left.byte_range()].to_string());
                    }
                }
            }
            _ => {}
        }
    }
    out
}

fn wrap(p: &Candidate, template: &str, n: u32, t: &Templates) -> Option<(String, usize, String)> {
    wrap_with(p, template, json!({"n": n}), t)
}

/// `p` with its `forward` renamed and `template` appended, rendered with `extra` plus the
/// wrapper's suffix `k` and the inner function's name.
fn wrap_with(
    p: &Candidate,
    template: &str,
    mut extra: serde_json::Value,
    t: &Templates,
) -> Option<(String, usize, String)> {
    let k = fresh_suffix(&p.code);
    let inner = format!("_inner_forward_{k}");
    let renamed = rename(&p.code, &HashMap::from([("forward".to_string(), inner.clone())]));
    extra["k"] = json!(k);
    extra["inner"] = json!(inner);
    let tail = t.render(template, extra).ok()?;
    Some((format!("{}{}", renamed.trim_end(), tail), k, inner))
}

/// `p` wrapped by `template`, whose `instruction` is a line drawn from the prompt bank `bank`;
/// returns the code and the line drawn.
fn wrap_with_prompt(
    rng: &mut dyn RngCore,
    p: &Candidate,
    bank: &str,
    template: &str,
    t: &Templates,
) -> Option<(String, String)> {
    let prompt = t.lines(bank).choose(rng)?.clone();
    let (code, _, _) = wrap_with(p, template, json!({"instruction": python_string(&prompt)}), t)?;
    Some((code, prompt))
}

fn wrap_extract(
    rng: &mut dyn RngCore,
    p: &Candidate,
    _: Option<&Candidate>,
    t: &Templates,
) -> Option<(String, String, String)> {
    let how = t.lines("operators/extractors.txt").choose(rng)?.clone();
    let (code, _, _) = wrap_with(p, "operators/wrap_extract.py.j2", json!({"how": how}), t)?;
    Some((
        code,
        format!("{} + extract {how}", display_name(p)),
        format!("wrap_extract: keep the {how} of the answer"),
    ))
}

fn use_calculator(
    rng: &mut dyn RngCore,
    p: &Candidate,
    _: Option<&Candidate>,
    t: &Templates,
) -> Option<(String, String, String)> {
    let (code, prompt) = wrap_with_prompt(
        rng,
        p,
        "operators/tool_prompts.txt",
        "operators/use_calculator.py.j2",
        t,
    )?;
    let short: String = prompt.chars().take(32).collect();
    Some((
        code,
        format!("{} + calculator ({short}…)", display_name(p)),
        format!("use_calculator: the model writes a calculation ({prompt:?}), calc computes it"),
    ))
}

fn constrain_choice(
    rng: &mut dyn RngCore,
    p: &Candidate,
    _: Option<&Candidate>,
    t: &Templates,
) -> Option<(String, String, String)> {
    let (code, prompt) = wrap_with_prompt(
        rng,
        p,
        "operators/choice_prompts.txt",
        "operators/constrain_choice.py.j2",
        t,
    )?;
    Some((
        code,
        format!("{} + constrained choice", display_name(p)),
        format!("constrain_choice: answer held to the task's choices ({prompt:?})"),
    ))
}

/// `judge_options` and `rank_options` are two blocks over one template, not one block with a
/// drawn mode: they fail on different tasks, and as two arms the bandit tries and credits
/// each.
fn judge_options(
    _: &mut dyn RngCore,
    p: &Candidate,
    _: Option<&Candidate>,
    t: &Templates,
) -> Option<(String, String, String)> {
    option_judge(p, t, "yes_no", "judge options (yes/no)")
}

fn rank_options(
    _: &mut dyn RngCore,
    p: &Candidate,
    _: Option<&Candidate>,
    t: &Templates,
) -> Option<(String, String, String)> {
    option_judge(p, t, "likelihood", "rank options (likelihood)")
}

fn option_judge(p: &Candidate, t: &Templates, mode: &str, label: &str) -> Option<(String, String, String)> {
    let (code, _, _) = wrap_with(p, "operators/judge_options.py.j2", json!({"mode": mode}), t)?;
    Some((
        code,
        format!("{} + {label}", display_name(p)),
        format!("each option judged on its own: {label}"),
    ))
}

fn cascade_models(
    rng: &mut dyn RngCore,
    p: &Candidate,
    _: Option<&Candidate>,
    t: &Templates,
) -> Option<(String, String, String)> {
    let models = t.agent_models();
    let (cheap, strong) = (models.first()?, models.last()?);
    if cheap == strong || p.code.contains("operator cascade_models") {
        return None;
    }
    let check = t.lines("operators/cascade_checks.txt").choose(rng)?.clone();
    let (code, _, _) = wrap_with(
        p,
        "operators/cascade_models.py.j2",
        json!({"cheap": python_string(cheap), "strong": python_string(strong), "check": python_string(&check)}),
        t,
    )?;
    Some((
        code,
        format!("{} + cascade {cheap}→{strong} ({check})", display_name(p)),
        format!("cascade_models: {cheap} first, {strong} when the {check} check fails"),
    ))
}

fn map_choice(
    _: &mut dyn RngCore,
    p: &Candidate,
    _: Option<&Candidate>,
    t: &Templates,
) -> Option<(String, String, String)> {
    if p.code.contains("operator map_choice") {
        return None;
    }
    let (code, _, _) = wrap_with(p, "operators/map_choice.py.j2", json!({}), t)?;
    Some((
        code,
        format!("{} + map to choice", display_name(p)),
        "map_choice: the reply read as the choice it names".into(),
    ))
}

fn vote_labels(
    rng: &mut dyn RngCore,
    p: &Candidate,
    _: Option<&Candidate>,
    t: &Templates,
) -> Option<(String, String, String)> {
    let n = *[3u32, 5].choose(rng)?;
    let (code, _, _) = wrap(p, "operators/vote_labels.py.j2", n, t)?;
    Some((
        code,
        format!("{} + label vote x{n}", display_name(p)),
        format!("vote_labels: {n} runs, the most common choice"),
    ))
}

fn wrap_decompose(
    rng: &mut dyn RngCore,
    p: &Candidate,
    _: Option<&Candidate>,
    t: &Templates,
) -> Option<(String, String, String)> {
    let (code, prompt) = wrap_with_prompt(
        rng,
        p,
        "operators/decompose_prompts.txt",
        "operators/wrap_decompose.py.j2",
        t,
    )?;
    Some((
        code,
        format!("{} + decompose", display_name(p)),
        format!("wrap_decompose: notes first ({prompt:?})"),
    ))
}

/// Adds `stop=STOP_<k>` to every `llm(...)` call (however imported) that has no `stop`.
fn add_stop(
    rng: &mut dyn RngCore,
    p: &Candidate,
    _: Option<&Candidate>,
    t: &Templates,
) -> Option<(String, String, String)> {
    let stops = t.lines("operators/stops.txt").choose(rng)?.clone();
    let tree = parse_python(&p.code);
    let mut calls = Vec::new();
    llm_calls_without_stop(&p.code, tree.root_node(), &mut calls);
    if calls.is_empty() {
        return None;
    }
    let k = fresh_suffix(&p.code);
    let name = format!("STOP_{k}");
    let mut edits: Vec<(usize, usize, String)> = calls
        .into_iter()
        .map(|(at, empty)| {
            (
                at,
                at,
                if empty {
                    format!("stop={name}")
                } else {
                    format!(", stop={name}")
                },
            )
        })
        .collect();
    let code = replace(&p.code, &mut edits);
    let code = format!(
        "{}

# --- added by operator add_stop: replies end at the first of these ---
{name} = {stops}
",
        code.trim_end()
    );
    Some((
        code,
        format!("{} + stop", display_name(p)),
        format!("add_stop: every llm() call stops at {stops}"),
    ))
}

/// Where to insert a `stop=` argument in each call of `llm` or `_llm_<k>` that has none: the
/// byte offset just after its last argument (or its opening parenthesis), and whether the
/// argument list is empty.
fn llm_calls_without_stop(code: &str, node: Node<'_>, out: &mut Vec<(usize, bool)>) {
    if node.kind() == "call" {
        let is_llm = node.child_by_field_name("function").is_some_and(|f| {
            let name = &code[f.byte_range()];
            f.kind() == "identifier" && (name == "llm" || name.starts_with("_llm_"))
        });
        if let Some(args) = node
            .child_by_field_name("arguments")
            .filter(|a| a.kind() == "argument_list")
        {
            let mut cursor = args.walk();
            let mut named = 0;
            let mut has_stop = false;
            let mut after_last = args.start_byte() + 1;
            for a in args.named_children(&mut cursor) {
                if a.kind() == "comment" {
                    continue;
                }
                named += 1;
                after_last = a.end_byte();
                if a.kind() == "keyword_argument"
                    && a.child_by_field_name("name")
                        .is_some_and(|n| &code[n.byte_range()] == "stop")
                {
                    has_stop = true;
                }
                if a.kind() == "dictionary_splat" || a.kind() == "list_splat" {
                    has_stop = true;
                }
            }
            let trailing_comma = code[..args.end_byte() - 1].trim_end().ends_with(',');
            if is_llm && !has_stop && !trailing_comma {
                out.push((after_last, named == 0));
            }
        }
    }
    let mut cursor = node.walk();
    for child in node.children(&mut cursor) {
        llm_calls_without_stop(code, child, out);
    }
}

fn wrap_vote(
    rng: &mut dyn RngCore,
    p: &Candidate,
    _: Option<&Candidate>,
    t: &Templates,
) -> Option<(String, String, String)> {
    let n = *[3u32, 5].choose(rng)?;
    // Votes over greedy runs of one prompt agree by construction: sample instead.
    let greedy: Vec<Constant> = module_constants(&p.code)
        .into_iter()
        .filter(|c| c.kind == "float" && c.name.contains("TEMPERATURE") && c.text.parse::<f64>().ok() == Some(0.0))
        .collect();
    let mut sampled = p.clone();
    if !greedy.is_empty() {
        let mut edits: Vec<(usize, usize, String)> =
            greedy.iter().map(|c| (c.start, c.end, "0.7".to_string())).collect();
        sampled.code = replace(&p.code, &mut edits);
    }
    let (code, _, _) = wrap(&sampled, "operators/wrap_vote.py.j2", n, t)?;
    Some((
        code,
        format!("{} + vote×{n}", display_name(p)),
        format!("wrap_vote: majority over {n} runs"),
    ))
}

fn wrap_refine(
    _: &mut dyn RngCore,
    p: &Candidate,
    _: Option<&Candidate>,
    t: &Templates,
) -> Option<(String, String, String)> {
    let (code, _, _) = wrap(p, "operators/wrap_refine.py.j2", 1, t)?;
    Some((
        code,
        format!("{} + refine", display_name(p)),
        "wrap_refine: one self-check and correction pass".into(),
    ))
}

fn wrap_verify(
    rng: &mut dyn RngCore,
    p: &Candidate,
    _: Option<&Candidate>,
    t: &Templates,
) -> Option<(String, String, String)> {
    let n = rng.random_range(1..=2);
    let (code, _, _) = wrap(p, "operators/wrap_verify.py.j2", n, t)?;
    Some((
        code,
        format!("{} + verify×{n}", display_name(p)),
        format!("wrap_verify: up to {n} verified retries"),
    ))
}

fn crossover_constants(
    rng: &mut dyn RngCore,
    a: &Candidate,
    b: Option<&Candidate>,
    _: &Templates,
) -> Option<(String, String, String)> {
    let b = b?;
    let theirs: HashMap<String, Constant> = module_constants(&b.code)
        .into_iter()
        .map(|c| (c.name.clone(), c))
        .collect();
    let mut edits = Vec::new();
    let mut taken = Vec::new();
    for c in module_constants(&a.code) {
        if let Some(o) = theirs.get(&c.name) {
            if o.kind == c.kind && o.text != c.text && (rng.random_bool(0.5) || edits.is_empty()) {
                edits.push((c.start, c.end, o.text.clone()));
                taken.push(c.name.clone());
            }
        }
    }
    if edits.is_empty() {
        return None;
    }
    let code = replace(&a.code, &mut edits);
    Some((
        code,
        format!("{} × {} (constants)", display_name(a), display_name(b)),
        format!("crossover_constants: took {} from {}", taken.join(", "), b.name),
    ))
}

fn crossover_ensemble(
    _: &mut dyn RngCore,
    a: &Candidate,
    b: Option<&Candidate>,
    t: &Templates,
) -> Option<(String, String, String)> {
    let b = b?;
    let k = fresh_suffix(&format!("{}{}", a.code, b.code));
    let first = format!("_first_forward_{k}");
    let a_code = rename(&a.code, &HashMap::from([("forward".to_string(), first.clone())]));
    // `CONTRACTS` keeps its name: the host reads every module-level `CONTRACTS` literal by
    // that name (src/guard/manifest.rs), so both parents' guarded calls keep their contracts.
    let (b_code, prefix) = prefixed(b, k, &["CONTRACTS"]);
    let second = format!("{prefix}forward");
    let tail = t
        .render(
            "operators/ensemble.py.j2",
            json!({"k": k, "first": first, "second": second}),
        )
        .ok()?;
    let code = spliced(&a_code, b, &b_code, &tail);
    Some((
        code,
        format!("{} ⊕ {}", display_name(a), display_name(b)),
        format!("crossover_ensemble: vote between {} and {}", a.name, b.name),
    ))
}

/// Whether some operator can change `c`: every agent, and every memory design but one that
/// does nothing (see `inert_memory`).
pub fn can_change(c: &Candidate) -> bool {
    c.kind != CandidateKind::Memory || !inert_memory(&c.code)
}

/// Whether a memory design does nothing: its `Memory` class's `retrieve` only returns a
/// constant string and its `update` only passes (the no-memory baseline). Wrapping or joining
/// such a design cannot change what the agent is told, so memory operators skip it rather
/// than spend an evaluation on a copy of its other parent.
fn inert_memory(code: &str) -> bool {
    let tree = parse_python(code);
    let root = tree.root_node();
    let mut cursor = root.walk();
    let Some(class) = root.children(&mut cursor).find(|n| {
        n.kind() == "class_definition"
            && n.child_by_field_name("name")
                .is_some_and(|m| &code[m.byte_range()] == "Memory")
    }) else {
        return false;
    };
    // A class with bases may inherit real behaviour.
    if class.child_by_field_name("superclasses").is_some() {
        return false;
    }
    let Some(body) = class.child_by_field_name("body") else {
        return false;
    };
    let only_statement = |method: &str| -> Option<String> {
        let mut c = body.walk();
        let def = body.named_children(&mut c).find(|n| {
            n.kind() == "function_definition"
                && n.child_by_field_name("name")
                    .is_some_and(|m| &code[m.byte_range()] == method)
        })?;
        let block = def.child_by_field_name("body")?;
        let mut c = block.walk();
        let statements: Vec<Node> = block.named_children(&mut c).filter(|n| n.kind() != "comment").collect();
        match statements.as_slice() {
            [only] => Some(only.kind().to_string() + ":" + &code[only.byte_range()]),
            _ => None,
        }
    };
    let constant_retrieve = only_statement("retrieve").is_some_and(|s| {
        s.starts_with("return_statement:") && {
            let value = s
                .trim_start_matches("return_statement:")
                .trim_start_matches("return")
                .trim();
            value.starts_with('"') || value.starts_with('\'') || value.is_empty() || value == "None"
        }
    });
    let passing_update = only_statement("update").is_some_and(|s| s == "pass_statement:pass");
    constant_retrieve && passing_update
}

/// The parent with its `class Memory` renamed, followed by `template` (which defines the new
/// `Memory` on top of the renamed one, `inner`).
fn wrap_memory(p: &Candidate, template: &str, n: serde_json::Value, t: &Templates) -> Option<String> {
    if p.kind != CandidateKind::Memory
        || !top_level_names(&p.code).iter().any(|n| n == "Memory")
        || inert_memory(&p.code)
    {
        return None;
    }
    let k = fresh_suffix(&p.code);
    let inner = format!("_InnerMemory_{k}");
    let renamed = rename(&p.code, &HashMap::from([("Memory".to_string(), inner.clone())]));
    let tail = t.render(template, json!({"k": k, "n": n, "inner": inner})).ok()?;
    Some(format!("{}{}", renamed.trim_end(), tail))
}

fn memory_focus(
    rng: &mut dyn RngCore,
    p: &Candidate,
    _: Option<&Candidate>,
    t: &Templates,
) -> Option<(String, String, String)> {
    let n = *[4u32, 8, 16].choose(rng)?;
    let code = wrap_memory(p, "operators/memory_focus.py.j2", json!(n), t)?;
    Some((
        code,
        format!("{} + focus{n}", display_name(p)),
        format!("memory_focus: the {n} retrieved lines most related to the observation"),
    ))
}

fn memory_success_only(
    rng: &mut dyn RngCore,
    p: &Candidate,
    _: Option<&Candidate>,
    t: &Templates,
) -> Option<(String, String, String)> {
    let threshold = *[0.5f64, 0.75, 1.0].choose(rng)?;
    let code = wrap_memory(p, "operators/memory_success_only.py.j2", json!(threshold), t)?;
    Some((
        code,
        format!("{} + reward≥{threshold}", display_name(p)),
        format!("memory_success_only: store episodes with reward >= {threshold}"),
    ))
}

/// What `memory_feedback` stores, and its label: the environment's reply to steps that
/// raised the reward (its own words for what worked), warnings about steps that lowered it,
/// or both.
const FEEDBACK_STORES: [(&str, &str); 3] = [
    ("success", "raised the reward"),
    ("failure", "lowered the reward"),
    ("success failure", "changed the reward"),
];

fn memory_feedback(
    rng: &mut dyn RngCore,
    p: &Candidate,
    _: Option<&Candidate>,
    t: &Templates,
) -> Option<(String, String, String)> {
    let (store, what) = *FEEDBACK_STORES.choose(rng)?;
    let keep = *[4u32, 8].choose(rng)?;
    let code = wrap_memory(
        p,
        "operators/memory_feedback.py.j2",
        json!({"store": format!("{store:?}"), "what": what, "keep": keep}),
        t,
    )?;
    Some((
        code,
        format!("{} + feedback({store}, {keep})", display_name(p)),
        format!("memory_feedback: the environment's replies to steps that {what}, {keep} most related retrieved"),
    ))
}

fn memory_union(
    _: &mut dyn RngCore,
    a: &Candidate,
    b: Option<&Candidate>,
    t: &Templates,
) -> Option<(String, String, String)> {
    let b = b?;
    if a.kind != CandidateKind::Memory
        || b.kind != CandidateKind::Memory
        || inert_memory(&a.code)
        || inert_memory(&b.code)
    {
        return None;
    }
    let k = fresh_suffix(&format!("{}{}", a.code, b.code));
    let first = format!("_FirstMemory_{k}");
    let a_code = rename(&a.code, &HashMap::from([("Memory".to_string(), first.clone())]));
    let (b_code, prefix) = prefixed(b, k, &[]);
    let tail = t
        .render(
            "operators/memory_union.py.j2",
            json!({"k": k, "first": first, "second": format!("{prefix}Memory")}),
        )
        .ok()?;
    let code = spliced(&a_code, b, &b_code, &tail);
    Some((
        code,
        format!("{} ∪ {}", display_name(a), display_name(b)),
        format!(
            "memory_union: {} and {} updated together, retrievals joined",
            a.name, b.name
        ),
    ))
}

/// The second parent of a splicing crossover with every top-level name but `keep` prefixed
/// (so the two modules cannot collide) and its docstring dropped; returns it and the prefix.
fn prefixed(b: &Candidate, k: usize, keep: &[&str]) -> (String, String) {
    let prefix = format!("_p{k}_");
    let map: HashMap<String, String> = top_level_names(&b.code)
        .into_iter()
        .filter(|n| !keep.contains(&n.as_str()))
        .map(|n| (n.clone(), format!("{prefix}{n}")))
        .collect();
    (strip_docstring(&rename(&b.code, &map)), prefix)
}

/// One module: the first parent, the prefixed second one under a comment naming it, and the
/// operator's tail that joins them.
fn spliced(a_code: &str, b: &Candidate, b_code: &str, tail: &str) -> String {
    format!(
        "{}\n\n\n# --- second parent: {} ---\n{}{}",
        a_code.trim_end(),
        b.name.replace('\n', " "),
        b_code.trim(),
        tail
    )
}

fn strip_docstring(code: &str) -> String {
    let t = code.trim_start();
    if let Some(rest) = t.strip_prefix("\"\"\"") {
        if let Some(end) = rest.find("\"\"\"") {
            return rest[end + 3..].to_string();
        }
    }
    code.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::candidate::candidate_id;
    use proptest::prelude::*;
    use rand::SeedableRng;

    /// The seed agents, then the seed memory designs, rendered for numeric answers.
    fn seeds() -> Vec<Candidate> {
        let t = Templates::embedded().unwrap();
        [("agents", CandidateKind::Agent), ("memory", CandidateKind::Memory)]
            .into_iter()
            .flat_map(|(dir, kind)| {
                crate::assets::files_with_ext(&crate::assets::ARCHIVE, dir, "py")
                    .into_iter()
                    .map(move |(path, code)| (kind, path, code))
            })
            .map(|(kind, path, code)| (kind, path, t.render_seed(path, code).unwrap()))
            .map(|(kind, path, code)| Candidate {
                id: candidate_id(kind, &code),
                kind,
                name: path.into(),
                thought: String::new(),
                code,
                operator: "seed".into(),
                generation: 0,
                parents: vec![],
                fingerprint: String::new(),
            })
            .collect()
    }

    /// What `script` prints, run by `python3 -c`, which must succeed.
    fn python(script: &str) -> String {
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Templates for a run with a cheap and a strong agent model.
    fn two_model_templates() -> Templates {
        let models: crate::config::Models =
            toml::from_str("[agent.strong]\nprice_prompt_per_mtok = 9.0\n[agent.cheap]\nprice_prompt_per_mtok = 1.0\n")
                .unwrap();
        Templates::embedded().unwrap().with_agent_models(&models.agent)
    }

    #[test]
    fn every_operator_applies_to_some_seed_and_passes_check() {
        let t = two_model_templates();
        let checker = Checker::embedded().unwrap();
        let seeds = seeds();
        for op in OPERATORS {
            let mut applied = 0;
            for (i, s) in seeds.iter().enumerate() {
                if op.kind.is_some_and(|k| k != s.kind) {
                    continue;
                }
                let same: Vec<&Candidate> = seeds.iter().filter(|o| o.kind == s.kind).collect();
                let other = same[(same.iter().position(|o| o.id == s.id).unwrap() + 1) % same.len()];
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(i as u64);
                if let Some((code, _, _)) = (op.apply)(&mut rng, s, Some(other), &t) {
                    let r = checker.check("x.py", &code, s.kind);
                    assert!(r.passes(), "{} on {}:\n{}\n{code}", op.name, s.name, r.render());
                    applied += 1;
                }
            }
            assert!(applied > 0, "operator {} never applied", op.name);
        }
    }

    /// `judge_options` and `rank_options` on one parent differ in a single mode string of a
    /// long program. The MinHash estimate alone calls their 3-gram sets the same (it did in a
    /// search, and threw the block that won away as a near-duplicate); the exact check does not.
    #[test]
    fn the_two_option_blocks_on_one_parent_are_not_the_same_program() {
        use crate::check::{exact_similarity, normalized_of, signature_of};
        let t = Templates::embedded().unwrap();
        let seeds = seeds();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let mut estimated_same = 0;
        for parent in seeds.iter().filter(|s| s.kind == CandidateKind::Agent) {
            let (judge, _, _) = judge_options(&mut rng, parent, None, &t).unwrap();
            let (rank, _, _) = rank_options(&mut rng, parent, None, &t).unwrap();
            let exact = exact_similarity(&normalized_of(&judge), &normalized_of(&rank));
            assert!(exact < 1.0 && exact > 0.9, "{}: {exact}", parent.name);
            estimated_same += usize::from(signature_of(&judge).similarity(&signature_of(&rank)) == 1.0);
        }
        assert!(
            estimated_same > 0,
            "the estimate alone would have kept them apart everywhere"
        );
    }

    /// The cascade in real Python, over the real runtime's `llm` and `use_model`, with the
    /// host's reply stood in for: the strong model is asked only when the cheap answer fails
    /// the check, and each call goes to the model its block names.
    #[test]
    fn the_cascade_asks_the_strong_model_only_when_the_cheap_answer_fails_its_check() {
        let t = two_model_templates();
        assert_eq!(
            t.agent_models(),
            ["cheap", "strong"],
            "cheapest first, whatever the file's order"
        );
        let direct = seeds()
            .into_iter()
            .find(|c| c.name.ends_with("direct_answer.py"))
            .unwrap();
        assert!(applicable(CandidateKind::Agent, false, t.answer(), 1).all(|o| o.name != "cascade_models"));
        let runtime = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("runtime");
        let mut checks = std::collections::BTreeSet::new();
        for seed in 0..20 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let (code, name, _) = cascade_models(&mut rng, &direct, None, &t).unwrap();
            let check = if name.contains("(verify)") { "verify" } else { "format" };
            if !checks.insert(check) {
                continue;
            }
            // The stand-in host: the cheap model answers `cheap`, says NO when asked to
            // verify, and the strong one answers 7.
            let run = |cheap: &str| {
                let script = format!(
                    "import sys\nsys.path.insert(0, {runtime:?})\nimport metaforge\ncalls = []\ndef host(messages, **kw):\n    calls.append(kw['model'])\n    if kw['model'] == 'strong':\n        return ['7']\n    return ['NO' if kw.get('choices') else {cheap:?}]\nmetaforge.call_llm = host\n{code}\nprint(forward({{'question': 'What is 3 + 4?'}}), ','.join(calls))\n",
                    runtime = runtime.display().to_string()
                );
                python(&script).trim().to_string()
            };
            match check {
                "format" => {
                    assert_eq!(run("no idea"), "7 cheap,strong");
                    assert_eq!(run("8"), "8 cheap", "an answer that passes is kept");
                }
                _ => assert_eq!(run("8"), "7 cheap,cheap,strong", "the cheap model verifies, says NO"),
            }
        }
        assert_eq!(checks.len(), 2, "both checks drawn: {checks:?}");
    }

    #[test]
    fn add_stop_reaches_every_llm_call_without_one_and_only_those() {
        let t = Templates::embedded().unwrap();
        let code = "from metaforge import llm\n\n\ndef forward(task):\n    a = llm(task['question'])\n    b = llm(a, n=3, stop=['x'])\n    c = llm(\n        a,\n        temperature=0.5  # warmer\n    )\n    return llm()\n";
        let p = Candidate {
            id: "p".into(),
            kind: CandidateKind::Agent,
            name: "p".into(),
            thought: String::new(),
            code: code.into(),
            operator: "seed".into(),
            generation: 0,
            parents: vec![],
            fingerprint: String::new(),
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let (out, _, _) = add_stop(&mut rng, &p, None, &t).unwrap();
        assert!(out.contains("llm(task['question'], stop=STOP_1)"), "{out}");
        assert!(
            out.contains("llm(a, n=3, stop=['x'])"),
            "an existing stop is kept:\n{out}"
        );
        assert!(out.contains("temperature=0.5, stop=STOP_1  # warmer\n    )"), "{out}");
        assert!(!out.contains("\n    , stop"), "{out}");
        assert!(out.contains("return llm(stop=STOP_1)"), "{out}");
        assert!(out.contains("\nSTOP_1 = ["), "{out}");
        assert!(Checker::embedded()
            .unwrap()
            .check("x.py", &out, CandidateKind::Agent)
            .passes());
        let again = Candidate { code: out, ..p };
        let (twice, _, _) = add_stop(&mut rng, &again, None, &t).unwrap_or_default();
        assert!(
            twice.is_empty() || !twice.contains("STOP_2"),
            "nothing left to give a stop:\n{twice}"
        );
    }

    /// `memory_feedback` stores the game's reply to each step that raised the reward and
    /// hands back the replies about what the new observation mentions, before the parent's
    /// own text; run by a real Python on each store mode.
    #[test]
    fn memory_feedback_retrieves_the_replies_about_what_is_in_view() {
        let t = Templates::embedded().unwrap();
        let kv = seeds()
            .into_iter()
            .find(|c| c.kind == CandidateKind::Memory && c.name.ends_with("kv_facts.py"))
            .unwrap();
        let trajectory = r#"[{"action": "take red cap", "observation": "You take the red cap.", "score": 0.25},
            {"action": "put red cap in desk", "observation": "You put the red cap in the desk.", "score": 0.0},
            {"action": "take red cap", "observation": "You take the red cap.", "score": 0.25},
            {"action": "put red cap in hat rack", "observation": "You put the red cap in the hat rack.", "score": 0.5},
            {"action": "take old boot", "observation": "You take the old boot.", "score": 0.75}]"#;
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..40 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let (code, name, _) = memory_feedback(&mut rng, &kv, None, &t).unwrap();
            let store = name
                .split("feedback(")
                .nth(1)
                .unwrap()
                .split(',')
                .next()
                .unwrap()
                .to_string();
            if !seen.insert(store.clone()) {
                continue;
            }
            let script = format!(
                "{code}\nimport os, tempfile\nos.chdir(tempfile.mkdtemp())\nm = Memory()\nm.update({{}}, {trajectory}, 0.75)\nprint(m.retrieve({{'observation': 'You see a red cap and a lamp.'}}))"
            );
            let text = python(&script);
            let lines: Vec<&str> = text.lines().collect();
            let success = "You put the red cap in the hat rack.";
            let warning = "Wrong before: put red cap in desk";
            assert_eq!(lines.contains(&success), store.contains("success"), "{store}: {text}");
            assert_eq!(lines.contains(&warning), store.contains("failure"), "{store}: {text}");
            assert!(!text.contains("old boot"), "only what the observation mentions: {text}");
            // The parent's own retrieval (its fact and its mistake) follows.
            assert!(
                text.trim_end().ends_with("red cap -> hat rack\nnot: desk for red cap"),
                "{text}"
            );
        }
        assert_eq!(seen.len(), FEEDBACK_STORES.len(), "every store mode is drawn: {seen:?}");
    }

    /// `memory_focus` ranks lines by the words they share with the observation that few lines
    /// have: words every line has ("the", the lines' own template) would rank a line about an
    /// object out of view above one about the object in view. Lines sharing none are dropped.
    /// Run by a real Python.
    #[test]
    fn memory_focus_keeps_the_lines_about_what_is_in_view() {
        let t = Templates::embedded().unwrap();
        let kv = seeds()
            .into_iter()
            .find(|c| c.kind == CandidateKind::Memory && c.name.ends_with("kv_facts.py"))
            .unwrap();
        let parent = Candidate {
            code: "class Memory:\n    def retrieve(self, observation):\n        lines = [\n            'Insight: a shirt usually goes in the wardrobe (seen 3x)',\n            'Insight: a cushion usually goes in the sofa (seen 1x)',\n            'Insight: a the in usually goes in the a (seen 9x)',\n            'Insight: a lamp usually goes in the end table (seen 2x)',\n            'Insight: a onion usually goes in the shelf (seen 5x)',\n            'Insight: a cap usually goes in the hat rack (seen 1x)',\n        ] + [f'Insight: a thing{i} usually goes in the place{i} (seen 1x)' for i in range(16)]\n        return '\\n'.join(lines)\n\n    def update(self, observation, trajectory, reward):\n        pass\n".into(),
            ..kv
        };
        let observation = "You are in the living room. In one part of the room you see a sofa. There is also a end table. On the floor you see a red cushion.";
        let mut kept = std::collections::BTreeMap::new();
        for seed in 0..20 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let (code, name, _) = memory_focus(&mut rng, &parent, None, &t).unwrap();
            let script = format!("{code}\nprint(Memory().retrieve({{'observation': {observation:?}}}))");
            kept.insert(name, python(&script).trim_end().to_string());
        }
        for (name, text) in &kept {
            assert_eq!(
                text,
                "Insight: a cushion usually goes in the sofa (seen 1x)\nInsight: a lamp usually goes in the end table (seen 2x)",
                "{name}"
            );
        }
        assert!(kept.len() > 1, "several sizes drawn: {kept:?}");
    }

    /// Operators for memory designs keep a `class Memory` the worker can run: the wrapped
    /// parent stays reachable under its new name.
    #[test]
    fn memory_operators_wrap_or_join_the_parent_classes() {
        let t = Templates::embedded().unwrap();
        let s: Vec<Candidate> = seeds()
            .into_iter()
            .filter(|c| c.kind == CandidateKind::Memory)
            .collect();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let (code, _, _) = memory_union(&mut rng, &s[0], Some(&s[1]), &t).unwrap();
        assert!(
            code.contains("class Memory:") && code.contains("_FirstMemory_1()"),
            "{code}"
        );
        let (code, _, _) = memory_focus(&mut rng, &s[1], None, &t).unwrap();
        assert!(code.contains("class Memory(_InnerMemory_1):"), "{code}");
        // The no-memory seed is neither wrapped nor joined: the result would be its other parent.
        let none = s.iter().find(|c| c.name.ends_with("no_memory.py")).unwrap();
        assert!(inert_memory(&none.code));
        assert!(s.iter().filter(|c| c.id != none.id).all(|c| !inert_memory(&c.code)));
        assert!(memory_focus(&mut rng, none, None, &t).is_none());
        assert!(memory_union(&mut rng, &s[1], Some(none), &t).is_none());
        assert!(memory_union(&mut rng, none, Some(&s[1]), &t).is_none());
        // Memory operators never touch agents, and agent wrappers never touch memory designs.
        let agent = seeds().into_iter().find(|c| c.kind == CandidateKind::Agent).unwrap();
        assert!(memory_focus(&mut rng, &agent, None, &t).is_none());
        assert!(OPERATORS.iter().find(|o| o.name == "wrap_vote").unwrap().kind == Some(CandidateKind::Agent));
    }

    #[test]
    fn ensemble_keeps_both_parents_callable() {
        let t = Templates::embedded().unwrap();
        let s = seeds();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
        let (code, _, _) = crossover_ensemble(&mut rng, &s[0], Some(&s[1]), &t).unwrap();
        insta::assert_snapshot!(code);
    }

    #[test]
    fn archived_results_are_skipped_for_the_next_operator() {
        let t = Templates::embedded().unwrap();
        let checker = Checker::embedded().unwrap();
        let s = seeds();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let err = propose(&mut rng, &s[0], Some(&s[1]), &t, &checker, &|_| true, None).unwrap_err();
        assert!(err.contains("its result is already archived"), "{err}");
        let first = propose(&mut rng, &s[0], Some(&s[1]), &t, &checker, &|_| false, None).unwrap();
        let known = checker.check("p.py", &first.code, CandidateKind::Agent).normalized;
        for seed in 0..20 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let p = propose(&mut rng, &s[0], Some(&s[1]), &t, &checker, &|n| n == known, None).unwrap();
            assert_ne!(p.code, first.code, "an archived result was proposed again");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Chains of operators on seeds always yield code that passes `check`.
        #[test]
        fn operator_chains_always_pass_check(seed in any::<u64>(), depth in 1usize..4) {
            let t = Templates::embedded().unwrap();
            let checker = Checker::embedded().unwrap();
            let s = seeds();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            let mut current = s[(seed % s.len() as u64) as usize].clone();
            let same: Vec<Candidate> = s.iter().filter(|o| o.kind == current.kind).cloned().collect();
            for _ in 0..depth {
                let other = same[rand::Rng::random_range(&mut rng, 0..same.len())].clone();
                if let Ok(p) = propose(&mut rng, &current, Some(&other), &t, &checker, &|_| false, None) {
                    let r = checker.check("x.py", &p.code, current.kind);
                    prop_assert!(r.passes(), "{}\n{}", r.render(), p.code);
                    current.code = p.code;
                }
            }
        }
    }
}
