//! Rules as data: each `grammars/*.scm` file is a tree-sitter query whose header comment gives
//! `id`, `severity`, `message` and `fix`; the node captured as `@violation` is reported.
//! Adding a rule needs no Rust.
//!
//! Why one combined query: all files run as one query in a single pass over the tree, where
//! a pass per file multiplies the cost of every check (`cargo bench --bench pipeline`).
//! Only when the combined query does not compile is each file compiled alone, to name the
//! one at fault: compiling every file alone as well tripled the cost of building a rule set
//! (tree-sitter analyses each pattern at compile time), paid at every search's start.

use anyhow::{anyhow, bail, Context, Result};
use std::sync::{Arc, OnceLock};
use streaming_iterator::StreamingIterator;

use tree_sitter::{Node, Query, QueryCursor};

use super::{Diagnostic, Severity};

#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub severity: Severity,
    pub message: String,
    pub fix: String,
}

pub struct RuleSet {
    rules: Vec<Rule>,
    /// Every rule's patterns in one query.
    combined: Query,
    /// The rule of each pattern of `combined`.
    pattern_rule: Vec<usize>,
    violation: u32,
}

impl RuleSet {
    /// The rules embedded from `grammars/`, compiled once per process and shared: every
    /// search, check command and test of one process uses the same compiled query.
    pub fn embedded() -> Result<Arc<Self>> {
        static EMBEDDED: OnceLock<Arc<RuleSet>> = OnceLock::new();
        if let Some(rules) = EMBEDDED.get() {
            return Ok(rules.clone());
        }
        let sources = crate::assets::files_with_ext(&crate::assets::GRAMMARS, "", "scm");
        let rules = Arc::new(Self::from_sources(
            sources.into_iter().map(|(p, t)| (p.to_string(), t.to_string())),
        )?);
        Ok(EMBEDDED.get_or_init(|| rules).clone())
    }

