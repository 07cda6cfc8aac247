"""Per-minute execution figures per tenant, kept in memory and added to PostgreSQL every few seconds: what
``GET /v1/stats`` reads instead of scanning execution rows. Pure (the engine flushes it).

Rules:
- ``result(tenant, now_ms, status)`` counts a terminal result in its minute (the minute it ended);
  ``lag(tenant, now_ms, lag_ms)`` counts a first attempt's dispatch lag (``protocol.lag_buckets``).
- ``take()`` hands over everything counted and starts afresh; ``put_back`` returns what a failed write could
  not store, so an outage delays the figures but does not lose them. Figures counted after the last flush of
  a node killed outright are lost: the rollups are statistics, the execution rows are the record.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol.lag_buckets import N_BUCKETS, bucket_of

from .store.rollups import CountRow, LagRow

__all__ = ["Rollup"]

MINUTE_MS = 60_000


@dataclass
class Rollup:
    counts: dict[tuple[str, int, str], int] = field(default_factory=dict)
    lags: dict[tuple[str, int], list[int]] = field(default_factory=dict)

    def result(self, tenant: str, now_ms: int, status: str) -> None:
        key = (tenant, now_ms - now_ms % MINUTE_MS, status)
        self.counts[key] = self.counts.get(key, 0) + 1

    def lag(self, tenant: str, now_ms: int, lag_ms: float) -> None:
        key = (tenant, now_ms - now_ms % MINUTE_MS)
        buckets = self.lags.get(key)
        if buckets is None:
            buckets = self.lags[key] = [0] * N_BUCKETS
        buckets[bucket_of(lag_ms)] += 1

    def take(self) -> tuple[list[CountRow], list[LagRow]]:
        counts = [CountRow(t, m, s, n) for (t, m, s), n in self.counts.items()]
        lags = [LagRow(t, m, b) for (t, m), b in self.lags.items()]
        self.counts, self.lags = {}, {}
        return counts, lags

    def put_back(self, counts: list[CountRow], lags: list[LagRow]) -> None:
        for c in counts:
            key = (c.tenant, c.minute_ms, c.status)
            self.counts[key] = self.counts.get(key, 0) + c.count
        for row in lags:
            mine = self.lags.setdefault((row.tenant, row.minute_ms), [0] * N_BUCKETS)
            for i, n in enumerate(row.buckets):
                mine[i] += n
