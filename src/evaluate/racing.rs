//! Racing: a proposal earns more validation tasks only while it stays ahead of its rival on
//! the same tasks.
//!
//! Why: on a few dozen tasks a score's 95% interval spans tens of points, so ranking
//! proposals by it is mostly chance, and a larger validation pool for every proposal costs
//! more than the search can afford. Most proposals are no better than their parent. Racing
//! (successive halving against a fixed rival) runs `first` tasks, then doubles them,
//! comparing per task with the rival (the parent, or for a seed the best seed so far) on
//! the tasks run so far; a proposal that is not ahead at a look is dropped there, stage
//! `raced`. Only a proposal still ahead on the whole pool ends `full`, so selection and the
//! Pareto front see only programs that beat what they were measured against, on many tasks.

use anyhow::Result;

use super::paired::Paired;
use super::staged::combine;
use super::{Evaluation, Outcome, Stage};
use crate::domain::Task;

/// What a raced evaluation gave: the evaluation and how it compared with the rival.
pub struct Raced {
    pub evaluation: Evaluation,
    /// The comparison on every task the proposal ran (None without a rival).
    pub paired: Option<Paired>,
    /// Tasks run at each look.
    pub looks: Vec<usize>,
}

/// Evaluates `tasks` raced against `rival` (its per-task scores on the same pool). With
/// `first` = 0 every task runs at once; a rival is still compared at the end, for credit.
pub fn evaluate_raced(
    tasks: &[Task],
    rival: Option<&[(String, f64)]>,
    first: usize,
    bootstrap_samples: usize,
    mut run: impl FnMut(&[Task]) -> Result<Evaluation>,
) -> Result<Raced> {
    let n = tasks.len();
    let Some(rival) = rival else {
        let evaluation = run(tasks)?;
        return Ok(Raced {
            looks: vec![evaluation.tasks.len()],
            evaluation,
            paired: None,
        });
    };
    let compare = |parts: &[Evaluation]| {
        let mine: Vec<(String, f64)> = parts
            .iter()
            .flat_map(|p| &p.tasks)
            .map(|t| (t.task_id.clone(), t.score))
            .collect();
        Paired::compare(&mine, rival, bootstrap_samples)
    };
    let racing = first > 0 && first < n;
    let mut parts: Vec<Evaluation> = Vec::new();
    let mut looks = Vec::new();
    let mut done = 0;
    let mut next = if racing { first } else { n };
    loop {
        let part = run(&tasks[done..next])?;
        let broke = part.outcome != Outcome::Ok;
        parts.push(part);
        done = next;
        looks.push(done);
        let paired = compare(&parts);
        let behind = racing && paired.diff <= 0.0;
        if broke || behind || done == n {
            let stop = if broke && done < n {
                Some((
                    Stage::Raced,
                    format!("stopped after {done} of {n} tasks: the candidate broke (see outcome)"),
                ))
            } else if behind {
                Some((
                    Stage::Raced,
                    format!(
                        "raced out after {done} of {n} tasks: {:+.3} against its rival on the same tasks ({} better, {} worse)",
                        paired.diff, paired.wins, paired.losses
                    ),
                ))
            } else {
                None
            };
            return Ok(Raced {
                evaluation: combine(parts, stop, bootstrap_samples),
                paired: Some(paired),
                looks,
            });
        }
        next = (done * 2).min(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::testing::{runner, tasks};

    fn rival(pattern: &[f64]) -> Vec<(String, f64)> {
        pattern.iter().enumerate().map(|(i, s)| (format!("t{i}"), *s)).collect()
    }

    #[test]
    fn a_proposal_no_better_than_its_rival_stops_at_the_first_look() {
        let parent = [1.0, 0.0].repeat(40);
        let mut ran = 0;
        let r = evaluate_raced(&tasks(80), Some(&rival(&parent)), 10, 100, runner(&parent, &mut ran)).unwrap();
        assert_eq!(
            (r.evaluation.stage.as_str(), ran, r.looks.clone()),
            ("raced", 10, vec![10])
        );
        assert!(
            r.evaluation.detail.contains("raced out after 10 of 80 tasks"),
            "{}",
            r.evaluation.detail
        );
    }

    #[test]
    fn a_better_proposal_doubles_its_tasks_until_the_pool_is_run() {
        let parent = [1.0, 0.0].repeat(40);
        let better: Vec<f64> = (0..80).map(|i| if i % 4 == 1 { 1.0 } else { parent[i] }).collect();
        let mut ran = 0;
        let r = evaluate_raced(&tasks(80), Some(&rival(&parent)), 10, 100, runner(&better, &mut ran)).unwrap();
        assert_eq!((r.evaluation.stage.as_str(), ran), ("full", 80));
        assert_eq!(r.looks, vec![10, 20, 40, 80]);
        let p = r.paired.unwrap();
        assert_eq!((p.n, p.wins, p.losses), (80, 20, 0));
    }

    #[test]
    fn one_that_falls_behind_later_is_dropped_at_that_look() {
        let parent = vec![0.5; 80];
        // Ahead on the first 20 tasks, behind from then on.
        let pattern: Vec<f64> = (0..80).map(|i| if i < 20 { 1.0 } else { 0.0 }).collect();
        let mut ran = 0;
        let r = evaluate_raced(&tasks(80), Some(&rival(&parent)), 10, 100, runner(&pattern, &mut ran)).unwrap();
        assert_eq!(
            (r.evaluation.stage.as_str(), ran, r.looks.clone()),
            ("raced", 40, vec![10, 20, 40])
        );
    }

    #[test]
    fn without_a_rival_or_racing_every_task_runs_once() {
        let pattern = vec![0.0; 30];
        let mut ran = 0;
        let r = evaluate_raced(&tasks(30), None, 10, 100, runner(&pattern, &mut ran)).unwrap();
        assert_eq!(
            (r.evaluation.stage.as_str(), ran, r.paired.is_none()),
            ("full", 30, true)
        );
        let mut ran = 0;
        let r = evaluate_raced(&tasks(30), Some(&rival(&[1.0; 30])), 0, 100, runner(&pattern, &mut ran)).unwrap();
        assert_eq!((r.evaluation.stage.as_str(), ran), ("full", 30), "first = 0: no racing");
        assert_eq!(r.paired.unwrap().losses, 30, "but still compared, for credit");
    }
}
