//! Spawning one worker, driving the protocol, enforcing the deadline and classifying how it
//! ended.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::{unbounded, RecvTimeoutError};
use nix::libc;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::json;

use super::protocol::{LlmCall, WorkerMessage};
use crate::llm::Usage;

/// Limits of one worker.
#[derive(Debug, Clone)]
pub struct WorkerLimits {
    /// Whole-worker wall-clock deadline (start-up included).
    pub deadline: Duration,
    pub memory_mb: u64,
    pub cpu_s: u64,
    pub tasks_in_flight: usize,
    /// Captured print() output kept per task.
    pub stdout_limit: usize,
    /// Largest protocol line accepted from the worker.
    pub max_message_bytes: usize,
}

impl Default for WorkerLimits {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(120),
            memory_mb: 1024,
            cpu_s: 300,
            tasks_in_flight: 4,
            stdout_limit: 4000,
            max_message_bytes: 4 << 20,
        }
    }
}

/// Answers a candidate's `llm()` call; implemented by the evaluator on top of the gateway.
pub trait LlmHandler: Sync {
    fn handle(&self, task_id: Option<&str>, call: &LlmCall) -> Result<(Vec<String>, Usage), String>;
    /// Called as each task reports (progress bars); default: nothing.
    fn task_finished(&self) {}
}

/// What one task produced inside the worker.
#[derive(Debug, Clone, Default)]
pub struct TaskRun {
    pub output: Option<String>,
    pub error: Option<String>,
    pub traceback: Option<String>,
    pub stdout: Option<String>,
    pub usage: Usage,
    pub finished: bool,
}

/// How the worker process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerExit {
    /// All tasks reported and the worker left cleanly (or was reaped after shutdown).
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

pub struct WorkerRun {
    pub tasks: HashMap<String, TaskRun>,
    pub exit: WorkerExit,
    pub protocol_violations: u32,
    pub wall: Duration,
}

enum Event {
    Message(WorkerMessage),
    Malformed,
    Oversized,
    Eof,
}

