-- Schedules: a job template enqueued on a clock. `spec` is keel_core::ScheduleSpec as JSON.
-- `next_run_at` is NULL while paused; `last_tick_at` is the latest tick fired or skipped, and
-- no tick at or before it fires again (with the tick's idempotency key, exactly once per tick).
CREATE TABLE schedules (
    name         TEXT    NOT NULL PRIMARY KEY,
    spec         TEXT    NOT NULL,
    paused       INTEGER NOT NULL DEFAULT 0,
    next_run_at  INTEGER,
    last_tick_at INTEGER,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
) WITHOUT ROWID;

-- The latest runs of each schedule (the writer keeps the newest 20).
CREATE TABLE schedule_runs (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    schedule      TEXT    NOT NULL,
    tick_at       INTEGER NOT NULL,
    fired_at      INTEGER NOT NULL,
    outcome       TEXT    NOT NULL,
    job_id        BLOB,
    skipped_until INTEGER
);
CREATE INDEX schedule_runs_by_schedule ON schedule_runs (schedule, seq);
