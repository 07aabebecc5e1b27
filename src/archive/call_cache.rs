//! The call cache lives in the archive (`llm_calls`), so a rerun or a resume on another
//! machine replays every model call for free and exactly.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use rusqlite::{params, Connection, OptionalExtension};

use super::{migrate, open_connection};
use crate::llm::{CachedCall, CallStore, ChatRequest};
use crate::types::{Reply, Role};

/// How long answered calls may wait in memory for the next write. Why not one autocommit
/// INSERT per call: with a fast model that write was a visible part of every call (each
/// commit appends whole pages to the WAL), and a burst of calls commits as one
/// transaction instead. Why not longer: a kill -9 loses what waits, and a lost call is paid
/// again on resume; a call arriving after a quiet spell is written at once.
const WRITE_BEHIND: Duration = Duration::from_millis(50);

/// Past this many waiting calls, they are written whatever their age.
const MAX_PENDING: usize = 256;

pub struct CallCache {
    state: Mutex<State>,
}

/// Every cache opened with `open_shared`, so a stop that cannot wait for the loop's next
/// safe point still writes the calls already paid for (`flush_open_call_caches`).
static OPEN: Mutex<Vec<std::sync::Weak<CallCache>>> = Mutex::new(Vec::new());

/// Writes what every open cache holds in memory. For a process about to exit at once.
pub fn flush_open_call_caches() {
    let open: Vec<_> = OPEN
        .lock()
        .map(|o| o.iter().filter_map(std::sync::Weak::upgrade).collect())
        .unwrap_or_default();
    for cache in open {
        CallStore::flush(&*cache);
    }
}

struct State {
    conn: Connection,
    /// Answered calls not yet written, by key: `get` serves them like stored ones.
    pending: HashMap<String, PendingCall>,
    last_write: Instant,
}

struct PendingCall {
    role: Role,
    model: String,
    request: String,
    reply: Reply,
}

impl CallCache {
    /// Opens the cache table of an archive file (its own connection; WAL lets it write while
    /// the loop's connection reads).
    pub fn open(archive: &Path) -> Result<Self> {
        Ok(Self::with_connection(open_connection(archive)?))
    }

    /// `open`, shared, and known to `flush_open_call_caches`.
    pub fn open_shared(archive: &Path) -> Result<std::sync::Arc<Self>> {
        let cache = std::sync::Arc::new(Self::open(archive)?);
        if let Ok(mut open) = OPEN.lock() {
            open.retain(|w| w.strong_count() > 0);
            open.push(std::sync::Arc::downgrade(&cache));
        }
        Ok(cache)
    }

    pub fn in_memory() -> Result<Self> {
        let conn = Connection::open_in_memory()?;
        migrate(&conn)?;
        Ok(Self::with_connection(conn))
    }

    fn with_connection(conn: Connection) -> Self {
        Self {
            state: Mutex::new(State {
                conn,
                pending: HashMap::new(),
                last_write: Instant::now() - WRITE_BEHIND,
            }),
        }
    }

