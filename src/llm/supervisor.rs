//! The embedded model in a process of its own, watched (`models.*.process = "supervised"`,
//! the default), as Ollama runs llama.cpp.
//!
//! Why: llama.cpp is native code, and a fault in it (a kernel that is wrong for this CPU, a
//! failed assertion, the out-of-memory killer) kills whatever process it runs in. In-process,
//! that was the whole run, its progress bar and its gateway, with nothing but "Segmentation
//! fault" on the terminal. Here it is the model process: the supervisor sees it end, says how,
//! and starts it once more, with prefix reuse off (copying one sequence's cells into another
//! is the one llama.cpp path the embedded backend adds to plain decoding); the requests it
//! held are sent again, so the run goes on (a crash that was a passing thing, like the
//! out-of-memory killer, costs a reload), and the restart is an incident the search writes into the archive. A second
//! death marks the backend dead: every call then fails with a message that names what died,
//! how, this CPU and the fix, and the search stops before it commits another step.
//!
//! Requests cross a pipe as JSON lines (`model_process`), tagged with an id, so many are in
//! flight at once and the model process batches them as the in-process backend does.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use crossbeam_channel::{bounded, Sender};

use super::local::{model_id, Fault, FaultSignal, LocalSettings};
use super::model_process::{Features, Message, Request, Start, PROTOCOL};
use super::{Backend, ChatRequest, Completion, LlmError};
use crate::host::Cpu;

/// Set by tests to make the model process crash on purpose: `segv:N` or `abort:N` fires at
/// its Nth decode call, in the first life only; `segv:N:2` in the first two (so the restart
/// dies too). Read by the supervisor, never by the model process itself.
pub const FAULT_ENV: &str = "METAFORGE_MODEL_FAULT";

/// What a restarted model process runs with that the first did not.
const RESTARTED_WITH: &str = "prefix_reuse = false";

/// Lines of the model process's stderr kept for the message when it dies.
const LAST_WORDS: usize = 12;

/// Something that happened to the model process that the run should keep: the search writes
/// each as a `model_restarted` event of the step it commits next.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Incident {
    pub role: String,
    pub model: String,
    /// The life that ended (1 = the first process).
    pub life: u32,
    pub pid: u32,
    /// How it ended, e.g. "killed by signal 11 (SIGSEGV: a segmentation fault ...)".
    pub how: String,
    /// What the next life runs with.
    pub restarted_with: String,
    /// Requests it held, sent again to the next life.
    pub requests_resent: usize,
    pub last_words: Vec<String>,
}

pub struct SupervisedBackend {
    id: String,
    shared: Arc<Shared>,
}

struct Shared {
    role: String,
    settings: LocalSettings,
    /// This machine's processor, read once: what variant builds and messages are judged by.
    cpu: Cpu,
    /// Lives the fault fires in (`FAULT_ENV`).
    fault: Option<(Fault, u32)>,
    /// How many times a dead model process is started again (1; 0 for `doctor`).
    restarts: u32,
    state: Mutex<State>,
    /// Callers waiting for a reply, by request id, with the life they sent it to.
    pending: Mutex<HashMap<u64, (u32, Sender<Outcome>)>>,
    next_id: AtomicU64,
    engine_us: AtomicU64,
    /// Restarts not yet handed to the run (`Backend::incidents` drains them).
    incidents: Mutex<Vec<Incident>>,
    /// Every death so far, how and its last words: the message when the model is dead.
    deaths: Mutex<Vec<(String, Vec<String>)>>,
    /// How long a process may hold requests without answering any before it is killed
    /// (`models.*.hang_timeout_s`).
    hang_timeout: Duration,
    /// When the process last showed life: a reply, or a request sent while it held none.
    activity: Mutex<Instant>,
    /// The life the watchdog killed for hanging (0: none), so its death says so.
    hung: AtomicU32,
}

struct State {
    life: u32,
    pid: u32,
    stdin: Option<ChildStdin>,
    /// The build the model process runs from, and what its kernels use.
    binary: PathBuf,
    build_flags: String,
    system_info: String,
    /// Why the backend answers nothing any more.
    dead: Option<String>,
}

enum Outcome {
    Done(Result<Completion, LlmError>),
    /// The process it was sent to died: send it again (or learn that the model is dead).
    Died,
}

