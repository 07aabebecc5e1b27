//! Real Python workers under the real sandbox: outputs, model-call proxying and every typed
//! outcome. Attacks live in the hostile corpus (`tests/hostile.rs`). The model handler here is a scripted stand-in (it answers "Answer: 42"): these
//! tests are about the sandbox, not the model.

use std::time::{Duration, Instant};

use metaforge::llm::Usage;
use metaforge::sandbox::{run_worker, LlmCall, LlmHandler, WorkerExit, WorkerLimits};
use serde_json::json;

struct ScriptedModel;
impl LlmHandler for ScriptedModel {
    fn handle(&self, _task: Option<&str>, call: &LlmCall) -> Result<(Vec<String>, Usage), String> {
        let usage = Usage {
            calls: u64::from(call.n),
            prompt_tokens: 10,
            completion_tokens: 3,
            ..Default::default()
        };
        Ok(((0..call.n).map(|_| "Answer: 42".to_string()).collect(), usage))
    }
}

fn tasks(n: usize) -> Vec<(String, serde_json::Value)> {
    (0..n)
        .map(|i| (format!("t{i}"), json!({"question": format!("q{i}")})))
        .collect()
}

fn limits(secs: u64) -> WorkerLimits {
    WorkerLimits {
        deadline: Duration::from_secs(secs),
        memory_mb: 512,
        cpu_s: 30,
        tasks_in_flight: 4,
        ..Default::default()
    }
}

#[test]
fn agent_runs_calls_the_model_and_prints_are_captured() {
    let code = "from metaforge import llm, majority\nimport json\ndef forward(task):\n    print('noise on stdout', task['question'])\n    return majority(llm('hi ' + task['question'], n=3))\n";
    let run = run_worker(code, &tasks(6), &ScriptedModel, &limits(30)).unwrap();
    assert_eq!(run.exit, WorkerExit::Completed);
    assert_eq!(run.tasks.len(), 6);
    for t in run.tasks.values() {
        assert_eq!(t.output.as_deref(), Some("Answer: 42"));
        assert_eq!(t.usage.calls, 3, "usage is attributed to the task");
        assert!(t.stdout.as_deref().unwrap_or("").contains("noise on stdout"));
    }
    assert_eq!(run.protocol_violations, 0);
}

#[test]
fn exceptions_are_per_task_with_traceback() {
    let code =
        "def forward(task):\n    if task['question'] == 'q1':\n        raise ValueError('bad task')\n    return 'ok'\n";
    let run = run_worker(code, &tasks(3), &ScriptedModel, &limits(30)).unwrap();
    assert_eq!(run.exit, WorkerExit::Completed);
    let t1 = &run.tasks["t1"];
    assert!(t1.error.as_deref().unwrap().contains("ValueError: bad task"));
    assert!(t1.traceback.as_deref().unwrap().contains("candidate.py"));
    assert_eq!(run.tasks["t0"].output.as_deref(), Some("ok"));
}

#[test]
fn load_error_is_typed() {
    let run = run_worker(
        "raise RuntimeError('at import')\n",
        &tasks(2),
        &ScriptedModel,
        &limits(30),
    )
    .unwrap();
    match run.exit {
        WorkerExit::LoadError(e) => assert!(e.contains("at import"), "{e}"),
        other => panic!("expected LoadError, got {other:?}"),
    }
}

#[test]
fn infinite_loop_hits_the_deadline_and_the_group_dies() {
    let code = "def forward(task):\n    while True:\n        pass\n";
    let start = Instant::now();
    let run = run_worker(code, &tasks(2), &ScriptedModel, &limits(2)).unwrap();
    assert_eq!(run.exit, WorkerExit::Timeout);
    assert!(start.elapsed() < Duration::from_secs(8), "took {:?}", start.elapsed());
}

/// A scripted model that takes its time, like a real one on a busy machine.
struct SlowModel(Duration);
impl LlmHandler for SlowModel {
    fn handle(&self, task: Option<&str>, call: &LlmCall) -> Result<(Vec<String>, Usage), String> {
        std::thread::sleep(self.0);
        ScriptedModel.handle(task, call)
    }
}

