//! Facts about the machine metaforge runs on that several layers need: where its caches
//! live and which Python interpreter runs candidates. A leaf: it imports nothing of the crate.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};

/// Folder for fetched weights: `$METAFORGE_CACHE`, else `$XDG_CACHE_HOME/metaforge`, else
/// `~/.cache/metaforge`.
pub fn cache_root() -> PathBuf {
    if let Ok(d) = std::env::var("METAFORGE_CACHE") {
        return PathBuf::from(d);
    }
    if let Ok(d) = std::env::var("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("metaforge");
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| ".".into());
    PathBuf::from(home).join(".cache").join("metaforge")
}

/// The real Python interpreter, resolved once. Why: `python3` on PATH may be a version
/// manager shim costing ~100 ms a start; the interpreter it resolves to starts in ~10 ms.
/// `$METAFORGE_PYTHON` overrides.
pub fn python_interpreter() -> Result<PathBuf> {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    if let Some(p) = PY.get() {
        return Ok(p.clone());
    }
    let resolved = match std::env::var_os("METAFORGE_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => {
            let out = Command::new("python3")
                .args(["-c", "import sys; print(sys.executable)"])
                .output()
                .context(
                    "cannot run python3; fix: install Python 3 (apt-get install python3) or set METAFORGE_PYTHON",
                )?;
            if !out.status.success() {
                bail!("python3 failed to start; fix: install Python 3 or set METAFORGE_PYTHON to an interpreter");
            }
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
        }
    };
    if !resolved.exists() {
        bail!(
            "Python interpreter {} does not exist; fix: set METAFORGE_PYTHON",
            resolved.display()
        );
    }
    Ok(PY.get_or_init(|| resolved).clone())
}

/// A request from outside (SIGINT, SIGTERM) to stop at the next safe point. Process-wide,
/// as signals are: the handler that records it (`app`) and the loop that honours it
/// (`search`) share nothing else.
static STOP_REQUESTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
static STOP_SIGNAL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// Records a stop request by `signal`; returns how many have come so far.
pub fn request_stop(signal: i32) -> u32 {
    use std::sync::atomic::Ordering;
    STOP_SIGNAL.store(signal, Ordering::SeqCst);
    STOP_REQUESTS.fetch_add(1, Ordering::SeqCst) + 1
}

/// The signal that asked to stop, if one did.
pub fn stop_requested() -> Option<i32> {
    use std::sync::atomic::Ordering;
    (STOP_REQUESTS.load(Ordering::SeqCst) > 0).then(|| STOP_SIGNAL.load(Ordering::SeqCst))
}

/// The `metaforge` executable, for starting a process of its own (the embedded model's).
/// Why not always `current_exe`: tests and benches link the library into binaries of their
/// own, which know no subcommand. `$METAFORGE_BIN` overrides; else the running executable
/// when it is metaforge; else `metaforge` beside it or one folder up (cargo puts test
/// binaries in `target/<profile>/deps/`, next to `target/<profile>/metaforge`).
pub fn metaforge_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("METAFORGE_BIN") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!(
                "METAFORGE_BIN = {} is not a file; fix: point it at a built metaforge binary, or unset it",
                p.display()
            );
        }
        return Ok(p);
    }
    let exe = std::env::current_exe().context("cannot tell which executable is running")?;
    if exe.file_stem().is_some_and(|s| s == "metaforge") {
        return Ok(exe);
    }
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    for candidate in [dir.join("metaforge"), dir.join("../metaforge")] {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "cannot find the metaforge binary beside {}; fix: build it (cargo build --release) or set METAFORGE_BIN",
        exe.display()
    )
}

/// The x86 instruction-set extensions that decide which of llama.cpp's CPU kernels can run,
/// in the order of their arrival, as `/proc/cpuinfo` names them.
pub const CPU_FEATURES: &[&str] = &[
    "sse4_2",
    "avx",
    "f16c",
    "fma",
    "avx2",
    "bmi2",
    "avx_vnni",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512cd",
    "avx512dq",
    "avx512vbmi",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
];

/// This machine's processor: its model name and which of `CPU_FEATURES` it has. Read from
/// `/proc/cpuinfo` rather than CPUID, so it is what the kernel lets processes use (AMX, for
/// one, needs the kernel's consent).
pub fn cpu() -> Cpu {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    Cpu::parse(&text)
}

/// A processor as `cpu` reads it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Cpu {
    pub model: String,
    pub features: Vec<&'static str>,
}

impl Cpu {
    pub fn parse(cpuinfo: &str) -> Cpu {
        let field = |name: &str| {
            cpuinfo
                .lines()
                .find(|l| l.split(':').next().is_some_and(|k| k.trim() == name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        };
        let flags = field("flags").unwrap_or_default();
        let flags: std::collections::HashSet<&str> = flags.split_whitespace().collect();
        Cpu {
            model: field("model name").unwrap_or_else(|| std::env::consts::ARCH.to_string()),
            features: CPU_FEATURES.iter().copied().filter(|f| flags.contains(f)).collect(),
        }
    }

    pub fn has(&self, feature: &str) -> bool {
        self.features.contains(&feature)
    }

    /// Those of `needs` this CPU lacks.
    pub fn missing<'n>(&self, needs: &[&'n str]) -> Vec<&'n str> {
        needs.iter().copied().filter(|f| !self.has(f)).collect()
    }

    /// One line for messages: the model name and the features, upper-case.
    pub fn describe(&self) -> String {
        let features: Vec<String> = self.features.iter().map(|f| f.to_uppercase()).collect();
        format!(
            "{} ({})",
            self.model,
            if features.is_empty() {
                "none of AVX, AVX2, AVX-512, AMX".into()
            } else {
                features.join(" ")
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_features_come_from_the_flags_line() {
        let info =
            "processor\t: 0\nmodel name\t: Some Xeon\nflags\t\t: fpu sse4_2 avx avx2 fma amx_tile amx_int8 avx512f\n";
        let cpu = Cpu::parse(info);
        assert_eq!(cpu.model, "Some Xeon");
        assert_eq!(
            cpu.features,
            ["sse4_2", "avx", "fma", "avx2", "avx512f", "amx_tile", "amx_int8"]
        );
        assert!(cpu.has("amx_tile") && !cpu.has("avx512_vnni"));
        assert_eq!(cpu.missing(&["avx2", "avx512_vnni", "bmi2"]), ["avx512_vnni", "bmi2"]);
        assert_eq!(
            cpu.describe(),
            "Some Xeon (SSE4_2 AVX FMA AVX2 AVX512F AMX_TILE AMX_INT8)"
        );
    }
}
