//! Dollars a search spends on its meta-models to reach its first improvement, the
//! cost-aware bandit over models against fixed equal weights: `cargo bench --bench
//! meta_models`.
//!
//! The two-endpoint setup of `tests/meta_models.rs` (`tests/common/two_meta_models.rs`):
//! SCRIPTED models behind OpenAI-compatible endpoints on 127.0.0.1: "good" improves its
//! parent, "useless" never does, priced two ways (the useless one at 20x the good one's
//! price, then at a third). A figure about the choice between models, not about any model.
//! For each of K run seeds, both rules run 12 proposal steps (36 as well for the second); the bench prints the dollars
//! until the first improvement, the dollars over all steps, the improvements, and the
//! ratios, mean over seeds.

#[path = "../tests/common/mod.rs"]
mod common;

use common::two_meta_models::{experiment, model_credit, start, Prices, USELESS_CHEAP, USELESS_DEAR};

const K: u64 = 6;

fn main() {
    for (setting, prices, steps) in [
        ("useless model 20x dearer", USELESS_DEAR, 12),
        ("useless model 3x cheaper", USELESS_CHEAP, 12),
        ("useless model 3x cheaper", USELESS_CHEAP, 36),
    ] {
        compare(setting, prices, steps);
    }
}

fn compare(setting: &str, prices: Prices, steps: u32) {
    let mut sums = [(0.0, 0.0, 0.0); 2];
    let mut fifth = [0.0; 2];
    println!(
        "{setting} (good ${}/Mtok, useless ${}/Mtok), {steps} steps:",
        prices.good, prices.useless
    );
    println!(
        "{:<10} {:>5} {:>22} {:>18} {:>14} {:>9} {:>14}",
        "rule", "seed", "USD to 1st improvement", "USD to 5th", "USD, all steps", "improved", "useless steps"
    );
    for seed in 1..=K {
        for (i, rule) in ["thompson", "fixed"].into_iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let models = start(dir.path());
            let exp = experiment(dir.path(), &models, seed, rule, steps, prices, "");
            let db = dir.path().join("run.db");
            common::run_to_end(&exp, &db);
            let credit = model_credit(&db);
            let mut spent = 0.0;
            let mut first = None;
            let mut five = None;
            let mut count = 0;
            for (_, improved, cost) in &credit {
                spent += cost;
                count += usize::from(*improved);
                if *improved && first.is_none() {
                    first = Some(spent);
                }
                if count == 5 && five.is_none() {
                    five = Some(spent);
                }
            }
            // A run that never reached a fifth improvement is charged all it spent.
            let five = five.unwrap_or(spent);
            let improved = credit.iter().filter(|c| c.1).count();
            let useless = credit.iter().filter(|c| c.0 == "useless").count();
            let first = first.unwrap_or(spent);
            println!("{rule:<10} {seed:>5} {first:>22.6} {five:>18.6} {spent:>14.6} {improved:>9} {useless:>14}");
            fifth[i] += five;
            sums[i].0 += first;
            sums[i].1 += spent;
            sums[i].2 += improved as f64;
        }
    }
    let mean = |i: usize| (sums[i].0 / K as f64, sums[i].1 / K as f64, sums[i].2 / K as f64);
    let (b, f) = (mean(0), mean(1));
    println!(
        "{setting}, {steps} steps, mean over {K} seeds: USD to the first improvement, bandit {:.6} vs fixed {:.6} (fixed/bandit {:.2}x); to the fifth {:.6} vs {:.6} ({:.2}x); USD over all steps {:.6} vs {:.6} ({:.2}x); improvements {:.1} vs {:.1}; improvements per dollar {:.0} vs {:.0} ({:.2}x)\n",
        b.0,
        f.0,
        f.0 / b.0,
        fifth[0] / K as f64,
        fifth[1] / K as f64,
        fifth[1] / fifth[0],
        b.1,
        f.1,
        f.1 / b.1,
        b.2,
        f.2,
        b.2 / b.1,
        f.2 / f.1,
        (b.2 / b.1) / (f.2 / f.1)
    );
}