/// The deadline is the program's own time: waiting on the model does not count, so a slow
/// or shared model does not turn a whole evaluation into `timeout`. Time the program spends
/// itself still does, calls or no calls.
#[test]
fn time_spent_waiting_on_the_model_does_not_count_toward_the_deadline() {
    let code = "from metaforge import llm\ndef forward(task):\n    return ' '.join(llm('q') for _ in range(3))\n";
    let start = Instant::now();
    let run = run_worker(code, &tasks(2), &SlowModel(Duration::from_millis(1500)), &limits(2)).unwrap();
    assert_eq!(run.exit, WorkerExit::Completed, "{:?}", start.elapsed());
    assert!(start.elapsed() > Duration::from_secs(4), "the calls took their time");
    assert_eq!(
        run.tasks["t1"].output.as_deref(),
        Some("Answer: 42 Answer: 42 Answer: 42")
    );

    let code = "import time\nfrom metaforge import llm\ndef forward(task):\n    llm('q')\n    time.sleep(60)\n";
    let start = Instant::now();
    let run = run_worker(code, &tasks(1), &SlowModel(Duration::from_millis(1500)), &limits(2)).unwrap();
    assert_eq!(run.exit, WorkerExit::Timeout);
    let took = start.elapsed();
    assert!(
        took > Duration::from_millis(3400) && took < Duration::from_secs(8),
        "the deadline is pushed back by the call's time alone: {took:?}"
    );
}

#[test]
fn memory_hog_gets_memory_error() {
    let code = "def forward(task):\n    x = bytearray(4 * 1024 * 1024 * 1024)\n    return str(len(x))\n";
    let run = run_worker(code, &tasks(1), &ScriptedModel, &limits(30)).unwrap();
    let t = &run.tasks["t0"];
    assert!(t.error.as_deref().unwrap_or("").starts_with("MemoryError"), "{t:?}");
}

/// Every task of a 512 MB worker may fan out its full share of threads at the same moment
/// (a barrier holds them all alive together, so the test does not depend on timing), and
/// one thread more is refused in that task alone, by name, every time. With a single
/// worker-wide cap, two tasks that fanned out 24 threads each passed alone and failed when
/// they overlapped. A flood is stopped by the caps with every task reported, where running
/// into the address-space limit left the interpreter too starved to report.
#[test]
fn threads_fan_out_and_a_flood_is_refused_by_name() {
    let limits = limits(30);
    let share = limits.threads_per_task();
    let tasks_in_flight = limits.tasks_in_flight;
    assert!(share >= 4, "a 512 MB worker gives each task a useful share ({share})");
    let fan_out = format!(
        "import threading\nfrom metaforge import llm\n\
         _all = threading.Barrier({together}, timeout=20)\n\
         def forward(task):\n    out = []\n\
         \x20   def work():\n        out.append(llm('x'))\n        _all.wait()\n\
         \x20   ts = [threading.Thread(target=work) for _ in range({share})]\n\
         \x20   for t in ts: t.start()\n    for t in ts: t.join()\n\
         \x20   return str(len(out))\n",
        together = tasks_in_flight * share,
    );
    // One thread more than the share, tried while the share is alive.
    let over = format!(
        "import threading\ndef forward(task):\n    go = threading.Event()\n\
         \x20   ts = [threading.Thread(target=go.wait) for _ in range({share})]\n\
         \x20   for t in ts: t.start()\n\
         \x20   try:\n        threading.Thread(target=lambda: None).start()\n        extra = 'started'\n\
         \x20   except RuntimeError as e:\n        extra = str(e)\n\
         \x20   go.set()\n    for t in ts: t.join()\n    return extra\n"
    );
    for _ in 0..3 {
        let run = run_worker(&fan_out, &tasks(tasks_in_flight), &ScriptedModel, &limits).unwrap();
        assert_eq!(run.exit, WorkerExit::Completed);
        for t in run.tasks.values() {
            assert_eq!(t.output.as_deref(), Some(share.to_string().as_str()), "{t:?}");
            assert_eq!(
                t.usage.calls, share as u64,
                "calls from a task's threads are the task's"
            );
        }
        let run = run_worker(&over, &tasks(tasks_in_flight), &ScriptedModel, &limits).unwrap();
        assert_eq!(run.exit, WorkerExit::Completed);
        for t in run.tasks.values() {
            let said = t.output.as_deref().unwrap_or("");
            assert!(
                said.contains(&format!("this task already runs {share} threads")) && said.contains("memory_mb"),
                "{t:?}"
            );
        }
    }

    let flood = "import threading\n_stop = threading.Event()\ndef forward(task):\n    while True:\n        threading.Thread(target=_stop.wait).start()\n";
    let run = run_worker(flood, &tasks(2), &ScriptedModel, &limits).unwrap();
    assert_eq!(run.exit, WorkerExit::Completed, "{:?}", run.tasks);
    assert_eq!(run.tasks.len(), 2);
    for t in run.tasks.values() {
        let error = t.error.as_deref().unwrap_or("");
        assert!(
            error.starts_with("RuntimeError")
                && error.contains(&format!("{share} threads"))
                && error.contains("memory_mb"),
            "{t:?}"
        );
    }
}

