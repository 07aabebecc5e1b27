//! The archive: one SQLite file holding the whole state of a run.
//!
//! Why SQLite with one transaction per loop step: resume must read persisted state only. A
//! step either committed (its proposals, candidates, evaluations and events all exist) or
//! did not (nothing of it exists), so `kill -9` at any moment loses at most the step in
//! flight and never duplicates a candidate (ids are content hashes, rows are unique).
//!
//! Architecture Invariant: `archive` knows nothing of the loop. It stores and answers
//! queries; deciding what to do next is `search`'s job.

pub mod bundle;
mod call_cache;
mod front;
mod lineage;
mod merge;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use sha2::Digest;

pub use bundle::BundleSummary;
pub use call_cache::{flush_open_call_caches, CallCache};
pub use front::{
    crowding_distance, pareto_front, pareto_front_pairwise, select_parent, Objective, ParentSelection, Scored,
    DEFAULT_OBJECTIVES,
};
pub use lineage::{Improvement, Lineage, LineageNode};
pub use merge::{merge, MergeSummary};

use crate::candidate::{Candidate, CandidateKind};
use crate::types::{BadInput, Evaluation, GuardSummary, Split, Stage, SCORER_FEEDBACK};

pub const SCHEMA_VERSION: i32 = 4;
const MIGRATIONS: &[&str] = &[
    include_str!("schema.sql"),
    include_str!("schema_v2.sql"),
    include_str!("schema_v3.sql"),
    include_str!("schema_v4.sql"),
];

/// Opens (creating if needed) a connection with WAL, a busy timeout and the current schema.
pub fn open_connection(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path).with_context(|| format!("cannot open archive {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    migrate(&conn).with_context(|| format!("archive {}", path.display()))?;
    Ok(conn)
}

/// A connection that only reads (no migration, no write), with the same busy timeout as
/// `open_connection`: for readers beside a run that is writing the file.
fn read_only_connection(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("cannot open archive {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    Ok(conn)
}

/// Brings a database to the current schema; refuses databases from a newer metaforge.
pub fn migrate(conn: &Connection) -> Result<()> {
    let version: i32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        bail!(
            "archive schema version {version} is newer than this metaforge ({SCHEMA_VERSION}); fix: upgrade metaforge"
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i32)?;
        tx.commit()?;
    }
    Ok(())
}

/// What one proposal attempt produced; every attempt becomes a `proposals` row.
#[derive(Debug, Clone)]
pub struct ProposalRecord {
    pub attempt: u32,
    pub kind: String,
    pub parents: Vec<String>,
    pub status: ProposalStatus,
    pub reason: String,
    pub candidate: Option<Candidate>,
    pub evaluation: Option<Evaluation>,
    pub prompt: Option<String>,
    pub reply: Option<String>,
    /// How its evaluation compared with its rival (`evaluate::racing`), stored as a `race`
    /// event of the step.
    pub race: Option<serde_json::Value>,
    /// The meta-model that wrote it (its `[models.meta]` name); None when none did.
    pub model: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProposalStatus {
    Evaluated,
    Duplicate,
    /// Passed check but too similar to an archived program (`proposers.novelty_threshold`).
    NotNovel,
    ParseError,
    CheckFailed,
    RuntimeError,
    /// Ran, but broke a hard rule of the experiment's agent contract: archived, infeasible.
    ContractBreach,
    LlmError,
}

impl ProposalStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ProposalStatus::Evaluated => "evaluated",
            ProposalStatus::Duplicate => "duplicate",
            ProposalStatus::NotNovel => "not_novel",
            ProposalStatus::ParseError => "parse_error",
            ProposalStatus::CheckFailed => "check_failed",
            ProposalStatus::RuntimeError => "runtime_error",
            ProposalStatus::ContractBreach => "contract_breach",
            ProposalStatus::LlmError => "llm_error",
        }
    }
}

/// SQL mapping a proposal kind (`op:wrap_vote`, `rewrite:debug1`, `diff`, ...) to its family.
const FAMILY: &str = "CASE WHEN kind LIKE 'op:%' THEN 'operators' WHEN kind LIKE 'rewrite%' THEN 'rewrite' \
     WHEN kind LIKE 'diff%' THEN 'diff' WHEN kind LIKE 'crossover%' THEN 'crossover' ELSE kind END";

/// Everything one loop step writes, committed in one transaction.
#[derive(Debug, Clone, Default)]
pub struct StepRecord {
    pub step: u64,
    pub generation: u32,
    pub proposals: Vec<ProposalRecord>,
    /// Extra evaluations of existing candidates (held-out test at the end of a run).
    pub evaluations: Vec<(String, Evaluation)>,
    pub events: Vec<(String, serde_json::Value)>,
}

/// What the archive keeps of a run's experiment: its config as text (the archive never
/// reads it) and the fields listings show.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub name: String,
    pub seed: u64,
    pub domain: String,
    pub config_toml: String,
}

