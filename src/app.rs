//! One function per CLI command: each wires the pipeline stages together and holds no
//! logic of its own beyond that. `main.rs` only parses arguments and calls these.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::archive::Archive;
use crate::archive::CallCache;
use crate::candidate::CandidateKind;
use crate::check::Severity;
use crate::config::{Experiment, ModelConfig};
use crate::domain::Domain;
use crate::evaluate::Evaluator;
use crate::llm::{BackendFactory, Budget, Gateways, Role};
use crate::search::Search;
use crate::types::BadInput;
use crate::types::Split;

/// Exit code for failures of the thing being run (not of the user's input).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code for bad usage, configs or inputs (`types::BadInput`).
pub const EXIT_USAGE: u8 = 2;

/// The exit code for a command that ended in `error`.
pub fn exit_code(error: &anyhow::Error) -> u8 {
    if let Some(i) = error.downcast_ref::<Interrupted>() {
        i.exit_code
    } else if crate::types::is_bad_input(error) {
        EXIT_USAGE
    } else {
        EXIT_FAILURE
    }
}

/// A run stopped by a signal at a safe point: not a failure of the run, and not finished.
/// Its exit code is the shell's for that signal (128 + its number).
#[derive(Debug)]
pub struct Interrupted {
    message: String,
    exit_code: u8,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Interrupted {}

/// SIGINT, SIGTERM and SIGHUP ask the search to stop once the step in progress is committed
/// (`host::request_stop`); a second one stops at once, after writing the model calls
/// already answered, so nothing paid for is paid again on `resume`.
fn stop_on_signals() -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("cannot install the stop-signal handlers")?;
    std::thread::spawn(move || {
        for signal in signals.forever() {
            let name = crate::search::signal_name(signal);
            if crate::host::request_stop(signal) == 1 {
                eprintln!(
                    "\nmetaforge: {name}: stopping once the step in progress is stored (send it again to stop at once; `metaforge resume` continues either way)"
                );
            } else {
                crate::archive::flush_open_call_caches();
                eprintln!("metaforge: {name} again: stopped at once; the model calls already answered are stored");
                std::process::exit(128 + signal);
            }
        }
    });
    Ok(())
}

/// Runs the search to its end or to a requested stop, then prints where it stands.
fn run_search(search: &mut Search, json: bool) -> Result<()> {
    stop_on_signals()?;
    let end = search.run()?;
    print_status(search.archive(), json)?;
    match end {
        crate::search::RunEnd::Finished => Ok(()),
        crate::search::RunEnd::Interrupted { signal, next_step } => Err(Interrupted {
            message: format!(
                "stopped by {signal} after step {} was stored; continue with: metaforge resume {}",
                next_step.saturating_sub(1),
                search.archive().path().display()
            ),
            exit_code: 128 + crate::host::stop_requested().unwrap_or(2) as u8,
        }
        .into()),
    }
}

/// The archive a new run writes: `db` when given, else `runs/<run name>.db` beside the cwd;
/// its folder is created.
fn new_archive_path(db: Option<&Path>, run_name: &str) -> Result<PathBuf> {
    let db = db.map_or_else(
        || PathBuf::from("runs").join(format!("{run_name}.db")),
        Path::to_path_buf,
    );
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Ok(db)
}

pub fn run(exp: &Path, db: Option<&Path>, cache_from: Option<&Path>, quiet: bool, json: bool) -> Result<()> {
    let exp = Experiment::load(exp)?;
    let db = new_archive_path(db, &exp.name)?;
    if !quiet {
        eprintln!("metaforge: archive {}", db.display());
    }
    if let Some(from) = cache_from {
        // Checked before the new archive exists, so a wrong path leaves nothing behind.
        Archive::open_existing(from).with_context(|| format!("--cache-from {}", from.display()))?;
    }
    let mut search = Search::create_from(exp, &db, quiet)?;
    if let Some(from) = cache_from {
        let n = search.archive().import_call_cache(from)?;
        if !quiet {
            eprintln!(
                "metaforge: {n} cached model calls from {} (identical requests are replayed, not sent)",
                from.display()
            );
        }
    }
    run_search(&mut search, json)
}

