//! `export-bundle` / `import-bundle`: one file that carries a run to another machine.
//!
//! Why a compacted SQLite snapshot is the bundle: the archive already holds the whole state
//! (config, stored run files, candidates, evaluations, model-call cache); what a plain copy
//! of `run.db` lacks is consistency while the run is live (the `-wal` file holds the newest
//! steps) and a check on arrival. `VACUUM INTO` writes a consistent, compact, single-file
//! snapshot even while the run is writing; import verifies integrity and schema before the
//! file is put in place, so a truncated transfer is refused instead of resumed.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use super::{Archive, SCHEMA_VERSION};
use crate::types::BadInput;

#[derive(Debug, Serialize)]
pub struct BundleSummary {
    pub run: String,
    pub bytes: u64,
    pub candidates: u64,
    pub evaluations: u64,
    pub stored_files: u64,
    /// Config paths the archive does not carry (runs made before files were stored):
    /// the receiving machine needs them at the same place. Empty here: the archive does not
    /// read configs, the caller fills it (`app::bundle`).
    pub outside_paths: Vec<String>,
}

fn refuse_existing(out: &Path) -> Result<()> {
    if out.exists() {
        return Err(BadInput::wrap(anyhow!(
            "{} already exists; fix: choose another -o file (nothing is overwritten)",
            out.display()
        )));
    }
    Ok(())
}

fn summarise(conn: &Connection, path: &Path) -> Result<BundleSummary> {
    let count = |sql: &str| -> Result<u64> { Ok(conn.query_row(sql, [], |r| r.get::<_, i64>(0))? as u64) };
    let run: String = conn.query_row(
        "SELECT name FROM runs WHERE merged_at IS NULL ORDER BY id LIMIT 1",
        [],
        |r| r.get(0),
    )?;
    let stored_files = count("SELECT count(*) FROM run_files")?;
    Ok(BundleSummary {
        run,
        bytes: std::fs::metadata(path)?.len(),
        candidates: count("SELECT count(*) FROM candidates")?,
        evaluations: count("SELECT count(*) FROM evaluations")?,
        stored_files,
        outside_paths: Vec::new(),
    })
}

/// Writes a consistent single-file snapshot of the run in `db` to `out`.
pub fn export(db: &Path, out: &Path) -> Result<BundleSummary> {
    refuse_existing(out)?;
    let archive = Archive::open_existing(db)?;
    archive
        .connection()
        .execute("VACUUM INTO ?1", [out.to_string_lossy()])
        .with_context(|| format!("cannot write the bundle {}", out.display()))?;
    let conn = Connection::open_with_flags(out, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    summarise(&conn, out)
}

/// Checks `bundle` (SQLite, intact, a schema this metaforge reads, holding a run) and copies
/// it to `out`, ready for `status` and `resume`.
pub fn import(bundle: &Path, out: &Path) -> Result<BundleSummary> {
    refuse_existing(out)?;
    let not_a_bundle = |why: String| {
        BadInput::wrap(anyhow!(
            "{} is not a usable metaforge bundle: {why}; fix: export it again with `metaforge export-bundle` and copy it whole",
            bundle.display()
        ))
    };
    let conn = Connection::open_with_flags(bundle, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("cannot open {}", bundle.display()))?;
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| not_a_bundle(e.to_string()))?;
    if integrity != "ok" {
        return Err(not_a_bundle(format!("integrity check says {integrity:?}")));
    }
    let version: i32 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version == 0 {
        return Err(not_a_bundle("it holds no metaforge archive".into()));
    }
    if version > SCHEMA_VERSION {
        return Err(BadInput::wrap(anyhow!(
            "{} has archive schema {version}, newer than this metaforge ({SCHEMA_VERSION}); fix: upgrade metaforge",
            bundle.display()
        )));
    }
    drop(conn);
    std::fs::copy(bundle, out).with_context(|| format!("cannot write {}", out.display()))?;
    // Opening brings an older schema up to date in the copy, never in the bundle.
    let archive = Archive::open_existing(out)?;
    summarise(archive.connection(), out)
}
