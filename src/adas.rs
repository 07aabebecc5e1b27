//! ADAS interop: reading an ADAS "Meta Agent Search" archive so its agents seed a metaforge run.
//!
//! ADAS keeps its archive as one JSON list of `{thought, name, code, generation, fitness}`,
//! `generation` being `"initial"` or a number and `fitness` only a display string
//! ("95% Bootstrap Confidence Interval: (a%, b%), Median: c%"). We parse those strings into
//! numbers, keep them with the run (an `adas_import` event), and re-evaluate every program on
//! this run's own validation split: ADAS's numbers come from another model and split, so
//! they inform but never rank. The programs keep ADAS's `forward(self, taskInfo)` form;
//! `runtime/metaforge/adas.py` runs them unchanged.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// ADAS's fitness string as numbers (fractions, not percent).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Fitness {
    pub median: f64,
    pub ci_lo: f64,
    pub ci_hi: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AdasAgent {
    pub name: String,
    pub thought: String,
    pub code: String,
    /// None for ADAS's `"initial"` seeds.
    pub generation: Option<u32>,
    pub fitness: Option<Fitness>,
    pub test_fitness: Option<Fitness>,
}

#[derive(Deserialize)]
struct RawEntry {
    /// Text in most archives; some entries hold a map of sections (ADAS's drop archive),
    /// kept as its JSON text.
    #[serde(default)]
    thought: serde_json::Value,
    name: Option<String>,
    code: Option<String>,
    #[serde(default)]
    generation: serde_json::Value,
    #[serde(default)]
    fitness: Option<String>,
    #[serde(default)]
    test_fitness: Option<String>,
}

/// Parses "95% Bootstrap Confidence Interval: (12.5%, 30.0%), Median: 21.9%".
pub fn parse_fitness(text: &str) -> Option<Fitness> {
    let re =
        regex::Regex::new(r"\(\s*(-?[\d.]+)%\s*,\s*(-?[\d.]+)%\s*\).*?Median:\s*(-?[\d.]+)%").expect("static regex");
    let c = re.captures(text)?;
    let num = |i: usize| c[i].parse::<f64>().ok().map(|v| v / 100.0);
    Some(Fitness {
        ci_lo: num(1)?,
        ci_hi: num(2)?,
        median: num(3)?,
    })
}

/// Reads an ADAS archive file; errors name the entry and the fix.
pub fn read_archive(path: &Path) -> Result<Vec<AdasAgent>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read ADAS archive {}", path.display()))?;
    let raw: Vec<RawEntry> = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not an ADAS archive; fix: pass the `*_run_archive.json` file, a JSON list of {{thought, name, code, generation, fitness}}",
            path.display()
        )
    })?;
    if raw.is_empty() {
        bail!("{} holds no agents; fix: pass a non-empty ADAS archive", path.display());
    }
    raw.into_iter()
        .enumerate()
        .map(|(i, e)| {
            let (Some(name), Some(code)) = (e.name, e.code) else {
                bail!("{} entry {i}: `name` and `code` are required; fix: remove the entry or add them", path.display());
            };
            let generation = match &e.generation {
                serde_json::Value::Number(n) => n.as_u64().map(|g| g as u32),
                serde_json::Value::String(s) if s == "initial" => None,
                serde_json::Value::String(s) => s.parse().ok(),
                _ => None,
            };
            let fitness = match &e.fitness {
                Some(f) => Some(parse_fitness(f).with_context(|| {
                    format!("{} entry {i} ({name}): fitness {f:?} is not ADAS's format; fix: \"95% Bootstrap Confidence Interval: (a%, b%), Median: c%\"", path.display())
                })?),
                None => None,
            };
            Ok(AdasAgent {
                test_fitness: e.test_fitness.as_deref().and_then(parse_fitness),
                name,
                thought: match e.thought {
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Null => String::new(),
                    other => other.to_string(),
                },
                code,
                generation,
                fitness,
            })
        })
        .collect()
}

impl AdasAgent {
    /// The program as a metaforge seed: ADAS's code under a docstring header carrying its
    /// name and thought (how seeds name themselves; the code itself is unchanged).
    pub fn seed_code(&self) -> String {
        let clean = |s: &str| s.replace("\"\"\"", "'''").replace('\n', " ");
        let origin = match (self.generation, self.fitness) {
            (g, Some(f)) => format!(
                " (ADAS {}, fitness median {:.1}%)",
                g.map_or("initial".to_string(), |g| format!("generation {g}")),
                f.median * 100.0
            ),
            (g, None) => format!(
                " (ADAS {})",
                g.map_or("initial".to_string(), |g| format!("generation {g}"))
            ),
        };
        format!(
            "\"\"\"\nname: {}\nidea: {}{origin}\n\"\"\"\n{}",
            clean(&self.name),
            clean(&self.thought),
            self.code.trim_start()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fitness_strings_become_numbers() {
        let f = parse_fitness("95% Bootstrap Confidence Interval: (12.5%, 30.0%), Median: 21.9%").unwrap();
        assert!((f.ci_lo - 0.125).abs() < 1e-9 && (f.ci_hi - 0.30).abs() < 1e-9 && (f.median - 0.219).abs() < 1e-9);
        assert_eq!(parse_fitness("great"), None);
    }

    #[test]
    fn seed_code_keeps_the_program_and_names_it() {
        let a = AdasAgent {
            name: "Chain \"\"\" of Thought".into(),
            thought: "Think\nstep by step".into(),
            code: "def forward(self, taskInfo):\n    return 'x'\n".into(),
            generation: Some(3),
            fitness: parse_fitness("95% Bootstrap Confidence Interval: (1.0%, 3.0%), Median: 2.0%"),
            test_fitness: None,
        };
        let code = a.seed_code();
        let (name, idea) = crate::candidate::docstring_header(&code);
        assert_eq!(name.as_deref(), Some("Chain ''' of Thought"));
        assert!(idea.unwrap().contains("ADAS generation 3, fitness median 2.0%"));
        assert!(code.ends_with("def forward(self, taskInfo):\n    return 'x'\n"));
    }
}
