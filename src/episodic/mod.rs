//! The episodic domain (`twc`: TextWorldExpress TextWorld-Commonsense games) and the
//! evaluation of memory designs on it, following ALMA's protocol.
//!
//! A validation (or test) split is a sequence of episodes, shuffled by the split seed. Its
//! first episodes (half, or `domain.episodes.fill`) fill the design's memory (played without
//! retrieval; `update` sees each trajectory and reward), the rest are scored with retrieval,
//! memory frozen. An episode's score is the gain of its reward over the same base agent
//! without memory, so the evaluation's mean is the design's gain over no-memory, with a
//! bootstrap 95% CI.
//!
//! Who does what: the sandboxed worker holds the design and asks for plays
//! (`runtime/metaforge/episodes.py`); the host plays them with the fixed base agent
//! (`agent.rs`) on game servers (`env.rs`) and keeps the rewards, so a design cannot touch
//! the game or its score. No-memory plays depend only on the episode, so they are played once
//! per run and serve as both the baseline and the fill phase's plays.

pub mod agent;
pub mod env;
pub mod placement;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::config::{BaseAgentKind, EpisodesConfig};
use crate::domain::Task;
use crate::evaluate::{EpisodeRunner, Evaluation, Evaluator, TaskDone, TaskResult};
use crate::executor::ShardLimits;
use crate::llm::{Gateway, Usage};
use crate::propose::Templates;
use crate::sandbox::{classify, error_kind, tail, task_outcome, LlmCall, LlmHandler};
use crate::types::{Split, TaskOutcome};
pub use agent::{choose_action, observation_for, BaseAgent, PlaceScoring, Play, Warnings};
pub use env::{EnvPool, Game};

/// The task id of the one worker task that carries a whole episode sequence.
const SEQUENCE: &str = "sequence";

/// What a run shares across its memory evaluations: game servers and the no-memory plays.
pub struct Episodic {
    pub cfg: EpisodesConfig,
    pool: EnvPool,
    templates: Templates,
    baseline: Mutex<HashMap<String, Arc<Play>>>,
}

/// The game an episode task plays (`Domain::load` builds the tasks).
pub fn game_of(task: &Task) -> Result<Game> {
    serde_json::from_value(task.input.clone()).with_context(|| format!("episode {} does not name a game", task.id))
}

impl EpisodeRunner for Episodic {
    /// Evaluates the memory design `code` on the episode sequence `tasks` (see the module doc).
    fn evaluate(
        &self,
        ev: &Evaluator,
        code: &str,
        tasks: &[Task],
        split: Split,
        on_task: TaskDone,
    ) -> Result<Evaluation> {
        let fill_count = self.cfg.fill_count(tasks.len());
        if tasks.len() < 2 || fill_count >= tasks.len() {
            bail!("a memory evaluation needs a scored episode after the {fill_count} that fill the memory and the {split} split has {}; fix: raise domain.val_size / domain.test_size, or lower domain.episodes.fill", tasks.len());
        }
        let started = Instant::now();
        let (fill, scored) = tasks.split_at(fill_count);
        let baseline = self.baselines(ev.gateway, tasks, ev.cfg.tasks_in_flight)?;
        let episodes: Vec<serde_json::Value> = fill
            .iter()
            .map(|t| (t, "fill"))
            .chain(scored.iter().map(|t| (t, "score")))
            .map(|(t, phase)| {
                let game = game_of(t)?;
                Ok(json!({"id": t.id, "phase": phase, "observation": observation_for(&game, &baseline[&t.id].start)}))
            })
            .collect::<Result<_>>()?;
        let payload = json!({
            "episodes": episodes,
            "retrieve_chars": self.cfg.retrieve_chars,
            "parallel": ev.cfg.tasks_in_flight,
        });
        let handler = SequenceCalls {
            episodic: self,
            gateway: ev.gateway,
            tasks: tasks.iter().map(|t| (t.id.clone(), t)).collect(),
            scored: scored.iter().map(|t| t.id.clone()).collect(),
            baseline: &baseline,
            played: Mutex::new(HashMap::new()),
            on_task,
        };
        let limits = ShardLimits {
            deadline: Duration::from_secs(30 + ev.cfg.task_timeout_s * tasks.len() as u64),
            load_deadline: Duration::from_secs(ev.cfg.load_timeout_s),
            memory_mb: ev.cfg.memory_mb,
            cpu_s: ev.cfg.cpu_s,
            tasks_in_flight: 1,
            disk_mb: ev.cfg.disk_mb,
            isolation: ev.cfg.isolation,
        };
        // With a remote executor the design runs on a node; its plays still happen here.
        let run = ev
            .executor
            .run_shard(code, &[(SEQUENCE.to_string(), payload)], &limits, &handler)?;
        let (mut outcome, mut details) = classify(&[&run], ev.cfg.cpu_s);
        let sequence = run.tasks.get(SEQUENCE).cloned().unwrap_or_default();
        let records: HashMap<String, serde_json::Value> = sequence
            .output
            .as_deref()
            .and_then(|o| serde_json::from_str::<serde_json::Value>(o).ok())
            .and_then(|v| v.get("records").and_then(|r| r.as_array()).cloned())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| Some((r.get("episode")?.as_str()?.to_string(), r)))
            .collect();
        let played = handler.played.into_inner().unwrap();
        let error_of = |r: Option<&serde_json::Value>| {
            r.and_then(|r| r.get("error")).and_then(|e| e.as_str()).map(|e| {
                let tb = r
                    .and_then(|r| r.get("traceback"))
                    .and_then(|t| t.as_str())
                    .unwrap_or("");
                (e.to_string(), tb.to_string())
            })
        };

