//! Steps in flight together (`search.steps_in_flight`, K): while one step's candidate is
//! evaluated, the next steps' proposals are already being written and checked.
//!
//! Invariants that keep a run resumable and reproducible:
//! - **The lag rule.** Step N reads the archive through a view that shows the steps up to
//!   N − K and nothing later (`Archive::view_upto`), so its choices are a pure function of
//!   (config, N, those steps), however the calls of the steps in flight are timed and wherever
//!   the run is resumed. Two exceptions wait for more: a proposal step sees every seed, and
//!   the held-out test step sees every step before it (`visible_upto`).
//! - **Commits in step order**, one transaction each, so the archive always holds a prefix of
//!   the run: kill -9 loses only steps in flight, which a resume redoes (their model calls
//!   come from the cache), and duplicates nothing.
//! - **K = 1 is the one-step-at-a-time loop**: the view then shows every committed step, and
//!   the loop uses the archive itself.
//!
//! Two steps in flight can write the same program, neither seeing the other's. The later one
//! is stored as a duplicate of the first when it commits, deterministically, since commits
//! run in step order.

use std::collections::BTreeMap;
use std::ops::Deref;

use super::*;

/// What one step reads and spends through: the archive as the lag rule lets it see it, and
/// a meta-model gateway whose totals are the step's own. Everything else is the search's.
pub(super) struct Step<'a> {
    core: &'a Core,
    pub(super) archive: &'a Archive,
    pub(super) meta: Gateways,
    /// The last step whose rows this step may see; None: every committed step.
    pub(super) visible_upto: Option<i64>,
}

impl Deref for Step<'_> {
    type Target = Core;
    fn deref(&self) -> &Core {
        self.core
    }
}

impl<'a> Step<'a> {
    pub(super) fn new(core: &'a Core, archive: &'a Archive, visible_upto: Option<i64>) -> Self {
        Self {
            core,
            archive,
            meta: core.meta.scoped(),
            visible_upto,
        }
    }

    /// Runs step `step` as its kind says; the record is what `commit_step` stores.
    pub(super) fn run(&self, step: u64, bar: &ProgressBar) -> Result<StepRecord> {
        let mut record = match self.step_kind(step) {
            StepKind::Done => unreachable!("the loop stops before the last step"),
            StepKind::Seed(i) => self.seed_step(step, i, bar)?,
            StepKind::Propose { generation } => self.propose_step(step, generation, bar)?,
            StepKind::Test => self.test_step(step, self.exp.search.test_top_k, false, bar)?,
        };
        let races: Vec<_> = record.proposals.iter().filter_map(|p| p.race.clone()).collect();
        record.events.extend(races.into_iter().map(|r| ("race".to_string(), r)));
        Ok(record)
    }
}

impl Search {
    /// Runs the remaining steps from `start`, up to `k` at once; returns how the run ended
    /// when a stop was asked for, None when every step ran.
    pub(super) fn run_pipelined(&mut self, start: u64, k: u64, bar: &ProgressBar) -> Result<Option<RunEnd>> {
        let Search { archive, core } = self;
        let core: &Core = core;
        std::thread::scope(|scope| {
            let (tx, rx) = crossbeam_channel::unbounded::<(u64, Result<StepRecord>)>();
            let (mut next_start, mut next_commit) = (start, start);
            let mut finished: BTreeMap<u64, StepRecord> = BTreeMap::new();
            let mut running = 0usize;
            let mut failure: Option<anyhow::Error> = None;
            let mut stopping = false;
            loop {
                while failure.is_none() && !stopping && next_start < next_commit + k {
                    let kind = core.step_kind(next_start);
                    if matches!(kind, StepKind::Done) {
                        break;
                    }
                    let upto = visible_upto(kind, next_start, k, core.plan().seeds);
                    if (next_commit as i64) <= upto {
                        break; // it must see a step not committed yet
                    }
                    let view = match Archive::view_upto(archive.path(), upto) {
                        Ok(v) => v,
                        Err(e) => {
                            failure = Some(e);
                            break;
                        }
                    };
                    let (step, tx) = (next_start, tx.clone());
                    scope.spawn(move || {
                        let result = Step::new(core, &view, Some(upto)).run(step, bar);
                        let _ = tx.send((step, result));
                    });
                    running += 1;
                    next_start += 1;
                }
                if running == 0 {
                    break;
                }
                let (step, result) = rx.recv().expect("a step thread always reports");
                running -= 1;
                match result {
                    Ok(record) => {
                        finished.insert(step, record);
                    }
                    Err(e) => {
                        failure.get_or_insert(e);
                    }
                }
                while failure.is_none() {
                    let Some(record) = finished.remove(&next_commit) else {
                        break;
                    };
                    if let Err(e) = settle_duplicates(archive, record).and_then(|r| core.store(archive, r, bar)) {
                        failure = Some(e);
                        break;
                    }
                    next_commit += 1;
                    stopping |= crate::host::stop_requested().is_some();
                }
            }
            match failure {
                Some(e) => Err(e),
                None if stopping => core.interrupted(archive, next_commit, bar),
                None => Ok(None),
            }
        })
    }
}