    pub fn len(&self) -> usize {
        let mut state = self.state.lock().unwrap();
        state.write_pending();
        state
            .conn
            .query_row("SELECT count(*) FROM llm_calls", [], |r| r.get::<_, i64>(0))
            .unwrap_or(0) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl CallStore for CallCache {
    fn get(&self, key: &str) -> Option<CachedCall> {
        let state = self.state.lock().unwrap();
        if let Some(p) = state.pending.get(key) {
            return Some(CachedCall {
                text: p.reply.text.clone(),
                prompt_tokens: p.reply.prompt_tokens,
                completion_tokens: p.reply.completion_tokens,
            });
        }
        // Cached statements: one of each per call, parsing the SQL each time showed.
        state
            .conn
            .prepare_cached("SELECT response, prompt_tokens, completion_tokens FROM llm_calls WHERE key = ?1")
            .and_then(|mut stmt| {
                stmt.query_row([key], |r| {
                    Ok(CachedCall {
                        text: r.get(0)?,
                        prompt_tokens: r.get::<_, i64>(1)? as u64,
                        completion_tokens: r.get::<_, i64>(2)? as u64,
                    })
                })
            })
            .optional()
            .unwrap_or_else(|e| {
                tracing::warn!(%e, "call cache read failed; calling the model");
                None
            })
    }

    /// Records an answered call. It is written now if nothing was written for
    /// `WRITE_BEHIND`, else with the next write: a later call, `flush`, or drop.
    fn put(&self, key: &str, role: Role, model: &str, req: &ChatRequest, reply: &Reply) {
        let mut state = self.state.lock().unwrap();
        let request = serde_json::to_string(req).unwrap_or_default();
        state.pending.entry(key.to_string()).or_insert_with(|| PendingCall {
            role,
            model: model.to_string(),
            request,
            reply: reply.clone(),
        });
        if state.last_write.elapsed() >= WRITE_BEHIND || state.pending.len() >= MAX_PENDING {
            state.write_pending();
        }
    }

    /// Writes every waiting call (the search does at the end of each step, before the step
    /// is committed, so a committed step's calls are always stored).
    fn flush(&self) {
        self.state.lock().unwrap().write_pending();
    }
}

impl Drop for CallCache {
    fn drop(&mut self) {
        if let Ok(state) = self.state.get_mut() {
            state.write_pending();
        }
    }
}

impl State {
    /// One transaction for every waiting call. On failure they are let go, as an unwritten
    /// call always was: a replay pays for them again.
    fn write_pending(&mut self) {
        self.last_write = Instant::now();
        if self.pending.is_empty() {
            return;
        }
        let written = (|| -> rusqlite::Result<()> {
            let tx = self.conn.unchecked_transaction()?;
            {
                let mut stmt = tx.prepare_cached(
                    "INSERT OR IGNORE INTO llm_calls(key, role, model, request, response, prompt_tokens, completion_tokens, latency_ms, cost_usd, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, datetime('now'))",
                )?;
                for (key, p) in &self.pending {
                    let r = &p.reply;
                    stmt.execute(params![
                        key,
                        p.role.as_str(),
                        p.model,
                        p.request,
                        r.text,
                        r.prompt_tokens as i64,
                        r.completion_tokens as i64,
                        r.latency_ms,
                        r.cost_usd
                    ])?;
                }
            }
            tx.commit()
        })();
        if let Err(e) = written {
            tracing::warn!(%e, calls = self.pending.len(), "call cache write failed; these calls will be repeated on replay");
        }
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::ModelConfig;
    use crate::llm::{Budget, Gateway, ScriptedBackend};
    use crate::types::{CallParams, Message};

    fn cfg() -> ModelConfig {
        toml::from_str("backend = \"scripted\"\nmodel = \"s\"\nscript = \"x\"\nmax_tokens = 10").unwrap()
    }

    /// Rows of `llm_calls` as another process sees them: through its own connection.
    fn stored_calls(db: &std::path::Path) -> i64 {
        let conn = open_connection(db).unwrap();
        conn.query_row("SELECT count(*) FROM llm_calls", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn a_burst_of_calls_is_written_behind_and_served_while_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("run.db");
        open_connection(&db).unwrap();
        let cache = Arc::new(CallCache::open(&db).unwrap());
        let backend = Arc::new(ScriptedBackend::new("s", (0..5).map(|i| format!("r{i}")).collect()));
        let gw = Gateway::new(
            Role::Agent,
            backend.clone(),
            &cfg(),
            Some(cache.clone()),
            Arc::new(Budget::unlimited()),
        );
        let reqs: Vec<_> = (0..5)
            .map(|i| gw.request(vec![Message::new("user", "q")], CallParams::default(), i))
            .collect();
        for r in &reqs {
            gw.complete(r).unwrap();
        }
        // The first call of the burst is written at once, the rest wait for the next write.
        assert_eq!(stored_calls(&db), 1);
        for (i, r) in reqs.iter().enumerate() {
            let again = gw.complete(r).unwrap();
            assert!(again.cached, "call {i} not served from the cache while waiting");
            assert_eq!(again.text, format!("r{i}"));
        }
        assert_eq!(backend.calls(), 5, "no call sent twice");
        gw.flush_cache();
        assert_eq!(stored_calls(&db), 5);
        // A call after a quiet spell is written at once; one right after it waits, and is
        // written when the cache is dropped.
        std::thread::sleep(std::time::Duration::from_millis(60));
        let (a, b) = (
            gw.request(vec![Message::new("user", "a")], CallParams::default(), 0),
            gw.request(vec![Message::new("user", "b")], CallParams::default(), 0),
        );
        let backend2 = Arc::new(ScriptedBackend::new("s", vec!["x".into(), "y".into()]));
        let gw2 = Gateway::new(
            Role::Agent,
            backend2,
            &cfg(),
            Some(cache.clone()),
            Arc::new(Budget::unlimited()),
        );
        gw2.complete(&a).unwrap();
        assert_eq!(stored_calls(&db), 6);
        gw2.complete(&b).unwrap();
        assert_eq!(stored_calls(&db), 6);
        drop((gw, gw2, cache));
        assert_eq!(stored_calls(&db), 7);
    }
}