/// A program that loops at module level, before `forward` exists, is stopped at the load
/// deadline with a load error that says why, long before the worker's own deadline.
#[test]
fn a_loop_at_module_level_is_a_load_error_at_the_load_deadline() {
    let limits = WorkerLimits {
        load_deadline: Duration::from_secs(1),
        ..limits(60)
    };
    let start = Instant::now();
    let run = run_worker("while True:\n    pass\n", &tasks(2), &ScriptedModel, &limits).unwrap();
    match &run.exit {
        WorkerExit::LoadError(e) => assert!(
            e.contains("did not finish loading within 1 s") && e.contains("forward"),
            "{e}"
        ),
        other => panic!("expected a load error, got {other:?}"),
    }
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "stopped at the load deadline: {:?}",
        start.elapsed()
    );
    // A program that loads in time is not cut short: the load deadline ends at `ready`.
    let slow_task = "import time\ndef forward(task):\n    time.sleep(2)\n    return 'late'\n";
    let run = run_worker(slow_task, &tasks(1), &ScriptedModel, &limits).unwrap();
    assert_eq!(run.exit, WorkerExit::Completed);
    assert_eq!(run.tasks["t0"].output.as_deref(), Some("late"));
}

/// Recursion that passes the interpreter's limit is a typed outcome at once, in the task
/// that recursed, also in a thread of its own and through a chain of handlers; a C-level
/// overflow (nested iterators) ends the worker as a crash, reported at once too.
#[test]
fn runaway_recursion_is_typed_at_once() {
    use metaforge::sandbox::task_outcome;
    use metaforge::types::TaskOutcome;
    let cases = [
        "def forward(task):\n    def f(n):\n        return f(n + 1)\n    return f(0)\n",
        "def f(n):\n    try:\n        return f(n + 1)\n    except RecursionError:\n        raise RecursionError(n)\ndef forward(task):\n    return f(0)\n",
        "import threading\ndef forward(task):\n    err = []\n    def f(n):\n        return f(n + 1)\n    def run():\n        try:\n            f(0)\n        except RecursionError as e:\n            err.append(e)\n    t = threading.Thread(target=run)\n    t.start()\n    t.join()\n    raise err[0]\n",
    ];
    let start = Instant::now();
    for code in cases {
        let run = run_worker(code, &tasks(2), &ScriptedModel, &limits(60)).unwrap();
        assert_eq!(run.exit, WorkerExit::Completed, "{code}");
        for t in run.tasks.values() {
            assert_eq!(task_outcome(t, &run.exit), TaskOutcome::RecursionLimit, "{code}: {t:?}");
        }
    }
    let nested = "def forward(task):\n    it = iter([1])\n    for _ in range(10 ** 6):\n        it = map(abs, it)\n    return str(next(it))\n";
    let run = run_worker(nested, &tasks(1), &ScriptedModel, &limits(60)).unwrap();
    assert!(matches!(run.exit, WorkerExit::Crashed { .. }), "{:?}", run.exit);
    assert!(
        start.elapsed() < Duration::from_secs(40),
        "no case waited for its deadline: {:?}",
        start.elapsed()
    );
}

