//! Static contract rules on candidate code: the candidate's `CONTRACTS` literal read as
//! data (never executed), every `llm(..., contract="id")` call site checked against it, and
//! the experiment's import allow-list. Diagnostics go back to the proposer like any check
//! finding.
//!
//! Why a walk in Rust and not a `grammars/*.scm` rule: these rules compare nodes with each
//! other (a call's contract id with the manifest's keys, an import with the experiment's
//! list), which a tree-sitter query cannot express; the single-node rules stay data.

use std::collections::BTreeMap;

use serde_json::{Map, Number, Value};
use tree_sitter::Node;

use super::contract::{Contract, ContractSpec, Fallback};
use crate::check::{Checker, Diagnostic, Severity, TreeRules};

/// The rules an experiment turns on (`[guards]`); contract rules run whatever they say.
#[derive(Debug, Clone, Default)]
pub struct GuardRules {
    pub require_call_contracts: bool,
    /// Modules a candidate may import (`metaforge` always); None: no allow-list.
    pub allowed_imports: Option<Vec<String>>,
}

impl TreeRules for GuardRules {
    fn check(&self, file: &str, source: &str, root: Node) -> Vec<Diagnostic> {
        check(file, source, root, self)
    }
}

/// The checker every candidate passes: the embedded rules plus the contract rules, and the
/// call-contract and import rules when `rules` turns them on (`[guards]`).
pub fn checker(rules: GuardRules) -> anyhow::Result<Checker> {
    Ok(Checker::embedded()?.with_tree_rules(rules))
}

/// The contracts a candidate declares, as data.
#[derive(Debug, Clone, Default)]
pub struct Manifest {
    pub contracts: BTreeMap<String, ContractSpec>,
}

impl Manifest {
    /// Reads `CONTRACTS` from a program; malformed entries are left out (the check reports
    /// them), so evaluation never runs a contract the check refused.
    pub fn of(source: &str) -> Self {
        // Most programs declare none: no parse for them (this runs for every evaluation).
        if !source.contains("CONTRACTS") {
            return Self::default();
        }
        let tree = crate::check::parse_python(source);
        let mut out = Vec::new();
        read_manifest("", source, tree.root_node(), &mut out).0
    }

    /// Compiles every contract.
    pub fn compile(&self) -> Result<BTreeMap<String, Contract>, String> {
        self.contracts
            .iter()
            .map(|(id, spec)| {
                Contract::compile(id, spec.clone())
                    .map(|c| (id.clone(), c))
                    .map_err(|p| p.join("; "))
            })
            .collect()
    }
}

struct Ctx<'a> {
    file: &'a str,
    out: &'a mut Vec<Diagnostic>,
}

impl Ctx<'_> {
    fn push(&mut self, node: Node, rule: &str, severity: Severity, message: String, fix: &str) {
        let p = node.start_position();
        self.out.push(Diagnostic {
            file: self.file.to_string(),
            line: p.row + 1,
            col: p.column + 1,
            rule: rule.into(),
            severity,
            message,
            fix: fix.into(),
        });
    }
}

/// Runs the contract rules (and, when asked, the call-contract and import rules).
pub fn check(file: &str, source: &str, root: Node, rules: &GuardRules) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let (manifest, key_nodes) = read_manifest(file, source, root, &mut out);
    let mut ctx = Ctx { file, out: &mut out };
    let mut used = std::collections::BTreeSet::new();
    let mut stack = vec![root];
    while let Some(node) = stack.pop() {
        match node.kind() {
            "call" => call_site(&mut ctx, source, node, &manifest, rules, &mut used),
            "import_statement" | "import_from_statement" => {
                if let Some(allowed) = &rules.allowed_imports {
                    imports(&mut ctx, source, node, allowed);
                }
            }
            _ => {}
        }
        let mut cursor = node.walk();
        stack.extend(node.named_children(&mut cursor));
    }
    for (id, spec) in &manifest.contracts {
        let at = key_nodes[id];
        lint(&mut ctx, at, id, spec, used.contains(id));
    }
    out
}

