-- metaforge archive, schema version 4: which model wrote a proposal, by the name of its
-- [models.meta] section ("default" for a single section); NULL for seeds and operators,
-- which no model writes.
ALTER TABLE proposals ADD COLUMN model TEXT;
ALTER TABLE merged_proposals ADD COLUMN model TEXT;
