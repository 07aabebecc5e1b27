//! `metaforge serve`: an OpenAI-compatible `/v1/chat/completions` endpoint in front of any
//! backend (normally the embedded model). Why: it lets the `openai` backend, exported agents
//! and other tools be run and tested against a real server offline, on 127.0.0.1.

use std::sync::Arc;

use anyhow::{anyhow, Result};
use serde::Deserialize;
use serde_json::json;

use super::{Backend, ChatRequest, LlmError, Message};

#[derive(Deserialize)]
struct Body {
    messages: Vec<Message>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    seed: Option<u32>,
}

/// Serves until the process is killed. Prints `listening on http://ADDR/v1` once bound.
pub fn serve(backend: Arc<dyn Backend>, addr: &str, max_tokens_cap: u32) -> Result<()> {
    let server = tiny_http::Server::http(addr).map_err(|e| anyhow!("cannot listen on {addr}: {e}"))?;
    eprintln!("listening on http://{}/v1", server.server_addr());
    for mut request in server.incoming_requests() {
        let backend = backend.clone();
        std::thread::spawn(move || {
            let path = request.url().split('?').next().unwrap_or("").to_string();
            let (status, body) = match (request.method(), path.as_str()) {
                (tiny_http::Method::Get, "/v1/models") => (
                    200,
                    json!({"object": "list", "data": [{"id": backend.model_id(), "object": "model"}]}),
                ),
                (tiny_http::Method::Post, "/v1/chat/completions") => {
                    let mut text = String::new();
                    let _ = request.as_reader().read_to_string(&mut text);
                    complete(&*backend, &text, max_tokens_cap)
                }
                _ => (404, json!({"error": {"message": format!("no route {path}")}})),
            };
            let header = tiny_http::Header::from_bytes("Content-Type", "application/json").expect("static header");
            let _ = request.respond(
                tiny_http::Response::from_string(body.to_string())
                    .with_status_code(status)
                    .with_header(header),
            );
        });
    }
    Ok(())
}

fn complete(backend: &dyn Backend, text: &str, cap: u32) -> (u16, serde_json::Value) {
    let body: Body = match serde_json::from_str(text) {
        Ok(b) => b,
        Err(e) => return (400, json!({"error": {"message": format!("invalid request body: {e}")}})),
    };
    if body.messages.is_empty() {
        return (400, json!({"error": {"message": "messages must not be empty"}}));
    }
    let req = ChatRequest {
        messages: body.messages,
        temperature: body.temperature.unwrap_or(0.0).clamp(0.0, 2.0),
        max_tokens: body.max_tokens.unwrap_or(cap).min(cap).max(1),
        json: false,
        sample_index: body.seed.unwrap_or(0),
    };
    match backend.complete(&req) {
        Ok(c) => (
            200,
            json!({
                "id": "chatcmpl-metaforge",
                "object": "chat.completion",
                "model": backend.model_id(),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens, "total_tokens": c.prompt_tokens + c.completion_tokens},
            }),
        ),
        Err(LlmError::Transient(e)) => (503, json!({"error": {"message": e}})),
        Err(e) => (500, json!({"error": {"message": e.to_string()}})),
    }
}
