-- When the current attempt began (run-time metrics), and the W3C trace context the job was
-- enqueued with. A lease taken before this migration is dated by the row's last change.
ALTER TABLE jobs ADD COLUMN lease_leased_at bigint, ADD COLUMN traceparent text;
UPDATE jobs SET lease_leased_at = updated_at WHERE lease_token_hash IS NOT NULL;
