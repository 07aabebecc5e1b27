//! Paired comparison of two programs on the same tasks.
//!
//! Why paired: two agents run on the same tasks share the tasks' difficulty, so their
//! per-task differences vary far less than either score does. Comparing the means of two
//! independent intervals (what a leaderboard shows) needs several times more tasks to see the
//! same gain. The test is exact, under "neither is better": each task's difference was as
//! likely to have had the other sign. When every score is 0 or 1 that is McNemar's test (each
//! task on which exactly one of them succeeds goes either way with probability one half).
//! When scores are graded (a memory design's episode gains, an F1), it is the paired
//! permutation test on the differences themselves: counting only who scored higher would
//! weigh a task lost by a quarter the same as one won by a whole point, and disagree with the
//! interval, which is of the mean difference.

use serde::Serialize;

use super::stats::{bootstrap_ci, mean};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Paired {
    /// Tasks both programs ran.
    pub n: usize,
    /// Mean of (a − b) over those tasks.
    pub diff: f64,
    /// Paired-bootstrap 95% interval of `diff`.
    pub ci_lo: f64,
    pub ci_hi: f64,
    /// Tasks where a scored higher, and where b did.
    pub wins: usize,
    pub losses: usize,
    /// Exact one-sided p-value of "a is no better than b".
    pub p_better: f64,
    /// Exact two-sided p-value.
    pub p_two_sided: f64,
    /// Which test gave the p-values.
    pub test: PairedTest,
}

/// The exact test behind a paired comparison's p-values (see the module doc).
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PairedTest {
    /// Every difference is -1, 0 or 1: McNemar's test on the tasks where they differ.
    McNemar,
    /// Graded differences: the permutation (sign-flip) test on their sizes.
    Permutation,
}

impl PairedTest {
    /// How reports name it.
    pub fn label(self) -> &'static str {
        match self {
            PairedTest::McNemar => "McNemar",
            PairedTest::Permutation => "paired permutation",
        }
    }
}

/// Per-task differences a − b on the tasks both ran (`(task id, score)` pairs, any order).
pub fn differences(a: &[(String, f64)], b: &[(String, f64)]) -> Vec<f64> {
    let theirs: std::collections::HashMap<&str, f64> = b.iter().map(|(id, s)| (id.as_str(), *s)).collect();
    a.iter()
        .filter_map(|(id, s)| theirs.get(id.as_str()).map(|t| s - t))
        .collect()
}

/// True when every difference is -1, 0 or 1, so McNemar's test applies.
fn all_binary(diffs: &[f64]) -> bool {
    diffs
        .iter()
        .all(|d| [-1.0, 0.0, 1.0].iter().any(|v| (d - v).abs() < 1e-12))
}

impl Paired {
    /// Compares `a` with `b` on the tasks both ran (`(task id, score)` pairs, any order).
    pub fn compare(a: &[(String, f64)], b: &[(String, f64)], bootstrap_samples: usize) -> Self {
        Self::of_diffs(&differences(a, b), bootstrap_samples)
    }

    /// The comparison from per-task differences (a − b).
    pub fn of_diffs(diffs: &[f64], bootstrap_samples: usize) -> Self {
        let wins = diffs.iter().filter(|d| **d > 1e-12).count();
        let losses = diffs.iter().filter(|d| **d < -1e-12).count();
        let (ci_lo, ci_hi) = bootstrap_ci(diffs, bootstrap_samples, 0x9a1_7ed);
        let (test, p_better, p_two_sided) = if all_binary(diffs) {
            (
                PairedTest::McNemar,
                binomial_upper_tail(wins + losses, wins),
                (2.0 * binomial_upper_tail(wins + losses, wins.max(losses))).min(1.0),
            )
        } else {
            let (one, two) = sign_flip_p(diffs);
            (PairedTest::Permutation, one, two)
        };
        Self {
            n: diffs.len(),
            diff: mean(diffs),
            ci_lo,
            ci_hi,
            wins,
            losses,
            p_better,
            p_two_sided,
            test,
        }
    }