/// `resume`: continues a run; `local` or `ray` move its remaining shards (this process only).
pub fn resume(db: &Path, local: bool, ray: Option<&str>, quiet: bool, json: bool) -> Result<()> {
    let executor = match (local, ray) {
        (true, _) => Some(crate::config::ExecutorConfig::default()),
        (false, Some(address)) => Some(crate::config::ExecutorConfig {
            kind: crate::config::ExecutorKind::Ray,
            address: Some(address.to_string()),
            ..Default::default()
        }),
        (false, None) => None,
    };
    let mut search = Search::resume(db, quiet, executor)?;
    run_search(&mut search, json)
}

pub fn status(db: &Path, json: bool) -> Result<()> {
    let archive = Archive::open_existing(db)?;
    print_status(&archive, json)
}

/// `metaforge test`: held-out test evaluations of a finished run's best candidates on demand.
pub fn test(db: &Path, top: Option<usize>, front: bool, quiet: bool, json: bool) -> Result<()> {
    let mut search = Search::resume(db, quiet, None)?;
    let top = top.unwrap_or(search.experiment().search.test_top_k);
    let tested = search.test_on_demand(top, front)?;
    if !quiet {
        eprintln!("metaforge: {tested} new held-out test evaluation(s)");
    }
    print_status(search.archive(), json)
}

/// `metaforge import-adas`: a new run whose seeds are an ADAS archive's agents, ready to
/// `resume` (nothing is evaluated here). Based on `experiment`, else the embedded quickstart
/// (whose own seeds are then left out: ADAS archives carry theirs).
pub fn import_adas(
    archive_json: &Path,
    domain: Option<&str>,
    experiment: Option<&Path>,
    db: Option<&Path>,
    json: bool,
) -> Result<()> {
    let agents = crate::adas::read_archive(archive_json).map_err(BadInput::wrap)?;
    let mut exp = match experiment {
        Some(p) => Experiment::load(p)?,
        None => {
            let text = crate::assets::text(&crate::assets::EXPERIMENTS, "quickstart.toml")
                .context("experiments/quickstart.toml is missing from this build")?;
            let mut e = Experiment::parse(text, "experiments/quickstart.toml (embedded)", Path::new("."))?;
            e.search.seeds.clear();
            e
        }
    };
    let stem = archive_json
        .file_stem()
        .map_or("adas".into(), |s| s.to_string_lossy().into_owned());
    exp.name = format!("adas-{stem}");
    if let Some(d) = domain {
        exp.domain.name = d.into();
        exp.domain.path = None;
        exp.domain.scorer = None;
        // A small built-in set (ARC's 80 tasks) is split a quarter for validation, the rest
        // held out, as ADAS split it.
        let n = Domain::load(&exp.domain)?.tasks.len();
        if exp.domain.val_size + exp.domain.test_size > n {
            exp.domain.val_size = (n / 4).max(1);
            exp.domain.test_size = n - exp.domain.val_size;
        }
    }
    exp.search.import_adas =
        Some(std::fs::canonicalize(archive_json).with_context(|| format!("cannot read {}", archive_json.display()))?);
    let db = new_archive_path(db, &exp.name)?;
    let search = Search::create_from(exp, &db, true)?;
    search.archive().event(
        None,
        "adas_import",
        serde_json::json!({ "from": stem, "agents": &agents }),
    )?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "db": db, "agents": agents }))?
        );
        return Ok(());
    }
    println!(
        "imported {} ADAS agents into {} (domain {}):",
        agents.len(),
        db.display(),
        search.experiment().domain.name
    );
    for a in &agents {
        println!(
            "  {:<40} ADAS {:<12} fitness {}",
            a.name.chars().take(40).collect::<String>(),
            a.generation.map_or("initial".into(), |g| format!("generation {g}")),
            a.fitness.map_or("-".into(), |f| format!(
                "{:.1}% [{:.1}%, {:.1}%]",
                f.median * 100.0,
                f.ci_lo * 100.0,
                f.ci_hi * 100.0
            ))
        );
    }
    println!(
        "each is re-evaluated on this run's validation split first; continue with: metaforge resume {}",
        db.display()
    );
    Ok(())
}

