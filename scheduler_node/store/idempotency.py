"""Idempotency-Key records: a retried request gets the first request's answer instead of a second job.

Rules:
- A record is keyed ``(tenant, key)`` and remembers the job id, the hash of the request and the response.
  Not keyed by shard: a retried create carries a new job id, hence maybe another shard and another node, and
  must still find the first attempt's record (see the table's comment in 0001_initial.sql for Citus).
- ``reserve`` runs inside the job write's transaction, before the write: it inserts the record, or finds the
  existing one. Two concurrent requests with one key serialise on the primary key (the second insert waits
  for the first transaction), so exactly one of them writes a job.
- Same key, same request hash: a replay (the stored response is returned, nothing is written). Same key,
  another hash: ``Conflict``. An expired record is replaced as if absent.
- ``purge_expired`` deletes expired records in bounded batches (run periodically by any one process).

Example: POST /v1/jobs twice with ``Idempotency-Key: k1`` and the same body -> one job, two identical answers.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from protocol.errors import Conflict

from .pool import Connection, Executor

__all__ = ["DEFAULT_TTL", "Reservation", "purge_expired", "record_response", "reserve"]

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
        raise Conflict(f"Idempotency-Key '{key}' was already used with a different request")
    return Reservation(False, stored["job_id"], stored["response"])


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