    /// "a beats b", "a ties b" or "a loses to b" at level `alpha`, two-sided.
    pub fn verdict(&self, alpha: f64) -> &'static str {
        if self.p_two_sided < alpha && self.diff > 0.0 {
            "beats"
        } else if self.p_two_sided < alpha && self.diff < 0.0 {
            "loses to"
        } else {
            "does not differ significantly from"
        }
    }
}

/// Exact one-sided ("a is no better") and two-sided p-values of the paired permutation test:
/// every assignment of signs to the differences' sizes is equally likely under the null.
/// Sizes are counted on a grid of hundredths (exact for scores in halves, quarters, tenths or
/// hundredths), reduced by their common divisor, and the null distribution of the sum of the
/// positive ones is built by the subset-sum recurrence, one difference at a time. That work
/// is the tasks times the grid points the sizes add up to; past `EXACT_WORK` (a pool of many
/// thousands of graded tasks) the p-values are estimated from `DRAWS` random sign patterns
/// instead, on the sizes themselves, which resolves p down to about 1 / `DRAWS`.
fn sign_flip_p(diffs: &[f64]) -> (f64, f64) {
    let spread: f64 = diffs.iter().map(|d| d.abs()).sum();
    if spread * 100.0 * diffs.len() as f64 > EXACT_WORK {
        return sign_flip_p_drawn(diffs);
    }
    let grid = Grid::of(diffs);
    let chance = grid.positive_sum_chance(0.5);
    let one_sided: f64 = chance[grid.observed..].iter().sum();
    let distance = |k: usize| (2 * k).abs_diff(grid.total);
    let two_sided: f64 = (0..=grid.total)
        .filter(|&k| distance(k) >= distance(grid.observed))
        .map(|k| chance[k])
        .sum();
    (one_sided.min(1.0), two_sided.min(1.0))
}

/// Work (tasks times grid points) past which the permutation test's distribution is not
/// counted exactly.
const EXACT_WORK: f64 = 2e8;

/// The nonzero differences' sizes on a grid of hundredths reduced by their common divisor
/// (`unit` hundredths), and the sum of the positive ones: what the permutation test counts.
struct Grid {
    sizes: Vec<usize>,
    unit: usize,
    total: usize,
    observed: usize,
}

impl Grid {
    fn of(diffs: &[f64]) -> Self {
        fn gcd(a: usize, b: usize) -> usize {
            if b == 0 {
                a
            } else {
                gcd(b, a % b)
            }
        }
        let on_grid = |d: f64| (d.abs() * 100.0).round() as usize;
        let sized: Vec<(usize, bool)> = diffs
            .iter()
            .map(|&d| (on_grid(d), d > 0.0))
            .filter(|(size, _)| *size > 0)
            .collect();
        let unit = sized.iter().fold(0, |g, (size, _)| gcd(g, *size)).max(1);
        let sizes: Vec<usize> = sized.iter().map(|(size, _)| size / unit).collect();
        let observed = sized.iter().filter(|(_, up)| *up).map(|(size, _)| size / unit).sum();
        let total = sizes.iter().sum();
        Self { sizes, unit, total, observed }
    }

    /// `chance[k]`: the probability that the positive differences sum to k when each one is
    /// positive with probability `up` (one half under "neither is better"), built by the
    /// subset-sum recurrence one difference at a time.
    fn positive_sum_chance(&self, up: f64) -> Vec<f64> {
        let mut chance = vec![0.0f64; self.total + 1];
        chance[0] = 1.0;
        let mut reach = 0;
        for &size in &self.sizes {
            reach += size;
            for k in (0..=reach).rev() {
                let with = if k >= size { chance[k - size] } else { 0.0 };
                chance[k] = (1.0 - up) * chance[k] + up * with;
            }
        }
        chance
    }
}

