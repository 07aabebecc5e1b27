//! Fuzzing of every parser of untrusted input, on the stable toolchain: candidate code (parse,
//! check, normal form, fingerprint, id), model replies (rewrite JSON, SEARCH/REPLACE edits),
//! worker protocol messages, experiment and contract TOML, user JSONL, ADAS archives, and
//! archives and bundles opened from disk.
//!
//! Each target starts from its corpus in `tests/fuzz/corpus/<target>/`, and from the files
//! the project already ships for it (`SHIPPED`), and mutates them (bit
//! flips, byte and token insertions from the target's dictionary, deletions, duplications,
//! splices of two inputs). A panic is a crash, and so is an input still running after
//! `HANG_AFTER`. Either saves the input under `target/fuzz/<crashes|hangs>/` and fails.
//!
//! **Coverage guidance.** When the package is built with SanitizerCoverage's inline 8-bit
//! counters (`scripts/fuzz.sh` does, with flags stable rustc accepts; `src/fuzz_coverage.rs`
//! holds the counters), an input that reaches
//! new code joins the corpus and is mutated further; the new inputs are kept under
//! `target/fuzz/corpus/`. Built plainly, as in the test command, the counters are absent and
//! the run is a mutation run over the corpus.
//!
//! Time per target: `METAFORGE_FUZZ_SECONDS` (default: a short run for the test command).

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

/// An input still running after this long is a hang.
const HANG_AFTER: Duration = Duration::from_secs(10);
/// Inputs are kept below this size: past it a parser's time is the input's length, not a bug.
const MAX_INPUT: usize = 64 * 1024;

// ---- SanitizerCoverage's inline 8-bit counters, when the build has them ----

#[cfg(metaforge_fuzz)]
fn regions() -> Vec<(usize, usize)> {
    metaforge::fuzz_coverage::regions()
}

#[cfg(not(metaforge_fuzz))]
fn regions() -> Vec<(usize, usize)> {
    Vec::new()
}

/// Coverage seen so far: for each counter, a bit per hit-count bucket reached.
struct Coverage {
    seen: Vec<u8>,
}

impl Coverage {
    fn instrumented() -> bool {
        !regions().is_empty()
    }

    fn reset() {
        for (start, len) in regions() {
            // SAFETY: the region is the counters array an instrumented module registered.
            unsafe { std::ptr::write_bytes(start as *mut u8, 0, len) };
        }
    }

    /// Whether the last input reached a counter, or a hit-count bucket of one, never seen.
    fn grew(&mut self) -> bool {
        let mut grew = false;
        let mut offset = 0;
        for (start, len) in regions() {
            // SAFETY: as in `reset`.
            let counters = unsafe { std::slice::from_raw_parts(start as *const u8, len) };
            // Most counters are zero: skip them eight at a time.
            for (w, word) in counters.chunks(8).enumerate() {
                if word.iter().all(|&c| c == 0) {
                    continue;
                }
                for (j, &c) in word.iter().enumerate() {
                    if c != 0 {
                        let bucket: u8 = match c {
                            1 => 1,
                            2 => 2,
                            3 => 4,
                            4..=7 => 8,
                            8..=15 => 16,
                            16..=31 => 32,
                            32..=127 => 64,
                            _ => 128,
                        };
                        let i = offset + w * 8 + j;
                        if i >= self.seen.len() {
                            self.seen.resize(i + 1, 0);
                        }
                        grew |= self.seen[i] & bucket == 0;
                        self.seen[i] |= bucket;
                    }
                }
            }
            offset += len;
        }
        grew
    }
}

// ---- the harness ----

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn seconds() -> f64 {
    std::env::var("METAFORGE_FUZZ_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3.0)
}

/// One run per target at a time (they share the coverage counters).
fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static ONE: Mutex<()> = Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Watches the input in progress; a hang saves it and ends the process with its name.
struct Watchdog {
    started_ms: AtomicU64,
    current: Mutex<(String, Vec<u8>)>,
}

fn watchdog() -> &'static Watchdog {
    static W: OnceLock<&'static Watchdog> = OnceLock::new();
    W.get_or_init(|| {
        let w: &'static Watchdog = Box::leak(Box::new(Watchdog {
            started_ms: AtomicU64::new(0),
            current: Mutex::new((String::new(), Vec::new())),
        }));
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(200));
            let started = w.started_ms.load(Ordering::SeqCst);
            let now = clock_ms();
            if started != 0 && now.saturating_sub(started) > HANG_AFTER.as_millis() as u64 {
                let (target, input) = w.current.lock().unwrap().clone();
                let saved = save("hangs", &target, &input);
                eprintln!(
                    "fuzz {target}: an input ran past {HANG_AFTER:?}; saved to {}",
                    saved.display()
                );
                std::process::exit(101);
            }
        });
        w
    })
}

