//! Pareto front over (score up, cost down) and parent selection.
//!
//! Why sample the front instead of taking the best: the best-scoring program is usually one
//! lucky draw on a small validation set; sampling the non-dominated set weighted by a score
//! sigmoid and by 1/(1+children) (DGM, ShinkaEvolve) keeps exploring cheap and strong
//! lineages that have not been expanded yet.

use rand::Rng;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Scored {
    pub id: String,
    pub name: String,
    pub generation: u32,
    pub score: f64,
    pub ci_lo: f64,
    pub ci_hi: f64,
    pub cost: f64,
    pub tokens: u64,
    pub children: u32,
    pub fingerprint: String,
    /// The evaluation finished without a sandbox breach or load error.
    pub ok: bool,
}

impl Scored {
    /// Cost objective: dollars when priced, else tokens (a free local model still costs time).
    fn cost_key(&self) -> f64 {
        if self.cost > 0.0 {
            self.cost
        } else {
            self.tokens as f64
        }
    }
}

/// `a` dominates `b`: no worse on both objectives and better on one.
fn dominates(a: &Scored, b: &Scored) -> bool {
    let (sa, sb, ca, cb) = (a.score, b.score, a.cost_key(), b.cost_key());
    sa >= sb && ca <= cb && (sa > sb || ca < cb)
}

/// Indices of the non-dominated candidates among the `ok` ones.
pub fn pareto_front(items: &[Scored]) -> Vec<usize> {
    (0..items.len())
        .filter(|&i| items[i].ok)
        .filter(|&i| {
            !items
                .iter()
                .enumerate()
                .any(|(j, o)| j != i && o.ok && dominates(o, &items[i]))
        })
        .collect()
}

/// NSGA-II crowding distance of each front member (boundary points get infinity).
pub fn crowding_distance(items: &[Scored], front: &[usize]) -> Vec<f64> {
    let mut dist = vec![0.0; front.len()];
    if front.len() <= 2 {
        return vec![f64::INFINITY; front.len()];
    }
    for objective in [|s: &Scored| s.score, |s: &Scored| s.cost_key()] {
        let mut order: Vec<usize> = (0..front.len()).collect();
        order.sort_by(|&a, &b| objective(&items[front[a]]).total_cmp(&objective(&items[front[b]])));
        let lo = objective(&items[front[order[0]]]);
        let hi = objective(&items[front[*order.last().unwrap()]]);
        dist[order[0]] = f64::INFINITY;
        dist[*order.last().unwrap()] = f64::INFINITY;
        if hi > lo {
            for k in 1..order.len() - 1 {
                let gap = objective(&items[front[order[k + 1]]]) - objective(&items[front[order[k - 1]]]);
                dist[order[k]] += gap / (hi - lo);
            }
        }
    }
    dist
}

/// Picks a parent index. `pareto`: a front member with weight sigmoid(10 (score - median)) /
/// (1 + children); `uniform`: any ok candidate. None when nothing is selectable.
pub fn select_parent(items: &[Scored], strategy: &str, rng: &mut impl Rng) -> Option<usize> {
    let pool: Vec<usize> = match strategy {
        "uniform" => (0..items.len()).filter(|&i| items[i].ok).collect(),
        _ => pareto_front(items),
    };
    if pool.is_empty() {
        return None;
    }
    if strategy == "uniform" {
        return Some(pool[rng.random_range(0..pool.len())]);
    }
    let mut scores: Vec<f64> = pool.iter().map(|&i| items[i].score).collect();
    scores.sort_by(f64::total_cmp);
    let median = scores[scores.len() / 2];
    let weights: Vec<f64> = pool
        .iter()
        .map(|&i| {
            let s = 1.0 / (1.0 + (-10.0 * (items[i].score - median)).exp());
            s / (1.0 + items[i].children as f64)
        })
        .collect();
    let total: f64 = weights.iter().sum();
    let mut x = rng.random_range(0.0..total.max(f64::MIN_POSITIVE));
    for (k, w) in weights.iter().enumerate() {
        if x < *w {
            return Some(pool[k]);
        }
        x -= w;
    }
    pool.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    fn s(id: &str, score: f64, tokens: u64) -> Scored {
        Scored {
            id: id.into(),
            name: id.into(),
            generation: 0,
            score,
            ci_lo: score,
            ci_hi: score,
            cost: 0.0,
            tokens,
            children: 0,
            fingerprint: String::new(),
            ok: true,
        }
    }

    #[test]
    fn front_keeps_the_trade_off() {
        let items = vec![
            s("cheap", 0.3, 100),
            s("strong", 0.6, 1000),
            s("dominated", 0.2, 500),
            s("mid", 0.5, 400),
        ];
        let f: Vec<_> = pareto_front(&items).into_iter().map(|i| items[i].id.as_str()).collect();
        assert_eq!(f, vec!["cheap", "strong", "mid"]);
    }

    #[test]
    fn failed_candidates_are_never_parents() {
        let mut bad = s("bad", 0.9, 1);
        bad.ok = false;
        let items = vec![bad, s("good", 0.1, 10)];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for _ in 0..50 {
            assert_eq!(select_parent(&items, "pareto", &mut rng), Some(1));
        }
    }

    proptest! {
        #[test]
        fn no_front_member_is_dominated(points in proptest::collection::vec((0.0f64..1.0, 1u64..1000), 1..40)) {
            let items: Vec<_> = points.iter().enumerate().map(|(i, (sc, t))| s(&i.to_string(), *sc, *t)).collect();
            let front = pareto_front(&items);
            prop_assert!(!front.is_empty());
            for &i in &front {
                prop_assert!(!items.iter().any(|o| dominates(o, &items[i])));
            }
            for j in 0..items.len() {
                if !front.contains(&j) {
                    prop_assert!(items.iter().any(|o| dominates(o, &items[j])));
                }
            }
        }
    }
}
