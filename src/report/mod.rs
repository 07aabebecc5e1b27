//! Reports over an archive: the leaderboard `status` prints (text or JSON), the proposal
//! funnel, usage, and the honest seed-vs-discovered comparison on held-out test.

pub mod html;
pub mod lineage;

use anyhow::Result;
use serde::Serialize;

use crate::archive::{Archive, LeaderRow, SplitScore};
use crate::evaluate::paired::{detectable_gain, differences, Paired};
use crate::search::bandit::{tally, ArmStats, Cost};
use crate::types::{Split, Stage};

#[derive(Debug, Serialize)]
pub struct Status {
    pub name: String,
    pub domain: String,
    pub finished: bool,
    pub next_step: u64,
    /// The signal that stopped the run's last process at a safe point, when one did and
    /// no process has run it since.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupted_by: Option<String>,
    pub leaderboard: Vec<LeaderRow>,
    /// (proposal family, status, count)
    pub funnel: Vec<(String, String, u64)>,
    /// (proposal family, children that beat their best parent on validation)
    pub improvements: Vec<(String, u64)>,
    pub tokens: u64,
    pub cost_usd: f64,
    pub cached_calls: u64,
    /// Staged evaluation: (stopped at the cascade, stopped later, validation tasks not run).
    pub staged: (u64, u64, u64),
    pub verdict: String,
    /// The paired held-out comparison behind the verdict, when both were tested.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_comparison: Option<TestComparison>,
    /// Per proposer (operator or kind): proposals, improvements and the calls they cost.
    pub credit: Vec<CreditRow>,
    /// The arm each proposal step tried, in step order.
    pub choices: Vec<(u64, String)>,
    /// Per meta-model: what its proposals earned and cost (from the `credit` events).
    pub models: Vec<ModelRow>,
    /// Proposals (and seeds) dropped by racing before the whole validation pool.
    pub raced: u64,
    /// Seeds imported from an ADAS archive, by name: the ADAS generation that made each
    /// (`initial` for ADAS's own seeds).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub adas_generations: std::collections::BTreeMap<String, String>,
    /// The Ray executor's totals when the run's shards ran on a cluster (`executor` event).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub executor: Option<serde_json::Value>,
}

/// The best discovered agent against the best seed on the same held-out tasks.
#[derive(Debug, Serialize)]
pub struct TestComparison {
    pub discovered: String,
    pub seed: String,
    pub discovered_mean: f64,
    pub seed_mean: f64,
    /// Their validation scores: the comparison takes the best discovered candidate even
    /// where validation ranked it below the best seed (ADAS's measure), and then a user who
    /// picks by validation keeps the seed.
    pub discovered_val: f64,
    pub seed_val: f64,
    pub paired: Paired,
    /// The smallest gain this many held-out tasks would show at p < 0.05 with 80% power,
    /// given how often the two disagreed and, on graded scores, by how much.
    pub detectable_gain: Option<f64>,
}

/// What one meta-model's proposals earned and what they cost it.
#[derive(Debug, Default, Serialize)]
pub struct ModelRow {
    pub model: String,
    pub proposals: u64,
    pub improved: u64,
    /// Sum of the paired gains of its improvements.
    pub gain: f64,
    pub tokens: u64,
    pub cost_usd: f64,
}

/// Each meta-model's row, in the order it first wrote a proposal.
fn model_rows(events: &[(Option<u64>, serde_json::Value)]) -> Vec<ModelRow> {
    let mut rows: Vec<ModelRow> = Vec::new();
    for (_, e) in events {
        let Some(model) = e["model"].as_str() else { continue };
        let at = match rows.iter().position(|r| r.model == model) {
            Some(i) => i,
            None => {
                rows.push(ModelRow {
                    model: model.to_string(),
                    ..Default::default()
                });
                rows.len() - 1
            }
        };
        let r = &mut rows[at];
        r.proposals += 1;
        if e["improved"].as_bool().unwrap_or(false) {
            r.improved += 1;
            r.gain += e["gain"].as_f64().unwrap_or(0.0);
        }
        r.tokens += e["model_tokens"].as_u64().unwrap_or(0);
        r.cost_usd += e["model_cost_usd"].as_f64().unwrap_or(0.0);
    }
    rows
}

#[derive(Debug, Serialize)]
pub struct CreditRow {
    pub arm: String,
    #[serde(flatten)]
    pub stats: ArmStats,
}

