//! The ADAS-style meta-agent: one proposal (thought, name, code), reflexion rounds in the
//! same conversation, then debug rounds driven by the loop with check diagnostics or runtime
//! errors. Unlike ADAS, the context holds a *sample* of the archive (never all of it), and
//! the loop checks and evaluates the *last* fix too.

use serde::Serialize;
use serde_json::json;

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
}

#[derive(Debug, Clone)]
pub struct RewriteFailure {
    /// `parse` (reply unreadable after retries) or `llm` (the model call failed).
    pub kind: &'static str,
    pub reason: String,
    pub prompt: String,
    pub reply: Option<String>,
}

pub struct RewriteSession<'a> {
    gateway: &'a Gateway,
    templates: &'a Templates,
    opts: &'a RewriteOptions,
    messages: Vec<Message>,
    parents: Vec<String>,
    /// Distinguishes this step's calls from identical prompts in other steps.
    sample_base: u32,
    calls: u32,
    /// Replies that failed to parse in this session.
    pub malformed_replies: u32,
}

pub struct RewriteInput<'a> {
    pub domain_description: &'a str,
    pub example: Option<String>,
    pub context: Vec<ContextCandidate>,
    pub failures: Vec<(String, String)>,
    pub parents: Vec<String>,
    pub step: u64,
}

impl<'a> RewriteSession<'a> {
    /// Proposes, then runs the reflexion rounds. The session stays open for debug rounds.
    pub fn start(
        gateway: &'a Gateway,
        templates: &'a Templates,
        opts: &'a RewriteOptions,
        input: RewriteInput,
    ) -> anyhow::Result<(Self, Result<Proposal, RewriteFailure>)> {
        let system = templates.render("rewrite/system.j2", json!({}))?;
        let user = templates.render(
            "rewrite/propose.j2",
            json!({
                "domain": {"description": input.domain_description},
                "example": input.example,
                "context": input.context,
                "failures": input.failures,
            }),
        )?;
        let mut s = Self {
            gateway,
            templates,
            opts,
            messages: vec![Message::new("system", system), Message::new("user", user)],
            parents: input.parents,
            sample_base: (input.step as u32).wrapping_mul(64),
            calls: 0,
            malformed_replies: 0,
        };
        let mut current = s.ask("rewrite");
        if current.is_ok() {
            for round in 1..=s.opts.reflexion_rounds {
                let name = if round == 1 {
                    "rewrite/reflexion_1.j2"
                } else {
                    "rewrite/reflexion_2.j2"
                };
                let prompt = s.templates.render(name, json!({}))?;
                s.messages.push(Message::new("user", prompt));
                match s.ask("rewrite") {
                    Ok(p) => current = Ok(p),
                    // A failed reflexion keeps the previous proposal; drop the bad exchange.
                    Err(_) => {
                        s.messages.truncate(s.messages.len().saturating_sub(2));
                    }
                }
            }
        }
        Ok((s, current))
    }

    /// One debug round: feed back what went wrong and ask for a fix.
    pub fn debug(&mut self, feedback: &str, round: u32) -> anyhow::Result<Result<Proposal, RewriteFailure>> {
        let prompt = self
            .templates
            .render("rewrite/debug.j2", json!({"feedback": feedback}))?;
        self.messages.push(Message::new("user", prompt));
        Ok(self.ask(&format!("rewrite:debug{round}")))
    }

    /// Calls the model; on an unreadable reply retries with the parse error.
    fn ask(&mut self, kind: &str) -> Result<Proposal, RewriteFailure> {
        let mut tries = 0;
        loop {
            let req = self.gateway.request(
                self.messages.clone(),
                CallParams::default(),
                self.sample_base + self.calls,
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
            match parse_reply(&reply) {
                Ok(p) => {
                    return Ok(Proposal {
                        kind: kind.into(),
                        name: p.name,
                        thought: p.thought,
                        code: p.code,
                        parents: self.parents.clone(),
                        prompt: Some(prompt_text),
                        reply: Some(reply),
                    })
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
                        .templates
                        .render("rewrite/parse_retry.j2", json!({"error": reason}))
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