/// A file the run's config names, stored in the archive.
#[derive(Debug, Clone)]
pub struct RunFile {
    /// The config key naming it (`domain.path`, `models.meta.script`, ...).
    pub key: String,
    pub file_name: String,
    pub content: Vec<u8>,
}

/// One task's stored result, as reports show it.
#[derive(Debug, Clone)]
pub struct TaskRow {
    pub task_id: String,
    pub score: f64,
    pub outcome: String,
    /// The error, or the scorer's feedback (`types::SCORER_FEEDBACK`).
    pub error: Option<String>,
}

/// One leaderboard line.
#[derive(Debug, Clone, Serialize)]
pub struct LeaderRow {
    pub id: String,
    pub name: String,
    pub operator: String,
    pub generation: u32,
    pub val: Option<SplitScore>,
    pub test: Option<SplitScore>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SplitScore {
    pub n: u32,
    pub mean: f64,
    pub ci_lo: f64,
    pub ci_hi: f64,
    pub cost_usd: f64,
    pub tokens: u64,
    pub outcome: String,
    /// `full`, or where staged evaluation stopped it (`cascade`, `stopped`).
    pub stage: Stage,
    /// What the contract guards saw (runs with `[guards]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guard: Option<GuardSummary>,
    /// Memory designs: mean reward of the scored episodes with the design's memory and
    /// without memory (the baseline); `mean` is their difference.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryRewards>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct MemoryRewards {
    pub with_memory: f64,
    pub without_memory: f64,
}

pub struct Archive {
    conn: Connection,
    path: PathBuf,
}

impl Archive {
    /// Creates a new archive for a run, with the files its config names stored inside.
    /// Refuses to overwrite an existing run.
    pub fn create(path: &Path, run: &NewRun, files: &[RunFile]) -> Result<Self> {
        if path.exists() {
            let existing = Self::open(path)?;
            if existing.run_count()? > 0 {
                return Err(BadInput::wrap(anyhow::anyhow!(
                    "{} already holds a run; fix: `metaforge resume {}` to continue it, or pass --db with a new file",
                    path.display(),
                    path.display()
                )));
            }
        }
        let mut archive = Self::open(path)?;
        let tx = archive.conn.transaction()?;
        tx.execute(
            "INSERT INTO runs(name, seed, config_toml, domain, created_at) VALUES (?1, ?2, ?3, ?4, datetime('now'))",
            params![run.name, run.seed as i64, run.config_toml, run.domain],
        )?;
        for f in files {
            tx.execute(
                "INSERT INTO run_files(key, file_name, sha256, content) VALUES (?1, ?2, ?3, ?4)",
                params![
                    f.key,
                    f.file_name,
                    hex::encode(sha2::Sha256::digest(&f.content)),
                    f.content
                ],
            )?;
        }
        tx.commit()?;
        Ok(archive)
    }