/// What the `adas_import` event says of each imported agent's ADAS generation, by the name
/// its seed carries (newlines folded, as `adas::AdasAgent::seed_code` folds them).
fn adas_generations(archive: &Archive) -> Result<std::collections::BTreeMap<String, String>> {
    let mut out = std::collections::BTreeMap::new();
    for (_, event) in archive.events("adas_import")? {
        for agent in event["agents"].as_array().into_iter().flatten() {
            let name = agent["name"]
                .as_str()
                .unwrap_or_default()
                .replace("\"\"\"", "'''")
                .replace('\n', " ");
            let generation = agent["generation"]
                .as_u64()
                .map_or("initial".to_string(), |g| format!("generation {g}"));
            out.insert(name, generation);
        }
    }
    Ok(out)
}

pub fn status(archive: &Archive) -> Result<Status> {
    let exp = crate::config::Experiment::parse_stored(&archive.config_text()?, archive.path())?;
    let leaderboard = archive.leaderboard()?;
    let (tokens, cost_usd, cached_calls) = archive.usage()?;
    let test_comparison = test_comparison(archive, &leaderboard)?;
    let subject = Subject::of(&exp.domain);
    let events = archive.events("credit")?;
    let credit = tally(&events, Cost::AllCalls);
    let choices = events
        .iter()
        .map(|(step, e)| (step.unwrap_or(0), e["arm"].as_str().unwrap_or("?").to_string()))
        .collect();
    let raced = archive.connection().query_row(
        "SELECT count(*) FROM evaluations WHERE split = 'val' AND stage = 'raced'",
        [],
        |r| r.get::<_, i64>(0),
    )? as u64;
    Ok(Status {
        adas_generations: adas_generations(archive)?,
        name: exp.name,
        domain: exp.domain.name,
        finished: archive.is_finished()?,
        next_step: archive.next_step()?,
        interrupted_by: interrupted_by(archive)?,
        verdict: verdict(&leaderboard, test_comparison.as_ref(), subject),
        test_comparison,
        credit: credit
            .into_iter()
            .map(|(arm, stats)| CreditRow { arm, stats })
            .collect(),
        choices,
        models: model_rows(&events),
        raced,
        leaderboard,
        funnel: archive.funnel()?,
        improvements: archive.improvements()?,
        tokens,
        cost_usd,
        cached_calls,
        staged: archive.staged_savings(exp.domain.val_size as u64)?,
        executor: archive.last_event("executor")?,
    })
}

/// The best validation-ranked seed and discovered agent that were both tested.
fn tested(rows: &[LeaderRow], seed: bool) -> Option<&LeaderRow> {
    rows.iter()
        .filter(|r| (r.operator == "seed") == seed)
        .find(|r| r.test.is_some() && r.val.as_ref().is_some_and(|v| v.outcome == "ok"))
}

/// The paired comparison of the best discovered agent with the best seed on held-out test.
pub fn test_comparison(archive: &Archive, rows: &[LeaderRow]) -> Result<Option<TestComparison>> {
    let (Some(s), Some(d)) = (tested(rows, true), tested(rows, false)) else {
        return Ok(None);
    };
    let (st, dt) = (s.test.as_ref().unwrap(), d.test.as_ref().unwrap());
    let diffs = differences(
        &archive.task_scores(&d.id, Split::Test)?,
        &archive.task_scores(&s.id, Split::Test)?,
    );
    let paired = Paired::of_diffs(&diffs, 2000);
    Ok(Some(TestComparison {
        discovered: d.name.clone(),
        seed: s.name.clone(),
        discovered_mean: dt.mean,
        seed_mean: st.mean,
        discovered_val: d.val.as_ref().map_or(f64::NAN, |v| v.mean),
        seed_val: s.val.as_ref().map_or(f64::NAN, |v| v.mean),
        detectable_gain: detectable_gain(&diffs, 0.025, 0.8),
        paired,
    }))
}

/// What a run searches over, for the verdict's words: a memory design is scored on episodes,
/// and calling it an agent would send a reader looking for the wrong program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subject {
    Agent,
    MemoryDesign,
}

impl Subject {
    fn of(domain: &crate::config::DomainConfig) -> Self {
        if domain.name == crate::config::EPISODIC_DOMAIN && domain.path.is_none() {
            Subject::MemoryDesign
        } else {
            Subject::Agent
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Subject::Agent => "agent",
            Subject::MemoryDesign => "memory design",
        }
    }

