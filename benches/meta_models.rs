//! Dollars a search spends on its meta-models to reach its first improvement, the
//! cost-aware bandit over models against fixed equal weights: `cargo bench --bench
//! meta_models`.
//!
//! The two-endpoint setup of `tests/meta_models.rs` (`tests/common/two_meta_models.rs`):
//! SCRIPTED models behind OpenAI-compatible endpoints on 127.0.0.1, "good" at $1 and
//! "costly" (never improves) at $20 a million tokens. A figure about the choice between
//! models, not about any model. For each of K run seeds, both rules run 12 proposal steps;
//! the bench prints the dollars until the first improvement, the dollars over all steps,
//! the improvements, and the ratios, mean over seeds.

#[path = "../tests/common/mod.rs"]
#[allow(dead_code)]
mod common;

use common::two_meta_models::{experiment, model_credit, start};

const K: u64 = 6;
const STEPS: u32 = 12;

fn main() {
    let mut sums = [(0.0, 0.0, 0.0); 2];
    println!(
        "{:<10} {:>5} {:>22} {:>14} {:>9} {:>13}",
        "rule", "seed", "USD to 1st improvement", "USD, all steps", "improved", "costly steps"
    );
    for seed in 1..=K {
        for (i, rule) in ["thompson", "fixed"].into_iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let models = start(dir.path());
            let exp = experiment(dir.path(), &models, seed, rule, STEPS, "");
            let db = dir.path().join("run.db");
            common::run_to_end(&exp, &db);
            let credit = model_credit(&db);
            let mut spent = 0.0;
            let mut first = None;
            for (_, improved, cost) in &credit {
                spent += cost;
                if *improved && first.is_none() {
                    first = Some(spent);
                }
            }
            let improved = credit.iter().filter(|c| c.1).count();
            let costly = credit.iter().filter(|c| c.0 == "costly").count();
            let first = first.unwrap_or(spent);
            println!("{rule:<10} {seed:>5} {first:>22.6} {spent:>14.6} {improved:>9} {costly:>13}");
            sums[i].0 += first;
            sums[i].1 += spent;
            sums[i].2 += improved as f64;
        }
    }
    let mean = |i: usize| (sums[i].0 / K as f64, sums[i].1 / K as f64, sums[i].2 / K as f64);
    let (b, f) = (mean(0), mean(1));
    println!(
        "mean over {K} seeds: USD to the first improvement, bandit {:.6} vs fixed {:.6} ({:.2}x); USD over {STEPS} steps {:.6} vs {:.6} ({:.2}x); improvements {:.1} vs {:.1}; improvements per dollar {:.0} vs {:.0} ({:.2}x)",
        b.0,
        f.0,
        f.0 / b.0,
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