impl SupervisedBackend {
    /// Starts the model process and waits until the model is loaded. `restarts`: how many
    /// times a process that dies is started again; `hang_timeout`: how long it may hold
    /// requests without answering any before it is taken as hung.
    pub fn start(settings: LocalSettings, role: &str, restarts: u32, hang_timeout: Duration) -> Result<Self> {
        let cpu = crate::host::cpu();
        check_cpu(&cpu)?;
        let shared = Arc::new(Shared {
            role: role.to_string(),
            cpu,
            fault: fault_from_env()?,
            restarts,
            state: Mutex::new(State {
                life: 0,
                pid: 0,
                stdin: None,
                binary: PathBuf::new(),
                build_flags: String::new(),
                system_info: String::new(),
                dead: None,
            }),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            engine_us: AtomicU64::new(0),
            incidents: Mutex::new(Vec::new()),
            deaths: Mutex::new(Vec::new()),
            hang_timeout,
            activity: Mutex::new(Instant::now()),
            hung: AtomicU32::new(0),
            settings,
        });
        let life = shared.spawn(1, shared.settings.clone())?;
        *shared.state.lock().unwrap() = life;
        Ok(Self {
            id: model_id(&shared.settings.path),
            shared,
        })
    }

    /// llama.cpp's own account of the CPU features it uses, as the model process reported it.
    pub fn system_info(&self) -> String {
        self.shared.state.lock().unwrap().system_info.clone()
    }

    /// The binary the model process runs from (`model_binary`) and its kernels' flags.
    pub fn build(&self) -> (PathBuf, String) {
        let state = self.shared.state.lock().unwrap();
        (state.binary.clone(), state.build_flags.clone())
    }
}

/// Closing the model process's stdin ends it; marked dead first, so its end is not taken
/// for a crash and restarted.
impl Drop for SupervisedBackend {
    fn drop(&mut self) {
        let mut state = self.shared.state.lock().unwrap();
        state
            .dead
            .get_or_insert_with(|| "the embedded model was shut down".into());
        state.stdin = None;
    }
}

impl Backend for SupervisedBackend {
    fn model_id(&self) -> String {
        self.id.clone()
    }

    fn engine_time(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_micros(
            self.shared.engine_us.load(Ordering::Relaxed),
        ))
    }

    fn context_window(&self) -> Option<u32> {
        Some(self.shared.settings.per_seq)
    }

    fn complete(&self, request: &ChatRequest) -> Result<Completion, LlmError> {
        loop {
            let rx = {
                let mut state = self.shared.state.lock().unwrap();
                if let Some(why) = &state.dead {
                    return Err(LlmError::Fatal(why.clone()));
                }
                let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = bounded(1);
                {
                    let mut pending = self.shared.pending.lock().unwrap();
                    // The hang clock starts when an idle process is given work.
                    if !pending.values().any(|(l, _)| *l == state.life) {
                        *self.shared.activity.lock().unwrap() = Instant::now();
                    }
                    pending.insert(id, (state.life, tx));
                }
                let mut line = serde_json::to_vec(&Request {
                    id,
                    request: request.clone(),
                })
                .expect("requests serialise");
                line.push(b'\n');
                // A write that fails means the process is ending: its reader will see that
                // and answer `Died`, and the request goes to the next life.
                if let Some(stdin) = state.stdin.as_mut() {
                    let _ = stdin.write_all(&line).and_then(|_| stdin.flush());
                }
                rx
            };
            match rx.recv() {
                Ok(Outcome::Done(result)) => return result,
                Ok(Outcome::Died) | Err(_) => continue,
            }
        }
    }

    fn incidents(&self) -> Vec<serde_json::Value> {
        std::mem::take(&mut *self.shared.incidents.lock().unwrap())
            .into_iter()
            .map(|i| serde_json::to_value(i).expect("incidents serialise"))
            .collect()
    }

    fn failure(&self) -> Option<String> {
        self.shared.state.lock().unwrap().dead.clone()
    }
}