    fn items(self) -> &'static str {
        match self {
            Subject::Agent => "tasks",
            Subject::MemoryDesign => "scored episodes",
        }
    }
}

/// Did a discovered agent beat the best seed on held-out test? Said plainly: the paired
/// difference on the same tasks with its interval and the exact test's p-value, named.
fn verdict(rows: &[LeaderRow], comparison: Option<&TestComparison>, subject: Subject) -> String {
    let (noun, items) = (subject.noun(), subject.items());
    if let Some(c) = comparison {
        let p = &c.paired;
        let relation = match p.verdict(0.05) {
            "beats" => "beats it".to_string(),
            "loses to" => "does NOT beat it (significantly worse)".to_string(),
            _ => format!(
                "no significant difference{}",
                c.detectable_gain
                    .map(|g| format!(
                        " (these {} {items} detect a gain of about {g:.3} or more with 80% power)",
                        p.n
                    ))
                    .unwrap_or_default()
            ),
        };
        let ranked_below = if c.discovered_val < c.seed_val {
            format!(
                "; on validation it ranked below the best seed ({:.3} vs {:.3}), so picking by validation keeps the seed",
                c.discovered_val, c.seed_val
            )
        } else {
            String::new()
        };
        return format!(
            "held-out test, paired on {} {items}: best discovered {noun} {:?} {:.3} vs best seed {:?} {:.3}: difference {:+.3} [95% CI {:+.3}, {:+.3}], {} better, {} worse, {} p = {}: {relation}{ranked_below}",
            p.n,
            c.discovered,
            c.discovered_mean,
            c.seed,
            c.seed_mean,
            p.diff,
            p.ci_lo,
            p.ci_hi,
            p.wins,
            p.losses,
            p.test.label(),
            format_p(p.p_two_sided),
        );
    }
    match (tested(rows, true), tested(rows, false)) {
        (Some(s), Some(d)) => {
            let (st, dt) = (s.test.as_ref().unwrap(), d.test.as_ref().unwrap());
            let relation = if dt.mean > st.mean && dt.ci_lo > st.ci_hi {
                "beats it, and the 95% intervals do not overlap"
            } else if dt.mean > st.mean {
                "scores higher, but the 95% intervals overlap: not a significant win"
            } else if dt.mean == st.mean {
                "ties it"
            } else {
                "does NOT beat it"
            };
            format!(
                "held-out test: best discovered {noun} {:?} {:.3} [{:.3}, {:.3}] vs best seed {:?} {:.3} [{:.3}, {:.3}]: {relation}",
                d.name, dt.mean, dt.ci_lo, dt.ci_hi, s.name, st.mean, st.ci_lo, st.ci_hi
            )
        }
        (Some(_), None) => {
            let discovered_ok = rows
                .iter()
                .any(|r| r.operator != "seed" && r.val.as_ref().is_some_and(|v| v.outcome == "ok"));
            if discovered_ok {
                "held-out test: no discovered candidate was tested (none finished validation ahead of its parent, or above the seeds): the best seed stands".into()
            } else {
                "held-out test: no discovered candidate was tested (none evaluated successfully on validation)".into()
            }
        }
        _ => "held-out test: not evaluated yet (it runs at the end of the search)".into(),
    }
}

