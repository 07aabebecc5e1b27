//! Credit assignment over proposers: which operator or proposal kind to try next.
//!
//! Why: operators differ by orders of magnitude in how often they improve a program, and
//! which ones work depends on the model and the domain, which nothing can know in advance.
//! Each arm (an operator, or an LLM proposal kind) keeps a count of proposals and of
//! improvements (proposals that beat their parent on the whole validation pool); the step
//! draws each arm's improvement rate from its Beta posterior (Thompson sampling) and divides
//! it by the arm's cost relative to the others (model calls per trial: the proposal's own
//! calls and its evaluation up to the first look), so the choice maximises expected
//! improvements per call spent on trying. The counts are read from the archive's `credit`
//! events, one per proposal step, so a resumed or moved run continues with the same credit,
//! and the choice is a function of (run seed, step, archive) like every other one.
//!
//! A first round tries every arm once before any arm twice (`proposers.untried_first`), the
//! blocks made for the domain's answer format before the general ones. Why: a search makes
//! about as many proposals as there are arms, and the draw alone lets an arm that failed
//! cheaply outbid one never tried, so whether the one block that matters is tried at all
//! was luck. Racing makes failures cheap, so a round costs little; and a block that exists
//! only for this kind of answer is the likeliest to change what the agent answers.

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;
use serde::Serialize;

/// What one arm has earned so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ArmStats {
    pub proposals: u64,
    pub improved: u64,
    /// Model calls spent by its proposals: the proposal's own and its evaluation's (for the
    /// draw, only the evaluation up to its first look: what trying the arm costs).
    pub calls: u64,
    /// Sum of the paired gains over the parent of its improvements.
    pub gain: f64,
}

impl ArmStats {
    pub fn add(&mut self, improved: bool, gain: f64, calls: u64) {
        self.proposals += 1;
        self.calls += calls;
        if improved {
            self.improved += 1;
            self.gain += gain;
        }
    }
}

/// Which calls a tally charges an arm: every call its proposals spent (what `status`
/// reports), or only their trials' (what the draw divides by).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    AllCalls,
    TrialCalls,
}

/// Each arm's stats from the `credit` events of a run (`Archive::events("credit")`).
pub fn tally(events: &[(Option<u64>, serde_json::Value)], cost: Cost) -> BTreeMap<String, ArmStats> {
    let mut stats = BTreeMap::<String, ArmStats>::new();
    for (_, e) in events {
        let calls = match cost {
            Cost::AllCalls => e["calls"].as_u64(),
            Cost::TrialCalls => e["trial_calls"].as_u64().or(e["calls"].as_u64()),
        };
        stats
            .entry(arm_of(e["kind"].as_str().unwrap_or("op:none")).to_string())
            .or_default()
            .add(
                e["improved"].as_bool().unwrap_or(false),
                e["gain"].as_f64().unwrap_or(0.0),
                calls.unwrap_or(0),
            );
    }
    stats
}

/// The arm a proposal is credited to: its kind without the debug-round suffix.
pub fn arm_of(kind: &str) -> &str {
    match kind.find(":debug") {
        Some(i) => &kind[..i],
        None => kind,
    }
}

/// A Beta(a, b) draw for whole a, b ≥ 1: the a-th smallest of a + b − 1 uniforms.
pub(super) fn beta(a: u64, b: u64, rng: &mut impl Rng) -> f64 {
    let mut u: Vec<f64> = (0..a + b - 1).map(|_| rng.random::<f64>()).collect();
    u.sort_by(f64::total_cmp);
    u[(a - 1) as usize]
}

/// The arms a step has already tried: each step's arm, and the operator it fell back to.
/// An arm that was drawn but proposed nothing counts as tried, or a round over untried arms
/// would draw it again every step.
pub fn tried(events: &[(Option<u64>, serde_json::Value)]) -> BTreeSet<String> {
    events
        .iter()
        .flat_map(|(_, e)| [e["arm"].as_str(), e["kind"].as_str()])
        .flatten()
        .map(|a| arm_of(a).to_string())
        .collect()
}

/// One arm a step may draw.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    pub name: String,
    /// Made for the domain's kind of answer (a calculator on numbers, a choice block on
    /// letters and labels), rather than for any task.
    pub specific: bool,
}

