//! Checks, before any evaluation, that a contract's fallback satisfies the contract — the
//! step that turns "rejection sampling" into a guarantee.
//!
//! Tiers, strongest first:
//! - `verified`: a constant fallback and checks that do not read `input` — one run of the
//!   pipeline on the constant decides it for every input;
//! - `verified_smt`: the postcondition and the fallback lie in a small fragment (integers,
//!   booleans, string length and equality, `+ - *`, comparisons, `&& || !`, `?:`, `in` over
//!   literal lists); `z3` proves `pre(x) ∧ ¬post(x, fallback(x))` unsatisfiable;
//! - `tested(N)`: outside the fragment, or without `z3`: N generated inputs pass — evidence,
//!   not a guarantee, and labelled so;
//! - `unguarded`: no fallback.
//!
//! Why a `z3` subprocess and not the `z3` crate: the crate needs Z3 ≥ 4.13.3 and Debian ships
//! 4.8.12; one query costs ~20 ms, once per contract.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use cel::common::ast::{EntryExpr, Expr, LiteralValue};
use cel::IdedExpr;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{json, Value};

use super::contract::{Contract, Fallback};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "tier", content = "detail")]
pub enum Tier {
    Verified,
    VerifiedSmt,
    Tested(u32),
    Unguarded,
}

impl Tier {
    pub fn label(&self) -> String {
        match self {
            Tier::Verified => "verified".into(),
            Tier::VerifiedSmt => "verified (z3)".into(),
            Tier::Tested(n) => format!("tested on {n} inputs, not verified"),
            Tier::Unguarded => "unguarded (no fallback)".into(),
        }
    }

    /// Strong enough for a trusted final-output contract.
    pub fn is_proof(&self) -> bool {
        matches!(self, Tier::Verified | Tier::VerifiedSmt)
    }
}

/// Inputs tried by the `tested` tier.
const TESTED_INPUTS: u32 = 200;

/// Decides the tier of a contract's fallback; `Err` carries a counterexample (an input on
/// which the fallback breaks the contract) for the proposer or the experiment author.
pub fn verify_fallback(contract: &Contract, samples: &[Value]) -> Result<Tier, String> {
    // A candidate is registered once per evaluation (stages, test split, reruns); the proof
    // of a spec does not change, so each process proves it once (a z3 run is ~20 ms).
    static PROVED: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, Result<Tier, String>>>> =
        std::sync::LazyLock::new(Default::default);
    if !samples.is_empty() {
        return decide(contract, samples);
    }
    let key = serde_json::to_string(&contract.spec).expect("specs serialise");
    if let Some(known) = PROVED.lock().unwrap().get(&key) {
        return known.clone();
    }
    let result = decide(contract, samples);
    PROVED.lock().unwrap().insert(key, result.clone());
    result
}

fn decide(contract: &Contract, samples: &[Value]) -> Result<Tier, String> {
    let Some(fallback) = contract.fallback() else {
        return Ok(Tier::Unguarded);
    };
    let reads_input = contract.post().is_some_and(|p| p.mentions("input"));
    if let Fallback::Const(v) = fallback {
        if !reads_input {
            return contract
                .check_value(&json!({}), v)
                .map(|()| Tier::Verified)
                .map_err(|e| format!("the fallback {v} breaks the contract: {e}"));
        }
        // The input-independent checks (regex, schema) are decided once on the constant.
        contract
            .check_shape(v)
            .map_err(|e| format!("the fallback {v} breaks the contract: {e}"))?;
    }
    let schema_decided = matches!(fallback, Fallback::Const(_)) || contract.spec.schema.is_none();
    if schema_decided && z3_available() {
        if let Some(query) = smt_query(contract) {
            match run_z3(&query) {
                Ok(Z3::Unsat) => return Ok(Tier::VerifiedSmt),
                Ok(Z3::Sat(model)) => {
                    return Err(format!(
                        "z3 found an input on which the fallback breaks `{}`: {model}",
                        contract.post().map(|p| p.source()).unwrap_or("the contract")
                    ))
                }
                Ok(Z3::Unknown) | Err(_) => {}
            }
        }
    }
    tested(contract, samples)
}