/// `metaforge report`: one self-contained HTML file.
pub fn report(db: &Path, out: &Path) -> Result<()> {
    let archive = Archive::open_existing(db)?;
    let html = crate::report::html::render(&archive)?;
    std::fs::write(out, html).with_context(|| format!("cannot write {}", out.display()))?;
    println!("report written to {}", out.display());
    Ok(())
}

/// `metaforge ui`: the live dashboard, until the process is stopped.
pub fn ui(dbs: &[PathBuf], addr: &str, token_env: &str) -> Result<()> {
    let token = std::env::var(token_env).ok();
    let server = crate::ui::Server::bind(dbs, addr, token, token_env)?;
    eprintln!(
        "dashboard on http://{}/ ({} archive{}, read-only; Ctrl-C stops it)",
        server.local_addr(),
        dbs.len(),
        if dbs.len() == 1 { "" } else { "s" }
    );
    server.run()
}

/// `metaforge export-traces`: the run's proposals and evaluations as JSON lines.
pub fn export_traces(db: &Path, out: &Path, json: bool) -> Result<()> {
    let archive = Archive::open_existing(db)?;
    let (proposals, evaluations) = crate::export::export_traces(&archive, out)?;
    if json {
        println!(
            "{}",
            serde_json::json!({"out": out, "proposals": proposals, "evaluations": evaluations})
        );
    } else {
        println!(
            "{proposals} proposals and {evaluations} evaluations written to {} (one JSON object a line; see docs/archives.md for pandas and MLflow)",
            out.display()
        );
    }
    Ok(())
}

/// `metaforge export`: picked agents as standalone Python files plus README and agents.json.
pub fn export(db: &Path, pick: &crate::export::Pick, out: &Path, json: bool) -> Result<()> {
    let archive = Archive::open_existing(db)?;
    let agents = crate::export::export(&archive, pick, out)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&agents)?);
        return Ok(());
    }
    for a in &agents {
        println!("{:<56} val {}", out.join(&a.file).display(), a.val_text);
    }
    println!(
        "{} agent(s) exported; see {}",
        agents.len(),
        out.join("README.md").display()
    );
    Ok(())
}

/// `metaforge lineage`: the whole family tree, or one candidate's ancestry, as text, JSON or DOT.
pub fn lineage(db: &Path, of: Option<&str>, dot: bool, json: bool) -> Result<()> {
    let archive = Archive::open_existing(db)?;
    let lineage = archive.lineage()?;
    let report = crate::report::lineage::report(&lineage, of)?;
    if dot {
        let ids: std::collections::HashSet<&str> = report.nodes.iter().map(|n| n.node.id.as_str()).collect();
        print!("{}", lineage.subgraph(&ids).to_dot());
    } else if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", crate::report::lineage::render(&report));
    }
    Ok(())
}

/// `metaforge merge A B -o OUT`: one archive holding both runs (see `archive::merge`).
pub fn merge(a: &Path, b: &Path, out: &Path, force: bool, json: bool) -> Result<()> {
    let summary = crate::archive::merge(a, b, out, force)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        let s = &summary;
        println!(
            "merged {} into a copy of {} → {}
  candidates: {} added, {} already present
  evaluations: {} added ({} task results), {} present in both ({} with a different score; A's kept)
  lineage edges added: {}; cached model calls added: {}; runs kept: {} with {} proposals",
            b.display(),
            a.display(),
            out.display(),
            s.candidates_added,
            s.candidates_shared,
            s.evaluations_added,
            s.task_results_added,
            s.evaluations_shared,
            s.evaluations_differing,
            s.lineage_added,
            s.llm_calls_added,
            s.runs_merged,
            s.proposals_kept
        );
    }
    Ok(())
}

