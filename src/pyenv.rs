//! Private Python environments for pinned PyPI packages that metaforge drives but does not
//! embed (TextWorldExpress for the `twc` games, Ray for the cluster executor).
//!
//! Why one venv per package under the cache folder: the user's Python stays untouched, two
//! metaforge processes share one install, and a half-finished install never looks finished
//! (it is built in a staging folder and renamed into place). Only `bin/python` of the venv
//! is used afterwards: the console scripts carry the staging path in their shebang.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// A pinned package and the venv folder it lives in.
pub struct PinnedEnv {
    /// The `pip install` requirement, e.g. `ray==2.40.0`.
    pub requirement: &'static str,
    /// Folder name under `<cache>/envs/`.
    pub folder: &'static str,
    /// Environment variable that names an interpreter to use instead (it must have the package).
    pub override_var: &'static str,
}

impl PinnedEnv {
    /// The venv's folder (whether or not it is installed yet).
    pub fn dir(&self) -> PathBuf {
        crate::host::cache_root().join("envs").join(self.folder)
    }

    /// The venv's interpreter (whether or not it is installed yet).
    fn venv_python(&self) -> PathBuf {
        self.dir().join("bin").join("python")
    }

    /// Whether a Python with the package is at hand: the override, or the installed venv.
    pub fn ready(&self) -> bool {
        self.overridden().is_some() || self.venv_python().exists()
    }

    /// The interpreter the override variable names, if set.
    pub fn overridden(&self) -> Option<PathBuf> {
        std::env::var_os(self.override_var).map(PathBuf::from)
    }

    /// One line for `metaforge doctor`: where the package is, or where it will be installed.
    pub fn describe(&self) -> String {
        if let Some(p) = self.overridden() {
            return format!("${} = {}", self.override_var, p.display());
        }
        let dir = self.dir();
        if self.venv_python().exists() {
            format!("{} installed in {}", self.requirement, dir.display())
        } else {
            format!(
                "{} is installed into {} on first use (PyPI)",
                self.requirement,
                dir.display()
            )
        }
    }

    /// The Python that has the package: the override, or the venv, created on first use with
    /// `pip install <requirement>` from PyPI.
    pub fn python(&self) -> Result<PathBuf> {
        if let Some(p) = self.overridden() {
            return Ok(p);
        }
        let venv = self.dir();
        let python = self.venv_python();
        if python.exists() {
            return Ok(python);
        }
        let root = venv.parent().expect("venv folder has a parent");
        std::fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
        eprintln!(
            "installing {} into {} (once; from PyPI)",
            self.requirement,
            venv.display()
        );
        let staging = tempfile::tempdir_in(root)?;
        let base = crate::host::python_interpreter()?;
        let ok = Command::new(&base)
            .args(["-m", "venv"])
            .arg(staging.path())
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(staging.path().join("bin").join("python"))
                .args([
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--disable-pip-version-check",
                    self.requirement,
                ])
                .status()
                .is_ok_and(|s| s.success());
        if !ok {
            bail!(
                "could not install {} into a virtual environment; fix: check that python3-venv is installed and PyPI is reachable, or set {} to a Python that has the package",
                self.requirement,
                self.override_var
            );
        }
        let staged = staging.keep();
        if std::fs::rename(&staged, &venv).is_err() {
            // Another process installed it first; theirs is identical.
            let _ = std::fs::remove_dir_all(&staged);
        }
        Ok(python)
    }
}
