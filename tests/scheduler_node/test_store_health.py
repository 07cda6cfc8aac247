"""How the node's loops ride a PostgreSQL outage out (``scheduler_node/store_health.py``), on virtual time."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from protocol.errors import DatabaseUnavailable
from scheduler_node.metrics import Metrics
from scheduler_node.store_health import StoreHealth, backoff_s


def test_backoff_doubles_from_100_ms_to_2_s() -> None:
    assert [backoff_s(n) for n in range(1, 8)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]


async def test_retry_rides_an_outage_out_and_reports_it_meanwhile(
    autojump_clock: trio.testing.MockClock,
) -> None:
    metrics = Metrics()
    health = StoreHealth(metrics)
    calls: list[float] = []
    seen: list[str | None] = []

    async def claim(rows: int) -> int:
        calls.append(trio.current_time())
        seen.append(health.problem())
        if len(calls) <= 4:
            raise DatabaseUnavailable("PostgreSQL unavailable: CannotConnectNowError 57P03: starting up")
        return rows

    start = trio.current_time()
    assert await health.retry("claim", claim, 7) == 7
    # Four failures, pauses of 0.1, 0.2, 0.4 and 0.8 s, then the fifth call succeeds.
    assert [round(t - start, 3) for t in calls] == [0.0, 0.1, 0.3, 0.7, 1.5]
    assert seen[0] is None
    assert seen[-1] == (
        "PostgreSQL unavailable for 1.5 s (claim): PostgreSQL unavailable: CannotConnectNowError 57P03: starting up"
    )
    assert health.problem() is None and health.unavailable_for_s() == 0
    assert metrics.store_unavailable.get(loop="claim") == 4


async def test_the_oldest_failing_loop_names_the_outage(autojump_clock: trio.testing.MockClock) -> None:
    health = StoreHealth()
    await health.pause("refill", DatabaseUnavailable("refused"))
    await health.pause("results", DatabaseUnavailable("reset"))
    problem = health.problem()
    assert problem is not None and problem.startswith(
        "PostgreSQL unavailable for 0.2 s (refill, results): refused"
    )
    health.ok("refill")
    assert health.problem() == "PostgreSQL unavailable for 0.1 s (results): reset"
    health.ok("results")
    assert health.problem() is None


async def test_bugs_are_not_ridden_out() -> None:
    async def broken() -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        await StoreHealth().retry("claim", broken)
