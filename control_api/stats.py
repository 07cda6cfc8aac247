"""``GET /v1/stats``: the tenant's jobs by state and its executions over a window, from the per-minute rollups
the nodes add (``store.rollups``), never by scanning execution rows.

- ``window`` (default ``1h``, at most ``7d``): the last so long, by whole minutes as the rollups keep them.
- ``executions``: terminal results by status that ended in the window; ``success_rate``: succeeded over
  those that were sent and ended (succeeded, failed, timed_out, lost), None when there were none.
- ``lag_ms``: percentiles of the first attempts' dispatch lag (send start - slot), each a bucket bound at most
  19 % above the true value (``protocol.lag_buckets``). Backfilled slots are not in it.
- Figures reach PostgreSQL every 10 s from each node, so the last seconds are not in them yet.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from litestar import Controller, Request, get
from litestar.datastructures import State
from litestar.params import FromQuery

from protocol.errors import SpecError
from protocol.lag_buckets import percentile
from protocol.schedules import parse_every
from scheduler_node.store import ApiKey, jobs_by_state, read_stats

from . import paths
from .auth import READER

__all__ = ["Stats", "StatsController"]

MAX_WINDOW = timedelta(days=7)
_SENT_AND_ENDED = ("succeeded", "failed", "timed_out", "lost")


class LagPercentiles(msgspec.Struct, frozen=True):
    p50: float | None
    p90: float | None
    p99: float | None
    p999: float | None


class Stats(msgspec.Struct, frozen=True):
    since: datetime
    until: datetime
    jobs: dict[str, int]
    executions: dict[str, int]
    success_rate: float | None
    lag_ms: LagPercentiles


class StatsController(Controller):
    path = paths.STATS
    tags = ["stats"]

    @get("/", opt=READER, operation_id="getStats",
         summary="Jobs by state; executions by status, success rate and lag percentiles over a window")  # fmt: skip
    async def index(self, request: Request[ApiKey, Any, State], window: FromQuery[str] = "1h") -> Stats:
        try:
            span = parse_every(window)
        except ValueError as e:
            raise SpecError("window", str(e)) from None
        if not timedelta(minutes=1) <= span <= MAX_WINDOW:
            raise SpecError("window", "must be 1m to 7d")
        now = datetime.now(UTC)
        until = now.replace(second=0, microsecond=0) + timedelta(minutes=1)  # the current minute included
        since = until - span
        tenant = request.user.tenant
        pool = request.app.state.pool
        read = await read_stats(pool, tenant, since, until)
        sent = sum(read.counts.get(s, 0) for s in _SENT_AND_ENDED)
        lags = read.lag_buckets
        return Stats(
            since=since, until=until, jobs=await jobs_by_state(pool, tenant), executions=read.counts,
            success_rate=None if sent == 0 else round(read.counts.get("succeeded", 0) / sent, 6),
            lag_ms=LagPercentiles(percentile(lags, 0.5), percentile(lags, 0.9), percentile(lags, 0.99),
                                  percentile(lags, 0.999)),
        )  # fmt: skip
