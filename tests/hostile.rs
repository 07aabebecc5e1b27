//! The hostile corpus: every `tests/hostile/*.py` is a real attack with its expected outcome
//! in a header (`# expect: policy_denied`, optional `# what: <substring>` and
//! `# limits: deadline_s=3 cpu_s=1`). Each runs in a real worker under every layer this
//! kernel has, bypassing `check` (the sandbox must hold on its own).
//!
//! After each case: the outcome is the expected one; nothing of the candidate is alive; its
//! folder is gone; the secret never appears in anything it returned; no file appeared
//! outside; the host's TCP and UDP listeners received nothing. Throughout, a canary worker
//! keeps evaluating a benign candidate and must always succeed, and at the end the run's
//! SQLite archive is intact. The model handler is a scripted stand-in ("Answer: 42").

use std::collections::BTreeMap;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use metaforge::llm::Usage;
use metaforge::sandbox::{
    classify, fork_server, run_worker, Isolation, LlmCall, LlmHandler, Outcome, WorkerExit, WorkerLimits,
};
use serde_json::json;

const SECRET: &str = "sk-hostile-corpus-secret-0123456789";

struct ScriptedModel;
impl LlmHandler for ScriptedModel {
    fn handle(&self, _task: Option<&str>, call: &LlmCall) -> Result<(Vec<String>, Usage), String> {
        Ok((
            (0..call.n).map(|_| "Answer: 42".to_string()).collect(),
            Usage::default(),
        ))
    }
}

struct Case {
    name: String,
    code: String,
    expect: String,
    what: Option<String>,
    limits: WorkerLimits,
}

struct Host {
    home: tempfile::TempDir,
    archive: PathBuf,
    escape: PathBuf,
    tcp: TcpListener,
    udp: UdpSocket,
}

impl Host {
    fn new() -> Host {
        let home = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(home.path().join(".config")).unwrap();
        std::fs::write(home.path().join(".config/credentials"), SECRET).unwrap();
        let archive = home.path().join("run.db");
        let conn = rusqlite::Connection::open(&archive).unwrap();
        conn.execute_batch("CREATE TABLE keep(v TEXT); INSERT INTO keep VALUES ('precious');")
            .unwrap();
        drop(conn);
        let escape = std::env::temp_dir().join(format!("metaforge-escaped-{}", std::process::id()));
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        tcp.set_nonblocking(true).unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        udp.set_nonblocking(true).unwrap();
        Host {
            home,
            archive,
            escape,
            tcp,
            udp,
        }
    }

    fn substitute(&self, code: &str) -> String {
        code.replace(
            "__SECRET_FILE__",
            &self.home.path().join(".config/credentials").display().to_string(),
        )
        .replace("__ARCHIVE__", &self.archive.display().to_string())
        .replace("__ESCAPE__", &self.escape.display().to_string())
        .replace("__PORT__", &self.tcp.local_addr().unwrap().port().to_string())
        .replace("__UDP_PORT__", &self.udp.local_addr().unwrap().port().to_string())
        .replace("__HOST_PID__", &std::process::id().to_string())
    }

    /// What reached the host from inside, if anything. Returns problems instead of
    /// panicking: a panic in a corpus thread would leave the canary running forever.
    fn breaches(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.tcp.accept().is_ok() {
            out.push("a TCP connection reached the host".to_string());
        }
        let mut buf = [0u8; 64];
        if self.udp.recv_from(&mut buf).is_ok() {
            out.push("a datagram reached the host".into());
        }
        if self.escape.exists() {
            out.push("a file was written outside the sandbox".into());
            let _ = std::fs::remove_file(&self.escape);
        }
        let archive = rusqlite::Connection::open(&self.archive).and_then(|conn| {
            let v: String = conn.query_row("SELECT v FROM keep", [], |r| r.get(0))?;
            let ok: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))?;
            Ok((v, ok))
        });
        match archive {
            Ok((v, ok)) if v == "precious" && ok == "ok" => {}
            other => out.push(format!("the archive was damaged: {other:?}")),
        }
        out
    }
}

fn load_cases(host: &Host) -> Vec<Case> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "py"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let header: BTreeMap<&str, &str> = text
                .lines()
                .take_while(|l| l.starts_with('#'))
                .filter_map(|l| l.trim_start_matches('#').split_once(':'))
                .map(|(k, v)| (k.trim(), v.trim()))
                .collect();
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            let expect = header
                .get("expect")
                .unwrap_or_else(|| panic!("{name}: no `# expect:` header"))
                .to_string();
            let mut limits = WorkerLimits {
                deadline: Duration::from_secs(10),
                memory_mb: 512,
                cpu_s: 10,
                tasks_in_flight: 2,
                disk_mb: 32,
                isolation: Isolation::available(),
                ..WorkerLimits::default()
            };
            for kv in header.get("limits").map(|l| l.split_whitespace()).into_iter().flatten() {
                let (k, v) = kv.split_once('=').unwrap();
                let v: u64 = v.parse().unwrap();
                match k {
                    "deadline_s" => limits.deadline = Duration::from_secs(v),
                    "cpu_s" => limits.cpu_s = v,
                    "memory_mb" => limits.memory_mb = v,
                    other => panic!("{name}: unknown limit {other}"),
                }
            }
            Case {
                name,
                code: host.substitute(&text),
                expect,
                what: header.get("what").map(|s| s.to_string()),
                limits,
            }
        })
        .collect()
}

/// Processes whose working directory is inside `dir`: what is left of a candidate.
fn survivors(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().to_string();
        if !pid.chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        if let Ok(cwd) = std::fs::read_link(entry.path().join("cwd")) {
            if cwd.starts_with(dir) {
                out.push(pid);
            }
        }
    }
    out
}

