//! Embedded llama.cpp backend (the offline default).
//!
//! One model instance serves every caller from one thread. Why: on a 2-core machine two
//! model instances (or one per worker) oversubscribe the CPU and generation collapses
//! (measured 51 -> 14 tok/s). Requests queue on a channel; the model thread takes all that
//! are waiting (up to `max_concurrency`) and decodes them as parallel sequences of one
//! batch, which is where a small model on a CPU gains throughput.
//!
//! **Prefix reuse.** Requests that start alike (the same instruction across a candidate's
//! tasks, the same conversation across debate rounds) share the prompt's key-value cache: the
//! longest prefix common to a batch is decoded once and its cells are shared by every
//! sequence (llama.cpp's `seq_cp` on the unified cache), and what the previous batch left of
//! it is kept, so the next batch decodes only what differs. Prefill is most of a short
//! answer's cost on a CPU.

use std::num::NonZeroU32;
use std::path::Path;
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

use super::{Backend, ChatRequest, Completion, LlmError};
use crate::config::ModelConfig;

type Reply = Sender<Result<Completion, LlmError>>;
type Job = (ChatRequest, Reply);
/// A request ready to decode: its reply channel and its prompt tokens.
type Prepared = (ChatRequest, Reply, Vec<LlamaToken>);

pub struct LocalBackend {
    id: String,
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

impl LocalBackend {
    pub fn load(path: &Path, cfg: &ModelConfig, role: &str) -> Result<Self> {
        let backend = llama_backend()?;
        let model = LlamaModel::load_from_file(backend, path, &LlamaModelParams::default())
            .with_context(|| format!("models.{role}: cannot load GGUF file {}", path.display()))?;
        let file = path.file_name().and_then(|f| f.to_str()).unwrap_or("model").to_string();
        let threads = if cfg.threads > 0 {
            cfg.threads
        } else {
            thread::available_parallelism().map(|n| n.get() as i32).unwrap_or(2)
        };
        let max_seqs = cfg.max_concurrency.clamp(1, 16) as u32;
        let per_seq = cfg.context_per_sequence.max(256);
        let prefix_reuse = cfg.prefix_reuse;
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
                    threads,
                    max_seqs,
                    per_seq,
                    prefix_reuse,
                    engine_us: engine,
                },
            )
        })?;
        ready_rx
            .recv()
            .map_err(|_| anyhow!("model thread died while starting"))?
            .map_err(|e| anyhow!("models.{role}: {e}"))?;
        Ok(Self {
            id: format!("local:{file}"),
            jobs: tx,
            engine_us,
        })
    }
}

impl Backend for LocalBackend {
    fn model_id(&self) -> String {
        self.id.clone()
    }

    fn engine_time(&self) -> Option<std::time::Duration> {
        Some(std::time::Duration::from_micros(self.engine_us.load(Ordering::Relaxed)))
    }

    fn complete(&self, req: &ChatRequest) -> Result<Completion, LlmError> {
        let (tx, rx) = bounded(1);
        self.jobs
            .send((req.clone(), tx))
            .map_err(|_| LlmError::Fatal("local model thread is gone".into()))?;
        rx.recv()
            .map_err(|_| LlmError::Fatal("local model thread dropped a request".into()))?
    }
}

/// The model thread's settings.
struct ModelThread {
    threads: i32,
    max_seqs: u32,
    per_seq: u32,
    prefix_reuse: bool,
    engine_us: Arc<AtomicU64>,
}

