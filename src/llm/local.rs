//! Embedded llama.cpp backend (the offline default).
//!
//! One model instance serves every caller from one thread. Why: on a 2-core machine two
//! model instances (or one per worker) oversubscribe the CPU and generation collapses
//! (measured 51 -> 14 tok/s). Requests queue on a channel; each of up to `max_concurrency`
//! gets a sequence (its own stream of llama.cpp's cache), and every decode call carries one
//! token of each answer being written plus as much of the waiting prompts as fits
//! (continuous batching): a request joins at the next call and is answered the moment it
//! ends.
//!
//! **Prefix reuse.** Requests that start alike (the same instruction across a candidate's
//! tasks, the same conversation across debate rounds) share the prompt's key-value cache. A
//! sequence keeps its cells after its request ends; a new request takes the free sequence
//! that holds the longest start of its prompt, or copies (llama.cpp's `seq_cp`) another
//! sequence's cells when those hold much more of it, and decodes only the rest. Prefill is
//! much of a short answer's cost on a CPU.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;

use anyhow::{anyhow, Context, Result};
use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;

use serde::{Deserialize, Serialize};

use super::{Backend, ChatRequest, Completion, LlmError};
use crate::config::{Batching, ModelConfig};

type Reply = Sender<Result<Decoded, LlmError>>;
/// A request, and for scoring a choice, the text whose likelihood after the prompt is read.
type Job = (ChatRequest, Option<String>, Reply);

/// What the model thread answers: the completion, and for a scored choice its log-likelihood.
struct Decoded {
    completion: Completion,
    logprob: f64,
}

/// How one embedded model instance is loaded and run: what a supervised model process is
/// started with (and restarted with, prefix reuse then off).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalSettings {
    pub path: PathBuf,
    pub threads: i32,
    pub max_seqs: u32,
    pub per_seq: u32,
    pub prefix_reuse: bool,
    pub batching: Batching,
    /// A deliberate crash, for the tests of supervision (`supervisor::Fault`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
}

impl LocalSettings {
    pub fn new(path: &Path, cfg: &ModelConfig) -> Self {
        Self {
            path: path.to_path_buf(),
            threads: if cfg.threads > 0 {
                cfg.threads
            } else {
                thread::available_parallelism().map(|n| n.get() as i32).unwrap_or(2)
            },
            max_seqs: cfg.max_concurrency.clamp(1, 16) as u32,
            per_seq: cfg.context_per_sequence.max(256),
            prefix_reuse: cfg.prefix_reuse,
            batching: cfg.batching,
            fault: None,
        }
    }
}

/// A crash on purpose at the model's Nth decode call: how the tests make a model process die
/// the way a fault inside llama.cpp would (`METAFORGE_MODEL_FAULT`, read by the supervisor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    pub signal: FaultSignal,
    pub at_decode: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultSignal {
    /// A segmentation fault, as a bad memory access in a kernel gives.
    Segv,
    /// An abort, as a failed `GGML_ASSERT` gives.
    Abort,
    /// No crash: the model thread stops and never answers again, as a deadlock would.
    Hang,
}

impl Fault {
    fn fire(self) -> ! {
        match self.signal {
            FaultSignal::Segv => {
                use nix::sys::signal::{raise, signal, SigHandler, Signal};
                // Rust's own SIGSEGV handler (stack overflow detection) would turn a raised
                // one into an abort; a fault in a kernel meets the default disposition.
                // SAFETY: restoring the default disposition installs no handler.
                let _ = unsafe { signal(Signal::SIGSEGV, SigHandler::SigDfl) };
                let _ = raise(Signal::SIGSEGV);
                std::process::abort()
            }
            FaultSignal::Abort => std::process::abort(),
            FaultSignal::Hang => loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            },
        }
    }
}

pub struct LocalBackend {
    id: String,
    per_seq: u32,
    jobs: Sender<Job>,
    /// Microseconds llama.cpp reports spending in decode (its perf counters).
    engine_us: Arc<AtomicU64>,
}

