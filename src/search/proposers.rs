//! Which proposer a step tries and what it gets credit for: the arms of the bandit, the
//! LLM-free operator and instruction proposals, the proposal-kind draw and the step's
//! `credit` event.

use super::*;

/// What a proposal step tries.
#[derive(Debug, Clone, Copy)]
pub(super) enum Arm {
    /// An LLM-free operator: this one first (the bandit's choice), or any in random order.
    Operator(Option<&'static str>),
    /// The meta-model rewrites one instruction string of the parent.
    Instruction,
    /// The meta-model writes a program.
    Llm(LlmKind),
}

impl Arm {
    pub(super) fn name(&self) -> String {
        match self {
            Arm::Operator(Some(op)) => format!("op:{op}"),
            Arm::Operator(None) => "operators".into(),
            Arm::Instruction => "op:llm_instruction".into(),
            Arm::Llm(kind) => kind.as_str().into(),
        }
    }
}

impl Step<'_> {
    /// The arm a Thompson step tries (`search::bandit`), and every arm's draw: each
    /// operator that applies to `parent`, and each LLM kind the config gives a weight, its
    /// credit summed from the run's `credit` events.
    pub(super) fn thompson_arm(
        &self,
        parent: &Candidate,
        has_other: bool,
        credit: &[(Option<u64>, serde_json::Value)],
        rng: &mut ChaCha8Rng,
    ) -> Result<(Arm, serde_json::Value)> {
        let mix = &self.exp.proposers;
        let mut arms: Vec<(bandit::Offer, Arm)> = Vec::new();
        let offer = |name: String, specific: bool| bandit::Offer { name, specific };
        if mix.operators > 0.0 {
            arms.extend(
                operators::applicable(
                    parent.kind,
                    has_other,
                    self.templates.answer(),
                    self.templates.agent_models().len(),
                )
                .map(|o| {
                    (
                        offer(format!("op:{}", o.name), o.answers != operators::Answers::Any),
                        Arm::Operator(Some(o.name)),
                    )
                }),
            );
        }
        if mix.llm_instruction > 0.0 && parent.kind == CandidateKind::Agent {
            arms.push((offer("op:llm_instruction".into(), false), Arm::Instruction));
        }
        for (w, kind) in [
            (mix.rewrite, LlmKind::Rewrite),
            (mix.diff, LlmKind::Diff),
            (mix.crossover, LlmKind::Crossover),
        ] {
            if w > 0.0 && (kind != LlmKind::Crossover || has_other) {
                arms.push((offer(kind.as_str().to_string(), false), Arm::Llm(kind)));
            }
        }
        if arms.is_empty() {
            return Ok((Arm::Operator(None), json!({})));
        }
        let stats = bandit::tally(credit, bandit::Cost::TrialCalls);
        let offers: Vec<bandit::Offer> = arms.iter().map(|(o, _)| o.clone()).collect();
        let tried = mix.untried_first.then(|| bandit::tried(credit));
        let (pick, values) = bandit::choose(&offers, &stats, tried.as_ref(), rng);
        let draws: serde_json::Map<String, serde_json::Value> = offers
            .iter()
            .zip(&values)
            .map(|(o, v)| (o.name.clone(), json!((v * 1e4).round() / 1e4)))
            .collect();
        Ok((arms.swap_remove(pick).1, serde_json::Value::Object(draws)))
    }

    /// The meta-model rewrites one instruction string of `parent`.
    pub(super) fn instruction_proposal(
        &self,
        step: u64,
        generation: u32,
        parent: &Candidate,
        meta: &Gateway,
        rng: &mut ChaCha8Rng,
        bar: &ProgressBar,
    ) -> Result<ProposalRecord> {
        bar.set_message(format!(
            "gen {generation}: instruction rewrite (meta model) of {}",
            parent.name
        ));
        let sample = self.meta_sample_base(step);
        match instruction::propose(rng, meta, &self.templates, parent, &self.domain.description, sample)? {
            Ok(p) => self.check_and_evaluate(step, generation, 0, p, bar),
            Err(f) => {
                let status = if f.llm_error {
                    ProposalStatus::LlmError
                } else {
                    ProposalStatus::ParseError
                };
                self.say(
                    bar,
                    &format!("[step {step}] op:llm_instruction     {}: {}", status.as_str(), f.reason),
                );
                let mut r = failed(0, "op:llm_instruction", vec![parent.id.clone()], status, f.reason, None);
                r.prompt = f.prompt;
                r.reply = f.reply;
                Ok(r)
            }
        }
    }

