//! The loop: select -> propose -> check -> evaluate -> insert, one archive transaction per
//! step, resumable from the archive alone.
//!
//! What step N does is fixed by the config (`plan`). The random stream of step N is seeded
//! from (run seed, N), and every model call is cached in the archive, so re-running a step
//! after a crash reproduces it. Which proposer a step tries is `proposers`; what a prompt
//! shows of the archive is `context`; the held-out test is `held_out`.

pub mod bandit;
mod context;
mod held_out;
mod islands;
mod model_choice;
mod pipeline;
mod plan;
mod proposers;
mod run_files;

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use crate::archive::CallCache;
use crate::archive::{select_parent, Archive, NewRun, ParentSelection, ProposalRecord, ProposalStatus, StepRecord};
use crate::candidate::{candidate_id, docstring_header, Candidate, CandidateKind};
use crate::check::{Checker, Signature};
use crate::config::{Bandit, Experiment};
use crate::domain::{Domain, Task};
use crate::evaluate::paired::Paired;
use crate::evaluate::racing;
use crate::evaluate::staged::{evaluate_staged, Stages};
use crate::evaluate::{Evaluation, Evaluator, Outcome};
use crate::llm::{BackendFactory, Budget, Gateway, Gateways, Role};
use crate::propose::rewrite::{drop_one_spare, ContextCandidate, LlmKind, RewriteInput, RewriteSession};
use crate::propose::{instruction, operators, Proposal, Templates};
use crate::sandbox::Isolation;
use crate::types::{Split, Stage};

use context::fit_context;
use pipeline::Step;
use plan::StepKind;
use proposers::{choose_kind, credit, Arm};

/// How `Search::run` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    /// Every step ran; the run is marked finished.
    Finished,
    /// A signal asked to stop; every step up to `next_step` is committed and `resume`
    /// continues from there.
    Interrupted { signal: &'static str, next_step: u64 },
}

/// The conventional name of a stop signal, as stored in the `interrupted` event.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        nix::libc::SIGINT => "SIGINT",
        nix::libc::SIGTERM => "SIGTERM",
        nix::libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// Token signatures of archived programs by id, with the step that made each, and the last
/// archive row read into them.
type SignatureCache = (std::collections::HashMap<String, (u64, Signature)>, i64);

/// A run in progress: its archive, and everything else a step works with.
pub struct Search {
    archive: Archive,
    core: Core,
}

/// Everything of a search but its archive: what steps in flight share (each reads the
/// archive through its own view, `pipeline::Step`), so it must be `Sync`, and the archive's
/// connection is not.
pub struct Core {
    exp: Experiment,
    checker: Checker,
    templates: Templates,
    domain: Domain,
    val: Vec<Task>,
    test: Vec<Task>,
    meta: Gateways,
    agent: Gateways,
    seeds: Vec<(String, String)>,
    /// Game servers and no-memory plays when the domain is episodic (memory designs).
    episodic: Option<crate::episodic::Episodic>,
    /// Where evaluation shards run (`[executor]`): this machine or a Ray cluster.
    executor: crate::executor::Executor,
    /// `guards.contract`, compiled (its output fallback proved) once per process.
    agent_contract: Option<crate::guard::AgentContract>,
    /// What the meta-model is told about the guards (None when there are none).
    guards_prompt: Option<serde_json::Value>,
    quiet: bool,
    /// Token signatures of archived programs, by id, filled lazily (near-duplicate check),
    /// and the last archive row read into it.
    signatures: std::sync::Mutex<SignatureCache>,
    /// The run's stored files, written out for the domain loader and scripted backends.
    _run_files: tempfile::TempDir,
}

impl std::ops::Deref for Search {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl std::ops::DerefMut for Search {
    fn deref_mut(&mut self) -> &mut Core {
        &mut self.core
    }
}

/// The guards as `templates/guards/api.j2` describes them to the meta-model; None when the
/// experiment sets none (call contracts still work, and the check explains them).
fn guards_prompt(g: &crate::config::GuardsConfig) -> Result<Option<serde_json::Value>> {
    if g.contract.is_none() && !g.require_call_contracts && g.allowed_imports.is_none() {
        return Ok(None);
    }
    let contract = match &g.contract {
        Some(path) => Some(std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?),
        None => None,
    };
    Ok(Some(serde_json::json!({
        "require_call_contracts": g.require_call_contracts,
        "allowed_imports": g.allowed_imports,
        "agent_contract": contract.map(|c| c.trim().to_string()),
    })))
}

impl Search {
    /// Starts a new run of `exp_path`, archived in `db`.
    pub fn create(exp_path: &Path, db: &Path, quiet: bool) -> Result<Self> {
        Self::create_from(Experiment::load(exp_path)?, db, quiet)
    }