/// Sign patterns drawn for `sign_flip_p` on pools too large to count exactly.
const DRAWS: usize = 10_000;

/// `sign_flip_p` estimated from `DRAWS` seeded random sign patterns: (hits + 1) / (draws + 1),
/// so an estimate is never zero.
fn sign_flip_p_drawn(diffs: &[f64]) -> (f64, f64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5162_f11b);
    let observed: f64 = diffs.iter().sum();
    let slack = 1e-9 * diffs.len() as f64;
    let (mut above, mut beyond) = (0usize, 0usize);
    for _ in 0..DRAWS {
        let drawn: f64 = diffs
            .iter()
            .map(|d| if rng.random::<bool>() { d.abs() } else { -d.abs() })
            .sum();
        above += usize::from(drawn >= observed - slack);
        beyond += usize::from(drawn.abs() >= observed.abs() - slack);
    }
    let p = |hits: usize| (hits + 1) as f64 / (DRAWS + 1) as f64;
    (p(above), p(beyond))
}

/// P(X ≥ k) for X ~ Binomial(n, 1/2), exact (log-space sums; n up to millions).
pub fn binomial_upper_tail(n: usize, k: usize) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n {
        return 0.0;
    }
    let ln_half_n = n as f64 * std::f64::consts::LN_2;
    // ln C(n, i) built up incrementally from ln C(n, k).
    let mut ln_c: f64 = (0..k).map(|i| ((n - i) as f64).ln() - ((i + 1) as f64).ln()).sum();
    let mut total = 0.0;
    for i in k..=n {
        total += (ln_c - ln_half_n).exp();
        if i < n {
            ln_c += ((n - i) as f64).ln() - ((i + 1) as f64).ln();
        }
    }
    total.min(1.0)
}

/// The smallest true mean gain that the paired test of these differences detects, one-sided
/// at `alpha`, with probability `power`: what `status` prints when a search ends without a
/// significant result, to say how large a gain this budget could have shown. On 0/1 scores it
/// is McNemar's on the share of tasks where the two programs differed (at least one in
/// twenty, so that two programs that never differed still get a line). On graded scores it is
/// the permutation test's on the sizes observed, each difference positive with a probability
/// that grows until the test rejects often enough: counting only the share that differed
/// would treat a quarter-point difference as a whole one and overstate the gain needed.
/// None on a pool too large to count exactly.
pub fn detectable_gain(diffs: &[f64], alpha: f64, power: f64) -> Option<f64> {
    let n = diffs.len();
    if n == 0 {
        return None;
    }
    if all_binary(diffs) {
        let differed = diffs.iter().filter(|d| d.abs() > 1e-12).count();
        return detectable_share_gain(n, (differed as f64 / n as f64).max(0.05), alpha, power);
    }
    const ROUNDS: usize = 14;
    let grid = Grid::of(diffs);
    if grid.sizes.is_empty() || (grid.total * grid.sizes.len() * (ROUNDS + 1)) as f64 > EXACT_WORK {
        return None;
    }
    let tail = |chance: &[f64], from: usize| chance[from.min(chance.len())..].iter().sum::<f64>();
    let null = grid.positive_sum_chance(0.5);
    let critical = (0..=grid.total).find(|&k| tail(&null, k) <= alpha)?;
    // Bisection on the probability that a difference is positive.
    let (mut low, mut high) = (0.5f64, 1.0f64);
    for _ in 0..ROUNDS {
        let up = (low + high) / 2.0;
        if tail(&grid.positive_sum_chance(up), critical) >= power {
            high = up;
        } else {
            low = up;
        }
    }
    let spread = (grid.total * grid.unit) as f64 / 100.0;
    Some((2.0 * high - 1.0) * spread / n as f64)
}

