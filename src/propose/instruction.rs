//! The one place the small model helps the `operators` proposer: it rewrites ONE instruction
//! string of the parent (a module-level `*INSTRUCTION*` constant), and the rest of the program
//! stays as it was. Small models cannot write agent code but can rephrase a prompt; this
//! gives the offline search a source of new instructions beyond the fixed bank.

use rand::seq::IndexedRandom;
use rand::RngCore;
use serde_json::json;

use super::operators::{instruction_constants, set_string_constant};
use super::{Proposal, Templates};
use crate::candidate::Candidate;
use crate::llm::{CallParams, Gateway, Message};

/// Why an instruction rewrite produced nothing, with the prompt and reply to store.
pub struct InstructionFailure {
    pub reason: String,
    pub prompt: Option<String>,
    pub reply: Option<String>,
    /// The model call failed (as opposed to an unusable reply).
    pub llm_error: bool,
}

/// Longest instruction accepted from the model, in characters.
const MAX_INSTRUCTION: usize = 400;

pub fn propose(
    rng: &mut dyn RngCore,
    gateway: &Gateway,
    templates: &Templates,
    parent: &Candidate,
    domain_description: &str,
    sample_index: u32,
) -> anyhow::Result<Result<Proposal, InstructionFailure>> {
    let constants = instruction_constants(&parent.code);
    let Some((name, current)) = constants.choose(rng).cloned() else {
        return Ok(Err(InstructionFailure {
            reason: "the parent has no module-level *INSTRUCTION* string to rewrite".into(),
            prompt: None,
            reply: None,
            llm_error: false,
        }));
    };
    let prompt = templates.render(
        "operators/rewrite_instruction.j2",
        json!({"instruction": current, "domain": {"description": domain_description}}),
    )?;
    let req = gateway.request(
        vec![Message::new("user", prompt.clone())],
        CallParams::default(),
        sample_index,
    );
    let reply = match gateway.complete(&req) {
        Ok(r) => r.text,
        Err(e) => {
            return Ok(Err(InstructionFailure {
                reason: e.to_string(),
                prompt: Some(prompt),
                reply: None,
                llm_error: true,
            }))
        }
    };
    let fail = |reason: String| InstructionFailure {
        reason,
        prompt: Some(prompt.clone()),
        reply: Some(reply.clone()),
        llm_error: false,
    };
    let Some(new) = first_instruction_line(&reply) else {
        return Ok(Err(fail("the reply holds no instruction line".into())));
    };
    if new == current {
        return Ok(Err(fail("the model returned the instruction unchanged".into())));
    }
    let Some(code) = set_string_constant(&parent.code, &name, &new) else {
        return Ok(Err(fail(format!("cannot replace {name} in the parent"))));
    };
    let short: String = new.chars().take(40).collect();
    Ok(Ok(Proposal {
        kind: "op:llm_instruction".into(),
        name: format!("{} (instr: {short}…)", parent.name.chars().take(60).collect::<String>()),
        thought: format!("llm_instruction: {name} := {new:?}"),
        code,
        parents: vec![parent.id.clone()],
        prompt: Some(prompt),
        reply: Some(reply),
    }))
}

/// The first line of the reply that reads as an instruction: not empty, not a fence or a
/// label, quotes and list markers removed, bounded in length.
fn first_instruction_line(reply: &str) -> Option<String> {
    reply
        .lines()
        .map(|l| l.trim().trim_start_matches(['-', '*', '>', ' ']).trim())
        .map(|l| {
            l.strip_prefix("New instruction:")
                .or_else(|| l.strip_prefix("Instruction:"))
                .unwrap_or(l)
                .trim()
                .trim_matches(['"', '\'', '`'])
                .trim()
        })
        .find(|l| l.len() >= 8 && !l.starts_with("```"))
        .map(|l| l.chars().take(MAX_INSTRUCTION).collect())
}

#[cfg(test)]
mod tests {
    use super::first_instruction_line;

    #[test]
    fn reads_the_instruction_out_of_chatty_replies() {
        assert_eq!(
            first_instruction_line("New instruction: \"Give only the final number.\"\nThis is better because..."),
            Some("Give only the final number.".into())
        );
        assert_eq!(
            first_instruction_line("\n```\n- Solve it, then reply with the number.\n```"),
            Some("Solve it, then reply with the number.".into())
        );
        assert_eq!(first_instruction_line("ok\n\n"), None);
    }
}
