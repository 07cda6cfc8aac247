"""A node rides out PostgreSQL going away: it stays up, says it is degraded, and records everything it sent.

Each test has a PostgreSQL of its own (restarting the session's server would pull it from under the other
tests), on a fixed port so that it comes back where the node's pool looks for it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest
import trio

from protocol.jobs import JobSpec, Semantics, Target
from protocol.schedules import Cron
from protocol.shards import DEFAULT_SHARD_COUNT, HASH_NAME
from shardwheel.embedded import EmbeddedPostgres, free_port

from .harness import create, node_running, node_url, query, target_running, wait_for


@pytest.fixture
def own_pg(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres(tmp_path / "pg", port=free_port(), durable=False).start()
    try:
        asyncio.run(_migrate(pg.dsn))
        yield pg
    finally:
        pg.stop()


async def _migrate(dsn: str) -> None:
    import asyncpg

    from scheduler_node.store.migrate import ensure_cluster, migrate

    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        await ensure_cluster(conn, name="test", shard_count=DEFAULT_SHARD_COUNT, hash_name=HASH_NAME)
    finally:
        await conn.close()


def _spec(url: str, semantics: Semantics) -> JobSpec:
    return JobSpec(name="t", schedule=Cron("* * * * * *"), target=Target(url=url), semantics=semantics)


async def test_a_postgresql_restart_is_ridden_out(own_pg: EmbeddedPostgres) -> None:
    dsn = own_pg.dsn
    async with target_running() as target, node_running(dsn) as node:
        alo = await create(node, _spec(target.url("/alo"), Semantics.AT_LEAST_ONCE))
        amo = await create(node, _spec(target.url("/amo"), Semantics.AT_MOST_ONCE))

        async def fired(path: str, n: int) -> bool:
            return len(target.at(path)) >= n

        await wait_for(lambda: fired("/alo", 3))
        assert node.engine is not None
        await trio.to_thread.run_sync(own_pg.stop)  # a fast shutdown: every connection is cut

        async def degraded() -> bool:
            async with httpx.AsyncClient() as c:
                r = await c.get(f"{node_url(node)}/readyz")
            return r.status_code == 503 and r.text.startswith("PostgreSQL unavailable")

        await wait_for(degraded, timeout=20)

        async def claims_blocked() -> bool:  # down long enough for the claimer to find it gone
            problem = node.engine.health.problem() if node.engine is not None else None
            return problem is not None and "claim" in problem

        await wait_for(claims_blocked, timeout=20)
        await trio.to_thread.run_sync(own_pg.start)
        before = len(target.at("/alo"))
        await wait_for(lambda: fired("/alo", before + 3), timeout=30)  # firing again

        async def ready() -> bool:
            return node.engine is not None and node.engine.ready()

        await wait_for(ready, timeout=30)
    # The node left gracefully: everything it sent is recorded, nothing stays claimed.
    rows = await query(dsn, "SELECT job_id, status, scheduled_at FROM executions ORDER BY scheduled_at")
    assert rows and not [r for r in rows if r["status"] in ("claimed", "retry_wait")], rows
    sent = Counter((r.job, r.slot) for r in target.received)
    at_most_once = [k for k, n in sent.items() if k[0] == str(amo) and n > 1]
    assert at_most_once == []  # no AT_MOST_ONCE slot twice
    delivered = sorted({datetime.fromisoformat(r.slot) for r in target.at("/alo")})
    succeeded = {r["scheduled_at"] for r in rows if r["job_id"] == alo and r["status"] == "succeeded"}
    assert set(delivered) <= succeeded  # every delivery recorded, those made just before the outage too
    # AT_LEAST_ONCE lost nothing: every second from the first slot to the last, the outage's ones late
    assert len(delivered) == int((delivered[-1] - delivered[0]).total_seconds()) + 1


async def test_an_outage_past_the_limit_ends_the_node_with_one_line(own_pg: EmbeddedPostgres) -> None:
    from protocol.errors import InfrastructureError
    from scheduler_node.node import Node, NodeConfig

    from .harness import SECRET

    config = NodeConfig(dsn=own_pg.dsn, shards="0-255", port=0, cluster_secret=SECRET, node_id="n-limit",
                        store_outage_limit_s=2.0)  # fmt: skip
    node = Node(config)
    ended: list[BaseException] = []

    async def run(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await node.run(handle_signals=False, task_status=task_status)
        except InfrastructureError as e:  # a plain exception, not a group: the CLI prints it as one line
            ended.append(e)

    with trio.fail_after(60):
        async with trio.open_nursery() as n:
            await n.start(run)
            await wait_for(_ready(node), timeout=30)
            await trio.to_thread.run_sync(own_pg.stop)
    (e,) = ended
    assert str(e).startswith("PostgreSQL unavailable for more than 2 s, exiting: PostgreSQL unavailable for")
    assert "\n" not in str(e)


def _ready(node: object) -> object:
    async def ready() -> bool:
        engine = node.engine  # type: ignore[attr-defined]
        return engine is not None and engine.ready()

    return ready
