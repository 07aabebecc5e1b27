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
//! Before a model has written anything, its expected cost comes from its configured price
//! (`expected_costs`), so the cheap model is tried first and the dear one when the cheap
//! one's record says it is worth the price.

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
            let charge = Charge::of(meta);
            let stats = tally(events, charge);
            let costs = expected_costs(&names, set, &stats, events, charge);
            let values: Vec<f64> = names
                .iter()
                .zip(&costs)
                .map(|(n, cost)| {
                    let s = stats.get(n).copied().unwrap_or_default();
                    bandit::beta(1 + s.improved, 1 + s.proposals - s.improved, rng) / (cost + 1.0)
                })
                .collect();
            let pick = (0..names.len())
                .max_by(|&a, &b| values[a].total_cmp(&values[b]))
                .unwrap_or(0);
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

/// What one proposal by each model is expected to cost, in the charge's unit: its own mean
/// so far, or, before it has written any, the tokens an average proposal has taken (a
/// thousand before any has) at its own price. Why a prior from the price: the config says
/// what a model costs before it has written anything, and trying the dear one first to
/// learn what the cheap one would have shown for a twentieth is money spent for nothing.
fn expected_costs(
    names: &[String],
    set: &ModelSet,
    own: &BTreeMap<String, ArmStats>,
    events: &[(Option<u64>, Value)],
    charge: Charge,
) -> Vec<f64> {
    let tokens = match charge {
        Charge::Tokens => own.clone(),
        Charge::MicroUsd => tally(events, Charge::Tokens),
    };
    let (proposals, spent) = tokens
        .values()
        .fold((0u64, 0u64), |(p, t), s| (p + s.proposals, t + s.calls));
    let mean_tokens = if proposals > 0 {
        spent as f64 / proposals as f64
    } else {
        1000.0
    };
    names
        .iter()
        .map(|n| match own.get(n) {
            Some(s) if s.proposals > 0 => s.calls as f64 / s.proposals as f64,
            _ => match charge {
                // Dollars a million tokens are micro-dollars a token.
                Charge::MicroUsd => set.get(n).map_or(0.0, |m| {
                    mean_tokens * (m.price_prompt_per_mtok + m.price_completion_per_mtok) / 2.0
                }),
                Charge::Tokens => mean_tokens,
            },
        })
        .collect()
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
    fn before_any_proposal_the_price_decides_the_expected_cost() {
        let models: crate::config::Models = toml::from_str(
            "[meta.dear]\nprice_prompt_per_mtok = 20.0\nprice_completion_per_mtok = 20.0\n[meta.cheap]\nprice_prompt_per_mtok = 1.0\nprice_completion_per_mtok = 1.0\n",
        )
        .unwrap();
        let names = vec!["dear".to_string(), "cheap".to_string()];
        let none = expected_costs(&names, &models.meta, &BTreeMap::new(), &[], Charge::MicroUsd);
        assert_eq!(none, [20_000.0, 1_000.0], "a thousand tokens at each price");
        // Once the cheap one has written two 500-token proposals, the dear one's prior uses
        // that mean, and the cheap one its own record.
        let events = vec![event("cheap", true, 500, 0.0005), event("cheap", false, 500, 0.0005)];
        assert_eq!(
            expected_costs(
                &names,
                &models.meta,
                &tally(&events, Charge::MicroUsd),
                &events,
                Charge::MicroUsd
            ),
            [10_000.0, 500.0]
        );
        assert_eq!(
            expected_costs(
                &names,
                &models.meta,
                &tally(&events, Charge::Tokens),
                &events,
                Charge::Tokens
            ),
            [500.0, 500.0]
        );
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