    /// An LLM-free operator on `parent` (and `other`): `first` if it applies, else the first
    /// of the others, in random order, whose result passes check and is new.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn operator_proposal(
        &self,
        step: u64,
        generation: u32,
        parent: &Candidate,
        other: Option<&Candidate>,
        first: Option<&str>,
        rng: &mut ChaCha8Rng,
        bar: &ProgressBar,
    ) -> Result<ProposalRecord> {
        bar.set_message(format!("gen {generation}: operators on {}", parent.name));
        let is_known = |normalized: &str| {
            self.archive
                .has_candidate(&candidate_id(self.domain.kind, normalized))
                .unwrap_or(false)
        };
        match operators::propose(rng, parent, other, &self.templates, &self.checker, &is_known, first) {
            Ok(p) => self.check_and_evaluate(step, generation, 0, p, bar),
            Err(reason) => {
                self.say(bar, &format!("[step {step}] operators: {}", truncate(&reason, 120)));
                Ok(failed(
                    0,
                    "op:none",
                    vec![parent.id.clone()],
                    ProposalStatus::CheckFailed,
                    reason,
                    None,
                ))
            }
        }
    }
}

/// How much each attempt that ran the whole validation pool beat its parent by, task by task
/// (positive gains only).
pub(super) fn gains(records: &[ProposalRecord]) -> Vec<f64> {
    records
        .iter()
        .filter(|r| {
            r.evaluation
                .as_ref()
                .is_some_and(|e| e.stage == Stage::Full && e.outcome == Outcome::Ok)
        })
        .filter_map(|r| r.race.as_ref()?["paired"]["diff"].as_f64())
        .filter(|d| *d > 0.0)
        .collect()
}

/// The step's `credit` event: the arm tried, the kind that proposed (an operator the arm fell
/// back to, or the arm itself when nothing was proposed), whether any attempt beat its parent
/// on the whole validation pool and by how much, and the model calls the step spent.
pub(super) fn credit(
    arm: &Arm,
    draws: Option<serde_json::Value>,
    records: &[ProposalRecord],
    meta_calls: u64,
) -> serde_json::Value {
    let kind = records
        .iter()
        .map(|r| bandit::arm_of(&r.kind).to_string())
        .find(|k| k != "op:none")
        .unwrap_or_else(|| arm.name());
    let gains = gains(records);
    let eval_calls: u64 = records
        .iter()
        .filter_map(|r| r.evaluation.as_ref())
        .map(|e| e.usage.calls)
        .sum();
    // What trying the arm cost: its evaluations up to their first look. A winner's run over
    // the rest of the pool is spent on any winner, and would make success look expensive.
    let trial_calls: u64 = records
        .iter()
        .filter_map(|r| {
            let e = r.evaluation.as_ref()?;
            let ran = e.tasks.len().max(1) as u64;
            let first = r.race.as_ref().and_then(|x| x["looks"][0].as_u64()).unwrap_or(ran);
            Some(e.usage.calls * first.min(ran) / ran)
        })
        .sum();
    json!({
        "arm": arm.name(),
        "kind": kind,
        "improved": !gains.is_empty(),
        "gain": gains.iter().copied().fold(0.0, f64::max),
        "calls": meta_calls + eval_calls,
        "trial_calls": meta_calls + trial_calls,
        "draws": draws,
    })
}

