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

/// Indices (ascending) of the non-dominated candidates among the `ok` ones.
///
/// Why a sort and one sweep instead of comparing every pair: with two objectives a candidate
/// is on the front exactly when it is the cheapest of its score and strictly cheaper than
/// everything that scores higher, so O(n log n) answers what the pairwise definition
/// (`pareto_front_pairwise`) answers in O(n^2) — 100k candidates in milliseconds, not minutes.
pub fn pareto_front(items: &[Scored]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..items.len()).filter(|&i| items[i].ok).collect();
    order.sort_by(|&a, &b| {
        items[b]
            .score
            .total_cmp(&items[a].score)
            .then(items[a].cost_key().total_cmp(&items[b].cost_key()))
    });
    let mut front = Vec::new();
    let mut cheapest_higher = f64::INFINITY;
    let mut k = 0;
    while k < order.len() {
        let score = items[order[k]].score;
        let group_end = order[k..]
            .iter()
            .position(|&i| items[i].score.total_cmp(&score).is_ne())
            .map_or(order.len(), |p| k + p);
        let cheapest_here = items[order[k]].cost_key();
        if cheapest_here < cheapest_higher {
            front.extend(
                order[k..group_end]
                    .iter()
                    .filter(|&&i| items[i].cost_key() == cheapest_here),
            );
            cheapest_higher = cheapest_here;
        }
        k = group_end;
    }
    front.sort_unstable();
    front
}

/// The front by its definition, every pair compared: the reference the sweep is tested and
/// benchmarked against.
pub fn pareto_front_pairwise(items: &[Scored]) -> Vec<usize> {
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

/// The parent-selection strategies `search.parent_selection` accepts.
pub const STRATEGIES: &[&str] = &["pareto", "tournament", "softmax", "uniform"];

/// Candidates drawn per tournament.
const TOURNAMENT_SIZE: usize = 3;
/// Softmax temperature over validation scores in [0, 1]: 0.1 makes a 0.1 better score
/// e (2.7) times as likely.
const SOFTMAX_TEMPERATURE: f64 = 0.1;
/// Softmax visit penalty per child already proposed from a candidate (ALMA).
const VISIT_PENALTY: f64 = 0.5;

/// Picks a parent index; None when nothing is selectable (failed candidates never are).
///
/// - `pareto`: a front member, weight sigmoid(10 (score - median)) / (1 + children)
///   (DGM, ShinkaEvolve).
/// - `tournament`: the best of three ok candidates drawn uniformly (ties: the cheaper).
/// - `softmax`: any ok candidate, weight exp(score / 0.1 - 0.5 children) (ALMA's visit penalty).
/// - `uniform`: any ok candidate.
pub fn select_parent(items: &[Scored], strategy: &str, rng: &mut impl Rng) -> Option<usize> {
    let ok: Vec<usize> = (0..items.len()).filter(|&i| items[i].ok).collect();
    if ok.is_empty() {
        return None;
    }
    match strategy {
        "uniform" => Some(ok[rng.random_range(0..ok.len())]),
        "tournament" => (0..TOURNAMENT_SIZE)
            .map(|_| ok[rng.random_range(0..ok.len())])
            .max_by(|&a, &b| {
                items[a]
                    .score
                    .total_cmp(&items[b].score)
                    .then(items[b].cost_key().total_cmp(&items[a].cost_key()))
            }),
        "softmax" => {
            let best = ok.iter().map(|&i| items[i].score).fold(f64::MIN, f64::max);
            let weights: Vec<f64> = ok
                .iter()
                .map(|&i| {
                    ((items[i].score - best) / SOFTMAX_TEMPERATURE - VISIT_PENALTY * items[i].children as f64).exp()
                })
                .collect();
            weighted_pick(&ok, &weights, rng)
        }
        _ => {
            let pool = pareto_front(items);
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
            weighted_pick(&pool, &weights, rng)
        }
    }
}

fn weighted_pick(pool: &[usize], weights: &[f64], rng: &mut impl Rng) -> Option<usize> {
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
        for strategy in STRATEGIES {
            for _ in 0..50 {
                assert_eq!(select_parent(&items, strategy, &mut rng), Some(1), "{strategy}");
            }
        }
    }

    /// How often each candidate is picked in 4000 draws.
    fn picks(items: &[Scored], strategy: &str) -> Vec<u32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut n = vec![0; items.len()];
        for _ in 0..4000 {
            n[select_parent(items, strategy, &mut rng).unwrap()] += 1;
        }
        n
    }

    #[test]
    fn strategies_prefer_what_they_promise() {
        // "weak" is dominated (worse and dearer than "strong").
        let mut items = vec![s("weak", 0.2, 500), s("strong", 0.8, 400), s("cheap", 0.5, 10)];
        let pareto = picks(&items, "pareto");
        assert_eq!(
            pareto[0], 0,
            "a dominated candidate is never a pareto parent: {pareto:?}"
        );
        let tournament = picks(&items, "tournament");
        assert!(
            tournament[1] > tournament[2] && tournament[2] > tournament[0],
            "{tournament:?}"
        );
        let softmax = picks(&items, "softmax");
        assert!(softmax[1] > softmax[2] && softmax[2] > softmax[0], "{softmax:?}");
        let uniform = picks(&items, "uniform");
        assert!(uniform.iter().all(|&n| n > 1100), "{uniform:?}");
        // The visit penalty moves softmax away from a much-expanded parent.
        items[1].children = 8;
        let penalised = picks(&items, "softmax");
        assert!(penalised[1] < softmax[1] / 3, "{penalised:?} vs {softmax:?}");
        assert!(
            penalised[2] > penalised[1],
            "the unexpanded one is now preferred: {penalised:?}"
        );
    }

    proptest! {
        #[test]
        fn no_front_member_is_dominated(points in proptest::collection::vec((0u8..6, 1u64..8), 1..40)) {
            let items: Vec<_> = points.iter().enumerate().map(|(i, (sc, t))| s(&i.to_string(), *sc as f64 / 5.0, *t)).collect();
            let front = pareto_front(&items);
            prop_assert!(!front.is_empty());
            prop_assert_eq!(&front, &pareto_front_pairwise(&items));
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