/// Milliseconds on one clock for the harness and its watchdog; never 0 (0 means idle).
fn clock_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

fn save(kind: &str, target: &str, input: &[u8]) -> PathBuf {
    use sha2::{Digest, Sha256};
    let dir = root().join("target/fuzz").join(kind).join(target);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(hex::encode(&Sha256::digest(input)[..8]));
    std::fs::write(&path, input).unwrap();
    path
}

/// Files the project already holds that a target starts from too, read where they live
/// (seed agents, memory designs, the hostile corpus, shipped experiments and contracts).
const SHIPPED: &[(&str, &str)] = &[
    ("candidate_code", "archive/agents"),
    ("candidate_code", "archive/memory"),
    ("candidate_code", "tests/hostile"),
    ("experiment_toml", "experiments"),
    ("contract_toml", "tests/guard_scenarios/contracts"),
    ("adas_archives", "tests/fixtures/adas_archive.json"),
];

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let mut inputs = Vec::new();
    let shipped = SHIPPED
        .iter()
        .filter(|(t, _)| *t == target)
        .map(|(_, p)| root().join(p));
    for place in [
        root().join("tests/fuzz/corpus").join(target),
        root().join("target/fuzz/corpus").join(target),
    ]
    .into_iter()
    .chain(shipped)
    {
        let mut paths: Vec<PathBuf> = match std::fs::read_dir(&place) {
            Ok(entries) => entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect(),
            Err(_) if place.is_file() => vec![place],
            Err(_) => continue,
        };
        paths.sort();
        inputs.extend(paths.iter().filter_map(|p| std::fs::read(p).ok()));
    }
    assert!(!inputs.is_empty(), "tests/fuzz/corpus/{target}/ is empty");
    inputs
}

fn mutate(rng: &mut rand_chacha::ChaCha8Rng, input: &[u8], others: &[Vec<u8>], dict: &[&str]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = out.len();
        match rng.random_range(0..9) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                out[i] ^= 1 << rng.random_range(0..8);
            }
            1 => {
                let i = rng.random_range(0..=len);
                out.insert(i, rng.random());
            }
            2 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = (a + rng.random_range(1..=16)).min(len);
                out.drain(a..b);
            }
            3 if len > 0 => {
                let a = rng.random_range(0..len);
                let b = (a + rng.random_range(1..=64)).min(len);
                let chunk = out[a..b].to_vec();
                let at = rng.random_range(0..=out.len());
                out.splice(at..at, chunk);
            }
            4 | 5 if !dict.is_empty() => {
                let token = dict[rng.random_range(0..dict.len())].as_bytes();
                let at = rng.random_range(0..=len);
                out.splice(at..at, token.iter().copied());
            }
            6 if !others.is_empty() => {
                let other = &others[rng.random_range(0..others.len())];
                let cut = rng.random_range(0..=len);
                let from = rng.random_range(0..=other.len());
                out.truncate(cut);
                out.extend_from_slice(&other[from..]);
            }
            7 if len > 0 => {
                let i = rng.random_range(0..len);
                out[i] = *b"\"'{}[]()\\:,=\n\t0-9.#".get(rng.random_range(0..20)).unwrap_or(&b'0');
            }
            8 if len > 0 => out.truncate(rng.random_range(0..len)),
            _ => {}
        }
    }
    out.truncate(MAX_INPUT);
    out
}

