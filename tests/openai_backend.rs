//! The `openai` backend against a real OpenAI-compatible server on 127.0.0.1: `metaforge
//! serve` running the embedded model (no hand-written fake).

use std::sync::Arc;
use std::time::Duration;

mod common;

use common::start_server;
use metaforge::archive::CallCache;
use metaforge::llm::{Backend, Budget, CallParams, Gateway, LlmError, Message, OpenAiBackend, Role};

fn model_cfg(url: &str) -> metaforge::config::ModelConfig {
    toml::from_str(&format!("backend = \"openai\"\nmodel = \"smollm2\"\nbase_url = {url:?}\nmax_tokens = 32\nprice_prompt_per_mtok = 1.0\nprice_completion_per_mtok = 2.0")).unwrap()
}

/// One user message, greedy, 4 tokens: what the backend tests send.
fn user_request(text: &str) -> metaforge::llm::ChatRequest {
    metaforge::llm::ChatRequest {
        messages: vec![Message::new("user", text)],
        temperature: 0.0,
        max_tokens: 4,
        json: false,
        stop: Vec::new(),
        choices: Vec::new(),
        calibration: None,
        sample_index: 0,
    }
}

#[test]
fn chat_completion_through_the_gateway_is_accounted_and_cached() {
    let (_server, url) = start_server(48);
    let cfg = model_cfg(&url);
    let backend = Arc::new(OpenAiBackend::from_config(&cfg, "agent").unwrap());
    let cache = Arc::new(CallCache::in_memory().unwrap());
    let gw = Gateway::new(
        Role::Agent,
        backend,
        &cfg,
        Some(cache.clone()),
        Arc::new(Budget::unlimited()),
    );
    let req = gw.request(
        vec![Message::new("user", "What is 2 plus 3? Answer with a number.")],
        CallParams::default(),
        0,
    );
    let first = gw.complete(&req).unwrap();
    assert!(!first.text.trim().is_empty());
    assert!(first.prompt_tokens > 0 && first.completion_tokens > 0);
    let expected = (first.prompt_tokens as f64 * 1.0 + first.completion_tokens as f64 * 2.0) / 1e6;
    assert!(
        (first.cost_usd - expected).abs() < 1e-12,
        "cost from the configured prices"
    );
    assert!(!first.cached);
    let second = gw.complete(&req).unwrap();
    assert!(second.cached);
    assert_eq!(second.text, first.text);
    assert_eq!(cache.len(), 1);
}

#[test]
fn client_errors_are_not_retried() {
    let (_server, url) = start_server(48);
    let backend = OpenAiBackend::new(&format!("{url}/missing"), "x", None, Duration::from_secs(30), 4);
    let req = user_request("hi");
    match backend.complete(&req) {
        Err(LlmError::Fatal(e)) => assert!(e.contains("404"), "{e}"),
        other => panic!("expected a fatal 404, got {other:?}"),
    }
}

/// A calibrated choice needs each choice's likelihood, which an endpoint does not give: the
/// call is refused by name, before anything is sent (the address below has no server).
#[test]
fn a_calibrated_choice_is_refused_by_an_endpoint_before_it_is_sent() {
    let backend = OpenAiBackend::new("http://127.0.0.1:9/v1", "x", None, Duration::from_secs(2), 4);
    let mut req = user_request("You hold the cushion. Where does it go?");
    req.choices = vec!["sofa".into(), "shelf".into()];
    req.calibration = Some(metaforge::llm::Calibration {
        messages: vec![Message::new("user", "You hold the thing. Where does it go?")],
        choices: req.choices.clone(),
    });
    match backend.complete(&req) {
        Err(LlmError::Fatal(e)) => assert!(
            e.contains("place_avoid") && e.contains("place_choice") && e.contains("likelihood"),
            "{e}"
        ),
        other => panic!("expected a fatal refusal, got {other:?}"),
    }
}

#[test]
fn unreachable_endpoint_is_transient() {
    let backend = OpenAiBackend::new("http://127.0.0.1:9/v1", "x", None, Duration::from_secs(2), 4);
    let req = user_request("hi");
    assert!(matches!(backend.complete(&req), Err(LlmError::Transient(_))));
}

