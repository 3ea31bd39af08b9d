-- keel's PostgreSQL schema. Times are milliseconds since the Unix epoch (bigint), as in
-- keel_core::Time; JSON documents are `json` (kept byte for byte as the client sent them).
--
-- Vacuum: a job row is updated a few times in its life and deleted by retention. Every state
-- change touches an indexed column, so those updates cannot be HOT; a fill factor of 80 leaves
-- room on each page for the new versions, and autovacuum is told to visit the hot tables
-- early (2% dead rows instead of 20%) so dead versions are reclaimed before they pile up.
-- Events are insert-only until retention deletes them.

CREATE TABLE jobs (
    id               uuid     NOT NULL PRIMARY KEY,
    queue            text     NOT NULL,
    kind             text     NOT NULL,
    payload          json     NOT NULL,
    state            text     NOT NULL,
    priority         integer  NOT NULL,
    attempt          integer  NOT NULL,
    max_attempts     integer  NOT NULL,
    timeout_ms       bigint   NOT NULL,
    backoff          json     NOT NULL,
    run_at           bigint   NOT NULL,
    created_at       bigint   NOT NULL,
    updated_at       bigint   NOT NULL,
    finished_at      bigint,
    idempotency_key  text,
    tags             text[]   NOT NULL,
    last_error       json,
    result           json,
    lease_token_hash text,
    lease_expires_at bigint,
    lease_worker     text
) WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02);

-- Leasing: the next available job of a queue in hand-out order (priority desc, run_at, id).
CREATE INDEX jobs_ready ON jobs (queue, priority DESC, run_at, id) WHERE state = 'available';
-- Scheduled jobs coming due: per queue (a lease promotes its queues' due jobs) and overall (timer).
CREATE INDEX jobs_scheduled_queue ON jobs (queue, run_at) WHERE state = 'scheduled';
CREATE INDEX jobs_scheduled ON jobs (run_at) WHERE state = 'scheduled';
-- Lease expiry (timer).
CREATE INDEX jobs_leases ON jobs (lease_expires_at) WHERE state = 'running';
-- Listing, counting and running counts by queue and state, newest first.
CREATE INDEX jobs_queue_state_id ON jobs (queue, state, id);
-- Retention: finished jobs of a queue by age.
CREATE INDEX jobs_finished ON jobs (queue, state, finished_at) WHERE finished_at IS NOT NULL;

-- The append-only history. `seq` comes from a sequence: unique and increasing in insert order,
-- but with several nodes not necessarily in commit order.
CREATE TABLE events (
    seq    bigserial NOT NULL PRIMARY KEY,
    job_id uuid      NOT NULL,
    at     bigint    NOT NULL,
    type   text      NOT NULL,
    -- The tagged event: {"type": ..., "data": {...}}.
    data   json      NOT NULL
) WITH (autovacuum_vacuum_insert_scale_factor = 0.05);
CREATE INDEX events_job ON events (job_id, seq);

CREATE TABLE idempotency_keys (
    queue       text   NOT NULL,
    key         text   NOT NULL,
    job_id      uuid   NOT NULL,
    fingerprint text   NOT NULL,
    expires_at  bigint NOT NULL,
    PRIMARY KEY (queue, key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);

-- Queues. The rate limit's token bucket lives here (tokens and when they were counted), so
-- every node draws from one bucket; a lease of a limited queue locks the row.
CREATE TABLE queues (
    name        text             NOT NULL PRIMARY KEY,
    paused      boolean          NOT NULL DEFAULT false,
    overrides   json             NOT NULL DEFAULT '{}',
    rate_tokens double precision,
    rate_at     bigint,
    created_at  bigint           NOT NULL,
    updated_at  bigint           NOT NULL
);

CREATE TABLE tokens (
    id         uuid   NOT NULL PRIMARY KEY,
    name       text   NOT NULL,
    role       text   NOT NULL,
    -- JSON array of queue glob patterns, or NULL for every queue.
    queues     json,
    hash       text   NOT NULL UNIQUE,
    created_at bigint NOT NULL
);

CREATE TABLE schemas (
    kind       text   NOT NULL PRIMARY KEY,
    schema     json   NOT NULL,
    version    bigint NOT NULL,
    updated_at bigint NOT NULL
);

CREATE TABLE audit (
    seq        bigserial NOT NULL PRIMARY KEY,
    at         bigint    NOT NULL,
    actor_id   uuid,
    actor_name text      NOT NULL,
    action     text      NOT NULL,
    target     text      NOT NULL,
    data       json      NOT NULL
);

-- Schedules: `spec` is keel_core::ScheduleSpec as JSON; `next_run_at` is NULL while paused;
-- no tick at or before `last_tick_at` fires again.
CREATE TABLE schedules (
    name         text    NOT NULL PRIMARY KEY,
    spec         json    NOT NULL,
    paused       boolean NOT NULL DEFAULT false,
    next_run_at  bigint,
    last_tick_at bigint,
    created_at   bigint  NOT NULL,
    updated_at   bigint  NOT NULL
);

CREATE TABLE schedule_runs (
    seq           bigserial NOT NULL PRIMARY KEY,
    schedule      text      NOT NULL,
    tick_at       bigint    NOT NULL,
    fired_at      bigint    NOT NULL,
    outcome       text      NOT NULL,
    job_id        uuid,
    skipped_until bigint
);
CREATE INDEX schedule_runs_by_schedule ON schedule_runs (schedule, seq);
