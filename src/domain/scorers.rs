//! Scorers: output text x gold answer -> score in [0, 1].

use anyhow::{bail, Result};
use regex::Regex;
use serde_json::Value;
use std::sync::OnceLock;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scorer {
    /// The number after the last `Answer:` (else the last number in the text) equals the
    /// gold number. GSM8K-style exact numeric match.
    Numeric,
    /// Trimmed, case-insensitive string equality with the gold (or any of a list of golds).
    Exact,
    /// DROP's F1: bag-of-words overlap after normalisation (case, punctuation, articles,
    /// numbers), spans aligned one to one, zero when the gold has a number the output lacks;
    /// the best over the gold's alternatives. Partial credit in [0, 1].
    F1,
    /// Multiple choice: the choice letter (A to H) the output gives (after `Answer:`, else
    /// the first one standing alone) equals the gold letter.
    Mc,
    /// Label tasks: the first of the domain's labels the output names (the output itself,
    /// else the first whole word that is a label, any case) equals the gold label. The same
    /// reading the model gateway gives a constrained reply (`types::pick_choice`).
    Label(std::sync::Arc<Vec<String>>),
    /// ARC grids: the last list of rows in the output (`[[0,1],[1,0]]`) equals the gold grid
    /// exactly.
    Grid,
    /// The user's Python `score(task, output)` (`domain.scorer = "score.py"`). It runs in a
    /// sandboxed worker of its own (`evaluate::scorer_code`), never in this process, so
    /// `score` below does not apply to it.
    Code(std::sync::Arc<ScorerCode>),
}

/// A scorer file: its name for messages and its source.
#[derive(Debug, PartialEq, Eq)]
pub struct ScorerCode {
    pub file: String,
    pub source: String,
}

impl Scorer {
    /// The built-in scorer `name`; `labels` are `domain.choices`, which `label` reads (an
    /// empty list is refused where the answer format is worked out, with its fix).
    pub fn parse(name: &str, labels: Option<&[String]>) -> Result<Self> {
        match name {
            "numeric" => Ok(Scorer::Numeric),
            "exact" => Ok(Scorer::Exact),
            "f1" => Ok(Scorer::F1),
            "mc" => Ok(Scorer::Mc),
            "grid" => Ok(Scorer::Grid),
            "label" => Ok(Scorer::Label(std::sync::Arc::new(labels.unwrap_or_default().to_vec()))),
            other => bail!("unknown scorer {other:?}; fix: use \"numeric\", \"exact\", \"f1\", \"mc\", \"label\", \"grid\" or a scorer file \"score.py\""),
        }
    }

    pub fn score(&self, output: &str, gold: &Value) -> f64 {
        match self {
            Scorer::Numeric => {
                let Some(got) = extract_number(output) else { return 0.0 };
                let want = match gold {
                    Value::Number(n) => n.as_f64(),
                    Value::String(s) => extract_number(s),
                    _ => None,
                };
                match want {
                    Some(w) if (w - got).abs() <= 1e-6 * w.abs().max(1.0) => 1.0,
                    _ => 0.0,
                }
            }
            Scorer::Exact => {
                let norm = |s: &str| s.trim().to_lowercase();
                let o = norm(output);
                let hit = match gold {
                    Value::Array(a) => a.iter().any(|g| g.as_str().map(norm).as_deref() == Some(o.as_str())),
                    Value::String(s) => norm(s) == o,
                    other => norm(&other.to_string()) == o,
                };
                f64::from(u8::from(hit))
            }
            Scorer::F1 => super::f1::drop_f1(output, gold),
            Scorer::Grid => f64::from(u8::from(last_grid(output).is_some_and(|g| &g == gold))),
            Scorer::Code(_) => unreachable!("scorer code runs in its own sandbox (evaluate::scorer_code)"),
            Scorer::Label(labels) => {
                let want = gold.as_str().map(|g| g.trim().to_lowercase()).unwrap_or_default();
                let got = crate::types::pick_choice(output, labels).map(str::to_lowercase);
                f64::from(u8::from(!want.is_empty() && got.as_deref() == Some(want.as_str())))
            }
            Scorer::Mc => {
                let want = gold.as_str().map(str::trim).unwrap_or_default().to_ascii_uppercase();
                f64::from(u8::from(
                    !want.is_empty() && choice_letter(output).as_deref() == Some(want.as_str()),
                ))
            }
        }
    }
}

/// The last grid written in `text` as a JSON list of rows of integers, as a JSON value.
pub fn last_grid(text: &str) -> Option<Value> {
    let mut end = text.len();
    while let Some(close) = text[..end].rfind("]]") {
        let mut start = close;
        while let Some(open) = text[..start].rfind("[[") {
            if let Ok(v) = serde_json::from_str::<Vec<Vec<i64>>>(&text[open..close + 2]) {
                return Some(serde_json::json!(v));
            }
            start = open;
        }
        end = close;
    }
    None
}

