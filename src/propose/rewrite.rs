//! The meta-agent conversation behind the LLM proposal kinds: `rewrite` (ADAS style: a whole
//! program as thought, name, code), `crossover` (one program from two parents) and `diff`
//! (SEARCH/REPLACE edits to the parent). One proposal, reflexion rounds in the same
//! conversation, then debug rounds driven by the loop with check diagnostics or runtime
//! errors. Unlike ADAS, the context holds a *sample* of the archive (never all of it), and
//! the loop checks and evaluates the *last* fix too. Prompts are `templates/{kind}/...`.

use serde::Serialize;
use serde_json::json;

use super::diff::{apply_edits, parse_edits};
use super::reply::parse_reply;
use super::{Proposal, Templates};
use crate::config::RewriteOptions;
use crate::llm::{CallParams, Gateway, Message};

/// A candidate shown to the meta-model.
#[derive(Debug, Clone, Serialize)]
pub struct ContextCandidate {
    pub name: String,
    pub code: String,
    pub score: f64,
    pub ci_lo: f64,
    pub ci_hi: f64,
    pub tokens: u64,
    /// What scorer code said of its weakest validation tasks (user domains with
    /// `domain.scorer = "score.py"`; empty otherwise).
    pub feedback: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct RewriteFailure {
    /// `parse` (reply unreadable after retries) or `llm` (the model call failed).
    pub kind: &'static str,
    pub reason: String,
    pub prompt: String,
    pub reply: Option<String>,
}

/// The LLM proposal kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlmKind {
    Rewrite,
    Crossover,
    Diff,
}

impl LlmKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LlmKind::Rewrite => "rewrite",
            LlmKind::Crossover => "crossover",
            LlmKind::Diff => "diff",
        }
    }
}

pub struct RewriteSession<'a> {
    gateway: &'a Gateway,
    templates: &'a Templates,
    opts: &'a RewriteOptions,
    /// `diff` only: the program the next edits apply to (the parent, then each accepted fix).
    base_code: Option<String>,
    messages: Vec<Message>,
    calls: u32,
    /// Replies that failed to parse in this session.
    pub malformed_replies: u32,
    /// The characters a prompt may have to fit the model's window, where it states one.
    room: Option<usize>,
    /// What the session was started with: the kind, domain, parents and sample base, and what
    /// the first prompt is rendered from, whose shown programs and failures shrink as the fit
    /// needs.
    first: RewriteInput<'a>,
}

pub struct RewriteInput<'a> {
    pub kind: LlmKind,
    pub domain_name: &'a str,
    pub domain_description: &'a str,
    pub example: Option<String>,
    pub context: Vec<ContextCandidate>,
    pub failures: Vec<(String, String)>,
    pub parents: Vec<String>,
    /// `diff`: the code the edits apply to.
    pub base_code: Option<String>,
    /// The sample index of the session's first call; each further call takes the next
    /// (the caller keeps steps, and runs with other seeds, apart).
    pub sample_base: u32,
    /// The experiment's guards as the prompt describes them (`templates/guards/api.j2`).
    pub guards: Option<serde_json::Value>,
}

/// Characters per token a prompt is assumed to have at the least when it is fitted to a
/// model's window: prompts of code and English run at three and a half or more with the
/// embedded model's tokenizer, so a prompt fitted at three is inside the window.
const CHARS_PER_TOKEN_AT_LEAST: usize = 3;

/// Drops one thing a prompt can spare, in the order every fit follows: a shown program beyond
/// the `required` parents (from the end), then a recent failure. False when nothing is left.
pub fn drop_one_spare(
    context: &mut Vec<ContextCandidate>,
    required: usize,
    failures: &mut Vec<(String, String)>,
) -> bool {
    if context.len() > required {
        context.pop().is_some()
    } else {
        failures.pop().is_some()
    }
}

impl<'a> RewriteSession<'a> {
    /// Proposes, then runs the reflexion rounds. The session stays open for debug rounds.
    pub fn start(
        gateway: &'a Gateway,
        templates: &'a Templates,
        opts: &'a RewriteOptions,
        input: RewriteInput<'a>,
    ) -> anyhow::Result<(Self, Result<Proposal, RewriteFailure>)> {
        let kind = input.kind.as_str();
        let mut s = Self {
            gateway,
            templates,
            opts,
            base_code: input.base_code.clone(),
            messages: Vec::new(),
            calls: 0,
            malformed_replies: 0,
            room: gateway.prompt_room().map(|t| t as usize * CHARS_PER_TOKEN_AT_LEAST),
            first: input,
        };
        s.messages = vec![
            Message::new("system", s.render("system.j2", json!({}))?),
            Message::new("user", s.render_first()?),
        ];
        let mut current = s.ask(kind);
        if current.is_ok() {
            for round in 1..=s.opts.reflexion_rounds {
                let name = if round == 1 { "reflexion_1.j2" } else { "reflexion_2.j2" };
                let prompt = s.render(name, json!({}))?;
                let before = s.messages.clone();
                s.messages.push(Message::new("user", prompt));
                match s.ask(kind) {
                    Ok(p) => current = Ok(p),
                    // A failed reflexion keeps the previous proposal and the conversation
                    // that led to it.
                    Err(_) => s.messages = before,
                }
            }
        }
        Ok((s, current))
    }