    /// The files stored with the run (see `create`).
    pub fn run_files(&self) -> Result<Vec<RunFile>> {
        let mut stmt = self
            .conn
            .prepare("SELECT key, file_name, content FROM run_files ORDER BY key")?;
        let rows = stmt.query_map([], |r| {
            Ok(RunFile {
                key: r.get(0)?,
                file_name: r.get(1)?,
                content: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    pub fn open(path: &Path) -> Result<Self> {
        let conn = open_connection(path)?;
        Ok(Self {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// The archive at `path` opened read-only (no migration, no write): for readers beside a
    /// run that is writing it (WAL lets both go on), such as the dashboard.
    pub fn open_read_only(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(BadInput::wrap(anyhow::anyhow!(
                "archive {} does not exist; fix: check the path",
                path.display()
            )));
        }
        let conn = read_only_connection(path)?;
        let a = Self {
            conn,
            path: path.to_path_buf(),
        };
        if a.run_count().unwrap_or(0) == 0 {
            return Err(BadInput::wrap(anyhow::anyhow!(
                "{} holds no run; fix: point at an archive a `metaforge run` wrote",
                path.display()
            )));
        }
        Ok(a)
    }

    /// A read-only view of the archive at `path` as it stood when step `upto` was the last
    /// committed: every row of a later step is hidden (TEMP views of the same names shadow
    /// the tables on this connection). Why: a pipelined search decides step N from the steps
    /// up to N − K alone, whatever else has committed since, so a run is the same however its
    /// calls were timed and wherever it was resumed. A negative `upto` hides every step.
    pub fn view_upto(path: &Path, upto: i64) -> Result<Self> {
        let conn = read_only_connection(path)?;
        conn.execute_batch(&format!(
            "CREATE TEMP VIEW candidates AS SELECT rowid AS rowid, * FROM main.candidates WHERE step <= {upto};
             CREATE TEMP VIEW evaluations AS SELECT * FROM main.evaluations WHERE step <= {upto};
             CREATE TEMP VIEW proposals AS SELECT * FROM main.proposals WHERE step <= {upto};
             CREATE TEMP VIEW events AS SELECT * FROM main.events WHERE step IS NULL OR step <= {upto};
             CREATE TEMP VIEW task_results AS SELECT t.* FROM main.task_results t
                 JOIN main.evaluations e ON e.id = t.evaluation_id WHERE e.step <= {upto};
             CREATE TEMP VIEW lineage AS SELECT l.* FROM main.lineage l
                 JOIN main.candidates c ON c.id = l.child WHERE c.step <= {upto};"
        ))?;
        Ok(Self {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Opens an archive that must already hold a run (for resume/status); a path that holds
    /// none is `BadInput`.
    pub fn open_existing(path: &Path) -> Result<Self> {
        Self::open_existing_unmarked(path).map_err(BadInput::wrap)
    }

    fn open_existing_unmarked(path: &Path) -> Result<Self> {
        if !path.exists() {
            bail!(
                "archive {} does not exist; fix: check the path, or start a run with `metaforge run EXP.toml`",
                path.display()
            );
        }
        let a = Self::open(path)?;
        if a.run_count()? == 0 {
            bail!(
                "{} holds no run; fix: start one with `metaforge run EXP.toml --db {}`",
                path.display(),
                path.display()
            );
        }
        Ok(a)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn run_count(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM runs WHERE merged_at IS NULL", [], |r| r.get(0))?)
    }

    /// The experiment's config as stored when the run began (resume never re-reads the
    /// TOML file; `config::Experiment::parse_stored` reads this text).
    pub fn config_text(&self) -> Result<String> {
        Ok(self.conn.query_row(
            "SELECT config_toml FROM runs WHERE merged_at IS NULL ORDER BY id LIMIT 1",
            [],
            |r| r.get(0),
        )?)
    }

    /// The next step to run: one past the last committed step.
    pub fn next_step(&self) -> Result<u64> {
        let s: Option<i64> = self
            .conn
            .query_row("SELECT max(step) FROM proposals", [], |r| r.get(0))?;
        let e: Option<i64> = self
            .conn
            .query_row("SELECT max(step) FROM events WHERE kind = 'step_done'", [], |r| {
                r.get(0)
            })?;
        Ok(s.max(e).map(|v| v as u64 + 1).unwrap_or(0))
    }

    pub fn has_candidate(&self, id: &str) -> Result<bool> {
        Ok(self
            .conn
            .query_row("SELECT count(*) FROM candidates WHERE id = ?1", [id], |r| {
                r.get::<_, i64>(0)
            })?
            > 0)
    }

    pub fn has_evaluation(&self, id: &str, split: Split) -> Result<bool> {
        Ok(self.conn.query_row(
            "SELECT count(*) FROM evaluations WHERE candidate_id = ?1 AND split = ?2",
            params![id, split],
            |r| r.get::<_, i64>(0),
        )? > 0)
    }

    pub fn candidate(&self, id: &str) -> Result<Option<Candidate>> {
        self.conn
            .query_row(
                "SELECT id, kind, name, thought, code, operator, generation, fingerprint FROM candidates WHERE id = ?1",
                [id],
                |r| {
                    Ok(Candidate {
                        id: r.get(0)?,
                        kind: CandidateKind::parse(&r.get::<_, String>(1)?).unwrap_or(CandidateKind::Agent),
                        name: r.get(2)?,
                        thought: r.get(3)?,
                        code: r.get(4)?,
                        operator: r.get(5)?,
                        generation: r.get::<_, i64>(6)? as u32,
                        parents: Vec::new(),
                        fingerprint: r.get(7)?,
                    })
                },
            )
            .optional()
            .map_err(Into::into)
    }

    /// Per-task scores of `id`'s evaluation on `split` (every stage), for paired comparisons.
    pub fn task_scores(&self, id: &str, split: Split) -> Result<Vec<(String, f64)>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT t.task_id, t.score FROM task_results t JOIN evaluations e ON e.id = t.evaluation_id
             WHERE e.candidate_id = ?1 AND e.split = ?2",
        )?;
        let rows = stmt.query_map(params![id, split], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// A candidate's per-task results on `split`, the failures first.
    pub fn task_results(&self, id: &str, split: Split) -> Result<Vec<TaskRow>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT t.task_id, t.score, t.outcome, t.error FROM task_results t JOIN evaluations e ON e.id = t.evaluation_id
             WHERE e.candidate_id = ?1 AND e.split = ?2 ORDER BY t.score, t.task_id",
        )?;
        let rows = stmt.query_map(params![id, split], |r| {
            Ok(TaskRow {
                task_id: r.get(0)?,
                score: r.get(1)?,
                outcome: r.get(2)?,
                error: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// (candidates, committed steps): what changes as a run goes on; the dashboard compares
    /// it to know when to redraw.
    pub fn progress(&self) -> Result<(u64, u64)> {
        Ok(self.conn.query_row(
            "SELECT (SELECT count(*) FROM candidates), (SELECT count(*) FROM events WHERE kind = 'step_done')",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )?)
    }

    /// What scorer code said of a candidate's validation tasks (`types::SCORER_FEEDBACK`),
    /// the lowest-scoring tasks first: the proposer's prompt shows it beside the program.
    pub fn scorer_feedback(&self, id: &str, limit: usize) -> Result<Vec<String>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT substr(t.error, ?3) FROM task_results t JOIN evaluations e ON e.id = t.evaluation_id
             WHERE e.candidate_id = ?1 AND e.split = 'val' AND t.error LIKE ?2 || '%'
             ORDER BY t.score, t.task_id LIMIT ?4",
        )?;
        let rows = stmt.query_map(
            params![id, SCORER_FEEDBACK, SCORER_FEEDBACK.len() as i64 + 1, limit as i64],
            |r| r.get(0),
        )?;
        Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
    }

    /// Among `ids`, the one with the best full, successful validation evaluation (ties: the
    /// first). A proposal races against this parent.
    pub fn best_of(&self, ids: &[String]) -> Result<Option<String>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT mean FROM evaluations WHERE candidate_id = ?1 AND split = 'val' AND stage = 'full' AND outcome = 'ok'",
        )?;
        let mut best: Option<(f64, &String)> = None;
        for id in ids {
            if let Some(m) = stmt.query_row([id], |r| r.get::<_, f64>(0)).optional()? {
                if best.is_none_or(|(b, _)| m > b) {
                    best = Some((m, id));
                }
            }
        }
        Ok(best.map(|(_, id)| id.clone()))
    }

    /// The seed with the best full, successful validation evaluation (ties: the earliest).
    pub fn best_seed(&self) -> Result<Option<String>> {
        Ok(self
            .conn
            .query_row(
                "SELECT c.id FROM candidates c JOIN evaluations e ON e.candidate_id = c.id
                 WHERE c.operator = 'seed' AND e.split = 'val' AND e.stage = 'full' AND e.outcome = 'ok'
                 ORDER BY e.mean DESC, c.step ASC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Every event of `kind` in order, as (step, detail).
    pub fn events(&self, kind: &str) -> Result<Vec<(Option<u64>, serde_json::Value)>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT step, detail FROM events WHERE kind = ?1 ORDER BY id")?;
        let rows = stmt.query_map([kind], |r| Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (step, detail) = row?;
            let detail = serde_json::from_str(&detail)
                .with_context(|| format!("event {kind:?} of step {step:?} is not JSON; the archive is damaged"))?;
            out.push((step.map(|s| s as u64), detail));
        }
        Ok(out)
    }

    /// The best full validation score among `ids` (a proposal's parents): the bar staged
    /// evaluation measures it against. None when no parent has one (seeds).
    pub fn best_val_score(&self, ids: &[String]) -> Result<Option<f64>> {
        let mut best: Option<f64> = None;
        let mut stmt = self.conn.prepare_cached(
            "SELECT mean FROM evaluations WHERE candidate_id = ?1 AND split = 'val' AND stage = 'full' AND outcome = 'ok'",
        )?;
        for id in ids {
            if let Some(m) = stmt.query_row([id], |r| r.get::<_, f64>(0)).optional()? {
                best = Some(best.map_or(m, |b: f64| b.max(m)));
            }
        }
        Ok(best)
    }

    /// Candidates evaluated on every task of `split` (not stopped by staged evaluation), for
    /// selection and reporting, in step order.
    ///
    /// Why candidates drive the join (`CROSS JOIN` fixes the order) and Rust sorts: left to
    /// itself SQLite walked `evaluations_by_split` in score order, looking each candidate up
    /// at random, then sorted every wide row in a temp B-tree, most of a large archive's
    /// resume. Walking candidates in table order (the order steps wrote them) and sorting
    /// the structs is several times faster (`cargo bench --bench archive_scale`).
    pub fn scored(&self, split: Split) -> Result<Vec<Scored>> {
        let mut stmt = self.conn.prepare(
            "SELECT c.id, c.name, c.generation, e.mean, e.ci_lo, e.ci_hi, e.cost_usd, e.prompt_tokens + e.completion_tokens,
                    (SELECT count(*) FROM lineage l WHERE l.parent = c.id), c.fingerprint, e.outcome, e.wall_ms, length(c.code), c.step,
                    e.guard
             FROM candidates c CROSS JOIN evaluations e ON e.candidate_id = c.id AND e.split = ?1 AND e.stage = 'full'",
        )?;
        let rows = stmt.query_map([split], |r| {
            let guard = guard_record(r.get(14)?, 14)?;
            let hard = guard.as_ref().map_or(0, |g| g.hard);
            Ok(Scored {
                id: r.get(0)?,
                name: r.get(1)?,
                generation: r.get::<_, i64>(2)? as u32,
                score: r.get(3)?,
                ci_lo: r.get(4)?,
                ci_hi: r.get(5)?,
                cost: r.get(6)?,
                tokens: r.get::<_, i64>(7)? as u64,
                children: r.get::<_, i64>(8)? as u32,
                fingerprint: r.get(9)?,
                ok: r.get::<_, String>(10)? == "ok" && hard == 0,
                fallback_rate: guard.as_ref().map_or(0.0, |g| g.fallback_rate()),
                soft_violations: guard.as_ref().map_or(0.0, |g| g.soft_rate()),
                latency_ms: r.get(11)?,
                code_bytes: r.get::<_, i64>(12)? as u64,
                step: r.get::<_, i64>(13)? as u64,
                instance_wins: 0,
            })
        })?;
        let mut scored = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        scored.sort_unstable_by(|a, b| (a.step, &a.id).cmp(&(b.step, &b.id)));
        Ok(scored)
    }

    /// Fills `instance_wins`: on how many validation tasks each candidate scores the best of
    /// all fully evaluated, feasible candidates (a task nobody solves counts for nobody).
    pub fn fill_instance_wins(&self, scored: &mut [Scored]) -> Result<()> {
        let mut stmt = self.conn.prepare(
            "WITH full AS (SELECT id, candidate_id FROM evaluations WHERE split = 'val' AND stage = 'full' AND outcome = 'ok'),
                  best AS (SELECT t.task_id, max(t.score) AS top FROM task_results t JOIN full f ON f.id = t.evaluation_id
                           GROUP BY t.task_id HAVING top > 0)
             SELECT f.candidate_id, count(*) FROM task_results t JOIN full f ON f.id = t.evaluation_id
             JOIN best b ON b.task_id = t.task_id AND t.score = b.top GROUP BY f.candidate_id",
        )?;
        let wins: std::collections::HashMap<String, u32> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u32)))?
            .collect::<rusqlite::Result<_>>()?;
        for s in scored {
            s.instance_wins = wins.get(&s.id).copied().unwrap_or(0);
        }
        Ok(())
    }

    /// Recent failed proposals with their reasons: fed back to the proposer.
    pub fn recent_failures(&self, limit: usize) -> Result<Vec<(String, String)>> {
        let mut stmt = self.conn.prepare(
            "SELECT status, reason FROM proposals WHERE status NOT IN ('evaluated', 'duplicate') ORDER BY step DESC, attempt DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Commits a whole step atomically.
    pub fn commit_step(&mut self, rec: &StepRecord) -> Result<()> {
        let tx = self.conn.transaction()?;
        for p in &rec.proposals {
            if let Some(c) = &p.candidate {
                if matches!(
                    p.status,
                    ProposalStatus::Evaluated | ProposalStatus::RuntimeError | ProposalStatus::ContractBreach
                ) {
                    tx.execute(
                        "INSERT OR IGNORE INTO candidates(id, kind, name, thought, code, operator, generation, fingerprint, step, created_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, datetime('now'))",
                        params![c.id, c.kind.as_str(), c.name, c.thought, c.code, c.operator, c.generation, c.fingerprint, rec.step as i64],
                    )?;
                    for parent in &c.parents {
                        tx.execute(
                            "INSERT OR IGNORE INTO lineage(parent, child, operator) VALUES (?1, ?2, ?3)",
                            params![parent, c.id, c.operator],
                        )?;
                    }
                    if let Some(e) = &p.evaluation {
                        insert_evaluation(&tx, &c.id, e, rec.step)?;
                    }
                }
            }
            tx.execute(
                "INSERT INTO proposals(step, attempt, generation, kind, parents, status, reason, candidate_id, prompt, reply, model, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, datetime('now'))",
                params![
                    rec.step as i64,
                    p.attempt,
                    rec.generation,
                    p.kind,
                    serde_json::to_string(&p.parents)?,
                    p.status.as_str(),
                    p.reason,
                    p.candidate.as_ref().map(|c| c.id.clone()),
                    p.prompt,
                    p.reply,
                    p.model,
                ],
            )?;
        }
        for (id, e) in &rec.evaluations {
            insert_evaluation(&tx, id, e, rec.step)?;
        }
        for (kind, detail) in &rec.events {
            tx.execute(
                "INSERT INTO events(step, kind, detail, created_at) VALUES (?1, ?2, ?3, datetime('now'))",
                params![rec.step as i64, kind, detail.to_string()],
            )?;
        }
        tx.execute(
            "INSERT INTO events(step, kind, detail, created_at) VALUES (?1, 'step_done', '{}', datetime('now'))",
            params![rec.step as i64],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn event(&self, step: Option<u64>, kind: &str, detail: serde_json::Value) -> Result<()> {
        self.conn.execute(
            "INSERT INTO events(step, kind, detail, created_at) VALUES (?1, ?2, ?3, datetime('now'))",
            params![step.map(|s| s as i64), kind, detail.to_string()],
        )?;
        Ok(())
    }

    /// The detail of the newest event of `kind`, if any.
    pub fn last_event(&self, kind: &str) -> Result<Option<serde_json::Value>> {
        let detail: Option<String> = self
            .conn
            .query_row(
                "SELECT detail FROM events WHERE kind = ?1 ORDER BY id DESC LIMIT 1",
                [kind],
                |r| r.get(0),
            )
            .optional()?;
        Ok(detail.and_then(|d| serde_json::from_str(&d).ok()))
    }

    pub fn mark_finished(&self) -> Result<()> {
        self.conn.execute(
            "UPDATE runs SET finished_at = datetime('now') WHERE finished_at IS NULL AND merged_at IS NULL",
            [],
        )?;
        Ok(())
    }

    pub fn is_finished(&self) -> Result<bool> {
        Ok(self.conn.query_row(
            "SELECT finished_at IS NOT NULL FROM runs WHERE merged_at IS NULL ORDER BY id LIMIT 1",
            [],
            |r| r.get(0),
        )?)
    }

    /// Leaderboard: every evaluated candidate, best validation score first.
    pub fn leaderboard(&self) -> Result<Vec<LeaderRow>> {
        let mut stmt = self.conn.prepare(
            "SELECT c.id, c.name, c.operator, c.generation FROM candidates c
             LEFT JOIN evaluations v ON v.candidate_id = c.id AND v.split = 'val'
             ORDER BY v.mean IS NULL, v.stage != 'full', v.mean DESC, v.cost_usd ASC, c.step ASC",
        )?;
        let rows: Vec<(String, String, String, u32)> = stmt
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? as u32))
            })?
            .collect::<rusqlite::Result<_>>()?;
        rows.into_iter()
            .map(|(id, name, operator, generation)| {
                Ok(LeaderRow {
                    val: self.split_score(&id, Split::Val)?,
                    test: self.split_score(&id, Split::Test)?,
                    id,
                    name,
                    operator,
                    generation,
                })
            })
            .collect()
    }

    fn split_score(&self, id: &str, split: Split) -> Result<Option<SplitScore>> {
        // Cached statements: the leaderboard asks this twice per candidate.
        self.conn
            .prepare_cached(
                "SELECT n, mean, ci_lo, ci_hi, cost_usd, prompt_tokens + completion_tokens, outcome, stage, guard FROM evaluations WHERE candidate_id = ?1 AND split = ?2",
            )?
            .query_row(
                params![id, split],
                |r| {
                    Ok(SplitScore {
                        n: r.get::<_, i64>(0)? as u32,
                        mean: r.get(1)?,
                        ci_lo: r.get(2)?,
                        ci_hi: r.get(3)?,
                        cost_usd: r.get(4)?,
                        tokens: r.get::<_, i64>(5)? as u64,
                        outcome: r.get(6)?,
                        stage: r.get(7)?,
                        guard: guard_record(r.get(8)?, 8)?,
                        memory: None,
                    })
                },
            )
            .optional()?
            .map(|mut s| {
                s.memory = self.memory_rewards(id, split)?;
                Ok(s)
            })
            .transpose()
    }

    /// Mean rewards with and without memory over an evaluation's scored episodes (their
    /// task outputs carry both, see `episodic`); None for agent evaluations.
    fn memory_rewards(&self, id: &str, split: Split) -> Result<Option<MemoryRewards>> {
        let (with, without): (Option<f64>, Option<f64>) = self
            .conn
            .prepare_cached(
                "SELECT avg(json_extract(t.output, '$.reward')), avg(json_extract(t.output, '$.baseline'))
                 FROM task_results t JOIN evaluations e ON e.id = t.evaluation_id
                 WHERE e.candidate_id = ?1 AND e.split = ?2 AND json_valid(t.output)
                   AND json_type(t.output) = 'object' AND json_extract(t.output, '$.baseline') IS NOT NULL",
            )?
            .query_row(params![id, split], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(with.zip(without).map(|(with_memory, without_memory)| MemoryRewards {
            with_memory,
            without_memory,
        }))
    }

    /// Count of proposal attempts by status, per proposal kind family.
    pub fn funnel(&self) -> Result<Vec<(String, String, u64)>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {FAMILY} AS family, status, count(*) FROM proposals GROUP BY family, status ORDER BY family, status"
        ))?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64)))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Evaluated children that beat their best parent on validation, per proposal family.
    /// Why CROSS JOIN: it fixes the subquery's order (a child's parents by `lineage_by_child`,
    /// then each parent's evaluation), which SQLite's planner otherwise turned into a scan of
    /// every validation evaluation per candidate: quadratic, a minute at 10k candidates.
    pub fn improvements(&self) -> Result<Vec<(String, u64)>> {
        let family = FAMILY.replace("kind", "c.operator");
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {family} AS family, count(*) FROM candidates c JOIN evaluations e ON e.candidate_id = c.id AND e.split = 'val'
             WHERE c.operator != 'seed' AND e.outcome = 'ok' AND e.stage = 'full' AND e.mean > (
                SELECT max(pe.mean) FROM lineage l CROSS JOIN evaluations pe ON pe.candidate_id = l.parent AND pe.split = 'val'
                WHERE l.child = c.id)
             GROUP BY family ORDER BY family"
        ))?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// Ids (with their steps) of the programs archived after row `after` (0: all), with the
    /// last row: the loop's near-duplicate check reads only what is new since its last look.
    pub fn candidate_ids_after(&self, after: i64) -> Result<(Vec<(String, u64)>, i64)> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT rowid, id, step FROM candidates WHERE rowid > ?1 ORDER BY rowid")?;
        let rows = stmt.query_map([after], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?))
        })?;
        let mut last = after;
        let mut ids = Vec::new();
        for row in rows {
            let (rowid, id, step) = row?;
            last = rowid;
            ids.push((id, step as u64));
        }
        Ok((ids, last))
    }

