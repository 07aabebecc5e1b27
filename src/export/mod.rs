//! `metaforge export`: discovered agents as standalone Python files that run outside
//! metaforge against any OpenAI-compatible endpoint, with a README and `agents.json`.
//!
//! Why the sandbox's own API file is pasted in rather than re-implemented: an exported agent
//! must behave as it did when it was scored. `runtime/metaforge/__init__.py` (and `adas.py`
//! for ADAS-style agents) is copied verbatim; only the transport under `llm()` changes, from
//! the worker's pipe to the `openai` client (`templates/export/agent.py.j2`).

mod traces;

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::archive::{pareto_front, Archive, SplitScore};
use crate::propose::Templates;
use crate::types::{Split, Stage};

pub use traces::export_traces;

/// Which candidates to export.
#[derive(Debug, Clone)]
pub enum Pick {
    /// The Pareto front over the run's objectives.
    Front,
    /// The best `n` by validation score (fully evaluated, without a breach).
    Top(usize),
    /// Candidates by id prefix.
    Ids(Vec<String>),
}

#[derive(Debug, Clone, Serialize)]
pub struct ExportedAgent {
    pub id: String,
    pub name: String,
    pub file: String,
    pub module: String,
    pub operator: String,
    pub generation: u32,
    pub model: String,
    pub backend: String,
    pub val: Option<SplitScore>,
    pub test: Option<SplitScore>,
    pub val_text: String,
    pub test_text: String,
    pub tokens: u64,
    pub cost_usd: f64,
    /// Names from the oldest ancestor to this agent.
    pub lineage: Vec<String>,
    /// ADAS's `forward(self, taskInfo)` form.
    pub adas: bool,
}

fn score_text(s: &Option<SplitScore>) -> String {
    match s {
        Some(s) if s.outcome == "ok" && s.stage == Stage::Full => {
            format!("{:.3} [{:.3}, {:.3}] on {} tasks", s.mean, s.ci_lo, s.ci_hi, s.n)
        }
        Some(s) => format!(
            "{:.3} ({}, {} tasks)",
            s.mean,
            if s.outcome == "ok" {
                s.stage.as_str()
            } else {
                &s.outcome
            },
            s.n
        ),
        None => "not evaluated".into(),
    }
}

/// A Python module name from an agent's name: `agent_<words>_<id prefix>`.
fn module_name(name: &str, id: &str) -> String {
    let words: String = name
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let words: Vec<&str> = words.split('_').filter(|w| !w.is_empty()).collect();
    let mut stem = words.join("_");
    stem.truncate(40);
    format!("agent_{}_{}", stem.trim_end_matches('_'), &id[..8.min(id.len())])
}