/// The choice letter of a free-text output: the first standing alone after the last
/// `Answer:`, else the first in the text (`(B)`, `B.`, `B)` and a bare `B` all count).
pub fn choice_letter(text: &str) -> Option<String> {
    static LETTER: OnceLock<Regex> = OnceLock::new();
    static ANSWER: OnceLock<Regex> = OnceLock::new();
    let letter = LETTER.get_or_init(|| Regex::new(r"(?:^|[^A-Za-z])\(?([A-H])(?:[).:,]|\s|$)").unwrap());
    let answer = ANSWER.get_or_init(|| Regex::new(r"(?i)answer\s*(?:is)?\s*[:=]?").unwrap());
    let scope = match answer.find_iter(text).last() {
        Some(m) if letter.is_match(&text[m.end()..]) => &text[m.end()..],
        _ => text,
    };
    letter.captures(scope).map(|c| c[1].to_string())
}

/// The answer number of a free-text output.
pub fn extract_number(text: &str) -> Option<f64> {
    static NUM: OnceLock<Regex> = OnceLock::new();
    static ANSWER: OnceLock<Regex> = OnceLock::new();
    let num = NUM.get_or_init(|| Regex::new(r"-?\$?\d[\d,]*(?:\.\d+)?").unwrap());
    let answer = ANSWER.get_or_init(|| Regex::new(r"(?i)answer\s*(?:is)?\s*[:=]?").unwrap());
    let scope = match answer.find_iter(text).last() {
        Some(m) if num.is_match(&text[m.end()..]) => &text[m.end()..],
        _ => text,
    };
    let pick = if scope.len() < text.len() {
        num.find_iter(scope).next()
    } else {
        num.find_iter(scope).last()
    };
    let raw = pick?.as_str().replace([',', '$'], "");
    raw.trim_end_matches('.').parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn grid_takes_the_last_list_of_rows_and_wants_it_exact() {
        let s = Scorer::Grid;
        let gold = json!([[0, 1], [1, 0]]);
        assert_eq!(s.score("I think [[1,1],[1,1]]; no: [[0,1],[1,0]]", &gold), 1.0);
        assert_eq!(
            s.score("[[0, 1], [1, 0]] then [[0,1]]", &gold),
            0.0,
            "the last grid counts"
        );
        assert_eq!(s.score("[[0,1],[1,0]] [not a grid]]", &gold), 1.0);
        assert_eq!(s.score("no grid", &gold), 0.0);
    }

    #[test]
    fn numeric_takes_the_answer_line_first() {
        let s = Scorer::Numeric;
        assert_eq!(s.score("3 + 4 = 7. Answer: 7", &json!("7")), 1.0);
        assert_eq!(s.score("Answer: 1,234 dollars, not 5", &json!("1234")), 1.0);
        assert_eq!(s.score("We get 12 then 18", &json!("18")), 1.0);
        assert_eq!(s.score("The answer is $18.", &json!(18)), 1.0);
        assert_eq!(s.score("no number", &json!("3")), 0.0);
        assert_eq!(s.score("Answer: 8", &json!("7")), 0.0);
        assert_eq!(s.score("-5", &json!("-5")), 1.0);
    }

    #[test]
    fn label_reads_the_first_label_named_as_a_whole_word() {
        let s = Scorer::Label(std::sync::Arc::new(vec!["tool".into(), "instrument".into()]));
        assert_eq!(s.score("Instrument.", &json!("instrument")), 1.0);
        assert_eq!(s.score("a musical instrument, not a tool", &json!("instrument")), 1.0);
        assert_eq!(s.score("a tool, not an instrument", &json!("instrument")), 0.0);
        assert_eq!(s.score("toolbox", &json!("tool")), 0.0, "not a whole word");
        assert_eq!(s.score("", &json!("tool")), 0.0);
    }

    #[test]
    fn mc_reads_the_choice_letter() {
        let s = Scorer::Mc;
        assert_eq!(s.score("B", &json!("B")), 1.0);
        assert_eq!(s.score("(C) because of heat", &json!("C")), 1.0);
        assert_eq!(s.score("I think A is wrong. Answer: D.", &json!("d")), 1.0);
        assert_eq!(s.score("A. Paris", &json!("B")), 0.0);
        assert_eq!(
            s.score("Because it is big", &json!("B")),
            0.0,
            "the B of a word is no choice"
        );
        assert_eq!(s.score("", &json!("A")), 0.0);
        assert_eq!(s.score("I think B", &json!("B")), 1.0, "the pronoun I is no choice");
    }

    #[test]
    fn exact_accepts_any_gold() {
        assert_eq!(Scorer::Exact.score(" Paris ", &json!(["paris", "PARIS, France"])), 1.0);
        assert_eq!(Scorer::Exact.score("Rome", &json!("paris")), 0.0);
    }
}
