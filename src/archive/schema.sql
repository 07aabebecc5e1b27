-- metaforge archive, schema version 1. Numbers are stored as numbers; no absolute paths,
-- no pickles: the .db file is the whole, portable state of a run.
CREATE TABLE runs (
    id           INTEGER PRIMARY KEY,
    name         TEXT    NOT NULL,
    seed         INTEGER NOT NULL,
    config_toml  TEXT    NOT NULL,
    domain       TEXT    NOT NULL,
    created_at   TEXT    NOT NULL,
    finished_at  TEXT
);
CREATE TABLE candidates (
    id           TEXT PRIMARY KEY,            -- sha256(kind, normalised source)
    kind         TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    thought      TEXT    NOT NULL,
    code         TEXT    NOT NULL,
    operator     TEXT    NOT NULL,
    generation   INTEGER NOT NULL,
    fingerprint  TEXT    NOT NULL,
    step         INTEGER NOT NULL,
    created_at   TEXT    NOT NULL
);
CREATE TABLE lineage (
    parent       TEXT NOT NULL REFERENCES candidates(id),
    child        TEXT NOT NULL REFERENCES candidates(id),
    operator     TEXT NOT NULL,
    PRIMARY KEY (parent, child)
);
-- Every proposal attempt, failed or not: nothing is dropped silently.
CREATE TABLE proposals (
    step         INTEGER NOT NULL,
    attempt      INTEGER NOT NULL,
    generation   INTEGER NOT NULL,
    kind         TEXT    NOT NULL,            -- seed | op:<name> | rewrite | diff | crossover [:debug<n>]
    parents      TEXT    NOT NULL,            -- JSON list of candidate ids
    status       TEXT    NOT NULL,            -- evaluated | duplicate | not_novel | parse_error | check_failed | runtime_error | contract_breach | llm_error
    reason       TEXT    NOT NULL,
    candidate_id TEXT,
    prompt       TEXT,
    reply        TEXT,
    created_at   TEXT    NOT NULL,
    PRIMARY KEY (step, attempt)
);
CREATE TABLE evaluations (
    id                INTEGER PRIMARY KEY,
    candidate_id      TEXT    NOT NULL REFERENCES candidates(id),
    split             TEXT    NOT NULL,       -- val | test
    stage             TEXT    NOT NULL,       -- full
    n                 INTEGER NOT NULL,
    mean              REAL    NOT NULL,
    ci_lo             REAL    NOT NULL,
    ci_hi             REAL    NOT NULL,
    cost_usd          REAL    NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    llm_calls         INTEGER NOT NULL,
    cached_calls      INTEGER NOT NULL,
    latency_ms        REAL    NOT NULL,
    wall_ms           REAL    NOT NULL,
    outcome           TEXT    NOT NULL,       -- ok | error | load_error | timeout | memory_limit | recursion_limit | cpu_limit | crashed:<sig> | ...
    outcome_detail    TEXT    NOT NULL,
    step              INTEGER NOT NULL,
    created_at        TEXT    NOT NULL,
    UNIQUE (candidate_id, split, stage)
);
CREATE TABLE task_results (
    evaluation_id INTEGER NOT NULL REFERENCES evaluations(id),
    task_id       TEXT    NOT NULL,
    score         REAL    NOT NULL,
    outcome       TEXT    NOT NULL,
    output        TEXT,
    error         TEXT,
    llm_calls     INTEGER NOT NULL,
    tokens        INTEGER NOT NULL,
    PRIMARY KEY (evaluation_id, task_id)
);
CREATE TABLE llm_calls (
    key               TEXT PRIMARY KEY,       -- sha256(model, messages, params, sample index)
    role              TEXT    NOT NULL,
    model             TEXT    NOT NULL,
    request           TEXT    NOT NULL,
    response          TEXT    NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    latency_ms        REAL    NOT NULL,
    cost_usd          REAL    NOT NULL,
    created_at        TEXT    NOT NULL
);
CREATE TABLE events (
    id          INTEGER PRIMARY KEY,
    step        INTEGER,
    kind        TEXT NOT NULL,
    detail      TEXT NOT NULL,                -- JSON
    created_at  TEXT NOT NULL
);
CREATE INDEX evaluations_by_split ON evaluations(split, mean);
CREATE INDEX lineage_by_child ON lineage(child);