/// Runs `code` over `tasks` (id, task JSON) in a fresh worker and waits for it to finish.
pub fn run_worker(
    code: &str,
    tasks: &[(String, serde_json::Value)],
    handler: &dyn LlmHandler,
    limits: &WorkerLimits,
) -> Result<WorkerRun> {
    let started = Instant::now();
    let python = super::python_interpreter()?;
    let runtime = super::runtime_dir()?;
    let dir = tempfile::Builder::new()
        .prefix("metaforge-worker-")
        .tempdir()
        .context("cannot create worker temp dir")?;
    let candidate_path = dir.path().join("candidate.py");
    std::fs::write(&candidate_path, code)?;
    let stderr_path = dir.path().join("stderr.txt");
    let stderr_file = File::create(&stderr_path)?;

    let (to_worker_r, to_worker_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (from_worker_r, from_worker_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let child_in = to_worker_r.as_raw_fd();
    let child_out = from_worker_w.as_raw_fd();
    let mut cmd = Command::new(&python);
    cmd.args(["-I", "-S", "-B"])
        .arg(super::worker_script(&runtime))
        .args(["--rpc-in", "3", "--rpc-out", "4", "--candidate"])
        .arg(&candidate_path)
        .arg("--tasks-in-flight")
        .arg(limits.tasks_in_flight.to_string())
        .arg("--stdout-limit")
        .arg(limits.stdout_limit.to_string())
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", dir.path())
        .env("TMPDIR", dir.path())
        .env("PYTHONIOENCODING", "utf-8")
        .env("PYTHONHASHSEED", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr_file))
        .process_group(0);
    let memory = limits.memory_mb << 20;
    let cpu = limits.cpu_s;
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Move the pipe ends out of the way first, then onto 3 and 4 (dup2 clears CLOEXEC).
            let a = libc::fcntl(child_in, libc::F_DUPFD, 10);
            let b = libc::fcntl(child_out, libc::F_DUPFD, 10);
            if a < 0 || b < 0 || libc::dup2(a, 3) < 0 || libc::dup2(b, 4) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close(a);
            libc::close(b);
            let set = |res, soft: u64, hard: u64| {
                let lim = libc::rlimit {
                    rlim_cur: soft as libc::rlim_t,
                    rlim_max: hard as libc::rlim_t,
                };
                libc::setrlimit(res, &lim)
            };
            set(libc::RLIMIT_AS, memory, memory);
            set(libc::RLIMIT_CPU, cpu, cpu + 1);
            set(libc::RLIMIT_FSIZE, 64 << 20, 64 << 20);
            set(libc::RLIMIT_NOFILE, 64, 64);
            set(libc::RLIMIT_CORE, 0, 0);
            // Die with the host: a killed search leaves no orphan workers burning the CPU.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start worker {}", python.display()))?;
    let pgid = Pid::from_raw(child.id() as i32);
    drop(to_worker_r);
    drop(from_worker_w);
    let writer = Mutex::new(File::from(to_worker_w));
    let reader = File::from(from_worker_r);

    let (tx, rx) = unbounded::<Event>();
    let max_line = limits.max_message_bytes;
    let reader_thread = std::thread::spawn(move || read_messages(reader, max_line, tx));

    let task_ids: HashMap<&str, ()> = tasks.iter().map(|(id, _)| (id.as_str(), ())).collect();
    let results: Mutex<HashMap<String, TaskRun>> =
        Mutex::new(tasks.iter().map(|(id, _)| (id.clone(), TaskRun::default())).collect());
    let mut violations = 0u32;
    let mut exit: Option<WorkerExit> = None;
    let deadline = started + limits.deadline;

    let send = |v: serde_json::Value| -> bool {
        let mut w = writer.lock().unwrap();
        writeln!(w, "{v}").and_then(|_| w.flush()).is_ok()
    };
    std::thread::scope(|scope| {
        let mut pending = tasks.len();
        loop {
            let now = Instant::now();
            if now >= deadline {
                exit = Some(WorkerExit::Timeout);
                break;
            }
            let event = match rx.recv_timeout(deadline - now) {
                Ok(e) => e,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => Event::Eof,
            };
            match event {
                Event::Message(WorkerMessage::Ready) => {
                    for (id, task) in tasks {
                        if !send(json!({"type": "task", "task_id": id, "task": task})) {
                            break;
                        }
                    }
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
                Event::Message(WorkerMessage::Llm { id, task_id, call }) => {
                    let task_id = task_id.filter(|t| task_ids.contains_key(t.as_str()));
                    let results = &results;
                    let send = &send;
                    scope.spawn(move || {
                        let reply = match call.validate() {
                            Err(e) => Err(format!("request refused by the host: {e}")),
                            Ok(()) => handler.handle(task_id.as_deref(), &call),
                        };
                        let msg = match reply {
                            Ok((texts, usage)) => {
                                if let Some(t) = &task_id {
                                    if let Some(r) = results.lock().unwrap().get_mut(t) {
                                        r.usage.merge(&usage);
                                    }
                                }
                                json!({"type": "llm_result", "id": id, "texts": texts})
                            }
                            Err(e) => json!({"type": "llm_result", "id": id, "error": e}),
                        };
                        send(msg);
                    });
                }
                Event::Message(WorkerMessage::Result {
                    task_id,
                    output,
                    error,
                    traceback,
                    stdout,
                }) => {
                    let mut map = results.lock().unwrap();
                    match map.get_mut(&task_id) {
                        Some(r) if !r.finished => {
                            r.output = output.map(|o| truncate(o, 20_000));
                            r.error = error;
                            r.traceback = traceback.map(|t| tail(&t, 4000));
                            r.stdout = stdout;
                            r.finished = true;
                            pending -= 1;
                            handler.task_finished();
                        }
                        _ => violations += 1, // unknown or repeated task id: forged
                    }
                    if pending == 0 {
                        break;
                    }
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
        // Ask politely, then make sure: the whole group dies, grandchildren included.
        if exit.is_none() {
            send(json!({"type": "shutdown"}));
            let grace = Instant::now() + Duration::from_millis(500);
            while Instant::now() < grace {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let _ = killpg(pgid, Signal::SIGKILL);
        // Unblock handler threads waiting to write to a dead worker.
        drop(writer.lock());
    });
    let status = child.wait()?;
    let _ = killpg(pgid, Signal::SIGKILL);
    let _ = reader_thread.join();

    let tasks = results.into_inner().unwrap();
    let all_finished = tasks.values().all(|t| t.finished);
    let exit = match exit {
        Some(e) => e,
        None if all_finished => WorkerExit::Completed,
        None => {
            let stderr_tail = read_tail(&stderr_path, 2000);
            match status.signal() {
                Some(sig) if sig == libc::SIGXCPU => WorkerExit::CpuLimit,
                signal => WorkerExit::Crashed {
                    signal,
                    code: status.code(),
                    stderr_tail,
                },
            }
        }
    };
    Ok(WorkerRun {
        tasks,
        exit,
        protocol_violations: violations,
        wall: started.elapsed(),
    })
}

fn read_messages(reader: File, max_line: usize, tx: crossbeam_channel::Sender<Event>) {
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut reader)
            .take(max_line as u64 + 1)
            .read_until(b'\n', &mut line)
            .unwrap_or_default();
        if n == 0 {
            let _ = tx.send(Event::Eof);
            return;
        }
        if line.len() > max_line {
            let _ = tx.send(Event::Oversized);
            return;
        }
        let event = match serde_json::from_slice::<WorkerMessage>(&line) {
            Ok(m) => Event::Message(m),
            Err(_) => Event::Malformed,
        };
        if tx.send(event).is_err() {
            return;
        }
    }
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

fn tail(s: &str, max: usize) -> String {
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