/// The runtime's API file without its imports of what the template defines itself (the
/// transport, and the tools it inlines).
fn api_text(file: &str, dropped_imports: &[&str]) -> Result<String> {
    let text = crate::assets::text(&crate::assets::RUNTIME, file)
        .with_context(|| format!("runtime/{file} is missing from this build"))?;
    Ok(text
        .lines()
        .filter(|l| !dropped_imports.contains(&l.trim()))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// Writes the picked agents of `archive` into `out` (which must be empty or absent).
pub fn export(archive: &Archive, pick: &Pick, out: &Path) -> Result<Vec<ExportedAgent>> {
    if out.exists() && std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        return Err(crate::types::BadInput::wrap(anyhow::anyhow!(
            "{} is not empty; fix: export into a new or empty folder (nothing is overwritten)",
            out.display()
        )));
    }
    let exp = crate::config::Experiment::parse_stored(&archive.config_text()?, archive.path())?;
    let rows = archive.leaderboard()?;
    let lineage = archive.lineage()?;
    let ids: Vec<String> = match pick {
        Pick::Front => {
            let scored = archive.scored(Split::Val)?;
            pareto_front(&scored, &exp.search.objectives)
                .into_iter()
                .map(|i| scored[i].id.clone())
                .collect()
        }
        Pick::Top(n) => rows
            .iter()
            .filter(|r| {
                r.val
                    .as_ref()
                    .is_some_and(|v| v.outcome == "ok" && v.stage == Stage::Full)
            })
            .take(*n)
            .map(|r| r.id.clone())
            .collect(),
        Pick::Ids(prefixes) => prefixes
            .iter()
            .map(|p| lineage.find(p).map(|n| n.id.clone()).map_err(anyhow::Error::msg))
            .collect::<Result<_>>()?,
    };
    if ids.is_empty() {
        bail!("nothing to export: no candidate of this run was evaluated successfully; fix: run or resume the search first");
    }
    let adas_form = regex::Regex::new(r"(?m)^def\s+forward\s*\(\s*self\s*,").expect("static regex");
    let templates = Templates::embedded()?;
    let api = api_text(
        "metaforge/__init__.py",
        &[
            "from metaforge._rpc import ContractError, LLMError, call_llm",
            "from metaforge._rpc import current as _current",
            "from metaforge.tools import EXTRACTORS, calc, calc_in, extract",
            "from metaforge.tools import as_choice, option_texts, task_choices, task_text",
        ],
    )?;
    let tools_api = api_text("metaforge/tools.py", &[])?;
    let adas_api = api_text("metaforge/adas.py", &["from metaforge import llm"])?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut agents = Vec::new();
    for id in ids {
        let row = rows
            .iter()
            .find(|r| r.id == id)
            .context("picked candidate has no leaderboard row")?;
        let candidate = archive.candidate(&id)?.context("picked candidate vanished")?;
        if candidate.kind != crate::candidate::CandidateKind::Agent {
            bail!(
                "candidate {} is a {} design, not an agent; fix: export agents only",
                &id[..12],
                candidate.kind.as_str()
            );
        }
        // A guarded call's contract is enforced by the metaforge host; an exported file has
        // none, so the agent would not behave as it was scored.
        if !crate::guard::Manifest::of(&candidate.code).contracts.is_empty() {
            if matches!(pick, Pick::Ids(_)) {
                bail!(
                    "candidate {} ({}) makes guarded llm() calls, whose contracts only the metaforge host enforces; fix: run it with `metaforge eval`, or export an unguarded candidate",
                    &id[..12],
                    row.name
                );
            }
            eprintln!(
                "export: skipping {} ({}): its guarded llm() calls need the metaforge host",
                &id[..12],
                row.name
            );
            continue;
        }
        let module = module_name(&row.name, &id);
        let agent = ExportedAgent {
            file: format!("{module}.py"),
            module,
            id: id.clone(),
            name: row.name.clone(),
            operator: row.operator.clone(),
            generation: row.generation,
            model: exp.models.agent.primary().model.clone(),
            backend: format!("{:?}", exp.models.agent.primary().backend).to_lowercase(),
            val_text: score_text(&row.val),
            test_text: score_text(&row.test),
            tokens: row.val.as_ref().map_or(0, |v| v.tokens),
            cost_usd: row.val.as_ref().map_or(0.0, |v| v.cost_usd),
            val: row.val.clone(),
            test: row.test.clone(),
            lineage: lineage.ancestry(&id).iter().map(|n| n.name.clone()).collect(),
            adas: adas_form.is_match(&candidate.code),
        };
        let text = templates.render(
            "export/agent.py.j2",
            serde_json::json!({ "agent": &agent, "code": candidate.code.trim_end(), "run": exp.name,
                                "models": exp.models.agent.iter().map(|(n, m)| (n.to_string(), m.model.clone())).collect::<std::collections::BTreeMap<_, _>>(),
                                "api": api, "tools_api": tools_api, "adas_api": adas_api, "default_base_url": "http://127.0.0.1:8080/v1" }),
        )?;
        let path = out.join(&agent.file);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        agents.push(agent);
    }
    if agents.is_empty() {
        bail!(
            "nothing to export: every picked candidate makes guarded llm() calls; fix: pick unguarded candidates by id"
        );
    }
    let readme = templates.render(
        "export/README.md.j2",
        serde_json::json!({ "agents": &agents, "run": exp.name, "domain": exp.domain.name,
                            "model": exp.models.agent.primary().model, "backend": agents[0].backend }),
    )?;
    std::fs::write(out.join("README.md"), readme)?;
    std::fs::write(out.join("agents.json"), serde_json::to_string_pretty(&agents)? + "\n")?;
    Ok(agents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_are_python_identifiers() {
        assert_eq!(
            module_name("Direct Answer ⊕ Chain-of-Thought", "abcdef0123"),
            "agent_direct_answer_chain_of_thought_abcdef01"
        );
        assert_eq!(module_name("!!!", "12345678ff"), "agent__12345678");
    }
}