fn call_site(
    ctx: &mut Ctx,
    source: &str,
    call: Node,
    manifest: &Manifest,
    rules: &GuardRules,
    used: &mut std::collections::BTreeSet<String>,
) {
    let Some(f) = call.child_by_field_name("function") else {
        return;
    };
    if f.kind() != "identifier" || &source[f.byte_range()] != "llm" {
        return;
    }
    let Some(args) = call.child_by_field_name("arguments") else {
        return;
    };
    let mut cursor = args.walk();
    let contract = args.named_children(&mut cursor).find(|a| {
        a.kind() == "keyword_argument"
            && a.child_by_field_name("name")
                .is_some_and(|n| &source[n.byte_range()] == "contract")
    });
    match contract.and_then(|k| k.child_by_field_name("value")) {
        None if rules.require_call_contracts => ctx.push(
            call,
            "llm-without-contract",
            Severity::Error,
            "this experiment requires every `llm()` call to name a contract".into(),
            "add `contract=\"<id>\"` naming an entry of the module-level `CONTRACTS = {...}` literal",
        ),
        None => {}
        Some(v) => match python_literal(source, v) {
            Ok(Value::String(id)) if manifest.contracts.contains_key(&id) => {
                used.insert(id);
            }
            Ok(Value::String(id)) => ctx.push(
                v,
                "contract-unknown",
                Severity::Error,
                format!(
                    "contract {id:?} is not declared (declared: {:?})",
                    manifest.contracts.keys().collect::<Vec<_>>()
                ),
                "declare it in the module-level `CONTRACTS = {...}` literal, or correct the id",
            ),
            _ => ctx.push(
                v,
                "contract-not-literal",
                Severity::Error,
                "`contract=` must be a string literal so the host can check the call statically".into(),
                "write the contract id inline, e.g. `contract=\"answer\"`",
            ),
        },
    }
}

fn imports(ctx: &mut Ctx, source: &str, node: Node, allowed: &[String]) {
    let mut names = Vec::new();
    if node.kind() == "import_from_statement" {
        if let Some(m) = node.child_by_field_name("module_name") {
            names.push(m);
        }
    } else {
        let mut cursor = node.walk();
        for n in node.children_by_field_name("name", &mut cursor) {
            names.push(match n.kind() {
                "aliased_import" => n.child_by_field_name("name").unwrap_or(n),
                _ => n,
            });
        }
    }
    for n in names {
        let text = &source[n.byte_range()];
        let root = text.split('.').next().unwrap_or(text);
        if root != "metaforge" && !allowed.iter().any(|a| a == root) {
            ctx.push(
                n,
                "import-not-allowed",
                Severity::Error,
                format!("module `{text}` is not in this experiment's allow-list {allowed:?}"),
                "use only the allowed modules (guards.allowed_imports in the experiment)",
            );
        }
    }
}

fn lint(ctx: &mut Ctx, at: Node, id: &str, spec: &ContractSpec, used: bool) {
    let compiled = match Contract::compile(id, spec.clone()) {
        Ok(c) => c,
        Err(problems) => {
            for p in problems {
                let (message, fix) = p.split_once("; fix: ").unwrap_or((&p, "correct the contract"));
                ctx.push(at, "contract-invalid", Severity::Error, message.to_string(), fix);
            }
            return;
        }
    };
    // A constant fallback whose checks do not read `input` is decided here, for free; the
    // rest is proved (or tested) when the candidate is registered for evaluation.
    if let Some(Fallback::Const(v)) = compiled.fallback() {
        if !compiled.post().is_some_and(|p| p.mentions("input")) {
            if let Err(e) = compiled.check_value(&Value::Object(Map::new()), v) {
                ctx.push(
                    at,
                    "contract-fallback-unsound",
                    Severity::Error,
                    format!("contract {id:?}: the fallback {v} breaks the contract ({e})"),
                    "choose a fallback value that passes the contract's own checks",
                );
            }
        }
    }
    let vacuous = spec.regex.is_none()
        && spec.schema.is_none()
        && spec.post.as_deref().is_none_or(|p| p.trim() == "true")
        && spec.parse == super::contract::Parse::Raw;
    if vacuous {
        ctx.push(
            at,
            "contract-vacuous",
            Severity::Warning,
            format!("contract {id:?} accepts any text"),
            "say what a good answer looks like: a regex, a parse with a schema, or a postcondition",
        );
    }
    if spec.fallback.is_none() {
        ctx.push(
            at,
            "contract-no-fallback",
            Severity::Warning,
            format!("contract {id:?} has no fallback: when every attempt fails the call raises ContractError"),
            "add `\"fallback\": {\"const\": ...}` with a value that satisfies the contract",
        );
    }
    if !used {
        ctx.push(
            at,
            "contract-unused",
            Severity::Warning,
            format!("contract {id:?} is declared but no `llm()` call names it"),
            "name it in a call (`contract=\"...\"`) or remove it",
        );
    }
}