/// The paths the run's config names that its archive does not carry (runs made before
/// files were stored in the archive).
fn outside_paths(db: &Path) -> Result<Vec<String>> {
    let archive = Archive::open_existing(db)?;
    let stored: Vec<String> = archive.run_files()?.into_iter().map(|f| f.key).collect();
    let mut exp = Experiment::parse(&archive.config_text()?, "stored config", Path::new(""))?;
    Ok(exp
        .file_refs_mut()
        .into_iter()
        .filter(|(key, _)| !stored.iter().any(|s| s == key))
        .map(|(key, p)| format!("{key} = {}", p.display()))
        .collect())
}

/// `metaforge export-bundle` / `import-bundle`: one checked file that carries a run.
pub fn bundle(from: &Path, out: &Path, import: bool, json: bool) -> Result<()> {
    let mut summary = if import {
        crate::archive::bundle::import(from, out)?
    } else {
        crate::archive::bundle::export(from, out)?
    };
    summary.outside_paths = outside_paths(out)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
        return Ok(());
    }
    println!(
        "{} run {:?} → {} ({} bytes): {} candidates, {} evaluations, {} stored file(s)",
        if import { "imported" } else { "exported" },
        summary.run,
        out.display(),
        summary.bytes,
        summary.candidates,
        summary.evaluations,
        summary.stored_files
    );
    for p in &summary.outside_paths {
        eprintln!("warning: the run's config names {p}, which the archive does not carry; the other machine needs it at that path");
    }
    Ok(())
}

fn print_status(archive: &Archive, json: bool) -> Result<()> {
    let s = crate::report::status(archive)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print!("{}", crate::report::render_status(&s));
    }
    Ok(())
}

