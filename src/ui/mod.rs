//! `metaforge ui`: a live dashboard of one or more archives, in a browser, while their runs go
//! on. It only reads: each request opens the archive read-only, and WAL lets the run write
//! at the same time.
//!
//! What the page shows is the HTML report's body (`report::html`, the same charts and
//! tables), one column per archive, redrawn whenever the archive gains a step: the page
//! long-polls `/run/N/wait`, which answers as soon as the run's progress differs from what
//! the page has. The page and its script are `templates/ui/dashboard.html.j2`, carried in the
//! binary: no CDN, no network.
//!
//! Why a token off loopback: the dashboard shows prompts, code and scores. Bound to another
//! address it serves only requests that carry the token (the page asks for it), compared in
//! constant time; a wrong one gets 401.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response};
use serde_json::json;

use crate::archive::Archive;
use crate::report::html::{render_with, PageOptions};
use crate::types::BadInput;

/// Candidates listed in full (table, lineage, code) per archive: the page stays quick on a
/// run of any size; the front and the charts count every candidate.
const SHOWN_CANDIDATES: usize = 60;
/// Per-task rows under each listed candidate.
const TASK_ROWS: usize = 20;
/// Longest a `/wait` request is held before it answers "no change".
const LONG_POLL: Duration = Duration::from_secs(15);

/// What the server needs to answer.
struct Dashboard {
    runs: Vec<PathBuf>,
    token: Option<String>,
}

/// A bound dashboard: bind first to learn the port (tests), then `run`.
pub struct Server {
    listener: std::net::TcpListener,
    dashboard: Arc<Dashboard>,
}

impl Server {
    /// Binds `addr` for `runs`. Off loopback a token is required: `token` (from the variable
    /// the user named) or the bind is refused.
    pub fn bind(runs: &[PathBuf], addr: &str, token: Option<String>, token_env: &str) -> Result<Self> {
        for run in runs {
            Archive::open_read_only(run)?;
        }
        let sock: SocketAddr = addr
            .parse()
            .with_context(|| format!("--addr {addr:?} is not an address; fix: give IP:PORT, e.g. 127.0.0.1:8765"))
            .map_err(BadInput::wrap)?;
        if !sock.ip().is_loopback() && token.as_deref().unwrap_or("").is_empty() {
            return Err(BadInput::wrap(anyhow::anyhow!(
                "refusing to serve the dashboard on {addr}, beyond this machine, without a token; fix: export {token_env}=<a secret> (the page asks for it), or bind 127.0.0.1"
            )));
        }
        let listener = std::net::TcpListener::bind(sock).with_context(|| format!("cannot listen on {addr}"))?;
        Ok(Self {
            listener,
            dashboard: Arc::new(Dashboard {
                runs: runs.to_vec(),
                token: token.filter(|t| !t.is_empty()),
            }),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Serves on the calling thread until the process ends.
    pub fn run(self) -> Result<()> {
        let dashboard = self.dashboard;
        crate::http::serve_forever(self.listener, "metaforge-ui", move |request| {
            answer(dashboard.clone(), request)
        })
    }
}

fn reply(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("Content-Type", content_type)
        .header("Cache-Control", "no-store")
        .body(Full::new(body.into()))
        .expect("a response of constant parts builds")
}

fn json_reply(status: u16, v: serde_json::Value) -> Response<Full<Bytes>> {
    reply(status, "application/json", v.to_string())
}

/// Whether the request carries the token (header `Authorization: Bearer T`), in constant time.
fn authorized(dashboard: &Dashboard, request: &Request<Incoming>) -> bool {
    use subtle::ConstantTimeEq;
    let Some(token) = &dashboard.token else { return true };
    let given = request
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    bool::from(given.as_bytes().ct_eq(token.as_bytes()))
}

async fn answer(dashboard: Arc<Dashboard>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    if request.method() != Method::GET {
        return Ok(json_reply(405, json!({"error": "the dashboard only reads: GET"})));
    }
    // The page itself holds nothing of the runs; what it fetches needs the token.
    if path == "/" {
        return Ok(match page(&dashboard) {
            Ok(html) => reply(200, "text/html; charset=utf-8", html),
            Err(e) => json_reply(500, json!({"error": format!("{e:#}")})),
        });
    }
    if !authorized(&dashboard, &request) {
        return Ok(json_reply(401, json!({"error": "this dashboard needs its token"})));
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let run = |i: &str| i.parse::<usize>().ok().and_then(|i| dashboard.runs.get(i).cloned());
    let response = match parts.as_slice() {
        ["run", i] => match run(i) {
            Some(db) => blocking(move || fragment(&db).map(|html| reply(200, "text/html; charset=utf-8", html))).await,
            None => json_reply(404, json!({"error": "no such run"})),
        },
        ["run", i, "wait"] => match run(i) {
            Some(db) => {
                let seen = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("seen="))
                    .unwrap_or("")
                    .to_string();
                wait_for_change(db, seen).await
            }
            None => json_reply(404, json!({"error": "no such run"})),
        },
        _ => json_reply(404, json!({"error": "no such page"})),
    };
    Ok(response)
}

async fn blocking(f: impl FnOnce() -> Result<Response<Full<Bytes>>> + Send + 'static) -> Response<Full<Bytes>> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => json_reply(500, json!({"error": format!("{e:#}")})),
        Err(e) => json_reply(500, json!({"error": format!("{e}")})),
    }
}

/// The run's progress as the page compares it: candidates and committed steps.
fn progress(db: &Path) -> Result<String> {
    let (candidates, steps) = Archive::open_read_only(db)?.progress()?;
    Ok(format!("{candidates}-{steps}"))
}

/// Answers once the run's progress differs from `seen`, or after `LONG_POLL`.
async fn wait_for_change(db: PathBuf, seen: String) -> Response<Full<Bytes>> {
    let started = Instant::now();
    loop {
        let db2 = db.clone();
        let now = match tokio::task::spawn_blocking(move || progress(&db2)).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return json_reply(500, json!({"error": format!("{e:#}")})),
            Err(e) => return json_reply(500, json!({"error": format!("{e}")})),
        };
        if now != seen || started.elapsed() >= LONG_POLL {
            return json_reply(200, json!({"progress": now, "changed": now != seen}));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn fragment(db: &Path) -> Result<String> {
    let archive = Archive::open_read_only(db)?;
    render_with(
        &archive,
        &PageOptions {
            fragment: true,
            candidates: Some(SHOWN_CANDIDATES),
            task_rows: TASK_ROWS,
        },
    )
}

fn page(dashboard: &Dashboard) -> Result<String> {
    let runs: Vec<serde_json::Value> = dashboard
        .runs
        .iter()
        .enumerate()
        .map(|(i, p)| json!({"index": i, "file": p.file_name().map(|f| f.to_string_lossy().into_owned())}))
        .collect();
    crate::propose::Templates::embedded()?.render(
        "ui/dashboard.html.j2",
        json!({"runs": runs, "needs_token": dashboard.token.is_some()}),
    )
}