/// Reads the module-level `CONTRACTS = {...}`; returns the manifest and each id's key node.
fn read_manifest<'t>(
    file: &str,
    source: &str,
    root: Node<'t>,
    out: &mut Vec<Diagnostic>,
) -> (Manifest, BTreeMap<String, Node<'t>>) {
    let mut ctx = Ctx { file, out };
    let mut manifest = Manifest::default();
    let mut keys = BTreeMap::new();
    let mut cursor = root.walk();
    for stmt in root.named_children(&mut cursor) {
        let Some(assign) = (stmt.kind() == "expression_statement")
            .then(|| stmt.named_child(0))
            .flatten()
        else {
            continue;
        };
        if assign.kind() != "assignment" {
            continue;
        }
        let (Some(left), Some(right)) = (assign.child_by_field_name("left"), assign.child_by_field_name("right"))
        else {
            continue;
        };
        if &source[left.byte_range()] != "CONTRACTS" {
            continue;
        }
        if right.kind() != "dictionary" {
            ctx.push(
                right,
                "contract-not-literal",
                Severity::Error,
                "`CONTRACTS` must be a dict literal".into(),
                "write `CONTRACTS = {\"id\": {...}}` with literals only",
            );
            continue;
        }
        let mut pairs = right.walk();
        for pair in right.named_children(&mut pairs).filter(|n| n.kind() == "pair") {
            let (Some(k), Some(v)) = (pair.child_by_field_name("key"), pair.child_by_field_name("value")) else {
                continue;
            };
            let id = match python_literal(source, k) {
                Ok(Value::String(s)) => s,
                _ => {
                    ctx.push(
                        k,
                        "contract-not-literal",
                        Severity::Error,
                        "a contract id must be a string literal".into(),
                        "use a string key such as \"answer\"",
                    );
                    continue;
                }
            };
            let spec = python_literal(source, v).and_then(|json| {
                serde_json::from_value::<ContractSpec>(json).map_err(|e| (v, format!("contract {id:?}: {e}")))
            });
            match spec {
                Ok(spec) if manifest.contracts.get(&id).is_some_and(|known| *known != spec) => ctx.push(
                    k,
                    "contract-duplicate",
                    Severity::Error,
                    format!("contract {id:?} is declared twice, differently"),
                    "give one of them another id (and use that id at its call sites)",
                ),
                Ok(spec) => {
                    manifest.contracts.insert(id.clone(), spec);
                    keys.entry(id).or_insert(k);
                }
                Err((node, why)) => ctx.push(
                    node,
                    "contract-invalid",
                    Severity::Error,
                    why,
                    "a contract is a dict of literals with keys pre, repair, regex, parse, schema, post, max_attempts, on_fail, fallback",
                ),
            }
        }
    }
    (manifest, keys)
}

/// Converts a Python literal to JSON without executing anything; the error names the
/// first node that is not a literal.
fn python_literal<'t>(source: &str, node: Node<'t>) -> Result<Value, (Node<'t>, String)> {
    let text = &source[node.byte_range()];
    let not_literal = |n: Node<'t>, what: &str| {
        Err((
            n,
            format!(
                "{what} is not a literal (`{}`)",
                &source[n.byte_range()].chars().take(40).collect::<String>()
            ),
        ))
    };
    match node.kind() {
        "dictionary" => {
            let mut map = Map::new();
            let mut c = node.walk();
            for pair in node.named_children(&mut c) {
                if pair.kind() != "pair" {
                    return not_literal(pair, "a dict entry");
                }
                let k = pair.child_by_field_name("key").expect("pair has a key");
                let v = pair.child_by_field_name("value").expect("pair has a value");
                let Value::String(key) = python_literal(source, k)? else {
                    return Err((k, "dict keys must be strings".into()));
                };
                map.insert(key, python_literal(source, v)?);
            }
            Ok(Value::Object(map))
        }
        "list" | "tuple" => {
            let mut c = node.walk();
            let items: Vec<Node> = node.named_children(&mut c).collect();
            items
                .into_iter()
                .map(|n| python_literal(source, n))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array)
        }
        "parenthesized_expression" => {
            python_literal(source, node.named_child(0).ok_or((node, "empty parentheses".into()))?)
        }
        "string" => python_string(text)
            .ok_or((
                node,
                format!(
                    "`{}` is not a plain string literal (f-strings and bytes are not data)",
                    text.chars().take(40).collect::<String>()
                ),
            ))
            .map(Value::String),
        "integer" => text
            .replace('_', "")
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| (node, format!("integer `{text}` is out of range"))),
        "float" => text
            .replace('_', "")
            .parse::<f64>()
            .ok()
            .and_then(Number::from_f64)
            .map(Value::Number)
            .ok_or((node, format!("`{text}` is not a finite number"))),
        "true" => Ok(Value::Bool(true)),
        "false" => Ok(Value::Bool(false)),
        "none" => Ok(Value::Null),
        "unary_operator" if text.starts_with('-') => {
            let arg = node
                .child_by_field_name("argument")
                .ok_or((node, "bad number".into()))?;
            match python_literal(source, arg)? {
                Value::Number(n) if n.is_i64() => Ok(Value::from(-n.as_i64().unwrap_or(0))),
                Value::Number(n) => Ok(Number::from_f64(-n.as_f64().unwrap_or(0.0))
                    .map(Value::Number)
                    .unwrap_or(Value::Null)),
                _ => not_literal(node, "a negation"),
            }
        }
        _ => not_literal(node, "this expression"),
    }
}

