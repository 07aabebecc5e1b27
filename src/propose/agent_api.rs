//! The agent API as the meta-model reads it: every public name of `runtime/metaforge` (its
//! `__all__`) with its signature and docstring, read from the runtime's own source with
//! tree-sitter. Why not written into the prompts: a hand-kept copy drifted (it lacked `stop`,
//! `calc` and `extract` while candidates could call them); read from the source, the prompt
//! names what a candidate can call, as the runtime documents it, and nothing else.

use std::collections::HashMap;

use anyhow::{Context, Result};
use serde::Serialize;
use tree_sitter::{Node, Parser};

/// One public name of the agent API.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ApiEntry {
    pub name: String,
    /// `llm(prompt_or_messages, *, temperature=None, ...)`, `class LLMError(RuntimeError)`,
    /// or the bare name of a constant.
    pub signature: String,
    /// The docstring (a constant: the comment above it), dedented.
    pub doc: String,
}

/// The files the package's public names are defined in, the package first.
const SOURCES: &[&str] = &["metaforge/__init__.py", "metaforge/tools.py", "metaforge/_rpc.py"];

/// The agent API, in `__all__`'s order, from the embedded runtime.
pub fn agent_api() -> Result<Vec<ApiEntry>> {
    let text = |path: &str| {
        crate::assets::text(&crate::assets::RUNTIME, path).with_context(|| format!("runtime/{path} is not embedded"))
    };
    let sources: Vec<&str> = SOURCES.iter().map(|p| text(p)).collect::<Result<_>>()?;
    read_api(&sources)
}

/// The public names of the first source's `__all__`, each with its definition from the first
/// source that defines it.
pub fn read_api(sources: &[&str]) -> Result<Vec<ApiEntry>> {
    let mut parser = Parser::new();
    parser
        .set_language(&tree_sitter_python::LANGUAGE.into())
        .expect("the Python grammar loads");
    let mut names = Vec::new();
    let mut defined: HashMap<String, ApiEntry> = HashMap::new();
    for (i, src) in sources.iter().enumerate() {
        let tree = parser
            .parse(src, None)
            .context("tree-sitter could not parse the runtime")?;
        let root = tree.root_node();
        let mut cursor = root.walk();
        let top: Vec<Node> = root.named_children(&mut cursor).collect();
        for (at, node) in top.iter().enumerate() {
            if i == 0 {
                names.extend(all_names(*node, src));
            }
            if let Some(entry) = definition(*node, at.checked_sub(1).map(|p| top[p]), src) {
                defined.entry(entry.name.clone()).or_insert(entry);
            }
        }
    }
    names
        .into_iter()
        .map(|name| {
            defined
                .remove(&name)
                .with_context(|| format!("runtime/metaforge exports {name} but no runtime file defines it"))
        })
        .collect()
}

fn text<'s>(node: Node, src: &'s str) -> &'s str {
    &src[node.byte_range()]
}

/// The strings of `__all__ = [...]` or `__all__ += [...]`.
fn all_names(node: Node, src: &str) -> Vec<String> {
    let Some(assign) = node.named_child(0).filter(|_| node.kind() == "expression_statement") else {
        return vec![];
    };
    if !matches!(assign.kind(), "assignment" | "augmented_assignment") {
        return vec![];
    }
    let (Some(left), Some(right)) = (assign.child_by_field_name("left"), assign.child_by_field_name("right")) else {
        return vec![];
    };
    if text(left, src) != "__all__" || right.kind() != "list" {
        return vec![];
    }
    let mut cursor = right.walk();
    right
        .named_children(&mut cursor)
        .filter(|n| n.kind() == "string")
        .map(|n| text(n, src).trim_matches(|c| c == '"' || c == '\'').to_string())
        .collect()
}

/// A top-level function, class or constant as an API entry; `before` is the node above it
/// (a constant's comment).
fn definition(node: Node, before: Option<Node>, src: &str) -> Option<ApiEntry> {
    let node = match node.kind() {
        "decorated_definition" => node.child_by_field_name("definition")?,
        _ => node,
    };
    let name = |n: Node| n.child_by_field_name("name").map(|x| text(x, src).to_string());
    match node.kind() {
        "function_definition" => {
            let name = name(node)?;
            let params = node.child_by_field_name("parameters")?;
            Some(ApiEntry {
                signature: format!("{name}{}", one_line(text(params, src))),
                doc: docstring(node, src),
                name,
            })
        }
        "class_definition" => {
            let name = name(node)?;
            let bases = node
                .child_by_field_name("superclasses")
                .map(|b| text(b, src).to_string())
                .unwrap_or_default();
            Some(ApiEntry {
                signature: format!("class {name}{bases}"),
                doc: docstring(node, src),
                name,
            })
        }
        "expression_statement" => {
            let assign = node.named_child(0).filter(|a| a.kind() == "assignment")?;
            let left = assign
                .child_by_field_name("left")
                .filter(|l| l.kind() == "identifier")?;
            let name = text(left, src).to_string();
            let doc = before
                .filter(|b| b.kind() == "comment" && b.end_position().row + 1 == node.start_position().row)
                .map(|b| text(b, src).trim_start_matches('#').trim().to_string())
                .unwrap_or_default();
            Some(ApiEntry {
                signature: name.clone(),
                doc,
                name,
            })
        }
        _ => None,
    }
}