fn format_p(p: f64) -> String {
    if p < 1e-4 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

fn cell(s: &Option<SplitScore>) -> String {
    match s {
        Some(s) if s.outcome == "ok" && s.stage != Stage::Full => format!("{:.2} ({} n={})", s.mean, s.stage, s.n),
        Some(s) if s.outcome == "ok" => format!("{:.2} [{:.2}, {:.2}]", s.mean, s.ci_lo, s.ci_hi),
        Some(s) => format!("{:.2} ({})", s.mean, s.outcome),
        None => "-".into(),
    }
}

/// One candidate's guard record as `status` and the HTML report show it.
#[derive(Debug, Serialize)]
pub struct GuardRow {
    /// Leaderboard rank.
    pub rank: usize,
    pub name: String,
    pub hard: u32,
    /// Share of tasks without a hard violation, with its one-sided 95% lower bound.
    pub hard_free: String,
    pub soft: u32,
    pub fallback_pct: String,
    pub final_fallbacks: String,
    pub call_fallbacks: String,
    pub unsatisfied: u32,
    pub guard_us: f64,
    /// Rejects by stage, "" when none.
    pub rejects: String,
    pub tiers: String,
    /// One line per call contract.
    pub contracts: Vec<String>,
}

fn joined<K: std::fmt::Display, V: std::fmt::Display>(m: &std::collections::BTreeMap<K, V>, sep: &str) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}{sep}{v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Per candidate, what the contract guards saw on validation: hard violations (which make
/// a candidate infeasible), soft ones, and how often a fallback stood in for the model.
pub fn guard_rows(rows: &[LeaderRow]) -> Vec<GuardRow> {
    rows.iter()
        .enumerate()
        .filter_map(|(i, r)| r.val.as_ref().and_then(|v| v.guard.as_ref()).map(|g| (i, r, g)))
        .map(|(i, r, g)| {
            let (p, lo) = g.hard_compliance();
            GuardRow {
                rank: i + 1,
                name: r.name.clone(),
                hard: g.hard,
                hard_free: format!("{:.0}% [{:.0}%]", 100.0 * p, 100.0 * lo),
                soft: g.soft,
                fallback_pct: format!("{:.1}%", 100.0 * g.fallback_rate()),
                final_fallbacks: format!("{}/{}", g.final_fallbacks, g.tasks),
                call_fallbacks: format!("{}/{}", g.calls.fallbacks, g.calls.calls),
                unsatisfied: g.calls.unsatisfied,
                guard_us: g.guard_us(),
                rejects: joined(&g.calls.rejects, " "),
                tiers: joined(&g.tiers, ": "),
                contracts: g
                    .contracts
                    .iter()
                    .map(|(id, c)| {
                        format!(
                            "contract {id:?} ({}): {} calls, {} accepted first try, {:.1} attempts/call, {} fallbacks, {} unsatisfied, {} precondition failures, rejects {}, {:.1} µs/call in checks",
                            g.tiers.get(id).map(String::as_str).unwrap_or("?"),
                            c.calls,
                            c.first_try,
                            f64::from(c.attempts) / f64::from(c.calls.max(1)),
                            c.fallbacks,
                            c.unsatisfied,
                            c.pre_failed,
                            if c.rejects.is_empty() { "-".to_string() } else { joined(&c.rejects, " ") },
                            c.guard_us / f64::from(c.calls.max(1))
                        )
                    })
                    .collect(),
            }
        })
        .collect()
}

fn guard_section(rows: &[LeaderRow]) -> String {
    let rows = guard_rows(rows);
    if rows.is_empty() {
        return String::new();
    }
    let mut out = String::from("\ncontract guards on validation (hard violations make a candidate infeasible):\n");
    out.push_str(&format!(
        "{:>3}  {:<30} {:>5} {:>16} {:>5} {:>9} {:>11} {:>11} {:>7} {:>9}  {}\n",
        "#",
        "name",
        "hard",
        "hard-free [lo]",
        "soft",
        "fallback",
        "final fb",
        "call fb",
        "unsat",
        "guard µs",
        "rejects by stage"
    ));
    for g in rows {
        out.push_str(&format!(
            "{:>3}  {:<30} {:>5} {:>16} {:>5} {:>9} {:>11} {:>11} {:>7} {:>9.0}  {}\n",
            g.rank,
            g.name.chars().take(30).collect::<String>(),
            g.hard,
            g.hard_free,
            g.soft,
            g.fallback_pct,
            g.final_fallbacks,
            g.call_fallbacks,
            g.unsatisfied,
            g.guard_us,
            if g.rejects.is_empty() { "-" } else { &g.rejects }
        ));
        for line in &g.contracts {
            out.push_str(&format!("       {line}\n"));
        }
    }
    out
}

/// Memory designs: the mean reward of the scored episodes with each design's memory and
/// without memory, on validation and held-out test (empty for agent runs).
fn memory_section(rows: &[LeaderRow]) -> String {
    let pair = |s: &Option<SplitScore>| match s.as_ref().and_then(|s| s.memory) {
        Some(m) => format!("{:.3} / {:.3}", m.with_memory, m.without_memory),
        None => "-".into(),
    };
    let lines: Vec<String> = rows
        .iter()
        .filter(|r| r.val.as_ref().is_some_and(|v| v.memory.is_some()))
        .map(|r| {
            let name: String = r.name.chars().take(46).collect();
            format!("  {name:<46} {:<20} {:<20}", pair(&r.val), pair(&r.test))
        })
        .collect();
    if lines.is_empty() {
        return String::new();
    }
    format!(
        "\nmemory designs: mean reward with / without memory on scored episodes\n  {:<46} {:<20} {:<20}\n{}\n",
        "name",
        "val",
        "held-out test",
        lines.join("\n")
    )
}

/// The mean gain of `improved` improvements that gained `gain` in all, or "-" for none.
fn mean_gain(gain: f64, improved: u64) -> String {
    if improved > 0 {
        format!("{:+.3}", gain / improved as f64)
    } else {
        "-".into()
    }
}

/// Operator credit and the bandit's choices over time (empty before any proposal step).
fn credit_section(s: &Status) -> String {
    if s.credit.is_empty() {
        return String::new();
    }
    let mut out =
        String::from("\nproposer credit (improved: beat its parent task by task on the whole validation pool):\n");
    out.push_str(&format!(
        "  {:<22} {:>6} {:>9} {:>10} {:>8} {:>20}\n",
        "proposer", "tries", "improved", "mean gain", "calls", "improved / 1k calls"
    ));
    let mut rows: Vec<&CreditRow> = s.credit.iter().collect();
    rows.sort_by(|a, b| b.stats.improved.cmp(&a.stats.improved).then(a.arm.cmp(&b.arm)));
    for r in rows {
        let st = &r.stats;
        out.push_str(&format!(
            "  {:<22} {:>6} {:>9} {:>10} {:>8} {:>20.2}\n",
            r.arm,
            st.proposals,
            st.improved,
            mean_gain(st.gain, st.improved),
            st.calls,
            1000.0 * st.improved as f64 / st.calls.max(1) as f64
        ));
    }
    let several = s.models.len() > 1 || s.models.iter().any(|m| m.model != crate::config::SINGLE_MODEL);
    if several {
        out.push_str("meta-model credit (the model that wrote each proposal; improved as above):\n");
        out.push_str(&format!(
            "  {:<22} {:>6} {:>9} {:>10} {:>10} {:>10} {:>16}\n",
            "model", "tries", "improved", "mean gain", "tokens", "USD", "improved / $"
        ));
        for m in &s.models {
            out.push_str(&format!(
                "  {:<22} {:>6} {:>9} {:>10} {:>10} {:>10.4} {:>16}\n",
                m.model,
                m.proposals,
                m.improved,
                mean_gain(m.gain, m.improved),
                m.tokens,
                m.cost_usd,
                if m.cost_usd > 0.0 {
                    format!("{:.2}", m.improved as f64 / m.cost_usd)
                } else {
                    "-".into()
                }
            ));
        }
    }
    // The choices, five steps a row: what the bandit tried as credit came in.
    out.push_str("bandit choices (step: proposer tried):\n");
    for chunk in s.choices.chunks(5) {
        let line: Vec<String> = chunk
            .iter()
            .map(|(step, arm)| format!("{step}: {}", arm.trim_start_matches("op:")))
            .collect();
        out.push_str(&format!("  {}\n", line.join(", ")));
    }
    if s.raced > 0 {
        out.push_str(&format!(
            "racing: {} evaluations stopped before the whole validation pool (behind their rival at a look)\n",
            s.raced
        ));
    }
    out
}

/// The signal in the run's last `interrupted` event, when no process started the run since.
fn interrupted_by(archive: &Archive) -> Result<Option<String>> {
    let last = archive.connection().query_row(
        "SELECT kind, detail FROM events WHERE kind IN ('run_started', 'interrupted') ORDER BY id DESC LIMIT 1",
        [],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
    );
    match last {
        Ok((kind, detail)) if kind == "interrupted" => {
            let detail: serde_json::Value = serde_json::from_str(&detail)?;
            Ok(Some(detail["signal"].as_str().unwrap_or("a signal").to_string()))
        }
        Ok(_) | Err(rusqlite::Error::QueryReturnedNoRows) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The leaderboard and summary as plain text.
pub fn render_status(s: &Status) -> String {
    let mut out = format!(
        "run {} · domain {} · {}\n\n",
        s.name,
        s.domain,
        if s.finished {
            "finished".to_string()
        } else if let Some(signal) = &s.interrupted_by {
            format!(
                "interrupted by {signal} (next step {}; continue with metaforge resume)",
                s.next_step
            )
        } else {
            format!("in progress (next step {})", s.next_step)
        }
    );
    out.push_str(&format!(
        "{:>3}  {:<46} {:>3}  {:<22} {:<20} {:<20} {:>9} {:>9}\n",
        "#", "name", "gen", "operator", "val [95% CI]", "test [95% CI]", "tokens", "cost $"
    ));
    for (i, r) in s.leaderboard.iter().enumerate() {
        let tokens = r.val.as_ref().map(|v| v.tokens).unwrap_or(0);
        let cost = r.val.as_ref().map(|v| v.cost_usd).unwrap_or(0.0);
        let name: String = if r.name.chars().count() > 46 {
            format!("{}…", r.name.chars().take(45).collect::<String>())
        } else {
            r.name.clone()
        };
        let op: String = match s.adas_generations.get(&r.name) {
            Some(g) if r.operator == "seed" => format!("ADAS {g}"),
            _ => r.operator.clone(),
        }
        .chars()
        .take(22)
        .collect();
        out.push_str(&format!(
            "{:>3}  {:<46} {:>3}  {:<22} {:<20} {:<20} {:>9} {:>9.4}\n",
            i + 1,
            name,
            r.generation,
            op,
            cell(&r.val),
            cell(&r.test),
            tokens,
            cost
        ));
    }
    out.push_str(&guard_section(&s.leaderboard));
    out.push_str(&memory_section(&s.leaderboard));
    out.push_str("\nproposal funnel (attempts by kind):\n");
    let mut families: Vec<&str> = s.funnel.iter().map(|f| f.0.as_str()).collect();
    families.dedup();
    for fam in families {
        let count = |st: &[&str]| -> u64 {
            s.funnel
                .iter()
                .filter(|f| f.0 == fam && st.contains(&f.1.as_str()))
                .map(|f| f.2)
                .sum()
        };
        let proposed = count(&[
            "evaluated",
            "duplicate",
            "not_novel",
            "parse_error",
            "check_failed",
            "runtime_error",
            "contract_breach",
            "llm_error",
        ]);
        let parsed = proposed - count(&["parse_error", "llm_error"]);
        let checked = parsed - count(&["check_failed"]);
        let novel = checked - count(&["duplicate", "not_novel"]);
        let evaluated = count(&["evaluated", "contract_breach"]);
        let breaches = count(&["contract_breach"]);
        let improved = s.improvements.iter().find(|(f, _)| f == fam).map_or(0, |(_, n)| *n);
        out.push_str(&format!(
            "  {fam:<10} proposed {proposed} → parsed {parsed} → checked {checked} → novel {novel} → evaluated {evaluated} → improved {improved} (runtime errors {}{})\n",
            count(&["runtime_error"]),
            if breaches > 0 { format!(", contract breaches {breaches}") } else { String::new() }
        ));
    }
    out.push_str(&format!(
        "\nagent-model usage over all evaluations: {} tokens, ${:.4}; cached model calls in the archive: {}\n",
        s.tokens, s.cost_usd, s.cached_calls
    ));
    if let Some(e) = &s.executor {
        out.push_str(&format!(
            "shards on the Ray cluster: {}; attempts rerun after a worker or node died: {} (their results counted once)\n",
            e["shards"], e["retried_attempts"]
        ));
    }
    out.push_str(&credit_section(s));
    let (cascade, stopped, saved) = s.staged;
    if cascade + stopped > 0 {
        out.push_str(&format!(
            "staged evaluation: {cascade} proposals stopped at the cascade, {stopped} stopped later; {saved} validation tasks not run\n"
        ));
    }
    out.push_str(&format!("{}\n", s.verdict));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comparison(discovered_val: f64, seed_val: f64) -> TestComparison {
        // 12 scored episodes: the discovered design ahead on 5, behind on 1.
        let diffs: Vec<f64> = [0.5, 0.5, 0.25, 0.5, 0.25, -0.25].into_iter().chain([0.0; 6]).collect();
        TestComparison {
            discovered: "focused insights".into(),
            seed: "Insight list".into(),
            discovered_mean: 0.65,
            seed_mean: 0.5,
            discovered_val,
            seed_val,
            paired: Paired::of_diffs(&diffs, 2000),
            detectable_gain: None,
        }
    }

    /// The verdict compares the best discovered design with the best seed whatever validation
    /// said, and says when validation ranked it below the seed, since a user who picks by
    /// validation then keeps the seed.
    #[test]
    fn the_verdict_says_when_validation_ranked_the_discovered_below_the_seed() {
        let below = verdict(&[], Some(&comparison(0.70, 0.765)), Subject::MemoryDesign);
        let above = verdict(&[], Some(&comparison(0.80, 0.765)), Subject::MemoryDesign);
        insta::assert_snapshot!(format!("{below}\n{above}"));
    }
}
