"""The audit log: who changed what, when.

Rules:
- Job writes append their audit row inside the job write's own fenced transaction (``jobs.write_job``), so a
  change and its record commit together or not at all.
- Rows are keyed ``(shard, id)`` with ``id`` a UUIDv7 (time-ordered); cluster-wide actions (API keys,
  rebalancing) use shard ``CLUSTER_SHARD`` (-1).
- The log is append-only: nothing here updates or deletes.

Example: ``await list_audit(pool, tenant="acme", limit=20)`` -> the tenant's last 20 changes, newest first.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import msgspec

from protocol.ids import new_job_id

from .pool import Executor

__all__ = ["CLUSTER_SHARD", "AuditEntry", "insert_audit", "list_audit"]

CLUSTER_SHARD = -1
_detail_decoder = msgspec.json.Decoder(dict[str, Any])


class AuditEntry(msgspec.Struct, frozen=True):
    shard: int
    id: uuid.UUID
    at: datetime
    tenant: str
    actor: str
    action: str
    job_id: uuid.UUID | None
    detail: dict[str, Any]


async def insert_audit(
    db: Executor,
    *,
    shard: int,
    tenant: str,
    actor: str,
    action: str,
    job_id: uuid.UUID | None = None,
    detail: dict[str, Any] | None = None,
) -> uuid.UUID:
    entry_id = new_job_id()  # any UUIDv7 will do: it orders the log by time
    await db.execute(
        "INSERT INTO audit_log (shard, id, tenant, actor, action, job_id, detail)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7::text::jsonb)",
        shard, entry_id, tenant, actor, action, job_id, msgspec.json.encode(detail or {}).decode(),
    )  # fmt: skip
    return entry_id


async def list_audit(
    db: Executor,
    *,
    tenant: str | None = None,
    shard: int | None = None,
    job_id: uuid.UUID | None = None,
    before: datetime | None = None,
    after: tuple[datetime, uuid.UUID] | None = None,
    limit: int = 100,
) -> list[AuditEntry]:
    """Entries newest first. ``job_id`` needs ``shard`` (the index is per shard); ``before`` pages by time,
    ``after`` by the (at, id) of the last entry of the previous page (no entry skipped at a tie)."""
    if job_id is not None and shard is None:
        raise ValueError("list_audit by job_id needs the job's shard")
    where: list[str] = []
    args: list[Any] = []
    for column, value in (("tenant", tenant), ("shard", shard), ("job_id", job_id)):
        if value is not None:
            args.append(value)
            where.append(f"{column} = ${len(args)}")
    if before is not None:
        args.append(before)
        where.append(f"at < ${len(args)}")
    if after is not None:
        args += list(after)
        where.append(f"(at, id) < (${len(args) - 1}, ${len(args)})")
    args.append(limit)
    rows = await db.fetch(
        "SELECT shard, id, at, tenant, actor, action, job_id, detail::text AS detail FROM audit_log"
        f" {'WHERE ' + ' AND '.join(where) if where else ''} ORDER BY at DESC, id DESC LIMIT ${len(args)}",
        *args,
    )
    return [AuditEntry(**{**dict(r), "detail": _detail_decoder.decode(r["detail"])}) for r in rows]
