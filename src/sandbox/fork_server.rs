//! The fork server: one pre-started Python interpreter (`runtime/zygote.py`) that forks a
//! fresh worker per evaluation, instead of exec'ing a new interpreter each time.
//!
//! Why: with a fast model, starting an interpreter and importing the worker is most of a
//! search's orchestration cost (`benches/RESULTS.md` has the profile). A fork of a warm
//! interpreter costs a fraction of that.
//!
//! Why isolation does not suffer: the child applies, for itself, every layer an exec'd
//! worker gets (its own user/network/mount namespaces and tmpfs, the landlock ruleset the
//! host built for this evaluation alone, passed as a descriptor, the seccomp filter,
//! rlimits, its own process group), before it reads the candidate. Landlock's signal scope
//! and seccomp keep a child away from the server and its siblings; the hostile corpus runs
//! through this path (`tests/hostile.rs`).
//!
//! The server keeps one spare child forked ahead and warmed up (its first compile and JSON
//! round trip), which the next request is handed to: a spawn is then a message, not a fork.
//!
//! When the server cannot start or its probe child cannot apply the layers, metaforge warns
//! once and exec's one interpreter per evaluation (`METAFORGE_FORK_SERVER=0` chooses that
//! path outright).

use std::collections::HashMap;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::libc;
use nix::sys::socket::{
    recv, sendmsg, socketpair, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr,
};
use serde_json::{json, Value};

use super::isolation::{seccomp_hex, ChildSetup, Isolation};

/// How long a spawn request may wait for the server's answer before the worker is exec'd
/// instead.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Exit code of a child that could not apply its layers (`SETUP_FAILED` in zygote.py).
pub const SETUP_FAILED: i32 = 70;

/// One running fork server.
pub struct ForkServer {
    control: OwnedFd,
    next_id: AtomicU64,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    spawned: HashMap<u64, Result<i32, String>>,
    exited: HashMap<i32, i32>,
    /// Workers whose unreported kill the server has taken (it signals them next).
    killed: std::collections::HashSet<i32>,
    /// Why the server is gone, once it is.
    gone: Option<String>,
}

/// What one child is started with, besides the layers.
pub struct SpawnRequest<'a> {
    pub argv: &'a [String],
    pub env: &'a [(&'a str, String)],
    pub cwd: &'a Path,
    pub rlimits: &'a [(i64, u64, u64)],
    pub setup: &'a ChildSetup,
    /// The worker's ends of its pipes and its stderr file: fds 3, 4 and 2 in the child.
    pub rpc_in: RawFd,
    pub rpc_out: RawFd,
    pub stderr: RawFd,
}

static STARTS: AtomicU64 = AtomicU64::new(0);
static DISABLED: OnceLock<String> = OnceLock::new();

/// `METAFORGE_FORK_SERVER=0`: exec a fresh interpreter per worker.
fn turned_off() -> bool {
    std::env::var_os("METAFORGE_FORK_SERVER").is_some_and(|v| v == "0")
}

/// Why this process runs without a fork server, if it does (`metaforge doctor`).
pub fn unavailable() -> Option<String> {
    if turned_off() {
        return Some("METAFORGE_FORK_SERVER=0".into());
    }
    DISABLED.get().cloned()
}

/// How many fork servers this process has started (tests: a candidate must not be able to
/// kill the server, which would show as a restart).
pub fn starts() -> u64 {
    STARTS.load(Ordering::Relaxed)
}

/// The process's fork server, started on first use and again if it died; None when this
/// machine cannot use one (warned once) or `METAFORGE_FORK_SERVER=0`.
pub fn shared() -> Option<Arc<ForkServer>> {
    static SLOT: Mutex<Option<Arc<ForkServer>>> = Mutex::new(None);
    if turned_off() || DISABLED.get().is_some() {
        return None;
    }
    let mut slot = SLOT.lock().unwrap();
    if let Some(server) = slot.as_ref().filter(|s| s.alive()) {
        return Some(server.clone());
    }
    match ForkServer::start() {
        Ok(server) => {
            STARTS.fetch_add(1, Ordering::Relaxed);
            let server = Arc::new(server);
            *slot = Some(server.clone());
            Some(server)
        }
        Err(e) => {
            let why = format!("{e:#}");
            eprintln!("metaforge: warning: no fork server ({why}); starting one Python interpreter per evaluation");
            let _ = DISABLED.set(why);
            None
        }
    }
}