/// Runs `target` over its corpus, then over mutations for the time allowed; prints the
/// executions per second and fails on the first crash.
fn fuzz(target: &str, dict: &[&str], run: impl Fn(&[u8])) {
    let _one = exclusive();
    let watchdog = watchdog();
    let mut coverage = Coverage { seen: Vec::new() };
    let guided = Coverage::instrumented();
    let mut pool = corpus(target);
    let seed = std::env::var("METAFORGE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ target.len() as u64);
    let budget = Duration::from_secs_f64(seconds());
    let (mut execs, mut added) = (0u64, 0usize);
    let started = Instant::now();
    // A panic is caught and reported here; keep the default hook from printing each one.
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut crash = None;
    let mut i = 0usize;
    while crash.is_none() && (i < pool.len() || started.elapsed() < budget) {
        let input = if i < pool.len() {
            pool[i].clone()
        } else {
            let base = &pool[rng.random_range(0..pool.len())];
            mutate(&mut rng, base, &pool, dict)
        };
        *watchdog.current.lock().unwrap() = (target.to_string(), input.clone());
        Coverage::reset();
        watchdog.started_ms.store(clock_ms(), Ordering::SeqCst);
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| run(&input)));
        watchdog.started_ms.store(0, Ordering::SeqCst);
        execs += 1;
        if let Err(panic) = result {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            crash = Some((save("crashes", target, &input), what));
        } else if guided && coverage.grew() && i >= pool.len() {
            save("corpus", target, &input);
            pool.push(input);
            added += 1;
        }
        i += 1;
    }
    std::panic::set_hook(previous_hook);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "fuzz {target}: {execs} executions in {secs:.1} s ({:.0}/s), corpus {} (+{added}), {}",
        execs as f64 / secs,
        pool.len(),
        if guided {
            "coverage-guided"
        } else {
            "mutation only (built without coverage counters)"
        }
    );
    if let Some((path, what)) = crash {
        panic!("fuzz {target}: a crash ({what}); input saved to {}", path.display());
    }
}

fn text(input: &[u8]) -> String {
    String::from_utf8_lossy(input).into_owned()
}

fn scratch() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

// ---- the targets ----

const PYTHON: &[&str] = &[
    "def ",
    "forward(task)",
    "return ",
    "import ",
    "from metaforge import llm",
    "class ",
    "lambda ",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ":",
    "\n    ",
    "'''",
    "\"",
    "async ",
    "await ",
    "yield ",
    "@",
    "*",
    "**",
    "=",
    "==",
    "if ",
    "else:",
    "for ",
    " in ",
    "while ",
    "with ",
    "try:",
    "except ",
    "global ",
    "nonlocal ",
    "eval(",
    "__import__",
    "getattr(",
    "CONTRACTS = ",
    "os.",
    "sys.",
    "open(",
    "\\",
    "#",
    "\x00",
    "é",
];

#[test]
fn fuzz_candidate_code() {
    use metaforge::candidate::{candidate_id, CandidateKind};
    use metaforge::check::{normalized_source, parse_python, signature_of, structure_fingerprint, Checker};
    let checker = Checker::embedded().unwrap();
    fuzz("candidate_code", PYTHON, |input| {
        let source = text(input);
        let tree = parse_python(&source);
        let normal = normalized_source(tree.root_node(), &source);
        structure_fingerprint(tree.root_node(), &source);
        signature_of(&source);
        candidate_id(CandidateKind::Agent, &normal);
        for kind in [CandidateKind::Agent, CandidateKind::Memory] {
            checker.check("candidate.py", &source, kind).render();
        }
    });
}

#[test]
fn fuzz_model_replies() {
    use metaforge::propose::{diff, reply};
    let dict = [
        "<<<<<<< SEARCH\n",
        "=======\n",
        ">>>>>>> REPLACE\n",
        "```python\n",
        "```json\n",
        "```\n",
        "{\"thought\": ",
        "\"name\": ",
        "\"code\": ",
        "\\n",
        "\\\"",
        "def forward(task):",
        "}",
        "{",
        "\"",
    ];
    let base = "def forward(task):\n    return llm('Answer: ' + task['question'])\n";
    fuzz("model_replies", &dict, |input| {
        let reply_text = text(input);
        let _ = reply::parse_reply(&reply_text);
        if let Ok(edits) = diff::parse_edits(&reply_text) {
            let _ = diff::apply_edits(base, &edits);
        }
    });
}

#[test]
fn fuzz_worker_messages() {
    use metaforge::sandbox::WorkerMessage;
    let dict = [
        "{\"type\": \"result\"",
        "\"task_id\": ",
        "\"nonce\": ",
        "\"output\": ",
        "\"error\": null",
        "\"type\": \"llm\"",
        "\"messages\": [",
        "\"n\": ",
        "\"ready\"",
        "\"load_error\"",
        "\"denied\"",
        "\"episode\"",
        "1e999",
        "-1",
        "18446744073709551616",
        "null",
        "}",
    ];
    fuzz("worker_messages", &dict, |input| {
        for line in text(input).lines() {
            let _ = serde_json::from_str::<WorkerMessage>(line);
        }
    });
}