fn llama_backend() -> Result<&'static LlamaBackend> {
    static BACKEND: OnceLock<LlamaBackend> = OnceLock::new();
    if let Some(b) = BACKEND.get() {
        return Ok(b);
    }
    let mut b = LlamaBackend::init().map_err(|e| anyhow!("llama.cpp init failed: {e}"))?;
    b.void_logs();
    Ok(BACKEND.get_or_init(|| b))
}

/// The identity of a GGUF file in cache keys, whichever process runs it.
pub fn model_id(path: &Path) -> String {
    format!("local:{}", path.file_name().and_then(|f| f.to_str()).unwrap_or("model"))
}

/// What llama.cpp says it was built with and found (`llama_print_system_info`): the CPU
/// features its kernels use, e.g. `AVX2 = 1`.
pub fn system_info() -> String {
    // SAFETY: llama.cpp returns a pointer to a static, NUL-terminated string.
    let text = unsafe { std::ffi::CStr::from_ptr(llama_cpp_sys_2::llama_print_system_info()) };
    text.to_string_lossy().trim().to_string()
}

/// The instruction-set flags ggml's CPU kernels were compiled with, as its CMake build
/// recorded them (`build.rs` reads them; empty when that record was not found).
pub fn build_flags() -> &'static str {
    option_env!("METAFORGE_GGML_CPU_FLAGS").unwrap_or("")
}

/// GCC's flag for each CPU feature ggml's kernels may be built with, and the feature's name
/// in `/proc/cpuinfo` (`host::CPU_FEATURES`).
const FEATURE_FLAGS: &[(&str, &str)] = &[
    ("-msse4.2", "sse4_2"),
    ("-mavx", "avx"),
    ("-mf16c", "f16c"),
    ("-mfma", "fma"),
    ("-mavx2", "avx2"),
    ("-mbmi2", "bmi2"),
    ("-mavxvnni", "avx_vnni"),
    ("-mavx512f", "avx512f"),
    ("-mavx512bw", "avx512bw"),
    ("-mavx512vl", "avx512vl"),
    ("-mavx512cd", "avx512cd"),
    ("-mavx512dq", "avx512dq"),
    ("-mavx512vbmi", "avx512vbmi"),
    ("-mavx512vnni", "avx512_vnni"),
    ("-mavx512bf16", "avx512_bf16"),
    ("-mamx-tile", "amx_tile"),
    ("-mamx-int8", "amx_int8"),
    ("-mamx-bf16", "amx_bf16"),
];

/// ggml's CPU library as this binary was linked with it, where the build left it: what a
/// test disassembles to check that no AMX kernel is in the build.
pub fn build_library() -> Option<&'static str> {
    option_env!("METAFORGE_GGML_CPU_LIB")
}

/// The CPU features (as `/proc/cpuinfo` names them) that ggml's kernels in this build use
/// without asking: a CPU without one of them dies of an illegal instruction. Empty for a
/// `-march=native` build, whose needs are the build machine's and cannot be read off flags.
pub fn build_features() -> Vec<&'static str> {
    features_of(build_flags())
}

/// The CPU features that compile flags like `build_flags`' make kernels use.
pub fn features_of(flags: &str) -> Vec<&'static str> {
    let used: Vec<&str> = flags.split_whitespace().collect();
    FEATURE_FLAGS
        .iter()
        .filter(|(flag, _)| used.contains(flag))
        .map(|(_, f)| *f)
        .collect()
}

impl LocalBackend {
    pub fn load(path: &Path, cfg: &ModelConfig, role: &str) -> Result<Self> {
        Self::start(LocalSettings::new(path, cfg), role)
    }

