//! Files the binary carries so that it runs from any directory: the Python runtime, prompt
//! templates, check rules, seed agents, example experiments and small task data.
//!
//! Why embed instead of reading the checkout: a researcher copies one binary (or `cargo
//! install`s it) onto a cluster node; the archive and these files must still agree. The files
//! stay the single source of truth in the repository (`runtime/`, `templates/`, ...); no
//! prompt or rule is written in Rust.

use include_dir::{include_dir, Dir};

pub static RUNTIME: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/runtime");
pub static TEMPLATES: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/templates");
pub static GRAMMARS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/grammars");
pub static ARCHIVE: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/archive");
pub static EXPERIMENTS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/experiments");
pub static DATA: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/data");

/// Text of an embedded file, or None.
pub fn text(dir: &'static Dir<'static>, path: &str) -> Option<&'static str> {
    dir.get_file(path).and_then(|f| f.contents_utf8())
}

/// All embedded files under `dir/sub` with the given extension, sorted by path.
pub fn files_with_ext(dir: &'static Dir<'static>, sub: &str, ext: &str) -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    let base = if sub.is_empty() { Some(dir) } else { dir.get_dir(sub) };
    if let Some(d) = base {
        for f in d.files() {
            if f.path().extension().and_then(|e| e.to_str()) == Some(ext) {
                if let (Some(p), Some(t)) = (f.path().to_str(), f.contents_utf8()) {
                    out.push((p, t));
                }
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(b.0));
    out
}