fn tested(contract: &Contract, samples: &[Value]) -> Result<Tier, String> {
    let mut inputs: Vec<Value> = samples.to_vec();
    let paths = input_paths(contract);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x6a7d);
    while inputs.len() < TESTED_INPUTS as usize {
        let mut v = json!({});
        for p in &paths {
            let leaf = match rng.random_range(0..5) {
                0 => json!(0),
                1 => json!(rng.random_range(-1000i64..1000)),
                2 => json!(rng.random_range(0i64..100)),
                3 => json!("x".repeat(rng.random_range(0..20))),
                _ => json!(rng.random_bool(0.5)),
            };
            set_path(&mut v, p, leaf);
        }
        inputs.push(v);
    }
    let mut tried = 0;
    for input in &inputs {
        if contract.precondition(input).is_err() {
            continue;
        }
        tried += 1;
        match contract.fallback_value(input) {
            Some(Ok(v)) => contract
                .check_value(input, &v)
                .map_err(|e| format!("on input {input} the fallback {v} breaks the contract: {e}"))?,
            Some(Err(e)) => return Err(format!("on input {input} the fallback fails: {e}")),
            None => unreachable!("checked by the caller"),
        }
    }
    Ok(Tier::Tested(tried))
}

fn set_path(v: &mut Value, path: &[String], leaf: Value) {
    let mut cur = v;
    for (i, key) in path.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        let map = cur.as_object_mut().expect("made an object");
        if i + 1 == path.len() {
            map.insert(key.clone(), leaf);
            return;
        }
        cur = map.entry(key.clone()).or_insert_with(|| json!({}));
    }
}

/// Field paths under `input` that the contract's expressions read.
fn input_paths(contract: &Contract) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut exprs: Vec<&IdedExpr> = Vec::new();
    for c in [contract.pre(), contract.post()].into_iter().flatten() {
        exprs.push(c.program().expression());
    }
    if let Some(Fallback::Cel(c)) = contract.fallback() {
        exprs.push(c.program().expression());
    }
    for e in exprs {
        collect_paths(e, "input", &mut out);
    }
    out.sort();
    out.dedup();
    out
}

fn select_path(e: &IdedExpr) -> Option<(String, Vec<String>)> {
    match &e.expr {
        Expr::Ident(name) => Some((name.clone(), Vec::new())),
        Expr::Select(s) if !s.test => {
            let (root, mut path) = select_path(&s.operand)?;
            path.push(s.field.clone());
            Some((root, path))
        }
        _ => None,
    }
}

fn collect_paths(e: &IdedExpr, root: &str, out: &mut Vec<Vec<String>>) {
    if let Some((r, path)) = select_path(e) {
        if r == root && !path.is_empty() {
            out.push(path);
        }
        return;
    }
    match &e.expr {
        Expr::Call(c) => {
            c.target.iter().for_each(|t| collect_paths(t, root, out));
            c.args.iter().for_each(|a| collect_paths(a, root, out));
        }
        Expr::List(l) => l.elements.iter().for_each(|x| collect_paths(x, root, out)),
        Expr::Map(m) => {
            for entry in &m.entries {
                if let EntryExpr::MapEntry(me) = &entry.expr {
                    collect_paths(&me.value, root, out);
                }
            }
        }
        Expr::Select(s) => collect_paths(&s.operand, root, out),
        _ => {}
    }
}

// ---------------------------------------------------------------- SMT translation

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sort {
    Int,
    Bool,
    Str,
}

impl Sort {
    fn smt(self) -> &'static str {
        match self {
            Sort::Int => "Int",
            Sort::Bool => "Bool",
            Sort::Str => "String",
        }
    }
}

/// What `output` stands for while translating the postcondition.
enum OutputIs<'a> {
    Const(&'a Value),
    Expr(&'a IdedExpr),
}

struct Smt<'a> {
    vars: BTreeMap<String, Sort>,
    output: OutputIs<'a>,
}

