//! The files an experiment names travel inside its archive.
//!
//! Why: a run must resume on another machine from its `.db` alone. A user
//! domain's JSONL or a scripted model's replies are read once at `run`, stored in the
//! `run_files` table, and the stored config keeps only their file names; opening a run writes
//! them to a private temporary folder and points the config there. Archives from before this
//! (absolute paths, no stored files) still open: their paths are used as they are.

use std::path::Path;

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::archive::{Archive, RunFile};
use crate::config::Experiment;

/// Reads every file `exp` names and replaces its path with the bare file name.
pub fn take(exp: &mut Experiment) -> Result<Vec<RunFile>> {
    exp.file_refs_mut()
        .into_iter()
        .map(|(key, path)| {
            let content = std::fs::read(&*path)
                .with_context(|| format!("{key}: cannot read {}; fix: check the path", path.display()))
                .map_err(crate::types::BadInput::wrap)?;
            let file_name = path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .with_context(|| format!("{key} = {} names no file", path.display()))?;
            *path = file_name.clone().into();
            Ok(RunFile {
                key,
                file_name,
                content,
            })
        })
        .collect()
}

/// Writes the archive's stored files to a new private folder and points `exp` at them.
/// The folder lives as long as the returned guard.
pub fn materialize(archive: &Archive, exp: &mut Experiment) -> Result<TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("metaforge-run-files-")
        .tempdir()
        .context("cannot create a folder for the run's files")?;
    let files = archive.run_files()?;
    for (key, path) in exp.file_refs_mut() {
        match files.iter().find(|f| f.key == key) {
            Some(f) => {
                let target = dir.path().join(&key).join(&f.file_name);
                std::fs::create_dir_all(target.parent().unwrap_or(Path::new(".")))?;
                std::fs::write(&target, &f.content).with_context(|| format!("cannot write {}", target.display()))?;
                *path = target;
            }
            None if path.is_absolute() => {}
            None => bail!(
                "{}: the run's config names {key} = {} but the archive does not hold that file; \
                 fix: the archive is damaged or was edited — use a copy from `metaforge export-bundle`",
                archive.path().display(),
                path.display()
            ),
        }
    }
    Ok(dir)
}
