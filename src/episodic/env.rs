//! The game side of the episodic domain: TextWorldExpress servers (runtime/envs/twc_server.py)
//! in the project's own virtual environment, a pool of them, and the one-time install.
//!
//! Why outside the candidate sandbox: the package runs its games in a JVM that it starts as a
//! subprocess and reaches over a loopback socket, and the sandbox forbids both. The game and
//! the base agent are fixed parts of the experiment, not candidate code, so they run as
//! trusted host-side processes; the memory design (the only model-written code) stays in the
//! sandbox and sees only the observations and trajectories the host hands it.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The pinned environment package.
pub const TWX_PACKAGE: &str = "textworld-express==1.1.0";

/// One game of the domain: which generated world to play.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Game {
    pub game: String,
    pub fold: String,
    pub seed: u64,
    pub params: String,
}

/// What the game shows after a reset or a step.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GameState {
    pub observation: String,
    pub task: String,
    pub inventory: String,
    pub valid_actions: Vec<String>,
    pub score: f64,
    pub done: bool,
    pub success: bool,
}

/// One running game server.
pub struct EnvServer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl EnvServer {
    fn start(python: &Path, script: &Path) -> Result<Self> {
        let mut child = Command::new(python)
            .arg("-u")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start the game server {}", python.display()))?;
        let stdin = child.stdin.take().context("game server stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("game server stdout")?);
        let mut server = Self { child, stdin, stdout };
        let ready = server.read().context(
            "the TextWorldExpress server did not start; fix: check that `java -version` prints 17 or later (apt-get install openjdk-17-jre-headless) and run `metaforge doctor`",
        )?;
        if ready.get("ready") != Some(&serde_json::Value::Bool(true)) {
            bail!("the TextWorldExpress server answered {ready} instead of ready");
        }
        Ok(server)
    }

    fn read(&mut self) -> Result<serde_json::Value> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the game server exited");
        }
        Ok(serde_json::from_str(&line)?)
    }

    fn request(&mut self, msg: serde_json::Value) -> Result<GameState> {
        writeln!(self.stdin, "{msg}")?;
        self.stdin.flush()?;
        let reply = self.read()?;
        if let Some(e) = reply.get("error") {
            bail!("game server: {e}");
        }
        Ok(serde_json::from_value(reply)?)
    }

    pub fn reset(&mut self, game: &Game) -> Result<GameState> {
        self.request(
            json!({"op": "reset", "game": game.game, "fold": game.fold, "seed": game.seed, "params": game.params}),
        )
    }

    pub fn step(&mut self, action: &str) -> Result<GameState> {
        self.request(json!({"op": "step", "action": action}))
    }
}

impl Drop for EnvServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Game servers shared by the evaluations of a run; one is checked out per play, so plays
/// run in parallel up to the number of callers. A server that failed is dropped, not reused.
pub struct EnvPool {
    python: PathBuf,
    script: PathBuf,
    idle: Mutex<Vec<EnvServer>>,
}

impl EnvPool {
    pub fn new() -> Result<Self> {
        let python = env_python()?;
        let script = crate::sandbox::runtime_dir()?.join("envs").join("twc_server.py");
        let pool = Self {
            python,
            script,
            idle: Mutex::new(Vec::new()),
        };
        // Start one now, so a missing Java is reported before any search step runs.
        let first = EnvServer::start(&pool.python, &pool.script)?;
        pool.idle.lock().unwrap().push(first);
        Ok(pool)
    }

    /// Runs `f` on an idle server (starting one when none is idle).
    pub fn with<R>(&self, f: impl FnOnce(&mut EnvServer) -> Result<R>) -> Result<R> {
        let taken = self.idle.lock().unwrap().pop();
        let mut server = match taken {
            Some(s) => s,
            None => EnvServer::start(&self.python, &self.script)?,
        };
        let out = f(&mut server);
        if out.is_ok() {
            self.idle.lock().unwrap().push(server);
        }
        out
    }
}

/// What `doctor` says about the twc domain: whether Java runs and where the environment's
/// virtual environment is (or will be made on first use). Starts nothing but `java -version`.
pub fn doctor_line() -> String {
    let java = Command::new("java")
        .arg("-version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        });
    let venv = TWX_ENV.describe();
    match java {
        Some(v) => format!("twc domain (memory designs): java {v:?}; {venv}"),
        None => "twc domain (memory designs): java does not run; fix: apt-get install openjdk-17-jre-headless (scripts/setup.sh does)".into(),
    }
}

/// The environment's own virtual environment (`$METAFORGE_TWX_PYTHON` overrides).
const TWX_ENV: crate::pyenv::PinnedEnv = crate::pyenv::PinnedEnv {
    requirement: TWX_PACKAGE,
    folder: "textworld-express-1.1.0",
    override_var: "METAFORGE_TWX_PYTHON",
};

/// The Python that has TextWorldExpress, installed once from PyPI on first use. Java is
/// checked first: without it the install would succeed and every game would fail.
pub fn env_python() -> Result<PathBuf> {
    if !TWX_ENV.ready() {
        let java = Command::new("java").arg("-version").output();
        if !java.is_ok_and(|o| o.status.success()) {
            bail!("the twc domain needs Java 17 for TextWorldExpress and `java` does not run; fix: apt-get install openjdk-17-jre-headless (scripts/setup.sh does)");
        }
    }
    TWX_ENV.python()
}