/// `None` when something lies outside the fragment.
fn smt_query(contract: &Contract) -> Option<String> {
    let post = contract.post()?.program().expression();
    let output = match contract.fallback()? {
        Fallback::Const(v) => OutputIs::Const(v),
        Fallback::Cel(c) => OutputIs::Expr(c.program().expression()),
    };
    let mut smt = Smt {
        vars: BTreeMap::new(),
        output,
    };
    let goal = smt.term(post, Some(Sort::Bool))?;
    // An untranslatable precondition is dropped: a weaker assumption keeps the proof sound.
    let assumption = contract
        .pre()
        .and_then(|p| smt.term(p.program().expression(), Some(Sort::Bool)));
    let mut q = String::new();
    for (name, sort) in &smt.vars {
        q.push_str(&format!("(declare-const |{name}| {})\n", sort.smt()));
    }
    if let Some(a) = assumption {
        q.push_str(&format!("(assert {a})\n"));
    }
    q.push_str(&format!("(assert (not {goal}))\n(check-sat)\n(get-model)\n"));
    Some(q)
}

impl Smt<'_> {
    fn var(&mut self, name: String, want: Option<Sort>) -> Option<(String, Sort)> {
        let sort = match (self.vars.get(&name), want) {
            (Some(&s), Some(w)) if s != w => return None,
            (Some(&s), _) => s,
            (None, w) => w.unwrap_or(Sort::Int),
        };
        self.vars.insert(name.clone(), sort);
        Some((format!("|{name}|"), sort))
    }

    fn term(&mut self, e: &IdedExpr, want: Option<Sort>) -> Option<String> {
        let (t, s) = self.typed(e, want)?;
        (want.is_none() || want == Some(s)).then_some(t)
    }

    fn typed(&mut self, e: &IdedExpr, want: Option<Sort>) -> Option<(String, Sort)> {
        if let Some((root, path)) = select_path(e) {
            return match root.as_str() {
                "input" if !path.is_empty() => self.var(format!("input.{}", path.join(".")), want),
                "output" => self.output_at(&path, want),
                _ => None,
            };
        }
        match &e.expr {
            Expr::Literal(l) => literal(l),
            Expr::Call(c) => {
                let args: Vec<&IdedExpr> = c.target.iter().map(|t| &**t).chain(c.args.iter()).collect();
                let f = c.func_name.as_str();
                match (f, args.as_slice()) {
                    ("_&&_" | "_||_", [a, b]) => {
                        let op = if f == "_&&_" { "and" } else { "or" };
                        let (a, b) = (self.term(a, Some(Sort::Bool))?, self.term(b, Some(Sort::Bool))?);
                        Some((format!("({op} {a} {b})"), Sort::Bool))
                    }
                    ("!_", [a]) => Some((format!("(not {})", self.term(a, Some(Sort::Bool))?), Sort::Bool)),
                    ("_<_" | "_<=_" | "_>_" | "_>=_", [a, b]) => {
                        let op = &f[1..f.len() - 1];
                        let (a, b) = (self.term(a, Some(Sort::Int))?, self.term(b, Some(Sort::Int))?);
                        Some((format!("({op} {a} {b})"), Sort::Bool))
                    }
                    ("_+_" | "_-_" | "_*_", [a, b]) => {
                        let op = &f[1..2];
                        let (a, b) = (self.term(a, Some(Sort::Int))?, self.term(b, Some(Sort::Int))?);
                        Some((format!("({op} {a} {b})"), Sort::Int))
                    }
                    ("-_", [a]) => Some((format!("(- {})", self.term(a, Some(Sort::Int))?), Sort::Int)),
                    ("_==_" | "_!=_", [a, b]) => {
                        // Sort the side with a known sort first, so a bare input takes it.
                        let (x, sx) = match self.typed(a, None) {
                            Some(t) if !is_free_input(a) => t,
                            _ => {
                                let (y, sy) = self.typed(b, None)?;
                                let (x, _) = self.typed(a, Some(sy))?;
                                return Some((eq(f, &x, &y), Sort::Bool));
                            }
                        };
                        let y = self.term(b, Some(sx))?;
                        Some((eq(f, &x, &y), Sort::Bool))
                    }
                    ("_?_:_", [c, a, b]) => {
                        let c = self.term(c, Some(Sort::Bool))?;
                        let (a, s) = self.typed(a, want)?;
                        let b = self.term(b, Some(s))?;
                        Some((format!("(ite {c} {a} {b})"), s))
                    }
                    ("size", [a]) => Some((format!("(str.len {})", self.term(a, Some(Sort::Str))?), Sort::Int)),
                    ("@in", [a, list]) => {
                        let Expr::List(l) = &list.expr else { return None };
                        let (x, s) = self.typed(a, None)?;
                        let alts: Option<Vec<String>> = l
                            .elements
                            .iter()
                            .map(|el| self.term(el, Some(s)).map(|y| format!("(= {x} {y})")))
                            .collect();
                        Some((format!("(or false {})", alts?.join(" ")), Sort::Bool))
                    }
                    _ => None,
                }
            }
            _ => None,
        }
    }

    /// `output` (or a field of it) replaced by the fallback.
    fn output_at(&mut self, path: &[String], want: Option<Sort>) -> Option<(String, Sort)> {
        match &self.output {
            OutputIs::Const(v) => {
                let mut cur: &Value = v;
                for key in path {
                    cur = cur.get(key)?;
                }
                json_literal(cur)
            }
            OutputIs::Expr(e) => {
                let mut cur: &IdedExpr = e;
                for key in path {
                    let Expr::Map(m) = &cur.expr else { return None };
                    cur = m.entries.iter().find_map(|entry| match &entry.expr {
                        EntryExpr::MapEntry(me) => match &me.key.expr {
                            Expr::Literal(LiteralValue::String(s)) if s.inner() == key => Some(&me.value),
                            _ => None,
                        },
                        _ => None,
                    })?;
                }
                // The fallback expression reads `input`, never `output`.
                let saved = std::mem::replace(&mut self.output, OutputIs::Const(&Value::Null));
                let r = self.typed(cur, want);
                self.output = saved;
                r
            }
        }
    }
}

