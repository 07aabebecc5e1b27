//! DROP's answer F1 (Dua et al., 2019), as its official evaluation computes it and as ADAS
//! scored its DROP agents: answers become bags of normalised tokens, one bag per span; the
//! predicted and gold bags are aligned one to one for the best total F1; a gold bag holding
//! numbers gives 0 to a predicted bag holding none of them; the score is the mean over the
//! aligned bags, and the best over the gold's alternatives.

use std::collections::BTreeSet;

use serde_json::Value;

/// F1 of `output` (one span) against `gold`: a string, a list of spans, or a list of
/// alternatives each a list of spans (DROP's `answers`).
pub fn drop_f1(output: &str, gold: &Value) -> f64 {
    let predicted = vec![output.to_string()];
    alternatives(gold)
        .iter()
        .map(|g| f1_of_spans(&predicted, g))
        .fold(0.0, f64::max)
}

fn alternatives(gold: &Value) -> Vec<Vec<String>> {
    let spans = |v: &Value| -> Vec<String> {
        match v {
            Value::Array(a) => a.iter().map(text).collect(),
            other => vec![text(other)],
        }
    };
    match gold {
        Value::Array(a) if a.iter().any(Value::is_array) => a.iter().map(spans).collect(),
        other => vec![spans(other)],
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn f1_of_spans(predicted: &[String], gold: &[String]) -> f64 {
    let p: Vec<BTreeSet<String>> = predicted.iter().map(|s| bag(s)).collect();
    let g: Vec<BTreeSet<String>> = gold.iter().map(|s| bag(s)).collect();
    if p.is_empty() || g.is_empty() {
        return 0.0;
    }
    let scores: Vec<Vec<f64>> = g
        .iter()
        .map(|gb| {
            p.iter()
                .map(|pb| if numbers_match(gb, pb) { bag_f1(pb, gb) } else { 0.0 })
                .collect()
        })
        .collect();
    best_alignment(&scores) / g.len().max(p.len()) as f64
}

/// The best one-to-one assignment's total (rows: gold bags, columns: predicted bags). The
/// bags are few (DROP has at most a handful of spans), so every assignment is tried.
fn best_alignment(scores: &[Vec<f64>]) -> f64 {
    fn go(scores: &[Vec<f64>], row: usize, used: &mut Vec<bool>) -> f64 {
        if row == scores.len() {
            return 0.0;
        }
        let mut best = go(scores, row + 1, used); // this gold bag left unmatched
        for col in 0..used.len() {
            if !used[col] {
                used[col] = true;
                best = best.max(scores[row][col] + go(scores, row + 1, used));
                used[col] = false;
            }
        }
        best
    }
    let cols = scores.first().map_or(0, Vec::len);
    go(scores, 0, &mut vec![false; cols])
}

fn bag_f1(predicted: &BTreeSet<String>, gold: &BTreeSet<String>) -> f64 {
    let common = predicted.intersection(gold).count() as f64;
    if common == 0.0 {
        return if predicted.is_empty() && gold.is_empty() {
            1.0
        } else {
            0.0
        };
    }
    let precision = common / predicted.len() as f64;
    let recall = common / gold.len() as f64;
    2.0 * precision * recall / (precision + recall)
}

fn is_number(t: &str) -> bool {
    t.parse::<f64>().is_ok()
}

fn numbers_match(gold: &BTreeSet<String>, predicted: &BTreeSet<String>) -> bool {
    let gold_numbers: Vec<&String> = gold.iter().filter(|t| is_number(t)).collect();
    gold_numbers.is_empty() || gold_numbers.iter().any(|n| predicted.contains(*n))
}

/// One span's normalised tokens: split on spaces and hyphens, lower-cased, punctuation
/// removed (except inside numbers), articles dropped, numbers written one way.
fn bag(span: &str) -> BTreeSet<String> {
    span.split([' ', '-', '\n', '\t'])
        .filter_map(|token| {
            let lower = token.to_lowercase();
            let cleaned = if is_number(&lower.replace(',', "")) {
                lower.replace(',', "")
            } else {
                lower.chars().filter(|c| !c.is_ascii_punctuation()).collect()
            };
            let cleaned = match cleaned.as_str() {
                "a" | "an" | "the" | "" => return None,
                _ => cleaned,
            };
            Some(match cleaned.parse::<f64>() {
                Ok(n) if n.is_finite() => format!("{n}"),
                _ => cleaned,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn f1_matches_drop_on_worked_examples() {
        assert_eq!(drop_f1("Swedish", &json!([["swedish"]])), 1.0);
        assert_eq!(drop_f1("the Swedish.", &json!([["swedish"]])), 1.0);
        // One of two tokens right: precision 1/2, recall 1 -> 2/3.
        assert!((drop_f1("swedish people", &json!([["swedish"]])) - 2.0 / 3.0).abs() < 1e-9);
        // A number in the gold must appear in the prediction.
        assert_eq!(drop_f1("about 1,200 people", &json!([["1200 people"]])), 0.8);
        assert_eq!(drop_f1("people", &json!([["1200 people"]])), 0.0);
        assert_eq!(drop_f1("3.0", &json!([["3"]])), 1.0);
        // The best alternative counts; a one-span answer to a two-span gold gets half.
        assert_eq!(drop_f1("Chicago", &json!([["Boston"], ["chicago"]])), 1.0);
        assert_eq!(drop_f1("Bears", &json!([["Bears", "Lions"]])), 0.5);
        assert_eq!(drop_f1("", &json!([["x"]])), 0.0);
        assert_eq!(drop_f1("42", &json!("42")), 1.0);
    }
}
