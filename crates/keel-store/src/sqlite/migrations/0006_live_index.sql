-- Jobs of a queue that are not finished, by id, in place of (queue, state, id). A job's state
-- changes twice while it is worked (available -> running -> completed), and each change moved
-- its entry in (queue, state, id): a delete and an insert, a fifth of the writer's work per
-- drained job (docs/performance.md, 2026-12-07 (late)). This index changes only when `finished_at`
-- does, which the writer's UPDATE leaves out of its SET unless it changes (rows.rs), so a lease
-- does not touch it and an ack deletes one entry. Finished jobs are found by
-- jobs_queue_state_finished. Invariant (keel-core's state machine): `finished_at` is set exactly
-- when the state is completed, dead or cancelled.
DROP INDEX jobs_queue_state_id;
CREATE INDEX jobs_queue_live ON jobs (queue, id) WHERE finished_at IS NULL;