/// Which arms the draw may pick: in the first round the untried ones, those made for the
/// answer format first; after it, all.
fn pool(arms: &[Offer], tried: Option<&BTreeSet<String>>) -> Vec<usize> {
    let all: Vec<usize> = (0..arms.len()).collect();
    let Some(tried) = tried else { return all };
    let untried: Vec<usize> = all
        .iter()
        .copied()
        .filter(|&i| !tried.contains(&arms[i].name))
        .collect();
    let specific: Vec<usize> = untried.iter().copied().filter(|&i| arms[i].specific).collect();
    [specific, untried, all]
        .into_iter()
        .find(|p| !p.is_empty())
        .unwrap_or_default()
}

/// Draws one arm of `arms` by cost-aware Thompson sampling, within the first round's pool
/// when `tried` is given; returns its index and each arm's drawn value (improvements per
/// relative call), which the step records.
pub fn choose(
    arms: &[Offer],
    stats: &BTreeMap<String, ArmStats>,
    tried: Option<&BTreeSet<String>>,
    rng: &mut impl Rng,
) -> (usize, Vec<f64>) {
    let (props, calls) = stats
        .values()
        .fold((0u64, 0u64), |(p, c), s| (p + s.proposals, c + s.calls));
    let mean_calls = if props > 0 { calls as f64 / props as f64 } else { 0.0 };
    let values: Vec<f64> = arms
        .iter()
        .map(|arm| {
            let s = stats.get(&arm.name).copied().unwrap_or_default();
            let theta = beta(1 + s.improved, 1 + s.proposals - s.improved, rng);
            let own = if s.proposals > 0 {
                s.calls as f64 / s.proposals as f64
            } else {
                mean_calls
            };
            theta * (mean_calls + 1.0) / (own + 1.0)
        })
        .collect();
    let best = pool(arms, tried)
        .into_iter()
        .max_by(|&a, &b| values[a].total_cmp(&values[b]))
        .unwrap_or(0);
    (best, values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn offers(names: &[&str]) -> Vec<Offer> {
        names
            .iter()
            .map(|n| Offer {
                name: n.to_string(),
                specific: false,
            })
            .collect()
    }

    fn arms() -> Vec<Offer> {
        offers(&["op:a", "op:b", "op:c"])
    }

    #[test]
    fn the_arm_that_improves_is_chosen_most() {
        let mut stats = BTreeMap::new();
        stats.insert(
            "op:a".to_string(),
            ArmStats {
                proposals: 8,
                improved: 4,
                calls: 800,
                gain: 0.4,
            },
        );
        stats.insert(
            "op:b".to_string(),
            ArmStats {
                proposals: 8,
                improved: 0,
                calls: 800,
                gain: 0.0,
            },
        );
        stats.insert(
            "op:c".to_string(),
            ArmStats {
                proposals: 8,
                improved: 0,
                calls: 800,
                gain: 0.0,
            },
        );
        let mut picks = [0; 3];
        for seed in 0..200 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            picks[choose(&arms(), &stats, None, &mut rng).0] += 1;
        }
        assert!(picks[0] > 150, "{picks:?}");
        assert!(picks[1] + picks[2] > 0, "the others are still explored: {picks:?}");
    }

    #[test]
    fn at_equal_success_the_cheaper_arm_wins() {
        let mut stats = BTreeMap::new();
        stats.insert(
            "op:a".to_string(),
            ArmStats {
                proposals: 10,
                improved: 3,
                calls: 5000,
                gain: 0.3,
            },
        );
        stats.insert(
            "op:b".to_string(),
            ArmStats {
                proposals: 10,
                improved: 3,
                calls: 500,
                gain: 0.3,
            },
        );
        let two = offers(&["op:a", "op:b"]);
        let mut b = 0;
        for seed in 0..200 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            b += usize::from(choose(&two, &stats, None, &mut rng).0 == 1);
        }
        assert!(b > 150, "{b}");
    }

    #[test]
    fn untried_arms_are_drawn_from_the_prior_and_the_draw_is_reproducible() {
        let stats = BTreeMap::new();
        let mut seen = [false; 3];
        for seed in 0..50 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            seen[choose(&arms(), &stats, None, &mut rng).0] = true;
        }
        assert_eq!(seen, [true; 3]);
        let draw = |seed| choose(&arms(), &stats, None, &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        assert_eq!(draw(7), draw(7));
    }

    /// The case the first round is for: an arm that failed cheaply outbids one never tried
    /// under the draw alone, and the round tries the untried one anyway.
    #[test]
    fn the_first_round_tries_every_arm_once_before_any_twice() {
        let mut stats = BTreeMap::new();
        for arm in ["op:a", "op:b"] {
            stats.insert(
                arm.to_string(),
                ArmStats {
                    proposals: 1,
                    improved: 0,
                    calls: 10,
                    gain: 0.0,
                },
            );
        }
        stats.insert(
            "op:d".to_string(),
            ArmStats {
                proposals: 1,
                improved: 0,
                calls: 1000,
                gain: 0.0,
            },
        );
        let four = offers(&["op:a", "op:b", "op:c", "op:d"]);
        let tried: BTreeSet<String> = ["op:a", "op:b", "op:d"].map(String::from).into();
        let (mut plain, mut round) = (0, 0);
        for seed in 0..200 {
            let rng = || rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            plain += usize::from(choose(&four, &stats, None, &mut rng()).0 == 2);
            round += usize::from(choose(&four, &stats, Some(&tried), &mut rng()).0 == 2);
        }
        assert!(
            plain < 150,
            "without the round the cheap failures often outbid it: {plain}"
        );
        assert_eq!(round, 200);
    }

    #[test]
    fn the_round_tries_blocks_made_for_the_answer_format_first_then_opens_up() {
        let mut four = offers(&["op:a", "op:b", "op:c", "op:d"]);
        four[3].specific = true;
        let mut tried = BTreeSet::new();
        let mut order = Vec::new();
        for step in 0..4 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(step);
            let pick = choose(&four, &BTreeMap::new(), Some(&tried), &mut rng).0;
            order.push(four[pick].name.clone());
            tried.insert(four[pick].name.clone());
        }
        assert_eq!(order[0], "op:d", "{order:?}");
        let once: BTreeSet<&String> = order.iter().collect();
        assert_eq!(once.len(), 4, "each arm once: {order:?}");
        let mut seen = BTreeSet::new();
        for seed in 0..50 {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            seen.insert(choose(&four, &BTreeMap::new(), Some(&tried), &mut rng).0);
        }
        assert_eq!(seen.len(), 4, "after the round every arm is drawn again");
    }

    #[test]
    fn an_arm_drawn_that_fell_back_counts_as_tried() {
        let events = vec![
            (
                Some(3),
                serde_json::json!({"arm": "op:a", "kind": "op:b", "improved": false, "calls": 10}),
            ),
            (
                Some(4),
                serde_json::json!({"arm": "rewrite", "kind": "rewrite:debug1", "improved": false, "calls": 10}),
            ),
        ];
        let want: BTreeSet<String> = ["op:a", "op:b", "rewrite"].map(String::from).into();
        assert_eq!(tried(&events), want);
    }

    #[test]
    fn a_tally_charges_all_calls_or_the_trials_and_joins_debug_rounds() {
        let events = vec![
            (
                Some(3),
                serde_json::json!({"kind": "op:a", "improved": true, "gain": 0.2, "calls": 100, "trial_calls": 10}),
            ),
            (
                Some(4),
                serde_json::json!({"kind": "rewrite:debug1", "improved": false, "gain": 0.0, "calls": 7}),
            ),
        ];
        let all = tally(&events, Cost::AllCalls);
        let trial = tally(&events, Cost::TrialCalls);
        assert_eq!((all["op:a"].calls, trial["op:a"].calls), (100, 10));
        assert_eq!((all["op:a"].improved, all["op:a"].gain), (1, 0.2));
        assert_eq!(
            trial["rewrite"].calls, 7,
            "an event without trial calls charges its calls"
        );
    }

    #[test]
    fn debug_rounds_credit_their_kind() {
        assert_eq!(arm_of("rewrite:debug1"), "rewrite");
        assert_eq!(arm_of("op:wrap_vote"), "op:wrap_vote");
    }
}
