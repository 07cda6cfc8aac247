-- The firing path's batches travel as one array of rows of these types (scheduler_node/store/executions.py):
-- asyncpg checks every element of an array of scalars in Python (~0.2 µs each, 16 per result row), an array of
-- rows once per row. Attributes in the order of the node's ClaimRow and ResultRow fields, so that a row is the
-- struct as a tuple (tests/store/test_executions.py checks they agree).
CREATE TYPE claim_input AS (
    shard    int,
    epoch    bigint,
    job_id   uuid,
    slot_ms  bigint,
    origin   text,
    status   text,
    attempt  int,
    error    text
);

CREATE TYPE result_input AS (
    shard               int,
    epoch               bigint,
    job_id              uuid,
    slot_ms             bigint,
    origin              text,
    status              text,
    attempt             int,
    next_attempt_ms     bigint,
    sent_ms             bigint,
    finished_ms         bigint,
    http_status         int,
    duration_ms         int,
    dispatch_lag_ms     int,
    error               text,
    response_excerpt    text,
    attempt_started_ms  bigint,
    attempt_finished_ms bigint
);
