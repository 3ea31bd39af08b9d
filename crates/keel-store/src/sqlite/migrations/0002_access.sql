-- One row the writer rewrites to find out whether the disk takes writes again after a failure.
CREATE TABLE readiness_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    at INTEGER NOT NULL
);

-- API tokens: only the SHA-256 of the secret is stored.
CREATE TABLE tokens (
    id         BLOB    NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    role       TEXT    NOT NULL,
    -- JSON array of queue glob patterns, or NULL for every queue.
    queues     TEXT,
    hash       TEXT    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;

-- Payload schemas per job kind (JSON Schema 2020-12), checked at enqueue only.
CREATE TABLE schemas (
    kind       TEXT    NOT NULL PRIMARY KEY,
    schema     TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;

-- Every admin change: who (token id and name at the time), what, on what, with which details.
CREATE TABLE audit (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,
    actor_id   BLOB,
    actor_name TEXT    NOT NULL,
    action     TEXT    NOT NULL,
    target     TEXT    NOT NULL,
    data       TEXT    NOT NULL
);
