-- Shardwheel schema, version 1 (DESIGN.md §3, §4).
--
-- Rules:
-- * Every table that grows with the job count (jobs, job_cursor, executions, execution_attempts, alerts,
--   audit_log) carries `shard` as the FIRST column of its primary key and of every unique constraint, and every
--   hot query filters by shard. That is what lets this schema be distributed by `shard` on Citus (or split by
--   shard ranges across databases) without a redesign.
-- * Small tables (cluster, shard_epochs, api_keys) become Citus reference tables; `idempotency` grows with
--   create requests (bounded by expires_at), not with jobs, and distributes by tenant (see its comment).
-- * Timestamps are timestamptz and day boundaries are UTC days.
-- * Status and enum-like columns are text with CHECK constraints naming the allowed values (they mirror the
--   StrEnums in protocol/), so a value added in Python without a migration fails loudly at the first write.

-- The one cluster this database belongs to. S and the hash are fixed at creation: changing either re-shards.
CREATE TABLE cluster (
    singleton   boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    name        text        NOT NULL CHECK (name <> ''),
    shard_count integer     NOT NULL CHECK (shard_count BETWEEN 1 AND 65536),
    hash_name   text        NOT NULL CHECK (hash_name <> ''),
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per shard. `epoch` is the fencing token: bumped by every new owner, locked FOR SHARE by every write.
CREATE TABLE shard_epochs (
    shard      integer     PRIMARY KEY CHECK (shard >= 0),
    epoch      bigint      NOT NULL DEFAULT 0 CHECK (epoch >= 0),
    owner      text,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Epochs only grow and shard rows are never deleted: a fencing token that went backwards would let a stale
-- owner's writes through again. Enforced here, not only in the Python that bumps.
CREATE FUNCTION shard_epochs_only_grow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'shard_epochs rows are never deleted (shard %)', OLD.shard;
    END IF;
    IF NEW.shard <> OLD.shard OR NEW.epoch <= OLD.epoch THEN
        RAISE EXCEPTION 'epoch of shard % may only grow (% -> %)', OLD.shard, OLD.epoch, NEW.epoch;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER shard_epochs_only_grow BEFORE UPDATE OR DELETE ON shard_epochs
    FOR EACH ROW EXECUTE FUNCTION shard_epochs_only_grow();

-- Jobs. `spec` is the JobSpec as JSON; name, tags and semantics are copied out of it for filters and joins.
-- next_fire_at: for a job in no node's wheel, a LOWER BOUND of its true next firing (nodes raise it in
-- batches); NULL when it will never fire again. Deletes are soft (deleted_at).
CREATE TABLE jobs (
    shard        integer     NOT NULL,
    id           uuid        NOT NULL,
    tenant       text        NOT NULL,
    name         text        NOT NULL,
    tags         text[]      NOT NULL DEFAULT '{}',
    spec         jsonb       NOT NULL,
    state        text        NOT NULL CHECK (state IN ('active', 'paused', 'auto_paused', 'completed')),
    version      bigint      NOT NULL DEFAULT 1 CHECK (version >= 1),
    semantics    text        NOT NULL CHECK (semantics IN ('AT_LEAST_ONCE', 'AT_MOST_ONCE')),
    next_fire_at timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    deleted_at   timestamptz,
    PRIMARY KEY (shard, id)
);

-- Loading a shard: its active jobs due before the horizon, in firing order.
CREATE INDEX jobs_due ON jobs (shard, next_fire_at) WHERE state = 'active' AND deleted_at IS NULL;
-- Listing a tenant's jobs with cursor pagination by id (UUIDv7: chronological).
CREATE INDEX jobs_tenant_id ON jobs (tenant, id) WHERE deleted_at IS NULL;
-- Tag filters (tags @> ARRAY['x']).
CREATE INDEX jobs_tags ON jobs USING gin (tags) WHERE deleted_at IS NULL;

-- The durable high-water mark of each job's *scheduled* slots, upserted by every claim. Narrow, and no index
-- on last_slot, so each upsert is a HOT update; fillfactor leaves room on the page for the new row versions.
CREATE TABLE job_cursor (
    shard     integer     NOT NULL,
    job_id    uuid        NOT NULL,
    last_slot timestamptz NOT NULL,
    PRIMARY KEY (shard, job_id)
) WITH (fillfactor = 70);

-- One row per (job, slot, origin). Range-partitioned by scheduled_at, one partition per UTC day created ahead
-- by ensure_partitions(), plus a DEFAULT partition so that a missing partition never stops a claim.
CREATE TABLE executions (
    shard            integer     NOT NULL,
    job_id           uuid        NOT NULL,
    scheduled_at     timestamptz NOT NULL,
    origin           text        NOT NULL CHECK (origin IN ('scheduled', 'manual', 'backfill')),
    epoch            bigint      NOT NULL,
    node             text        NOT NULL,
    status           text        NOT NULL CHECK (status IN (
                         'claimed', 'retry_wait', 'succeeded', 'failed', 'timed_out', 'skipped_overlap',
                         'skipped_misfire', 'skipped_paused', 'cancelled', 'lost')),
    attempt          integer     NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    next_attempt_at  timestamptz,
    claimed_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz,
    finished_at      timestamptz,
    http_status      integer,
    duration_ms      integer,
    dispatch_lag_ms  integer,
    error            text,
    response_excerpt text        CHECK (octet_length(response_excerpt) <= 1024),
    -- Set when a graceful release handed over a claim its owner never sent (manual and backfill slots, which
    -- the next owner cannot re-derive from the schedule): the takeover then resumes it under either semantics.
    released_at      timestamptz,
    PRIMARY KEY (shard, job_id, scheduled_at, origin)
) PARTITION BY RANGE (scheduled_at);

CREATE TABLE executions_default PARTITION OF executions DEFAULT;

-- A job's last N executions use the primary key backwards. Failed executions across jobs, newest first:
CREATE INDEX executions_failed ON executions (finished_at DESC) WHERE status IN ('failed', 'timed_out');
-- A shard's unfinished executions, read at takeover and graceful release. The whole key, not just
-- (shard, scheduled_at): result writes look rows up by key among the unfinished ones, and with thousands of
-- jobs firing in the same second a (shard, scheduled_at) prefix would make every lookup scan them all.
CREATE INDEX executions_active ON executions (shard, job_id, scheduled_at, origin)
    WHERE status IN ('claimed', 'retry_wait');

-- One row per HTTP attempt of an execution; same key plus the attempt number, partitioned the same way.
CREATE TABLE execution_attempts (
    shard        integer     NOT NULL,
    job_id       uuid        NOT NULL,
    scheduled_at timestamptz NOT NULL,
    origin       text        NOT NULL CHECK (origin IN ('scheduled', 'manual', 'backfill')),
    attempt      integer     NOT NULL CHECK (attempt >= 1),
    epoch        bigint      NOT NULL,
    node         text        NOT NULL,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz,
    http_status  integer,
    duration_ms  integer,
    error        text,
    PRIMARY KEY (shard, job_id, scheduled_at, origin, attempt)
) PARTITION BY RANGE (scheduled_at);

CREATE TABLE execution_attempts_default PARTITION OF execution_attempts DEFAULT;

-- Failure alerts: stored, listed by the API, POSTed to a webhook by the shard's owner. One per
-- (execution, kind), so a writer that retries a batch never raises the same alert twice.
CREATE TABLE alerts (
    shard             integer     NOT NULL,
    id                uuid        NOT NULL,
    job_id            uuid        NOT NULL,
    tenant            text        NOT NULL,
    scheduled_at      timestamptz NOT NULL,
    origin            text        NOT NULL CHECK (origin IN ('scheduled', 'manual', 'backfill')),
    kind              text        NOT NULL,
    message           text        NOT NULL,
    payload           jsonb       NOT NULL DEFAULT '{}',
    webhook           text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    delivered_at      timestamptz,
    delivery_attempts integer     NOT NULL DEFAULT 0,
    next_delivery_at  timestamptz,
    last_error        text,
    PRIMARY KEY (shard, id),
    UNIQUE (shard, job_id, scheduled_at, origin, kind)
);

CREATE INDEX alerts_tenant ON alerts (tenant, id DESC);
-- The delivery queue of a shard: undelivered alerts with a webhook, by due time.
CREATE INDEX alerts_pending ON alerts (shard, next_delivery_at) WHERE delivered_at IS NULL AND webhook IS NOT NULL;

-- API keys, stored as the SHA-256 of a 256-bit random key (a fast hash is enough for a high-entropy secret:
-- there is nothing to brute-force). `prefix` is the key's first characters, shown to tell keys apart.
CREATE TABLE api_keys (
    id               uuid        PRIMARY KEY,
    key_hash         bytea       NOT NULL UNIQUE,
    prefix           text        NOT NULL,
    tenant           text        NOT NULL,
    role             text        NOT NULL CHECK (role IN ('admin', 'writer', 'reader')),
    name             text        NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now(),
    revoked_at       timestamptz,
    rate_limit_per_s real        CHECK (rate_limit_per_s > 0),
    burst            integer     CHECK (burst > 0)
);

CREATE INDEX api_keys_tenant ON api_keys (tenant, created_at);

-- Idempotency-Key records of job creates. Keyed by (tenant, key), not by shard: a retried create gets a new
-- job id, hence possibly another shard and another node, so the lookup must not depend on the shard. It grows
-- with create requests and is purged after expires_at. On Citus: distribute by tenant; the job write's
-- transaction then spans two distributed shards, which Citus commits with two-phase commit (creates with a
-- key are rare next to firings, so the cost does not matter).
CREATE TABLE idempotency (
    tenant       text        NOT NULL,
    key          text        NOT NULL,
    job_id       uuid        NOT NULL,
    shard        integer     NOT NULL,
    request_hash text        NOT NULL,
    response     jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant, key)
);

CREATE INDEX idempotency_expires ON idempotency (expires_at);

-- Who changed what. Job writes land here in the same transaction as the job row. Cluster-wide actions (API
-- keys, rebalancing) use shard -1.
CREATE TABLE audit_log (
    shard  integer     NOT NULL CHECK (shard >= -1),
    id     uuid        NOT NULL,
    at     timestamptz NOT NULL DEFAULT now(),
    tenant text        NOT NULL,
    actor  text        NOT NULL,
    action text        NOT NULL,
    job_id uuid,
    detail jsonb       NOT NULL DEFAULT '{}',
    PRIMARY KEY (shard, id)
);

CREATE INDEX audit_tenant ON audit_log (tenant, at DESC);
CREATE INDEX audit_job ON audit_log (shard, job_id, at DESC) WHERE job_id IS NOT NULL;
