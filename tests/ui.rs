//! `metaforge ui`: the live dashboard over a real (scripted-model) search that is still
//! running, loaded by real headless Chromium driven over the DevTools protocol. The page must
//! gain candidates without a reload (read from its DOM), and a screenshot is kept
//! (`target/ui-test/dashboard.png`). Off loopback the dashboard needs a token.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::*;

/// Kills the child when dropped.
struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn chromium() -> PathBuf {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH")
                .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.exists()))
        })
        .expect("no headless Chromium; fix: run scripts/setup.sh --with-browser (Debian packages chromium, chromium-driver)")
}

/// Starts `metaforge ui` on a free port; returns it and the page's address.
fn start_ui(dbs: &[&Path], extra_env: &[(&str, &str)]) -> (Killed, String) {
    let mut cmd = Command::new(bin());
    cmd.arg("ui").args(dbs).args(["--addr", "127.0.0.1:0"]);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let mut child = cmd.stderr(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = lines.next().expect("the dashboard printed its address").unwrap();
    let url = line
        .strip_prefix("dashboard on ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_string();
    std::thread::spawn(move || for _ in lines {});
    (Killed(child), url)
}

/// A page of headless Chromium, driven over the DevTools protocol.
struct Browser {
    _process: Killed,
    socket: tungstenite::WebSocket<std::net::TcpStream>,
    next_id: u64,
}

impl Browser {
    fn open(url: &str) -> Self {
        let mut child = Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--window-size=1400,1000",
                "--remote-debugging-port=0",
                "about:blank",
            ])
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let port = loop {
            let line = lines.next().expect("Chromium printed its DevTools address").unwrap();
            if let Some(rest) = line.strip_prefix("DevTools listening on ws://127.0.0.1:") {
                break rest.split('/').next().unwrap().to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        let targets: serde_json::Value = ureq::get(&format!("http://127.0.0.1:{port}/json/list"))
            .call()
            .unwrap()
            .body_mut()
            .read_json()
            .unwrap();
        let page = targets
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["type"] == "page")
            .expect("a page target")["webSocketDebuggerUrl"]
            .as_str()
            .unwrap()
            .to_string();
        let stream = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
        let (socket, _) = tungstenite::client(page.as_str(), stream).unwrap();
        let mut browser = Browser {
            _process: Killed(child),
            socket,
            next_id: 0,
        };
        browser.call("Page.navigate", serde_json::json!({ "url": url }));
        browser
    }

    /// Sends a DevTools command and returns its result.
    fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        let msg = serde_json::json!({ "id": id, "method": method, "params": params });
        self.socket.send(tungstenite::Message::text(msg.to_string())).unwrap();
        loop {
            let reply = self.socket.read().unwrap();
            let Ok(text) = reply.to_text() else { continue };
            let v: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// A JavaScript expression's value in the page.
    fn eval(&mut self, expression: &str) -> serde_json::Value {
        let r = self.call(
            "Runtime.evaluate",
            serde_json::json!({ "expression": expression, "returnByValue": true }),
        );
        r["result"]["value"].clone()
    }
}

#[test]
fn the_dashboard_gains_candidates_live_without_a_reload() {
    let dir = tempfile::tempdir().unwrap();
    // A search slow enough to watch: model calls take a while.
    let exp = experiment(dir.path(), 0.0, 10);
    slow_agent(&exp, 120);
    let db = dir.path().join("live.db");
    let _run = Killed(spawn_run(&exp, &db, Stdio::null()));
    while count_or_zero(&db, "SELECT count(*) FROM candidates") < 3 {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_ui, url) = start_ui(&[&db], &[]);
    let mut browser = Browser::open(&url);

    let live = |b: &mut Browser| -> serde_json::Value {
        b.eval(
            "(() => { const l = document.getElementById('live'); return l ? Object.assign({}, l.dataset) : null; })()",
        )
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut first_seen = None;
    let state = loop {
        let state = live(&mut browser);
        if first_seen.is_none() && state["first"].as_str().is_some_and(|f| !f.is_empty()) {
            first_seen = Some(state.clone());
        }
        let first: u64 = state["first"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
        let now: u64 = state["now"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0);
        if first > 0 && now > first {
            break state;
        }
        assert!(Instant::now() < deadline, "the page never gained a candidate: {state}");
        std::thread::sleep(Duration::from_millis(300));
    };
    let first_seen = first_seen.expect("the page drew the run once");
    assert_eq!(
        state["loadedAt"], first_seen["loadedAt"],
        "the same page, not a reload, gained candidates"
    );
    let updates: u64 = state["updates"].as_str().unwrap().parse().unwrap();
    assert!(updates >= 2, "{state}");
    // What a reader sees: the leaderboard, the front chart, the lineage and the funnel.
    let shown = browser.eval(
        "['leaderboard', 'pareto-chart', 'lineage-chart', 'funnel', 'budget'].every(id => document.getElementById(id))",
    );
    assert_eq!(shown, true);
    let shot = browser.call("Page.captureScreenshot", serde_json::json!({ "format": "png" }));
    let png = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap()
    };
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-test");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("dashboard.png"), &png).unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
}

/// Off loopback the dashboard refuses to start without a token (exit 2, the fix named),
/// and with one it answers 401 to a request without the right token, 200 with it.
#[test]
fn off_loopback_the_dashboard_needs_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let db = finished_run(dir.path(), "exp.toml", 3, ARITH);
    let refused = Command::new(bin())
        .args(["ui", db.to_str().unwrap(), "--addr", "0.0.0.0:0"])
        .env_remove("METAFORGE_UI_TOKEN")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("without a token") && err.contains("METAFORGE_UI_TOKEN"),
        "{err}"
    );

    let mut child = Command::new(bin())
        .args(["ui", db.to_str().unwrap(), "--addr", "0.0.0.0:0"])
        .env("METAFORGE_UI_TOKEN", "s3cret-token")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let line = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    let _ui = Killed(child);
    assert!(!line.contains("s3cret"), "the token is never printed: {line}");
    let port = line.split(':').nth(2).unwrap().split('/').next().unwrap().to_string();
    let get = |token: Option<&str>| {
        let mut req = ureq::get(&format!("http://127.0.0.1:{port}/run/0/wait?seen=x"));
        if let Some(t) = token {
            req = req.header("Authorization", &format!("Bearer {t}"));
        }
        match req.config().http_status_as_error(false).build().call() {
            Ok(r) => r.status().as_u16(),
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(get(None), 401);
    assert_eq!(get(Some("guess")), 401);
    assert_eq!(get(Some("s3cret-token")), 200);
}
