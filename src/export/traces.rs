//! `metaforge export-traces`: a run's history as JSON lines, one per proposal and one per
//! evaluation, in the shape fine-tuning sets and experiment trackers read (OpenEvolve's
//! `evolution_trace`): parent, prompt, reply, the diff from the parent, scores and cost.
//!
//! Why lines and not one document: a trace of a long run is large, and every consumer
//! (pandas, MLflow, a fine-tuning job) streams records.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::archive::Archive;
use crate::types::BadInput;

/// Writes the traces of the run in `archive` to `out` (which must not exist yet); returns
/// (proposal lines, evaluation lines).
pub fn export_traces(archive: &Archive, out: &Path) -> Result<(usize, usize)> {
    if out.exists() {
        return Err(BadInput::wrap(anyhow::anyhow!(
            "{} already exists; fix: choose another -o path or remove it (nothing is overwritten)",
            out.display()
        )));
    }
    let conn = archive.connection();
    let run: String = conn.query_row("SELECT name FROM runs ORDER BY id LIMIT 1", [], |r| r.get(0))?;
    let code: HashMap<String, (String, String)> = conn
        .prepare("SELECT id, name, code FROM candidates")?
        .query_map([], |r| Ok((r.get::<_, String>(0)?, (r.get(1)?, r.get(2)?))))?
        .collect::<rusqlite::Result<_>>()?;
    let val: HashMap<String, f64> = conn
        .prepare("SELECT candidate_id, mean FROM evaluations WHERE split = 'val' AND stage = 'full'")?
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;

    let tmp = out.with_extension("partial");
    let file = std::fs::File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    let mut w = std::io::BufWriter::new(file);
    let mut proposals = 0;
    let mut stmt = conn.prepare(
        "SELECT step, attempt, generation, kind, parents, status, reason, candidate_id, prompt, reply, created_at, model
         FROM proposals ORDER BY step, attempt",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let parents: Vec<String> = serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or_default();
        let child: Option<String> = r.get(7)?;
        let parent = parents.first();
        let diff = match (
            parent.and_then(|p| code.get(p)),
            child.as_ref().and_then(|c| code.get(c)),
        ) {
            (Some((_, before)), Some((_, after))) => Some(
                similar::TextDiff::from_lines(before, after)
                    .unified_diff()
                    .header("parent.py", "child.py")
                    .to_string(),
            ),
            _ => None,
        };
        let parent_score = parent.and_then(|p| val.get(p)).copied();
        let child_score = child.as_ref().and_then(|c| val.get(c)).copied();
        let line = json!({
            "type": "proposal",
            "run": run,
            "step": r.get::<_, i64>(0)?,
            "attempt": r.get::<_, i64>(1)?,
            "generation": r.get::<_, i64>(2)?,
            "kind": r.get::<_, String>(3)?,
            "parents": parents,
            "status": r.get::<_, String>(5)?,
            "reason": r.get::<_, String>(6)?,
            "candidate_id": child,
            "candidate_name": child.as_ref().and_then(|c| code.get(c)).map(|c| c.0.clone()),
            "prompt": r.get::<_, Option<String>>(8)?,
            "reply": r.get::<_, Option<String>>(9)?,
            "diff": diff,
            "parent_val_score": parent_score,
            "val_score": child_score,
            "improvement": parent_score.zip(child_score).map(|(p, c)| c - p),
            "created_at": r.get::<_, String>(10)?,
            "model": r.get::<_, Option<String>>(11)?,
        });
        writeln!(w, "{line}")?;
        proposals += 1;
    }
    let mut evaluations = 0;
    let mut stmt = conn.prepare(
        "SELECT e.candidate_id, c.name, e.split, e.stage, e.n, e.mean, e.ci_lo, e.ci_hi, e.cost_usd,
                e.prompt_tokens, e.completion_tokens, e.llm_calls, e.cached_calls, e.latency_ms, e.wall_ms,
                e.outcome, e.outcome_detail, e.step, e.created_at
         FROM evaluations e JOIN candidates c ON c.id = e.candidate_id ORDER BY e.id",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let line: Value = json!({
            "type": "evaluation",
            "run": run,
            "candidate_id": r.get::<_, String>(0)?,
            "candidate_name": r.get::<_, String>(1)?,
            "split": r.get::<_, String>(2)?,
            "stage": r.get::<_, String>(3)?,
            "n": r.get::<_, i64>(4)?,
            "score": r.get::<_, f64>(5)?,
            "ci_lo": r.get::<_, f64>(6)?,
            "ci_hi": r.get::<_, f64>(7)?,
            "cost_usd": r.get::<_, f64>(8)?,
            "prompt_tokens": r.get::<_, i64>(9)?,
            "completion_tokens": r.get::<_, i64>(10)?,
            "llm_calls": r.get::<_, i64>(11)?,
            "cached_calls": r.get::<_, i64>(12)?,
            "latency_ms": r.get::<_, f64>(13)?,
            "wall_ms": r.get::<_, f64>(14)?,
            "outcome": r.get::<_, String>(15)?,
            "outcome_detail": r.get::<_, String>(16)?,
            "step": r.get::<_, i64>(17)?,
            "created_at": r.get::<_, String>(18)?,
        });
        writeln!(w, "{line}")?;
        evaluations += 1;
    }
    w.flush()?;
    drop(w);
    // Renamed into place only when whole, so a reader never takes a cut file for a trace.
    std::fs::rename(&tmp, out).with_context(|| format!("cannot write {}", out.display()))?;
    Ok((proposals, evaluations))
}