impl ForkServer {
    /// Starts the server, hands it the seccomp programs and checks, with a probe child,
    /// that a forked child can apply every layer this kernel offers.
    fn start() -> Result<ForkServer> {
        let python = super::python_interpreter()?;
        let script = super::runtime_dir()?.join("zygote.py");
        let (host_end, server_end) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
            .context("cannot create the fork server's socket")?;
        let reader_end = host_end.try_clone()?;
        let shared = Arc::new(Shared::default());
        let (started_tx, started_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
        let thread_shared = shared.clone();
        // The thread that starts the server is the one that reads from it, for as long as it
        // lives: PR_SET_PDEATHSIG fires when the *thread* that forked a process exits.
        std::thread::Builder::new()
            .name("metaforge-fork-server".into())
            .spawn(move || {
                let server_fd = server_end.as_raw_fd();
                let mut cmd = Command::new(&python);
                cmd.args(["-I", "-S", "-B"])
                    .arg(&script)
                    .current_dir("/") // pins no folder of the host's
                    .env_clear()
                    .env("PATH", "/usr/local/bin:/usr/bin:/bin")
                    .env("PYTHONIOENCODING", "utf-8")
                    .env("PYTHONHASHSEED", "0")
                    .env(super::MALLOC_ARENAS.0, super::MALLOC_ARENAS.1)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .process_group(0);
                // SAFETY: only async-signal-safe libc calls between fork and exec.
                unsafe {
                    cmd.pre_exec(move || {
                        if libc::dup2(server_fd, 3) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
                        Ok(())
                    });
                }
                let mut child = match cmd.spawn() {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                drop(server_end);
                let _ = started_tx.send(Ok(()));
                read_replies(&reader_end, &thread_shared);
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::SIGKILL);
                let _ = child.wait();
            })
            .context("cannot start the fork server's thread")?;
        started_rx
            .recv()
            .map_err(|_| anyhow!("the fork server's thread ended"))?
            .context("cannot start the fork server's interpreter")?;
        let server = ForkServer {
            control: host_end,
            next_id: AtomicU64::new(1),
            shared,
        };
        let sys = json!({
            "seccomp": libc::SYS_seccomp,
            "capset": libc::SYS_capset,
            "landlock_add_rule": libc::SYS_landlock_add_rule,
            "landlock_restrict_self": libc::SYS_landlock_restrict_self,
        });
        let programs = seccomp_hex().unwrap_or_default();
        server.send(&json!({"type": "hello", "seccomp": programs, "sys": sys}), &[])?;
        server.probe().context("the fork server's probe child failed")?;
        Ok(server)
    }

    /// A child under every layer this kernel offers that exits as soon as they hold.
    fn probe(&self) -> Result<()> {
        let dir = tempfile::Builder::new().prefix("metaforge-fork-probe-").tempdir()?;
        let scratch = dir.path().join("scratch");
        std::fs::create_dir(&scratch)?;
        let stderr_path = dir.path().join("stderr.txt");
        let stderr = std::fs::File::create(&stderr_path)?;
        let runtime = super::runtime_dir()?;
        let roots = super::isolation::read_roots(super::python_prefixes()?, &runtime);
        let setup = ChildSetup::prepare(&Isolation::available(), dir.path(), &scratch, &roots, 1)?;
        let null = std::fs::File::open("/dev/null")?;
        let pid = self.spawn_child(
            &SpawnRequest {
                argv: &[],
                env: &[],
                cwd: &scratch,
                rlimits: &[],
                setup: &setup,
                rpc_in: null.as_raw_fd(),
                rpc_out: null.as_raw_fd(),
                stderr: stderr.as_raw_fd(),
            },
            true,
        )?;
        let status = self.wait(pid, Some(Instant::now() + SPAWN_TIMEOUT));
        if !status.success() {
            let said = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            bail!("it ended with {status}: {}", said.trim());
        }
        Ok(())
    }

    pub fn alive(&self) -> bool {
        self.shared.state.lock().unwrap().gone.is_none()
    }

    fn send(&self, msg: &Value, fds: &[RawFd]) -> Result<()> {
        let bytes = msg.to_string().into_bytes();
        let iov = [IoSlice::new(&bytes)];
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
        sendmsg::<UnixAddr>(self.control.as_raw_fd(), &iov, cmsgs, MsgFlags::empty(), None)
            .context("cannot reach the fork server")?;
        Ok(())
    }

    /// Forks a worker; returns its pid (also its process group).
    pub fn spawn(&self, req: &SpawnRequest) -> Result<i32> {
        self.spawn_child(req, false)
    }

    fn spawn_child(&self, req: &SpawnRequest, probe: bool) -> Result<i32> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (layers, ruleset) = req.setup.fork_layers()?;
        let mut fds = vec![req.rpc_in, req.rpc_out, req.stderr];
        fds.extend(ruleset);
        let env: serde_json::Map<String, Value> = req.env.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        let mut msg = json!({
            "type": "spawn",
            "id": id,
            "argv": if probe { Value::Null } else { json!(req.argv) },
            "env": env,
            "cwd": req.cwd.to_str().context("worker folder is not UTF-8")?,
            "rlimits": req.rlimits,
        });
        msg.as_object_mut().unwrap().extend(layers);
        self.send(&msg, &fds)?;
        self.answer(|state| state.spawned.remove(&id))?
            .map_err(|e| anyhow!("the fork server could not fork: {e}"))
    }

