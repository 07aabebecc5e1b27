//! SEARCH/REPLACE edits, applied exactly. A model that answers with edits instead of a whole
//! program spends fewer tokens and cannot silently drop the parts it did not mean to touch.
//!
//! Why exact matching only: OpenEvolve's fuzzy application is where its diffs go wrong. A
//! block that does not match is a clear error naming the block and its first line, fed back to
//! the model once.

/// One edit: replace the first (and only) occurrence of `search` with `replace`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    pub search: String,
    pub replace: String,
}

const SEARCH: &str = "<<<<<<< SEARCH";
const DIVIDER: &str = "=======";
const REPLACE: &str = ">>>>>>> REPLACE";

/// Reads every SEARCH/REPLACE block of a reply. Errors say what is malformed.
pub fn parse_edits(reply: &str) -> Result<Vec<Edit>, String> {
    let mut edits = Vec::new();
    let mut lines = reply.lines();
    while let Some(line) = lines.next() {
        if line.trim_end() != SEARCH {
            continue;
        }
        let n = edits.len() + 1;
        let search = lines_until(&mut lines, DIVIDER)
            .ok_or_else(|| format!("edit block {n}: `{DIVIDER}` missing after `{SEARCH}`"))?;
        let replace = lines_until(&mut lines, REPLACE)
            .ok_or_else(|| format!("edit block {n}: `{REPLACE}` missing after `{DIVIDER}`"))?;
        if search.iter().all(|l| l.trim().is_empty()) {
            return Err(format!("edit block {n}: the SEARCH part is empty"));
        }
        edits.push(Edit {
            search: search.join("\n"),
            replace: replace.join("\n"),
        });
    }
    if edits.is_empty() {
        return Err(format!(
            "no edit blocks found; write each edit as `{SEARCH}` / old lines / `{DIVIDER}` / new lines / `{REPLACE}`"
        ));
    }
    Ok(edits)
}

/// The lines before the next `marker` line (consumed), or None when the reply ends first.
fn lines_until<'a>(lines: &mut impl Iterator<Item = &'a str>, marker: &str) -> Option<Vec<&'a str>> {
    let mut out = Vec::new();
    for l in lines.by_ref() {
        if l.trim_end() == marker {
            return Some(out);
        }
        out.push(l);
    }
    None
}

/// Applies `edits` in order to `code`. Each SEARCH text must occur exactly once.
pub fn apply_edits(code: &str, edits: &[Edit]) -> Result<String, String> {
    let mut out = code.to_string();
    for (i, e) in edits.iter().enumerate() {
        let first = e.search.lines().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
        match out.matches(e.search.as_str()).count() {
            0 => {
                return Err(format!(
                    "edit block {}: its SEARCH text does not occur in the program (first line: `{first}`); copy the lines exactly, indentation included",
                    i + 1
                ))
            }
            1 => out = out.replacen(e.search.as_str(), &e.replace, 1),
            k => {
                return Err(format!(
                    "edit block {}: its SEARCH text occurs {k} times (first line: `{first}`); include more lines so it is unique",
                    i + 1
                ))
            }
        }
    }
    if out == code {
        return Err("the edits change nothing".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "def forward(task):\n    a = llm(task['question'])\n    return a\n";

    #[test]
    fn applies_blocks_in_order() {
        let reply = "Here:\n<<<<<<< SEARCH\n    a = llm(task['question'])\n=======\n    a = llm('Answer briefly: ' + task['question'])\n>>>>>>> REPLACE\n";
        let edits = parse_edits(reply).unwrap();
        let out = apply_edits(PARENT, &edits).unwrap();
        assert!(out.contains("Answer briefly"));
        assert!(out.ends_with("    return a\n"));
    }

    #[test]
    fn a_block_that_does_not_match_is_named() {
        let reply = "<<<<<<< SEARCH\n  a = llm(task)\n=======\nx\n>>>>>>> REPLACE";
        let err = apply_edits(PARENT, &parse_edits(reply).unwrap()).unwrap_err();
        assert_eq!(
            err,
            "edit block 1: its SEARCH text does not occur in the program (first line: `a = llm(task)`); copy the lines exactly, indentation included"
        );
    }

    #[test]
    fn ambiguous_and_malformed_blocks_are_errors() {
        let code = "x = 1\nx = 1\n";
        let e = parse_edits("<<<<<<< SEARCH\nx = 1\n=======\nx = 2\n>>>>>>> REPLACE").unwrap();
        assert!(apply_edits(code, &e).unwrap_err().contains("occurs 2 times"));
        assert!(parse_edits("<<<<<<< SEARCH\nx = 1\n").unwrap_err().contains("missing"));
        assert!(parse_edits("just prose")
            .unwrap_err()
            .starts_with("no edit blocks found"));
    }
}
