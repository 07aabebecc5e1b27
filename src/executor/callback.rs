//! The callback connection: a node's `metaforge shard` asks the driver for every model call
//! (and every episode play) of its worker over one TCP connection of JSON lines, and the
//! driver answers with the same handler a local worker would have used.
//!
//! A connection opens with the run's token and the shard's name. Each connection is one
//! attempt at the shard: when Ray reruns a shard (its worker or node died), the new attempt's
//! connection supersedes the old one, which is shut down before the handler forgets the old
//! attempt's state, so no answer reaches two attempts and no state mixes them.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use crossbeam_channel::Sender;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::llm::Usage;
use crate::sandbox::{LlmCall, LlmHandler};

/// Node → driver.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum NodeMessage {
    Hello {
        token: String,
        shard: String,
    },
    Call {
        id: u64,
        task_id: Option<String>,
        call: LlmCall,
    },
    Episode {
        id: u64,
        episode: String,
        memory: Option<String>,
    },
    TaskDone,
}

/// Driver → node.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum DriverMessage {
    Welcome,
    Refused { reason: String },
    Reply { id: u64, values: Vec<Value>, usage: Usage },
    Failed { id: u64, message: String, contract: bool },
    Played { id: u64, result: Value, usage: Usage },
}

/// What happens to a submitted shard, in the order the driver learns it.
pub(crate) enum ShardEvent {
    /// A node opened a connection for it: a new attempt.
    Attempt(TcpStream),
    /// Ray returned: the node's output (a `WorkerRun` as JSON) or why the task failed.
    Finished(Result<String, String>),
}

/// Shards in flight, by name: where the listener and the bridge deliver their events.
pub(crate) type Registry = Arc<Mutex<HashMap<String, Sender<ShardEvent>>>>;

/// Writes one JSON line; a failure means the peer is gone, which the reader notices.
pub(crate) fn send<T: Serialize>(stream: &Mutex<TcpStream>, msg: &T) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(msg).expect("messages serialise");
    line.push(b'\n');
    stream.lock().unwrap().write_all(&line)
}

/// Accepts nodes' connections on `addr` (port 0: any free port) and hands each authenticated
/// one to its shard. Returns the address nodes must dial.
pub(crate) fn listen(addr: &str, token: String, registry: Registry) -> Result<SocketAddr> {
    let listener = TcpListener::bind(addr).with_context(|| {
        format!("cannot listen for the nodes' model calls on {addr}; fix: set executor.callback_host to an address of this machine that the nodes reach (and executor.callback_port to a free port)")
    })?;
    let local = listener.local_addr()?;
    std::thread::Builder::new().name("ray-callback".into()).spawn(move || {
        // Admitted one at a time, on this thread: nothing is spent on a connection (no
        // thread, no more than a short line of memory) before its token is checked.
        for stream in listener.incoming().flatten() {
            admit(stream, &token, &registry);
        }
    })?;
    Ok(local)
}

/// How long a connection may take to say hello, and how long the hello may be: a node sends
/// it at once, and it holds a token and a shard name.
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);
const HELLO_MAX_BYTES: u64 = 4096;

/// Reads a connection's hello; an attempt of a shard in flight is handed over, anything else
/// is told why and closed.
fn admit(stream: TcpStream, token: &str, registry: &Registry) {
    use std::io::Read;
    use subtle::ConstantTimeEq;
    let _ = stream.set_read_timeout(Some(HELLO_TIMEOUT));
    let Ok(read_half) = stream.try_clone() else { return };
    let mut line = String::new();
    if BufReader::new(read_half.take(HELLO_MAX_BYTES))
        .read_line(&mut line)
        .is_err()
    {
        return;
    }
    let writer = Mutex::new(stream);
    let refuse = |reason: &str| {
        let _ = send(&writer, &DriverMessage::Refused { reason: reason.into() });
    };
    let (given, shard) = match serde_json::from_str(&line) {
        Ok(NodeMessage::Hello { token, shard }) => (token, shard),
        _ => return refuse("expected a hello"),
    };
    // In constant time: how long the comparison takes says nothing of how much of a guess
    // was right.
    if !bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
        return refuse("wrong run token");
    }
    let Some(events) = registry.lock().unwrap().get(&shard).cloned() else {
        return refuse("no such shard in flight (it finished, or belongs to another run)");
    };
    if send(&writer, &DriverMessage::Welcome).is_err() {
        return;
    }
    let stream = writer.into_inner().unwrap();
    let _ = stream.set_read_timeout(None);
    let _ = events.send(ShardEvent::Attempt(stream));
}

/// Answers one attempt's requests with `handler` until the node closes the connection (or the
/// driver shuts it down to supersede the attempt); returns after every answer is written.
pub(crate) fn serve_attempt(stream: TcpStream, handler: &dyn LlmHandler) {
    let Ok(read_half) = stream.try_clone() else { return };
    let writer = Mutex::new(stream);
    let writer = &writer;
    std::thread::scope(|scope| {
        for line in BufReader::new(read_half).lines() {
            let Ok(line) = line else { break };
            let msg = match serde_json::from_str::<NodeMessage>(&line) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(%e, "malformed message on a shard's callback connection; closing it");
                    break;
                }
            };
            match msg {
                NodeMessage::Call { id, task_id, call } => {
                    scope.spawn(move || {
                        // The node checked the call already; the driver does not rely on it.
                        let reply = call
                            .validate()
                            .map_err(|e| crate::sandbox::CallError::model(format!("request refused by the host: {e}")))
                            .and_then(|()| handler.handle_call(task_id.as_deref(), &call));
                        let msg = match reply {
                            Ok((values, usage)) => DriverMessage::Reply { id, values, usage },
                            Err(e) => DriverMessage::Failed {
                                id,
                                message: e.message,
                                contract: e.contract,
                            },
                        };
                        let _ = send(writer, &msg);
                    });
                }
                NodeMessage::Episode { id, episode, memory } => {
                    scope.spawn(move || {
                        let msg = match handler.play_episode(&episode, memory.as_deref()) {
                            Ok((result, usage)) => DriverMessage::Played { id, result, usage },
                            Err(message) => DriverMessage::Failed {
                                id,
                                message,
                                contract: false,
                            },
                        };
                        let _ = send(writer, &msg);
                    });
                }
                NodeMessage::TaskDone => handler.task_finished(),
                NodeMessage::Hello { .. } => break,
            }
        }
    });
}