#[test]
fn forged_results_are_counted_not_trusted() {
    // Writes a fake result for a task that does not exist, straight onto the RPC pipe.
    let code = "from metaforge import _rpc\ndef forward(task):\n    _rpc.send({'type': 'result', 'task_id': 'not-a-task', 'output': '1'})\n    return 'real'\n";
    let run = run_worker(code, &tasks(1), &ScriptedModel, &limits(30)).unwrap();
    assert_eq!(run.exit, WorkerExit::Completed);
    assert_eq!(run.protocol_violations, 1);
    assert!(!run.tasks.contains_key("not-a-task"));
    assert_eq!(run.tasks["t0"].output.as_deref(), Some("real"));
}

#[test]
fn oversized_requests_are_refused_by_the_host() {
    let code = "from metaforge import llm, LLMError\ndef forward(task):\n    try:\n        return llm('x' * 300000)\n    except LLMError as e:\n        return 'refused: ' + str(e)\n";
    let run = run_worker(code, &tasks(1), &ScriptedModel, &limits(30)).unwrap();
    assert!(run.tasks["t0"]
        .output
        .as_deref()
        .unwrap()
        .starts_with("refused: request refused by the host"));
}

#[test]
fn environment_holds_no_secrets() {
    std::env::set_var("METAFORGE_TEST_SECRET_KEY", "sk-should-not-leak");
    let code = "import os\ndef forward(task):\n    return repr(sorted(os.environ))\n";
    let run = run_worker(code, &tasks(1), &ScriptedModel, &limits(30)).unwrap();
    let out = run.tasks["t0"].output.clone().unwrap();
    assert!(!out.contains("METAFORGE_TEST_SECRET_KEY"), "{out}");
}

#[test]
fn spliced_crossover_program_runs() {
    // Regression: crossover_ensemble once renamed imported names of the second parent.
    use metaforge::candidate::{candidate_id, Candidate, CandidateKind};
    use rand::SeedableRng;
    let seed = |f: &str| {
        let code = std::fs::read_to_string(format!("{}/archive/agents/{f}.py", env!("CARGO_MANIFEST_DIR"))).unwrap();
        Candidate {
            id: candidate_id(CandidateKind::Agent, &code),
            kind: CandidateKind::Agent,
            name: f.into(),
            thought: String::new(),
            code,
            operator: "seed".into(),
            generation: 0,
            parents: vec![],
            fingerprint: String::new(),
        }
    };
    let t = metaforge::propose::Templates::embedded().unwrap();
    let checker = metaforge::guard::checker(Default::default()).unwrap();
    let (a, b) = (seed("direct_answer"), seed("self_consistency"));
    for s in 0..20u64 {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(s);
        let p = metaforge::propose::operators::propose(&mut rng, &a, Some(&b), &t, &checker, &|_| false, None).unwrap();
        let run = run_worker(&p.code, &tasks(2), &ScriptedModel, &limits(30)).unwrap();
        assert_eq!(run.exit, WorkerExit::Completed, "{} failed:\n{}", p.kind, p.code);
        assert!(
            run.tasks.values().all(|t| t.error.is_none()),
            "{}: {:?}\n{}",
            p.kind,
            run.tasks,
            p.code
        );
    }
}

