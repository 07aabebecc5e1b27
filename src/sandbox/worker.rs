//! Spawning one worker, driving the protocol, enforcing the deadline and classifying how it
//! ended.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::{unbounded, RecvTimeoutError};
use nix::libc;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::isolation::{ChildSetup, Isolation};
use super::protocol::{LlmCall, WorkerMessage};
use crate::types::Usage;

/// Limits of one worker.
#[derive(Debug, Clone)]
pub struct WorkerLimits {
    /// Whole-worker wall-clock deadline (start-up included), on the program's own time: it is
    /// pushed back while the host answers the worker's calls ([`HostTime`]).
    pub deadline: Duration,
    /// Deadline for the program to load (module-level code) and say it is ready; passing it
    /// is a load error naming the cause.
    pub load_deadline: Duration,
    pub memory_mb: u64,
    pub cpu_s: u64,
    pub tasks_in_flight: usize,
    /// Captured print() output kept per task.
    pub stdout_limit: usize,
    /// Largest protocol line accepted from the worker.
    pub max_message_bytes: usize,
    /// Captured print() output beyond which a task is stopped with `OutputLimitExceeded`.
    pub output_limit: usize,
    /// Size of the scratch tmpfs (the only writable place), MiB; also the file-size rlimit.
    pub disk_mb: u64,
    /// RLIMIT_NPROC (threads count). Not enforced for root; seccomp stops new processes.
    pub processes: u64,
    /// Kernel layers around the worker.
    pub isolation: Isolation,
    /// The Python audit hook that names denied operations (`runtime/metaforge/_policy.py`).
    /// Off only in tests that prove the kernel layers hold by themselves.
    pub policy_hook: bool,
    /// Fork the worker from the fork server (default) or exec a fresh interpreter.
    pub start: WorkerStart,
}

/// Address space a thread's stack takes (glibc's default, RLIMIT_STACK's usual 8 MiB).
const THREAD_STACK_MB: u64 = 8;

impl WorkerLimits {
    /// Most threads a worker may run at once (pool and candidate threads together): their
    /// stacks may take half the address space `memory_mb` allows, so a thread flood ends in
    /// a clear error with room left to report it, never an interpreter too starved to.
    /// Never fewer than the task pool and a few threads of the candidate's own.
    pub fn max_threads(&self) -> usize {
        let by_memory = (self.memory_mb / 2 / THREAD_STACK_MB).min(self.processes) as usize;
        by_memory.max(self.tasks_in_flight + 8)
    }

    /// Most threads one task may run at once besides its own: an equal share of
    /// `max_threads` for each task in flight. Why a share and not the worker-wide cap alone:
    /// with one cap for all, whether an agent's fan-out fits depended on what the other
    /// tasks happened to run at that moment; a share gives every task the same answer
    /// whatever the timing.
    pub fn threads_per_task(&self) -> usize {
        let tasks = self.tasks_in_flight.max(1);
        // The pool's own threads and the main one come off the top first.
        (self.max_threads().saturating_sub(2 * tasks + 2) / tasks).max(1)
    }
}

/// How a worker's interpreter comes to be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkerStart {
    /// A fork of the pre-started interpreter (`fork_server.rs`); falls back to `Exec` where
    /// this machine cannot run one.
    #[default]
    ForkServer,
    /// A fresh `python3` per worker.
    Exec,
}

impl Default for WorkerLimits {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(120),
            load_deadline: Duration::from_secs(10),
            memory_mb: 1024,
            cpu_s: 300,
            tasks_in_flight: 4,
            stdout_limit: 4000,
            max_message_bytes: 4 << 20,
            output_limit: 1 << 20,
            disk_mb: 64,
            processes: 1024,
            isolation: Isolation::available(),
            policy_hook: true,
            start: WorkerStart::default(),
        }
    }
}

/// Answers a candidate's `llm()` call; implemented by the evaluator on top of the gateway.
pub trait LlmHandler: Sync {
    fn handle(&self, task_id: Option<&str>, call: &LlmCall) -> Result<(Vec<String>, Usage), String>;
    /// The full answer to a call: JSON values (a guarded call returns what its contract
    /// parsed) or a refusal. Default: `handle`'s texts, and its errors as model errors.
    fn handle_call(&self, task_id: Option<&str>, call: &LlmCall) -> Result<(Vec<serde_json::Value>, Usage), CallError> {
        unguarded_reply(self.handle(task_id, call))
    }
    /// Plays `episode` with the base agent for a memory design's evaluation (`memory`: the
    /// retrieved text, None in the fill phase); default: refused, as agent domains have none.
    fn play_episode(&self, episode: &str, memory: Option<&str>) -> Result<(serde_json::Value, Usage), String> {
        let _ = (episode, memory);
        Err("this domain has no episodes".into())
    }
    /// Refuses a call naming an agent model the experiment does not hold (`llm(model=...)`),
    /// as a request the policy denies; default: only the one model, `default`.
    fn check_model(&self, name: &str) -> Result<(), String> {
        if name == crate::config::SINGLE_MODEL {
            Ok(())
        } else {
            Err(format!("model {name:?} is not one of the experiment's agent models"))
        }
    }
    /// Called as each task reports (progress bars); default: nothing.
    fn task_finished(&self) {}
    /// A remote executor reran this shard (its worker or node died): forget what the dead
    /// attempt did (sample numbering, per-task guard state), so the rerun's calls are the same
    /// requests as the first attempt's and the cache answers those already made.
    fn restart(&self) {}
}

