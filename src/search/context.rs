//! What a meta-model prompt shows of the archive, and what it must not repeat: the context
//! programs fitted under the token budget, and the near-duplicate check against every
//! archived program.

use super::*;

/// Scorer feedback lines shown per context program.
const FEEDBACK_LINES: usize = 3;

impl Step<'_> {
    pub(super) fn context_of(&self, c: &Candidate, scored: &[crate::archive::Scored]) -> ContextCandidate {
        let s = scored.iter().find(|s| s.id == c.id);
        ContextCandidate {
            name: c.name.clone(),
            code: c.code.clone(),
            score: s.map_or(0.0, |s| s.score),
            ci_lo: s.map_or(0.0, |s| s.ci_lo),
            ci_hi: s.map_or(0.0, |s| s.ci_hi),
            tokens: s.map_or(0, |s| s.tokens),
            feedback: self.archive.scorer_feedback(&c.id, FEEDBACK_LINES).unwrap_or_default(),
        }
    }

    /// The most similar archived program when it reaches the novelty threshold.
    pub(super) fn near_duplicate(&self, normalized: &str) -> Result<Option<(f64, String)>> {
        let threshold = self.exp.proposers.novelty_threshold;
        if threshold > 1.0 {
            return Ok(None);
        }
        let mine = Signature::of(normalized);
        let mut guard = self.signatures.lock().unwrap();
        let (known, read_upto) = &mut *guard;
        // Rows are committed in step order, so what this step's view shows past `read_upto`
        // is new to the cache, and the cache holds at least every program the view shows;
        // programs of steps the view hides (read by a later step) are left out below.
        let (new_ids, last) = self.archive.candidate_ids_after(*read_upto)?;
        *read_upto = (*read_upto).max(last);
        let mut codes = Vec::with_capacity(new_ids.len());
        for (id, _) in &new_ids {
            codes.push(self.archive.candidate(id)?.map(|c| c.code).unwrap_or_default());
        }
        let sources: Vec<&str> = codes.iter().map(String::as_str).collect();
        known.extend(
            new_ids
                .into_iter()
                .zip(crate::check::signatures(&sources))
                .map(|((id, step), sig)| (id, (step, sig))),
        );
        let visible = |step: u64| self.visible_upto.is_none_or(|upto| (step as i64) <= upto);
        let shortlist: Vec<String> = known
            .iter()
            .filter(|(_, (step, _))| visible(*step))
            .filter(|(_, (_, sig))| mine.similarity(sig) >= threshold)
            .map(|(id, _)| id.clone())
            .collect();
        drop(guard);
        // The estimate shortlists; the exact similarity of the 3-gram sets decides.
        let mut best: Option<(f64, String)> = None;
        for id in shortlist {
            let code = self.archive.candidate(&id)?.map(|c| c.code).unwrap_or_default();
            let sim = crate::check::exact_similarity(normalized, &crate::check::normalized_of(&code));
            // Ties go to the smallest id, whatever the map's order.
            let better = best
                .as_ref()
                .is_none_or(|(b, bid)| sim > *b || (sim == *b && id < *bid));
            if sim >= threshold && better {
                best = Some((sim, id));
            }
        }
        Ok(best)
    }
}

/// Keeps the prompt's sampled context under `budget_tokens` (4 characters a token): drops
/// inspirations beyond the `required` parents from the end, then failures. Returns what it
/// measured, stored as a `context` event of the step.
pub(super) fn fit_context(
    context: &mut Vec<ContextCandidate>,
    required: usize,
    failures: &mut Vec<(String, String)>,
    budget_tokens: usize,
) -> serde_json::Value {
    let estimate = |c: &[ContextCandidate], f: &[(String, String)]| {
        let chars: usize = c.iter().map(|c| c.code.len() + c.name.len() + 64).sum::<usize>()
            + f.iter().map(|(a, b)| a.len() + b.len()).sum::<usize>();
        chars / 4
    };
    let before = estimate(context, failures);
    let mut dropped = 0;
    while estimate(context, failures) > budget_tokens && drop_one_spare(context, required, failures) {
        dropped += 1;
    }
    json!({
        "estimated_tokens_before": before,
        "estimated_tokens": estimate(context, failures),
        "budget_tokens": budget_tokens,
        "dropped": dropped,
        "programs": context.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_context_keeps_the_parents_and_drops_inspirations_first() {
        let program = |name: &str, size: usize| ContextCandidate {
            name: name.into(),
            code: "x".repeat(size),
            score: 0.5,
            ci_lo: 0.4,
            ci_hi: 0.6,
            tokens: 10,
            feedback: Vec::new(),
        };
        let mut context = vec![program("parent", 4000), program("a", 4000), program("b", 4000)];
        let mut failures = vec![("check_failed".to_string(), "y".repeat(400))];
        let report = fit_context(&mut context, 1, &mut failures, 1200);
        assert_eq!(context.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["parent"]);
        assert_eq!(failures.len(), 1, "failures go only after every inspiration");
        assert_eq!(report["dropped"], 2);
        let mut tight = vec![program("parent", 40_000)];
        fit_context(&mut tight, 1, &mut failures, 10);
        assert_eq!(
            (tight.len(), failures.len()),
            (1, 0),
            "a required parent is never dropped"
        );
    }
}