/// `check FILE.py`: prints diagnostics; returns whether the file passes.
pub fn check(files: &[PathBuf], memory: bool, json: bool) -> Result<bool> {
    let checker = crate::guard::checker(Default::default())?;
    let kind = if memory {
        CandidateKind::Memory
    } else {
        CandidateKind::Agent
    };
    let mut ok = true;
    let mut all = Vec::new();
    for f in files {
        let code = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read {}", f.display()))
            .map_err(BadInput::wrap)?;
        let report = checker.check(&f.display().to_string(), &code, kind);
        ok &= report.passes();
        if json {
            all.extend(report.diagnostics);
        } else {
            for d in &report.diagnostics {
                println!("{d}");
            }
            let errors = report
                .diagnostics
                .iter()
                .filter(|d| d.severity == Severity::Error)
                .count();
            eprintln!(
                "{}: {}",
                f.display(),
                if errors == 0 {
                    "ok".to_string()
                } else {
                    format!("{errors} error(s)")
                }
            );
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    }
    Ok(ok)
}

/// What `eval` evaluates on: a built-in domain with the embedded model, or everything an
/// experiment file says (its domain and splits, agent model, limits and guards).
pub enum EvalTarget<'a> {
    Builtin { domain: &'a str, model: &'a str },
    Experiment(&'a Path),
}

/// `eval FILE.py`: one evaluation outside a search, by the evaluator the search uses (model
/// calls cached in `--db` if given). `n` caps the tasks; `split` picks the experiment's
/// validation or held-out tasks.
pub fn eval(
    file: &Path,
    target: EvalTarget,
    split: Split,
    n: Option<usize>,
    db: Option<&Path>,
    json: bool,
) -> Result<()> {
    let code = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read {}", file.display()))
        .map_err(BadInput::wrap)?;
    let exp = match target {
        EvalTarget::Experiment(path) => Experiment::load(path)?,
        EvalTarget::Builtin { domain, model } => {
            let text = format!(
                "name = \"eval\"\n[domain]\nname = {domain:?}\nval_size = {}\ntest_size = 0\n[models.agent]\nmodel = {model:?}\n",
                n.unwrap_or(20)
            );
            Experiment::parse(&text, "eval", Path::new("."))?
        }
    };
    let dom = Domain::load(&exp.domain)?;
    // A seed written over the answer format (as the built-in ones are) speaks of this domain's.
    let code = crate::propose::Templates::embedded()?
        .with_answer(&dom.answer)
        .render_seed(&file.display().to_string(), &code)?;
    let report = crate::guard::checker(exp.guards.rules())?.check(&file.display().to_string(), &code, dom.kind);
    if !report.passes() {
        bail!("{} does not pass check:\n{}", file.display(), report.render());
    }
    let episodic = match &dom.episodes {
        Some(cfg) => Some(crate::episodic::Episodic::new(cfg)?),
        None => None,
    };
    let (val, test) = dom.splits(
        exp.domain.split_seed.unwrap_or(exp.seed),
        exp.domain.val_size,
        exp.domain.test_size,
    )?;
    let mut tasks = if split == Split::Test { test } else { val };
    tasks.truncate(n.unwrap_or(usize::MAX));
    if tasks.is_empty() {
        return Err(BadInput::wrap(anyhow::anyhow!(
            "the {split} split has no tasks; fix: raise domain.{split}_size in the experiment, or use --split val"
        )));
    }
    let cache: Arc<dyn crate::llm::CallStore> = match db {
        Some(p) => Arc::new(CallCache::open(p)?),
        None => Arc::new(CallCache::in_memory()?),
    };
    let models = Gateways::build(
        Role::Agent,
        &exp.models.agent,
        &BackendFactory::new(),
        Some(cache),
        Arc::new(Budget::unlimited()),
    )?;
    let contract = exp.guards.agent_contract()?;
    let executor = crate::executor::Executor::start(&exp.executor)?;
    let bar = indicatif::ProgressBar::new(tasks.len() as u64);
    let tick = || bar.inc(1);
    let e = Evaluator {
        gateway: models.primary(),
        models: (models.len() > 1).then_some(&models),
        cfg: &exp.evaluation,
        scorer: dom.scorer.clone(),
        agent_contract: contract.as_ref(),
        require_call_contracts: exp.guards.require_call_contracts,
        episodic: episodic.as_ref().map(|e| e as &dyn crate::evaluate::EpisodeRunner),
        executor: &executor,
    }
    .evaluate(&code, &tasks, split, &tick)?;
    bar.finish_and_clear();
    // Tasks whose calls met a dead model failed for the model's sake, not the agent's: no score.
    if let Some(why) = models.failure() {
        anyhow::bail!("{why}");
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        println!(
            "{}: {} {} on {} tasks: mean {:.3} [95% CI {:.3}, {:.3}], outcome {}, {} model calls, {} tokens, {:.1} s",
            file.display(),
            dom.name,
            split,
            e.tasks.len(),
            e.mean,
            e.ci_lo,
            e.ci_hi,
            e.outcome,
            e.usage.calls,
            e.usage.tokens(),
            e.wall_ms / 1e3
        );
        if let Some(f) = e.failure_feedback() {
            println!("{f}");
        }
    }
    Ok(())
}

/// `doctor`: which sandbox layers this kernel gives, and a real worker started under them.
/// Returns false when a layer is missing (exit code 1), so scripts can gate on it.
pub fn doctor(json: bool, model: Option<&str>) -> Result<DoctorVerdict> {
    let layers = crate::sandbox::isolation::doctor_lines();
    let python = crate::sandbox::python_interpreter()?;
    let probe = crate::sandbox::live_probe()?;
    let all_active = layers.iter().all(|(_, r)| r.is_ok());
    let model = model_check(model);
    if json {
        let rows: Vec<_> = layers
            .iter()
            .map(|(name, r)| serde_json::json!({"layer": name, "active": r.is_ok(), "detail": r.as_ref().unwrap_or_else(|e| e)}))
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "layers": rows, "python": python, "probe": probe, "all_active": all_active,
                "episodic": crate::episodic::env::doctor_line(),
                "ray": crate::executor::RAY_ENV.describe(),
                "embedded_model": model,
            }))?
        );
    } else {
        println!("sandbox layers on this machine:");
        for (name, r) in &layers {
            match r {
                Ok(d) => println!("  [ok]      {name}: {d}"),
                Err(e) => println!("  [MISSING] {name}: {e}"),
            }
        }
        println!("  [ok]      rlimits (memory, CPU, file size, open files, processes), process group, cleared environment: always");
        println!("python: {}", python.display());
        println!("live probe (a worker under every available layer):");
        for line in &probe {
            println!("  {line}");
        }
        println!("{}", crate::episodic::env::doctor_line());
        println!("ray executor: {}", crate::executor::RAY_ENV.describe());
        if !all_active {
            println!("some layers are missing: evaluation.isolation = \"strict\" refuses to run here; \"best-effort\" runs with a warning");
        }
        match &model {
            ModelReport::Checked(check) => check.render().iter().for_each(|l| println!("{l}")),
            ModelReport::Skipped(why) => println!("embedded model: not checked ({why})"),
        }
    }
    Ok(match (&model, all_active) {
        (ModelReport::Checked(c), _) if !c.ok() => DoctorVerdict::ModelUnusable,
        (_, false) => DoctorVerdict::LayersMissing,
        _ => DoctorVerdict::Ready,
    })
}

