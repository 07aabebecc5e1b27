//! Racing: a proposal earns more validation tasks only while it stays ahead of its rival on
//! the same tasks.
//!
//! Why: on a few dozen tasks a score's 95% interval spans tens of points, so ranking
//! proposals by it is mostly chance, and a larger validation pool for every proposal costs
//! more than the search can afford. Most proposals are no better than their parent. Racing
//! (successive halving against a fixed rival) runs `first` tasks, then doubles them,
//! comparing per task with the rival (the parent, or for a seed the best seed so far) on
//! the tasks run so far; a proposal the rule (`RaceRule`) judges behind at a look is dropped
//! there, stage `raced`. Only a proposal ahead on the whole pool ends `full`, so selection
//! and the Pareto front see only programs that beat what they were measured against, on many
//! tasks.
//!
//! Why a tie at the first look goes on by default: with a strong parent most proposals
//! answer the first tasks exactly as it does, so a tie there is the common case and is no
//! evidence either way, and a winner whose gain lies in rarer tasks was dropped before it
//! could show it. Going on once costs one more look for such proposals; a proposal still
//! tied then is dropped, so the budget is not spent on copies of the parent.

use anyhow::Result;

use super::paired::Paired;
use super::staged::combine;
use super::{Evaluation, Outcome, Stage};
use crate::domain::Task;
use crate::types::RaceRule;

/// Whether `rule` drops a proposal at a look before the last: `look` counts from 0.
fn drops(rule: RaceRule, look: usize, paired: &Paired) -> bool {
    match rule {
        RaceRule::Ahead => paired.diff <= 0.0,
        RaceRule::FirstTieGoesOn => paired.diff < 0.0 || (paired.diff == 0.0 && look > 0),
        RaceRule::Sequential => sign_test_worse(paired.wins, paired.losses) < SEQUENTIAL_ALPHA,
    }
}

/// The evidence a sequential race needs to drop a proposal: the one-sided sign test's p.
const SEQUENTIAL_ALPHA: f64 = 0.1;

/// P(at most `wins` wins in `wins + losses` fair coin flips): small when the tasks where the
/// two differ mostly favour the rival.
fn sign_test_worse(wins: usize, losses: usize) -> f64 {
    let n = wins + losses;
    let mut term = 0.5f64.powi(n as i32);
    let mut p = term;
    for k in 1..=wins {
        term *= (n - k + 1) as f64 / k as f64;
        p += term;
    }
    p.min(1.0)
}

/// What a raced evaluation gave: the evaluation and how it compared with the rival.
pub struct Raced {
    pub evaluation: Evaluation,
    /// The comparison on every task the proposal ran (None without a rival).
    pub paired: Option<Paired>,
    /// Tasks run at each look.
    pub looks: Vec<usize>,
}

/// The evaluations' tasks (the parts of one raced run, or one whole run) compared with the
/// rival's scores on the same tasks.
pub fn compare_with_rival(parts: &[Evaluation], rival: &[(String, f64)], bootstrap_samples: usize) -> Paired {
    let mine: Vec<(String, f64)> = parts
        .iter()
        .flat_map(|p| &p.tasks)
        .map(|t| (t.task_id.clone(), t.score))
        .collect();
    Paired::compare(&mine, rival, bootstrap_samples)
}

