-- Per-minute execution figures per tenant, added to by every node (scheduler_node/rollup.py) and read by
-- GET /v1/stats: counts by terminal status, and the first attempts' dispatch lag as fixed buckets
-- (protocol/lag_buckets.py) that add up across nodes and minutes. Keyed by tenant first (Citus: distribute by
-- tenant). Small: one row per tenant, minute and status.
CREATE TABLE execution_counts (
    tenant text        NOT NULL,
    minute timestamptz NOT NULL,
    status text        NOT NULL,
    count  bigint      NOT NULL CHECK (count >= 0),
    PRIMARY KEY (tenant, minute, status)
);

CREATE TABLE dispatch_lag_rollup (
    tenant  text        NOT NULL,
    minute  timestamptz NOT NULL,
    buckets bigint[]    NOT NULL,
    PRIMARY KEY (tenant, minute)
);
