//! Prompt and code templates from `templates/` (minijinja). A template change needs no Rust
//! change; rendering errors name the template.

use anyhow::{Context, Result};
use minijinja::Environment;
use serde::Serialize;

pub struct Templates {
    env: Environment<'static>,
    /// The run's answer format (`answer` in every template); numbers until `with_answer`.
    answer: crate::domain::AnswerSpec,
    /// The agent models candidates may name, cheapest first (`agent_models` in every
    /// template); empty until `with_agent_models`.
    agent_models: Vec<String>,
}

impl Templates {
    pub fn embedded() -> Result<Self> {
        let mut env = Environment::new();
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .keep_trailing_newline(true)
                .build()
                .expect("default delimiters are valid"),
        );
        // What a candidate can call, read from the runtime's own source (`agent_api`).
        env.add_global(
            "agent_api",
            minijinja::Value::from(minijinja::value::Serde(super::agent_api::agent_api()?)),
        );
        let mut stack = vec![&crate::assets::TEMPLATES];
        while let Some(dir) = stack.pop() {
            for f in dir.files() {
                let name = f.path().to_string_lossy().to_string();
                if name.ends_with(".j2") {
                    let text = f
                        .contents_utf8()
                        .with_context(|| format!("template {name} is not UTF-8"))?;
                    env.add_template_owned(name.clone(), text.to_string())
                        .with_context(|| format!("template {name} does not compile"))?;
                }
            }
            stack.extend(dir.dirs());
        }
        let answer = crate::domain::AnswerSpec::number();
        env.add_global("answer", minijinja::Value::from(minijinja::value::Serde(&answer)));
        env.add_global("agent_models", minijinja::Value::from(Vec::<String>::new()));
        Ok(Self {
            env,
            answer,
            agent_models: Vec::new(),
        })
    }

    /// The templates for a domain whose answers look like `answer`: seeds, instruction
    /// lines, blocks and prompts then speak of that format.
    pub fn with_answer(mut self, answer: &crate::domain::AnswerSpec) -> Self {
        self.env
            .add_global("answer", minijinja::Value::from(minijinja::value::Serde(answer)));
        self.answer = answer.clone();
        self
    }

    pub fn answer(&self) -> &crate::domain::AnswerSpec {
        &self.answer
    }

    /// The experiment's agent models, cheapest first by their prices (in the file's order
    /// where prices tie), for the prompts and the cascade block. A single model is listed as
    /// none: there is nothing to choose.
    pub fn with_agent_models(mut self, models: &crate::config::ModelSet) -> Self {
        let mut priced: Vec<(f64, &str)> = models
            .iter()
            .map(|(n, m)| (m.price_prompt_per_mtok + m.price_completion_per_mtok, n))
            .collect();
        priced.sort_by(|a, b| a.0.total_cmp(&b.0));
        self.agent_models = if models.len() > 1 {
            priced.into_iter().map(|(_, n)| n.to_string()).collect()
        } else {
            Vec::new()
        };
        self.env
            .add_global("agent_models", minijinja::Value::from(self.agent_models.clone()));
        self
    }

    pub fn agent_models(&self) -> &[String] {
        &self.agent_models
    }

    /// A seed's source with its `{{ answer.* }}` placeholders filled in. They stand inside
    /// string literals, so the file is valid Python as it is stored. A source without one is
    /// returned unchanged, so the braces of a user's own f-strings are never read as a
    /// template.
    pub fn render_seed(&self, name: &str, source: &str) -> Result<String> {
        if !source.contains("{{ answer.") {
            return Ok(source.to_string());
        }
        self.env
            .render_str(source, minijinja::context! {})
            .with_context(|| format!("seed {name} failed to render"))
    }

    pub fn render<S: Serialize>(&self, name: &str, ctx: S) -> Result<String> {
        let t = self
            .env
            .get_template(name)
            .with_context(|| format!("template {name} is missing"))?;
        t.render(minijinja::value::Serde(ctx))
            .with_context(|| format!("template {name} failed to render"))
    }

    /// Renders `file` for a proposal `kind` in `domain`, taking the most specific template
    /// that exists: `{kind}/{domain}/{file}`, `{kind}/{file}`, then the `rewrite/` ones. So a
    /// domain or a kind overrides only the prompts it needs to.
    pub fn render_for<S: Serialize>(&self, kind: &str, domain: &str, file: &str, ctx: S) -> Result<String> {
        let candidates = [
            format!("{kind}/{domain}/{file}"),
            format!("{kind}/{file}"),
            format!("rewrite/{domain}/{file}"),
            format!("rewrite/{file}"),
        ];
        let name = candidates
            .iter()
            .find(|n| self.env.get_template(n).is_ok())
            .with_context(|| format!("no template for {kind}/{file} (looked for {})", candidates.join(", ")))?;
        self.render(name, ctx)
    }

    /// A plain data file under `templates/` (e.g. the instruction bank), one entry a line,
    /// for this run's answer format. A line may start with a tag, `[number]`, `[other]` (any
    /// answer but a number) or `[closed]` (a letter or a label), and is kept only for such
    /// answers; `{{ answer.* }}` in a line is filled in.
    pub fn lines(&self, name: &str) -> Vec<String> {
        let text = crate::assets::text(&crate::assets::TEMPLATES, name).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .filter_map(|line| {
                let (fits, rest) = match line.split_once("] ") {
                    Some(("[number", rest)) => (self.answer.kind == crate::domain::AnswerKind::Number, rest),
                    Some(("[other", rest)) => (self.answer.kind != crate::domain::AnswerKind::Number, rest),
                    Some(("[closed", rest)) => (self.answer.is_closed(), rest),
                    _ => (true, line),
                };
                fits.then(|| {
                    self.env
                        .render_str(rest, minijinja::context! {})
                        .unwrap_or_else(|_| rest.to_string())
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The meta-model hears about guards only when the experiment has them, and then sees the
    /// guarded-call API and the agent contract itself.
    #[test]
    fn proposal_prompts_describe_the_guards() {
        let t = Templates::embedded().unwrap();
        let ctx = |guards: serde_json::Value| serde_json::json!({"domain": {"description": "d"}, "context": [], "failures": [], "guards": guards});
        for kind in ["rewrite", "diff", "crossover"] {
            let plain = t
                .render(&format!("{kind}/propose.j2"), ctx(serde_json::Value::Null))
                .unwrap();
            // `llm`'s own documentation names its `contract` parameter; the guards section
            // comes only with guards.
            assert!(!plain.contains("# Contracts in this experiment"), "{kind}: {plain}");
            let guarded = t
                .render(
                    &format!("{kind}/propose.j2"),
                    ctx(serde_json::json!({"require_call_contracts": true, "allowed_imports": ["re"], "agent_contract": "[budgets]\nllm_calls = 3"})),
                )
                .unwrap();
            for needle in [
                "contract=\"<id>\"",
                "Every `llm()` call must name a contract",
                "re (and metaforge)",
                "llm_calls = 3",
            ] {
                assert!(guarded.contains(needle), "{kind} lacks {needle:?}:\n{guarded}");
            }
        }
    }
}