#[test]
fn missing_api_key_variable_is_a_clear_error() {
    let mut cfg = model_cfg("http://127.0.0.1:9/v1");
    cfg.api_key_env = Some("METAFORGE_TEST_UNSET_KEY_VAR".into());
    let err = OpenAiBackend::from_config(&cfg, "meta").err().unwrap().to_string();
    assert!(
        err.contains("METAFORGE_TEST_UNSET_KEY_VAR") && err.contains("fix:"),
        "{err}"
    );
}

/// A stand-in model for the server test below (scripted: it echoes after 5 ms); the test is
/// about `metaforge serve`'s connection handling, not the model.
struct EchoAfter5ms;
impl Backend for EchoAfter5ms {
    fn model_id(&self) -> String {
        "echo".into()
    }
    fn complete(&self, req: &metaforge::llm::ChatRequest) -> Result<metaforge::llm::Completion, LlmError> {
        std::thread::sleep(Duration::from_millis(5));
        Ok(metaforge::llm::Completion {
            text: req.messages[0].content.clone(),
            prompt_tokens: 1,
            completion_tokens: 1,
        })
    }
}

/// `metaforge serve` answers every request on every kept-alive connection. Its former
/// server (tiny_http) could lose the wake-up of a connection that arrived together with
/// another; with the client keeping one connection per call in flight, such a request sat
/// unread until the client's timeout (2 runs in 5 of the saturation bench).
#[test]
fn every_kept_alive_connection_is_served() {
    let endpoint = metaforge::llm::Endpoint::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", endpoint.local_addr());
    std::thread::spawn(move || endpoint.run(Arc::new(EchoAfter5ms), 16));
    for round in 0..5 {
        // A fresh client each round: its 16 connections open together.
        let backend = Arc::new(OpenAiBackend::new(&url, "echo", None, Duration::from_secs(10), 16));
        let workers: Vec<_> = (0..16)
            .map(|w| {
                let backend = backend.clone();
                std::thread::spawn(move || {
                    for i in 0..10 {
                        let text = format!("round {round} worker {w} call {i}");
                        let reply = backend
                            .complete(&user_request(&text))
                            .unwrap_or_else(|e| panic!("{text}: {e}"));
                        assert_eq!(reply.text, text);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
    }
}

/// A request body over the server's limit is refused with 413 and a message naming the
/// limit, before the body is read: the client below declares 17 MiB and sends none of it,
/// and still gets the answer. The server keeps serving.
#[test]
fn an_oversized_body_is_refused_by_name() {
    use std::io::{Read, Write};
    let endpoint = metaforge::llm::Endpoint::bind("127.0.0.1:0").unwrap();
    let addr = endpoint.local_addr();
    let url = format!("http://{addr}/v1");
    std::thread::spawn(move || endpoint.run(Arc::new(EchoAfter5ms), 16));
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        17 << 20
    )
    .unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    while !text.ends_with('}') {
        let n = stream
            .read(&mut buf)
            .expect("the refusal arrives before any body is sent");
        if n == 0 {
            break;
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(
        text.contains("limit") && text.contains(&(16usize << 20).to_string()),
        "{text}"
    );
    let backend = OpenAiBackend::new(&url, "echo", None, Duration::from_secs(10), 1);
    assert_eq!(
        backend.complete(&user_request("still here")).unwrap().text,
        "still here"
    );
}

/// A URL that cannot be a URL fails at once as fatal (a retry fails the same way), and a
/// reply without `usage` is charged an estimate, so a token budget binds on such endpoints.
/// The endpoint here is a one-reply HTTP server on 127.0.0.1 that leaves `usage` out.
#[test]
fn a_malformed_url_is_not_retried_and_a_reply_without_usage_is_charged() {
    let bad = OpenAiBackend::new("http://exa mple/v1", "m", None, Duration::from_secs(5), 1);
    match bad.complete(&user_request("hi")) {
        Err(LlmError::Fatal(msg)) => assert!(msg.contains("fix: check models.*.base_url"), "{msg}"),
        other => panic!("expected a fatal error, got {other:?}"),
    }

    let (addr, server) = canned_server(vec![(
        "200 OK",
        "",
        r#"{"choices": [{"message": {"role": "assistant", "content": "forty-two!"}}]}"#,
    )]);
    let backend = OpenAiBackend::new(&format!("http://{addr}/v1"), "m", None, Duration::from_secs(10), 1);
    let c = backend.complete(&user_request("twelve chars")).unwrap();
    server.join().unwrap();
    assert_eq!(c.text, "forty-two!");
    assert_eq!(
        (c.prompt_tokens, c.completion_tokens),
        (3, 3),
        "a token per 4 characters, rounded up"
    );
}

/// An HTTP server on 127.0.0.1 that answers one request per connection with the next of
/// `replies` (status line, extra headers, body), then stops.
fn canned_server(
    replies: Vec<(&'static str, &'static str, &'static str)>,
) -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        for (status, headers, body) in replies {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // The headers, then the JSON body (its length is in Content-Length).
            loop {
                let n = conn.read(&mut buf).unwrap();
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request);
                if let Some(end) = text.find("\r\n\r\n") {
                    let length: usize = text
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        break;
                    }
                }
            }
            write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
        }
    });
    (addr, server)
}

/// A 429 with `Retry-After` is waited out as the endpoint asked, then retried.
#[test]
fn a_throttled_call_waits_as_long_as_the_endpoint_asks() {
    let slow = (
        "429 Too Many Requests",
        "Retry-After: 1\r\n",
        r#"{"error": {"message": "slow down"}}"#,
    );
    // The backend alone, then the gateway's first attempt, are throttled; its retry is answered.
    let (addr, server) = canned_server(vec![
        slow,
        slow,
        (
            "200 OK",
            "",
            r#"{"choices": [{"message": {"content": "ok"}}], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}"#,
        ),
    ]);
    let cfg = model_cfg(&format!("http://{addr}/v1"));
    let backend = Arc::new(OpenAiBackend::from_config(&cfg, "agent").unwrap());
    assert!(matches!(
        backend.complete(&user_request("x")),
        Err(LlmError::Throttled { retry_after, .. }) if retry_after == Duration::from_secs(1)
    ));
    let gw = Gateway::new(Role::Agent, backend, &cfg, None, Arc::new(Budget::unlimited()));
    let started = std::time::Instant::now();
    let reply = gw.complete(&user_request("x")).unwrap();
    server.join().unwrap();
    assert_eq!(reply.text, "ok");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited {:?}",
        started.elapsed()
    );
}

/// A gateway on the `openai` backend rides out every fault of a faulty endpoint (5xx, 429
/// with Retry-After, a body that is not JSON, a hang, a body cut midway, no usage): each
/// call ends with the model's own answer, and every kind of fault was met on the way.
#[test]
fn every_call_rides_out_the_faults_of_a_faulty_endpoint() {
    use common::faulty_endpoint::{Fault, FaultyEndpoint};
    let endpoint = FaultyEndpoint::start(
        7,
        0.5,
        &Fault::ALL,
        vec![("echo", Arc::new(EchoAfter5ms) as Arc<dyn Backend>)],
    );
    let gateway = Arc::new(common::gateway_from(&format!(
        "backend = \"openai\"\nmodel = \"echo\"\nbase_url = {:?}\ntimeout_s = 1\nmax_retries = 20\nmax_concurrency = 8",
        endpoint.url
    )));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let gateway = gateway.clone();
            std::thread::spawn(move || {
                for i in 0..6 {
                    let text = format!("worker {w} call {i}");
                    let req = gateway.request(vec![Message::new("user", &text)], CallParams::default(), 0);
                    let reply = gateway.complete(&req).unwrap_or_else(|e| panic!("{text}: {e}"));
                    assert_eq!(reply.text, text);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    let tally = endpoint.tally();
    for fault in Fault::ALL {
        assert!(
            tally.faults.get(&fault).copied().unwrap_or(0) > 0,
            "{fault:?} never happened: {tally:?}"
        );
    }
}

/// No retry starts once a call has taken `call_deadline_s`, however many retries are left:
/// an endpoint that answers 503 forever costs seconds, and the error says why it stopped.
#[test]
fn retries_stop_at_the_call_deadline() {
    use common::faulty_endpoint::{Fault, FaultyEndpoint};
    let endpoint = FaultyEndpoint::start(
        1,
        1.0,
        &[Fault::ServerError],
        vec![("echo", Arc::new(EchoAfter5ms) as Arc<dyn Backend>)],
    );
    let gateway = common::gateway_from(&format!(
        "backend = \"openai\"\nmodel = \"echo\"\nbase_url = {:?}\nmax_retries = 1000\ncall_deadline_s = 2",
        endpoint.url
    ));
    let req = gateway.request(vec![Message::new("user", "hello")], CallParams::default(), 0);
    let err = gateway.complete(&req).unwrap_err().to_string();
    assert!(
        err.contains("HTTP 503") && err.contains("call_deadline_s is 2 s") && err.contains("gave up after"),
        "{err}"
    );
    let attempts = endpoint.tally().faults[&Fault::ServerError];
    assert!((2..1000).contains(&attempts), "{attempts} attempts");
}

fn constrained(gw: &Gateway, prompt: &str, choices: &[&str]) -> Result<String, LlmError> {
    let params = CallParams {
        choices: choices.iter().map(|c| c.to_string()).collect(),
        ..CallParams::default()
    };
    gw.complete(&gw.request(vec![Message::new("user", prompt)], params, 0))
        .map(|r| r.text)
}

/// `choices` on an endpoint with structured output (`metaforge serve`, like OpenAI, vLLM or
/// llama.cpp's server): the choices travel as a JSON-schema `enum`, and every reply is one.
#[test]
fn choices_ride_the_endpoints_structured_output() {
    let (_server, url) = start_server(48);
    let cfg = model_cfg(&url);
    let backend = Arc::new(OpenAiBackend::from_config(&cfg, "agent").unwrap());
    let gw = Gateway::new(Role::Agent, backend.clone(), &cfg, None, Arc::new(Budget::unlimited()));
    let labels = ["positive", "negative"];
    for review in [
        "I loved it: wonderful acting.",
        "Dull, and far too long.",
        "What is 2 plus 2?",
    ] {
        let reply = constrained(&gw, &format!("Is this review positive or negative?\n{review}"), &labels).unwrap();
        assert!(labels.contains(&reply.as_str()), "{reply:?}");
    }
    let letters = ["A", "B", "C", "D"];
    let reply = constrained(&gw, "Which is a fruit? A) stone B) apple C) chair D) cloud", &letters).unwrap();
    assert!(letters.contains(&reply.as_str()), "{reply:?}");
    assert_eq!(backend.choices_enforced_by(), "structured output");
}

/// An endpoint without structured output refuses the schema (a 400): the backend asks for a
/// free reply with the choices listed, reads the choice it names, and asks again when it
/// names none; a reply that never names one fails the call by name.
#[test]
fn without_structured_output_a_reply_is_read_as_a_choice_and_asked_again() {
    let reply = |content: &'static str| -> &'static str {
        Box::leak(
            format!(r#"{{"choices":[{{"message":{{"content":{content:?}}}}}],"usage":{{"prompt_tokens":5,"completion_tokens":5}}}}"#)
                .into_boxed_str(),
        )
    };
    let refused = (
        "400 Bad Request",
        "",
        r#"{"error":{"message":"response_format json_schema is not supported"}}"#,
    );
    let (addr, server) = canned_server(vec![
        refused,
        ("200 OK", "", reply("Hard to say; it rambles.")),
        ("200 OK", "", reply("I would call it Negative.")),
    ]);
    let cfg = model_cfg(&format!("http://{addr}/v1"));
    let backend = Arc::new(OpenAiBackend::from_config(&cfg, "agent").unwrap());
    let gw = Gateway::new(Role::Agent, backend.clone(), &cfg, None, Arc::new(Budget::unlimited()));
    assert_eq!(
        constrained(&gw, "Review: dull.", &["positive", "negative"]).unwrap(),
        "negative"
    );
    assert_eq!(backend.choices_enforced_by(), "matched replies");
    server.join().unwrap();

    // Replies that never name a choice fail the call, by name.
    let (addr, server) = canned_server(vec![("200 OK", "", reply("hmm")); 4]);
    let backend = OpenAiBackend::new(&format!("http://{addr}/v1"), "x", None, Duration::from_secs(30), 4);
    let gw = Gateway::new(
        Role::Agent,
        Arc::new(backend),
        &cfg,
        None,
        Arc::new(Budget::unlimited()),
    );
    // A fresh backend tries the schema first: the endpoint ignores it and answers "hmm",
    // outside the schema; then three free replies name nothing either.
    match constrained(&gw, "Review: dull.", &["positive", "negative"]) {
        Err(LlmError::Fatal(e)) => assert!(e.contains("named none of the choices") && e.contains("hmm"), "{e}"),
        other => panic!("expected the call to fail by name, got {other:?}"),
    }
    server.join().unwrap();
}