        let update_errors: Vec<(String, (String, String))> = fill
            .iter()
            .filter_map(|t| error_of(records.get(&t.id)).map(|e| (t.id.clone(), e)))
            .collect();
        let mut results = Vec::with_capacity(scored.len());
        for t in scored {
            let base = baseline[&t.id].reward;
            let record = records.get(&t.id);
            let mine = played.get(&t.id);
            let (kind, error) = if !sequence.finished || sequence.error.is_some() {
                let kind = task_outcome(&sequence, &run.exit);
                (kind, sequence.error.clone())
            } else {
                match error_of(record) {
                    Some((e, tb)) => (error_kind(&e), Some(format!("retrieve raised {e}\n{tb}"))),
                    None if mine.is_none() => (TaskOutcome::Error, Some("the episode was not played".into())),
                    None => (TaskOutcome::Ok, None),
                }
            };
            // As in ALMA, an episode whose retrieval failed counts as reward 0.
            let reward = if kind == TaskOutcome::Ok {
                mine.map_or(0.0, |(p, _)| p.reward)
            } else {
                0.0
            };
            let memory_chars = record
                .and_then(|r| r.get("memory_chars"))
                .and_then(|n| n.as_u64())
                .unwrap_or(0);
            results.push(TaskResult {
                task_id: t.id.clone(),
                score: reward - base,
                outcome: kind,
                output: Some(
                    json!({
                        "reward": reward,
                        "baseline": base,
                        "memory_chars": memory_chars,
                        "memory": mine.map(|(_, text)| excerpt(text, 300)),
                        "steps": mine.map(|(p, _)| p.trajectory.len()),
                    })
                    .to_string(),
                ),
                error,
                usage: mine.map(|(p, _)| p.usage).unwrap_or_default(),
                guard: None,
            });
        }
        if !update_errors.is_empty() {
            let (id, (e, tb)) = &update_errors[0];
            details.push(format!(
                "update() raised on {} of {} fill episodes; first ({id}): {e}\n{}",
                update_errors.len(),
                fill.len(),
                tail(tb, 1500)
            ));
        }
        let retrieve_errors = results.iter().filter(|r| r.outcome != TaskOutcome::Ok).count();
        if let Some(r) = results.iter().find(|r| r.outcome != TaskOutcome::Ok) {
            details.push(format!(
                "{retrieve_errors} of {} scored episodes failed; first ({}): {}",
                results.len(),
                r.task_id,
                tail(r.error.as_deref().unwrap_or(""), 1500)
            ));
        }
        if outcome == crate::types::Outcome::Ok
            && (retrieve_errors == results.len() || (!fill.is_empty() && update_errors.len() == fill.len()))
        {
            outcome = crate::types::Outcome::Error;
        }
        let mut e = Evaluation::from_tasks(
            split,
            crate::types::Stage::Full,
            results,
            sequence.usage,
            started.elapsed().as_secs_f64() * 1e3,
            outcome,
            details.join("\n---\n"),
            ev.cfg.bootstrap_samples,
        );
        e.usage = sequence.usage;
        Ok(e)
    }
}

impl Episodic {
    pub fn new(cfg: &EpisodesConfig) -> Result<Self> {
        Ok(Self {
            cfg: cfg.clone(),
            pool: EnvPool::new()?,
            templates: Templates::embedded()?,
            baseline: Mutex::new(HashMap::new()),
        })
    }