impl Shared {
    /// Starts life `life` of the model process with `settings` and waits for its model to
    /// load; a thread then reads its replies until it ends.
    fn spawn(self: &Arc<Self>, life: u32, mut settings: LocalSettings) -> Result<State> {
        settings.fault = self.fault.filter(|&(_, lives)| life <= lives).map(|(f, _)| f);
        let binary = model_binary(&self.cpu)?;
        let mut child = Command::new(&binary)
            .arg("model-process")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start the model process ({} model-process)", binary.display()))?;
        let pid = child.id();
        let mut stdin = child.stdin.take().expect("piped");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let last_words = Arc::new(Mutex::new(VecDeque::new()));
        let stderr = {
            let (pipe, words) = (child.stderr.take().expect("piped"), last_words.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    tracing::debug!(target: "metaforge::model_process", "{line}");
                    let mut w = words.lock().unwrap();
                    if w.len() == LAST_WORDS {
                        w.pop_front();
                    }
                    w.push_back(line);
                }
            })
        };
        let start = Start {
            settings,
            role: self.role.clone(),
        };
        let mut line = serde_json::to_vec(&start).expect("start serialises");
        line.push(b'\n');
        let _ = stdin.write_all(&line).and_then(|_| stdin.flush());
        let mut first = String::new();
        let _ = stdout.read_line(&mut first);
        let (system_info, build_flags) = match serde_json::from_str::<Message>(&first) {
            Ok(Message::Ready {
                system_info,
                build_flags,
            }) => (system_info, build_flags),
            Ok(Message::Failed { error }) => {
                let _ = child.wait();
                bail!("{error}");
            }
            _ => {
                drop(stdin);
                let status = child.wait()?;
                let _ = stderr.join();
                let words: Vec<String> = last_words.lock().unwrap().iter().cloned().collect();
                bail!(
                    "the model process {} while loading {}{}",
                    how_it_ended(status),
                    self.settings.path.display(),
                    quote(&words)
                );
            }
        };
        *self.activity.lock().unwrap() = Instant::now();
        let shared = self.clone();
        std::thread::Builder::new()
            .name(format!("model-process-{life}"))
            .spawn(move || shared.read_replies(life, child, stdout, stderr, last_words))?;
        let shared = self.clone();
        std::thread::Builder::new()
            .name(format!("model-watchdog-{life}"))
            .spawn(move || shared.watch(life, pid))?;
        Ok(State {
            life,
            pid,
            stdin: Some(stdin),
            binary,
            build_flags,
            system_info,
            dead: None,
        })
    }

    /// Hands each reply to its caller until the process ends, then deals with its death.
    fn read_replies(
        self: Arc<Self>,
        life: u32,
        mut child: Child,
        stdout: BufReader<std::process::ChildStdout>,
        stderr: std::thread::JoinHandle<()>,
        last_words: Arc<Mutex<VecDeque<String>>>,
    ) {
        for line in stdout.lines() {
            let Ok(line) = line else { break };
            match serde_json::from_str::<Message>(&line) {
                Ok(Message::Reply { id, result, engine_us }) => {
                    *self.activity.lock().unwrap() = Instant::now();
                    self.engine_us.fetch_add(engine_us, Ordering::Relaxed);
                    if let Some((_, tx)) = self.pending.lock().unwrap().remove(&id) {
                        let _ = tx.send(Outcome::Done(result.map(Completion::from).map_err(LlmError::from)));
                    }
                }
                _ => tracing::warn!(%line, "the model process wrote a line that is not a reply"),
            }
        }
        let status = child.wait();
        let _ = stderr.join();
        let how = match status {
            _ if self.hung.load(Ordering::Relaxed) == life => format!(
                "stopped answering (requests waited {} s with no reply) and was killed",
                self.hang_timeout.as_secs()
            ),
            Ok(s) => how_it_ended(s),
            Err(e) => format!("ended, and its status could not be read ({e})"),
        };
        let words: Vec<String> = last_words.lock().unwrap().iter().cloned().collect();
        self.died(life, how, words);
    }

    /// Kills the process of `life` when it holds requests and has answered none for the hang
    /// timeout. Why: a deadlock or a kernel spinning forever inside llama.cpp would otherwise
    /// stall the run without a word; killed, it is restarted (or declared dead) like a crash.
    fn watch(self: Arc<Self>, life: u32, pid: u32) {
        let timeout = self.hang_timeout;
        loop {
            std::thread::sleep((timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1)));
            {
                let state = self.state.lock().unwrap();
                if state.life != life || state.dead.is_some() {
                    return;
                }
            }
            let waiting = self.pending.lock().unwrap().values().any(|(l, _)| *l == life);
            if waiting && self.activity.lock().unwrap().elapsed() >= timeout {
                tracing::warn!(role = %self.role, life, pid, "the embedded model's process answers nothing; killing it");
                self.hung.store(life, Ordering::Relaxed);
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                return;
            }
        }
    }

    /// The process of `life` is gone: start the next one if a restart is left, else mark the
    /// backend dead; then every caller waiting on that life sends again (or gets the death).
    fn died(self: &Arc<Self>, life: u32, how: String, last_words: Vec<String>) {
        let mut state = self.state.lock().unwrap();
        if state.life != life || state.dead.is_some() {
            return;
        }
        state.stdin = None;
        let waiting: Vec<Sender<Outcome>> = {
            let mut pending = self.pending.lock().unwrap();
            let ids: Vec<u64> = pending
                .iter()
                .filter(|(_, (l, _))| *l == life)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| pending.remove(&id))
                .map(|(_, tx)| tx)
                .collect()
        };
        let model = self
            .settings
            .path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let pid = state.pid;
        tracing::warn!(role = %self.role, life, pid, %how, "the embedded model's process died");
        self.deaths.lock().unwrap().push((how.clone(), last_words.clone()));
        if life <= self.restarts {
            let mut safe = self.settings.clone();
            safe.prefix_reuse = false;
            match self.spawn(life + 1, safe) {
                Ok(next) => {
                    self.incidents.lock().unwrap().push(Incident {
                        role: self.role.clone(),
                        model,
                        life,
                        pid,
                        how,
                        restarted_with: RESTARTED_WITH.into(),
                        requests_resent: waiting.len(),
                        last_words,
                    });
                    *state = next;
                }
                Err(e) => {
                    let mut deaths = self.deaths.lock().unwrap().clone();
                    deaths.push((format!("failed to start: {e:#}"), vec![]));
                    state.dead = Some(self.death_message(&deaths, &state.system_info));
                }
            }
        } else {
            let deaths = self.deaths.lock().unwrap().clone();
            state.dead = Some(self.death_message(&deaths, &state.system_info));
        }
        drop(state);
        for tx in waiting {
            let _ = tx.send(Outcome::Died);
        }
    }

    /// What the user reads when the model is dead: what died, how, on which CPU, the fix.
    fn death_message(&self, deaths: &[(String, Vec<String>)], system_info: &str) -> String {
        let model = self.settings.path.display();
        let mut msg = format!("the embedded model ({model}) died and cannot go on: its process ");
        for (i, (how, words)) in deaths.iter().enumerate() {
            if i > 0 {
                msg.push_str(&format!("; restarted with {RESTARTED_WITH}, it "));
            }
            msg.push_str(how);
            msg.push_str(&quote(words));
        }
        msg.push_str(&format!(
            ". CPU: {}. llama.cpp in this build: {}",
            self.cpu.describe(),
            if system_info.is_empty() {
                super::local::build_flags().to_string()
            } else {
                system_info.to_string()
            }
        ));
        msg.push_str(". Fix: run `metaforge doctor`, which loads the model in a process of its own and says whether it runs on this machine; if it does not, set models.*.backend = \"openai\" with an endpoint, or rebuild for fewer CPU features (docs/experiment.md, \"Which CPUs the embedded model runs on\")");
        msg
    }
}