    /// Waits (up to SPAWN_TIMEOUT) until `take` finds the server's answer in the state.
    fn answer<T>(&self, mut take: impl FnMut(&mut State) -> Option<T>) -> Result<T> {
        let deadline = Instant::now() + SPAWN_TIMEOUT;
        let mut state = self.shared.state.lock().unwrap();
        loop {
            if let Some(answer) = take(&mut state) {
                return Ok(answer);
            }
            if let Some(why) = &state.gone {
                bail!("the fork server is gone ({why})");
            }
            let now = Instant::now();
            if now >= deadline {
                bail!("the fork server did not answer within {SPAWN_TIMEOUT:?}");
            }
            state = self.shared.changed.wait_timeout(state, deadline - now).unwrap().0;
        }
    }

    /// SIGKILLs a worker and its process group. Done by the server because the server reaps
    /// its children: only it knows the pid is still this worker's and not yet reused.
    pub fn kill(&self, pid: i32) {
        // A server that is gone took its children with it (their death signal).
        let _ = self.send(&json!({"type": "kill", "pid": pid}), &[]);
    }

    /// Kills a worker whose exit status nobody needs (every result is in): returns once the
    /// server has taken the kill (it sends SIGKILL to the group next, before any later
    /// request), without waiting for the kernel to tear the worker down (2-6 ms for a Python
    /// process and its namespaces, seen in the orchestration bench); the server reaps it
    /// without reporting. Returns the status to record for it.
    pub fn kill_unreported(&self, pid: i32) -> ExitStatus {
        if self
            .send(&json!({"type": "kill", "pid": pid, "report": false}), &[])
            .is_err()
        {
            return killed(); // a server that is gone took its children with it
        }
        // It may have exited by itself just before: that report (sent before the answer) is
        // not wanted either, and is dropped under the same lock as the answer is taken.
        let taken = self.answer(|state| {
            state.killed.remove(&pid).then(|| {
                state.exited.remove(&pid);
            })
        });
        if taken.is_err() {
            // Gone or silent: nothing more to learn about this worker either way.
            self.shared.state.lock().unwrap().exited.remove(&pid);
        }
        killed()
    }

    /// The child's exit status if it has ended.
    pub fn try_wait(&self, pid: i32) -> Option<ExitStatus> {
        let mut state = self.shared.state.lock().unwrap();
        state
            .exited
            .remove(&pid)
            .map(ExitStatus::from_raw)
            .or_else(|| state.gone.as_ref().map(|_| killed()))
    }

    /// Waits for the child's exit (until `deadline`, if any; then it reads as killed). A
    /// child of a server that died is dead too (its death signal).
    pub fn wait(&self, pid: i32, deadline: Option<Instant>) -> ExitStatus {
        let mut state = self.shared.state.lock().unwrap();
        loop {
            if let Some(status) = state.exited.remove(&pid) {
                return ExitStatus::from_raw(status);
            }
            if state.gone.is_some() {
                return killed();
            }
            let wait = match deadline {
                Some(d) if Instant::now() >= d => return killed(),
                Some(d) => d - Instant::now(),
                None => Duration::from_secs(1),
            };
            state = self.shared.changed.wait_timeout(state, wait).unwrap().0;
        }
    }
}

fn killed() -> ExitStatus {
    ExitStatus::from_raw(libc::SIGKILL)
}

/// The server's side of the socket, until it closes: spawn answers and exit statuses.
fn read_replies(fd: &OwnedFd, shared: &Shared) {
    let mut buf = vec![0u8; 64 * 1024];
    let why = loop {
        let n = match recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
            Ok(0) => break "it exited".to_string(),
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => break format!("reading its socket failed: {e}"),
        };
        let Ok(msg) = serde_json::from_slice::<Value>(&buf[..n]) else {
            continue;
        };
        let mut state = shared.state.lock().unwrap();
        match msg["type"].as_str() {
            Some("spawned") => {
                if let (Some(id), Some(pid)) = (msg["id"].as_u64(), msg["pid"].as_i64()) {
                    state.spawned.insert(id, Ok(pid as i32));
                }
            }
            Some("failed") => {
                if let Some(id) = msg["id"].as_u64() {
                    state
                        .spawned
                        .insert(id, Err(msg["error"].as_str().unwrap_or("").to_string()));
                } else {
                    tracing::warn!("fork server: {}", msg["error"]);
                }
            }
            Some("killed") => {
                if let Some(pid) = msg["pid"].as_i64() {
                    state.killed.insert(pid as i32);
                }
            }
            Some("exited") => {
                if let (Some(pid), Some(status)) = (msg["pid"].as_i64(), msg["status"].as_i64()) {
                    state.exited.insert(pid as i32, status as i32);
                }
            }
            _ => {}
        }
        drop(state);
        shared.changed.notify_all();
    };
    shared.state.lock().unwrap().gone = Some(why);
    shared.changed.notify_all();
}
