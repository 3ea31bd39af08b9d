-- Current state of each job; always equal to the fold of its events.
CREATE TABLE jobs (
    id               BLOB    NOT NULL PRIMARY KEY,
    queue            TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    payload          TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    priority         INTEGER NOT NULL,
    attempt          INTEGER NOT NULL,
    max_attempts     INTEGER NOT NULL,
    timeout_ms       INTEGER NOT NULL,
    backoff          TEXT    NOT NULL,
    run_at           INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    finished_at      INTEGER,
    idempotency_key  TEXT,
    tags             TEXT    NOT NULL,
    last_error       TEXT,
    result           TEXT,
    lease_token_hash TEXT,
    lease_expires_at INTEGER,
    lease_worker     TEXT
);
-- Listing and counting by queue and state, newest first.
CREATE INDEX jobs_queue_state_id ON jobs (queue, state, id);
-- Retention: finished jobs of a queue by age.
CREATE INDEX jobs_queue_state_finished ON jobs (queue, state, finished_at) WHERE finished_at IS NOT NULL;

-- The append-only history; seq never repeats (AUTOINCREMENT), so it is a high-water mark.
CREATE TABLE events (
    seq    INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id BLOB    NOT NULL,
    at     INTEGER NOT NULL,
    type   TEXT    NOT NULL,
    -- The tagged event: {"type": ..., "data": {...}}.
    data   TEXT    NOT NULL
);
CREATE INDEX events_job ON events (job_id, seq);

CREATE TABLE idempotency_keys (
    queue       TEXT    NOT NULL,
    key         TEXT    NOT NULL,
    job_id      BLOB    NOT NULL,
    fingerprint TEXT    NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (queue, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

CREATE TABLE queues (
    name       TEXT    NOT NULL PRIMARY KEY,
    paused     INTEGER NOT NULL DEFAULT 0,
    overrides  TEXT    NOT NULL DEFAULT '{}',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;