    /// Loads the model of `settings` and starts the thread that decodes for every caller.
    pub fn start(settings: LocalSettings, role: &str) -> Result<Self> {
        let backend = llama_backend()?;
        let path = settings.path.clone();
        let per_seq = settings.per_seq;
        let model = LlamaModel::load_from_file(backend, &path, &LlamaModelParams::default())
            .with_context(|| format!("models.{role}: cannot load GGUF file {}", path.display()))?;
        let (tx, rx) = unbounded::<Job>();
        let (ready_tx, ready_rx) = bounded::<Result<(), String>>(1);
        let engine_us = Arc::new(AtomicU64::new(0));
        let engine = engine_us.clone();
        thread::Builder::new().name("llama-model".into()).spawn(move || {
            model_thread(
                model,
                rx,
                ready_tx,
                ModelThread {
                    settings,
                    engine_us: engine,
                    decodes: 0,
                },
            )
        })?;
        ready_rx
            .recv()
            .map_err(|_| anyhow!("model thread died while starting"))?
            .map_err(|e| anyhow!("models.{role}: {e}"))?;
        Ok(Self {
            id: model_id(&path),
            per_seq,
            jobs: tx,
            engine_us,
        })
    }
}

/// Writes `to`: the GGUF model at `from` with every weight quantized to `Q8_0` by llama.cpp's
/// own quantizer. Why: llama.cpp's CPU kernels for `Q8_0` (batched matrix products) run the
/// default model faster than the `Q4_1` it ships in (`benches/local_throughput.rs`), and 8
/// bits hold `Q4_1`'s 16 levels a block almost exactly, so the model scores as the shipped
/// weights do. (`Q4_0` is faster still, but requantizing 4 bits to 4 bits cost the model much
/// of its arithmetic.)
pub fn requantize_q8_0(from: &Path, to: &Path) -> Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    llama_backend()?;
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).context("model path has a NUL byte");
    let (src, dst) = (c(from)?, c(to)?);
    // SAFETY: plain C calls on NUL-terminated paths and a parameter struct llama.cpp filled in.
    let status = unsafe {
        let mut params = llama_cpp_sys_2::llama_model_quantize_default_params();
        params.ftype = llama_cpp_sys_2::LLAMA_FTYPE_MOSTLY_Q8_0;
        params.allow_requantize = true;
        // Every weight, the tied embedding and output included.
        params.pure_ = true;
        params.nthread = thread::available_parallelism().map(|n| n.get() as i32).unwrap_or(2);
        llama_cpp_sys_2::llama_model_quantize(src.as_ptr(), dst.as_ptr(), &params)
    };
    if status != 0 {
        anyhow::bail!("llama.cpp could not quantize {} (status {status})", from.display());
    }
    Ok(())
}

impl Backend for LocalBackend {
    fn model_id(&self) -> String {
        self.id.clone()
    }

    fn engine_time(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_micros(self.engine_us.load(Ordering::Relaxed)))
    }

    fn context_window(&self) -> Option<u32> {
        Some(self.per_seq)
    }

    fn complete(&self, req: &ChatRequest) -> Result<Completion, LlmError> {
        if req.calibration.is_some() && (req.choices.is_empty() || req.temperature > 0.0) {
            return Err(LlmError::Fatal(
                "a calibrated call is answered by scoring its choices: it needs choices and temperature 0".into(),
            ));
        }
        if !req.choices.is_empty() && req.temperature <= 0.0 {
            return self.most_likely_choice(req);
        }
        self.submit(req.clone(), None)?
            .recv()
            .map_err(|_| LlmError::Fatal("local model thread dropped a request".into()))?
            .map(|d| d.completion)
    }
}

impl LocalBackend {
    fn submit(&self, req: ChatRequest, score: Option<String>) -> Result<Receiver<Result<Decoded, LlmError>>, LlmError> {
        let (tx, rx) = bounded(1);
        self.jobs
            .send((req, score, tx))
            .map_err(|_| LlmError::Fatal("local model thread is gone".into()))?;
        Ok(rx)
    }