fn tasks() -> Vec<(String, serde_json::Value)> {
    (0..2)
        .map(|i| (format!("t{i}"), json!({"question": format!("q{i}")})))
        .collect()
}

#[test]
fn hostile_corpus_is_contained_with_the_expected_outcomes() {
    run_corpus(true);
}

/// The same attacks with the Python audit hook off: only the kernel layers (namespaces,
/// landlock, seccomp) and rlimits stand. Outcome labels differ then (a bare PermissionError,
/// a failed `os.system` returning -1), but every containment check must still hold.
#[test]
fn kernel_layers_alone_contain_the_corpus() {
    let iso = Isolation::available();
    assert!(
        iso.namespaces && iso.landlock && iso.seccomp,
        "this test needs every kernel layer; `metaforge doctor` shows what is missing: {iso:?}"
    );
    run_corpus(false);
}

fn run_corpus(policy_hook: bool) {
    std::env::set_var("METAFORGE_TEST_API_KEY", SECRET);
    // Where this machine can run the fork server, every case must run through it (a forked
    // worker's parent is the server, not the host), and no attack may bring it down.
    let forked = fork_server::shared().is_some();
    let host = Host::new();
    let mut cases = load_cases(&host);
    for c in &mut cases {
        c.limits.policy_hook = policy_hook;
    }
    assert!(
        cases.len() >= 30,
        "the corpus must hold at least 30 attacks, has {}",
        cases.len()
    );

    // The canary: a benign candidate evaluated over and over while the attacks run.
    let stop = AtomicBool::new(false);
    let canary_runs = AtomicUsize::new(0);
    let failures: std::sync::Mutex<Vec<String>> = Default::default();
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        /// Stops the canary however the scope ends.
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _stop_canary = StopOnDrop(&stop);
        scope.spawn(|| {
            let code = "from metaforge import llm\ndef forward(task):\n    return llm(task['question'])\n";
            while !stop.load(Ordering::Relaxed) {
                let run = run_worker(code, &tasks(), &ScriptedModel, &WorkerLimits::default()).unwrap();
                let (outcome, details) = classify(&[&run], 10);
                if outcome != Outcome::Ok || run.tasks.values().any(|t| t.output.as_deref() != Some("Answer: 42")) {
                    failures
                        .lock()
                        .unwrap()
                        .push(format!("canary failed: {outcome} {details:?}"));
                }
                canary_runs.fetch_add(1, Ordering::Relaxed);
            }
        });
        let workers: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(case) = cases.get(i) else { break };
                    if let Err(e) = run_case(case, &host, policy_hook, forked) {
                        failures.lock().unwrap().push(e);
                    }
                })
            })
            .collect();
        for w in workers {
            if w.join().is_err() {
                failures.lock().unwrap().push("a corpus thread panicked".into());
            }
        }
    });
    let mut failures = failures.into_inner().unwrap();
    failures.extend(host.breaches().into_iter().map(|b| format!("after the corpus: {b}")));
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(canary_runs.load(Ordering::Relaxed) >= 3, "the canary barely ran");
    if forked {
        assert_eq!(fork_server::starts(), 1, "an attack brought the fork server down");
    }
}

fn run_case(case: &Case, host: &Host, check_labels: bool, forked: bool) -> Result<(), String> {
    let run = run_worker(&case.code, &tasks(), &ScriptedModel, &case.limits)
        .map_err(|e| format!("{}: the host failed to run it: {e:#}", case.name))?;
    if forked && !run.forked {
        return Err(format!("{}: its worker was not forked by the fork server", case.name));
    }
    let (outcome, details) = classify(&[&run], case.limits.cpu_s);
    let mut problems = Vec::new();
    if check_labels && outcome.to_string() != case.expect {
        problems.push(format!(
            "outcome {outcome} (expected {}); exit {:?}; details {details:?}; tasks {:?}",
            case.expect,
            run.exit,
            run.tasks.values().map(|t| (&t.output, &t.error)).collect::<Vec<_>>()
        ));
    }
    if let (true, Some(want), Outcome::PolicyDenied { what }) = (check_labels, &case.what, &outcome) {
        if !what.contains(want.as_str()) {
            problems.push(format!("denial names {what:?}, expected it to mention {want:?}"));
        }
    }
    let leaked = run.tasks.values().any(|t| {
        [&t.output, &t.error, &t.traceback, &t.stdout]
            .iter()
            .any(|s| s.as_deref().unwrap_or("").contains(SECRET))
    });
    if leaked {
        problems.push("the secret reached the candidate's output".into());
    }
    if run.workdir.exists() {
        problems.push(format!("its folder {} was left behind", run.workdir.display()));
    }
    // A worker whose results are all in is killed and not waited for: the kernel may still
    // be tearing it down. Anything still there after that is a survivor.
    let mut alive = survivors(&run.workdir);
    let teardown = Instant::now() + Duration::from_secs(2);
    while !alive.is_empty() && Instant::now() < teardown {
        std::thread::sleep(Duration::from_millis(20));
        alive = survivors(&run.workdir);
    }
    if !alive.is_empty() {
        problems.push(format!("processes still alive after the evaluation: {alive:?}"));
    }
    if matches!(run.exit, WorkerExit::Timeout) && run.wall > case.limits.deadline + Duration::from_secs(3) {
        problems.push(format!("the deadline was overrun: {:?}", run.wall));
    }
    problems.extend(host.breaches());
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("{}: {}", case.name, problems.join("; ")))
    }
}