/// `handle`'s answer as `handle_call` gives it: texts as JSON strings, errors as model errors.
pub fn unguarded_reply(
    reply: Result<(Vec<String>, Usage), String>,
) -> Result<(Vec<serde_json::Value>, Usage), CallError> {
    reply
        .map(|(texts, usage)| (texts.into_iter().map(serde_json::Value::String).collect(), usage))
        .map_err(CallError::model)
}

/// A refused or failed model call, as the candidate sees it.
#[derive(Debug, Clone)]
pub struct CallError {
    pub message: String,
    /// A contract refused it (Python raises `ContractError`, not `LLMError`).
    pub contract: bool,
}

impl CallError {
    pub fn model(message: String) -> Self {
        Self {
            message,
            contract: false,
        }
    }

    pub fn contract(message: String) -> Self {
        Self {
            message,
            contract: true,
        }
    }
}

/// What one task produced inside the worker.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TaskRun {
    pub output: Option<String>,
    pub error: Option<String>,
    pub traceback: Option<String>,
    pub stdout: Option<String>,
    pub usage: Usage,
    pub finished: bool,
}

/// How the worker process ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerExit {
    /// All tasks reported (the worker is then killed: it has nothing left to do).
    Completed,
    /// The candidate failed to load (syntax, import, missing `forward`).
    LoadError(String),
    /// The deadline passed; the process group was killed.
    Timeout,
    /// Killed by the CPU-seconds limit.
    CpuLimit,
    /// The worker broke the protocol (oversized or malformed messages).
    ProtocolViolation(String),
    /// Died on a signal (other than ours) or exited before reporting every task.
    Crashed {
        signal: Option<i32>,
        code: Option<i32>,
        stderr_tail: String,
    },
}

/// What a worker returns; serialisable because a remote executor sends it back from a node.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerRun {
    pub tasks: HashMap<String, TaskRun>,
    pub exit: WorkerExit,
    pub protocol_violations: u32,
    /// Operations the sandbox refused (worker policy hook and host-side refusals).
    pub denials: Vec<Denial>,
    pub wall: Duration,
    /// The worker's folder, already removed when this is returned (tests check it).
    pub workdir: PathBuf,
    /// Forked by the fork server (false: its own interpreter was exec'd).
    #[serde(default)]
    pub forked: bool,
}

/// One refused operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Denial {
    pub task_id: Option<String>,
    pub what: String,
}

const WORKDIR_PREFIX: &str = "metaforge-worker-";

/// Removes worker folders left by hosts that were killed (SIGKILL leaves no chance to clean
/// up): a folder is stale when the pid in its name is no longer alive. `run_worker` calls it
/// once per process.
pub fn sweep_stale_workdirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(pid) = name
            .strip_prefix(WORKDIR_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let alive = nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok();
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// How often the host checks whether the worker is still alive while waiting for messages.
const EXIT_POLL: Duration = Duration::from_millis(100);

/// Denials kept per worker: enough to name the attack, bounded against a flood.
const MAX_DENIALS: usize = 32;

/// How far the host's answering time may push a worker's deadline back, as a multiple of the
/// deadline: a bound for a program that calls the model without end when no budget is set.
const HOST_TIME_ALLOWANCE: u32 = 20;

/// The wall-clock time during which at least one of a worker's calls (a model call, an
/// episode) was being answered by the host. Why the deadline leaves it out: it is meant for
/// the program's own time, and a model that is slow or shared with other work (two searches
/// on a small machine, tests in parallel) would otherwise end a whole evaluation as `timeout`
/// through no fault of the program. Each call has its own deadline (`call_deadline_s`), and
/// the CPU limit still stops a program that spins while it waits.
#[derive(Default)]
struct HostTime(Mutex<Stretches>);

/// The stretches during which the host was answering: `since` is when the current one began,
/// and counts only while `open` calls are being answered.
#[derive(Default)]
struct Stretches {
    open: usize,
    since: Option<Instant>,
    before: Duration,
}

impl HostTime {
    /// Counts the host's time until the returned guard drops.
    fn answering(&self) -> HostAnswering<'_> {
        let mut s = self.0.lock().unwrap();
        if s.open == 0 {
            s.since = Some(Instant::now());
        }
        s.open += 1;
        HostAnswering(&self.0)
    }

    fn total(&self) -> Duration {
        let s = self.0.lock().unwrap();
        s.before + s.since.map(|t| t.elapsed()).unwrap_or_default()
    }
}