fn model_thread(model: LlamaModel, jobs: Receiver<Job>, ready: Sender<Result<(), String>>, settings: ModelThread) {
    let ModelThread {
        threads,
        max_seqs,
        per_seq,
        prefix_reuse,
        engine_us,
    } = settings;
    let backend = match llama_backend() {
        Ok(b) => b,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(per_seq * max_seqs))
        .with_n_batch(512)
        .with_n_seq_max(max_seqs)
        .with_kv_unified(true)
        .with_n_threads(threads)
        .with_n_threads_batch(threads)
        .with_no_perf(false);
    let mut ctx = match model.new_context(backend, params) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot create llama.cpp context: {e}")));
            return;
        }
    };
    let template = model.chat_template(None).ok();
    let _ = ready.send(Ok(()));
    // The tokens whose cells sequence 0 keeps from the previous batch (positions 0..len).
    let mut kept: Vec<LlamaToken> = Vec::new();
    while let Ok(first) = jobs.recv() {
        let mut batch_jobs = vec![first];
        while batch_jobs.len() < max_seqs as usize {
            match jobs.try_recv() {
                Ok(j) => batch_jobs.push(j),
                Err(_) => break,
            }
        }
        let prompts: Vec<Result<Vec<LlamaToken>, LlmError>> = batch_jobs
            .iter()
            .map(|(req, _)| prompt_tokens(&model, template.as_ref(), req, per_seq))
            .collect();
        let mut runnable = Vec::new();
        for ((req, reply), prompt) in batch_jobs.into_iter().zip(prompts) {
            match prompt {
                Ok(tokens) => runnable.push((req, reply, tokens)),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            }
        }
        if runnable.is_empty() {
            continue;
        }
        let results = generate(&model, &mut ctx, &runnable, prefix_reuse.then_some(&mut kept));
        // llama.cpp's own measurement of its decode time: the bench compares it with ours.
        let t = ctx.timings();
        engine_us.fetch_add(((t.t_p_eval_ms() + t.t_eval_ms()) * 1e3) as u64, Ordering::Relaxed);
        ctx.reset_timings();
        for ((_, reply, _), result) in runnable.into_iter().zip(results) {
            let _ = reply.send(result);
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

struct Sequence {
    sampler: LlamaSampler,
    pos: i32,
    last: LlamaToken,
    out: Vec<u8>,
    generated: u64,
    prompt: u64,
    max: u64,
    /// The request's stop sequences: decoding ends once one appears (the gateway cuts it).
    stop: Vec<String>,
    done: bool,
    /// Index of this sequence's logits in the last decoded batch.
    logits_at: i32,
}

fn sampler_for(req: &ChatRequest) -> LlamaSampler {
    if req.temperature <= 0.0 {
        LlamaSampler::greedy()
    } else {
        let seed = 0x9e37_79b9u32.wrapping_mul(req.sample_index.wrapping_add(1))
            ^ (req.messages.iter().map(|m| m.content.len() as u32).sum::<u32>());
        LlamaSampler::chain_simple([
            LlamaSampler::top_k(40),
            LlamaSampler::top_p(0.95, 1),
            LlamaSampler::temp(req.temperature),
            LlamaSampler::dist(seed),
        ])
    }
}

fn generate(
    model: &LlamaModel,
    ctx: &mut LlamaContext,
    jobs: &[Prepared],
    kept: Option<&mut Vec<LlamaToken>>,
) -> Vec<Result<Completion, LlmError>> {
    let vocab = model.vocab();
    let n_batch = 512usize;
    let mut seqs: Vec<Sequence> = Vec::with_capacity(jobs.len());
    let mut errors: Vec<Option<LlmError>> = (0..jobs.len()).map(|_| None).collect();
    let mut batch = LlamaBatch::new(n_batch, jobs.len() as i32);
    // The prefix every prompt of the batch shares, decoded once (sequence 0) and shared; each
    // prompt keeps at least its last token to decode, whose logits give its first token.
    let shared = match kept {
        Some(kept) => match share_prefix(ctx, &mut batch, jobs, kept) {
            Ok(n) => n,
            Err(e) => {
                kept.clear();
                ctx.clear_kv_cache();
                tracing::warn!(%e, "prefix reuse failed; decoding whole prompts");
                0
            }
        },
        None => {
            ctx.clear_kv_cache();
            0
        }
    };
    // Prefill each sequence's own part (in chunks of n_batch) and sample its first token.
    for (s, (req, _, tokens)) in jobs.iter().enumerate() {
        let mut sampler = sampler_for(req);
        let mut pos = shared as i32;
        let mut first = LlamaToken(0);
        for chunk in tokens[shared..].chunks(n_batch) {
            batch.clear();
            for (i, t) in chunk.iter().enumerate() {
                let is_last = pos as usize + i + 1 == tokens.len();
                if batch.add(*t, pos + i as i32, &[s as i32], is_last).is_err() {
                    errors[s] = Some(LlmError::Fatal("batch overflow".into()));
                }
            }
            if let Err(e) = ctx.decode(&mut batch) {
                errors[s] = Some(LlmError::Fatal(format!("decode failed: {e}")));
                break;
            }
            pos += chunk.len() as i32;
        }
        if errors[s].is_none() {
            first = sampler.sample(ctx, batch.n_tokens() - 1);
        }
        let mut seq = Sequence {
            sampler,
            pos,
            last: first,
            out: Vec::new(),
            generated: 0,
            prompt: tokens.len() as u64,
            max: u64::from(req.max_tokens.max(1)),
            stop: req.stop.clone(),
            done: errors[s].is_some(),
            logits_at: 0,
        };
        accept(&vocab, &mut seq);
        seqs.push(seq);
    }
    // Decode all live sequences together, one token each per step.
    loop {
        batch.clear();
        let mut any = false;
        for (s, seq) in seqs.iter_mut().enumerate() {
            if seq.done {
                continue;
            }
            seq.logits_at = batch.n_tokens();
            if batch.add(seq.last, seq.pos, &[s as i32], true).is_err() {
                seq.done = true;
                continue;
            }
            seq.pos += 1;
            any = true;
        }
        if !any {
            break;
        }
        if let Err(e) = ctx.decode(&mut batch) {
            for (s, seq) in seqs.iter_mut().enumerate() {
                if !seq.done {
                    seq.done = true;
                    errors[s] = Some(LlmError::Fatal(format!("decode failed: {e}")));
                }
            }
            break;
        }
        for seq in seqs.iter_mut().filter(|s| !s.done) {
            seq.last = seq.sampler.sample(ctx, seq.logits_at);
            accept(&vocab, seq);
        }
    }
    seqs.into_iter()
        .zip(errors)
        .map(|(seq, err)| match err {
            Some(e) => Err(e),
            None => Ok(Completion {
                text: String::from_utf8_lossy(&seq.out).into_owned(),
                prompt_tokens: seq.prompt,
                completion_tokens: seq.generated,
            }),
        })
        .collect()
}

/// Readies the cache for a batch whose prompts share a prefix: keeps what sequence 0 holds
/// of it from the last batch, decodes the rest of it into sequence 0, and shares those cells
/// with every other sequence. Returns the prefix's length; `kept` becomes that prefix.
fn share_prefix(
    ctx: &mut LlamaContext,
    batch: &mut LlamaBatch,
    jobs: &[Prepared],
    kept: &mut Vec<LlamaToken>,
) -> Result<usize, String> {
    let first = &jobs[0].2;
    let shared = jobs
        .iter()
        .map(|(_, _, t)| common_prefix(first, t).min(t.len().saturating_sub(1)))
        .min()
        .unwrap_or(0);
    let reuse = common_prefix(&kept[..], &first[..shared]);
    // Every sequence but 0 starts empty (whatever the last batch's size); 0 keeps the
    // reused prefix only.
    ctx.llama_kv_cache_seq_keep(0);
    ctx.clear_kv_cache_seq(Some(0), Some(reuse as u32), None)
        .map_err(|e| e.to_string())?;
    for (c, chunk) in first[reuse..shared].chunks(512).enumerate() {
        batch.clear();
        let at = reuse + c * 512;
        for (i, t) in chunk.iter().enumerate() {
            batch.add(*t, (at + i) as i32, &[0], false).map_err(|e| e.to_string())?;
        }
        ctx.decode(batch).map_err(|e| e.to_string())?;
    }
    for s in 1..jobs.len() as i32 {
        ctx.copy_kv_cache_seq(0, s, Some(0), Some(shared as u32))
            .map_err(|e| e.to_string())?;
    }
    kept.clear();
    kept.extend_from_slice(&first[..shared]);
    Ok(shared)
}

fn common_prefix(a: &[LlamaToken], b: &[LlamaToken]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Appends the freshly sampled token unless it ends the sequence.
fn accept(vocab: &llama_cpp_2::vocab::LlamaVocab<'_>, seq: &mut Sequence) {
    if seq.done {
        return;
    }
    if vocab.is_eog(seq.last) {
        seq.done = true;
        return;
    }
    seq.out.extend(vocab.token_to_piece(seq.last, false, None));
    seq.generated += 1;
    if seq.generated >= seq.max {
        seq.done = true;
    }
    if !seq.stop.is_empty() {
        // A stop sequence can straddle tokens: look at the tail that could hold a new one.
        let longest = seq.stop.iter().map(String::len).max().unwrap_or(0);
        let from = seq.out.len().saturating_sub(longest + 16);
        let tail = String::from_utf8_lossy(&seq.out[from..]);
        if seq.stop.iter().any(|s| tail.contains(s.as_str())) {
            seq.done = true;
        }
    }
}
