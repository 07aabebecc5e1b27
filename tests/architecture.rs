//! The layering of `src/`: every `crate::` path must point to a module in a lower layer of
//! the table in ARCHITECTURE.md ("Layers"), and the modules' imports must form no cycle.
//!
//! Why read the table from ARCHITECTURE.md: the document and the test cannot disagree, and a
//! newcomer changes the layering in the one place that explains it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use petgraph::algo::tarjan_scc;
use petgraph::graphmap::DiGraphMap;

const START: &str = "<!-- layers:";
const END: &str = "<!-- /layers -->";

/// Module name → layer, from the table between the markers.
fn layer_table(doc: &str) -> Result<BTreeMap<String, u32>, String> {
    let start = doc.find(START).ok_or("ARCHITECTURE.md has no `<!-- layers:` marker")?;
    let end = doc[start..]
        .find(END)
        .ok_or("ARCHITECTURE.md's layer table has no end marker")?
        + start;
    let mut table = BTreeMap::new();
    for line in doc[start..end].lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let Ok(layer) = cells[1].parse::<u32>() else { continue }; // header and rule rows
        for module in cells[2].split(',').map(|m| m.trim().trim_matches('`')) {
            if let Some(before) = table.insert(module.to_string(), layer) {
                return Err(format!("`{module}` is in layers {before} and {layer}; give it one row"));
            }
        }
    }
    if table.is_empty() {
        return Err("the layer table is empty".into());
    }
    Ok(table)
}

/// Every `.rs` file of `src/` but the binary's `main.rs` and the crate root, as (path, text).
fn sources(src: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(src).unwrap().to_path_buf();
                if rel != Path::new("main.rs") && rel != Path::new("lib.rs") {
                    out.push((rel, std::fs::read_to_string(&path).unwrap()));
                }
            }
        }
    }
    out.sort();
    out
}

/// The top-level module a file of `src/` belongs to.
fn module_of(rel: &Path) -> String {
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The top-level modules one line names through `crate::`: plain paths and the names
/// inside `use crate::{a, b::c}` groups. Comment lines are prose, not imports.
fn targets(line: &str) -> Vec<String> {
    let code = line.trim_start();
    if code.starts_with("//") {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        if at > 0 && code[..at].ends_with('$') {
            continue;
        }
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or("");
            for item in inner.split(',') {
                let name: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out
}

/// What breaks the table: unknown modules, imports of an equal or higher layer, cycles.
fn violations(files: &[(PathBuf, String)], table: &BTreeMap<String, u32>) -> Vec<String> {
    let mut out = Vec::new();
    let mut graph = DiGraphMap::<&str, ()>::new();
    let mut unlisted = BTreeSet::new();
    for (rel, text) in files {
        let from = module_of(rel);
        let Some((from_name, &from_layer)) = table.get_key_value(&from) else {
            unlisted.insert(from);
            continue;
        };
        for (n, line) in text.lines().enumerate() {
            for to in targets(line) {
                if to == from {
                    continue;
                }
                let Some((to_name, &to_layer)) = table.get_key_value(&to) else {
                    unlisted.insert(to);
                    continue;
                };
                graph.add_edge(from_name.as_str(), to_name.as_str(), ());
                if to_layer >= from_layer {
                    out.push(format!(
                        "src/{}:{}: `{from}` (layer {from_layer}) uses `{to}` (layer {to_layer}); a module may use only lower layers. Fix: move what it needs down, or invert the dependency with a trait (ARCHITECTURE.md, \"Layers\")",
                        rel.display(),
                        n + 1
                    ));
                }
            }
        }
    }
    for m in unlisted {
        out.push(format!(
            "module `{m}` is not in ARCHITECTURE.md's layer table; fix: give it a row"
        ));
    }
    for scc in tarjan_scc(&graph) {
        if scc.len() > 1 {
            let mut names: Vec<&str> = scc;
            names.sort();
            out.push(format!("import cycle between {}", names.join(", ")));
        }
    }
    out
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn real() -> (Vec<(PathBuf, String)>, BTreeMap<String, u32>) {
    let doc = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    (sources(&root().join("src")), layer_table(&doc).unwrap())
}

#[test]
fn every_import_points_to_a_lower_layer() {
    let (files, table) = real();
    assert!(files.len() > 50, "found only {} source files", files.len());
    let found = violations(&files, &table);
    assert!(found.is_empty(), "layering broken:\n{}", found.join("\n"));
}

#[test]
fn every_module_of_src_has_a_layer_and_every_layer_a_module_of_src() {
    let (files, table) = real();
    let modules: BTreeSet<String> = files.iter().map(|(rel, _)| module_of(rel)).collect();
    let listed: BTreeSet<String> = table.keys().cloned().collect();
    assert_eq!(modules, listed, "ARCHITECTURE.md's layer table and src/ disagree");
}

/// The check itself: an archive that imports the evaluator is caught, at its line.
#[test]
fn an_archive_importing_evaluate_is_caught() {
    let (mut files, table) = real();
    let archive = files
        .iter_mut()
        .find(|(rel, _)| rel == Path::new("archive/mod.rs"))
        .unwrap();
    archive.1.push_str("\nuse crate::evaluate::Evaluator;\n");
    let line = archive.1.lines().count();
    let found = violations(&files, &table);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert!(
        found[0].starts_with(&format!(
            "src/archive/mod.rs:{line}: `archive` (layer 4) uses `evaluate` (layer 5)"
        )),
        "{}",
        found[0]
    );
}

#[test]
fn grouped_imports_comments_and_macros_are_read_as_they_mean() {
    assert_eq!(
        targets("use crate::{archive::Archive, llm, types::Usage};"),
        ["archive", "llm", "types"]
    );
    assert_eq!(targets("    let x = crate::host::cache_root();"), ["host"]);
    assert!(targets("/// see `crate::search` for the loop").is_empty());
    assert!(targets("macro_rules! m { () => { $crate::x } }").is_empty());
}

#[test]
fn a_cycle_within_one_layer_is_reported() {
    let table: BTreeMap<String, u32> = [("a".into(), 1), ("b".into(), 1)].into();
    let files = vec![
        (PathBuf::from("a.rs"), "use crate::b::X;".to_string()),
        (PathBuf::from("b/mod.rs"), "fn f() { crate::a::g() }".to_string()),
    ];
    let found = violations(&files, &table);
    assert_eq!(found.len(), 3, "{found:#?}");
    assert_eq!(found[2], "import cycle between a, b");
}

#[test]
fn the_table_is_parsed_from_its_markers_only() {
    let doc = format!("intro `x`\n{START} -->\n| layer | modules |\n|---|---|\n| 0 | `t`, `h` | leaves |\n| 1 | `c` | |\n{END}\n| 9 | `z` |");
    let t = layer_table(&doc).unwrap();
    assert_eq!(t.len(), 3);
    assert_eq!((t["t"], t["h"], t["c"]), (0, 0, 1));
    let twice = format!("{START}\n| 0 | `a` |\n| 1 | `a` |\n{END}");
    assert!(layer_table(&twice).unwrap_err().contains("`a` is in layers 0 and 1"));
}