/// Builds of metaforge whose model kernels are faster on CPUs that have what they need,
/// fastest first: the model process runs from the first that stands beside the metaforge
/// binary and whose needs this CPU meets (`scripts/build-avx512.sh` makes the one named).
/// Why per process rather than per kernel: ggml's runtime choice of CPU variants means
/// a dozen shared libraries built and shipped, and the model has a process of its own anyway.
pub const VARIANTS: &[&str] = &["metaforge-avx512"];

/// Names the binary the model process runs from, whatever stands beside metaforge.
pub const MODEL_BIN_ENV: &str = "METAFORGE_MODEL_BIN";

/// The binary to start the model process from: `$METAFORGE_MODEL_BIN`, else the first of
/// `VARIANTS` beside the metaforge binary that this CPU can run, else metaforge itself.
pub fn model_binary(cpu: &Cpu) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(MODEL_BIN_ENV) {
        return Ok(PathBuf::from(p));
    }
    let main = crate::host::metaforge_binary()?;
    let runnable = |p: &PathBuf| {
        let out = Command::new(p).args(["model-process", "--features"]).output().ok()?;
        let features: Features = serde_json::from_slice(&out.stdout).ok()?;
        if features.protocol != PROTOCOL {
            tracing::warn!(
                "{} is from another version of metaforge and is not used; fix: rebuild it (scripts/build-avx512.sh) or delete it",
                p.display()
            );
            return Some(false);
        }
        Some(features.needs.iter().all(|f| cpu.has(f)))
    };
    Ok(VARIANTS
        .iter()
        .map(|v| main.with_file_name(v))
        .find(|p| p.is_file() && runnable(p) == Some(true))
        .unwrap_or(main))
}

