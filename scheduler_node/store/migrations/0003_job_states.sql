-- Two job states: 'broken' (stored, but no node can run it: a spec from another version or a hand edit; the
-- node says why in state_reason and raises an alert instead of failing to load the shard) and 'deleted'
-- (deletes stay soft: deleted_at is still what hides a job). state_reason: why the node itself set the state
-- (auto_paused, broken); a user's write clears it.
ALTER TABLE jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_state_check
    CHECK (state IN ('active', 'paused', 'auto_paused', 'completed', 'broken', 'deleted'));
ALTER TABLE jobs ADD COLUMN state_reason text;
UPDATE jobs SET state = 'deleted' WHERE deleted_at IS NOT NULL;
