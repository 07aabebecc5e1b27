//! The call cache lives in the archive (`llm_calls`), so a rerun or a resume on another
//! machine replays every model call for free and exactly.

use std::path::Path;
use std::sync::Mutex;

use anyhow::Result;
use rusqlite::{params, Connection, OptionalExtension};

use super::{ChatRequest, Reply, Role};

pub struct CallCache {
    conn: Mutex<Connection>,
}

pub struct CachedCall {
    pub text: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl CallCache {
    /// Opens the cache table of an archive file (its own connection; WAL lets it write while
    /// the loop's connection reads).
    pub fn open(archive: &Path) -> Result<Self> {
        let conn = crate::archive::open_connection(archive)?;
        Ok(Self { conn: Mutex::new(conn) })
    }

    pub fn in_memory() -> Result<Self> {
        let conn = Connection::open_in_memory()?;
        crate::archive::migrate(&conn)?;
        Ok(Self { conn: Mutex::new(conn) })
    }

    pub fn get(&self, key: &str) -> Option<CachedCall> {
        let conn = self.conn.lock().unwrap();
        // Cached statements: one of each per call, parsing the SQL each time showed.
        conn.prepare_cached("SELECT response, prompt_tokens, completion_tokens FROM llm_calls WHERE key = ?1")
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

    pub fn put(&self, key: &str, role: Role, model: &str, req: &ChatRequest, reply: &Reply) {
        let conn = self.conn.lock().unwrap();
        let request = serde_json::to_string(req).unwrap_or_default();
        let inserted = conn.prepare_cached(
            "INSERT OR IGNORE INTO llm_calls(key, role, model, request, response, prompt_tokens, completion_tokens, latency_ms, cost_usd, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, datetime('now'))",
        ).and_then(|mut stmt| stmt.execute(
            params![key, role.as_str(), model, request, reply.text, reply.prompt_tokens as i64, reply.completion_tokens as i64, reply.latency_ms, reply.cost_usd],
        ));
        if let Err(e) = inserted {
            tracing::warn!(%e, "call cache write failed; the call will be repeated on replay");
        }
    }

    pub fn len(&self) -> usize {
        let conn = self.conn.lock().unwrap();
        conn.query_row("SELECT count(*) FROM llm_calls", [], |r| r.get::<_, i64>(0))
            .unwrap_or(0) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