    /// Starts a new run of an experiment already loaded (and possibly adjusted, as
    /// `import-adas` does), archived in `db`.
    pub fn create_from(mut exp: Experiment, db: &Path, quiet: bool) -> Result<Self> {
        if exp.search.seeds.is_empty() && exp.search.import_adas.is_none() {
            return Err(crate::types::BadInput::wrap(anyhow::anyhow!("search.seeds is empty and nothing is imported; fix: seeds = [\"all\"], or import an ADAS archive (`metaforge import-adas`)")));
        }
        // Refuse before anything is created when the run could not start: `isolation =
        // "strict"` that this kernel cannot meet, an unusable contract, dataset, scorer or
        // seed. An archive left behind would refuse the corrected rerun.
        Isolation::for_mode(exp.evaluation.isolation)?;
        exp.guards.agent_contract()?;
        let domain = Domain::load(&exp.domain)?;
        resolve_seeds(
            &exp.search.seeds,
            domain.kind,
            &Templates::embedded()?.with_answer(&domain.answer),
        )?;
        // The files the config names go inside the archive; the stored config keeps their
        // names only, so resume never reads the original files (and the .db moves freely).
        let files = run_files::take(&mut exp)?;
        let stored = toml::to_string(&exp).context("cannot serialise the experiment")?;
        let run = NewRun {
            name: exp.name.clone(),
            seed: exp.seed,
            domain: exp.domain.name.clone(),
            config_toml: stored,
        };
        let archive = Archive::create(db, &run, &files)?;
        Self::build(exp, archive, quiet)
    }

    /// Continues the run stored in `db` from its persisted state; `executor` replaces the
    /// stored `[executor]` for this process (where shards run does not change what they give).
    pub fn resume(db: &Path, quiet: bool, executor: Option<crate::config::ExecutorConfig>) -> Result<Self> {
        let archive = Archive::open_existing(db)?;
        let mut exp = Experiment::parse_stored(&archive.config_text()?, archive.path())?;
        if let Some(executor) = executor {
            exp.executor = executor;
            exp.validate()?;
        }
        Isolation::for_mode(exp.evaluation.isolation)?;
        Self::build(exp, archive, quiet)
    }

    fn build(mut exp: Experiment, archive: Archive, quiet: bool) -> Result<Self> {
        let run_files = run_files::materialize(&archive, &mut exp)?;
        let domain = Domain::load(&exp.domain)?;
        let (mut val, mut test) = domain.splits(
            exp.domain.split_seed.unwrap_or(exp.seed),
            exp.domain.val_size,
            exp.domain.test_size,
        )?;
        let agent_contract = exp.guards.agent_contract()?;
        if let Some(contract) = &agent_contract {
            // A task that breaks the contract's preconditions is invalid: not run, not counted.
            for (split, tasks) in [("validation", &mut val), ("test", &mut test)] {
                let before = tasks.len();
                tasks.retain(|t| contract.admits(&t.input).is_ok());
                if tasks.len() < before {
                    tracing::warn!(
                        "{} {split} tasks break guards.contract's preconditions and are left out",
                        before - tasks.len()
                    );
                }
                if tasks.is_empty() && before > 0 {
                    bail!(
                        "every {split} task breaks guards.contract's preconditions; fix: correct [pre] in the contract"
                    );
                }
            }
        }
        let templates = Templates::embedded()?
            .with_answer(&domain.answer)
            .with_agent_models(&exp.models.agent);
        let mut seeds = resolve_seeds(&exp.search.seeds, domain.kind, &templates)?;
        if let Some(path) = &exp.search.import_adas {
            seeds.extend(
                crate::adas::read_archive(path)?
                    .iter()
                    .map(|a| (a.name.clone(), a.seed_code())),
            );
        }
        let budget = Arc::new(Budget::new(&exp.budget));
        let (tokens, cost, _) = archive.usage()?;
        let (meta_tokens, meta_cost) = archive.meta_spend()?;
        budget.preload(tokens + meta_tokens, cost + meta_cost);
        let cache = CallCache::open_shared(archive.path())?;
        let factory = BackendFactory::new();
        let meta = Gateways::build(
            Role::Meta,
            &exp.models.meta,
            &factory,
            Some(cache.clone()),
            budget.clone(),
        )?;
        let agent = Gateways::build(Role::Agent, &exp.models.agent, &factory, Some(cache), budget)?;
        for (role, set) in [(Role::Meta, &meta), (Role::Agent, &agent)] {
            for (_, g) in set.iter() {
                let (tokens, cost) = archive.model_usage(role, &g.model_id())?;
                g.preload_own(tokens, cost);
            }
        }
        let episodic = match &domain.episodes {
            Some(cfg) => Some(crate::episodic::Episodic::new(cfg)?),
            None => None,
        };
        let executor = crate::executor::Executor::start(&exp.executor)?;
        Ok(Self {
            archive,
            core: Core {
                episodic,
                executor,
                checker: crate::guard::checker(exp.guards.rules())?,
                templates,
                guards_prompt: guards_prompt(&exp.guards)?,
                agent_contract,
                exp,
                domain,
                val,
                test,
                meta,
                agent,
                seeds,
                quiet,
                signatures: Default::default(),
                _run_files: run_files,
            },
        })
    }