/// Evaluates `tasks` raced against `rival` (its per-task scores on the same pool). With
/// `first` = 0 every task runs at once; a rival is still compared at the end, for credit.
pub fn evaluate_raced(
    tasks: &[Task],
    rival: Option<&[(String, f64)]>,
    first: usize,
    rule: RaceRule,
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
    let compare = |parts: &[Evaluation]| compare_with_rival(parts, rival, bootstrap_samples);
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
        let behind = racing
            && if done == n {
                paired.diff <= 0.0
            } else {
                drops(rule, looks.len() - 1, &paired)
            };
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
        let r = evaluate_raced(
            &tasks(80),
            Some(&rival(&parent)),
            10,
            RaceRule::Ahead,
            100,
            runner(&parent, &mut ran),
        )
        .unwrap();
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
        let r = evaluate_raced(
            &tasks(80),
            Some(&rival(&parent)),
            10,
            RaceRule::default(),
            100,
            runner(&better, &mut ran),
        )
        .unwrap();
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
        let r = evaluate_raced(
            &tasks(80),
            Some(&rival(&parent)),
            10,
            RaceRule::default(),
            100,
            runner(&pattern, &mut ran),
        )
        .unwrap();
        assert_eq!(
            (r.evaluation.stage.as_str(), ran, r.looks.clone()),
            ("raced", 40, vec![10, 20, 40])
        );
    }

    #[test]
    fn without_a_rival_or_racing_every_task_runs_once() {
        let pattern = vec![0.0; 30];
        let mut ran = 0;
        let r = evaluate_raced(
            &tasks(30),
            None,
            10,
            RaceRule::default(),
            100,
            runner(&pattern, &mut ran),
        )
        .unwrap();
        assert_eq!(
            (r.evaluation.stage.as_str(), ran, r.paired.is_none()),
            ("full", 30, true)
        );
        let mut ran = 0;
        let r = evaluate_raced(
            &tasks(30),
            Some(&rival(&[1.0; 30])),
            0,
            RaceRule::default(),
            100,
            runner(&pattern, &mut ran),
        )
        .unwrap();
        assert_eq!((r.evaluation.stage.as_str(), ran), ("full", 30), "first = 0: no racing");
        assert_eq!(r.paired.unwrap().losses, 30, "but still compared, for credit");
    }

    /// The rules differ on ties and small deficits only: a tie at the first look drops a
    /// proposal under `ahead`, goes on once under `first_tie_goes_on` and goes on under
    /// `sequential` until the discordant tasks say worse.
    #[test]
    fn the_race_rules_decide_ties_as_documented() {
        let parent = [1.0, 0.0].repeat(40);
        // Ties its parent on the first 20 tasks, then wins one task in four.
        let late: Vec<f64> = (0..80)
            .map(|i| if i >= 20 && i % 4 == 1 { 1.0 } else { parent[i] })
            .collect();
        let race = |rule, pattern: &[f64]| {
            let mut ran = 0;
            let r = evaluate_raced(
                &tasks(80),
                Some(&rival(&parent)),
                10,
                rule,
                100,
                runner(pattern, &mut ran),
            )
            .unwrap();
            (r.evaluation.stage.as_str().to_string(), r.looks)
        };
        assert_eq!(race(RaceRule::Ahead, &late), ("raced".into(), vec![10]));
        assert_eq!(
            race(RaceRule::FirstTieGoesOn, &late),
            ("raced".into(), vec![10, 20]),
            "still tied at 20"
        );
        assert_eq!(race(RaceRule::Sequential, &late), ("full".into(), vec![10, 20, 40, 80]));
        // A late winner that ties only the first look survives the default rule.
        let early: Vec<f64> = (0..80)
            .map(|i| if i >= 10 && i % 4 == 1 { 1.0 } else { parent[i] })
            .collect();
        assert_eq!(race(RaceRule::Ahead, &early), ("raced".into(), vec![10]));
        assert_eq!(
            race(RaceRule::FirstTieGoesOn, &early),
            ("full".into(), vec![10, 20, 40, 80])
        );
        // Behind on the tasks where they differ: dropped by all, `sequential` once the sign
        // test says so (3 losses of 3: p = 0.125, then 5 of 5: p = 0.03).
        let worse: Vec<f64> = (0..80).map(|i| if i % 4 == 0 { 0.0 } else { parent[i] }).collect();
        assert_eq!(race(RaceRule::Ahead, &worse), ("raced".into(), vec![10]));
        assert_eq!(race(RaceRule::FirstTieGoesOn, &worse), ("raced".into(), vec![10]));
        assert_eq!(race(RaceRule::Sequential, &worse), ("raced".into(), vec![10, 20]));
        // An identical program ties to the end and never ends `full`.
        assert_eq!(
            race(RaceRule::Sequential, &parent),
            ("raced".into(), vec![10, 20, 40, 80])
        );
    }

    #[test]
    fn the_sign_test_is_one_sided_and_exact() {
        assert_eq!(sign_test_worse(0, 0), 1.0);
        assert!((sign_test_worse(0, 3) - 0.125).abs() < 1e-12);
        assert!((sign_test_worse(1, 4) - 6.0 / 32.0).abs() < 1e-12);
        assert!(sign_test_worse(5, 1) > 0.9);
    }
}
