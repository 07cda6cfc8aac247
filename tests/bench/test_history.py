"""The soak's history: the jobs' own slots, day by day, in each day's partition, as the firing path leaves them."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta

import asyncpg

from bench.harness import fill_history
from protocol.executions import ExecutionAttempt, Origin
from protocol.ids import new_job_id
from protocol.shards import shard_of
from scheduler_node.store import ExecKey, list_attempts


def test_history_is_the_jobs_slots_spread_over_each_day_before_the_run(db_dsn: str) -> None:
    jobs = [new_job_id() for _ in range(3)]
    until = datetime(2031, 5, 6, 6, 0, tzinfo=UTC)
    assert asyncio.run(fill_history(db_dsn, jobs, days=2, rows=60, until=until, today_rows=9)) == 69

    async def read() -> tuple[list[asyncpg.Record], list[list[ExecutionAttempt]]]:
        conn = await asyncpg.connect(db_dsn)
        try:
            rows = await conn.fetch("SELECT tableoid::regclass::text AS part, * FROM executions")
            keys = [ExecKey(r["shard"], r["job_id"], round(r["scheduled_at"].timestamp() * 1000), Origin.SCHEDULED)
                    for r in rows]
            return list(rows), [await list_attempts(conn, k) for k in keys]
        finally:
            await conn.close()

    rows, attempts = asyncio.run(read())
    assert Counter(r["part"] for r in rows) == {
        "executions_p20310504": 30, "executions_p20310505": 30, "executions_p20310506": 9}  # fmt: skip
    assert all(r["status"] == "succeeded" and r["shard"] == shard_of(r["job_id"]) for r in rows)
    # Each succeeded at its first attempt, which the readers find in the execution's row.
    assert [[(a.attempt, a.http_status) for a in listed] for listed in attempts] == [[(1, 200)]] * 69
    for job in jobs:  # each job's slots evenly over its days, today's all before the run's start
        mine = sorted(r["scheduled_at"] for r in rows if r["job_id"] == job)
        assert mine[:10] == [datetime(2031, 5, 4, tzinfo=UTC) + timedelta(hours=2.4) * k for k in range(10)]
        assert mine[20:] == [datetime(2031, 5, 6, tzinfo=UTC) + timedelta(hours=2) * k for k in range(3)]
        assert mine[-1] < until
