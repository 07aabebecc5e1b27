//! The step plan: what step N of a run does, a function of the config alone, so any process
//! (a resume, another machine) can tell. Steps `0..S` evaluate the S seeds; then
//! `generations × proposals_per_generation` proposal steps; then one step that evaluates the
//! best validation candidates on the held-out test split.

use super::Core;

/// What step N is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StepKind {
    Seed(usize),
    Propose { generation: u32 },
    Test,
    Done,
}

/// The sizes the plan is made of.
#[derive(Debug, Clone, Copy)]
pub(super) struct Plan {
    pub seeds: u64,
    pub generations: u32,
    pub proposals_per_generation: u32,
}

impl Plan {
    fn proposals(self) -> u64 {
        u64::from(self.generations) * u64::from(self.proposals_per_generation)
    }

    /// Seeds, proposals and the test step.
    pub fn total_steps(self) -> u64 {
        self.seeds + self.proposals() + 1
    }

    pub fn kind(self, step: u64) -> StepKind {
        let per = u64::from(self.proposals_per_generation.max(1));
        if step < self.seeds {
            StepKind::Seed(step as usize)
        } else if step < self.seeds + self.proposals() {
            StepKind::Propose {
                generation: ((step - self.seeds) / per) as u32 + 1,
            }
        } else if step == self.seeds + self.proposals() {
            StepKind::Test
        } else {
            StepKind::Done
        }
    }
}

impl Core {
    pub(super) fn plan(&self) -> Plan {
        Plan {
            seeds: self.seeds.len() as u64,
            generations: self.exp.search.generations,
            proposals_per_generation: self.exp.search.proposals_per_generation,
        }
    }

    pub(super) fn total_steps(&self) -> u64 {
        self.plan().total_steps()
    }

    pub(super) fn step_kind(&self, step: u64) -> StepKind {
        self.plan().kind(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_then_generations_then_one_test_step() {
        let plan = Plan {
            seeds: 2,
            generations: 3,
            proposals_per_generation: 4,
        };
        assert_eq!(plan.total_steps(), 2 + 12 + 1);
        let kinds: Vec<StepKind> = (0..plan.total_steps() + 1).map(|s| plan.kind(s)).collect();
        assert_eq!(
            &kinds[..3],
            &[
                StepKind::Seed(0),
                StepKind::Seed(1),
                StepKind::Propose { generation: 1 }
            ]
        );
        assert_eq!(kinds[5], StepKind::Propose { generation: 1 });
        assert_eq!(
            kinds[6],
            StepKind::Propose { generation: 2 },
            "the fifth proposal starts generation 2"
        );
        assert_eq!(kinds[13], StepKind::Propose { generation: 3 });
        assert_eq!(kinds[14], StepKind::Test);
        assert_eq!(kinds[15], StepKind::Done);
    }

    #[test]
    fn a_run_without_proposals_tests_its_seeds_right_away() {
        let plan = Plan {
            seeds: 3,
            generations: 0,
            proposals_per_generation: 0,
        };
        assert_eq!(plan.total_steps(), 4);
        assert_eq!(plan.kind(3), StepKind::Test);
        assert_eq!(plan.kind(4), StepKind::Done);
    }
}