/// The last step that step `step` (of kind `kind`) sees, with `k` steps in flight: N − K by
/// the lag rule, but never fewer than every seed for a proposal (so the first proposals
/// have parents to choose from), and every step before it for the held-out test.
fn visible_upto(kind: StepKind, step: u64, k: u64, seeds: u64) -> i64 {
    let lagged = step as i64 - k as i64;
    match kind {
        StepKind::Test => step as i64 - 1,
        StepKind::Propose { .. } => lagged.max(seeds as i64 - 1),
        StepKind::Seed(_) | StepKind::Done => lagged,
    }
}

/// A program another step in flight committed first is this step's duplicate: stored as
/// such, its evaluation dropped (the archive keeps the first).
fn settle_duplicates(archive: &Archive, mut record: StepRecord) -> Result<StepRecord> {
    let mut dropped = Vec::new();
    for p in &mut record.proposals {
        let Some(c) = &p.candidate else { continue };
        let evaluated = matches!(
            p.status,
            ProposalStatus::Evaluated | ProposalStatus::RuntimeError | ProposalStatus::ContractBreach
        );
        if evaluated && archive.has_candidate(&c.id)? {
            p.status = ProposalStatus::Duplicate;
            p.reason = format!(
                "same program as candidate {}, stored by an earlier step while this one was in flight",
                &c.id[..12.min(c.id.len())]
            );
            p.evaluation = None;
            p.race = None;
            dropped.push(serde_json::Value::String(c.id.clone()));
        }
    }
    if !dropped.is_empty() {
        record
            .events
            .retain(|(kind, detail)| kind != "race" || !dropped.contains(&detail["candidate"]));
        // The step's credit counts only what it kept.
        let gains = super::proposers::gains(&record.proposals);
        for (kind, detail) in &mut record.events {
            if kind == "credit" {
                detail["improved"] = json!(!gains.is_empty());
                detail["gain"] = json!(gains.iter().copied().fold(0.0, f64::max));
            }
        }
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::NewRun;

    fn evaluated(id: &str, gain: f64) -> ProposalRecord {
        ProposalRecord {
            attempt: 0,
            kind: "op:add_stop".into(),
            parents: vec![],
            status: ProposalStatus::Evaluated,
            reason: "val 1.000".into(),
            candidate: Some(Candidate {
                id: id.into(),
                kind: CandidateKind::Agent,
                name: id.into(),
                thought: String::new(),
                code: "def forward(task):\n    return '7'\n".into(),
                operator: "op:add_stop".into(),
                generation: 1,
                parents: vec![],
                fingerprint: "f".into(),
            }),
            evaluation: Some(Evaluation {
                split: Split::Val,
                stage: Stage::Full,
                mean: 1.0,
                ci_lo: 1.0,
                ci_hi: 1.0,
                usage: Default::default(),
                wall_ms: 1.0,
                outcome: Outcome::Ok,
                detail: String::new(),
                tasks: vec![],
                guard: None,
            }),
            prompt: None,
            reply: None,
            race: Some(json!({"candidate": id, "paired": {"diff": gain}})),
            model: None,
        }
    }

    /// A program an earlier step in flight stored first becomes this step's duplicate: its
    /// evaluation, its race and its share of the step's credit go; a new program stays.
    #[test]
    fn a_program_stored_by_an_earlier_step_in_flight_is_settled_as_a_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let run = NewRun {
            name: "t".into(),
            seed: 1,
            domain: "arith".into(),
            config_toml: "name = \"t\"\n[domain]\nname = \"arith\"\n".into(),
        };
        let mut archive = Archive::create(&dir.path().join("a.db"), &run, &[]).unwrap();
        let first = StepRecord {
            step: 0,
            proposals: vec![evaluated("aaa", 0.5)],
            ..Default::default()
        };
        archive.commit_step(&first).unwrap();
        let mut later = StepRecord {
            step: 1,
            proposals: vec![evaluated("aaa", 0.5)],
            events: vec![
                ("race".into(), json!({"candidate": "aaa", "paired": {"diff": 0.5}})),
                (
                    "credit".into(),
                    json!({"arm": "op:add_stop", "improved": true, "gain": 0.5}),
                ),
            ],
            ..Default::default()
        };
        let settled = settle_duplicates(&archive, later.clone()).unwrap();
        let p = &settled.proposals[0];
        assert_eq!(p.status, ProposalStatus::Duplicate);
        assert!(p.evaluation.is_none() && p.race.is_none(), "{p:?}");
        assert!(p.reason.contains("while this one was in flight"), "{}", p.reason);
        assert_eq!(settled.events.len(), 1, "the race is gone: {:?}", settled.events);
        assert_eq!(settled.events[0].1["improved"], false);
        assert_eq!(settled.events[0].1["gain"], 0.0);

        later.proposals[0] = evaluated("bbb", 0.25);
        let kept = settle_duplicates(&archive, later).unwrap();
        assert_eq!(kept.proposals[0].status, ProposalStatus::Evaluated);
        assert_eq!(kept.events.len(), 2);
        assert_eq!(kept.events[1].1["improved"], true);
    }
}
