//! Parsing a meta-model's reply without relying on JSON mode: a JSON object (bare or in a
//! ```json fence, code in a string), a ```python fence, or both. Failures say what was
//! expected, and the loop feeds that back once.

use regex::Regex;
use serde_json::Value;
use std::sync::OnceLock;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedReply {
    pub thought: String,
    pub name: String,
    pub code: String,
    /// Which path parsed it: `json`, `json+fence`, `fence`.
    pub via: &'static str,
}

pub fn parse_reply(text: &str) -> Result<ParsedReply, String> {
    let fence = python_fence(text);
    if let Some(v) = json_object(text) {
        let get = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let code = get("code").filter(|c| !c.trim().is_empty());
        let name = get("name").unwrap_or_else(|| "unnamed".into());
        let thought = get("thought").unwrap_or_default();
        match (code, &fence) {
            (Some(code), _) => {
                return Ok(ParsedReply {
                    thought,
                    name,
                    code: unfence(&code),
                    via: "json",
                })
            }
            (None, Some(code)) => {
                return Ok(ParsedReply {
                    thought,
                    name,
                    code: code.clone(),
                    via: "json+fence",
                })
            }
            (None, None) => return Err("the JSON object has no non-empty \"code\" string".into()),
        }
    }
    if let Some(code) = fence {
        let name = name_line(text).unwrap_or_else(|| "unnamed".into());
        let thought = text
            .split("```")
            .next()
            .unwrap_or("")
            .trim()
            .chars()
            .take(2000)
            .collect();
        return Ok(ParsedReply {
            thought,
            name,
            code,
            via: "fence",
        });
    }
    Err("the reply has neither a JSON object with a \"code\" key nor a ```python code block".into())
}

/// The first parseable JSON object: inside a ```json fence, or from the first `{` to the
/// matching last `}`.
fn json_object(text: &str) -> Option<Value> {
    static JSON_FENCE: OnceLock<Regex> = OnceLock::new();
    let re = JSON_FENCE.get_or_init(|| Regex::new(r"(?s)```(?:json|JSON)\s*\n(.*?)```").unwrap());
    let mut candidates: Vec<&str> = re
        .captures_iter(text)
        .filter_map(|c| c.get(1))
        .map(|m| m.as_str())
        .collect();
    if let (Some(a), Some(b)) = (text.find('{'), text.rfind('}')) {
        if a < b {
            candidates.push(&text[a..=b]);
        }
    }
    candidates
        .into_iter()
        .find_map(|c| serde_json::from_str::<Value>(c.trim()).ok().filter(Value::is_object))
}

fn python_fence(text: &str) -> Option<String> {
    static FENCE: OnceLock<Regex> = OnceLock::new();
    let re = FENCE.get_or_init(|| Regex::new(r"(?s)```(?:python|py)?[ \t]*\n(.*?)```").unwrap());
    re.captures_iter(text)
        .filter_map(|c| c.get(1))
        .map(|m| m.as_str().to_string())
        .find(|code| code.contains("def ") || code.contains("class "))
}

fn unfence(code: &str) -> String {
    python_fence(code).unwrap_or_else(|| code.to_string())
}

pub(crate) fn name_line(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let t = l.trim().trim_start_matches(['#', '*', ' ']);
        t.strip_prefix("name:")
            .or_else(|| t.strip_prefix("Name:"))
            .map(|v| v.trim().trim_matches('*').trim().to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_json() {
        let r = parse_reply(r#"{"thought": "t", "name": "A", "code": "def forward(task):\n    return '1'"}"#).unwrap();
        assert_eq!((r.name.as_str(), r.via), ("A", "json"));
        assert!(r.code.starts_with("def forward"));
    }

    #[test]
    fn json_in_fence_with_prose_around() {
        let r = parse_reply(
            "Sure!\n```json\n{\"name\": \"B\", \"code\": \"def forward(task):\\n    return 'x'\"}\n```\nDone.",
        )
        .unwrap();
        assert_eq!(r.name, "B");
    }

    #[test]
    fn python_fence_only() {
        let r = parse_reply("name: Voter\nIdea: vote.\n```python\ndef forward(task):\n    return '2'\n```").unwrap();
        assert_eq!((r.name.as_str(), r.via), ("Voter", "fence"));
    }

    #[test]
    fn json_without_code_but_fence() {
        let r =
            parse_reply("{\"name\": \"C\", \"thought\": \"x\"}\n```python\ndef forward(task):\n    return '3'\n```")
                .unwrap();
        assert_eq!(r.via, "json+fence");
    }

    #[test]
    fn not_json_is_a_clear_error() {
        let e = parse_reply("I think the agent should vote.").unwrap_err();
        insta::assert_snapshot!(e);
    }
}