    pub fn archive(&self) -> &Archive {
        &self.archive
    }

    pub fn experiment(&self) -> &Experiment {
        &self.exp
    }

    /// Runs every remaining step, then marks the run finished; or, when a stop was asked
    /// for (`host::request_stop`), ends after the step in progress is committed.
    pub fn run(&mut self) -> Result<RunEnd> {
        let total = self.total_steps();
        let start = self.archive.next_step()?;
        let bar = if self.quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(total)
        };
        bar.set_style(
            ProgressStyle::with_template("{spinner} step {pos}/{len} [{elapsed_precise}, about {eta} left] {wide_msg}")
                .unwrap(),
        );
        bar.set_position(start);
        if start > 0 && start < total {
            self.say(
                &bar,
                &format!("resuming {} at step {start} of {total}", self.archive.path().display()),
            );
        }
        self.archive.event(
            Some(start),
            "run_started",
            json!({"from_step": start, "pid": std::process::id(), "executor": self.executor.kind()}),
        )?;
        let k = self.exp.search.steps_in_flight.max(1) as u64;
        if k > 1 {
            if let Some(end) = self.run_pipelined(start, k, &bar)? {
                return Ok(end);
            }
        } else {
            let mut step = start;
            while !matches!(self.step_kind(step), StepKind::Done) {
                let record = Step::new(&self.core, &self.archive, None).run(step, &bar)?;
                self.core.store(&mut self.archive, record, &bar)?;
                step += 1;
                if crate::host::stop_requested().is_some() {
                    if let Some(end) = self.core.interrupted(&self.archive, step, &bar)? {
                        return Ok(end);
                    }
                }
            }
        }
        let step = self.archive.next_step()?;
        if let crate::executor::Executor::Ray(_) = &self.executor {
            // How often Ray reran a shard: the shards' results are in the archive once either way.
            self.archive
                .event(Some(step), "executor", json!(self.executor.stats()))?;
        }
        self.archive.mark_finished()?;
        bar.finish_and_clear();
        Ok(RunEnd::Finished)
    }
}

impl Core {
    /// Stores a finished step: its model calls, then the step in one transaction, with what
    /// happened to the model meanwhile (a model process restarted: `model_restarted`).
    /// A step during which the model died for good is not stored: its calls failed, so its
    /// scores say nothing; the run stops there with the model's own account of its death.
    fn store(&self, archive: &mut Archive, mut record: StepRecord, bar: &ProgressBar) -> Result<()> {
        self.flush_call_cache();
        self.stop_if_the_model_died(archive, record.step)?;
        record.events.extend(self.model_incidents());
        archive.commit_step(&record)?;
        bar.set_position(record.step + 1);
        Ok(())
    }

    /// What happened to the models since the last call (a model process restarted), as
    /// `model_restarted` events, each once.
    fn model_incidents(&self) -> Vec<(String, serde_json::Value)> {
        self.meta
            .incidents()
            .into_iter()
            .chain(self.agent.incidents())
            .map(|i| ("model_restarted".to_string(), i))
            .collect()
    }

    /// Ends the run, before step `step` is stored, when a model can answer nothing any more.
    fn stop_if_the_model_died(&self, archive: &Archive, step: u64) -> Result<()> {
        let Some(why) = self.agent.failure().or_else(|| self.meta.failure()) else {
            return Ok(());
        };
        for (kind, incident) in self.model_incidents() {
            archive.event(Some(step), &kind, incident)?;
        }
        archive.event(Some(step), "model_failed", json!({ "error": why }))?;
        let db = archive.path().display();
        bail!(
            "{why}.\nNothing stored is lost: {db} holds every step before step {step}, which was not stored. Once `metaforge doctor` says the model runs (or the experiment's models.* point at another backend), continue with `metaforge resume {db}`"
        )
    }

    /// Ends the run at `next_step` for a requested stop, unless no step is left anyway.
    fn interrupted(&self, archive: &Archive, next_step: u64, bar: &ProgressBar) -> Result<Option<RunEnd>> {
        if matches!(self.step_kind(next_step), StepKind::Done) {
            return Ok(None);
        }
        let signal = signal_name(crate::host::stop_requested().unwrap_or_default());
        archive.event(
            Some(next_step),
            "interrupted",
            json!({"signal": signal, "next_step": next_step}),
        )?;
        bar.finish_and_clear();
        Ok(Some(RunEnd::Interrupted { signal, next_step }))
    }

    /// A step's model calls are stored before the step is committed: a resume that skips
    /// the step never needs them, one that redoes it finds them.
    fn flush_call_cache(&self) {
        self.meta.flush_cache();
        self.agent.flush_cache();
    }

