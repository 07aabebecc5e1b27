//! Which meta-model writes a proposal, when `[models.meta]` holds several.
//!
//! Why a bandit of its own, drawn after the proposer's (rather than arms of proposer kind ×
//! model):
//! - operators call no model, so most proposer arms have no model to pair with;
//! - a model's rate of improving programs is learnt from all its proposals, whatever kind
//!   they were, so credit gathers as many times faster as there are LLM kinds;
//! - its cost is the model's own spend on the proposal (dollars when any meta-model has a
//!   price, else tokens), which is what choosing a model changes; the proposer's bandit
//!   charges evaluation calls, which are the same whichever model wrote the program.
//!
//! What it gives up: a model that is good at one kind and bad at another is credited with
//! its average. The counts come from the `credit` events (`model`, `model_tokens`,
//! `model_cost_usd`), so a resumed or merged run continues with the same credit, and the
//! draw uses the step's own generator, so it is a function of (run seed, step, archive).

use std::collections::BTreeMap;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

use super::bandit::{self, ArmStats};
use crate::config::{Bandit, ModelSet};
use crate::llm::Gateways;

/// The model chosen, and the draws that chose it (None when there was no choice to make).
pub(super) struct ModelPick {
    pub name: String,
    pub draws: Option<Value>,
}

/// What a model's proposals are charged: micro-dollars when any meta-model has a price,
/// else tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Charge {
    MicroUsd,
    Tokens,
}

impl Charge {
    pub(super) fn of(meta: &Gateways) -> Self {
        if meta.iter().any(|(_, g)| g.priced()) {
            Charge::MicroUsd
        } else {
            Charge::Tokens
        }
    }
}

/// Each model's proposals, improvements, spend and gains, from `credit` events.
pub(super) fn tally(events: &[(Option<u64>, Value)], charge: Charge) -> BTreeMap<String, ArmStats> {
    let mut stats = BTreeMap::<String, ArmStats>::new();
    for (_, e) in events {
        let Some(model) = e["model"].as_str() else { continue };
        let cost = match charge {
            Charge::MicroUsd => (e["model_cost_usd"].as_f64().unwrap_or(0.0) * 1e6).round() as u64,
            Charge::Tokens => e["model_tokens"].as_u64().unwrap_or(0),
        };
        stats.entry(model.to_string()).or_default().add(
            e["improved"].as_bool().unwrap_or(false),
            e["gain"].as_f64().unwrap_or(0.0),
            cost,
        );
    }
    stats
}

/// Picks the model for one proposal among those whose own caps are not spent (all of them
/// when every one is, so the call fails naming the cap): by weight under `bandit = "fixed"`,
/// else by cost-aware Thompson sampling over the credit so far. A single candidate draws
/// nothing, so a one-model run makes the same draws as before models could be several.
pub(super) fn choose(
    meta: &Gateways,
    set: &ModelSet,
    rule: Bandit,
    events: &[(Option<u64>, Value)],
    rng: &mut ChaCha8Rng,
) -> ModelPick {
    let open: Vec<String> = meta
        .iter()
        .filter(|(_, g)| !g.exhausted())
        .map(|(n, _)| n.to_string())
        .collect();
    let names = if open.is_empty() { meta.names() } else { open };
    if names.len() == 1 {
        return ModelPick {
            name: names[0].clone(),
            draws: None,
        };
    }
    match rule {
        Bandit::Fixed => {
            let weights: Vec<f64> = names.iter().map(|n| set.get(n).map_or(0.0, |m| m.weight)).collect();
            let total: f64 = weights.iter().sum();
            let mut x = rng.random_range(0.0..total.max(f64::MIN_POSITIVE));
            let mut pick = names.len() - 1;
            for (i, w) in weights.iter().enumerate() {
                if x < *w {
                    pick = i;
                    break;
                }
                x -= w;
            }
            ModelPick {
                name: names[pick].clone(),
                draws: None,
            }
        }
        Bandit::Thompson => {
            let stats = tally(events, Charge::of(meta));
            let (pick, values) = bandit::choose(&names, &stats, rng);
            let draws: serde_json::Map<String, Value> = names
                .iter()
                .zip(&values)
                .map(|(n, v)| (n.clone(), json!((v * 1e4).round() / 1e4)))
                .collect();
            ModelPick {
                name: names[pick].clone(),
                draws: Some(Value::Object(draws)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(model: &str, improved: bool, tokens: u64, cost: f64) -> (Option<u64>, Value) {
        (
            Some(1),
            json!({"kind": "rewrite", "model": model, "improved": improved, "gain": if improved { 0.1 } else { 0.0 }, "model_tokens": tokens, "model_cost_usd": cost}),
        )
    }

    #[test]
    fn the_tally_charges_dollars_or_tokens_and_skips_steps_without_a_model() {
        let events = vec![
            event("cheap", true, 100, 0.001),
            event("cheap", false, 100, 0.001),
            event("strong", true, 1000, 0.05),
            (Some(2), json!({"kind": "op:add_stop", "improved": true, "calls": 4})),
        ];
        let usd = tally(&events, Charge::MicroUsd);
        assert_eq!(usd.len(), 2, "the operator step has no model");
        assert_eq!(
            (usd["cheap"].proposals, usd["cheap"].improved, usd["cheap"].calls),
            (2, 1, 2000)
        );
        assert_eq!(usd["strong"].calls, 50_000);
        let tokens = tally(&events, Charge::Tokens);
        assert_eq!(tokens["strong"].calls, 1000);
    }
}