/// Picks the proposal kind by the configured weights; `None` is `operators`.
pub(super) fn choose_kind(mix: &crate::config::ProposerMix, rng: &mut ChaCha8Rng) -> Option<LlmKind> {
    let weights = [
        (None, mix.operators),
        (Some(LlmKind::Rewrite), mix.rewrite),
        (Some(LlmKind::Diff), mix.diff),
        (Some(LlmKind::Crossover), mix.crossover),
    ];
    let total: f64 = weights.iter().map(|(_, w)| w).sum();
    let mut x = rng.random_range(0.0..total);
    for (kind, w) in weights {
        if x < w {
            return kind;
        }
        x -= w;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::testing::ok_result;
    use crate::llm::Usage;

    /// An evaluated proposal of `kind` that ran `ran` tasks with 2 model calls each, ended at
    /// `stage`, and was `diff` ahead of its rival, its first look at `first` tasks.
    fn record(kind: &str, stage: &str, ran: usize, first: usize, diff: f64) -> ProposalRecord {
        let tasks = (0..ran).map(|i| ok_result(&format!("t{i}"), 1.0)).collect();
        let usage = Usage {
            calls: 2 * ran as u64,
            ..Usage::default()
        };
        let e = Evaluation::from_tasks(
            Split::Val,
            Stage::parse(stage).unwrap(),
            tasks,
            usage,
            1.0,
            Outcome::Ok,
            String::new(),
            10,
        );
        let mut r = failed(0, kind, vec![], ProposalStatus::Evaluated, String::new(), None);
        r.evaluation = Some(e);
        r.race = Some(json!({"looks": [first], "paired": {"diff": diff}}));
        r
    }

    #[test]
    fn credit_counts_a_winner_once_and_charges_the_trial_not_the_win() {
        let won = credit(
            &Arm::Operator(Some("wrap_vote")),
            None,
            &[record("op:wrap_vote", "full", 80, 10, 0.2)],
            3,
        );
        assert_eq!(won["improved"], true);
        assert_eq!(won["gain"], 0.2);
        assert_eq!(won["calls"], 3 + 160, "the report sees every call");
        assert_eq!(won["trial_calls"], 3 + 20, "the bandit pays for the first look");
        let raced = credit(
            &Arm::Operator(Some("tune_constant")),
            None,
            &[record("op:tune_constant", "raced", 10, 10, -0.1)],
            0,
        );
        assert_eq!(
            (raced["improved"].as_bool(), raced["calls"].as_u64()),
            (Some(false), Some(20))
        );
        // A full run that is not ahead (racing off) is no improvement either.
        let tied = credit(
            &Arm::Instruction,
            None,
            &[record("op:llm_instruction", "full", 80, 80, 0.0)],
            1,
        );
        assert_eq!(tied["improved"], false);
    }

    #[test]
    fn an_arm_that_fell_back_credits_the_operator_that_proposed() {
        let fell_back = credit(
            &Arm::Operator(Some("add_stop")),
            None,
            &[record("op:wrap_extract", "raced", 10, 10, 0.0)],
            0,
        );
        assert_eq!(
            (fell_back["arm"].as_str(), fell_back["kind"].as_str()),
            (Some("op:add_stop"), Some("op:wrap_extract"))
        );
        let nothing = credit(
            &Arm::Llm(LlmKind::Rewrite),
            None,
            &[failed(
                0,
                "rewrite",
                vec![],
                ProposalStatus::ParseError,
                String::new(),
                None,
            )],
            4,
        );
        assert_eq!(
            (nothing["kind"].as_str(), nothing["calls"].as_u64()),
            (Some("rewrite"), Some(4))
        );
        let debug = credit(
            &Arm::Llm(LlmKind::Diff),
            None,
            &[record("diff:debug1", "full", 20, 20, 0.1)],
            2,
        );
        assert_eq!(
            (debug["kind"].as_str(), debug["improved"].as_bool()),
            (Some("diff"), Some(true))
        );
    }

    #[test]
    fn the_kind_draw_follows_the_weights_and_never_picks_a_zero_one() {
        let mix = |operators: f64, rewrite: f64, diff: f64| crate::config::ProposerMix {
            operators,
            rewrite,
            diff,
            crossover: 0.0,
            ..Default::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let draws: Vec<Option<LlmKind>> = (0..4000).map(|_| choose_kind(&mix(3.0, 1.0, 0.0), &mut rng)).collect();
        let operators = draws.iter().filter(|k| k.is_none()).count();
        assert!(
            (2800..3200).contains(&operators),
            "{operators} of 4000, expected about 3000"
        );
        assert!(draws
            .iter()
            .all(|k| !matches!(k, Some(LlmKind::Diff | LlmKind::Crossover))));
        let only_diff = (0..100).map(|_| choose_kind(&mix(0.0, 0.0, 1.0), &mut rng));
        assert!(only_diff.into_iter().all(|k| matches!(k, Some(LlmKind::Diff))));
    }
}
