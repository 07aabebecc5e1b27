//! Mean and percentile-bootstrap confidence interval, stored as numbers (ADAS kept only a
//! formatted string, so nothing downstream could compare fitness numerically).

use rand::{RngCore, SeedableRng};

pub fn mean(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        0.0
    } else {
        xs.iter().sum::<f64>() / xs.len() as f64
    }
}

/// 95% percentile-bootstrap interval of the mean, deterministic for a given seed.
pub fn bootstrap_ci(xs: &[f64], resamples: usize, seed: u64) -> (f64, f64) {
    if xs.len() < 2 || resamples == 0 {
        let m = mean(xs);
        return (m, m);
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let n = xs.len() as u128;
    // An index by multiply-shift of one 64-bit draw (bias below n/2^64): `random_range`
    // rebuilt its rejection zone on every draw, and these draws are every evaluation's
    // (resamples × tasks of them, on the search loop's thread).
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| {
            (0..xs.len())
                .map(|_| xs[((u128::from(rng.next_u64()) * n) >> 64) as usize])
                .sum::<f64>()
                / xs.len() as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * (resamples - 1) as f64).round() as usize).min(resamples - 1)];
    (at(0.025), at(0.975))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_contains_the_mean_and_narrows_with_n() {
        let small: Vec<f64> = (0..10).map(|i| f64::from(i % 2)).collect();
        let large: Vec<f64> = (0..400).map(|i| f64::from(i % 2)).collect();
        let (a, b) = bootstrap_ci(&small, 2000, 1);
        let (c, d) = bootstrap_ci(&large, 2000, 1);
        assert!(a <= 0.5 && 0.5 <= b && c <= 0.5 && 0.5 <= d);
        assert!(d - c < b - a);
        assert_eq!(bootstrap_ci(&small, 2000, 1), (a, b), "deterministic");
    }
}
