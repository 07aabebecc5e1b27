//! Pareto front over the run's objectives and parent selection.
//!
//! Why sample the front instead of taking the best: the best-scoring program is usually one
//! lucky draw on a small validation set; sampling the non-dominated set weighted by a score
//! sigmoid and by 1/(1+children) (DGM, ShinkaEvolve) keeps exploring cheap and strong
//! lineages that have not been expanded yet.

use rand::Rng;
use serde::Serialize;

pub use crate::types::{Objective, ParentSelection, DEFAULT_OBJECTIVES};

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
    /// Wall-clock milliseconds of the validation evaluation.
    pub latency_ms: f64,
    /// Bytes of program source.
    pub code_bytes: u64,
    pub children: u32,
    pub fingerprint: String,
    /// The loop step that made it (islands are derived from it).
    pub step: u64,
    /// Validation tasks on which it scores the best of all candidates (ties count), for
    /// `instance` selection; 0 unless filled by `Archive::fill_instance_wins`.
    pub instance_wins: u32,
    /// Share of guarded values (final answers, guarded calls) that were fallbacks.
    pub fallback_rate: f64,
    /// Soft contract violations per validation task.
    pub soft_violations: f64,
    /// The evaluation finished without a sandbox breach, a load error or a hard contract
    /// violation. Candidates that did not are infeasible: never on the front, never parents.
    pub ok: bool,
}

#[cfg(test)]
impl Scored {
    /// A feasible candidate with only a score and a token cost, for unit tests.
    pub(crate) fn example(id: &str, score: f64, tokens: u64) -> Scored {
        Scored {
            id: id.into(),
            name: id.into(),
            generation: 0,
            score,
            ci_lo: score,
            ci_hi: score,
            cost: 0.0,
            tokens,
            latency_ms: 0.0,
            code_bytes: 0,
            children: 0,
            fingerprint: String::new(),
            step: 0,
            instance_wins: 0,
            fallback_rate: 0.0,
            soft_violations: 0.0,
            ok: true,
        }
    }
}

impl Objective {
    /// The value to minimise (the score negated).
    pub fn loss(self, s: &Scored) -> f64 {
        match self {
            Objective::Score => -s.score,
            Objective::Cost if s.cost > 0.0 => s.cost,
            Objective::Cost | Objective::Tokens => s.tokens as f64,
            Objective::Latency => s.latency_ms,
            Objective::CodeSize => s.code_bytes as f64,
            Objective::FallbackRate => s.fallback_rate,
            Objective::SoftViolations => s.soft_violations,
        }
    }
}

/// `a` dominates `b`: no worse on every objective and better on one.
fn dominates(a: &Scored, b: &Scored, objectives: &[Objective]) -> bool {
    let mut better = false;
    for o in objectives {
        let (la, lb) = (o.loss(a), o.loss(b));
        if la > lb {
            return false;
        }
        better |= la < lb;
    }
    better
}

/// Orders by the objectives' losses, lexicographically.
fn lexicographic(items: &[Scored], objectives: &[Objective], a: usize, b: usize) -> std::cmp::Ordering {
    objectives
        .iter()
        .map(|o| o.loss(&items[a]).total_cmp(&o.loss(&items[b])))
        .find(|c| c.is_ne())
        .unwrap_or(std::cmp::Ordering::Equal)
}

/// Indices (ascending) of the non-dominated candidates among the `ok` ones.
///
/// Why not compare every pair: in lexicographic order a dominator always comes before what
/// it dominates, and whatever dominates a dominated candidate is itself dominated by a front
/// member, so each candidate only needs checking against the front found so far:
/// O(n log n + n |front|). With two objectives it is one sweep — a candidate is on the front
/// exactly when it is the best of its first-objective value on the second and strictly
/// better than everything before it — so 100k candidates take milliseconds, where the
/// pairwise definition (`pareto_front_pairwise`, kept as the oracle) takes minutes.
pub fn pareto_front(items: &[Scored], objectives: &[Objective]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..items.len()).filter(|&i| items[i].ok).collect();
    order.sort_by(|&a, &b| lexicographic(items, objectives, a, b));
    let mut front: Vec<usize> = Vec::new();
    if let [first, second] = objectives {
        let mut best_before = f64::INFINITY;
        let mut k = 0;
        while k < order.len() {
            let key = first.loss(&items[order[k]]);
            let group_end = order[k..]
                .iter()
                .position(|&i| first.loss(&items[i]).total_cmp(&key).is_ne())
                .map_or(order.len(), |p| k + p);
            let best_here = second.loss(&items[order[k]]);
            if best_here < best_before {
                front.extend(
                    order[k..group_end]
                        .iter()
                        .filter(|&&i| second.loss(&items[i]) == best_here),
                );
                best_before = best_here;
            }
            k = group_end;
        }
    } else {
        for i in order {
            if !front.iter().any(|&f| dominates(&items[f], &items[i], objectives)) {
                front.push(i);
            }
        }
    }
    front.sort_unstable();
    front
}

