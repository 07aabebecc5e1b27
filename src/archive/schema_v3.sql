-- metaforge archive, schema version 3: what the contract guards saw (src/guard), as JSON,
-- NULL for runs without guards. evaluations.guard is a GuardSummary (hard and soft
-- violations, fallbacks, rejects per stage, fallback tiers); task_results.guard a TaskGuard.
ALTER TABLE evaluations ADD COLUMN guard TEXT;
ALTER TABLE task_results ADD COLUMN guard TEXT;