    fn base_agent<'a>(&'a self, gateway: &'a Gateway) -> BaseAgent<'a> {
        match self.cfg.base_agent {
            BaseAgentKind::Model => BaseAgent::Model {
                gateway,
                templates: &self.templates,
            },
            BaseAgentKind::PlaceChoice => BaseAgent::PlaceChoice {
                gateway,
                templates: &self.templates,
                scoring: PlaceScoring::Likeliest,
                warnings: Warnings::Shown,
            },
            BaseAgentKind::PlaceAvoid => BaseAgent::PlaceChoice {
                gateway,
                templates: &self.templates,
                scoring: PlaceScoring::Likeliest,
                warnings: Warnings::Heeded,
            },
            BaseAgentKind::PlaceCalibrated => BaseAgent::PlaceChoice {
                gateway,
                templates: &self.templates,
                scoring: PlaceScoring::Calibrated,
                warnings: Warnings::Shown,
            },
            BaseAgentKind::Scripted => BaseAgent::Scripted,
        }
    }

    fn play(&self, gateway: &Gateway, task: &Task, memory: &str) -> Result<Play> {
        let game = game_of(task)?;
        let agent = self.base_agent(gateway);
        self.pool
            .with(|env| agent.play(env, &game, memory, self.cfg.max_steps))
            .with_context(|| format!("playing episode {}", task.id))
    }

    /// The no-memory play of each task, played once per run, `width` at a time.
    fn baselines(&self, gateway: &Gateway, tasks: &[Task], width: usize) -> Result<HashMap<String, Arc<Play>>> {
        let missing: Vec<&Task> = {
            let known = self.baseline.lock().unwrap();
            tasks.iter().filter(|t| !known.contains_key(&t.id)).collect()
        };
        for wave in missing.chunks(width.max(1)) {
            let plays: Vec<Result<Play>> = std::thread::scope(|scope| {
                let hs: Vec<_> = wave
                    .iter()
                    .map(|t| scope.spawn(move || self.play(gateway, t, "")))
                    .collect();
                hs.into_iter()
                    .map(|h| h.join().expect("play thread panicked"))
                    .collect()
            });
            let mut known = self.baseline.lock().unwrap();
            for (t, p) in wave.iter().zip(plays) {
                known.insert(t.id.clone(), Arc::new(p?));
            }
        }
        let known = self.baseline.lock().unwrap();
        Ok(tasks.iter().map(|t| (t.id.clone(), known[&t.id].clone())).collect())
    }
}

fn excerpt(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Answers one sequence worker: plays (each scored episode once, with the text its memory
/// retrieved; fill episodes from the no-memory plays) and the design's own `llm()` calls.
struct SequenceCalls<'a> {
    episodic: &'a Episodic,
    gateway: &'a Gateway,
    tasks: HashMap<String, &'a Task>,
    scored: std::collections::HashSet<String>,
    baseline: &'a HashMap<String, Arc<Play>>,
    /// Scored episodes played: the play and the memory text it was given.
    played: Mutex<HashMap<String, (Play, String)>>,
    on_task: TaskDone<'a>,
}

fn play_json(p: &Play) -> serde_json::Value {
    json!({"trajectory": p.trajectory, "reward": p.reward, "success": p.success})
}

impl LlmHandler for SequenceCalls<'_> {
    fn handle(&self, _task_id: Option<&str>, call: &LlmCall) -> Result<(Vec<String>, Usage), String> {
        let params = call.params();
        let mut usage = Usage::default();
        let mut texts = Vec::new();
        for i in 0..call.n {
            let req = self.gateway.request(call.messages.clone(), params.clone(), i);
            let r = self.gateway.complete(&req).map_err(|e| e.to_string())?;
            usage.add(&r);
            texts.push(r.text);
        }
        Ok((texts, usage))
    }

    fn play_episode(&self, episode: &str, memory: Option<&str>) -> Result<(serde_json::Value, Usage), String> {
        let task = self
            .tasks
            .get(episode)
            .ok_or_else(|| format!("episode {episode:?} is not in this sequence"))?;
        match (self.scored.contains(episode), memory) {
            (false, None) => Ok((play_json(&self.baseline[episode]), Usage::default())),
            (true, Some(text)) => {
                if self.played.lock().unwrap().contains_key(episode) {
                    return Err(format!("episode {episode:?} was already played"));
                }
                let text = excerpt(text, self.episodic.cfg.retrieve_chars);
                let play = self
                    .episodic
                    .play(self.gateway, task, &text)
                    .map_err(|e| format!("{e:#}"))?;
                let reply = (play_json(&play), play.usage);
                let mut played = self.played.lock().unwrap();
                if played.contains_key(episode) {
                    return Err(format!("episode {episode:?} was already played"));
                }
                played.insert(episode.to_string(), (play, text));
                (self.on_task)();
                Ok(reply)
            }
            (true, None) => Err(format!(
                "episode {episode:?} is scored: it is played with the retrieved text"
            )),
            (false, Some(_)) => Err(format!(
                "episode {episode:?} fills the memory: it is played without retrieval"
            )),
        }
    }

    /// A rerun of the sequence (its node died) plays the scored episodes again, once each.
    fn restart(&self) {
        self.played.lock().unwrap().clear();
    }
}
