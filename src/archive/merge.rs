//! `metaforge merge A.db B.db -o C.db`: one archive holding both runs, united by content hash.
//!
//! Why content hashes make this safe: a candidate's id is sha256 of its normalised program,
//! so the same program found on two machines is one row, its lineage edges from both runs
//! are kept, and an evaluation is only comparable (and only merged) when both runs scored
//! on the same validation tasks with the same agent model — checked from the stored task
//! results, not from file paths.
//!
//! The output starts as a consistent copy of A (`VACUUM INTO`, safe while A is being written),
//! so it stays A's run: `resume` continues A's plan with B's candidates available as parents.
//! B's run row and proposals are kept (`runs.merged_at`, `merged_proposals`); B's events,
//! a progress log of B's own loop, are summarised by one `merged` event instead.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use rusqlite::{params, Connection};
use serde::Serialize;

use super::{open_connection, Archive};
use crate::types::BadInput;

#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct MergeSummary {
    pub candidates_added: u64,
    pub candidates_shared: u64,
    pub lineage_added: u64,
    pub evaluations_added: u64,
    /// Evaluations both archives held for one (candidate, split): A's is kept (one
    /// evaluation per candidate and split, whatever stage it reached).
    pub evaluations_shared: u64,
    /// Of those, how many had a different score in B (a sign of non-determinism).
    pub evaluations_differing: u64,
    pub task_results_added: u64,
    pub llm_calls_added: u64,
    pub proposals_kept: u64,
    pub runs_merged: u64,
}

/// What must agree for two archives' scores to be comparable.
#[derive(Debug, PartialEq)]
struct Identity {
    domain: String,
    agent_model: String,
    objectives: String,
    val_tasks: BTreeSet<String>,
}

fn identity(path: &Path) -> Result<Identity> {
    let archive = Archive::open_existing(path)?;
    // The keys that decide comparability, read from the stored text: the archive keeps a
    // run's config and never interprets the rest of it.
    let config: toml::Table = archive.config_text()?.parse().with_context(|| {
        format!(
            "{}: the stored config is not TOML; fix: the archive is damaged, use a backup",
            path.display()
        )
    })?;
    let key = |section: &str, sub: Option<&str>, name: &str| -> String {
        let mut v = config.get(section);
        if let Some(s) = sub {
            v = v.and_then(|t| t.get(s));
        }
        v.and_then(|t| t.get(name)).map(|x| x.to_string()).unwrap_or_default()
    };
    let mut stmt = archive.connection().prepare(
        "SELECT DISTINCT t.task_id FROM task_results t JOIN evaluations e ON e.id = t.evaluation_id WHERE e.split = 'val'",
    )?;
    let val_tasks = stmt
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<BTreeSet<String>>>()?;
    let show = |v: Option<&toml::Value>| v.map(|x| x.to_string()).unwrap_or_default();
    // Named agent models (`[models.agent.<name>]`) are compared as the whole set, by name.
    let agent_model = match config
        .get("models")
        .and_then(|m| m.get("agent"))
        .and_then(|a| a.as_table())
    {
        Some(t) if !t.is_empty() && t.values().all(|v| v.is_table()) => t
            .iter()
            .map(|(name, m)| format!("{name}: {} {}", show(m.get("backend")), show(m.get("model"))))
            .collect::<Vec<_>>()
            .join(", "),
        _ => format!(
            "{} {}",
            key("models", Some("agent"), "backend"),
            key("models", Some("agent"), "model")
        ),
    };
    Ok(Identity {
        domain: key("domain", None, "name"),
        agent_model,
        objectives: key("search", None, "objectives"),
        val_tasks,
    })
}

