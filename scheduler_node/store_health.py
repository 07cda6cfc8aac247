"""The node's view of PostgreSQL, and how each of its loops rides an outage out instead of ending the node.

Rules (DESIGN.md §4, "PostgreSQL outage"):
- The store bridge (``trio_store.py``) turns a transient database error into ``DatabaseUnavailable``; anything
  else is a bug and is not caught here.
- A loop that reaches the store runs each step through ``StoreHealth.retry(where, fn, *args)`` (the step is
  retried until it succeeds) or catches ``DatabaseUnavailable`` itself and calls ``await health.pause(where,
  error)`` before its next iteration. Either way: a log line when a loop first fails and when it recovers
  (not one per attempt), a metric per failure, and a pause that doubles from 0.1 s up to 2 s
  (``backoff_s``), so a restarting server is not hammered and a short blink costs little.
- ``problem()`` says, while any loop's last attempt failed, since when and why: ``/readyz`` and the node's
  status report it (degraded), and a success anywhere clears the loop that had it. A call that has waited
  ``STALL_S`` or more without an answer (a paused server raises nothing) counts too.

Example::

    health = StoreHealth(metrics)
    rows = await health.retry("claim", db.call, store.claim_slots, node_id, rows)
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

import trio

from protocol.errors import DatabaseUnavailable

from .metrics import Metrics

__all__ = ["StoreHealth", "backoff_s"]

P = ParamSpec("P")
T = TypeVar("T")
log = logging.getLogger(__name__)

_FIRST_S, _CAP_S = 0.1, 2.0
STALL_S = 5.0  # a call unanswered this long makes the node degraded (a healthy statement takes milliseconds)


def backoff_s(failures: int) -> float:
    """The pause after the n-th consecutive failure (1, 2, ...): 0.1 s doubling, at most 2 s."""
    return min(_CAP_S, _FIRST_S * float(2 ** max(0, failures - 1)))


class StoreHealth:
    def __init__(
        self, metrics: Metrics | None = None, *, stalled_for_s: Callable[[], float] = lambda: 0.0
    ) -> None:
        self.metrics = metrics
        self._stalled_for_s = stalled_for_s
        self._failing: dict[str, tuple[int, float, str]] = {}  # where -> (consecutive failures, since, error)

    def problem(self) -> str | None:
        """None while every loop reaches PostgreSQL; else one line: since when, where, why."""
        if not self._failing:
            stalled = self._stalled_for_s()
            return f"PostgreSQL has not answered for {stalled:.1f} s" if stalled >= STALL_S else None
        where, (_, since, error) = min(self._failing.items(), key=lambda kv: kv[1][1])
        loops = ", ".join(sorted(self._failing))
        return f"PostgreSQL unavailable for {trio.current_time() - since:.1f} s ({loops}): {error}"

    def unavailable_for_s(self) -> float:
        """How long the longest-failing loop has been failing, or the oldest call waiting (0 when neither)."""
        stalled = self._stalled_for_s()
        if not self._failing:
            return stalled if stalled >= STALL_S else 0.0
        return max(stalled, trio.current_time() - min(since for _, since, _ in self._failing.values()))

    async def pause(self, where: str, error: DatabaseUnavailable) -> None:
        """``where`` failed with ``error``: count it, log the first failure, wait before the next attempt."""
        failures, since, _ = self._failing.get(where, (0, trio.current_time(), ""))
        failures += 1
        self._failing[where] = (failures, since, str(error))
        if failures == 1:
            log.warning("%s: %s; riding it out", where, error)
        if self.metrics is not None:
            self.metrics.store_unavailable.inc(loop=where)
        await trio.sleep(backoff_s(failures))

    def ok(self, where: str) -> None:
        """``where`` reached PostgreSQL again."""
        state = self._failing.pop(where, None)
        if state is not None:
            failures, since, _ = state
            log.warning(
                "%s: PostgreSQL is back after %d failures, %.1f s",
                where,
                failures,
                trio.current_time() - since,
            )

    async def retry(self, where: str, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """``await fn(*args)`` until it does not raise ``DatabaseUnavailable``."""
        while True:
            try:
                result = await fn(*args, **kwargs)
            except DatabaseUnavailable as e:
                await self.pause(where, e)
                continue
            self.ok(where)
            return result