fn is_free_input(e: &IdedExpr) -> bool {
    select_path(e).is_some_and(|(root, _)| root == "input")
}

fn eq(f: &str, x: &str, y: &str) -> String {
    if f == "_==_" {
        format!("(= {x} {y})")
    } else {
        format!("(not (= {x} {y}))")
    }
}

fn int(i: i64) -> String {
    if i < 0 {
        format!("(- {})", i.unsigned_abs())
    } else {
        i.to_string()
    }
}

fn string(s: &str) -> Option<String> {
    // SMT-LIB string literals: printable ASCII, `"` doubled.
    s.chars()
        .all(|c| (' '..='~').contains(&c))
        .then(|| format!("\"{}\"", s.replace('"', "\"\"")))
}

fn literal(l: &LiteralValue) -> Option<(String, Sort)> {
    match l {
        LiteralValue::Int(i) => Some((int(*i.inner()), Sort::Int)),
        LiteralValue::UInt(u) => Some((u.inner().to_string(), Sort::Int)),
        LiteralValue::Boolean(b) => Some((b.inner().to_string(), Sort::Bool)),
        LiteralValue::String(s) => Some((string(s.inner())?, Sort::Str)),
        _ => None,
    }
}

fn json_literal(v: &Value) -> Option<(String, Sort)> {
    match v {
        Value::Bool(b) => Some((b.to_string(), Sort::Bool)),
        Value::Number(n) => Some((int(n.as_i64()?), Sort::Int)),
        Value::String(s) => Some((string(s)?, Sort::Str)),
        _ => None,
    }
}

enum Z3 {
    Unsat,
    Sat(String),
    Unknown,
}