/// The docstring of a function or class body, dedented as Python's `inspect.cleandoc` does.
fn docstring(node: Node, src: &str) -> String {
    let Some(first) = node.child_by_field_name("body").and_then(|b| b.named_child(0)) else {
        return String::new();
    };
    let Some(string) = first
        .named_child(0)
        .filter(|s| first.kind() == "expression_statement" && s.kind() == "string")
    else {
        return String::new();
    };
    let raw = text(string, src).trim_start_matches(['r', 'R', 'u', 'U']);
    let inner = ["\"\"\"", "'''", "\"", "'"]
        .iter()
        .find_map(|q| raw.strip_prefix(q).and_then(|r| r.strip_suffix(q)))
        .unwrap_or(raw);
    let mut lines = inner.lines();
    let head = lines.next().unwrap_or("").trim().to_string();
    let rest: Vec<&str> = lines.collect();
    let indent = rest
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let mut out = vec![head];
    out.extend(
        rest.iter()
            .map(|l| l.get(indent..).unwrap_or("").trim_end().to_string()),
    );
    out.join("\n").trim().to_string()
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ").replace("( ", "(")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_classes_and_constants_are_read_with_their_docs() {
        let package = "\"\"\"Module doc.\"\"\"\nfrom x import helper, LIMIT, Oops\n__all__ = [\"run\", \"helper\"]\n\n\ndef run(a, *,\n        b=None):\n    \"\"\"Runs a.\n\n    Longer, indented.\n    \"\"\"\n    return a\n\n\ndef _private():\n    pass\n\n__all__ += ['LIMIT', 'Oops']\n";
        let other = "# The most there is.\nLIMIT = 3\n\n\nclass Oops(RuntimeError):\n    \"\"\"Raised.\"\"\"\n\n\ndef helper(t):\n    '''Helps.'''\n";
        let api = read_api(&[package, other]).unwrap();
        let sig: Vec<(&str, &str, &str)> = api
            .iter()
            .map(|e| (e.name.as_str(), e.signature.as_str(), e.doc.as_str()))
            .collect();
        assert_eq!(
            sig,
            [
                ("run", "run(a, *, b=None)", "Runs a.\n\nLonger, indented."),
                ("helper", "helper(t)", "Helps."),
                ("LIMIT", "LIMIT", "The most there is."),
                ("Oops", "class Oops(RuntimeError)", "Raised."),
            ]
        );
        let e = read_api(&["__all__ = ['ghost']\n"]).unwrap_err().to_string();
        assert!(e.contains("ghost"), "{e}");
    }
}

#[cfg(test)]
mod prompt_tests {
    use super::*;

    /// Every public name of the runtime, as Python itself lists it (not this module's
    /// reading), is in `__all__` and in the API section of every proposer's prompt, with the
    /// signature the source has. A function added to the runtime without `__all__`, or a
    /// prompt that lost the section, fails here.
    #[test]
    fn every_public_name_of_the_runtime_is_in_the_prompts() {
        let runtime = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("runtime");
        // `call_llm` is the transport under `llm`, imported there, not a name offered to agents.
        let script = "import inspect, json, metaforge\nprint(json.dumps(sorted(n for n, v in vars(metaforge).items() if not n.startswith('_') and not inspect.ismodule(v) and n != 'call_llm')))";
        let out = std::process::Command::new("python3")
            .args(["-c", script])
            .env("PYTHONPATH", &runtime)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let public: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
        let api = agent_api().unwrap();
        let mut listed: Vec<String> = api.iter().map(|e| e.name.clone()).collect();
        listed.sort();
        assert_eq!(listed, public, "__all__ of runtime/metaforge against its public names");
        let templates = super::super::Templates::embedded().unwrap();
        let ctx = serde_json::json!({
            "domain": {"description": "short arithmetic word problems"},
            "example": "{\"question\": \"What is 2 plus 3?\"}",
            "context": [], "failures": [], "base_code": "def forward(task):\n    return '1'\n", "guards": null,
        });
        for kind in ["rewrite", "diff", "crossover"] {
            let prompt = templates.render_for(kind, "arith", "propose.j2", &ctx).unwrap();
            for entry in &api {
                assert!(
                    prompt.contains(&format!("`{}`", entry.signature)),
                    "{kind}: {} missing",
                    entry.signature
                );
            }
            assert!(prompt.contains("choices=None"), "{kind}: llm's choices");
            assert!(!prompt.contains("{{"), "{kind}: unrendered");
        }
    }
}
