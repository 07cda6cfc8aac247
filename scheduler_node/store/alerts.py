"""Failure alerts: raised by the owner of a job's shard, stored, listed by the API, delivered to a webhook.

Rules:
- ``insert_alerts`` is a fenced batch like any other write of a shard (a stale owner's alert is dropped with
  its result), one statement, and idempotent: one alert per (execution, kind), so a retried batch never
  raises an alert twice (``conflicts`` lists the repeats).
- Delivery never blocks the firing path: the owner polls ``pending_deliveries`` for its shards and records
  each try with ``mark_delivered`` or ``record_delivery_failure`` (which schedules the next try, or gives up
  when ``next_delivery_at`` is None). Delivery bookkeeping is not fenced: delivering twice across a takeover
  is harmless next to never delivering, and these rows carry no epoch-sensitive state.
- Alerts without a webhook (neither the job's nor the cluster's) are stored and listed, never delivered.

Example: a job's final attempt fails -> ``insert_alerts(pool, [AlertRow(shard, epoch, job_id, "acme", slot,
Origin.SCHEDULED, "execution_failed", "HTTP 500 after 3 attempts", webhook=url)])``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

import asyncpg
import msgspec

from protocol.errors import NotFound
from protocol.executions import Origin
from protocol.ids import new_job_ids

from .epochs import FENCE_CTE, FENCED_SHARDS_SQL, BatchResult, fence_arrays
from .pool import Executor

__all__ = [
    "Alert",
    "AlertKey",
    "AlertRow",
    "ack_alert",
    "insert_alerts",
    "list_alerts",
    "mark_delivered",
    "pending_deliveries",
    "record_delivery_failure",
]

_payload_decoder = msgspec.json.Decoder(dict[str, Any])


class AlertKey(NamedTuple):
    shard: int
    job_id: uuid.UUID
    scheduled_at: datetime
    origin: Origin
    kind: str


class AlertRow(msgspec.Struct, frozen=True):
    shard: int
    epoch: int
    job_id: uuid.UUID
    tenant: str
    scheduled_at: datetime
    origin: Origin
    kind: str  # "execution_failed", "job_auto_paused", ...
    message: str
    webhook: str | None = None
    payload: dict[str, Any] = {}

    def key(self) -> AlertKey:
        return AlertKey(self.shard, self.job_id, self.scheduled_at, self.origin, self.kind)


class Alert(msgspec.Struct, frozen=True):
    shard: int
    id: uuid.UUID
    job_id: uuid.UUID
    tenant: str
    scheduled_at: datetime
    origin: Origin
    kind: str
    message: str
    payload: dict[str, Any]
    webhook: str | None
    created_at: datetime
    delivered_at: datetime | None
    delivery_attempts: int
    next_delivery_at: datetime | None
    last_error: str | None
    acked_at: datetime | None = None
    acked_by: str | None = None


_COLUMNS = (
    "shard, id, job_id, tenant, scheduled_at, origin, kind, message, payload::text AS payload, webhook, created_at,"
    " delivered_at, delivery_attempts, next_delivery_at, last_error, acked_at, acked_by"
)


def _alert(r: asyncpg.Record) -> Alert:
    d = dict(r)
    d["payload"] = _payload_decoder.decode(d["payload"])
    d["origin"] = Origin(d["origin"])
    return Alert(**d)


_INSERT_SQL = f"""
WITH {FENCE_CTE},
input AS (
    SELECT * FROM unnest($3::int[], $4::uuid[], $5::uuid[], $6::text[], $7::timestamptz[], $8::text[], $9::text[],
                         $10::text[], $11::text[], $12::text[])
        AS t(shard, id, job_id, tenant, scheduled_at, origin, kind, message, webhook, payload)
),
ins AS (
    INSERT INTO alerts AS a
        (shard, id, job_id, tenant, scheduled_at, origin, kind, message, webhook, payload, next_delivery_at)
    SELECT i.shard, i.id, i.job_id, i.tenant, i.scheduled_at, i.origin, i.kind, i.message, i.webhook,
           i.payload::jsonb, CASE WHEN i.webhook IS NOT NULL THEN now() END
    FROM input i JOIN fence f ON f.shard = i.shard
    ON CONFLICT DO NOTHING
    RETURNING a.shard, a.job_id, a.scheduled_at, a.origin, a.kind
)
SELECT shard, job_id, scheduled_at, origin, kind FROM ins
UNION ALL
SELECT s, NULL, NULL, NULL, NULL FROM ({FENCED_SHARDS_SQL}) fenced
"""


async def insert_alerts(db: Executor, rows: Sequence[AlertRow]) -> BatchResult[AlertKey]:
    if not rows:
        return BatchResult(applied=[], conflicts=[], fenced=frozenset())
    shards, epochs = fence_arrays((r.shard, r.epoch) for r in rows)
    records = await db.fetch(
        _INSERT_SQL, shards, epochs,
        [r.shard for r in rows], new_job_ids(len(rows)), [r.job_id for r in rows], [r.tenant for r in rows],
        [r.scheduled_at for r in rows], [r.origin.value for r in rows], [r.kind for r in rows],
        [r.message for r in rows], [r.webhook for r in rows], [msgspec.json.encode(r.payload).decode() for r in rows],
    )  # fmt: skip
    applied = [AlertKey(r["shard"], r["job_id"], r["scheduled_at"], Origin(r["origin"]), r["kind"])
               for r in records if r["job_id"] is not None]  # fmt: skip
    fenced = frozenset(r["shard"] for r in records if r["job_id"] is None)
    done = set(applied)
    conflicts = [r.key() for r in rows if r.shard not in fenced and r.key() not in done]
    return BatchResult(applied=applied, conflicts=conflicts, fenced=fenced)


async def list_alerts(
    db: Executor,
    *,
    tenant: str | None = None,
    undelivered: bool = False,
    unacked: bool = False,
    before: uuid.UUID | None = None,
    limit: int = 100,
) -> list[Alert]:
    """Alerts newest first (ids are UUIDv7); ``before`` pages by id; ``tenant=None``: every tenant (admin)."""
    where: list[str] = []
    args: list[Any] = []
    if tenant is not None:
        args.append(tenant)
        where.append(f"tenant = ${len(args)}")
    if undelivered:
        where.append("delivered_at IS NULL AND webhook IS NOT NULL")
    if unacked:
        where.append("acked_at IS NULL")
    if before is not None:
        args.append(before)
        where.append(f"id < ${len(args)}")
    args.append(limit)
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM alerts {'WHERE ' + ' AND '.join(where) if where else ''}"
        f" ORDER BY id DESC LIMIT ${len(args)}",
        *args,
    )
    return [_alert(r) for r in rows]


async def pending_deliveries(
    db: Executor, shards: Sequence[int], now: datetime, *, limit: int = 100
) -> list[Alert]:
    """Undelivered alerts of ``shards`` with a webhook, due by ``now``, oldest due first."""
    rows = await db.fetch(
        f"SELECT {_COLUMNS} FROM alerts WHERE shard = ANY($1::int[]) AND delivered_at IS NULL"
        " AND webhook IS NOT NULL AND next_delivery_at <= $2 ORDER BY next_delivery_at LIMIT $3",
        list(shards), now, limit,
    )  # fmt: skip
    return [_alert(r) for r in rows]


async def mark_delivered(db: Executor, shard: int, alert_id: uuid.UUID) -> bool:
    status = await db.execute(
        "UPDATE alerts SET delivered_at = now(), delivery_attempts = delivery_attempts + 1, next_delivery_at = NULL,"
        " last_error = NULL WHERE shard = $1 AND id = $2 AND delivered_at IS NULL",
        shard, alert_id,
    )  # fmt: skip
    return bool(status.endswith(" 1"))


async def record_delivery_failure(
    db: Executor, shard: int, alert_id: uuid.UUID, error: str, next_delivery_at: datetime | None
) -> bool:
    """Count a failed try; ``next_delivery_at=None`` gives up (the alert stays listed, undelivered)."""
    status = await db.execute(
        "UPDATE alerts SET delivery_attempts = delivery_attempts + 1, last_error = left($3, 1000),"
        " next_delivery_at = $4 WHERE shard = $1 AND id = $2 AND delivered_at IS NULL",
        shard, alert_id, error, next_delivery_at,
    )  # fmt: skip
    return bool(status.endswith(" 1"))


async def ack_alert(db: Executor, tenant: str, alert_id: uuid.UUID, actor: str) -> Alert:
    """Acknowledge a tenant's alert (idempotent: the first acknowledgement stays); ``NotFound`` otherwise."""
    row = await db.fetchrow(
        f"UPDATE alerts SET acked_at = coalesce(acked_at, now()), acked_by = coalesce(acked_by, $3)"
        f" WHERE tenant = $1 AND id = $2 RETURNING {_COLUMNS}",
        tenant, alert_id, actor,
    )  # fmt: skip
    if row is None:
        raise NotFound(f"alert {alert_id} not found")
    return _alert(row)
