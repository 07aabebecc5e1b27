//! Command-line entry: argument parsing only; every command is one call into `app`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "metaforge",
    version,
    about = "Meta-agent search: propose, check, sandbox-evaluate and archive agent programs"
)]
struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// No progress bars or per-step lines.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a search from an experiment file; prints the leaderboard at the end.
    Run {
        /// Experiment TOML (see experiments/).
        experiment: PathBuf,
        /// Archive file to create (default: runs/<name>.db).
        #[arg(long)]
        db: Option<PathBuf>,
        /// Reuse the model-call cache of an earlier run: a rerun of the same experiment sends
        /// no request it has an answer for.
        #[arg(long)]
        cache_from: Option<PathBuf>,
    },
    /// Continue an interrupted run from its archive alone.
    Resume {
        /// Archive file of the run.
        db: PathBuf,
        /// Run the remaining shards on this machine, whatever the run's [executor] says
        /// (the archive is the same either way).
        #[arg(long, conflicts_with = "ray")]
        local: bool,
        /// Run the remaining shards on the Ray cluster at this address instead.
        #[arg(long, value_name = "ADDRESS")]
        ray: Option<String>,
    },
    /// Leaderboard, proposal funnel and usage of a run.
    Status { db: PathBuf },
    /// Statically check candidate files (syntax, entry point, rules in grammars/).
    Check {
        files: Vec<PathBuf>,
        /// Check as memory designs instead of agents.
        #[arg(long)]
        memory: bool,
    },
    /// Evaluate one agent file (or memory design, on `twc`): on a built-in domain with the
    /// embedded model, or on an experiment's domain, model, limits and guards.
    Eval {
        file: PathBuf,
        /// Built-in domain: arith, units, mgsm, drop, arc, gsm8k, or twc (memory designs; n
        /// episodes, half fill, half scored; an experiment may set its own fill).
        #[arg(long, required_unless_present = "experiment", conflicts_with = "experiment")]
        domain: Option<String>,
        /// An experiment file: its domain, splits, agent model (any backend), limits and guards.
        #[arg(long)]
        experiment: Option<PathBuf>,
        /// `val` or `test` (the experiment's held-out tasks).
        #[arg(long, default_value = "val")]
        split: String,
        /// Number of tasks (default: 20 on a built-in domain, the whole split of an experiment).
        #[arg(long)]
        n: Option<usize>,
        /// Local model alias or GGUF path (with --domain).
        #[arg(long, default_value = "smollm2-135m", conflicts_with = "experiment")]
        model: String,
        /// Archive file to cache model calls in.
        #[arg(long)]
        db: Option<PathBuf>,
    },
    /// Held-out test of a finished run's best candidates, on demand (never used for selection).
    Test {
        db: PathBuf,
        /// How many of the best validation candidates (default: the run's search.test_top_k).
        #[arg(long)]
        top: Option<usize>,
        /// Also every member of the Pareto front.
        #[arg(long)]
        front: bool,
    },
    /// Write discovered agents as standalone Python files (openai package), with README and agents.json.
    Export {
        db: PathBuf,
        /// Folder to write (new or empty).
        #[arg(long)]
        out: PathBuf,
        /// The Pareto front over the run's objectives.
        #[arg(long, conflicts_with_all = ["top", "id"])]
        front: bool,
        /// The best N by validation score (default 3 when nothing else is given).
        #[arg(long, conflicts_with = "id")]
        top: Option<usize>,
        /// Candidates by id prefix (repeatable).
        #[arg(long)]
        id: Vec<String>,
    },
    /// Start a run from an ADAS archive (its agents become the seeds); continue with `resume`.
    ImportAdas {
        /// ADAS's `*_run_archive.json`.
        archive: PathBuf,
        /// Built-in domain to evaluate on (default: the experiment's).
        #[arg(long)]
        domain: Option<String>,
        /// Experiment to base the run on (default: the embedded quickstart, without its seeds).
        #[arg(long)]
        experiment: Option<PathBuf>,
        /// Archive file to create (default: runs/adas-<name>.db).
        #[arg(long)]
        db: Option<PathBuf>,
    },
    /// One self-contained HTML report: front, generations, lineage, funnel, code and diffs.
    Report {
        db: PathBuf,
        /// The HTML file to write.
        #[arg(short, long, default_value = "report.html")]
        out: PathBuf,
    },
    /// Family tree of a run: who produced whom, by which operator, and which steps improved.
    Lineage {
        db: PathBuf,
        /// Only the ancestry of the candidate whose id starts with this.
        #[arg(long)]
        of: Option<String>,
        /// Graphviz DOT instead of text (`| dot -Tsvg > lineage.svg`).
        #[arg(long)]
        dot: bool,
    },
    /// Unite two archives by content hash into a new one (a copy of A plus what B adds).
    Merge {
        a: PathBuf,
        b: PathBuf,
        /// The merged archive to write (never overwritten).
        #[arg(short, long)]
        out: PathBuf,
        /// Merge even when domain, agent model or validation tasks differ.
        #[arg(long)]
        force: bool,
    },
    /// A live dashboard of one or more archives in the browser (read-only; runs go on).
    Ui {
        /// Archives to show side by side.
        #[arg(required = true)]
        dbs: Vec<PathBuf>,
        /// Address to bind; one off loopback needs a token.
        #[arg(long, default_value = "127.0.0.1:8765")]
        addr: String,
        /// Environment variable holding the token the page asks for.
        #[arg(long, default_value = "METAFORGE_UI_TOKEN")]
        token_env: String,
    },
    /// A run's history as JSON lines, one per proposal and per evaluation (prompt, reply,
    /// diff, scores, cost), for pandas, MLflow or fine-tuning.
    ExportTraces {
        db: PathBuf,
        /// The JSONL file to write (never overwritten).
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Write a run as one consistent, portable file (safe while the run is live).
    ExportBundle {
        db: PathBuf,
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Check a bundle and turn it into an archive ready for `status` and `resume`.
    ImportBundle {
        bundle: PathBuf,
        #[arg(short, long)]
        out: PathBuf,
    },
    /// Show which sandbox protections this machine's kernel gives, with a live probe, and
    /// whether the embedded model runs on this CPU (loaded and decoding in a process of its
    /// own). Exit 0: all is well; 1: the embedded model cannot run here; 3: the model runs
    /// but some sandbox layers are missing.
    Doctor {
        /// The local model to check: an alias or a GGUF path.
        #[arg(long, default_value = "smollm2-135m")]
        model: String,
        /// Do not load the model (no download, no decode).
        #[arg(long)]
        no_model: bool,
    },
    /// The embedded model's own process, started and watched by metaforge: requests on stdin,
    /// replies on stdout.
    #[command(hide = true)]
    ModelProcess {
        /// Print the CPU features this build's kernels need (JSON) and exit.
        #[arg(long)]
        features: bool,
    },
    /// Run one evaluation shard sent by a driver (a Ray task starts this on a node): the
    /// shard on stdin, the worker's result on stdout, model calls asked of the driver.
    #[command(hide = true)]
    Shard,
    /// Serve the embedded model as an OpenAI-compatible endpoint (for tests and tools).
    Serve {
        /// Local model alias or GGUF path.
        #[arg(long, default_value = "smollm2-135m")]
        model: String,
        /// Address to bind; port 0 picks a free port (printed on stderr).
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: String,
        /// Cap on max_tokens per request.
        #[arg(long, default_value_t = 512)]
        max_tokens: u32,
        /// Requests decoded together in one batch.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("METAFORGE_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Run {
            experiment,
            db,
            cache_from,
        } => metaforge::app::run(experiment, db.as_deref(), cache_from.as_deref(), cli.quiet, cli.json).map(|_| true),
        Command::Resume { db, local, ray } => {
            metaforge::app::resume(db, *local, ray.as_deref(), cli.quiet, cli.json).map(|_| true)
        }
        Command::Status { db } => metaforge::app::status(db, cli.json).map(|_| true),
        Command::Test { db, top, front } => metaforge::app::test(db, *top, *front, cli.quiet, cli.json).map(|_| true),
        Command::Export {
            db,
            out,
            front,
            top,
            id,
        } => {
            let pick = if *front {
                metaforge::export::Pick::Front
            } else if !id.is_empty() {
                metaforge::export::Pick::Ids(id.clone())
            } else {
                metaforge::export::Pick::Top(top.unwrap_or(3))
            };
            metaforge::app::export(db, &pick, out, cli.json).map(|_| true)
        }
        Command::ImportAdas {
            archive,
            domain,
            experiment,
            db,
        } => metaforge::app::import_adas(
            archive,
            domain.as_deref(),
            experiment.as_deref(),
            db.as_deref(),
            cli.json,
        )
        .map(|_| true),
        Command::Report { db, out } => metaforge::app::report(db, out).map(|_| true),
        Command::Lineage { db, of, dot } => metaforge::app::lineage(db, of.as_deref(), *dot, cli.json).map(|_| true),
        Command::Ui { dbs, addr, token_env } => metaforge::app::ui(dbs, addr, token_env).map(|_| true),
        Command::ExportTraces { db, out } => metaforge::app::export_traces(db, out, cli.json).map(|_| true),
        Command::Merge { a, b, out, force } => metaforge::app::merge(a, b, out, *force, cli.json).map(|_| true),
        Command::ExportBundle { db, out } => metaforge::app::bundle(db, out, false, cli.json).map(|_| true),
        Command::ImportBundle { bundle, out } => metaforge::app::bundle(bundle, out, true, cli.json).map(|_| true),
        Command::Doctor { model, no_model } => {
            match metaforge::app::doctor(cli.json, (!*no_model).then_some(model.as_str())) {
                Ok(verdict) => return ExitCode::from(verdict.exit_code()),
                Err(e) => Err(e),
            }
        }
        Command::ModelProcess { features } => metaforge::app::model_process(*features).map(|_| true),
        Command::Shard => metaforge::app::shard().map(|_| true),
        Command::Check { files, memory } => metaforge::app::check(files, *memory, cli.json),
        Command::Serve {
            model,
            addr,
            max_tokens,
            concurrency,
        } => metaforge::app::serve(model, addr, *max_tokens, *concurrency).map(|_| true),
        Command::Eval {
            file,
            domain,
            experiment,
            split,
            n,
            model,
            db,
        } => {
            let target = match (experiment, domain) {
                (Some(exp), _) => metaforge::app::EvalTarget::Experiment(exp),
                (None, domain) => metaforge::app::EvalTarget::Builtin {
                    domain: domain.as_deref().unwrap_or_default(),
                    model,
                },
            };
            metaforge::types::Split::parse(split)
                .map_err(metaforge::types::BadInput::wrap)
                .and_then(|split| metaforge::app::eval(file, target, split, *n, db.as_deref(), cli.json))
                .map(|_| true)
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(metaforge::app::EXIT_FAILURE),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(metaforge::app::exit_code(&e))
        }
    }
}