/// Decodes one Python string literal (prefixes `r`, `u`; escapes as Python does). `None`
/// for f-strings, bytes and implicit concatenation.
fn python_string(text: &str) -> Option<String> {
    let quote_at = text.find(['"', '\''])?;
    let prefix = text[..quote_at].to_ascii_lowercase();
    if prefix.contains('f') || prefix.contains('b') || !prefix.chars().all(|c| c == 'r' || c == 'u') {
        return None;
    }
    let body = &text[quote_at..];
    let q = if body.starts_with("\"\"\"") || body.starts_with("'''") {
        &body[..3]
    } else {
        &body[..1]
    };
    let inner = body.strip_prefix(q)?.strip_suffix(q)?;
    if prefix.contains('r') {
        return Some(inner.to_string());
    }
    let mut out = String::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('0') => out.push('\0'),
            Some('\\') => out.push('\\'),
            Some('\'') => out.push('\''),
            Some('"') => out.push('"'),
            Some('\n') => {}
            Some(e @ ('x' | 'u' | 'U')) => {
                let n = match e {
                    'x' => 2,
                    'u' => 4,
                    _ => 8,
                };
                let hex: String = (0..n).filter_map(|_| chars.next()).collect();
                out.push(u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32)?);
            }
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::candidate::CandidateKind;

    const GUARDED: &str = r#"from metaforge import llm
import re

CONTRACTS = {
    "answer": {
        "repair": ["last_number"],
        "regex": r"^-?\d+$",
        "parse": "int",
        "post": "output >= -1000000",
        "max_attempts": 3,
        "fallback": {"const": 0},
    },
}

def forward(task):
    n = llm("Solve: " + task["question"], contract="answer")
    return str(n)
"#;

    fn run(src: &str, rules: GuardRules) -> String {
        let checker = super::checker(rules).unwrap();
        checker.check("cand.py", src, CandidateKind::Agent).render()
    }

    #[test]
    fn manifest_is_read_as_data() {
        let m = Manifest::of(GUARDED);
        let spec = &m.contracts["answer"];
        assert_eq!(spec.regex.as_deref(), Some(r"^-?\d+$"));
        assert_eq!(
            spec.fallback,
            Some(super::super::contract::FallbackSpec::Const(Value::from(0)))
        );
        assert_eq!(
            run(
                GUARDED,
                GuardRules {
                    require_call_contracts: true,
                    allowed_imports: Some(vec!["re".into()])
                }
            ),
            ""
        );
    }

    #[test]
    fn contract_diagnostics() {
        let src = r#"from metaforge import llm
import json
NAME = "x"
CONTRACTS = {
    "loose": {"max_attempts": 2},
    "bad": {"parse": "int", "post": "output >", "fallback": {"const": 0}},
    "unsound": {"parse": "int", "post": "output > 0", "fallback": {"const": 0}},
    "dynamic": {"regex": NAME},
}

def forward(task):
    a = llm("q", contract="loose")
    b = llm("q", contract="missing")
    c = llm("q", contract=NAME)
    return llm("plain")
"#;
        let text = run(
            src,
            GuardRules {
                require_call_contracts: true,
                allowed_imports: Some(vec!["re".into()]),
            },
        );
        insta::assert_snapshot!(text);
    }

    #[test]
    fn literal_strings_decode_like_python() {
        assert_eq!(python_string(r#""a\nb\x41\u00e9""#).unwrap(), "a\nbAé");
        assert_eq!(python_string(r#"r"\d+""#).unwrap(), r"\d+");
        assert_eq!(python_string("'''x'y'''").unwrap(), "x'y");
        assert!(python_string(r#"f"{x}""#).is_none());
        assert!(python_string(r#"b"x""#).is_none());
    }
}