    /// Staged evaluation's savings: (proposals stopped at the cascade, stopped later,
    /// validation tasks not run).
    pub fn staged_savings(&self, val_size: u64) -> Result<(u64, u64, u64)> {
        Ok(self.conn.query_row(
            "SELECT coalesce(sum(stage = 'cascade'), 0), coalesce(sum(stage = 'stopped'), 0),
                    coalesce(sum(CASE WHEN stage != 'full' THEN ?1 - n ELSE 0 END), 0)
             FROM evaluations WHERE split = 'val'",
            [val_size as i64],
            |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, i64>(1)? as u64,
                    r.get::<_, i64>(2)? as u64,
                ))
            },
        )?)
    }

    /// Tokens and dollars this run sent to one model of a role: the calls this archive holds
    /// for it, less those brought in with `--cache-from` (`cache_import` events), which this
    /// run replays for nothing. A resumed run preloads the model's own caps with it.
    pub fn model_usage(&self, role: crate::types::Role, model_id: &str) -> Result<(u64, f64)> {
        let (tokens, cost): (i64, f64) = self.conn.query_row(
            "SELECT coalesce(sum(prompt_tokens + completion_tokens), 0), coalesce(sum(cost_usd), 0) FROM llm_calls WHERE role = ?1 AND model = ?2",
            params![role.as_str(), model_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let (imported_tokens, imported_cost): (i64, f64) = self.conn.query_row(
            "SELECT coalesce(sum(json_extract(detail, '$.tokens')), 0), coalesce(sum(json_extract(detail, '$.cost_usd')), 0.0)
             FROM events WHERE kind = 'cache_import' AND json_extract(detail, '$.role') = ?1 AND json_extract(detail, '$.model') = ?2",
            params![role.as_str(), model_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok((
            (tokens - imported_tokens).max(0) as u64,
            (cost - imported_cost).max(0.0),
        ))
    }

    /// Tokens and dollars the meta-models spent on proposals, from the `credit` events (a
    /// run's budget covers them as well as its evaluations).
    pub fn meta_spend(&self) -> Result<(u64, f64)> {
        Ok(self.conn.query_row(
            "SELECT coalesce(sum(json_extract(detail, '$.model_tokens')), 0), coalesce(sum(json_extract(detail, '$.model_cost_usd')), 0.0) FROM events WHERE kind = 'credit'",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)),
        )?)
    }

    /// Model usage over the whole run (all evaluations) and the number of cached calls.
    pub fn usage(&self) -> Result<(u64, f64, u64)> {
        Ok(self.conn.query_row(
            "SELECT coalesce(sum(prompt_tokens + completion_tokens), 0), coalesce(sum(cost_usd), 0), (SELECT count(*) FROM llm_calls) FROM evaluations",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get::<_, i64>(2)? as u64)),
        )?)
    }

    /// Copies the model-call cache of another archive into this one (existing keys win), so a
    /// rerun of the same experiment replays its calls instead of sending them again. Returns
    /// how many calls were added.
    pub fn import_call_cache(&self, from: &Path) -> Result<u64> {
        self.conn
            .execute("ATTACH DATABASE ?1 AS cache_source", [from.to_string_lossy()])
            .with_context(|| format!("cannot open {}", from.display()))?;
        let copied = self.copy_calls_from_attached().with_context(|| {
            format!(
                "{} is not a metaforge archive; fix: give the .db of an earlier run",
                from.display()
            )
        });
        self.conn.execute("DETACH DATABASE cache_source", [])?;
        copied
    }

    /// The calls of `cache_source` this archive lacks, copied in one transaction with a
    /// `cache_import` event per model saying what they cost when first sent, so that a
    /// model's own caps count only what this run sends (`model_usage`).
    fn copy_calls_from_attached(&self) -> Result<u64> {
        let tx = self.conn.unchecked_transaction()?;
        let groups: Vec<(String, String, i64, f64)> = tx
            .prepare(
                "SELECT role, model, sum(prompt_tokens + completion_tokens), sum(cost_usd) FROM cache_source.llm_calls
                 WHERE key NOT IN (SELECT key FROM main.llm_calls) GROUP BY role, model ORDER BY role, model",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let copied = tx.execute(
            "INSERT OR IGNORE INTO main.llm_calls SELECT * FROM cache_source.llm_calls",
            [],
        )?;
        for (role, model, tokens, cost) in groups {
            tx.execute(
                "INSERT INTO events(step, kind, detail, created_at) VALUES (NULL, 'cache_import', ?1, datetime('now'))",
                [serde_json::json!({"role": role, "model": model, "tokens": tokens, "cost_usd": cost}).to_string()],
            )?;
        }
        tx.commit()?;
        Ok(copied as u64)
    }

    /// The lineage DAG, each node with its validation score when evaluated without a breach.
    pub fn lineage(&self) -> Result<Lineage> {
        let mut stmt = self.conn.prepare("SELECT parent, child, operator FROM lineage")?;
        let edges: Vec<(String, String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut stmt = self.conn.prepare(
            "SELECT c.id, c.name, c.operator, c.generation, e.mean FROM candidates c
             LEFT JOIN evaluations e ON e.candidate_id = c.id AND e.split = 'val' AND e.outcome = 'ok'
             ORDER BY c.step, c.id",
        )?;
        let nodes: Vec<LineageNode> = stmt
            .query_map([], |r| {
                Ok(LineageNode {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    operator: r.get(2)?,
                    generation: r.get::<_, i64>(3)? as u32,
                    val: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(Lineage::build(nodes, &edges))
    }

    /// Raw access for tests and reports that need ad-hoc queries.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }
}

/// An evaluation's stored guard record. One this build cannot read is an error naming what
/// is wrong, not a record that silently vanishes from `status`.
fn guard_record(text: Option<String>, column: usize) -> rusqlite::Result<Option<GuardSummary>> {
    text.map(|t| {
        serde_json::from_str(&t).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(
                column,
                rusqlite::types::Type::Text,
                format!("evaluations.guard holds a record this metaforge cannot read ({e}); fix: open the archive with the metaforge that wrote it").into(),
            )
        })
    })
    .transpose()
}

/// Splits and stages are stored by name (`as_str`); a name this build does not know is a
/// clear error naming it, not a silent default.
impl rusqlite::ToSql for Split {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

impl rusqlite::types::FromSql for Stage {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        Stage::parse(value.as_str()?).map_err(|e| rusqlite::types::FromSqlError::Other(e.into()))
    }
}

fn insert_evaluation(tx: &rusqlite::Transaction, id: &str, e: &Evaluation, step: u64) -> Result<()> {
    let inserted = tx.execute(
        "INSERT OR IGNORE INTO evaluations(candidate_id, split, stage, n, mean, ci_lo, ci_hi, cost_usd, prompt_tokens, completion_tokens,
             llm_calls, cached_calls, latency_ms, wall_ms, outcome, outcome_detail, step, guard, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, datetime('now'))",
        params![
            id,
            e.split.as_str(),
            e.stage.as_str(),
            e.tasks.len() as i64,
            e.mean,
            e.ci_lo,
            e.ci_hi,
            e.usage.cost_usd,
            e.usage.prompt_tokens as i64,
            e.usage.completion_tokens as i64,
            e.usage.calls as i64,
            e.usage.cached_calls as i64,
            e.usage.latency_ms,
            e.wall_ms,
            e.outcome.to_string(),
            e.detail,
            step as i64,
            e.guard.as_ref().map(|g| serde_json::to_string(g).expect("guard summaries serialise")),
        ],
    )?;
    if inserted == 0 {
        return Ok(());
    }
    let eval_id = tx.last_insert_rowid();
    let mut stmt = tx.prepare_cached(
        "INSERT INTO task_results(evaluation_id, task_id, score, outcome, output, error, llm_calls, tokens, guard) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for t in &e.tasks {
        stmt.execute(params![
            eval_id,
            t.task_id,
            t.score,
            t.outcome.as_str(),
            t.output,
            t.error,
            t.usage.calls as i64,
            t.usage.tokens() as i64,
            t.guard
                .as_ref()
                .map(|g| serde_json::to_string(g).expect("task guards serialise")),
        ])?;
    }
    Ok(())
}
