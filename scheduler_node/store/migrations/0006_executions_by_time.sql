-- GET /v1/executions (a tenant's executions across its jobs, newest first, in a time range): a BRIN index on
-- the slot time finds the block ranges of a window. Rows arrive nearly in slot order, so the ranges are tight;
-- a BRIN index costs the firing path next to nothing (no per-row entry), unlike a btree on a column every
-- claim inserts.
CREATE INDEX executions_scheduled_brin ON executions USING brin (scheduled_at) WITH (pages_per_range = 32);
