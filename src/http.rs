//! The one HTTP server loop the project runs (the `serve` endpoint, the `ui` dashboard):
//! HTTP/1.1 with hyper on a small tokio runtime, each connection its own task. A leaf: it
//! imports nothing of the crate.
//!
//! Why hyper on tokio and not a thread-pool server: such a pool can lose the wake-up of a
//! connection that arrives together with another, and a kept-alive connection then holds its
//! thread for good (`benches/endpoint_saturation.rs` showed requests sitting unread).

use std::convert::Infallible;
use std::future::Future;

use anyhow::{Context, Result};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};

/// A response whose whole body is in memory.
pub type Reply = Response<Full<Bytes>>;

/// Serves `listener` on the calling thread until the process ends, answering every request
/// with `answer` (which may block only through `tokio::task::spawn_blocking`).
pub fn serve_forever<F, Fut>(listener: std::net::TcpListener, thread_name: &str, answer: F) -> Result<()>
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Reply, Infallible>> + Send + 'static,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(thread_name)
        .enable_io()
        .enable_time()
        .build()
        .with_context(|| format!("cannot start the {thread_name} runtime"))?;
    runtime.block_on(async move {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors and the like: the next accept may succeed.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let answer = answer.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(answer);
                let io = hyper_util::rt::TokioIo::new(stream);
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await
                {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            });
        }
    })
}
