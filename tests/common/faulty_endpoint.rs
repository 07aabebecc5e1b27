//! A faulty OpenAI-compatible endpoint on 127.0.0.1, for tests of everything that talks to
//! one. Behind it, per `model` name, a SCRIPTED model answers (the endpoint is about
//! transport faults, not about a model). On a share of requests it misbehaves instead, as
//! hosted endpoints do: a 5xx, a 429 with `Retry-After`, a 200 whose body is not JSON, a
//! connection held open without an answer, a body cut off midway, or a reply without
//! `usage`.
//!
//! Which request faults is a pure function of (seed, request body, how many times that body
//! came before), so a run is reproducible however its calls interleave, and a retried request
//! draws afresh.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metaforge::llm::{Backend, ChatRequest, Message};

/// One way to misbehave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// 503 with an error body.
    ServerError,
    /// 429 with `Retry-After: 1`.
    Throttled,
    /// 200 whose body is not JSON.
    Malformed,
    /// Reads the request, answers nothing, and waits for the client to give up.
    Hang,
    /// Announces a whole body, sends half, and closes.
    CutMidBody,
    /// A correct answer without `usage`.
    NoUsage,
}

impl Fault {
    pub const ALL: [Fault; 6] = [
        Fault::ServerError,
        Fault::Throttled,
        Fault::Malformed,
        Fault::Hang,
        Fault::CutMidBody,
        Fault::NoUsage,
    ];
}

/// What the endpoint did, for a test's assertions.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub answered: u64,
    pub faults: HashMap<Fault, u64>,
}

pub struct FaultyEndpoint {
    pub url: String,
    tally: Arc<Mutex<Tally>>,
}

struct Shared {
    seed: u64,
    /// Share of requests that fault, in [0, 1].
    rate: f64,
    faults: Vec<Fault>,
    models: HashMap<String, Arc<dyn Backend>>,
    attempts: Mutex<HashMap<u64, u64>>,
    tally: Arc<Mutex<Tally>>,
}

impl FaultyEndpoint {
    /// Serves `models` (by the `model` field of a request); `rate` of requests fault, with a
    /// fault drawn from `faults`.
    pub fn start(seed: u64, rate: f64, faults: &[Fault], models: Vec<(&str, Arc<dyn Backend>)>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let tally = Arc::new(Mutex::new(Tally::default()));
        let shared = Arc::new(Shared {
            seed,
            rate,
            faults: faults.to_vec(),
            models: models.into_iter().map(|(m, b)| (m.to_string(), b)).collect(),
            attempts: Mutex::new(HashMap::new()),
            tally: tally.clone(),
        });
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let shared = shared.clone();
                std::thread::spawn(move || serve_connection(conn, &shared));
            }
        });
        Self { url, tally }
    }

    /// The scripted model of `script` (a fixture file) as a backend for `start`.
    pub fn scripted(script: &std::path::Path) -> Arc<dyn Backend> {
        let cfg: metaforge::config::ModelConfig = toml::from_str(&format!(
            "backend = \"scripted\"\nmodel = \"scripted\"\nscript = {:?}",
            script.display().to_string()
        ))
        .unwrap();
        Arc::new(metaforge::llm::ScriptedBackend::from_config(&cfg, "agent").unwrap())
    }

    pub fn tally(&self) -> Tally {
        self.tally.lock().unwrap().clone()
    }
}

fn serve_connection(mut conn: TcpStream, shared: &Shared) {
    // Requests on a kept-alive connection, one after another, until the client closes it or
    // a fault ends it.
    let mut buffered = Vec::new();
    loop {
        let Some(body) = read_request(&mut conn, &mut buffered) else {
            return;
        };
        match shared.draw(&body) {
            Some(Fault::ServerError) => {
                respond(&mut conn, "503 Service Unavailable", "", br#"{"error": "overloaded"}"#)
            }
            Some(Fault::Throttled) => respond(
                &mut conn,
                "429 Too Many Requests",
                "Retry-After: 1\r\n",
                br#"{"error": "rate limited"}"#,
            ),
            Some(Fault::Malformed) => respond(&mut conn, "200 OK", "", br#"{"choices": [{"message": {"#),
            Some(Fault::Hang) => {
                // Until the client gives up and closes (or a minute passes).
                let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
                let _ = conn.read(&mut [0u8; 1]);
                return;
            }
            Some(Fault::CutMidBody) => {
                let body = answer(shared, &body, true);
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(&body[..body.len() / 2]);
                let _ = conn.flush();
                let _ = conn.shutdown(Shutdown::Both);
                return;
            }
            Some(Fault::NoUsage) => {
                let body = answer(shared, &body, false);
                respond(&mut conn, "200 OK", "", &body);
            }
            None => {
                let body = answer(shared, &body, true);
                respond(&mut conn, "200 OK", "", &body);
            }
        }
    }
}

impl Shared {
    fn draw(&self, body: &[u8]) -> Option<Fault> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        body.hash(&mut h);
        let key = h.finish();
        let attempt = {
            let mut attempts = self.attempts.lock().unwrap();
            let n = attempts.entry(key).or_insert(0);
            *n += 1;
            *n
        };
        let r = splitmix(self.seed ^ key ^ attempt.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let fault = ((r >> 11) as f64 / (1u64 << 53) as f64) < self.rate && !self.faults.is_empty();
        let drawn = fault.then(|| self.faults[(splitmix(r) % self.faults.len() as u64) as usize]);
        let mut tally = self.tally.lock().unwrap();
        match drawn {
            Some(f) => *tally.faults.entry(f).or_insert(0) += 1,
            None => tally.answered += 1,
        }
        if drawn == Some(Fault::NoUsage) {
            tally.answered += 1;
        }
        drawn
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The chat completion the model behind `model` gives, as the endpoint's JSON body.
fn answer(shared: &Shared, body: &[u8], usage: bool) -> Vec<u8> {
    let req: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let model = req["model"].as_str().unwrap_or("");
    let Some(backend) = shared.models.get(model) else {
        return serde_json::json!({"error": format!("no model {model:?} here")})
            .to_string()
            .into_bytes();
    };
    let chat = ChatRequest {
        messages: req["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                Message::new(
                    m["role"].as_str().unwrap_or("user"),
                    m["content"].as_str().unwrap_or(""),
                )
            })
            .collect(),
        temperature: req["temperature"].as_f64().unwrap_or(0.0) as f32,
        max_tokens: req["max_tokens"].as_u64().unwrap_or(256) as u32,
        json: req["response_format"].is_object(),
        stop: req["stop"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect(),
        // No structured output here: a JSON schema is served as a plain reply.
        choices: Vec::new(),
        calibration: None,
        sample_index: req["seed"].as_u64().unwrap_or(0) as u32,
    };
    let completion = backend.complete(&chat).unwrap();
    let mut reply = serde_json::json!({
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": completion.text}, "finish_reason": "stop"}],
    });
    if usage {
        reply["usage"] = serde_json::json!({
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
        });
    }
    reply.to_string().into_bytes()
}

fn respond(conn: &mut TcpStream, status: &str, headers: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    );
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(body);
    let _ = conn.flush();
}

/// The next request's body; None once the client closed the connection.
fn read_request(conn: &mut TcpStream, buffered: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut buf = [0u8; 8192];
    loop {
        if let Some(end) = find(buffered, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffered[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
                .unwrap_or(0);
            if buffered.len() >= end + 4 + length {
                let body = buffered[end + 4..end + 4 + length].to_vec();
                buffered.drain(..end + 4 + length);
                return Some(body);
            }
        }
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buffered.extend_from_slice(&buf[..n]),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