    /// The choice the model finds most likely after the prompt: each is read whole, as the
    /// continuation of the prompt, and the one with the highest sum of token log-probabilities
    /// wins (the first on a tie). Why not greedy decoding under a grammar: that commits to the
    /// likeliest first token, and choices that begin alike, or whose first token is a rare
    /// piece of a common word, are then judged by the wrong thing. The choices share the
    /// prompt's cells, so only their own tokens cost a decode each. With a `Calibration`,
    /// each choice's log-probability after the content-free question is subtracted first.
    fn most_likely_choice(&self, req: &ChatRequest) -> Result<Completion, LlmError> {
        let mut plain = req.clone();
        plain.choices.clear();
        plain.calibration = None;
        let (mut scores, mut prompt_tokens, mut completion_tokens) = self.score_choices(&plain, &req.choices)?;
        if let Some(calibration) = &req.calibration {
            if calibration.choices.len() != req.choices.len() {
                return Err(LlmError::Fatal(format!(
                    "the calibration words {} choices for a call of {}; it needs one per choice, in order",
                    calibration.choices.len(),
                    req.choices.len()
                )));
            }
            let mut neutral = plain.clone();
            neutral.messages = calibration.messages.clone();
            let (prior, p, c) = self.score_choices(&neutral, &calibration.choices)?;
            prompt_tokens += p;
            completion_tokens += c;
            for (score, prior) in scores.iter_mut().zip(prior) {
                *score -= prior;
            }
        }
        let mut best: Option<(f64, usize)> = None;
        for (i, score) in scores.into_iter().enumerate() {
            if best.is_none_or(|(top, _)| score > top) {
                best = Some((score, i));
            }
        }
        let (_, i) = best.expect("choices are not empty");
        Ok(Completion {
            text: req.choices[i].clone(),
            prompt_tokens,
            completion_tokens,
        })
    }

    /// Each of `choices`' summed token log-probability as the continuation of `req`'s
    /// prompt, in order, with the prompt's tokens (counted once) and the choices' (each).
    fn score_choices(&self, req: &ChatRequest, choices: &[String]) -> Result<(Vec<f64>, u64, u64), LlmError> {
        let pending: Vec<_> = choices
            .iter()
            .map(|c| self.submit(req.clone(), Some(c.clone())))
            .collect::<Result<_, _>>()?;
        let mut scores = Vec::with_capacity(choices.len());
        let (mut prompt_tokens, mut completion_tokens) = (0, 0);
        for rx in pending {
            let d = rx
                .recv()
                .map_err(|_| LlmError::Fatal("local model thread dropped a request".into()))??;
            prompt_tokens = prompt_tokens.max(d.completion.prompt_tokens);
            completion_tokens += d.completion.completion_tokens;
            scores.push(d.logprob);
        }
        Ok((scores, prompt_tokens, completion_tokens))
    }
}

/// The model thread's settings and counters.
struct ModelThread {
    settings: LocalSettings,
    engine_us: Arc<AtomicU64>,
    /// Decode calls made so far (where a `Fault` fires).
    decodes: u64,
}

fn model_thread(model: LlamaModel, jobs: Receiver<Job>, ready: Sender<Result<(), String>>, state: ModelThread) {
    let settings = &state.settings;
    let backend = match llama_backend() {
        Ok(b) => b,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(settings.per_seq * settings.max_seqs))
        .with_n_batch(N_BATCH as u32)
        .with_n_seq_max(settings.max_seqs)
        // A stream of cells per sequence, not one shared cache: a sequence's cells then lie
        // in the same places whatever else is decoded beside it, so greedy answers do not
        // depend on how requests happen to be timed and batched (with a shared cache they
        // did, on near ties).
        .with_kv_unified(false)
        .with_n_threads(settings.threads)
        .with_n_threads_batch(settings.threads)
        .with_no_perf(false);
    let max_seqs = settings.max_seqs;
    let ctx = match model.new_context(backend, params) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot create llama.cpp context: {e}")));
            return;
        }
    };
    let template = model.chat_template(None).ok();
    let _ = ready.send(Ok(()));
    let mut engine = Engine {
        model: &model,
        template,
        ctx,
        slots: (0..max_seqs).map(|_| Slot::default()).collect(),
        batch: LlamaBatch::new(N_BATCH, 1),
        state,
    };
    engine.serve(&jobs);
}