pub fn z3_available() -> bool {
    static FOUND: std::sync::LazyLock<bool> = std::sync::LazyLock::new(|| {
        Command::new("z3")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    *FOUND
}

fn run_z3(query: &str) -> std::io::Result<Z3> {
    let mut child = Command::new("z3")
        .args(["-in", "-smt2", "-T:10"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    child.stdin.take().expect("piped").write_all(query.as_bytes())?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    Ok(match lines.next().map(str::trim) {
        Some("unsat") => Z3::Unsat,
        Some("sat") => Z3::Sat(
            lines
                .collect::<Vec<_>>()
                .join(" ")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        ),
        _ => Z3::Unknown,
    })
}

#[cfg(test)]
mod tests {
    use super::super::contract::ContractSpec;
    use super::*;

    fn contract(spec: Value) -> Contract {
        Contract::compile("c", serde_json::from_value::<ContractSpec>(spec).unwrap()).unwrap()
    }

    #[test]
    fn constant_fallback_without_input_is_verified_directly() {
        let c = contract(json!({"parse": "int", "post": "output >= 0", "fallback": {"const": 0}}));
        assert_eq!(verify_fallback(&c, &[]), Ok(Tier::Verified));
        let bad = contract(json!({"parse": "int", "post": "output > 0", "fallback": {"const": 0}}));
        assert!(verify_fallback(&bad, &[]).unwrap_err().contains("breaks"));
        let none = contract(json!({"parse": "int"}));
        assert_eq!(verify_fallback(&none, &[]), Ok(Tier::Unguarded));
    }

    #[test]
    fn smt_translation_of_the_fragment() {
        let c = contract(json!({
            "pre": "input.max >= 0 && size(input.text) > 0",
            "parse": "json",
            "post": "output.qty >= 0 && output.qty <= input.max && (input.flag ? output.ok : true)",
            "fallback": {"cel": "{'qty': input.max - input.max, 'ok': true}"}
        }));
        let q = smt_query(&c).expect("inside the fragment");
        assert!(q.contains("(declare-const |input.max| Int)"), "{q}");
        assert!(q.contains("(declare-const |input.text| String)"), "{q}");
        assert!(q.contains("(declare-const |input.flag| Bool)"), "{q}");
        let outside = contract(json!({"post": "output.matches('a+')", "fallback": {"const": "a"}}));
        assert!(smt_query(&outside).is_none());
    }

    /// Needs the `z3` binary (scripts/setup.sh installs it); without it the tier is `tested`.
    #[test]
    fn z3_proves_good_fallbacks_and_refutes_bad_ones() {
        let good = contract(json!({
            "pre": "input.max >= 0", "parse": "int",
            "post": "output >= 0 && output <= input.max",
            "fallback": {"const": 0}
        }));
        let bad = contract(json!({
            "parse": "int", "post": "output >= 0 && output <= input.max", "fallback": {"const": 1}
        }));
        let symbolic = contract(json!({
            "pre": "input.max >= 0", "parse": "int",
            "post": "output * 2 <= input.max + input.max", "fallback": {"cel": "input.max"}
        }));
        if !z3_available() {
            assert!(matches!(verify_fallback(&good, &[]), Ok(Tier::Tested(_))));
            return;
        }
        assert_eq!(verify_fallback(&good, &[]), Ok(Tier::VerifiedSmt));
        assert_eq!(verify_fallback(&symbolic, &[]), Ok(Tier::VerifiedSmt));
        let err = verify_fallback(&bad, &[]).unwrap_err();
        assert!(err.contains("z3 found") && err.contains("input.max"), "{err}");
    }

    #[test]
    fn outside_the_fragment_is_tested_not_verified() {
        let c = contract(json!({
            "post": "output.startsWith('n/a') || size(input.q) > 1000",
            "fallback": {"const": "n/a"}
        }));
        assert!(matches!(verify_fallback(&c, &[json!({"q": "hi"})]), Ok(Tier::Tested(n)) if n > 0));
    }
}
