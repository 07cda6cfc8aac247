"""Execution rollups: per-minute counts and lag buckets per tenant (``scheduler_node/rollup.py`` fills them,
``GET /v1/stats`` reads them). One statement adds a flush of any size; concurrent nodes add to the same rows.

Example: ``await add_rollups(pool, counts, lags)``; ``await read_stats(pool, "acme", since, until)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec

from protocol.lag_buckets import N_BUCKETS

from .pool import Executor

__all__ = ["CountRow", "LagRow", "StatsRead", "add_rollups", "jobs_by_state", "read_stats"]


@dataclass(frozen=True, slots=True)
class CountRow:
    tenant: str
    minute_ms: int
    status: str
    count: int


@dataclass(frozen=True, slots=True)
class LagRow:
    tenant: str
    minute_ms: int
    buckets: list[int]


class StatsRead(msgspec.Struct, frozen=True):
    counts: dict[str, int]  # terminal status -> executions that ended in the window
    lag_buckets: list[int]  # first attempts' dispatch lag in the window (protocol.lag_buckets)


_ADD_SQL = """
WITH counts AS (
    INSERT INTO execution_counts AS c (tenant, minute, status, count)
    SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::bigint[])
    ORDER BY 1, 2, 3
    ON CONFLICT (tenant, minute, status) DO UPDATE SET count = c.count + excluded.count
)
INSERT INTO dispatch_lag_rollup AS r (tenant, minute, buckets)
SELECT t.tenant, t.minute, (SELECT array_agg(b ORDER BY i) FROM jsonb_array_elements_text(t.buckets::jsonb)
                            WITH ORDINALITY AS x(b, i))::bigint[]
FROM unnest($5::text[], $6::timestamptz[], $7::text[]) AS t(tenant, minute, buckets)
ORDER BY 1, 2
ON CONFLICT (tenant, minute) DO UPDATE
    SET buckets = ARRAY(SELECT a + b FROM unnest(r.buckets, excluded.buckets) AS u(a, b))
"""


def _at(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


async def add_rollups(db: Executor, counts: Sequence[CountRow], lags: Sequence[LagRow]) -> None:
    if not counts and not lags:
        return
    await db.execute(
        _ADD_SQL,
        [c.tenant for c in counts], [_at(c.minute_ms) for c in counts], [c.status for c in counts],
        [c.count for c in counts],
        [r.tenant for r in lags], [_at(r.minute_ms) for r in lags],
        [msgspec.json.encode(r.buckets).decode() for r in lags],
    )  # fmt: skip


async def read_stats(db: Executor, tenant: str, since: datetime, until: datetime) -> StatsRead:
    """The figures of the minutes starting in ``[since, until)``."""
    counts = await db.fetch(
        "SELECT status, sum(count)::bigint AS n FROM execution_counts"
        " WHERE tenant = $1 AND minute >= $2 AND minute < $3 GROUP BY status",
        tenant, since, until,
    )  # fmt: skip
    rows = await db.fetch(
        "SELECT buckets FROM dispatch_lag_rollup WHERE tenant = $1 AND minute >= $2 AND minute < $3",
        tenant, since, until,
    )  # fmt: skip
    total = [0] * N_BUCKETS
    for r in rows:
        for i, n in enumerate(r["buckets"][:N_BUCKETS]):
            total[i] += n
    return StatsRead({r["status"]: r["n"] for r in counts}, total)


async def jobs_by_state(db: Executor, tenant: str) -> dict[str, int]:
    rows = await db.fetch(
        "SELECT state, count(*) AS n FROM jobs WHERE tenant = $1 AND deleted_at IS NULL GROUP BY state", tenant
    )
    return {r["state"]: r["n"] for r in rows}