#[test]
fn folders_of_killed_hosts_are_swept() {
    // pid 4194305 is above the kernel's pid_max ceiling: never alive.
    let stale = std::env::temp_dir().join("metaforge-worker-4194305-abcdef");
    std::fs::create_dir_all(stale.join("scratch")).unwrap();
    let ours = std::env::temp_dir().join(format!("metaforge-worker-{}-keep", std::process::id()));
    std::fs::create_dir_all(&ours).unwrap();
    metaforge::sandbox::sweep_stale_workdirs();
    assert!(!stale.exists(), "a dead host's folder survived the sweep");
    assert!(ours.exists(), "a live host's folder was swept");
    std::fs::remove_dir_all(ours).unwrap();
}

/// A forked worker (the fork server's child) must live in the same cage as an exec'd one:
/// the same descriptors, limits, environment, process group, and the same refusals from the
/// kernel layers (the policy hook is off, so the errors are the kernel's own).
#[test]
fn forked_workers_get_the_same_cage_as_exec_workers() {
    let code = r#"
import errno, os, resource, socket

def attempt(fn):
    try:
        fn()
        return "allowed"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))

def forward(task):
    open_fds = []
    for fd in range(64):
        try:
            st = os.fstat(fd)
            open_fds.append(fd)
        except OSError:
            pass
    cwd = os.getcwd()
    with open("note.txt", "w") as f:
        f.write("scratch is writable")
    fs = os.statvfs(cwd)
    report = {
        "fds": open_fds,
        "home_is_cwd": os.environ.get("HOME") == cwd == os.environ.get("TMPDIR"),
        "env": sorted(os.environ),
        "own_group": os.getpgid(0) == os.getpid(),
        "scratch_mib": fs.f_blocks * fs.f_frsize >> 20,
        "limits": [resource.getrlimit(r) for r in (resource.RLIMIT_AS, resource.RLIMIT_CPU,
                   resource.RLIMIT_NOFILE, resource.RLIMIT_FSIZE, resource.RLIMIT_CORE)],
        "fork": attempt(os.fork),
        "signal_parent": attempt(lambda: os.kill(os.getppid(), 0)),
        "tcp": attempt(lambda: socket.create_connection(("127.0.0.1", 9), timeout=1)),
        "inet_socket": attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)),
        "write_tmp": attempt(lambda: open("/tmp/metaforge-forked-probe", "w")),
        "read_etc": attempt(lambda: open("/etc/hostname").read()),
        "unshare": attempt(lambda: os.unshare(os.CLONE_NEWUSER)) if hasattr(os, "unshare") else "n/a",
    }
    return repr(report)
"#;
    let iso = metaforge::sandbox::Isolation::available();
    let run = |start| {
        let limits = WorkerLimits {
            policy_hook: false,
            start,
            disk_mb: 16,
            ..limits(30)
        };
        run_worker(code, &tasks(1), &ScriptedModel, &limits).unwrap()
    };
    let forked = run(metaforge::sandbox::WorkerStart::ForkServer);
    let exec = run(metaforge::sandbox::WorkerStart::Exec);
    assert!(!exec.forked);
    assert!(
        forked.forked,
        "this machine can run the fork server (every layer: {iso:?}); the worker was exec'd instead"
    );
    let report = |r: &metaforge::sandbox::WorkerRun| {
        assert_eq!(r.exit, WorkerExit::Completed, "{:?}", r.tasks);
        r.tasks["t0"]
            .output
            .clone()
            .unwrap_or_else(|| format!("{:?}", r.tasks["t0"]))
    };
    let (forked, exec) = (report(&forked), report(&exec));
    assert_eq!(forked, exec, "forked and exec'd workers differ");
    for expected in [
        "'fds': [0, 1, 2, 3, 4]",
        "'home_is_cwd': True",
        "'own_group': True",
        "'fork': 'EPERM'",
        "'write_tmp': 'EACCES'",
        "'scratch_mib': 16",
        "'signal_parent': 'EPERM'",
    ] {
        assert!(forked.contains(expected), "{expected} not in {forked}");
    }
    assert!(!std::path::Path::new("/tmp/metaforge-forked-probe").exists());
}
