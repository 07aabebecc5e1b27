//! Static check of candidate code: parse with tree-sitter, run the rules in `grammars/`,
//! validate the entry point, and compute the normalised form and structural fingerprint.
//!
//! Architecture Invariant: `check` is pure. It calls no model, starts no process and opens
//! no store, so it can run on every proposal before anything costs money.

mod normalize;
mod rules;

use std::fmt;

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tree_sitter::{Node, Parser, Tree};

pub use normalize::{
    exact_similarity, normalized_of, normalized_source, signature_of, signatures, structure_fingerprint, Signature,
};
pub use rules::{Rule, RuleSet};

use crate::candidate::CandidateKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// One finding, printed as `file:line:col rule message` with a `fix:` line under it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub rule: String,
    pub severity: Severity,
    pub message: String,
    pub fix: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{} {} {}: {}\n  fix: {}",
            self.file, self.line, self.col, self.rule, self.severity, self.message, self.fix
        )
    }
}

/// The outcome of checking one program.
#[derive(Debug, Clone)]
pub struct CheckReport {
    pub diagnostics: Vec<Diagnostic>,
    /// Token stream without comments or layout: the basis of the candidate id.
    pub normalized: String,
    /// Hash of the tree shape with names and literals abstracted: near-duplicate detection.
    pub fingerprint: String,
}

impl CheckReport {
    pub fn passes(&self) -> bool {
        !self.diagnostics.iter().any(|d| d.severity == Severity::Error)
    }

