//! Staged evaluation: spend validation tasks only on proposals that can still matter.
//!
//! Why: most proposals are worse than their parent, and a full validation pass is the
//! dominant cost of a search (every task is model calls). A proposal first runs
//! `cascade_fraction` of the validation tasks (the cascade of OpenEvolve/ShinkaEvolve); it
//! goes on only if that first score reaches `cascade_threshold` × its best parent's score.
//! Then it runs the rest in chunks of the same size and stops as soon as the outcome is
//! decided: even if every remaining task succeeded, the mean could no longer reach the bar (a
//! sequential test with a certain bound, not a statistical one, so it never stops a proposal
//! that could have made it). Winners are always evaluated on every task, so selection
//! compares full scores; the stored stage (`cascade`, `stopped`, `full`) says how far each got.
//! Scores are assumed to lie in [0, 1], as every scorer's do.

use anyhow::Result;

use super::{Evaluation, Outcome, Stage};
use crate::domain::Task;
use crate::llm::Usage;

/// The staged-evaluation settings of a run.
#[derive(Debug, Clone, Copy)]
pub struct Stages {
    pub fraction: f64,
    pub threshold: f64,
    pub bootstrap_samples: usize,
}

/// Evaluates `tasks` in stages against `bar` (the best parent's validation score). With no
/// bar (seeds) or staging off, `run` sees every task at once. `run` evaluates one slice.
pub fn evaluate_staged(
    tasks: &[Task],
    bar: Option<f64>,
    stages: &Stages,
    mut run: impl FnMut(&[Task]) -> Result<Evaluation>,
) -> Result<Evaluation> {
    let n = tasks.len();
    let chunk = ((n as f64 * stages.fraction).ceil() as usize).max(1);
    let Some(bar) = bar.filter(|_| stages.fraction > 0.0 && chunk < n) else {
        return run(tasks);
    };
    let required = stages.threshold * bar;
    let mut parts: Vec<Evaluation> = Vec::new();
    let mut done = 0;
    let mut stop: Option<(Stage, String)> = None;
    while done < n {
        let end = (done + chunk).min(n);
        let part = run(&tasks[done..end])?;
        let breach = part.outcome != Outcome::Ok;
        parts.push(part);
        done = end;
        if done == n {
            break;
        }
        let sum: f64 = parts.iter().flat_map(|p| &p.tasks).map(|t| t.score).sum();
        let observed = sum / done as f64;
        let best_possible = (sum + (n - done) as f64) / n as f64;
        let stage = if parts.len() == 1 {
            Stage::Cascade
        } else {
            Stage::Stopped
        };
        if breach {
            stop = Some((
                stage,
                format!("stopped after {done} of {n} tasks: the candidate broke (see outcome)"),
            ));
        } else if parts.len() == 1 && observed < required {
            stop = Some((
                stage,
                format!(
                    "stopped after {done} of {n} tasks: {observed:.2} < {:.2} × parent {bar:.2}",
                    stages.threshold
                ),
            ));
        } else if best_possible < required {
            stop = Some((
                stage,
                format!(
                    "stopped after {done} of {n} tasks: at most {best_possible:.2} reachable < {:.2} × parent {bar:.2}",
                    stages.threshold
                ),
            ));
        }
        if stop.is_some() {
            break;
        }
    }
    Ok(combine(parts, stop, stages.bootstrap_samples))
}

/// One evaluation from the stages that ran (at least one); `stop` is the stage it ended at
/// early and why (None: it ran every stage, `full`).
pub(super) fn combine(parts: Vec<Evaluation>, stop: Option<(Stage, String)>, bootstrap_samples: usize) -> Evaluation {
    let mut usage = Usage::default();
    let mut wall_ms = 0.0;
    let mut outcome = Outcome::Ok;
    let mut details = Vec::new();
    let mut results = Vec::new();
    let split = parts[0].split;
    let tiers = parts.iter().find_map(|p| p.guard.as_ref().map(|g| g.tiers.clone()));
    for p in parts {
        usage.merge(&p.usage);
        wall_ms += p.wall_ms;
        if outcome == Outcome::Ok && p.outcome != Outcome::Ok {
            outcome = p.outcome.clone();
        }
        if !p.detail.is_empty() {
            details.push(p.detail);
        }
        results.extend(p.tasks);
    }
    let stage = match &stop {
        Some((stage, why)) => {
            details.push(why.clone());
            *stage
        }
        None => Stage::Full,
    };
    let mut e = Evaluation::from_tasks(
        split,
        stage,
        results,
        usage,
        wall_ms,
        outcome,
        details.join("\n---\n"),
        bootstrap_samples,
    );
    if let (Some(g), Some(tiers)) = (&mut e.guard, tiers) {
        g.tiers = tiers;
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::testing::{runner, tasks};

    const STAGES: Stages = Stages {
        fraction: 0.25,
        threshold: 0.8,
        bootstrap_samples: 100,
    };

    #[test]
    fn a_weak_start_stops_at_the_cascade() {
        let pattern = [0.0; 20];
        let mut ran = 0;
        let e = evaluate_staged(&tasks(20), Some(0.5), &STAGES, runner(&pattern, &mut ran)).unwrap();
        assert_eq!((e.stage, ran, e.tasks.len()), (Stage::Cascade, 5, 5));
        assert!(e.detail.contains("stopped after 5 of 20 tasks"), "{}", e.detail);
    }

    #[test]
    fn a_decided_loser_stops_once_the_bar_is_out_of_reach() {
        // 3/5 passes the cascade (0.6 >= 0.8 × 0.7 = 0.56), then zeros: after 10 tasks at most
        // (3 + 10) / 20 = 0.65 >= 0.56 is still reachable; after 15, (3 + 5) / 20 = 0.4 is not.
        let mut pattern = [0.0; 20];
        pattern[..3].fill(1.0);
        let mut ran = 0;
        let e = evaluate_staged(&tasks(20), Some(0.7), &STAGES, runner(&pattern, &mut ran)).unwrap();
        assert_eq!((e.stage, ran), (Stage::Stopped, 15));
    }

    #[test]
    fn winners_and_seeds_run_every_task() {
        let pattern = [1.0; 20];
        let mut ran = 0;
        let e = evaluate_staged(&tasks(20), Some(0.5), &STAGES, runner(&pattern, &mut ran)).unwrap();
        assert_eq!((e.stage.as_str(), ran, e.mean), ("full", 20, 1.0));
        let mut ran = 0;
        let e = evaluate_staged(&tasks(20), None, &STAGES, runner(&[0.0; 20], &mut ran)).unwrap();
        assert_eq!((e.stage.as_str(), ran), ("full", 20), "no parent: no bar");
        let off = Stages {
            fraction: 0.0,
            ..STAGES
        };
        let mut ran = 0;
        evaluate_staged(&tasks(20), Some(0.9), &off, runner(&[0.0; 20], &mut ran)).unwrap();
        assert_eq!(ran, 20, "fraction 0 turns staging off");
    }
}