struct HostAnswering<'a>(&'a Mutex<Stretches>);

impl Drop for HostAnswering<'_> {
    fn drop(&mut self) {
        let mut s = self.0.lock().unwrap();
        s.open -= 1;
        if s.open == 0 {
            if let Some(t) = s.since.take() {
                s.before += t.elapsed();
            }
        }
    }
}

/// One read from the worker's pipe. Kept unboxed although a message is far larger than the
/// other variants: each event is built once and matched at once, never stored, so a box
/// would be one allocation per message for nothing.
#[allow(clippy::large_enum_variant)]
enum Event {
    Message(WorkerMessage),
    Malformed,
    Oversized,
    Eof,
}

/// What the threads talking with one worker share: the pipe to it, its tasks and their
/// nonces, the results so far and the refusals.
struct Conversation<'a> {
    writer: Mutex<File>,
    handler: &'a dyn LlmHandler,
    /// The worker's tasks, each with its nonce. A result counts only with the nonce its task
    /// was sent with: a candidate writing onto the pipe cannot claim a task's result without
    /// digging the nonce out of the worker.
    nonces: HashMap<&'a str, u64>,
    results: Mutex<HashMap<String, TaskRun>>,
    denials: Mutex<Vec<Denial>>,
    host_time: HostTime,
}

impl<'a> Conversation<'a> {
    fn new(writer: File, tasks: &'a [(String, serde_json::Value)], handler: &'a dyn LlmHandler) -> Self {
        Self {
            writer: Mutex::new(writer),
            handler,
            nonces: tasks
                .iter()
                .map(|(id, _)| (id.as_str(), rand::random::<u64>() >> 12))
                .collect(),
            results: Mutex::new(tasks.iter().map(|(id, _)| (id.clone(), TaskRun::default())).collect()),
            denials: Mutex::new(Vec::new()),
            host_time: HostTime::default(),
        }
    }

    /// One write per message: formatting straight into the pipe wrote each piece with its
    /// own syscall, waking the worker for every fragment (seen in a profile).
    fn send(&self, v: serde_json::Value) -> bool {
        let mut line = v.to_string().into_bytes();
        line.push(b'\n');
        self.writer.lock().unwrap().write_all(&line).is_ok()
    }

    fn deny(&self, task_id: Option<String>, what: String) {
        let mut d = self.denials.lock().unwrap();
        if d.len() < MAX_DENIALS {
            d.push(Denial { task_id, what });
        }
    }

    /// `task_id` when it names one of this worker's tasks (a worker may claim anything).
    fn known(&self, task_id: Option<String>) -> Option<String> {
        task_id.filter(|t| self.nonces.contains_key(t.as_str()))
    }

    fn charge(&self, task_id: &Option<String>, usage: &Usage) {
        if let Some(t) = task_id {
            if let Some(r) = self.results.lock().unwrap().get_mut(t) {
                r.usage.merge(usage);
            }
        }
    }

    /// A model call, answered on a pool thread.
    fn answer_llm(&self, id: u64, task_id: Option<String>, call: LlmCall) {
        let _answering = self.host_time.answering();
        let task_id = self.known(task_id);
        let allowed = call
            .validate()
            .and_then(|()| call.model.as_deref().map_or(Ok(()), |m| self.handler.check_model(m)));
        let reply = match allowed {
            Err(e) => {
                self.deny(task_id.clone(), format!("llm request: {e}"));
                Err(CallError::model(format!("request refused by the host: {e}")))
            }
            Ok(()) => self.handler.handle_call(task_id.as_deref(), &call),
        };
        let msg = match reply {
            Ok((values, usage)) => {
                self.charge(&task_id, &usage);
                json!({"type": "llm_result", "id": id, "texts": values})
            }
            Err(e) => json!({"type": "llm_result", "id": id, "error": e.message, "contract": e.contract}),
        };
        self.send(msg);
    }

    /// An episode play, answered on a pool thread.
    fn answer_episode(&self, id: u64, task_id: Option<String>, episode: String, memory: Option<String>) {
        let _answering = self.host_time.answering();
        let task_id = self.known(task_id);
        let msg = match self.handler.play_episode(&episode, memory.as_deref()) {
            Ok((result, usage)) => {
                self.charge(&task_id, &usage);
                json!({"type": "episode_result", "id": id, "result": result})
            }
            Err(e) => json!({"type": "episode_result", "id": id, "error": e}),
        };
        self.send(msg);
    }