    /// The first prompt, with what is left of the programs and failures it may show.
    fn render_first(&self) -> anyhow::Result<String> {
        let input = &self.first;
        self.render(
            "propose.j2",
            json!({
                "domain": {"description": input.domain_description},
                "example": input.example,
                "context": input.context,
                "failures": input.failures,
                "base_code": input.base_code,
                "guards": input.guards,
            }),
        )
    }

    /// Fits the conversation to the model's window before a call, since a prompt past it is
    /// refused whole. Every round (a reflexion, a parse retry, a debug round) speaks of the
    /// reply just before it, so what goes is, in order: the oldest exchanges after the first
    /// prompt, then what the first prompt can spare (`drop_one_spare`). What still does not
    /// fit is sent as it is: the fit counts characters at a conservative rate, so the model
    /// may yet take it.
    fn fit_to_window(&mut self) -> anyhow::Result<()> {
        let Some(room) = self.room else { return Ok(()) };
        let size = |m: &[Message]| m.iter().map(|m| m.content.len()).sum::<usize>();
        while size(&self.messages) > room {
            if self.messages.len() > 4 {
                // [system, first prompt, reply, round, reply, round, ...]
                self.messages.drain(2..4);
            } else if drop_one_spare(
                &mut self.first.context,
                self.first.parents.len(),
                &mut self.first.failures,
            ) {
                self.messages[1].content = self.render_first()?;
            } else {
                break;
            }
        }
        Ok(())
    }

    /// One debug round: feed back what went wrong and ask for a fix.
    pub fn debug(&mut self, feedback: &str, round: u32) -> anyhow::Result<Result<Proposal, RewriteFailure>> {
        let prompt = self.render("debug.j2", json!({"feedback": feedback}))?;
        self.messages.push(Message::new("user", prompt));
        Ok(self.ask(&format!("{}:debug{round}", self.first.kind.as_str())))
    }

    fn render(&self, file: &str, ctx: serde_json::Value) -> anyhow::Result<String> {
        self.templates
            .render_for(self.first.kind.as_str(), self.first.domain_name, file, ctx)
    }

    /// Reads a reply in this kind's format: a whole program, or edits to the base code.
    fn read_reply(&self, reply: &str) -> Result<super::reply::ParsedReply, String> {
        match (&self.first.kind, &self.base_code) {
            (LlmKind::Diff, Some(base)) => {
                let code = apply_edits(base, &parse_edits(reply)?)?;
                let name = super::reply::name_line(reply).unwrap_or_default();
                let thought = reply.split("<<<<<<< SEARCH").next().unwrap_or("").trim().to_string();
                Ok(super::reply::ParsedReply {
                    thought,
                    name,
                    code,
                    via: "diff",
                })
            }
            _ => parse_reply(reply),
        }
    }

    /// Calls the model; on an unreadable reply retries with the parse error.
    fn ask(&mut self, kind: &str) -> Result<Proposal, RewriteFailure> {
        let mut tries = 0;
        loop {
            if let Err(e) = self.fit_to_window() {
                return Err(RewriteFailure {
                    kind: "llm",
                    reason: format!("cannot render the first prompt again: {e:#}"),
                    prompt: self.transcript(),
                    reply: None,
                });
            }
            let req = self.gateway.request(
                self.messages.clone(),
                CallParams::default(),
                self.first.sample_base + self.calls,
            );
            self.calls += 1;
            let prompt_text = self.transcript();
            let reply = match self.gateway.complete(&req) {
                Ok(r) => r.text,
                Err(e) => {
                    return Err(RewriteFailure {
                        kind: "llm",
                        reason: e.to_string(),
                        prompt: prompt_text,
                        reply: None,
                    })
                }
            };
            self.messages.push(Message::new("assistant", reply.clone()));
            match self.read_reply(&reply) {
                Ok(p) => {
                    if self.first.kind == LlmKind::Diff {
                        self.base_code = Some(p.code.clone());
                    }
                    return Ok(Proposal {
                        kind: kind.into(),
                        name: p.name,
                        thought: p.thought,
                        code: p.code,
                        parents: self.first.parents.clone(),
                        prompt: Some(prompt_text),
                        reply: Some(reply),
                    });
                }
                Err(reason) => {
                    self.malformed_replies += 1;
                    if tries >= self.opts.parse_retries {
                        return Err(RewriteFailure {
                            kind: "parse",
                            reason,
                            prompt: prompt_text,
                            reply: Some(reply),
                        });
                    }
                    tries += 1;
                    let retry = self
                        .render("parse_retry.j2", json!({"error": reason}))
                        .unwrap_or_else(|_| reason.clone());
                    self.messages.push(Message::new("user", retry));
                }
            }
        }
    }

    fn transcript(&self) -> String {
        self.messages
            .iter()
            .map(|m| format!("## {}\n{}", m.role, m.content))
            .collect::<Vec<_>>()
            .join("\n\n")
    }
}