/// What `doctor` found, as its exit code tells a script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DoctorVerdict {
    /// Exit 0: the sandbox has every layer and the embedded model runs (or was not checked).
    Ready,
    /// Exit 1: the embedded model cannot run on this machine.
    ModelUnusable,
    /// Exit 3: the model runs, but some sandbox layers are missing (`isolation = "strict"`
    /// refuses to run).
    LayersMissing,
}

impl DoctorVerdict {
    pub fn exit_code(self) -> u8 {
        match self {
            DoctorVerdict::Ready => 0,
            DoctorVerdict::ModelUnusable => EXIT_FAILURE,
            DoctorVerdict::LayersMissing => 3,
        }
    }
}

#[derive(serde::Serialize)]
#[serde(untagged)]
enum ModelReport {
    #[cfg(feature = "local-model")]
    Checked(Box<crate::llm::model_check::ModelCheck>),
    #[cfg(not(feature = "local-model"))]
    Checked(NoCheck),
    Skipped(String),
}

#[cfg(not(feature = "local-model"))]
#[derive(serde::Serialize)]
struct NoCheck;
#[cfg(not(feature = "local-model"))]
impl NoCheck {
    fn ok(&self) -> bool {
        true
    }
    fn render(&self) -> Vec<String> {
        vec![]
    }
}

#[cfg(feature = "local-model")]
fn model_check(model: Option<&str>) -> ModelReport {
    match model {
        Some(m) => ModelReport::Checked(Box::new(crate::llm::model_check::check(m))),
        None => ModelReport::Skipped("--no-model".into()),
    }
}

#[cfg(not(feature = "local-model"))]
fn model_check(_model: Option<&str>) -> ModelReport {
    ModelReport::Skipped("this binary was built without the `local-model` feature".into())
}

/// `model-process`: the embedded model's own process, started by the supervisor
/// (`llm::supervisor`); requests on stdin, replies on stdout. With `features`, only the CPU
/// features this build needs.
pub fn model_process(features: bool) -> Result<()> {
    #[cfg(feature = "local-model")]
    return crate::llm::serve_model_process(features);
    #[cfg(not(feature = "local-model"))]
    let _ = features;
    #[cfg(not(feature = "local-model"))]
    anyhow::bail!("this binary was built without the `local-model` feature")
}

/// `shard`: one evaluation shard on a cluster node (see `executor::serve_shard`).
pub fn shard() -> Result<()> {
    crate::executor::die_with_parent()?;
    crate::executor::serve_shard(std::io::stdin().lock(), std::io::stdout().lock())
}

/// `serve`: an OpenAI-compatible endpoint on the embedded model (see `llm::serve`).
pub fn serve(model: &str, addr: &str, max_tokens: u32, concurrency: usize) -> Result<()> {
    let mcfg: ModelConfig = toml::from_str(&format!(
        "backend = \"local\"\nmodel = {model:?}\nmax_tokens = {max_tokens}\nmax_concurrency = {concurrency}"
    ))?;
    let backend = BackendFactory::new().build(&mcfg, "serve")?;
    crate::llm::serve(backend, addr, max_tokens)
}
