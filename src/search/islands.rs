//! Islands with migration, derived from the archive rather than stored.
//!
//! Why derived: resume and merge must not depend on extra state. A candidate lives on the
//! island whose turn it was at the step that made it (`step mod islands`), and proposal step N
//! selects among its own island's candidates. Every `migration_interval` generations an
//! island may also select its neighbour's best candidate; a child of that migrant is made at
//! this island's step, so it lives here: genes move, bookkeeping does not.

use crate::archive::Scored;

fn island_of(step: u64, islands: u32) -> u64 {
    step % u64::from(islands.max(1))
}

/// The candidates proposal `step` of `generation` may select from. With one island, or while
/// an island has no feasible candidate yet, every candidate.
pub fn selectable(
    scored: Vec<Scored>,
    step: u64,
    generation: u32,
    islands: u32,
    migration_interval: u32,
) -> Vec<Scored> {
    if islands <= 1 {
        return scored;
    }
    let here = island_of(step, islands);
    let neighbour = (here + u64::from(islands) - 1) % u64::from(islands);
    let migrant = (migration_interval > 0 && generation.is_multiple_of(migration_interval))
        .then(|| {
            scored
                .iter()
                .filter(|s| s.ok && island_of(s.step, islands) == neighbour)
                .max_by(|a, b| a.score.total_cmp(&b.score))
                .map(|s| s.id.clone())
        })
        .flatten();
    let pool: Vec<Scored> = scored
        .iter()
        .filter(|s| island_of(s.step, islands) == here || migrant.as_deref() == Some(s.id.as_str()))
        .cloned()
        .collect();
    if pool.iter().any(|s| s.ok) {
        pool
    } else {
        scored
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, step: u64, score: f64) -> Scored {
        Scored {
            step,
            ..Scored::example(id, score, 1)
        }
    }

    fn ids(v: &[Scored]) -> Vec<&str> {
        v.iter().map(|s| s.id.as_str()).collect()
    }

    #[test]
    fn islands_select_their_own_and_migrate_the_neighbours_best() {
        let all = vec![c("a0", 0, 0.1), c("b1", 1, 0.9), c("a2", 2, 0.3), c("b3", 3, 0.5)];
        assert_eq!(
            ids(&selectable(all.clone(), 10, 1, 2, 2)),
            ["a0", "a2"],
            "step 10 is island 0"
        );
        assert_eq!(ids(&selectable(all.clone(), 11, 1, 2, 2)), ["b1", "b3"]);
        assert_eq!(
            ids(&selectable(all.clone(), 10, 2, 2, 2)),
            ["a0", "b1", "a2"],
            "generation 2 migrates b1"
        );
        assert_eq!(selectable(all.clone(), 10, 2, 1, 2).len(), 4, "one island: everyone");
        let mut broken = all;
        broken[0].ok = false;
        broken[2].ok = false;
        assert_eq!(
            selectable(broken, 10, 1, 2, 2).len(),
            4,
            "an island with nothing feasible borrows all"
        );
    }
}