    /// Sends every task with its nonce; false when the worker stopped listening.
    fn send_tasks(&self, tasks: &[(String, serde_json::Value)]) -> bool {
        tasks.iter().all(|(id, task)| {
            self.send(json!({"type": "task", "task_id": id, "nonce": self.nonces[id.as_str()], "task": task}))
        })
    }

    /// Records a task's result; false when it is forged (unknown task, repeated result or
    /// wrong nonce).
    fn record(&self, task_id: &str, nonce: Option<u64>, result: ReportedResult) -> bool {
        let mut map = self.results.lock().unwrap();
        let genuine = nonce.is_some() && nonce == self.nonces.get(task_id).copied();
        match map.get_mut(task_id) {
            Some(r) if !r.finished && genuine => {
                r.output = result.output.map(|o| truncate(o, 20_000));
                r.error = result.error;
                r.traceback = result.traceback.map(|t| tail(&t, 4000));
                r.stdout = result.stdout;
                r.finished = true;
                true
            }
            _ => false,
        }
    }
}

/// What a worker reported for one task.
struct ReportedResult {
    output: Option<String>,
    error: Option<String>,
    traceback: Option<String>,
    stdout: Option<String>,
}

/// Runs `code` over `tasks` (id, task JSON) in a fresh worker and waits for it to finish.
pub fn run_worker(
    code: &str,
    tasks: &[(String, serde_json::Value)],
    handler: &dyn LlmHandler,
    limits: &WorkerLimits,
) -> Result<WorkerRun> {
    let started = Instant::now();
    let Started {
        dir,
        stderr_path,
        mut child,
        writer,
        reader,
    } = start_worker(code, limits)?;
    let started_by_fork = matches!(child, WorkerProcess::Forked { .. });
    let t_spawned = started.elapsed();
    let mut t_ready = Duration::ZERO;
    let mut t_done = Duration::ZERO;
    let conv = Conversation::new(writer, tasks, handler);

    let (tx, rx) = unbounded::<Event>();
    let max_line = limits.max_message_bytes;
    let stop_reading = AtomicBool::new(false);
    // Written once the worker is done with, so the reader's poll returns at once.
    let (wake_reader_r, wake_reader_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let mut violations = 0u32;
    let mut exit: Option<WorkerExit> = None;
    let own_deadline = started + limits.deadline;
    let latest_deadline = own_deadline + limits.deadline * HOST_TIME_ALLOWANCE;
    let load_deadline = started + limits.load_deadline.min(limits.deadline);
    let mut ready = false;
    let mut t_killed = Duration::ZERO;
    std::thread::scope(|scope| {
        let calls = CallPool::new(scope);
        // The reader hands calls to the pool itself: through the loop below, each call
        // cost one more thread wake-up, a visible part of a call with an instant model.
        {
            let calls = calls.clone();
            let (conv, stop, wake) = (&conv, &stop_reading, &wake_reader_r);
            scope.spawn(move || {
                read_messages(reader, max_line, wake, stop, &mut |event| match event {
                    Event::Message(WorkerMessage::Llm { id, task_id, call }) => {
                        calls.run(move || conv.answer_llm(id, task_id, call));
                        true
                    }
                    Event::Message(WorkerMessage::Episode {
                        id,
                        task_id,
                        episode,
                        memory,
                    }) => {
                        calls.run(move || conv.answer_episode(id, task_id, episode, memory));
                        true
                    }
                    other => tx.send(other).is_ok(),
                })
            });
        }
        let mut pending = tasks.len();
        loop {
            let now = Instant::now();
            let deadline = (own_deadline + conv.host_time.total()).min(latest_deadline);
            if !ready && now >= load_deadline && load_deadline < own_deadline {
                exit = Some(WorkerExit::LoadError(format!(
                    "the program did not finish loading within {} s: its module-level code runs \
                     once before any task (a loop there never ends); move work into forward(task)",
                    limits.load_deadline.as_secs_f64()
                )));
                break;
            }
            if now >= deadline {
                exit = Some(WorkerExit::Timeout);
                break;
            }
            let until = if ready { deadline } else { load_deadline.min(deadline) };
            let event = match rx.recv_timeout(until.saturating_duration_since(now).min(EXIT_POLL)) {
                Ok(e) => e,
                // The worker may be gone while something it left behind still holds the pipe
                // open (no EOF then): its last words are already queued or never coming.
                Err(RecvTimeoutError::Timeout) => match child.try_wait() {
                    Some(_) => rx.recv_timeout(EXIT_POLL).unwrap_or(Event::Eof),
                    _ => continue,
                },
                Err(RecvTimeoutError::Disconnected) => Event::Eof,
            };
            match event {
                Event::Message(WorkerMessage::Ready) => {
                    ready = true;
                    t_ready = started.elapsed();
                    // A worker that stops listening is judged by how it ends, below.
                    conv.send_tasks(tasks);
                    if tasks.is_empty() {
                        break;
                    }
                }
                Event::Message(WorkerMessage::LoadError { error, traceback }) => {
                    let detail = match traceback {
                        Some(tb) => format!("{error}\n{}", tail(&tb, 1500)),
                        None => error,
                    };
                    exit = Some(WorkerExit::LoadError(detail));
                    break;
                }
                Event::Message(WorkerMessage::Llm { .. } | WorkerMessage::Episode { .. }) => {
                    unreachable!("the reader hands calls to the pool")
                }
                Event::Message(WorkerMessage::Result {
                    task_id,
                    output,
                    error,
                    traceback,
                    stdout,
                    nonce,
                }) => {
                    let result = ReportedResult {
                        output,
                        error,
                        traceback,
                        stdout,
                    };
                    if conv.record(&task_id, nonce, result) {
                        pending -= 1;
                        handler.task_finished();
                    } else {
                        violations += 1;
                    }
                    if pending == 0 {
                        break;
                    }
                }
                Event::Message(WorkerMessage::Denied { task_id, what }) => {
                    conv.deny(conv.known(task_id), what.chars().take(300).collect());
                }
                Event::Message(WorkerMessage::Bye) | Event::Eof => break,
                Event::Malformed => violations += 1,
                Event::Oversized => {
                    exit = Some(WorkerExit::ProtocolViolation(format!(
                        "a message exceeded {max_line} bytes"
                    )));
                    break;
                }
            }
        }
        t_done = started.elapsed();
        end_worker(&mut child, &conv, exit.is_none() && pending == 0, exit.is_none());
        t_killed = started.elapsed();
        // The reader stops now rather than at the pipe's EOF, which comes only once the
        // kernel has torn the worker down (its memory goes before its descriptors).
        stop_reading.store(true, Ordering::Relaxed);
        let _ = nix::unistd::write(&wake_reader_w, b"x");
        // Unblock handler threads waiting to write to a dead worker.
        drop(conv.writer.lock());
        drop(calls); // its threads end once the calls queued before are answered
    });
    let status = child.wait()?;

    let tasks = conv.results.into_inner().unwrap();
    let all_finished = tasks.values().all(|t| t.finished);
    let exit = exit.unwrap_or_else(|| verdict(all_finished, status, &stderr_path));
    let workdir = dir.path().to_path_buf();
    let t_waited = started.elapsed();
    drop(dir);
    tracing::debug!(
        target: "metaforge::worker",
        forked = started_by_fork,
        "worker phases (ms since start): started {:.2}, ready {:.2}, results in {:.2}, killed {:.2}, exit known {:.2}, folder removed {:.2}",
        ms(t_spawned),
        ms(t_ready),
        ms(t_done),
        ms(t_killed),
        ms(t_waited),
        ms(started.elapsed())
    );
    Ok(WorkerRun {
        tasks,
        exit,
        protocol_violations: violations,
        denials: conv.denials.into_inner().unwrap(),
        wall: started.elapsed(),
        workdir,
        forked: started_by_fork,
    })
}

/// Ends a worker. Every result in (`all_in`): the whole group dies now, grandchildren
/// included, and is not waited for. No polite shutdown first: the worker has nothing left to
/// say, and asking cost a couple of milliseconds a worker (its exit noticed by polling) for
/// nothing; its exit status says nothing either. Results missing and no verdict yet
/// (`undecided`: the worker hung up or said bye): it may be ending by itself, and how it ends
/// is the verdict, so it is asked and given a moment before the kill.
fn end_worker(child: &mut WorkerProcess, conv: &Conversation, all_in: bool, undecided: bool) {
    if undecided && !all_in {
        conv.send(json!({"type": "shutdown"}));
        let grace = Instant::now() + Duration::from_millis(500);
        while Instant::now() < grace {
            if child.try_wait().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    child.kill(all_in);
}

/// A worker just started: its folder, where its stderr goes, the process, and the host's
/// ends of its pipes.
struct Started {
    dir: tempfile::TempDir,
    stderr_path: PathBuf,
    child: WorkerProcess,
    writer: File,
    reader: File,
}

/// Writes the candidate into a fresh worker folder and starts the worker on it under every
/// layer `limits` asks for (forked by the fork server, or exec'd).
fn start_worker(code: &str, limits: &WorkerLimits) -> Result<Started> {
    let python = super::python_interpreter()?;
    let runtime = super::runtime_dir()?;
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(sweep_stale_workdirs);
    let dir = tempfile::Builder::new()
        .prefix(&format!("{WORKDIR_PREFIX}{}-", std::process::id()))
        .tempdir()
        .context("cannot create worker temp dir")?;
    let candidate_path = dir.path().join("candidate.py");
    std::fs::write(&candidate_path, code)?;
    let stderr_path = dir.path().join("stderr.txt");
    let stderr_file = File::create(&stderr_path)?;
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch)?;
    let read_roots = super::isolation::read_roots(super::python_prefixes()?, &runtime);
    let setup = ChildSetup::prepare(&limits.isolation, dir.path(), &scratch, &read_roots, limits.disk_mb)?;
    let (to_worker_r, to_worker_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (from_worker_r, from_worker_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let argv = worker_argv(&candidate_path, dir.path(), &scratch, &read_roots, limits);
    let child = WorkerProcess::start(
        limits.start,
        &WorkerCommand {
            python: &python,
            script: &super::worker_script(&runtime),
            argv: &argv,
            env: &worker_env(&scratch),
            cwd: &scratch,
            rlimits: &worker_rlimits(limits),
            rpc_in: to_worker_r.as_raw_fd(),
            rpc_out: from_worker_w.as_raw_fd(),
        },
        setup,
        stderr_file,
    )?;
    // The worker's ends close here, so its exit is the pipes' EOF.
    drop(to_worker_r);
    drop(from_worker_w);
    Ok(Started {
        dir,
        stderr_path,
        child,
        writer: File::from(to_worker_w),
        reader: File::from(from_worker_r),
    })
}

/// The worker's command line: its pipes, the candidate, its limits and its folders.
fn worker_argv(
    candidate: &std::path::Path,
    workdir: &std::path::Path,
    scratch: &std::path::Path,
    read_roots: &[PathBuf],
    limits: &WorkerLimits,
) -> Vec<std::ffi::OsString> {
    let mut argv: Vec<std::ffi::OsString> = ["--rpc-in", "3", "--rpc-out", "4", "--candidate"]
        .iter()
        .map(Into::into)
        .collect();
    argv.push(candidate.into());
    for (flag, value) in [
        ("--tasks-in-flight", limits.tasks_in_flight),
        ("--stdout-limit", limits.stdout_limit),
        ("--output-limit", limits.output_limit),
        ("--max-threads", limits.max_threads()),
        ("--threads-per-task", limits.threads_per_task()),
    ] {
        argv.push(flag.into());
        argv.push(value.to_string().into());
    }
    argv.extend(["--workdir".into(), workdir.into(), "--scratch".into(), scratch.into()]);
    for root in read_roots {
        argv.extend(["--read-root".into(), root.into()]);
    }
    if !limits.policy_hook {
        argv.push("--no-policy-hook".into());
    }
    argv
}

/// The worker's whole environment: nothing of the host's is passed on.
fn worker_env(scratch: &std::path::Path) -> [(&'static str, String); 6] {
    [
        ("PATH", "/usr/local/bin:/usr/bin:/bin".to_string()),
        ("HOME", scratch.display().to_string()),
        ("TMPDIR", scratch.display().to_string()),
        ("PYTHONIOENCODING", "utf-8".to_string()),
        ("PYTHONHASHSEED", "0".to_string()),
        (super::MALLOC_ARENAS.0, super::MALLOC_ARENAS.1.to_string()),
    ]
}

/// The rlimits of a worker: (resource, soft, hard).
fn worker_rlimits(limits: &WorkerLimits) -> [(libc::__rlimit_resource_t, u64, u64); 6] {
    let file_size = limits.disk_mb.max(1) << 20;
    [
        (libc::RLIMIT_AS, limits.memory_mb << 20, limits.memory_mb << 20),
        (libc::RLIMIT_CPU, limits.cpu_s, limits.cpu_s + 1),
        (libc::RLIMIT_FSIZE, file_size, file_size),
        (libc::RLIMIT_NOFILE, 64, 64),
        (libc::RLIMIT_CORE, 0, 0),
        (libc::RLIMIT_NPROC, limits.processes, limits.processes),
    ]
}

/// How a worker ended when the protocol itself gave no verdict (no timeout, load error or
/// violation): completed when every result came in, else from its exit status.
fn verdict(all_finished: bool, status: std::process::ExitStatus, stderr_path: &std::path::Path) -> WorkerExit {
    if all_finished {
        return WorkerExit::Completed;
    }
    let stderr_tail = read_tail(&stderr_path.to_path_buf(), 2000);
    match status.signal() {
        Some(sig) if sig == libc::SIGXCPU => WorkerExit::CpuLimit,
        signal => WorkerExit::Crashed {
            signal,
            code: status.code(),
            stderr_tail,
        },
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The threads that answer a worker's model calls and episode plays, kept for the worker's
/// life. Why not a thread per call: with a fast model, creating and tearing down a thread
/// (its stack mapped, then unmapped with a TLB shootdown on every core) was a visible part
/// of each call (`benches/RESULTS.md`). Why not a fixed pool: a call may block for a model's
/// whole latency, so a call must never queue behind another; a thread is added whenever no
/// idle one is free.
#[derive(Clone)]
struct CallPool<'scope, 'env> {
    scope: &'scope std::thread::Scope<'scope, 'env>,
    jobs: crossbeam_channel::Sender<Box<dyn FnOnce() + Send + 'scope>>,
    queue: crossbeam_channel::Receiver<Box<dyn FnOnce() + Send + 'scope>>,
    idle: Arc<std::sync::atomic::AtomicUsize>,
}

impl<'scope, 'env> CallPool<'scope, 'env> {
    fn new(scope: &'scope std::thread::Scope<'scope, 'env>) -> Self {
        let (jobs, queue) = unbounded();
        Self {
            scope,
            jobs,
            queue,
            idle: Arc::default(),
        }
    }

    fn run(&self, job: impl FnOnce() + Send + 'scope) {
        // Claim an idle thread, or start one: there are never more queued jobs than threads
        // waiting for one, so no call waits for another to finish.
        let claimed = self
            .idle
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        if !claimed {
            let queue = self.queue.clone();
            let idle = self.idle.clone();
            self.scope.spawn(move || {
                while let Ok(job) = queue.recv() {
                    job();
                    idle.fetch_add(1, Ordering::AcqRel);
                }
            });
        }
        let _ = self.jobs.send(Box::new(job));
    }
}

/// What a worker is started with, whichever way it starts.
struct WorkerCommand<'a> {
    python: &'a std::path::Path,
    script: &'a std::path::Path,
    argv: &'a [std::ffi::OsString],
    env: &'a [(&'a str, String)],
    cwd: &'a std::path::Path,
    rlimits: &'a [(libc::__rlimit_resource_t, u64, u64)],
    /// The worker's ends of its pipes (fds 3 and 4 in the worker).
    rpc_in: std::os::fd::RawFd,
    rpc_out: std::os::fd::RawFd,
}

/// A running worker: exec'd by this process, or forked by the fork server.
enum WorkerProcess {
    Exec {
        child: std::process::Child,
        status: Option<std::process::ExitStatus>,
    },
    Forked {
        server: Arc<super::fork_server::ForkServer>,
        pid: i32,
        status: Option<std::process::ExitStatus>,
    },
}

impl WorkerProcess {
    /// Forked by the fork server when `start` asks for it and this machine has one; else
    /// (or when the server fails this request) exec'd.
    fn start(start: WorkerStart, cmd: &WorkerCommand, setup: ChildSetup, stderr: File) -> Result<WorkerProcess> {
        if start == WorkerStart::ForkServer {
            if let Some(server) = super::fork_server::shared() {
                match Self::fork(&server, cmd, &setup, &stderr) {
                    Ok(pid) => {
                        return Ok(WorkerProcess::Forked {
                            server,
                            pid,
                            status: None,
                        })
                    }
                    Err(e) => tracing::warn!("{e:#}; starting this worker's own interpreter"),
                }
            }
        }
        Self::exec(cmd, setup, stderr)
    }

    fn fork(
        server: &super::fork_server::ForkServer,
        cmd: &WorkerCommand,
        setup: &ChildSetup,
        stderr: &File,
    ) -> Result<i32> {
        let argv = cmd
            .argv
            .iter()
            .map(|a| a.to_str().map(str::to_string))
            .collect::<Option<Vec<String>>>()
            .context("a worker argument is not UTF-8")?;
        let rlimits: Vec<(i64, u64, u64)> = cmd.rlimits.iter().map(|&(r, s, h)| (r as i64, s, h)).collect();
        server.spawn(&super::fork_server::SpawnRequest {
            argv: &argv,
            env: cmd.env,
            cwd: cmd.cwd,
            rlimits: &rlimits,
            setup,
            rpc_in: cmd.rpc_in,
            rpc_out: cmd.rpc_out,
            stderr: stderr.as_raw_fd(),
        })
    }

    fn exec(cmd: &WorkerCommand, setup: ChildSetup, stderr: File) -> Result<WorkerProcess> {
        let mut command = Command::new(cmd.python);
        command
            .args(["-I", "-S", "-B"])
            .arg(cmd.script)
            .args(cmd.argv)
            .current_dir(cmd.cwd)
            .env_clear()
            .envs(cmd.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .process_group(0);
        let (child_in, child_out) = (cmd.rpc_in, cmd.rpc_out);
        let rlimits = cmd.rlimits.to_vec();
        // SAFETY: only async-signal-safe libc calls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // Move the pipe ends out of the way first, then onto 3 and 4 (dup2 clears
                // CLOEXEC).
                let a = libc::fcntl(child_in, libc::F_DUPFD, 10);
                let b = libc::fcntl(child_out, libc::F_DUPFD, 10);
                if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(a);
                libc::close(b);
                // Nothing else crosses exec (a stray /dev/null showed up on fd 10): the
                // landlock ruleset sits at 100+ and is close-on-exec.
                for fd in 5..100 {
                    libc::close(fd);
                }
                for &(resource, soft, hard) in &rlimits {
                    let lim = libc::rlimit {
                        rlim_cur: soft as libc::rlim_t,
                        rlim_max: hard as libc::rlim_t,
                    };
                    libc::setrlimit(resource, &lim);
                }
                setup.apply()?;
                // Die with the host: a killed search leaves no orphan workers burning the CPU.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .with_context(|| format!("cannot start worker {}", cmd.python.display()))?;
        Ok(WorkerProcess::Exec { child, status: None })
    }

    fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        match self {
            WorkerProcess::Exec { child, status } => {
                if status.is_none() {
                    *status = child.try_wait().ok().flatten();
                }
                *status
            }
            WorkerProcess::Forked { server, pid, status } => {
                if status.is_none() {
                    *status = server.try_wait(*pid);
                }
                *status
            }
        }
    }

    fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        match self {
            WorkerProcess::Exec { child, status } => match status {
                Some(s) => Ok(*s),
                None => child.wait().inspect(|s| *status = Some(*s)),
            },
            WorkerProcess::Forked { server, pid, status } => Ok(*status.get_or_insert_with(|| server.wait(*pid, None))),
        }
    }

    /// SIGKILL to the whole group, grandchildren included, and to the worker itself in case
    /// it left the group (setpgid/setsid are not denied). Only by whoever has not reaped it
    /// yet (this process for an exec'd worker, the fork server for a forked one): once
    /// reaped, its pid, and so its group's id, may belong to another worker.
    /// `unreported`: nobody needs the exit status; a forked worker is then not waited for
    /// (the server reaps it silently) and reads as killed.
    fn kill(&mut self, unreported: bool) {
        match self {
            WorkerProcess::Exec { child, status: None } => {
                let pid = Pid::from_raw(child.id() as i32);
                let _ = killpg(pid, Signal::SIGKILL);
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            }
            WorkerProcess::Forked {
                server,
                pid,
                status: status @ None,
            } => {
                if unreported {
                    *status = Some(server.kill_unreported(*pid));
                } else {
                    server.kill(*pid)
                }
            }
            _ => {}
        }
    }
}

/// Reads protocol lines until EOF, an oversized line, or `stop`. Polls with a short timeout
/// instead of blocking: a process that escaped the group could hold the pipe open forever,
/// and the host must never wait on it.
/// Each event goes to `deliver`, which says whether to go on; `wake` becoming readable
/// (or `stop`) ends the reading at once.
fn read_messages(
    reader: File,
    max_line: usize,
    wake: &impl std::os::fd::AsFd,
    stop: &AtomicBool,
    deliver: &mut dyn FnMut(Event) -> bool,
) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut scanned = 0;
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [
            PollFd::new(reader.as_fd(), PollFlags::POLLIN),
            PollFd::new(wake.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::from(50u16)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(_) => break,
        }
        if fds[1].any().unwrap_or(false) || fds[0].revents().is_none_or(|r| r.is_empty()) {
            break;
        }
        let n = match (&reader).read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(pos) = buf[scanned..].iter().position(|&b| b == b'\n').map(|p| p + scanned) {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            scanned = 0;
            if line.len() > max_line {
                deliver(Event::Oversized);
                return;
            }
            let event = match serde_json::from_slice::<WorkerMessage>(&line) {
                Ok(m) => Event::Message(m),
                Err(_) => Event::Malformed,
            };
            if !deliver(event) {
                return;
            }
        }
        scanned = buf.len();
        if buf.len() > max_line {
            deliver(Event::Oversized);
            return;
        }
    }
    deliver(Event::Eof);
}

fn truncate(s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…[truncated]", &s[..cut])
}

/// The last `max` bytes of `s` (at a character boundary), marked with a leading `…`.
pub fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}

fn read_tail(path: &PathBuf, max: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    tail(&String::from_utf8_lossy(&text), max)
}