/// The differences that make B's scores incomparable with A's, in words.
fn incompatibilities(a: &Identity, b: &Identity) -> Vec<String> {
    let mut out = Vec::new();
    if a.domain != b.domain {
        out.push(format!("domain: {} vs {}", a.domain, b.domain));
    }
    if a.agent_model != b.agent_model {
        out.push(format!("agent model: {} vs {}", a.agent_model, b.agent_model));
    }
    if a.objectives != b.objectives {
        out.push(format!("objectives: {} vs {}", a.objectives, b.objectives));
    }
    if !a.val_tasks.is_empty() && !b.val_tasks.is_empty() && a.val_tasks != b.val_tasks {
        let shared = a.val_tasks.intersection(&b.val_tasks).count();
        out.push(format!(
            "validation tasks: {} vs {} tasks, {shared} in common (different split seeds or sizes; \
             give both runs the same `domain.split_seed`)",
            a.val_tasks.len(),
            b.val_tasks.len()
        ));
    }
    out
}

/// Writes `out` = A ∪ B. Refuses an existing `out` and incompatible archives unless `force`.
/// A and B are only read (an older schema is first brought up to date in place, which only
/// adds tables and columns).
pub fn merge(a: &Path, b: &Path, out: &Path, force: bool) -> Result<MergeSummary> {
    if out.exists() {
        return Err(BadInput::wrap(anyhow!(
            "{} already exists; fix: choose another -o file (merge never overwrites an archive)",
            out.display()
        )));
    }
    let (ia, ib) = (identity(a)?, identity(b)?);
    let problems = incompatibilities(&ia, &ib);
    if !problems.is_empty() && !force {
        return Err(BadInput::wrap(anyhow!(
            "{} and {} are not comparable: {}; fix: merge runs of the same experiment, or pass --force \
             to merge anyway (their scores are then ranked together as if comparable)",
            a.display(),
            b.display(),
            problems.join("; ")
        )));
    }
    {
        let source = Connection::open(a).with_context(|| format!("cannot open {}", a.display()))?;
        source
            .execute("VACUUM INTO ?1", [out.to_string_lossy()])
            .with_context(|| format!("cannot write {}", out.display()))?;
    }
    let result = (|| {
        let mut conn = open_connection(out)?;
        // B may be an older schema: bring it up to date in its own file first (the migration
        // only adds, so B's data is untouched).
        drop(open_connection(b)?);
        conn.execute("ATTACH DATABASE ?1 AS b", [b.to_string_lossy()])?;
        let summary = unite(&mut conn, &b.display().to_string(), &problems)?;
        conn.execute("DETACH DATABASE b", [])?;
        Ok(summary)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(out);
    }
    result
}

fn count(conn: &Connection, sql: &str) -> Result<u64> {
    Ok(conn.query_row(sql, [], |r| r.get::<_, i64>(0))? as u64)
}

fn unite(conn: &mut Connection, b_name: &str, problems: &[String]) -> Result<MergeSummary> {
    let tx = conn.transaction()?;
    let mut s = MergeSummary {
        candidates_shared: count(
            &tx,
            "SELECT count(*) FROM b.candidates WHERE id IN (SELECT id FROM main.candidates)",
        )?,
        ..Default::default()
    };
    s.candidates_added = tx.execute("INSERT OR IGNORE INTO main.candidates SELECT * FROM b.candidates", [])? as u64;
    s.lineage_added = tx.execute("INSERT OR IGNORE INTO main.lineage SELECT * FROM b.lineage", [])? as u64;
    s.llm_calls_added = tx.execute("INSERT OR IGNORE INTO main.llm_calls SELECT * FROM b.llm_calls", [])? as u64;

    s.evaluations_shared = count(
        &tx,
        "SELECT count(*) FROM b.evaluations be JOIN main.evaluations me
           ON me.candidate_id = be.candidate_id AND me.split = be.split",
    )?;
    s.evaluations_differing = count(
        &tx,
        "SELECT count(*) FROM b.evaluations be JOIN main.evaluations me
           ON me.candidate_id = be.candidate_id AND me.split = be.split
         WHERE me.mean != be.mean OR me.n != be.n OR me.stage != be.stage",
    )?;
    let new_evaluations: Vec<i64> = tx
        .prepare(
            "SELECT be.id FROM b.evaluations be WHERE NOT EXISTS (SELECT 1 FROM main.evaluations me
               WHERE me.candidate_id = be.candidate_id AND me.split = be.split)
             ORDER BY be.id",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for old_id in new_evaluations {
        tx.execute(
            "INSERT INTO main.evaluations(candidate_id, split, stage, n, mean, ci_lo, ci_hi, cost_usd, prompt_tokens,
                 completion_tokens, llm_calls, cached_calls, latency_ms, wall_ms, outcome, outcome_detail, step, created_at, guard)
             SELECT candidate_id, split, stage, n, mean, ci_lo, ci_hi, cost_usd, prompt_tokens,
                 completion_tokens, llm_calls, cached_calls, latency_ms, wall_ms, outcome, outcome_detail, step, created_at, guard
             FROM b.evaluations WHERE id = ?1",
            [old_id],
        )?;
        let new_id = tx.last_insert_rowid();
        s.task_results_added += tx.execute(
            "INSERT INTO main.task_results(evaluation_id, task_id, score, outcome, output, error, llm_calls, tokens, guard)
             SELECT ?1, task_id, score, outcome, output, error, llm_calls, tokens, guard
             FROM b.task_results WHERE evaluation_id = ?2",
            params![new_id, old_id],
        )? as u64;
        s.evaluations_added += 1;
    }

    // B's runs (its own, and any it had merged before) join as merged runs; their proposals
    // follow them under the new run ids.
    let b_runs: Vec<(i64, Option<String>)> = tx
        .prepare("SELECT id, merged_at FROM b.runs ORDER BY id")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (old_run, merged_at) in b_runs {
        tx.execute(
            "INSERT INTO main.runs(name, seed, config_toml, domain, created_at, finished_at, merged_at)
             SELECT name, seed, config_toml, domain, created_at, finished_at, coalesce(merged_at, datetime('now'))
             FROM b.runs WHERE id = ?1",
            [old_run],
        )?;
        let new_run = tx.last_insert_rowid();
        let from_proposals = if merged_at.is_none() {
            "SELECT ?1, step, attempt, generation, kind, parents, status, reason, candidate_id, prompt, reply, created_at, model
             FROM b.proposals"
        } else {
            "SELECT ?1, step, attempt, generation, kind, parents, status, reason, candidate_id, prompt, reply, created_at, model
             FROM b.merged_proposals WHERE run_id = ?2"
        };
        let sql = format!("INSERT INTO main.merged_proposals {from_proposals}");
        s.proposals_kept += if merged_at.is_none() {
            tx.execute(&sql, [new_run])?
        } else {
            tx.execute(&sql, [new_run, old_run])?
        } as u64;
        s.runs_merged += 1;
    }
    tx.execute(
        "INSERT INTO main.events(step, kind, detail, created_at) VALUES (NULL, 'merged', ?1, datetime('now'))",
        [serde_json::json!({ "from": b_name, "summary": &s, "forced_over": problems }).to_string()],
    )?;
    tx.commit()?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ident(domain: &str, tasks: &[&str]) -> Identity {
        Identity {
            domain: domain.into(),
            agent_model: "Local smollm2-135m".into(),
            objectives: "[Score, Cost]".into(),
            val_tasks: tasks.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn incompatibilities_name_each_difference() {
        assert!(incompatibilities(&ident("arith", &["1", "2"]), &ident("arith", &["1", "2"])).is_empty());
        let p = incompatibilities(&ident("arith", &["1", "2"]), &ident("gsm8k", &["2", "3", "4"]));
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].contains("arith vs gsm8k"));
        assert!(p[1].contains("2 vs 3 tasks, 1 in common"));
    }
}