#[test]
fn fuzz_experiment_toml() {
    use metaforge::config::Experiment;
    let dict = [
        "[domain]\n",
        "[models.meta]\n",
        "[models.agent]\n",
        "[search]\n",
        "[evaluation]\n",
        "[budget]\n",
        "[proposers]\n",
        "[guards]\n",
        "[executor]\n",
        "name = ",
        "seeds = [",
        "generations = ",
        "= -1\n",
        "= 1e308\n",
        "= \"\"\n",
        "= 18446744073709551615\n",
        "backend = \"openai\"\n",
        "api_key_env = ",
        "base_url = ",
        "scorer = ",
        "path = ",
        "\"",
        "[",
        "]",
    ];
    fuzz("experiment_toml", &dict, |input| {
        let _ = Experiment::parse(&text(input), "fuzz.toml", scratch());
    });
}

#[test]
fn fuzz_contract_toml() {
    use metaforge::guard::AgentContract;
    let dict = [
        "[pre]\n",
        "[budget]\n",
        "[[invariants]]\n",
        "[output]\n",
        "expr = ",
        "\"state.counters.llm_calls <= 5\"",
        "schema = ",
        "fallback = ",
        "\"task.question != ''\"",
        "max_calls = ",
        "type = \"object\"",
        "\"",
        "{",
        "}",
        "=",
        "size(",
        ".exists(",
        "matches(",
    ];
    fuzz("contract_toml", &dict, |input| {
        let _ = AgentContract::from_toml("fuzz.toml", &text(input));
    });
}

#[test]
fn fuzz_user_jsonl() {
    use metaforge::config::DomainConfig;
    use metaforge::domain::Domain;
    let dict = [
        "{\"id\": ",
        "\"question\": ",
        "\"answer\": ",
        "\"answers\": [",
        "\"choices\": [",
        "null",
        "1e999",
        "[[1, 2], [3, 4]]",
        "\"train\": [",
        "\"test\": [",
        "}\n",
        "\n",
        "\"",
        "\\u0000",
    ];
    let path = scratch().join("tasks.jsonl");
    fuzz("user_jsonl", &dict, |input| {
        std::fs::write(&path, input).unwrap();
        for scorer in ["numeric", "exact", "f1", "mc", "grid"] {
            let cfg: DomainConfig = toml::from_str(&format!(
                "name = \"fuzz\"\npath = {:?}\nscorer = \"{scorer}\"\nval_size = 2\ntest_size = 1\n",
                path.display().to_string()
            ))
            .unwrap();
            if let Ok(domain) = Domain::load(&cfg) {
                let _ = domain.splits(1, 2, 1);
            }
        }
    });
}

#[test]
fn fuzz_adas_archives() {
    let dict = [
        "{\"thought\": ",
        "\"name\": ",
        "\"code\": ",
        "\"generation\": ",
        "\"fitness\": ",
        "\"95% Bootstrap Confidence Interval: (12.5%, 20.3%), Median: 16.4%\"",
        "\"initial\"",
        "null",
        "[",
        "]",
        "{",
        "}",
        ",",
        "def forward(self, taskInfo):\\n    return taskInfo\\n",
    ];
    let path = scratch().join("adas.json");
    fuzz("adas_archives", &dict, |input| {
        std::fs::write(&path, input).unwrap();
        if let Ok(agents) = metaforge::adas::read_archive(&path) {
            for a in &agents {
                a.seed_code();
            }
        }
    });
}

#[test]
fn fuzz_archives_from_disk() {
    use metaforge::archive::Archive;
    let dir = scratch().join("archives");
    std::fs::create_dir_all(&dir).unwrap();
    let n = AtomicU64::new(0);
    fuzz("archives_from_disk", &[], |input| {
        // A fresh name each time: SQLite keeps no state between them.
        let path = dir.join(format!("run-{}.db", n.fetch_add(1, Ordering::Relaxed)));
        std::fs::write(&path, input).unwrap();
        if let Ok(archive) = Archive::open_existing(&path) {
            let _ = metaforge::report::status(&archive).map(|s| metaforge::report::render_status(&s));
            let _ = archive.leaderboard();
        }
        let bundle = path.with_extension("out.db");
        let _ = metaforge::archive::bundle::import(&path, &bundle);
        for p in [&path, &bundle] {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", p.display()));
            }
        }
    });
}