/// Tokens one decode call takes at most (llama.cpp's `n_batch`).
const N_BATCH: usize = 512;

/// Prompt tokens another sequence must hold beyond a free sequence's own before its cells are
/// copied over. Why: each sequence has its own stream of cells, and llama.cpp copies a whole
/// stream, which costs about as much as decoding a few dozen tokens.
const DONOR_GAIN: usize = 64;

/// One sequence of the model's cache, with its own stream of cells.
#[derive(Default)]
struct Slot {
    /// The tokens whose cells this sequence holds, at positions `0..cached.len()`. A finished
    /// request leaves them, so a later prompt that starts alike decodes only what differs.
    cached: Vec<LlamaToken>,
    /// The request it is serving, if any.
    running: Option<Running>,
}

/// A request between admission and its reply.
struct Running {
    reply: Reply,
    prompt: Vec<LlamaToken>,
    seq: Sequence,
    /// The sampled token to decode next; `None` while the prompt is still being read.
    next: Option<LlamaToken>,
    /// How many prompt tokens the batch being decoded carries for it.
    feeding: usize,
    /// Index of this request's logits in the batch being decoded, if it has some there.
    logits_at: Option<i32>,
}

struct Engine<'m> {
    model: &'m LlamaModel,
    template: Option<llama_cpp_2::model::LlamaChatTemplate>,
    ctx: LlamaContext<'m>,
    slots: Vec<Slot>,
    batch: LlamaBatch<'static>,
    state: ModelThread,
}