/// The sign test's detectable gain (as a share of tasks turned from failure to success, with
/// none turned back) on `n` tasks when a share `discordant` of them differ.
fn detectable_share_gain(n: usize, discordant: f64, alpha: f64, power: f64) -> Option<f64> {
    let m = ((n as f64) * discordant).round() as usize;
    if m == 0 {
        return None;
    }
    // Critical number of wins among m discordant tasks.
    let critical = (0..=m).find(|&k| binomial_upper_tail(m, k) <= alpha)?;
    // Smallest win share q among discordant tasks with P(wins ≥ critical) ≥ power.
    let mut q: f64 = 0.5;
    while q < 1.0 {
        let tail: f64 = (critical..=m)
            .map(|i| {
                let ln_c: f64 = (0..i).map(|j| ((m - j) as f64).ln() - ((j + 1) as f64).ln()).sum();
                (ln_c + i as f64 * q.ln() + (m - i) as f64 * (1.0 - q).max(1e-300).ln()).exp()
            })
            .sum();
        if tail >= power {
            return Some(discordant * (2.0 * q - 1.0));
        }
        q += 0.005;
    }
    Some(discordant)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_tail_matches_hand_computed_values() {
        assert!((binomial_upper_tail(10, 8) - 56.0 / 1024.0).abs() < 1e-12);
        assert_eq!(binomial_upper_tail(5, 0), 1.0);
        assert!((binomial_upper_tail(1, 1) - 0.5).abs() < 1e-12);
        assert!(binomial_upper_tail(2000, 1100) < 1e-5);
    }

    #[test]
    fn graded_differences_are_tested_by_their_sizes() {
        // Sizes in quarters 4, 1, 1; the 8 equally likely sign patterns give positive sums
        // 0, 1, 1, 2, 4, 5, 5, 6: P(sum >= 5) = 3/8; as far from the middle (3) as 5 or
        // further: 0, 1, 1, 5, 5, 6, so 6/8.
        let p = Paired::of_diffs(&[1.0, 0.25, -0.25, 0.0], 200);
        assert_eq!(p.test, PairedTest::Permutation);
        assert!((p.p_better - 3.0 / 8.0).abs() < 1e-12, "{p:?}");
        assert!((p.p_two_sided - 6.0 / 8.0).abs() < 1e-12, "{p:?}");
        // On -1/0/1 differences the permutation test is McNemar's, exactly.
        let binary = [1.0, 1.0, 1.0, -1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0];
        let (one, two) = sign_flip_p(&binary);
        let m = Paired::of_diffs(&binary, 200);
        assert!((one - m.p_better).abs() < 1e-12 && (two - m.p_two_sided).abs() < 1e-12);
        // Twenty wins by a whole point against forty losses by a quarter: twice as many tasks
        // went the other way, yet the mean difference is +1/6. Counting wins says the first
        // program is not better; the sizes say it is.
        let mixed: Vec<f64> = [vec![1.0; 20], vec![-0.25; 40]].concat();
        let p = Paired::of_diffs(&mixed, 200);
        assert!(binomial_upper_tail(60, 20) > 0.99);
        // Drawn sign patterns estimate the exact p-values.
        let (one, two) = sign_flip_p_drawn(&mixed);
        assert!(
            (one - p.p_better).abs() < 0.01 && (two - p.p_two_sided).abs() < 0.01,
            "{one} {two} {p:?}"
        );
        // A pool too large to count exactly is tested on drawn sign patterns: a mean
        // difference near zero reads as none, a clear one as clear.
        let pool = |loss: f64| -> Vec<f64> { (0..20_000).map(|i| if i % 3 == 0 { 0.37 } else { -loss }).collect() };
        let level = Paired::of_diffs(&pool(0.185), 10);
        assert!(
            level.p_two_sided > 0.5 && level.test == PairedTest::Permutation,
            "{level:?}"
        );
        let ahead = Paired::of_diffs(&pool(0.17), 10);
        assert!(ahead.p_two_sided < 0.001 && ahead.verdict(0.05) == "beats", "{ahead:?}");
        assert!(p.p_better < 0.05 && p.verdict(0.05) == "beats", "{p:?}");
    }

    #[test]
    fn pairs_join_by_task_and_test_the_discordant_ones() {
        let a: Vec<(String, f64)> = (0..40)
            .map(|i| (format!("t{i}"), f64::from(u8::from(i % 4 != 0))))
            .collect();
        let b: Vec<(String, f64)> = (0..40)
            .rev()
            .map(|i| (format!("t{i}"), f64::from(u8::from(i % 2 == 0))))
            .collect();
        let p = Paired::compare(&a, &b, 500);
        // a fails t0,t4,..(10 tasks), b fails the 20 odd ones: a wins on 20 odd tasks, loses on 10.
        assert_eq!((p.n, p.wins, p.losses), (40, 20, 10));
        assert!((p.diff - 0.25).abs() < 1e-12);
        assert!((p.p_better - binomial_upper_tail(30, 20)).abs() < 1e-12);
        assert_eq!(p.test, PairedTest::McNemar);
        assert!(p.ci_lo < 0.25 && 0.25 < p.ci_hi);
        let same = Paired::compare(&a, &a, 500);
        assert_eq!(
            (same.diff, same.p_two_sided, same.verdict(0.05)),
            (0.0, 1.0, "does not differ significantly from")
        );
    }

    #[test]
    fn a_clear_gain_is_significant_and_a_small_one_is_not() {
        let clear: Vec<f64> = (0..200)
            .map(|i| {
                if i < 40 {
                    1.0
                } else if i < 45 {
                    -1.0
                } else {
                    0.0
                }
            })
            .collect();
        assert_eq!(Paired::of_diffs(&clear, 200).verdict(0.05), "beats");
        let small: Vec<f64> = (0..200)
            .map(|i| {
                if i < 12 {
                    1.0
                } else if i < 20 {
                    -1.0
                } else {
                    0.0
                }
            })
            .collect();
        assert_eq!(
            Paired::of_diffs(&small, 200).verdict(0.05),
            "does not differ significantly from"
        );
    }

    #[test]
    fn more_tasks_detect_smaller_gains() {
        let small = detectable_share_gain(40, 0.3, 0.05, 0.8).unwrap();
        let large = detectable_share_gain(400, 0.3, 0.05, 0.8).unwrap();
        assert!(large < small && large > 0.0, "{large} {small}");
    }

    #[test]
    fn graded_differences_detect_gains_in_their_own_sizes() {
        // The same tasks differing by a whole point, or by a quarter: the test on the sizes
        // asks a quarter as much gain of the second, where counting tasks asks the same.
        let whole: Vec<f64> = [vec![1.0; 15], vec![-1.0; 15], vec![0.0; 90]].concat();
        let quarter: Vec<f64> = whole.iter().map(|d| d / 4.0).collect();
        let by_share = detectable_gain(&whole, 0.025, 0.8).unwrap();
        assert_eq!(Some(by_share), detectable_share_gain(120, 0.25, 0.025, 0.8));
        let by_size = detectable_gain(&quarter, 0.025, 0.8).unwrap();
        assert!((by_size - by_share / 4.0).abs() < 0.05 * by_share / 4.0, "{by_size} {by_share}");
        // And the graded line is the permutation test's own: with whole-point sizes it agrees
        // with the sign test's to the bisection's precision.
        let mixed: Vec<f64> = [vec![1.0; 15], vec![-1.0; 15], vec![0.0; 89], vec![0.5]].concat();
        let graded = detectable_gain(&mixed, 0.025, 0.8).unwrap();
        assert!(graded > 0.0 && (graded - by_share).abs() < 0.2 * by_share, "{graded} {by_share}");
        // Two programs that never differed still get the sign test's line; no tasks, none.
        assert_eq!(
            detectable_gain(&[0.0; 40], 0.025, 0.8),
            detectable_share_gain(40, 0.05, 0.025, 0.8)
        );
        assert_eq!(detectable_gain(&[], 0.025, 0.8), None);
    }
}
