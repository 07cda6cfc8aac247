"""Clock discipline: how far this node's clock is from PostgreSQL's, and whether it may own shards.

Rules (DESIGN.md §4):
- A node ahead by δ fires δ early and one behind fires δ late; the whole cluster agrees on PostgreSQL's clock
  (it timestamps claims and results), so each node measures its offset against it, round-trip corrected:
  ``offset = server_time - (sent + received) / 2``, keeping the sample with the shortest round trip of a few
  (its midpoint assumption is the least wrong); the error is at most half that round trip.
- Measured at start and every ``interval_s``; when the offset is beyond ``limit_ms`` even at the near end of its
  error (``|offset| - rtt/2 > limit``), the node takes no shards and gives away those it has (``problem()`` says
  why; the ownership announces it and cluster status shows it). A loaded PostgreSQL answering slowly widens the
  error, not the offset: a node is refused for what it provably is, never for a slow round trip.

Example: sent 1000.000, received 1000.004, server says 1000.052 -> rtt 4 ms, offset +50 ms (the node is behind).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from protocol.errors import DatabaseUnavailable

from .clock import Clock
from .store_health import StoreHealth
from .trio_store import TrioStore

__all__ = ["ClockCheck", "Sample", "best_offset", "beyond_limit"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Sample:
    sent_ms: float
    server_ms: float
    received_ms: float

    @property
    def rtt_ms(self) -> float:
        return self.received_ms - self.sent_ms

    @property
    def offset_ms(self) -> float:
        return self.server_ms - (self.sent_ms + self.received_ms) / 2


def best_offset(samples: Sequence[Sample]) -> Sample:
    return min(samples, key=lambda s: s.rtt_ms)


def beyond_limit(offset_ms: float, rtt_ms: float, limit_ms: float) -> bool:
    """The true offset lies within ``offset ± rtt/2``: beyond the limit only if all of that range is."""
    return abs(offset_ms) - max(0.0, rtt_ms) / 2 > limit_ms


async def _server_ms(conn: object) -> float:
    return float(await conn.fetchval("SELECT extract(epoch FROM clock_timestamp()) * 1000"))  # type: ignore[attr-defined]


class ClockCheck:
    def __init__(
        self,
        db: TrioStore,
        clock: Clock,
        *,
        limit_ms: float = 50.0,
        interval_s: float = 5.0,
        health: StoreHealth | None = None,
    ) -> None:
        self.db = db
        self.health = health or StoreHealth()
        self.clock = clock
        self.limit_ms = limit_ms
        self.interval_s = interval_s
        self.offset_ms: float | None = None
        self.rtt_ms: float | None = None

    def problem(self) -> str | None:
        if self.offset_ms is None or not beyond_limit(self.offset_ms, self.rtt_ms or 0.0, self.limit_ms):
            return None
        return (
            f"clock offset {self.offset_ms:+.0f} ms (± {(self.rtt_ms or 0.0) / 2:.0f}) from PostgreSQL exceeds the"
            f" limit of {self.limit_ms:.0f} ms (a node ahead fires early, one behind fires late)"
        )

    async def measure(self, n: int = 5) -> Sample:
        samples = []
        for _ in range(n):
            sent = self.clock.now_ms()
            server = await self.db.call(_server_ms)
            samples.append(Sample(sent, server, self.clock.now_ms()))
        best = best_offset(samples)
        self.offset_ms, self.rtt_ms = best.offset_ms, best.rtt_ms
        return best

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self.measure()
        task_status.started()
        while True:
            problem = self.problem()
            if problem:
                log.error(problem)
            await trio.sleep(self.interval_s)
            try:
                await self.measure()
            except DatabaseUnavailable as e:  # the last offset stands until PostgreSQL answers again
                await self.health.pause("clock check", e)
                continue
            self.health.ok("clock check")
