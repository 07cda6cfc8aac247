"""The scheduler node end to end: real PostgreSQL, a recording target on 127.0.0.1, real time.

Timings are asserted only with wide bounds; outcomes (what the target saw, what the executions table says)
are asserted exactly.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import trio

from protocol.executions import ExecutionStatus as S
from protocol.internal import JobWriteOp
from protocol.jobs import JobSpec, JobState, Target as JobTarget
from protocol.schedules import At, Cron, Every

from .harness import create, executions, node_running, query, statuses, target_running, wait_for, write


def spec(url: str, schedule: object = None, **kw: object) -> JobSpec:
    return JobSpec(name="t", schedule=schedule or Cron("* * * * * *"), target=JobTarget(url=url), **kw)  # type: ignore[arg-type]


async def test_every_second_cron_fires_every_second(db_dsn: str) -> None:
    async with target_running() as target, node_running(db_dsn) as node:
        job = await create(node, spec(target.url("/tick")))
        await wait_for(lambda: _count(target, "/tick", 4), timeout=10)
        got = target.at("/tick")
        slots = [datetime.fromisoformat(r.slot) for r in got]
        assert all(s.microsecond == 0 for s in slots)
        assert [b - a for a, b in zip(slots, slots[1:])] == [timedelta(seconds=1)] * (len(slots) - 1)
        assert {r.job for r in got} == {str(job)}
        assert all(r.headers["idempotency-key"].startswith(f"{job}:") for r in got)
        for r in got:  # drift: received within a second of its slot (wide bound: shared, noisy machine)
            assert 0 <= r.at_ms - slots[0].timestamp() * 1000 - (slots.index(datetime.fromisoformat(r.slot))) * 1000 < 1000
    rows = await executions(db_dsn, job)
    assert len(rows) >= 4 and all(r["status"] == "succeeded" for r in rows[:4])
    assert all(r["http_status"] == 200 and r["dispatch_lag_ms"] is not None for r in rows[:4])


async def _count(target: object, path: str, n: int) -> bool:
    return len(target.at(path)) >= n  # type: ignore[attr-defined]
