-- metaforge archive, schema version 2: archives merged into this one keep their history.
-- A merged run's own proposals cannot join `proposals` (its step numbers would collide with
-- this run's and move its resume position), so they live here, keyed by their run.
CREATE TABLE merged_proposals (
    run_id       INTEGER NOT NULL REFERENCES runs(id),
    step         INTEGER NOT NULL,
    attempt      INTEGER NOT NULL,
    generation   INTEGER NOT NULL,
    kind         TEXT    NOT NULL,
    parents      TEXT    NOT NULL,
    status       TEXT    NOT NULL,
    reason       TEXT    NOT NULL,
    candidate_id TEXT,
    prompt       TEXT,
    reply        TEXT,
    created_at   TEXT    NOT NULL,
    PRIMARY KEY (run_id, step, attempt)
);
ALTER TABLE runs ADD COLUMN merged_at TEXT;
-- The files a run's config names (a user domain's tasks, a scripted model's replies), stored
-- whole so the archive needs nothing outside itself: the stored config keeps only the file
-- name under `key`, and opening the run writes these to a private folder.
CREATE TABLE run_files (
    key          TEXT PRIMARY KEY,            -- domain.path | models.meta.script | models.agent.script
    file_name    TEXT NOT NULL,
    sha256       TEXT NOT NULL,
    content      BLOB NOT NULL
);