    fn say(&self, bar: &ProgressBar, line: &str) {
        if self.quiet {
            return;
        }
        if bar.is_hidden() {
            eprintln!("{line}");
        } else {
            bar.println(line);
        }
    }
}

impl Step<'_> {
    fn seed_step(&self, step: u64, index: usize, bar: &ProgressBar) -> Result<StepRecord> {
        let (file, code) = self.seeds[index].clone();
        let (name, idea) = docstring_header(&code);
        let proposal = Proposal {
            kind: "seed".into(),
            name: name.unwrap_or_else(|| file.clone()),
            thought: idea.unwrap_or_default(),
            code,
            parents: vec![],
            prompt: None,
            reply: None,
        };
        bar.set_message(format!("seed {}", proposal.name));
        let rec = self.check_and_evaluate(step, 0, 0, proposal, bar)?;
        Ok(StepRecord {
            step,
            generation: 0,
            proposals: vec![rec],
            ..Default::default()
        })
    }

    /// The first sample index of this step's meta-model calls (each call takes the next).
    /// Why the run seed is in it: the embedded model seeds its sampler from the index and an
    /// endpoint receives it as `seed`, so two search seeds that reach the same prompt at the
    /// same step would otherwise be handed the same reply, and K search seeds of a search the
    /// meta-model writes would be one search K times. Seed 0 keeps the plain `step * 64`.
    fn meta_sample_base(&self, step: u64) -> u32 {
        let run = (self.exp.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as u32;
        run.wrapping_add((step as u32).wrapping_mul(64))
    }

    fn propose_step(&self, step: u64, generation: u32, bar: &ProgressBar) -> Result<StepRecord> {
        let mut rng = ChaCha8Rng::seed_from_u64(self.exp.seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let search = &self.exp.search;
        let strategy = search.parent_selection;
        let mut scored = self.archive.scored(Split::Val)?;
        if strategy == ParentSelection::Instance {
            self.archive.fill_instance_wins(&mut scored)?;
        }
        let mut scored = islands::selectable(scored, step, generation, search.islands, search.migration_interval);
        let mix = &self.exp.proposers;
        if self.episodic.is_some() && mix.rewrite + mix.diff + mix.crossover <= 0.0 {
            // With operators the only writers, a design no operator can change (the no-memory
            // baseline: cheapest, so always on the front) is no parent: every step spent on
            // it would propose nothing. Only memory designs can be such (`can_change`), so
            // agent runs skip reading every candidate's code here.
            let mut keep = Vec::with_capacity(scored.len());
            for s in scored {
                let inert = self
                    .archive
                    .candidate(&s.id)?
                    .is_some_and(|c| !operators::can_change(&c));
                if !inert {
                    keep.push(s);
                }
            }
            scored = keep;
        }
        let Some(pi) = select_parent(&scored, strategy, &search.objectives, &mut rng) else {
            self.say(
                bar,
                &format!("step {step}: no candidate ran successfully yet; nothing to mutate"),
            );
            return Ok(StepRecord {
                step,
                generation,
                events: vec![("skipped".into(), json!({"reason": "no selectable parent"}))],
                ..Default::default()
            });
        };
        let parent = self
            .archive
            .candidate(&scored[pi].id)?
            .context("selected parent vanished")?;
        // Fixed weights draw the kind before the mate, as they always have (same runs).
        let fixed_kind = (mix.bandit == Bandit::Fixed).then(|| choose_kind(mix, &mut rng));
        let mut records = Vec::new();
        let mut events = Vec::new();
        let other = select_parent(&scored, strategy, &search.objectives, &mut rng)
            .filter(|&o| o != pi)
            .or_else(|| (0..scored.len()).find(|&o| o != pi && scored[o].ok));
        let other = match other {
            Some(o) => self.archive.candidate(&scored[o].id)?,
            None => None,
        };
        let meta_calls_before = self.meta.totals().calls;
        // Both bandits (over proposers, over meta-models) read the credit so far; fixed
        // weights read none.
        let credit_events = match mix.bandit {
            Bandit::Thompson => self.archive.events("credit")?,
            Bandit::Fixed => Vec::new(),
        };
        let (arm, draws) = match fixed_kind {
            Some(Some(kind)) => (Arm::Llm(kind), None),
            Some(None) if mix.llm_instruction > 0.0 && rng.random_bool(mix.llm_instruction) => (Arm::Instruction, None),
            Some(None) => (Arm::Operator(None), None),
            None => {
                let (arm, draws) = self.thompson_arm(&parent, other.is_some(), &credit_events, &mut rng)?;
                (arm, Some(draws))
            }
        };
        let model = match arm {
            Arm::Llm(_) | Arm::Instruction => Some(model_choice::choose(
                &self.meta,
                &self.exp.models.meta,
                mix.bandit,
                &credit_events,
                &mut rng,
            )),
            Arm::Operator(_) => None,
        };
        let gateway = model.as_ref().and_then(|m| self.meta.get(&m.name));
        let model_before = gateway.map(|g| g.totals()).unwrap_or_default();
        match (arm, gateway) {
            (Arm::Llm(kind), Some(meta)) => {
                let mates: Vec<&Candidate> = match (kind, &other) {
                    (LlmKind::Crossover, Some(o)) => vec![&parent, o],
                    _ => vec![&parent],
                };
                let job = LlmJob {
                    step,
                    generation,
                    kind,
                    parents: &mates,
                    meta,
                };
                self.llm_proposal(job, &scored, &mut rng, bar, &mut records, &mut events)?;
            }
            (Arm::Instruction, Some(meta)) => {
                records.push(self.instruction_proposal(step, generation, &parent, meta, &mut rng, bar)?)
            }
            (Arm::Operator(first), _) => {
                records.push(self.operator_proposal(step, generation, &parent, other.as_ref(), first, &mut rng, bar)?)
            }
            (Arm::Llm(_) | Arm::Instruction, None) => unreachable!("a model is chosen for every arm that calls one"),
        }
        let mut credit = credit(&arm, draws, &records, self.meta.totals().calls - meta_calls_before);
        if let (Some(pick), Some(g)) = (model, gateway) {
            let spent = g.totals();
            credit["model"] = json!(pick.name);
            credit["model_tokens"] = json!(spent.tokens() - model_before.tokens());
            credit["model_cost_usd"] = json!(spent.cost_usd - model_before.cost_usd);
            if let Some(d) = pick.draws {
                credit["model_draws"] = d;
            }
            for r in &mut records {
                r.model = Some(pick.name.clone());
            }
        }
        events.push(("credit".into(), credit));
        Ok(StepRecord {
            step,
            generation,
            proposals: records,
            events,
            ..Default::default()
        })
    }

    /// A proposal by the meta-model (`rewrite`, `crossover` or `diff`), with its reflexion
    /// and debug rounds; every attempt becomes a proposal record.
    fn llm_proposal(
        &self,
        job: LlmJob,
        scored: &[crate::archive::Scored],
        rng: &mut ChaCha8Rng,
        bar: &ProgressBar,
        records: &mut Vec<ProposalRecord>,
        events: &mut Vec<(String, serde_json::Value)>,
    ) -> Result<()> {
        let LlmJob {
            step,
            generation,
            kind,
            parents,
            meta,
        } = job;
        let opts = &self.exp.proposers.rewrite_options;
        let parent = parents[0];
        let mut context: Vec<ContextCandidate> = parents.iter().map(|p| self.context_of(p, scored)).collect();
        let required = context.len();
        // Inspirations alternate between the Pareto front and other niches: evaluated
        // programs off the front whose structure differs from everything already shown.
        let front = crate::archive::pareto_front(scored, &self.exp.search.objectives);
        let off_front: Vec<usize> = (0..scored.len())
            .filter(|i| scored[*i].ok && !front.contains(i))
            .collect();
        let mut shown: Vec<String> = parents.iter().map(|p| p.fingerprint.clone()).collect();
        for k in 0..opts.context_candidates.saturating_sub(required) {
            let niche: Vec<usize> = off_front
                .iter()
                .copied()
                .filter(|i| !shown.contains(&scored[*i].fingerprint))
                .collect();
            let pool = if k % 2 == 1 && !niche.is_empty() {
                &niche
            } else {
                &front
            };
            if pool.is_empty() {
                break;
            }
            let pick = &scored[pool[rng.random_range(0..pool.len())]];
            if context.iter().all(|c| c.name != pick.name) {
                if let Some(c) = self.archive.candidate(&pick.id)? {
                    shown.push(c.fingerprint.clone());
                    context.push(self.context_of(&c, scored));
                }
            }
        }
        let mut failures = self.archive.recent_failures(3)?;
        let budget = fit_context(&mut context, required, &mut failures, opts.context_tokens);
        events.push(("context".into(), budget));
        let input = RewriteInput {
            kind,
            domain_name: &self.exp.domain.name,
            domain_description: &self.domain.description,
            example: self.val.first().map(|t| t.input.to_string()),
            context,
            failures,
            parents: parents.iter().map(|p| p.id.clone()).collect(),
            base_code: (kind == LlmKind::Diff).then(|| parent.code.clone()),
            sample_base: self.meta_sample_base(step),
            guards: self.guards_prompt.clone(),
        };
        bar.set_message(format!(
            "gen {generation}: {} (meta model) from {}",
            kind.as_str(),
            parent.name
        ));
        let (mut session, mut current) = RewriteSession::start(meta, &self.templates, opts, input)?;
        let mut attempt = 0u32;
        loop {
            let proposal = match current {
                Ok(p) => p,
                Err(f) => {
                    let status = if f.kind == "llm" {
                        ProposalStatus::LlmError
                    } else {
                        ProposalStatus::ParseError
                    };
                    self.say(
                        bar,
                        &format!(
                            "[step {step}] {:<22} {}: {}",
                            kind.as_str(),
                            status.as_str(),
                            truncate(f.reason.lines().next().unwrap_or(""), 90)
                        ),
                    );
                    let ids = parents.iter().map(|p| p.id.clone()).collect();
                    let mut r = failed(attempt, kind.as_str(), ids, status, f.reason, None);
                    r.prompt = Some(f.prompt);
                    r.reply = f.reply;
                    records.push(r);
                    break;
                }
            };
            let rec = self.check_and_evaluate(step, generation, attempt, proposal, bar)?;
            let feedback = match rec.status {
                ProposalStatus::CheckFailed => Some(format!("The static check rejected it:\n{}", rec.reason)),
                ProposalStatus::RuntimeError => Some(format!("It failed when run:\n{}", rec.reason)),
                ProposalStatus::ContractBreach => Some(format!("It broke the experiment's contract:\n{}", rec.reason)),
                _ => None,
            };
            records.push(rec);
            match feedback {
                Some(fb) if attempt < opts.debug_rounds => {
                    attempt += 1;
                    current = session.debug(&fb, attempt)?;
                }
                _ => break,
            }
        }
        if session.malformed_replies > 0 {
            // Retried replies leave no proposal row of their own; count them here.
            events.push((
                "malformed_replies".into(),
                json!({"kind": kind.as_str(), "count": session.malformed_replies}),
            ));
        }
        Ok(())
    }

    /// Check, deduplicate and evaluate one proposal; the record says how far it got.
    fn check_and_evaluate(
        &self,
        step: u64,
        generation: u32,
        attempt: u32,
        p: Proposal,
        bar: &ProgressBar,
    ) -> Result<ProposalRecord> {
        let report = self.checker.check("candidate.py", &p.code, self.domain.kind);
        let id = candidate_id(self.domain.kind, &report.normalized);
        let candidate = Candidate {
            id: id.clone(),
            kind: self.domain.kind,
            name: p.name.clone(),
            thought: p.thought.clone(),
            code: p.code.clone(),
            operator: p.kind.clone(),
            generation,
            parents: p.parents.clone(),
            fingerprint: report.fingerprint.clone(),
        };
        let mut rec = ProposalRecord {
            attempt,
            kind: p.kind.clone(),
            parents: p.parents.clone(),
            status: ProposalStatus::CheckFailed,
            reason: String::new(),
            candidate: Some(candidate),
            evaluation: None,
            prompt: p.prompt,
            reply: p.reply,
            race: None,
            model: None,
        };
        if !report.passes() {
            rec.reason = report.render();
            self.say(
                bar,
                &format!("[step {step}] {} {:?}: rejected by check", p.kind, p.name),
            );
            return Ok(rec);
        }
        if self.archive.has_candidate(&id)? {
            rec.status = ProposalStatus::Duplicate;
            rec.reason = format!("same program as candidate {}", &id[..12]);
            self.say(
                bar,
                &format!(
                    "[step {step}] {} {:?}: duplicate of an archived program",
                    p.kind, p.name
                ),
            );
            return Ok(rec);
        }
        if let Some((similarity, twin)) = self.near_duplicate(&report.normalized)? {
            rec.status = ProposalStatus::NotNovel;
            rec.reason = format!(
                "near-duplicate: similarity {similarity:.2} >= proposers.novelty_threshold {} to candidate {}",
                self.exp.proposers.novelty_threshold,
                &twin[..12.min(twin.len())]
            );
            self.say(
                bar,
                &format!("[step {step}] {} {:?}: near-duplicate, not evaluated", p.kind, p.name),
            );
            return Ok(rec);
        }
        // A proposal is measured against its best parent, a seed against the best seed so far:
        // by score (the cascade) or task by task (racing, and the credit either way).
        let rival = if p.kind == "seed" {
            self.archive.best_seed()?
        } else {
            self.archive.best_of(&p.parents)?
        };
        let parent_score = self.archive.best_val_score(&p.parents)?;
        let rival_scores = match &rival {
            Some(id) => Some(self.archive.task_scores(id, Split::Val)?),
            None => None,
        };
        // Each step's looks start at another place of the pool: a first look on the same few
        // tasks for every proposal would make them all race on that one sample's luck.
        let cfg = &self.exp.evaluation;
        let pool: Vec<Task> = if cfg.race_first > 0 && !self.val.is_empty() {
            let at = (step as usize * cfg.race_first) % self.val.len();
            self.val[at..].iter().chain(&self.val[..at]).cloned().collect()
        } else {
            self.val.clone()
        };
        let (eval, race) = self.evaluate(
            &p.code,
            &pool,
            Split::Val,
            &p.name,
            Rivals {
                score: parent_score,
                tasks: rival_scores.as_deref(),
            },
            bar,
        )?;
        rec.race = race.map(|(paired, looks)| {
            json!({
                "attempt": attempt,
                "kind": p.kind,
                "candidate": id,
                "rival": rival,
                "looks": looks,
                "stage": eval.stage,
                "paired": paired,
                "calls": eval.usage.calls,
            })
        });
        let breach = eval.contract_feedback();
        rec.status = match (&eval.outcome, &breach) {
            (Outcome::Ok, None) => ProposalStatus::Evaluated,
            (Outcome::Ok, Some(_)) => ProposalStatus::ContractBreach,
            _ => ProposalStatus::RuntimeError,
        };
        let failure = match (eval.failure_feedback(), breach) {
            (Some(f), Some(b)) => Some(format!("{f}\n{b}")),
            (f, b) => f.or(b),
        };
        rec.reason = failure.unwrap_or_else(|| match eval.stage.as_str() {
            "full" => format!("val {:.3}", eval.mean),
            _ => format!(
                "val {:.3}; {}",
                eval.mean,
                eval.detail.rsplit("\n---\n").next().unwrap_or("")
            ),
        });
        self.say(
            bar,
            &format!(
                "[step {step}] {:<22} {:<44} val {:.2} [{:.2}, {:.2}]  {} tokens{}{}",
                p.kind,
                truncate(&p.name, 44),
                eval.mean,
                eval.ci_lo,
                eval.ci_hi,
                eval.usage.tokens(),
                if eval.outcome == Outcome::Ok {
                    String::new()
                } else {
                    format!("  ({})", eval.outcome)
                },
                if eval.stage == Stage::Full {
                    String::new()
                } else {
                    format!("  ({} at {}/{} tasks)", eval.stage, eval.tasks.len(), self.val.len())
                }
            ),
        );
        rec.evaluation = Some(eval);
        Ok(rec)
    }
}

impl Core {
    /// Evaluates `code` on `tasks`: raced against `rivals.tasks` when racing is on (and
    /// compared with it at the end either way), else in stages against `rivals.score` when
    /// the cascade is on. Returns the comparison with the rival and the tasks run at each
    /// look when there was a rival.
    fn evaluate(
        &self,
        code: &str,
        tasks: &[Task],
        split: Split,
        label: &str,
        rivals: Rivals<'_>,
        bar: &ProgressBar,
    ) -> Result<(Evaluation, Option<Race>)> {
        let tasks_bar = if bar.is_hidden() {
            ProgressBar::hidden()
        } else {
            // A memory evaluation ticks once per scored episode (those after the fill).
            ProgressBar::new(match &self.episodic {
                Some(e) => tasks.len().saturating_sub(e.cfg.fill_count(tasks.len())) as u64,
                None => tasks.len() as u64,
            })
        };
        let unit = if self.episodic.is_some() {
            "scored episodes"
        } else {
            "tasks"
        };
        let tasks_bar = if bar.is_hidden() {
            tasks_bar
        } else {
            tasks_bar.with_style(
                ProgressStyle::with_template(&format!("  {{bar:30}} {{pos}}/{{len}} {unit} ({split}) {{msg}}"))
                    .unwrap(),
            )
        };
        tasks_bar.set_message(truncate(label, 50));
        let evaluator = Evaluator {
            gateway: self.agent.primary(),
            models: (self.agent.len() > 1).then_some(&self.agent),
            cfg: &self.exp.evaluation,
            scorer: self.domain.scorer.clone(),
            agent_contract: self.agent_contract.as_ref(),
            require_call_contracts: self.exp.guards.require_call_contracts,
            episodic: self.episodic.as_ref().map(|e| e as &dyn crate::evaluate::EpisodeRunner),
            executor: &self.executor,
        };
        let tick = || tasks_bar.inc(1);
        let cfg = &self.exp.evaluation;
        let stages = Stages {
            fraction: cfg.cascade_fraction,
            threshold: cfg.cascade_threshold,
            bootstrap_samples: cfg.bootstrap_samples,
        };
        // An episode sequence is one unit (its halves fill and score the memory): not raced or
        // staged. It is still compared with its rival on the same scored episodes, since the
        // proposers' credit (and so the bandit) learns from that comparison alone.
        let out = if self.episodic.is_some() {
            evaluator.evaluate(code, tasks, split, &tick).map(|e| {
                let race = rivals.tasks.map(|rival| {
                    let paired = racing::compare_with_rival(std::slice::from_ref(&e), rival, cfg.bootstrap_samples);
                    (paired, vec![e.tasks.len()])
                });
                (e, race)
            })
        } else if cfg.race_first > 0 || cfg.cascade_fraction == 0.0 {
            racing::evaluate_raced(
                tasks,
                rivals.tasks,
                cfg.race_first,
                cfg.race_rule,
                cfg.bootstrap_samples,
                |slice| evaluator.evaluate(code, slice, split, &tick),
            )
            .map(|r| {
                let race = r.paired.map(|p| (p, r.looks));
                (r.evaluation, race)
            })
        } else {
            evaluate_staged(tasks, rivals.score, &stages, |slice| {
                evaluator.evaluate(code, slice, split, &tick)
            })
            .map(|e| (e, None))
        };
        tasks_bar.finish_and_clear();
        out
    }
}

fn failed(
    attempt: u32,
    kind: &str,
    parents: Vec<String>,
    status: ProposalStatus,
    reason: String,
    candidate: Option<Candidate>,
) -> ProposalRecord {
    ProposalRecord {
        attempt,
        kind: kind.into(),
        parents,
        status,
        reason,
        candidate,
        evaluation: None,
        prompt: None,
        reply: None,
        race: None,
        model: None,
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

/// The seed programs named by `search.seeds`: file stems under `archive/agents/` (or
/// `archive/memory/`), `"all"` of those, or the user's own `.py` files (by then stored in
/// the run and written to its folder). A seed is checked and evaluated like a proposal.
/// Seeds written over the answer format (`{{ answer.format }}`, as the built-in ones are) are
/// rendered for the domain's (`templates`); others are taken as they are.
pub fn resolve_seeds(
    entries: &[std::path::PathBuf],
    kind: CandidateKind,
    templates: &Templates,
) -> Result<Vec<(String, String)>> {
    let folder = match kind {
        CandidateKind::Agent => "agents",
        CandidateKind::Memory => "memory",
    };
    let all: Vec<(String, String)> = crate::assets::files_with_ext(&crate::assets::ARCHIVE, folder, "py")
        .into_iter()
        .map(|(p, c)| {
            let stem = Path::new(p).file_stem().unwrap().to_string_lossy().to_string();
            let code = templates.render_seed(p, c)?;
            Ok((stem, code))
        })
        .collect::<Result<_>>()?;
    let mut out = Vec::new();
    for entry in entries {
        if crate::config::is_seed_file(entry) {
            let code = std::fs::read_to_string(entry)
                .with_context(|| format!("search.seeds: cannot read {}; fix: check the path", entry.display()))
                .map_err(crate::types::BadInput::wrap)?;
            let stem = entry
                .file_stem()
                .map_or("seed".into(), |s| s.to_string_lossy().into_owned());
            let code = templates.render_seed(&entry.display().to_string(), &code)?;
            out.push((stem, code));
            continue;
        }
        let name = entry.to_string_lossy();
        let answers = templates.answer().kind;
        if name == "all" {
            out.extend(all.iter().filter(|(_, code)| seed_fits(code, answers)).cloned());
            continue;
        }
        match all.iter().find(|(stem, _)| *stem == name) {
            Some((_, code)) if !seed_fits(code, answers) => {
                return Err(crate::types::BadInput::wrap(anyhow::anyhow!(
                    "search.seeds names {name:?}, which is written for other answers than this domain's ({}: {}); fix: drop it from search.seeds, or use \"all\", which takes the seeds that fit",
                    serde_json::to_value(answers).unwrap_or_default().as_str().unwrap_or_default(),
                    templates.answer().format
                )))
            }
            Some(s) => out.push(s.clone()),
            None => {
                return Err(crate::types::BadInput::wrap(anyhow::anyhow!(
                    "search.seeds names {name:?}, which is neither a seed under archive/{folder}/ nor a .py file; fix: use \"all\", a path like \"my_agent.py\", or some of: {}",
                    all.iter().map(|(s, _)| s.as_str()).collect::<Vec<_>>().join(", ")
                )))
            }
        }
    }
    Ok(out)
}

/// Whether a built-in seed suits answers of `kind`: its docstring's `answers:` line lists the
/// kinds it is written for (Guarded Answer parses an integer); without one it suits all.
fn seed_fits(code: &str, kind: crate::domain::AnswerKind) -> bool {
    let name = serde_json::to_value(kind).ok();
    let name = name.as_ref().and_then(|v| v.as_str()).unwrap_or_default();
    let head = code.split("\"\"\"").nth(1).unwrap_or_default();
    head.lines()
        .find_map(|l| l.trim().strip_prefix("answers:"))
        .is_none_or(|kinds| kinds.split(',').any(|k| k.trim() == name))
}

/// How a raced evaluation compared with its rival, and the tasks run at each look.
type Race = (Paired, Vec<usize>);

/// What an evaluation is measured against: the best parent's score (the cascade) and the
/// rival's per-task scores (racing and credit). Empty for seeds' first and held-out runs.
#[derive(Default, Clone, Copy)]
struct Rivals<'a> {
    score: Option<f64>,
    tasks: Option<&'a [(String, f64)]>,
}

/// What an LLM proposal works from.
struct LlmJob<'a> {
    step: u64,
    generation: u32,
    kind: LlmKind,
    /// The parent, and for `crossover` its mate.
    parents: &'a [&'a Candidate],
    /// The meta-model that writes it.
    meta: &'a Gateway,
}