    /// Diagnostics as text for humans and for the proposer's debug prompt.
    pub fn render(&self) -> String {
        self.diagnostics
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Parses Python source with tree-sitter.
pub fn parse_python(source: &str) -> Tree {
    let mut parser = Parser::new();
    parser
        .set_language(&tree_sitter_python::LANGUAGE.into())
        .expect("tree-sitter-python grammar matches the tree-sitter version");
    parser
        .parse(source, None)
        .expect("parsing without a timeout always returns a tree")
}

/// Rules another layer adds to the embedded query rules (the guards' contract rules). They
/// run on a tree without syntax errors. Why a trait: `check` stays pure and knows nothing
/// of the layers above it that extend it.
pub trait TreeRules: Send + Sync {
    fn check(&self, file: &str, source: &str, root: Node) -> Vec<Diagnostic>;
}

/// Checks candidate programs against the syntax, the entry-point contract and the rules.
pub struct Checker {
    rules: std::sync::Arc<RuleSet>,
    tree_rules: Vec<std::sync::Arc<dyn TreeRules>>,
    /// The latest reports, by file, kind and source: the loop checks a program when an
    /// operator makes it, again before evaluating it, and its signature once archived.
    recent: std::sync::Mutex<std::collections::VecDeque<(String, CandidateKind, String, CheckReport)>>,
}

/// Reports remembered by a checker.
const RECENT_REPORTS: usize = 8;

const MAX_SYNTAX_DIAGNOSTICS: usize = 5;

impl Checker {
    /// A checker with the rules embedded from `grammars/`.
    pub fn embedded() -> Result<Self> {
        Ok(Self::with_shared_rules(RuleSet::embedded()?))
    }

    pub fn with_rules(rules: RuleSet) -> Self {
        Self::with_shared_rules(std::sync::Arc::new(rules))
    }

    fn with_shared_rules(rules: std::sync::Arc<RuleSet>) -> Self {
        Self {
            rules,
            tree_rules: Vec::new(),
            recent: Default::default(),
        }
    }

    /// Adds rules from a layer above (`guard::checker` adds the contract rules).
    pub fn with_tree_rules(mut self, rules: impl TreeRules + 'static) -> Self {
        self.tree_rules.push(std::sync::Arc::new(rules));
        self.recent.get_mut().unwrap().clear(); // reports made under the old rules
        self
    }

    pub fn rules(&self) -> &RuleSet {
        &self.rules
    }

    pub fn check(&self, file: &str, source: &str, kind: CandidateKind) -> CheckReport {
        let mut recent = self.recent.lock().unwrap();
        if let Some((.., report)) = recent
            .iter()
            .find(|(f, k, s, _)| f == file && *k == kind && s == source)
        {
            return report.clone();
        }
        let report = self.check_afresh(file, source, kind);
        if recent.len() == RECENT_REPORTS {
            recent.pop_front();
        }
        recent.push_back((file.to_string(), kind, source.to_string(), report.clone()));
        report
    }

    fn check_afresh(&self, file: &str, source: &str, kind: CandidateKind) -> CheckReport {
        let tree = parse_python(source);
        let root = tree.root_node();
        let mut diagnostics = Vec::new();
        syntax_errors(file, source, root, &mut diagnostics);
        if diagnostics.is_empty() {
            entry_point(file, root, source, kind, &mut diagnostics);
            for rules in &self.tree_rules {
                diagnostics.extend(rules.check(file, source, root));
            }
        }
        diagnostics.extend(self.rules.run(file, source, root));
        diagnostics.sort_by(|a, b| (a.line, a.col, &a.rule).cmp(&(b.line, b.col, &b.rule)));
        diagnostics.dedup();
        CheckReport {
            diagnostics,
            normalized: normalized_source(root, source),
            fingerprint: structure_fingerprint(root, source),
        }
    }
}

fn syntax_errors(file: &str, source: &str, root: Node, out: &mut Vec<Diagnostic>) {
    if !root.has_error() {
        return;
    }
    let mut stack = vec![root];
    while let Some(node) = stack.pop() {
        if out.len() >= MAX_SYNTAX_DIAGNOSTICS {
            return;
        }
        if node.is_missing() || node.is_error() {
            let pos = node.start_position();
            let message = if node.is_missing() {
                format!("missing `{}`", node.kind())
            } else {
                let text = &source[node.byte_range()];
                let first = text.lines().next().unwrap_or("").trim();
                let shown: String = first.chars().take(40).collect();
                format!("cannot parse `{shown}`")
            };
            out.push(Diagnostic {
                file: file.to_string(),
                line: pos.row + 1,
                col: pos.column + 1,
                rule: "syntax-error".into(),
                severity: Severity::Error,
                message,
                fix: "make the program valid Python 3 (check brackets, quotes, colons and indentation)".into(),
            });
            continue;
        }
        if node.has_error() {
            let mut cursor = node.walk();
            let children: Vec<_> = node.children(&mut cursor).collect();
            stack.extend(children.into_iter().rev());
        }
    }
}

fn entry_point(file: &str, root: Node, source: &str, kind: CandidateKind, out: &mut Vec<Diagnostic>) {
    let (name, arity, fix) = match kind {
        CandidateKind::Agent => ("forward", 1, "define `def forward(task):` at module level and return a string"),
        CandidateKind::Memory => ("Memory", 0, "define `class Memory:` with `retrieve(self, observation)` and `update(self, observation, trajectory, reward)`"),
    };
    let mut cursor = root.walk();
    for child in root.children(&mut cursor) {
        let def = match child.kind() {
            "decorated_definition" => child.child_by_field_name("definition"),
            _ => Some(child),
        };
        let Some(def) = def else { continue };
        let wanted_kind = if kind == CandidateKind::Agent {
            "function_definition"
        } else {
            "class_definition"
        };
        if def.kind() != wanted_kind {
            continue;
        }
        let Some(name_node) = def.child_by_field_name("name") else {
            continue;
        };
        if &source[name_node.byte_range()] != name {
            continue;
        }
        if kind == CandidateKind::Agent {
            let params = def.child_by_field_name("parameters");
            let count = params.map(|p| p.named_child_count()).unwrap_or(0);
            // ADAS's form, `forward(self, taskInfo)`, runs through runtime/metaforge/adas.py.
            let adas = count == 2
                && params
                    .and_then(|p| p.named_child(0))
                    .is_some_and(|first| &source[first.byte_range()] == "self");
            if count != arity && !adas {
                let pos = def.start_position();
                out.push(Diagnostic {
                    file: file.into(),
                    line: pos.row + 1,
                    col: pos.column + 1,
                    rule: "entry-point".into(),
                    severity: Severity::Error,
                    message: format!(
                        "`forward` takes {count} parameters; it must take exactly one (the task dict), or be ADAS's `forward(self, taskInfo)`"
                    ),
                    fix: fix.into(),
                });
            }
        }
        return;
    }
    out.push(Diagnostic {
        file: file.into(),
        line: 1,
        col: 1,
        rule: "entry-point".into(),
        severity: Severity::Error,
        message: format!("no module-level `{name}` found"),
        fix: fix.into(),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(src: &str) -> CheckReport {
        Checker::embedded().unwrap().check("cand.py", src, CandidateKind::Agent)
    }

    #[test]
    fn seed_agents_pass() {
        for (path, text) in crate::assets::files_with_ext(&crate::assets::ARCHIVE, "agents", "py") {
            let r = Checker::embedded().unwrap().check(path, text, CandidateKind::Agent);
            assert!(r.passes(), "{path}:\n{}", r.render());
        }
    }

    #[test]
    fn seed_memory_designs_pass_as_memory_and_fail_as_agents() {
        let seeds = crate::assets::files_with_ext(&crate::assets::ARCHIVE, "memory", "py");
        assert_eq!(seeds.len(), 4);
        for (path, text) in seeds {
            let r = Checker::embedded().unwrap().check(path, text, CandidateKind::Memory);
            assert!(r.passes(), "{path}:\n{}", r.render());
            assert!(!check(text).passes(), "{path} has no forward()");
        }
    }

    #[test]
    fn syntax_error_has_position() {
        let r = check("def forward(task):\n    return (1 +\n");
        assert!(!r.passes());
        insta::assert_snapshot!(r.render());
    }

    #[test]
    fn missing_entry_point() {
        let r = check("def solve(task):\n    return '1'\n");
        insta::assert_snapshot!(r.render());
    }

    #[test]
    fn wrong_arity() {
        let r = check("def forward(task, hint, extra):\n    return '1'\n");
        insta::assert_snapshot!(r.render());
        assert!(
            check("def forward(self, taskInfo):\n    return '1'\n").passes(),
            "ADAS's form is accepted"
        );
    }

    #[test]
    fn same_program_reformatted_normalises_equal() {
        let a = check("def forward(task):\n    # comment\n    return   'x'\n");
        let b = check("def forward(task):\n  return 'x'  # other\n");
        assert_eq!(a.normalized, b.normalized);
        let c = check("def forward(task):\n  return 'y'\n");
        assert_ne!(a.normalized, c.normalized);
        assert_eq!(
            a.fingerprint, c.fingerprint,
            "literals are abstracted in the fingerprint"
        );
    }
}
