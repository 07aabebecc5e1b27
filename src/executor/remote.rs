//! The node side of a remote shard (`metaforge shard`, started by a Ray task): read the shard
//! on stdin, run the sandboxed worker exactly as a local shard would, answer its model calls
//! by asking the driver over the callback connection, and print the worker's result on stdout.
//!
//! The node holds no key and no model: a worker's `llm()` goes worker → pipe → this process →
//! callback connection → the driver's gateway. If the driver's connection is lost the shard
//! fails (non-zero exit) instead of returning tasks that failed for want of a model.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use crossbeam_channel::{bounded, Sender};
use serde_json::Value;

use super::callback::{send, DriverMessage, NodeMessage};
use super::ShardRequest;
use crate::llm::Usage;
use crate::sandbox::{run_worker, CallError, LlmCall, LlmHandler};

/// Makes this process die with the one that started it (the Ray worker): a killed worker
/// must not leave its shard running, and calling the driver, beside the rerun.
pub fn die_with_parent() -> Result<()> {
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
    if nix::unistd::getppid() == nix::unistd::Pid::from_raw(1) {
        bail!("the process that started this shard is gone");
    }
    Ok(())
}

/// Runs the shard read from `input` and writes its `WorkerRun` (JSON) to `output`.
pub fn serve_shard(input: impl Read, output: impl Write) -> Result<()> {
    let req: ShardRequest = serde_json::from_reader(input).context("the shard request on stdin is not valid")?;
    let limits = req.limits.worker_limits()?;
    let calls = RemoteCalls::connect(&req, limits.deadline)?;
    let run = run_worker(&req.code, &req.inputs, &calls, &limits)?;
    if calls.lost.load(Ordering::SeqCst) {
        bail!(
            "lost the callback connection to the driver ({}) during the shard",
            req.callback
        );
    }
    calls.close();
    serde_json::to_writer(output, &run)?;
    Ok(())
}

/// Forwards a worker's requests to the driver and routes the answers back by id.
struct RemoteCalls {
    writer: Mutex<TcpStream>,
    pending: std::sync::Arc<Mutex<HashMap<u64, Sender<DriverMessage>>>>,
    next: AtomicU64,
    lost: std::sync::Arc<AtomicBool>,
    wait: Duration,
}

impl RemoteCalls {
    fn connect(req: &ShardRequest, wait: Duration) -> Result<Self> {
        let addr = req
            .callback
            .to_socket_addrs()
            .with_context(|| format!("bad callback address {:?}", req.callback))?
            .next()
            .with_context(|| format!("callback address {:?} resolves to nothing", req.callback))?;
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(20)).with_context(|| {
            format!("cannot reach the driver at {addr}; fix: set executor.callback_host to an address of the driver that the nodes reach, and let its callback_port through the firewall")
        })?;
        let _ = stream.set_nodelay(true);
        let writer = Mutex::new(stream.try_clone()?);
        send(
            &writer,
            &NodeMessage::Hello {
                token: req.token.clone(),
                shard: req.shard.clone(),
            },
        )?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        match serde_json::from_str::<DriverMessage>(&line) {
            Ok(DriverMessage::Welcome) => {}
            Ok(DriverMessage::Refused { reason }) => bail!("the driver refused this shard: {reason}"),
            _ => bail!("the driver did not answer the hello (got {:?})", line.trim()),
        }
        let pending: std::sync::Arc<Mutex<HashMap<u64, Sender<DriverMessage>>>> = Default::default();
        let lost = std::sync::Arc::new(AtomicBool::new(false));
        let (p, l) = (pending.clone(), lost.clone());
        std::thread::spawn(move || {
            for line in reader.lines() {
                let Ok(line) = line else { break };
                let msg = match serde_json::from_str::<DriverMessage>(&line) {
                    Ok(msg) => msg,
                    Err(e) => {
                        eprintln!(
                            "metaforge shard: the driver sent a malformed message ({e}): {}",
                            crate::sandbox::tail(&line, 200)
                        );
                        break;
                    }
                };
                let id = match &msg {
                    DriverMessage::Reply { id, .. }
                    | DriverMessage::Failed { id, .. }
                    | DriverMessage::Played { id, .. } => *id,
                    _ => continue,
                };
                if let Some(tx) = p.lock().unwrap().remove(&id) {
                    let _ = tx.send(msg);
                }
            }
            // The driver closed or the network broke: every waiting call fails now.
            l.store(true, Ordering::SeqCst);
            p.lock().unwrap().clear();
        });
        Ok(Self {
            writer,
            pending,
            next: AtomicU64::new(0),
            lost,
            wait,
        })
    }

    fn ask(&self, msg: impl FnOnce(u64) -> NodeMessage) -> Result<DriverMessage, String> {
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = bounded(1);
        self.pending.lock().unwrap().insert(id, tx);
        if self.lost.load(Ordering::SeqCst) || send(&self.writer, &msg(id)).is_err() {
            self.pending.lock().unwrap().remove(&id);
            self.lost.store(true, Ordering::SeqCst);
            return Err("the driver's model gateway is unreachable".into());
        }
        rx.recv_timeout(self.wait).map_err(|_| {
            self.lost.store(true, Ordering::SeqCst);
            "no answer from the driver's model gateway".to_string()
        })
    }

    /// Ends the connection cleanly: the driver reads end-of-file after the last message.
    fn close(&self) {
        let _ = self.writer.lock().unwrap().shutdown(std::net::Shutdown::Write);
    }
}

impl LlmHandler for RemoteCalls {
    fn handle(&self, task_id: Option<&str>, call: &LlmCall) -> Result<(Vec<String>, Usage), String> {
        let (values, usage) = self.handle_call(task_id, call).map_err(|e| e.message)?;
        Ok((
            values
                .into_iter()
                .map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))
                .collect(),
            usage,
        ))
    }

    fn handle_call(&self, task_id: Option<&str>, call: &LlmCall) -> Result<(Vec<Value>, Usage), CallError> {
        let reply = self.ask(|id| NodeMessage::Call {
            id,
            task_id: task_id.map(str::to_string),
            call: call.clone(),
        });
        match reply {
            Ok(DriverMessage::Reply { values, usage, .. }) => Ok((values, usage)),
            Ok(DriverMessage::Failed { message, contract, .. }) => Err(CallError { message, contract }),
            Ok(other) => Err(CallError::model(format!(
                "unexpected answer from the driver: {other:?}"
            ))),
            Err(e) => Err(CallError::model(e)),
        }
    }

    fn play_episode(&self, episode: &str, memory: Option<&str>) -> Result<(Value, Usage), String> {
        let reply = self.ask(|id| NodeMessage::Episode {
            id,
            episode: episode.to_string(),
            memory: memory.map(str::to_string),
        })?;
        match reply {
            DriverMessage::Played { result, usage, .. } => Ok((result, usage)),
            DriverMessage::Failed { message, .. } => Err(message),
            other => Err(format!("unexpected answer from the driver: {other:?}")),
        }
    }

    fn task_finished(&self) {
        let _ = send(&self.writer, &NodeMessage::TaskDone);
    }
}