/// The front by its definition, every pair compared: the reference the fast version is
/// tested and benchmarked against.
pub fn pareto_front_pairwise(items: &[Scored], objectives: &[Objective]) -> Vec<usize> {
    (0..items.len())
        .filter(|&i| items[i].ok)
        .filter(|&i| {
            !items
                .iter()
                .enumerate()
                .any(|(j, o)| j != i && o.ok && dominates(o, &items[i], objectives))
        })
        .collect()
}

/// NSGA-II crowding distance of each front member (boundary points get infinity).
pub fn crowding_distance(items: &[Scored], front: &[usize], objectives: &[Objective]) -> Vec<f64> {
    let mut dist = vec![0.0; front.len()];
    if front.len() <= 2 {
        return vec![f64::INFINITY; front.len()];
    }
    for o in objectives {
        let objective = |s: &Scored| o.loss(s);
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
/// - `instance`: per-instance fronts (GEPA): a candidate that is best on some validation task
///   is kept however its mean compares, weight = the number of such tasks; falls back to
///   `pareto` while no candidate is best anywhere (all scores 0).
/// - `uniform`: any ok candidate.
pub fn select_parent(
    items: &[Scored],
    strategy: ParentSelection,
    objectives: &[Objective],
    rng: &mut impl Rng,
) -> Option<usize> {
    let ok: Vec<usize> = (0..items.len()).filter(|&i| items[i].ok).collect();
    if ok.is_empty() {
        return None;
    }
    match strategy {
        ParentSelection::Uniform => Some(ok[rng.random_range(0..ok.len())]),
        ParentSelection::Tournament => {
            (0..TOURNAMENT_SIZE)
                .map(|_| ok[rng.random_range(0..ok.len())])
                .max_by(|&a, &b| {
                    items[a].score.total_cmp(&items[b].score).then(
                        Objective::Cost
                            .loss(&items[b])
                            .total_cmp(&Objective::Cost.loss(&items[a])),
                    )
                })
        }
        ParentSelection::Instance if ok.iter().any(|&i| items[i].instance_wins > 0) => {
            let pool: Vec<usize> = ok.iter().copied().filter(|&i| items[i].instance_wins > 0).collect();
            let weights: Vec<f64> = pool.iter().map(|&i| f64::from(items[i].instance_wins)).collect();
            weighted_pick(&pool, &weights, rng)
        }
        ParentSelection::Softmax => {
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
            let pool = pareto_front(items, objectives);
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
        Scored::example(id, score, tokens)
    }

    #[test]
    fn front_keeps_the_trade_off() {
        let items = vec![
            s("cheap", 0.3, 100),
            s("strong", 0.6, 1000),
            s("dominated", 0.2, 500),
            s("mid", 0.5, 400),
        ];
        let f: Vec<_> = pareto_front(&items, DEFAULT_OBJECTIVES)
            .into_iter()
            .map(|i| items[i].id.as_str())
            .collect();
        assert_eq!(f, vec!["cheap", "strong", "mid"]);
    }

    #[test]
    fn failed_candidates_are_never_parents() {
        let mut bad = s("bad", 0.9, 1);
        bad.ok = false;
        let items = vec![bad, s("good", 0.1, 10)];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for strategy in ParentSelection::ALL {
            for _ in 0..50 {
                assert_eq!(
                    select_parent(&items, strategy, DEFAULT_OBJECTIVES, &mut rng),
                    Some(1),
                    "{strategy}"
                );
            }
        }
    }

    /// How often each candidate is picked in 4000 draws.
    fn picks(items: &[Scored], strategy: ParentSelection) -> Vec<u32> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut n = vec![0; items.len()];
        for _ in 0..4000 {
            n[select_parent(items, strategy, DEFAULT_OBJECTIVES, &mut rng).unwrap()] += 1;
        }
        n
    }

    #[test]
    fn strategies_prefer_what_they_promise() {
        // "weak" is dominated (worse and dearer than "strong").
        let mut items = vec![s("weak", 0.2, 500), s("strong", 0.8, 400), s("cheap", 0.5, 10)];
        let pareto = picks(&items, ParentSelection::Pareto);
        assert_eq!(
            pareto[0], 0,
            "a dominated candidate is never a pareto parent: {pareto:?}"
        );
        let tournament = picks(&items, ParentSelection::Tournament);
        assert!(
            tournament[1] > tournament[2] && tournament[2] > tournament[0],
            "{tournament:?}"
        );
        let softmax = picks(&items, ParentSelection::Softmax);
        assert!(softmax[1] > softmax[2] && softmax[2] > softmax[0], "{softmax:?}");
        let uniform = picks(&items, ParentSelection::Uniform);
        assert!(uniform.iter().all(|&n| n > 1100), "{uniform:?}");
        // The visit penalty moves softmax away from a much-expanded parent.
        items[1].children = 8;
        let penalised = picks(&items, ParentSelection::Softmax);
        assert!(penalised[1] < softmax[1] / 3, "{penalised:?} vs {softmax:?}");
        assert!(
            penalised[2] > penalised[1],
            "the unexpanded one is now preferred: {penalised:?}"
        );
    }

    #[test]
    fn instance_selection_keeps_a_specialist_off_the_mean_front() {
        // "specialist" has the worst mean but is the only one to solve some task.
        let mut items = vec![
            s("generalist", 0.8, 100),
            s("specialist", 0.2, 900),
            s("never", 0.5, 500),
        ];
        items[0].instance_wins = 7;
        items[1].instance_wins = 1;
        let n = picks(&items, ParentSelection::Instance);
        assert!(n[1] > 200 && n[0] > n[1] * 4 && n[2] == 0, "{n:?}");
        assert_eq!(picks(&items, ParentSelection::Pareto)[1], 0, "pareto never picks it");
        for c in &mut items {
            c.instance_wins = 0;
        }
        assert_eq!(
            picks(&items, ParentSelection::Instance),
            picks(&items, ParentSelection::Pareto),
            "falls back to pareto"
        );
    }

    proptest! {
        #[test]
        fn the_fast_front_is_the_definition(
            points in proptest::collection::vec((0u8..6, 1u64..8, 0u8..4, 0u8..3), 1..40),
            three in proptest::bool::ANY,
        ) {
            let items: Vec<_> = points
                .iter()
                .enumerate()
                .map(|(i, (sc, t, lat, ok))| {
                    let mut c = s(&i.to_string(), *sc as f64 / 5.0, *t);
                    c.latency_ms = *lat as f64;
                    c.ok = *ok > 0;
                    c
                })
                .collect();
            let objectives: &[Objective] = if three {
                &[Objective::Score, Objective::Tokens, Objective::Latency]
            } else {
                DEFAULT_OBJECTIVES
            };
            let front = pareto_front(&items, objectives);
            prop_assert_eq!(&front, &pareto_front_pairwise(&items, objectives));
            prop_assert_eq!(front.is_empty(), items.iter().all(|c| !c.ok));
            for &i in &front {
                prop_assert!(items[i].ok);
                prop_assert!(!items.iter().any(|o| o.ok && dominates(o, &items[i], objectives)));
            }
        }
    }

    #[test]
    fn a_third_objective_keeps_a_fast_program_on_the_front() {
        let mut fast = s("fast", 0.3, 900);
        fast.latency_ms = 10.0;
        let mut slow = s("slow", 0.5, 400);
        slow.latency_ms = 500.0;
        let items = vec![fast, slow];
        assert_eq!(pareto_front(&items, DEFAULT_OBJECTIVES), vec![1]);
        let with_latency = [Objective::Score, Objective::Cost, Objective::Latency];
        assert_eq!(pareto_front(&items, &with_latency), vec![0, 1]);
        let d = crowding_distance(&items, &[0, 1], &with_latency);
        assert!(d.iter().all(|x| x.is_infinite()), "boundary points: {d:?}");
    }
}
