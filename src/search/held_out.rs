//! The held-out test: the last step of a run, and `metaforge test` on a finished run. Test
//! scores are written here and read by reports, never by selection.

use super::*;

impl Search {
    /// Held-out test on demand, for a finished run: the `top_k` best validation candidates
    /// (and the best seed), or with `front` every member of the Pareto front too. Candidates
    /// already tested are skipped; the new evaluations are filed under the run's test step.
    pub fn test_on_demand(&mut self, top_k: usize, front: bool) -> Result<usize> {
        if !self.archive.is_finished()? {
            return Err(crate::types::BadInput::wrap(anyhow::anyhow!(
                "{} is still in progress; fix: `metaforge resume {}` first (its last step tests the best candidates)",
                self.archive.path().display(),
                self.archive.path().display()
            )));
        }
        let bar = if self.quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(1)
        };
        let test_step = self.total_steps() - 1;
        let record = Step::new(&self.core, &self.archive, None).test_step(test_step, top_k, front, &bar)?;
        let tested = record.evaluations.len();
        self.core.store(&mut self.archive, record, &bar)?;
        bar.finish_and_clear();
        Ok(tested)
    }
}

impl Step<'_> {
    pub(super) fn test_step(&self, step: u64, top_k: usize, with_front: bool, bar: &ProgressBar) -> Result<StepRecord> {
        let mut scored = self.archive.scored(Split::Val)?;
        let front: Vec<String> = if with_front {
            crate::archive::pareto_front(&scored, &self.exp.search.objectives)
                .into_iter()
                .map(|i| scored[i].id.clone())
                .collect()
        } else {
            Vec::new()
        };
        scored.retain(|s| s.ok);
        scored.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.tokens.cmp(&b.tokens)));
        // The best seed and the best discovered agent are always tested too, so "did search
        // beat the seeds?" has an answer, paired on the same held-out tasks.
        let board = self.archive.leaderboard()?;
        let best = |seed: bool| {
            board.iter().find(|r| {
                (r.operator == "seed") == seed
                    && r.val
                        .as_ref()
                        .is_some_and(|v| v.outcome == "ok" && v.stage == Stage::Full)
            })
        };
        let mut chosen: Vec<String> = scored.iter().take(top_k).map(|s| s.id.clone()).collect();
        for id in front
            .into_iter()
            .chain(best(false).map(|r| r.id.clone()))
            .chain(best(true).map(|r| r.id.clone()))
        {
            if !chosen.contains(&id) {
                chosen.push(id);
            }
        }
        let mut evaluations = Vec::new();
        for id in chosen {
            if self.archive.has_evaluation(&id, Split::Test)? {
                continue;
            }
            let c = self.archive.candidate(&id)?.context("candidate vanished")?;
            bar.set_message(format!("held-out test: {}", c.name));
            let (e, _) = self.evaluate(&c.code, &self.test, Split::Test, &c.name, Rivals::default(), bar)?;
            self.say(
                bar,
                &format!(
                    "[test] {:<60} test {:.2} [{:.2}, {:.2}]",
                    truncate(&c.name, 60),
                    e.mean,
                    e.ci_lo,
                    e.ci_hi
                ),
            );
            evaluations.push((id, e));
        }
        Ok(StepRecord {
            step,
            generation: self.exp.search.generations,
            evaluations,
            ..Default::default()
        })
    }
}
