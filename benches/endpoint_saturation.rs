//! Endpoint saturation: `cargo bench --bench endpoint_saturation`.
//!
//! `metaforge serve`'s endpoint (`llm::Endpoint`, in this process) answers every chat
//! completion after a fixed 50 ms from a backend that counts the requests in flight. 64
//! client threads — as many candidate tasks calling `llm()` at once — send 480 distinct
//! requests through the real gateway and `openai` backend configured with
//! `max_concurrency = 8`. Sampling the in-flight count every millisecond while the run is
//! busy gives how well the configured concurrency is used (target ≥ 95%), and the gateway
//! must never exceed it. The connections the client opened are counted too: with one kept
//! alive per call in flight there are 8, not one per call.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metaforge::llm::{
    Backend, Budget, CallParams, ChatRequest, Completion, Endpoint, Gateway, LlmError, Message, OpenAiBackend, Role,
};

const LATENCY: Duration = Duration::from_millis(50);
const CONCURRENCY: usize = 8;
const REQUESTS: usize = 480;
const CLIENTS: usize = 64;

/// A model that takes `LATENCY` per call and counts the calls it is serving.
struct FixedLatency {
    in_flight: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl Backend for FixedLatency {
    fn model_id(&self) -> String {
        "fixed-latency".into()
    }
    fn complete(&self, _request: &ChatRequest) -> Result<Completion, LlmError> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(LATENCY);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        Ok(Completion {
            text: "7".into(),
            prompt_tokens: 10,
            completion_tokens: 1,
        })
    }
}

/// Connections to `port` this process holds open now (client side), from /proc/net/tcp.
fn client_connections(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let remote = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.len() > 3 && cols[2].ends_with(&remote) && cols[3] == "01"
        })
        .count()
}

fn main() {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let endpoint = Endpoint::bind("127.0.0.1:0").unwrap();
    let port = endpoint.local_addr().port();
    let model = Arc::new(FixedLatency {
        in_flight: in_flight.clone(),
        peak: peak.clone(),
    });
    std::thread::spawn(move || endpoint.run(model, 16));
    let cfg: metaforge::config::ModelConfig = toml::from_str(&format!(
        "backend = \"openai\"\nmodel = \"fixed-latency\"\nbase_url = \"http://127.0.0.1:{port}/v1\"\nmax_concurrency = {CONCURRENCY}\nmax_tokens = 4"
    ))
    .unwrap();
    let backend = Arc::new(OpenAiBackend::from_config(&cfg, "agent").unwrap());
    let gateway = Arc::new(Gateway::new(
        Role::Agent,
        backend,
        &cfg,
        None,
        Arc::new(Budget::unlimited()),
    ));

    let busy = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (in_flight, busy) = (in_flight.clone(), busy.clone());
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while busy.load(Ordering::SeqCst) {
                samples.push(in_flight.load(Ordering::SeqCst));
                std::thread::sleep(Duration::from_millis(1));
            }
            samples
        })
    };
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (gateway, next) = (gateway.clone(), next.clone());
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= REQUESTS {
                    break;
                }
                let req = gateway.request(
                    vec![Message::new("user", format!("question {i}"))],
                    CallParams::default(),
                    0,
                );
                gateway.complete(&req).unwrap();
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let wall = start.elapsed();
    let connections = client_connections(port);
    busy.store(false, Ordering::SeqCst);
    let samples = sampler.join().unwrap();
    // The busy period: from the first sample with a request in flight to the last.
    let first = samples.iter().position(|&n| n > 0).unwrap_or(0);
    let last = samples
        .iter()
        .rposition(|&n| n > 0)
        .unwrap_or(samples.len().saturating_sub(1));
    let busy_samples = &samples[first..=last];
    let mean = busy_samples.iter().sum::<usize>() as f64 / busy_samples.len().max(1) as f64;
    let ideal = REQUESTS as f64 * LATENCY.as_secs_f64() / CONCURRENCY as f64;
    println!(
        "{REQUESTS} requests, {CLIENTS} callers, server latency {} ms, max_concurrency {CONCURRENCY}: wall {:.2} s (ideal {:.2} s, {:.0}%)",
        LATENCY.as_millis(),
        wall.as_secs_f64(),
        ideal,
        100.0 * ideal / wall.as_secs_f64()
    );
    println!(
        "in flight while busy: mean {mean:.2} of {CONCURRENCY} ({:.1}% saturation), peak {} (never above the limit: {})",
        100.0 * mean / CONCURRENCY as f64,
        peak.load(Ordering::SeqCst),
        peak.load(Ordering::SeqCst) <= CONCURRENCY
    );
    println!("connections the client holds open at the end: {connections} (one kept alive per call in flight)");
}
