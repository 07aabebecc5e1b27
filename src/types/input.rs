//! Telling bad input from a failed run. The CLI exits with 2 when the user's input was wrong
//! (arguments, a config, a file, a dataset, an archive path) and 1 when the thing run failed
//! (a sandbox, a model, the disk). Why a marker type: the layer that reads an input knows it
//! was input; the exit code is decided far above it, in `main`.

use std::fmt;

/// An error in what the user gave; see the module doc.
#[derive(Debug)]
pub struct BadInput(anyhow::Error);

impl BadInput {
    /// `error`, marked as bad input; its message is unchanged.
    pub fn wrap(error: anyhow::Error) -> anyhow::Error {
        if is_bad_input(&error) {
            return error;
        }
        anyhow::Error::new(BadInput(error))
    }
}

impl fmt::Display for BadInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

/// No `source`: the wrapped error's whole chain is already in `Display`.
impl std::error::Error for BadInput {}

/// Whether `error`, or anything it was built from, is bad input.
pub fn is_bad_input(error: &anyhow::Error) -> bool {
    error.chain().any(|e| e.is::<BadInput>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marked_error_keeps_its_message_and_its_mark_under_context() {
        let e = BadInput::wrap(anyhow::anyhow!("no such file").context("reading x.toml"));
        assert_eq!(format!("{e:#}"), "reading x.toml: no such file");
        let outer = e.context("run");
        assert!(is_bad_input(&outer));
        assert_eq!(format!("{outer:#}"), "run: reading x.toml: no such file");
        assert!(!is_bad_input(&anyhow::anyhow!("sandbox died")));
    }
}