impl Engine<'_> {
    /// Continuous batching: every decode call carries one token of each generating request and
    /// as much of the waiting prompts as fits; a request that arrives joins at the next call,
    /// and one that ends is answered at once and frees its slot. (A batch formed once and run
    /// to its longest answer leaves finished slots idle while the longest one runs on.)
    fn serve(&mut self, jobs: &Receiver<Job>) {
        loop {
            let idle = self.slots.iter().all(|s| s.running.is_none());
            if idle {
                match jobs.recv() {
                    Ok(job) => self.admit(job),
                    Err(_) => return,
                }
            }
            let admits = idle || self.state.settings.batching == Batching::Continuous;
            while admits && self.slots.iter().any(|s| s.running.is_none()) {
                match jobs.try_recv() {
                    Ok(job) => self.admit(job),
                    Err(_) => break,
                }
            }
            if self.slots.iter().any(|s| s.running.is_some()) {
                self.step();
            }
        }
    }

    /// Gives a request the free slot that holds the longest start of its prompt, or copies
    /// another slot's cells into it when those hold `DONOR_GAIN` tokens more.
    fn admit(&mut self, (req, score, reply): Job) {
        let prompt = match prompt_tokens(self.model, self.template.as_ref(), &req, self.state.settings.per_seq) {
            Ok(p) => p,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        // At least the prompt's last token is decoded: its logits give the first answer token.
        let reusable = |cached: &[LlamaToken]| common_prefix(cached, &prompt).min(prompt.len() - 1);
        let reuse = self.state.settings.prefix_reuse;
        let (own, free) = (0..self.slots.len())
            .filter(|&s| self.slots[s].running.is_none())
            .map(|s| (if reuse { reusable(&self.slots[s].cached) } else { 0 }, s))
            .max_by_key(|&(n, s)| (n, std::cmp::Reverse(s)))
            .expect("admit is called with a free slot");
        let donor = (0..self.slots.len())
            .filter(|&s| s != free)
            .map(|s| (reusable(&self.slots[s].cached), s))
            .max_by_key(|&(n, s)| (n, std::cmp::Reverse(s)))
            .filter(|&(n, _)| reuse && n >= own + DONOR_GAIN);
        let kept = match self.reshape(free, own, donor) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(%e, "prefix reuse failed; decoding the whole prompt");
                let _ = self.ctx.clear_kv_cache_seq(Some(free as u32), None, None);
                0
            }
        };
        let slot = &mut self.slots[free];
        slot.cached = prompt[..kept].to_vec();
        let forced = score.map(|text| self.model.vocab().tokenize(text.as_bytes(), false, false));
        let seq = match Sequence::new(self.model, &req, prompt.len(), forced) {
            Ok(seq) => seq,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        slot.running = Some(Running {
            reply,
            seq,
            prompt,
            next: None,
            feeding: 0,
            logits_at: None,
        });
    }

    /// Leaves `slot` holding the first cells of the new prompt: its own first `own` cells, or
    /// the donor's first `n` copied into it. Returns how many it holds.
    fn reshape(&mut self, slot: usize, own: usize, donor: Option<(usize, usize)>) -> Result<usize, String> {
        let keep = match donor {
            Some((n, from)) => {
                // Each sequence has its own stream of cells: llama.cpp copies a whole stream,
                // and the copy is cut back to the shared start below.
                self.ctx
                    .copy_kv_cache_seq(from as i32, slot as i32, None, None)
                    .map_err(|e| e.to_string())?;
                n
            }
            None => own,
        };
        match self.ctx.clear_kv_cache_seq(Some(slot as u32), Some(keep as u32), None) {
            Ok(true) => Ok(keep),
            Ok(false) => Err("llama.cpp refused to cut a sequence's cells".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// One decode call: a token of each generating request, then waiting prompt tokens.
    fn step(&mut self) {
        self.batch.clear();
        let mut overflow = false;
        // Static batching reads the prompts one at a time before any answer is written.
        let one_prompt = self.state.settings.batching == Batching::Static
            && self
                .slots
                .iter()
                .any(|s| s.running.as_ref().is_some_and(|r| r.next.is_none()));
        for (s, slot) in self.slots.iter_mut().enumerate() {
            let Some(run) = slot.running.as_mut() else { continue };
            run.logits_at = None;
            run.feeding = 0;
            if one_prompt {
                continue;
            }
            if let Some(token) = run.next {
                run.logits_at = Some(self.batch.n_tokens());
                overflow |= self
                    .batch
                    .add(token, slot.cached.len() as i32, &[s as i32], true)
                    .is_err();
            }
        }
        for (s, slot) in self.slots.iter_mut().enumerate() {
            let Some(run) = slot.running.as_mut() else { continue };
            if run.next.is_some() {
                continue;
            }
            let room = N_BATCH - self.batch.n_tokens() as usize;
            if room == 0 || (one_prompt && self.batch.n_tokens() > 0) {
                break;
            }
            let from = slot.cached.len();
            let upto = run.prompt.len().min(from + room);
            run.feeding = upto - from;
            for (i, token) in run.prompt[from..upto].iter().enumerate() {
                let at = from + i;
                let last = at + 1 == run.prompt.len();
                if last {
                    run.logits_at = Some(self.batch.n_tokens());
                }
                overflow |= self.batch.add(*token, at as i32, &[s as i32], last).is_err();
            }
        }
        self.state.decodes += 1;
        if let Some(fault) = self.state.settings.fault.filter(|f| f.at_decode == self.state.decodes) {
            fault.fire();
        }
        let decoded = if overflow {
            Err("batch overflow".to_string())
        } else {
            self.ctx
                .decode(&mut self.batch)
                .map_err(|e| format!("decode failed: {e}"))
        };
        // llama.cpp's own measurement of its decode time: the bench compares it with ours.
        let t = self.ctx.timings();
        self.state
            .engine_us
            .fetch_add(((t.t_p_eval_ms() + t.t_eval_ms()) * 1e3) as u64, Ordering::Relaxed);
        self.ctx.reset_timings();
        if let Err(e) = decoded {
            // The cache's state is unknown: fail what runs, start clean.
            for slot in &mut self.slots {
                if let Some(run) = slot.running.take() {
                    let _ = run.reply.send(Err(LlmError::Fatal(e.clone())));
                }
                slot.cached.clear();
            }
            self.ctx.clear_kv_cache();
            return;
        }
        let vocab = self.model.vocab();
        for slot in &mut self.slots {
            let Some(run) = slot.running.as_mut() else { continue };
            // A sampled token was in the batch only if it got logits there (static batching
            // holds answers back while a prompt is read).
            match run.next {
                Some(token) if run.logits_at.is_some() => slot.cached.push(token),
                Some(_) => {}
                None => {
                    let from = slot.cached.len();
                    slot.cached.extend_from_slice(&run.prompt[from..from + run.feeding]);
                }
            }
            let Some(at) = run.logits_at else { continue };
            let token = match run.seq.forced_next() {
                Some(token) => {
                    run.seq.logprob += log_softmax_at(self.ctx.get_logits_ith(at), token);
                    token
                }
                None => run.seq.sampler.sample(&self.ctx, at),
            };
            run.seq.accept(&vocab, token);
            if run.seq.done {
                let run = slot.running.take().expect("running");
                let logprob = run.seq.logprob;
                let _ = run.reply.send(Ok(Decoded {
                    completion: run.seq.completion(),
                    logprob,
                }));
            } else {
                run.next = Some(token);
            }
        }
    }
}

fn prompt_tokens(
    model: &LlamaModel,
    template: Option<&llama_cpp_2::model::LlamaChatTemplate>,
    req: &ChatRequest,
    per_seq: u32,
) -> Result<Vec<LlamaToken>, LlmError> {
    let text = match template {
        Some(t) => {
            let chat: Result<Vec<_>, _> = req
                .messages
                .iter()
                .map(|m| LlamaChatMessage::new(m.role.clone(), m.content.clone()))
                .collect();
            let chat = chat.map_err(|e| LlmError::Fatal(format!("message has a NUL byte: {e}")))?;
            model
                .apply_chat_template(t, &chat, true)
                .map_err(|e| LlmError::Fatal(format!("chat template failed: {e}")))?
        }
        // A base model without a chat template gets a plain transcript.
        None => {
            let mut s = String::new();
            for m in &req.messages {
                s.push_str(&format!("{}: {}\n", m.role, m.content));
            }
            s.push_str("assistant:");
            s
        }
    };
    let tokens = model.vocab().tokenize(text.as_bytes(), true, true);
    let budget = per_seq.saturating_sub(req.max_tokens.max(1)) as usize;
    if tokens.len() > budget {
        return Err(LlmError::Fatal(format!(
            "prompt has {} tokens; with max_tokens {} it exceeds the context of {per_seq} per sequence (raise models.*.context_per_sequence)",
            tokens.len(),
            req.max_tokens
        )));
    }
    Ok(tokens)
}

/// What a request has generated so far, and when it ends.
struct Sequence {
    sampler: LlamaSampler,
    out: Vec<u8>,
    generated: u64,
    prompt: u64,
    max: u64,
    /// The request's stop sequences: decoding ends once one appears (the gateway cuts it).
    stop: Vec<String>,
    done: bool,
    /// A choice being scored: its tokens are read in turn instead of sampled, and the
    /// sequence ends after the last.
    forced: Option<Vec<LlamaToken>>,
    /// The sum of the forced tokens' log-probabilities so far.
    logprob: f64,
}

impl Sequence {
    fn new(
        model: &LlamaModel,
        req: &ChatRequest,
        prompt: usize,
        forced: Option<Vec<LlamaToken>>,
    ) -> Result<Self, LlmError> {
        Ok(Self {
            forced,
            logprob: 0.0,
            sampler: sampler_for(model, req)?,
            out: Vec::new(),
            generated: 0,
            prompt: prompt as u64,
            max: u64::from(req.max_tokens.max(1)),
            stop: req.stop.clone(),
            done: false,
        })
    }

    /// The next token of the choice being scored, if this sequence scores one.
    fn forced_next(&self) -> Option<LlamaToken> {
        self.forced
            .as_ref()
            .and_then(|f| f.get(self.generated as usize).copied())
    }

    /// Appends a freshly sampled (or forced) token, or ends the sequence.
    fn accept(&mut self, vocab: &llama_cpp_2::vocab::LlamaVocab<'_>, token: LlamaToken) {
        if let Some(forced) = &self.forced {
            self.out.extend(vocab.token_to_piece(token, false, None));
            self.generated += 1;
            self.done = self.generated as usize >= forced.len();
            return;
        }
        if vocab.is_eog(token) {
            self.done = true;
            return;
        }
        self.out.extend(vocab.token_to_piece(token, false, None));
        self.generated += 1;
        if self.generated >= self.max {
            self.done = true;
        }
        if !self.stop.is_empty() {
            // A stop sequence can straddle tokens: look at the tail that could hold a new one.
            let longest = self.stop.iter().map(String::len).max().unwrap_or(0);
            let from = self.out.len().saturating_sub(longest + 16);
            let tail = String::from_utf8_lossy(&self.out[from..]);
            if self.stop.iter().any(|s| tail.contains(s.as_str())) {
                self.done = true;
            }
        }
    }

    fn completion(self) -> Completion {
        Completion {
            text: String::from_utf8_lossy(&self.out).into_owned(),
            prompt_tokens: self.prompt,
            completion_tokens: self.generated,
        }
    }
}

/// The request's sampler: greedy at temperature 0, else top-k, top-p and temperature with a
/// seed of the request's own. With `choices`, a grammar first masks every token that would
/// leave the set, so what is decoded is one of them, whole.
fn sampler_for(model: &LlamaModel, req: &ChatRequest) -> Result<LlamaSampler, LlmError> {
    let mut chain = Vec::new();
    if !req.choices.is_empty() {
        let grammar = choices_grammar(&req.choices);
        chain.push(
            LlamaSampler::grammar(model, &grammar, "root")
                .map_err(|e| LlmError::Fatal(format!("llama.cpp refused the grammar of the choices: {e}")))?,
        );
    }
    if req.temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        let seed = 0x9e37_79b9u32.wrapping_mul(req.sample_index.wrapping_add(1))
            ^ (req.messages.iter().map(|m| m.content.len() as u32).sum::<u32>());
        chain.extend([
            LlamaSampler::top_k(40),
            LlamaSampler::top_p(0.95, 1),
            LlamaSampler::temp(req.temperature),
            LlamaSampler::dist(seed),
        ]);
    }
    Ok(if chain.len() == 1 {
        chain.pop().expect("one sampler")
    } else {
        LlamaSampler::chain_simple(chain)
    })
}

/// A GBNF grammar whose only sentences are the choices: `root ::= "A" | "B"`.
fn choices_grammar(choices: &[String]) -> String {
    let literal = |c: &str| {
        let mut out = String::from("\"");
        for ch in c.chars() {
            match ch {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    };
    let alternatives: Vec<String> = choices.iter().map(|c| literal(c)).collect();
    format!("root ::= {}", alternatives.join(" | "))
}

/// `log p(token)` under the distribution the logits give.
fn log_softmax_at(logits: &[f32], token: LlamaToken) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let picked = logits.get(token.0 as usize).copied().unwrap_or(f32::NEG_INFINITY);
    f64::from(picked - max) - sum.ln()
}

fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

#[cfg(test)]
mod tests {
    /// A feature named differently here and in `/proc/cpuinfo` would be "missing" on every
    /// CPU, and the model refused everywhere.
    #[test]
    fn every_build_feature_is_one_the_cpu_reader_knows() {
        for (flag, feature) in super::FEATURE_FLAGS {
            assert!(crate::host::CPU_FEATURES.contains(feature), "{flag} -> {feature}");
        }
    }

    #[test]
    fn the_choices_grammar_quotes_every_choice() {
        let choices = ["A".to_string(), "say \"no\"".to_string(), "a\\b\nc".to_string()];
        assert_eq!(
            super::choices_grammar(&choices),
            r#"root ::= "A" | "say \"no\"" | "a\\b\nc""#
        );
    }
}