/// Refuses to start a model whose build needs CPU features this CPU lacks: it would die of
/// an illegal instruction at its first matrix product.
fn check_cpu(cpu: &Cpu) -> Result<()> {
    if cfg!(not(target_arch = "x86_64")) || cpu.features.is_empty() && cpu.model == std::env::consts::ARCH {
        return Ok(()); // no /proc/cpuinfo flags to judge by
    }
    let needs = super::local::build_features();
    let missing = cpu.missing(&needs);
    if !missing.is_empty() {
        bail!(
            "this build of the embedded model needs the CPU features {} and this CPU ({}) lacks {}; fix: rebuild with the GGML_* variables of .cargo/config.toml set to what this CPU has (docs/experiment.md, \"Which CPUs the embedded model runs on\"), or use models.*.backend = \"openai\"",
            needs.join(" ").to_uppercase(),
            cpu.model,
            missing.join(" ").to_uppercase()
        );
    }
    Ok(())
}

/// `FAULT_ENV`, parsed: the fault and the number of lives it fires in.
fn fault_from_env() -> Result<Option<(Fault, u32)>> {
    match std::env::var(FAULT_ENV) {
        Ok(spec) => parse_fault(&spec).map(Some),
        Err(_) => Ok(None),
    }
}

fn parse_fault(spec: &str) -> Result<(Fault, u32)> {
    let parts: Vec<&str> = spec.split(':').collect();
    let bad = || {
        anyhow!("{FAULT_ENV} = {spec:?} is not `segv:N`, `abort:N`, `hang:N` or `segv:N:LIVES`; fix: correct or unset it (it is for tests)")
    };
    let signal = match parts.first().copied() {
        Some("segv") => FaultSignal::Segv,
        Some("abort") => FaultSignal::Abort,
        Some("hang") => FaultSignal::Hang,
        _ => return Err(bad()),
    };
    let at_decode: u64 = parts
        .get(1)
        .and_then(|n| n.parse().ok())
        .filter(|&n| n > 0)
        .ok_or_else(bad)?;
    let lives: u32 = match parts.get(2) {
        Some(n) => n.parse().map_err(|_| bad())?,
        None => 1,
    };
    if parts.len() > 3 {
        return Err(bad());
    }
    Ok((Fault { signal, at_decode }, lives))
}

/// How a process ended, in words a user can act on.
pub fn how_it_ended(status: ExitStatus) -> String {
    if let Some(sig) = status.signal() {
        let name = nix::sys::signal::Signal::try_from(sig)
            .map(|s| s.as_str())
            .unwrap_or("?");
        let meaning = match name {
            "SIGSEGV" => ": a segmentation fault, a bad memory access inside llama.cpp",
            "SIGILL" => ": an illegal instruction, a CPU feature the build uses and this CPU lacks",
            "SIGABRT" => ": an abort, a failed check inside llama.cpp",
            "SIGBUS" => ": a bus error, a bad memory access inside llama.cpp",
            "SIGKILL" => ": killed, e.g. by the kernel's out-of-memory killer",
            _ => "",
        };
        format!("was killed by signal {sig} ({name}{meaning})")
    } else {
        format!("exited with status {}", status.code().unwrap_or(-1))
    }
}

fn quote(words: &[String]) -> String {
    let words: Vec<&str> = words.iter().map(|w| w.trim()).filter(|w| !w.is_empty()).collect();
    if words.is_empty() {
        String::new()
    } else {
        format!(", its last words: \"{}\"", words.join(" / "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_specs() {
        let segv = Fault {
            signal: FaultSignal::Segv,
            at_decode: 40,
        };
        assert_eq!(parse_fault("segv:40").unwrap(), (segv, 1));
        assert_eq!(parse_fault("abort:3:2").unwrap().1, 2);
        for bad in ["", "segv", "segv:0", "segv:x", "kill:3", "segv:3:2:1"] {
            let e = parse_fault(bad).unwrap_err().to_string();
            assert!(e.contains(FAULT_ENV) && e.contains("fix:"), "{bad}: {e}");
        }
    }

    #[test]
    fn how_a_process_ended_is_said_in_words() {
        let status = |script: &str| Command::new("sh").args(["-c", script]).status().unwrap();
        assert_eq!(
            how_it_ended(status("kill -SEGV $$")),
            "was killed by signal 11 (SIGSEGV: a segmentation fault, a bad memory access inside llama.cpp)"
        );
        assert!(how_it_ended(status("kill -ILL $$")).contains("a CPU feature the build uses and this CPU lacks"));
        assert_eq!(how_it_ended(status("exit 3")), "exited with status 3");
    }
}