    pub fn from_sources(sources: impl IntoIterator<Item = (String, String)>) -> Result<Self> {
        let mut rules = Vec::new();
        let mut text = String::new();
        let mut starts = Vec::new();
        let mut files = Vec::new();
        for (path, source) in sources {
            rules.push(Rule::parse(&path, &source)?);
            starts.push(text.len());
            text.push_str(&source);
            text.push('\n');
            files.push((path, source));
        }
        let language = tree_sitter_python::LANGUAGE.into();
        let combined = match Query::new(&language, &text) {
            Ok(q) => q,
            Err(together) => {
                for (path, source) in &files {
                    Query::new(&language, source).with_context(|| format!("{path}: query does not compile"))?;
                }
                bail!("grammars/*.scm compile one by one but not together: {together}");
            }
        };
        let pattern_rule = (0..combined.pattern_count())
            .map(|p| {
                let at = combined.start_byte_for_pattern(p);
                starts
                    .iter()
                    .rposition(|&s| s <= at)
                    .expect("patterns start after the first file")
            })
            .collect();
        let violation = combined.capture_index_for_name("violation").unwrap_or(u32::MAX);
        Ok(Self {
            rules,
            combined,
            pattern_rule,
            violation,
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Rule> {
        self.rules.iter()
    }

    pub fn run(&self, file: &str, source: &str, root: Node) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        let mut cursor = QueryCursor::new();
        let mut matches = cursor.matches(&self.combined, root, source.as_bytes());
        while let Some(m) = matches.next() {
            let rule = &self.rules[self.pattern_rule[m.pattern_index]];
            for cap in m.captures().iter().filter(|c| c.index == self.violation) {
                let pos = cap.node.start_position();
                out.push(Diagnostic {
                    file: file.to_string(),
                    line: pos.row + 1,
                    col: pos.column + 1,
                    rule: rule.id.clone(),
                    severity: rule.severity,
                    message: rule.message.clone(),
                    fix: rule.fix.clone(),
                });
            }
        }
        out
    }
}

impl Rule {
    /// Parses one rule file; errors name the file and the missing header field.
    pub fn parse(path: &str, text: &str) -> Result<Self> {
        let mut id = None;
        let mut severity = None;
        let mut message = None;
        let mut fix = None;
        for line in text.lines() {
            let Some(rest) = line.trim().strip_prefix(';') else {
                break;
            };
            let Some((key, value)) = rest.split_once(':') else {
                continue;
            };
            let value = value.trim().to_string();
            match key.trim() {
                "id" => id = Some(value),
                "severity" => {
                    severity = Some(match value.as_str() {
                        "error" => Severity::Error,
                        "warning" => Severity::Warning,
                        other => bail!("{path}: severity {other:?} is unknown; fix: use error or warning"),
                    })
                }
                "message" => message = Some(value),
                "fix" => fix = Some(value),
                _ => {}
            }
        }
        let need = |v: Option<String>, field: &str| {
            v.ok_or_else(|| anyhow!("{path}: header lacks `; {field}: ...`; fix: add it above the query"))
        };
        // Whether the query compiles is known once the set is built (`RuleSet::from_sources`);
        // the capture is looked for in the text outside comments.
        let captures_violation = text
            .lines()
            .map(|l| l.split(';').next().unwrap_or(""))
            .any(|l| l.contains("@violation"));
        if !captures_violation {
            bail!("{path}: query has no @violation capture; fix: capture the reported node as @violation");
        }
        Ok(Self {
            id: need(id, "id")?,
            severity: severity.ok_or_else(|| anyhow!("{path}: header lacks `; severity: error|warning`"))?,
            message: need(message, "message")?,
            fix: need(fix, "fix")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::Checker;
    use crate::candidate::CandidateKind;

    /// Each rule has a snippet it must reject and one it must accept; the rejected diagnostic
    /// is snapshotted.
    const FIXTURES: &[(&str, &str, &str)] = &[
        (
            "forbidden-import",
            "import os\ndef forward(task):\n    return os.name\n",
            "import re\ndef forward(task):\n    return re.sub('a', 'b', 'a')\n",
        ),
        (
            "forbidden-import",
            "from subprocess import run\ndef forward(task):\n    return ''\n",
            "from collections import Counter\ndef forward(task):\n    return ''\n",
        ),
        (
            "forbidden-import",
            "import os.path as p\ndef forward(task):\n    return ''\n",
            "import math as m\ndef forward(task):\n    return ''\n",
        ),
        (
            "forbidden-builtin",
            "def forward(task):\n    return eval(task['question'])\n",
            "def forward(task):\n    return str(len(task['question']))\n",
        ),
        (
            "forbidden-builtin",
            "def forward(task):\n    return open('/etc/passwd').read()\n",
            "def forward(task):\n    return task['question'].upper()\n",
        ),
        (
            "dunder-escape",
            "def forward(task):\n    return str(().__class__.__bases__[0].__subclasses__())\n",
            "def forward(task):\n    return str(type(task))\n",
        ),
        (
            "llm-not-called-directly",
            "from metaforge import llm\ndef forward(task):\n    f = llm\n    return f('x')\n",
            "from metaforge import llm\ndef forward(task):\n    return llm('x')\n",
        ),
        (
            "llm-not-called-directly",
            "from metaforge import llm\ndef forward(task):\n    return list(map(llm, ['a']))[0]\n",
            "from metaforge import llm\ndef forward(task):\n    return llm(task['question'])\n",
        ),
        (
            "mutable-global",
            "N = 0\ndef forward(task):\n    global N\n    N += 1\n    return str(N)\n",
            "N = 0\ndef forward(task):\n    return str(N + 1)\n",
        ),
    ];

    #[test]
    fn every_rule_has_fixtures_and_they_hold() {
        let checker = Checker::embedded().unwrap();
        for rule in checker.rules().iter() {
            assert!(
                FIXTURES.iter().any(|f| f.0 == rule.id),
                "rule {} has no fixture",
                rule.id
            );
        }
        let mut snapshot = String::new();
        for (id, rejected, accepted) in FIXTURES {
            let bad = checker.check("bad.py", rejected, CandidateKind::Agent);
            let hits: Vec<_> = bad.diagnostics.iter().filter(|d| d.rule == *id).collect();
            assert!(!hits.is_empty(), "rule {id} missed:\n{rejected}");
            snapshot.push_str(&format!("{}\n", hits[0]));
            let good = checker.check("good.py", accepted, CandidateKind::Agent);
            assert!(
                good.diagnostics.iter().all(|d| d.rule != *id),
                "rule {id} false positive:\n{accepted}\n{}",
                good.render()
            );
        }
        insta::assert_snapshot!(snapshot);
    }

    #[test]
    fn a_rule_that_does_not_compile_is_named() {
        let good = "; id: a\n; severity: error\n; message: m\n; fix: f\n(call) @violation\n";
        let bad = "; id: b\n; severity: error\n; message: m\n; fix: f\n(call (nonsense_node)) @violation\n";
        let err = super::RuleSet::from_sources([
            ("grammars/a.scm".to_string(), good.to_string()),
            ("grammars/b.scm".to_string(), bad.to_string()),
        ])
        .err()
        .unwrap();
        let text = format!("{err:#}");
        assert!(
            text.contains("grammars/b.scm") && !text.contains("grammars/a.scm"),
            "{text}"
        );
        // A capture named only in a comment does not count.
        let uncaptured = "; id: c\n; severity: error\n; message: m\n; fix: f\n(call) ; @violation\n";
        let err = super::Rule::parse("grammars/c.scm", uncaptured)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("grammars/c.scm") && err.contains("@violation"), "{err}");
    }

    #[test]
    fn rule_without_header_is_refused_with_the_fix() {
        let err = super::Rule::parse("grammars/x.scm", "(call) @violation")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("grammars/x.scm") && err.contains("fix:"), "{err}");
    }
}
