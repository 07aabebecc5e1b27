//! `metaforge serve`: an OpenAI-compatible `/v1/chat/completions` endpoint in front of any
//! backend (normally the embedded model). Why: it lets the `openai` backend, exported agents
//! and other tools be run and tested against a real server offline, on 127.0.0.1.
//!
//! It runs on `http::serve_forever` (hyper: every connection its own task; why not a
//! thread-pool server is said there); model calls, which block, run on tokio's blocking pool.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response};
use serde::Deserialize;
use serde_json::json;

use super::{Backend, ChatRequest, LlmError, Message};

/// Largest request body accepted (a chat request of any sane prompt fits many times over).
const MAX_BODY_BYTES: usize = 16 << 20;

#[derive(Deserialize)]
struct Body {
    messages: Vec<Message>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    seed: Option<u32>,
    #[serde(default)]
    stop: Option<Stop>,
    /// OpenAI's structured output: a JSON schema whose `answer` is an `enum` of strings is
    /// served as a constrained call, its reply `{"answer": "<choice>"}`.
    #[serde(default)]
    response_format: Option<serde_json::Value>,
}

/// The choices of a `json_schema` response format shaped as a constrained call's is (an
/// object whose `answer` is a string `enum`); None for any other format.
fn schema_choices(format: &serde_json::Value) -> Option<Vec<String>> {
    if format["type"] != "json_schema" {
        return None;
    }
    let values = format["json_schema"]["schema"]["properties"]["answer"]["enum"].as_array()?;
    values.iter().map(|v| v.as_str().map(str::to_string)).collect()
}

/// OpenAI's `stop`: one string or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

/// Serves until the process is killed. Prints `listening on http://ADDR/v1` once bound.
pub fn serve(backend: Arc<dyn Backend>, addr: &str, max_tokens_cap: u32) -> Result<()> {
    let endpoint = Endpoint::bind(addr)?;
    eprintln!("listening on http://{}/v1", endpoint.local_addr());
    endpoint.run(backend, max_tokens_cap)
}

/// A bound endpoint: bind first to learn the port (tests, benches), then `run`.
pub struct Endpoint {
    listener: std::net::TcpListener,
    addr: SocketAddr,
}

impl Endpoint {
    pub fn bind(addr: &str) -> Result<Self> {
        let listener = std::net::TcpListener::bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
        let addr = listener.local_addr()?;
        Ok(Self { listener, addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves on the calling thread until the process ends.
    pub fn run(self, backend: Arc<dyn Backend>, max_tokens_cap: u32) -> Result<()> {
        crate::http::serve_forever(self.listener, "metaforge-serve", move |request| {
            answer(backend.clone(), max_tokens_cap, request)
        })
    }
}

async fn answer(
    backend: Arc<dyn Backend>,
    cap: u32,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path().to_string();
    let (status, body) = match (request.method(), path.as_str()) {
        (&Method::GET, "/v1/models") => (
            200,
            json!({"object": "list", "data": [{"id": backend.model_id(), "object": "model"}]}),
        ),
        (&Method::POST, "/v1/chat/completions") if declared_length(&request).is_some_and(|n| n > MAX_BODY_BYTES) => {
            // Refused before a byte of the body is read: the client learns why even when it
            // is still sending, rather than meeting a closed connection mid-body.
            (413, over_the_limit())
        }
        (&Method::POST, "/v1/chat/completions") => {
            match Limited::new(request.into_body(), MAX_BODY_BYTES).collect().await {
                Ok(bytes) => {
                    let text = String::from_utf8_lossy(&bytes.to_bytes()).into_owned();
                    tokio::task::spawn_blocking(move || complete(&*backend, &text, cap))
                        .await
                        .unwrap_or_else(|e| {
                            (
                                500,
                                json!({"error": {"message": format!("the model call failed: {e}")}}),
                            )
                        })
                }
                Err(e) if e.is::<http_body_util::LengthLimitError>() => (413, over_the_limit()),
                Err(e) => (
                    400,
                    json!({"error": {"message": format!("cannot read the request body: {e}")}}),
                ),
            }
        }
        _ => (404, json!({"error": {"message": format!("no route {path}")}})),
    };
    let response = Response::builder()
        .status(status)
        .header("Content-Type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("a status and a static header");
    Ok(response)
}

/// The body length a request's `Content-Length` declares, if it declares one.
fn declared_length(request: &Request<Incoming>) -> Option<usize> {
    request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn over_the_limit() -> serde_json::Value {
    json!({"error": {"message": format!("request body over the limit of {MAX_BODY_BYTES} bytes")}})
}

fn complete(backend: &dyn Backend, text: &str, cap: u32) -> (u16, serde_json::Value) {
    let body: Body = match serde_json::from_str(text) {
        Ok(b) => b,
        Err(e) => return (400, json!({"error": {"message": format!("invalid request body: {e}")}})),
    };
    if body.messages.is_empty() {
        return (400, json!({"error": {"message": "messages must not be empty"}}));
    }
    let choices = body
        .response_format
        .as_ref()
        .and_then(schema_choices)
        .unwrap_or_default();
    if !choices.is_empty() {
        if let Err(e) = crate::types::check_choices(&choices) {
            return (400, json!({"error": {"message": format!("response_format: {e}")}}));
        }
    }
    let req = ChatRequest {
        messages: body.messages,
        temperature: body.temperature.unwrap_or(0.0).clamp(0.0, 2.0),
        max_tokens: body.max_tokens.unwrap_or(cap).min(cap).max(1),
        json: false,
        stop: body.stop.map(|s| s.into_vec()).unwrap_or_default(),
        choices,
        calibration: None,
        sample_index: body.seed.unwrap_or(0),
    };
    match backend.complete(&req).map(|mut c| {
        if let Some(at) = super::cut_at_stop(&c.text, &req.stop) {
            c.text.truncate(at);
        }
        c
    }) {
        Ok(mut c) if !req.choices.is_empty() => match super::pick_choice(&c.text, &req.choices) {
            Some(answer) => {
                c.text = json!({ "answer": answer }).to_string();
                (200, reply(backend, &c))
            }
            None => (
                500,
                json!({"error": {"message": format!("the model's reply {:?} names none of the choices", c.text)}}),
            ),
        },
        Ok(c) => (200, reply(backend, &c)),
        Err(LlmError::Transient(e)) => (503, json!({"error": {"message": e}})),
        Err(LlmError::Throttled { message, .. }) => (429, json!({"error": {"message": message}})),
        Err(e) => (500, json!({"error": {"message": e.to_string()}})),
    }
}

/// An OpenAI chat completion carrying `c`.
fn reply(backend: &dyn Backend, c: &super::Completion) -> serde_json::Value {
    json!({
        "id": "chatcmpl-metaforge",
        "object": "chat.completion",
        "model": backend.model_id(),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens, "total_tokens": c.prompt_tokens + c.completion_tokens},
    })
}
