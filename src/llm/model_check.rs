//! `metaforge doctor`'s check of the embedded model: load it in a process of its own, decode
//! a few tokens, and say what the CPU has and what llama.cpp was built for.
//!
//! Why a real decode in a child: the crashes that matter (a kernel wrong for this CPU) come
//! at the first matrix product, not at load, and must end the probe, not `doctor`.

use std::time::Instant;

use serde::Serialize;

use super::local::{build_flags, LocalSettings};
use super::supervisor::SupervisedBackend;
use super::{Backend, ChatRequest, Message};
use crate::config::ModelConfig;
use crate::host::Cpu;

/// What the check found.
#[derive(Debug, Clone, Serialize)]
pub struct ModelCheck {
    /// The alias or path asked for, and the file it resolved to.
    pub model: String,
    pub file: Option<String>,
    pub cpu: Cpu,
    /// The binary the model process ran from (a variant build, or metaforge itself).
    pub binary: Option<String>,
    /// ggml's instruction-set flags in this build, and the CPU features they need.
    pub build_flags: String,
    pub build_needs: Vec<&'static str>,
    /// llama.cpp's own line (`llama_print_system_info`), from the model process.
    pub system_info: Option<String>,
    pub result: Result<Decoded, String>,
}

/// A decode that worked.
#[derive(Debug, Clone, Serialize)]
pub struct Decoded {
    pub tokens: u64,
    pub seconds: f64,
    pub reply: String,
}

impl ModelCheck {
    pub fn ok(&self) -> bool {
        self.result.is_ok()
    }

    /// The check's lines for `doctor`'s text output.
    pub fn render(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "embedded model: {}{}",
            self.model,
            self.file.as_deref().map(|f| format!(" ({f})")).unwrap_or_default()
        )];
        lines.push(format!("  cpu:        {}", self.cpu.describe()));
        if let Some(binary) = &self.binary {
            lines.push(format!("  runs from:  {binary}"));
        }
        let missing: Vec<String> = self
            .cpu
            .missing(&self.build_needs)
            .iter()
            .map(|f| f.to_uppercase())
            .collect();
        let needs = if self.build_needs.is_empty() {
            "no CPU feature beyond x86-64's baseline read off the flags".to_string()
        } else if missing.is_empty() {
            format!("needs {}: this CPU has them", self.build_needs.join(" ").to_uppercase())
        } else {
            format!(
                "needs {}: this CPU LACKS {}",
                self.build_needs.join(" ").to_uppercase(),
                missing.join(" ")
            )
        };
        lines.push(format!(
            "  built for:  {} ({needs})",
            if self.build_flags.is_empty() {
                "unknown flags"
            } else {
                &self.build_flags
            }
        ));
        if let Some(info) = &self.system_info {
            lines.push(format!("  llama.cpp:  {info}"));
        }
        match &self.result {
            Ok(d) => lines.push(format!(
                "  [ok]      loaded in a process of its own and decoded {} tokens in {:.2} s: {:?}",
                d.tokens, d.seconds, d.reply
            )),
            Err(e) => {
                lines.push(format!("  [FAILED]  {e}"));
                lines.push("  the embedded model cannot run here: `run`, `eval` and `serve` with backend = \"local\" would stop; use models.*.backend = \"openai\", or see docs/experiment.md, \"Which CPUs the embedded model runs on\"".into());
            }
        }
        lines
    }
}

/// Loads `model` (an alias or a GGUF path) in a model process that is not restarted, and
/// decodes a short greedy answer.
pub fn check(model: &str) -> ModelCheck {
    let mut file = None;
    let mut started = None;
    let result = probe(model, &mut file, &mut started);
    let (binary, flags, system_info) = match started {
        Some((binary, flags, info)) => (Some(binary), flags, Some(info)),
        None => (None, build_flags().to_string(), None),
    };
    let build_needs = super::local::features_of(&flags);
    ModelCheck {
        model: model.to_string(),
        file,
        cpu: crate::host::cpu(),
        binary,
        build_flags: flags,
        build_needs,
        system_info,
        result,
    }
}

/// What the started model process said of itself: its binary, flags and llama.cpp's line.
type Started = (String, String, String);

fn probe(model: &str, file: &mut Option<String>, started: &mut Option<Started>) -> Result<Decoded, String> {
    let path = super::resolve_local_model(model).map_err(|e| format!("{e:#}"))?;
    *file = Some(path.display().to_string());
    let cfg = ModelConfig {
        max_concurrency: 1,
        ..ModelConfig::default()
    };
    let backend = SupervisedBackend::start(
        LocalSettings::new(&path, &cfg),
        "doctor",
        0,
        std::time::Duration::from_secs(cfg.hang_timeout_s.max(1)),
    )
    .map_err(|e| format!("{e:#}"))?;
    let (binary, flags) = backend.build();
    *started = Some((binary.display().to_string(), flags, backend.system_info()));
    let started = Instant::now();
    let reply = backend
        .complete(&ChatRequest {
            messages: vec![Message::new("user", "Say hello.")],
            temperature: 0.0,
            max_tokens: 8,
            json: false,
            stop: vec![],
            choices: vec![],
            calibration: None,
            sample_index: 0,
        })
        .map_err(|e| match e {
            super::LlmError::Fatal(m) => m,
            other => other.to_string(),
        })?;
    Ok(Decoded {
        tokens: reply.completion_tokens,
        seconds: started.elapsed().as_secs_f64(),
        reply: reply.text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(result: Result<Decoded, String>) -> ModelCheck {
        ModelCheck {
            model: "smollm2-135m".into(),
            file: Some("/cache/models/SmolLM2-135M-Instruct.Q8_0.gguf".into()),
            cpu: Cpu::parse(
                "model name\t: Some Xeon\nflags\t\t: sse4_2 avx f16c fma avx2 bmi2 avx512f amx_tile amx_int8\n",
            ),
            binary: Some("/opt/metaforge/metaforge".into()),
            build_flags: "-msse4.2 -mf16c -mfma -mbmi2 -mavx -mavx2".into(),
            build_needs: vec!["sse4_2", "avx", "f16c", "fma", "avx2", "bmi2"],
            system_info: Some("CPU : SSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | BMI2 = 1 |".into()),
            result,
        }
    }

    /// The doctor's model lines, as a user reads them when the model runs and when it dies.
    #[test]
    fn doctor_model_lines() {
        let ok = sample(Ok(Decoded {
            tokens: 8,
            seconds: 0.25,
            reply: "Hello! How can I".into(),
        }));
        insta::assert_snapshot!("doctor_model_ok", ok.render().join("\n"));
        let mut dead = sample(Err("the model process was killed by signal 11 (SIGSEGV: a segmentation fault, a bad memory access inside llama.cpp)".into()));
        dead.cpu = Cpu::parse("model name\t: Old Opteron\nflags\t\t: sse4_2 avx\n");
        insta::assert_snapshot!("doctor_model_failed", dead.render().join("\n"));
    }
}
