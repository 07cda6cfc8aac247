"""Idempotency-Key records: a retried request gets the first request's answer instead of a second job.

Rules:
- A record is keyed ``(tenant, key)`` and remembers the job id, the hash of the request and the response.
  Not keyed by shard: a retried create carries a new job id, hence maybe another shard and another node, and
  must still find the first attempt's record (see the table's comment in 0001_initial.sql for Citus).
- ``reserve`` runs inside the job write's transaction, before the write: it inserts the record, or finds the
  existing one. Two concurrent requests with one key serialise on the primary key (the second insert waits
  for the first transaction), so exactly one of them writes a job.
- Same key, same request hash: a replay (the stored response is returned, nothing is written). Same key,
  another hash: ``KeyReused`` (422, as the IETF Idempotency-Key draft says). An expired record is replaced as
  if absent. A request whose key is in flight waits for the first to commit and replays its answer: it
  never runs twice and never sees a half-written state (the draft's 409 "in flight" is not needed).
- ``purge_expired`` deletes expired records in bounded batches (run periodically by any one process).

Example: POST /v1/jobs twice with ``Idempotency-Key: k1`` and the same body -> one job, two identical answers.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from protocol.errors import Conflict, KeyReused

from .pool import Connection, Executor

__all__ = ["DEFAULT_TTL", "Reservation", "purge_expired", "record_response", "reserve", "reserve_batch"]

DEFAULT_TTL = timedelta(hours=24)


class Reservation:
    """The outcome of ``reserve``: ``fresh`` (this request owns the key) or the stored ``response`` JSON text."""

    __slots__ = ("fresh", "job_id", "response")

    def __init__(self, fresh: bool, job_id: uuid.UUID, response: str | None) -> None:
        self.fresh = fresh
        self.job_id = job_id
        self.response = response


async def reserve(
    conn: Connection,
    *,
    tenant: str,
    key: str,
    job_id: uuid.UUID,
    shard: int,
    request_hash: str,
    ttl: timedelta = DEFAULT_TTL,
) -> Reservation:
    row = await conn.fetchrow(
        """INSERT INTO idempotency AS i (tenant, key, job_id, shard, request_hash, expires_at)
           VALUES ($1, $2, $3, $4, $5, now() + $6::interval)
           ON CONFLICT (tenant, key) DO UPDATE
               SET job_id = excluded.job_id, shard = excluded.shard, request_hash = excluded.request_hash,
                   response = NULL, created_at = now(), expires_at = excluded.expires_at
               WHERE i.expires_at <= now()
           RETURNING job_id""",
        tenant, key, job_id, shard, request_hash, ttl,
    )  # fmt: skip
    if row is not None:
        return Reservation(True, job_id, None)
    stored = await conn.fetchrow(
        "SELECT job_id, request_hash, response::text AS response FROM idempotency WHERE tenant = $1 AND key = $2",
        tenant, key,
    )  # fmt: skip
    if (
        stored is None
    ):  # purged between the two statements: only an expired record can be, so a retry succeeds
        raise Conflict(f"Idempotency-Key '{key}' expired while this request ran; retry it")
    if stored["request_hash"] != request_hash:
        raise KeyReused(f"Idempotency-Key '{key}' was already used with a different request")
    return Reservation(False, stored["job_id"], stored["response"])


async def reserve_batch(
    db: Executor, *, tenant: str, key: str, request_hash: str, ttl: timedelta = DEFAULT_TTL
) -> datetime:
    """A batch create's key (``POST /v1/jobs:batch``): when it was first used, from which the batch's job ids
    are derived, so a retry names the same jobs and the node answers them as stored. ``KeyReused`` if the key
    came with another request. Not in a job write's transaction: the batch spans shards and nodes."""
    row = await db.fetchrow(
        """INSERT INTO idempotency AS i (tenant, key, job_id, shard, request_hash, expires_at)
           VALUES ($1, $2, '00000000-0000-0000-0000-000000000000', -1, $3, now() + $4::interval)
           ON CONFLICT (tenant, key) DO UPDATE
               SET request_hash = excluded.request_hash, created_at = now(), expires_at = excluded.expires_at,
                   response = NULL
               WHERE i.expires_at <= now()
           RETURNING created_at, request_hash""",
        tenant, key, request_hash, ttl,
    )  # fmt: skip
    if row is None:
        row = await db.fetchrow(
            "SELECT created_at, request_hash FROM idempotency WHERE tenant = $1 AND key = $2", tenant, key
        )
    if row is None:
        raise Conflict(f"Idempotency-Key '{key}' expired while this request ran; retry it")
    if row["request_hash"] != request_hash:
        raise KeyReused(f"Idempotency-Key '{key}' was already used with a different request")
    created: datetime = row["created_at"]
    return created


async def record_response(conn: Connection, *, tenant: str, key: str, response_json: str) -> None:
    await conn.execute(
        "UPDATE idempotency SET response = $3::text::jsonb WHERE tenant = $1 AND key = $2",
        tenant,
        key,
        response_json,
    )


async def purge_expired(db: Executor, *, now: datetime | None = None, limit: int = 10_000) -> int:
    """Delete up to ``limit`` expired records; the number deleted (call again while it returns ``limit``)."""
    status = await db.execute(
        "DELETE FROM idempotency WHERE ctid = ANY(ARRAY("
        " SELECT ctid FROM idempotency WHERE expires_at <= coalesce($1, now()) LIMIT $2))",
        now, limit,
    )  # fmt: skip
    return int(status.split()[-1])
