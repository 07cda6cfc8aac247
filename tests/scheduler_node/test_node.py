"""The scheduler node end to end: real PostgreSQL, a recording target on 127.0.0.1, real time.

Timings are asserted only with wide bounds; outcomes (what the target saw, what the executions table says)
are asserted exactly.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import trio

from protocol.executions import ExecutionStatus as S
from protocol.internal import JobWriteOp
from protocol.jobs import Concurrency, JobSpec, JobState, Target as JobTarget
from protocol.schedules import At, Cron, Every

from .harness import Behaviour, create, executions, node_running, query, statuses, target_running, wait_for, write


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


def soon(seconds: float) -> datetime:
    now = datetime.now(UTC)
    return (now + timedelta(seconds=seconds)).replace(microsecond=0)


async def job_state(dsn: str, job: object) -> str:
    return (await query(dsn, "SELECT state FROM jobs WHERE id = $1", job))[0]["state"]


async def test_at_fires_once_then_completed(db_dsn: str) -> None:
    async with target_running() as target, node_running(db_dsn) as node:
        when = soon(2)
        job = await create(node, spec(target.url("/once"), At(when)))
        await wait_for(lambda: _count(target, "/once", 1))

        async def completed() -> bool:
            return await job_state(db_dsn, job) == "completed"

        await wait_for(completed)
        await trio.sleep(1.5)
    assert [datetime.fromisoformat(r.slot) for r in target.at("/once")] == [when]
    assert await statuses(db_dsn, job) == [S.SUCCEEDED]


async def test_every_keeps_its_period_from_its_anchor(db_dsn: str) -> None:
    async with target_running() as target, node_running(db_dsn) as node:
        anchor = soon(1)
        job = await create(node, spec(target.url("/every"), Every("2s"), start_at=anchor))
        await wait_for(lambda: _count(target, "/every", 3), timeout=12)
    slots = [datetime.fromisoformat(r.slot) for r in target.at("/every")]
    assert slots[:3] == [anchor, anchor + timedelta(seconds=2), anchor + timedelta(seconds=4)]
    assert (await statuses(db_dsn, job))[:3] == [S.SUCCEEDED] * 3


async def test_paused_jobs_do_not_fire_and_resume_fires_again(db_dsn: str) -> None:
    async with target_running() as target, node_running(db_dsn) as node:
        job = await create(node, spec(target.url("/p")))
        await wait_for(lambda: _count(target, "/p", 1))
        paused = await write(node, job, JobWriteOp.PAUSE)
        assert paused.state == JobState.PAUSED and paused.next_fire_at is None
        paused_at = datetime.now(UTC)
        seen = len(target.at("/p"))
        await trio.sleep(2.5)
        late = [r for r in target.at("/p")[seen:] if datetime.fromisoformat(r.slot) > paused_at]
        assert late == []  # at most a request already on its way when the pause landed
        resumed = await write(node, job, JobWriteOp.RESUME)
        assert resumed.state == JobState.ACTIVE and resumed.next_fire_at is not None
        await wait_for(lambda: _count(target, "/p", seen + 2), timeout=6)
    rows = await executions(db_dsn, job)
    assert {r["status"] for r in rows} <= {"succeeded", "skipped_paused"}


async def test_retries_with_growing_gaps_then_failure_with_alert(db_dsn: str) -> None:
    from protocol.jobs import RetryPolicy

    async with target_running() as target, node_running(db_dsn) as node:
        hook = target.url("/alerts")
        target.behaviours["/fail"] = Behaviour(status=500)
        job = await create(node, spec(target.url("/fail"), At(soon(1.5)), alert_webhook=hook,
                                      retry=RetryPolicy(max_attempts=3, initial_backoff_ms=300, multiplier=3.0,
                                                        max_backoff_ms=10_000, jitter=0.0)))
        await wait_for(lambda: _count(target, "/alerts", 1), timeout=15)
    attempts = target.at("/fail")
    assert [r.headers["x-shardwheel-attempt"] for r in attempts] == ["1", "2", "3"]
    assert len({r.headers["idempotency-key"] for r in attempts}) == 1
    gaps = [b.at_ms - a.at_ms for a, b in zip(attempts, attempts[1:])]
    assert 250 <= gaps[0] < gaps[1] and gaps[1] >= 850  # 300 ms then 900 ms
    (row,) = await executions(db_dsn, job)
    assert row["status"] == "failed" and row["attempt"] == 3 and row["http_status"] == 500
    assert len(await query(db_dsn, "SELECT * FROM execution_attempts WHERE job_id = $1", job)) == 3
    (alert,) = await query(db_dsn, "SELECT * FROM alerts WHERE job_id = $1", job)
    assert alert["kind"] == "execution_failed" and alert["delivered_at"] is not None
    assert msgspec.json.decode(target.at("/alerts")[0].body)["job_id"] == str(job)


async def test_timeout_is_enforced(db_dsn: str) -> None:
    from protocol.jobs import RetryPolicy

    async with target_running() as target, node_running(db_dsn) as node:
        target.behaviours["/slow"] = Behaviour(delay_s=3)
        job = await create(node, spec(target.url("/slow"), At(soon(1.5)), timeout_ms=300,
                                      retry=RetryPolicy(max_attempts=1)))

        async def ended() -> bool:
            return await statuses(db_dsn, job) == [S.TIMED_OUT]

        await wait_for(ended, timeout=10)
    (row,) = await executions(db_dsn, job)
    assert 250 <= row["duration_ms"] < 2000


async def test_forbid_skips_overlapping_slots(db_dsn: str) -> None:
    async with target_running() as target, node_running(db_dsn) as node:
        target.behaviours["/forbid"] = Behaviour(delay_s=2.5)
        job = await create(node, spec(target.url("/forbid"), concurrency=Concurrency.FORBID, timeout_ms=10_000))

        async def some_skipped() -> bool:
            st = await statuses(db_dsn, job)
            return st.count(S.SKIPPED_OVERLAP) >= 2 and S.SUCCEEDED in st

        await wait_for(some_skipped, timeout=15)
    assert target.max_in_flight == 1


async def test_replace_cancels_the_run_in_flight(db_dsn: str) -> None:
    async with target_running() as target, node_running(db_dsn) as node:
        target.behaviours["/replace"] = Behaviour(delay_s=5)
        job = await create(node, spec(target.url("/replace"), concurrency=Concurrency.REPLACE, timeout_ms=10_000))

        async def some_cancelled() -> bool:
            return (await statuses(db_dsn, job)).count(S.CANCELLED) >= 2

        await wait_for(some_cancelled, timeout=15)
    rows = await executions(db_dsn, job)
    cancelled = [r for r in rows if r["status"] == "cancelled"]
    assert all(r["error"].startswith("cancelled") for r in cancelled)
