"""A node rides out PostgreSQL going away: it stays up, says it is degraded, and records everything it sent.

Each test has a PostgreSQL of its own (restarting the session's server would pull it from under the other
tests), on a fixed port so that it comes back where the node's pool looks for it.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import trio

from protocol.jobs import JobSpec, Misfire, MisfirePolicy, Semantics, Target
from protocol.schedules import Cron
from protocol.shards import DEFAULT_SHARD_COUNT, HASH_NAME
from scheduler_node.store_health import STALL_S
from shardwheel.embedded import EmbeddedEtcd, EmbeddedPostgres, free_port

from .cluster_harness import TTL, Cluster, balanced, caught_up, cluster, whole_second_ago
from .harness import Target as RecordingTarget
from .harness import create, node_running, node_url, query, target_running, wait_for


@pytest.fixture
def own_pg(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    # Durable: a killed server must keep what it acknowledged (synchronous_commit=off would lose claims).
    pg = EmbeddedPostgres(tmp_path / "pg", port=free_port(), durable=True).start()
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


def _spec(url: str, semantics: Semantics, misfire: Misfire | None = None) -> JobSpec:
    return JobSpec(name="t", schedule=Cron("* * * * * *"), target=Target(url=url), semantics=semantics,
                   misfire=misfire or Misfire())  # fmt: skip


async def test_a_postgresql_restart_is_ridden_out(own_pg: EmbeddedPostgres) -> None:
    dsn = own_pg.dsn
    async with target_running() as target, node_running(dsn) as node:
        alo = await create(node, _spec(target.url("/alo"), Semantics.AT_LEAST_ONCE))
        amo = await create(node, _spec(target.url("/amo"), Semantics.AT_MOST_ONCE))
        skip = await create(
            node, _spec(target.url("/skip"), Semantics.AT_LEAST_ONCE, Misfire(MisfirePolicy.SKIP, 1000))
        )

        async def fired(path: str, n: int) -> bool:
            return len(target.at(path)) >= n

        await wait_for(lambda: fired("/alo", 3))
        assert node.engine is not None
        await trio.to_thread.run_sync(own_pg.stop)  # a fast shutdown: every connection is cut

        async def degraded() -> bool:
            async with httpx.AsyncClient() as c:
                r = await c.get(f"{node_url(node)}/readyz")
            return r.status_code == 503 and r.json()["detail"].startswith("PostgreSQL unavailable")

        await wait_for(degraded, timeout=20)

        async def claims_blocked() -> bool:  # down long enough for the claimer to find it gone
            problem = node.engine.health.problem() if node.engine is not None else None
            return problem is not None and "claim" in problem

        await wait_for(claims_blocked, timeout=20)
        await trio.sleep(3)  # the outage: longer than the SKIP job's grace
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
    # Claims that waited out the outage followed the misfire policy: past the 1 s grace, skipped, not sent
    skipped = {r["scheduled_at"] for r in rows if r["job_id"] == skip and r["status"] == "skipped_misfire"}
    assert skipped and not skipped & {datetime.fromisoformat(r.slot) for r in target.at("/skip")}
    seconds = sorted(r["scheduled_at"] for r in rows if r["job_id"] == skip)
    assert len(seconds) == int((seconds[-1] - seconds[0]).total_seconds()) + 1  # every slot, once


async def test_an_outage_past_the_limit_ends_the_node_with_one_line(own_pg: EmbeddedPostgres) -> None:
    from protocol.errors import InfrastructureError
    from scheduler_node.node import Node, NodeConfig

    from .harness import SECRET

    config = NodeConfig(dsn=own_pg.dsn, shards="0-255", port=0, cluster_secret=SECRET, node_id="n-limit",
                        store_outage_limit_s=2.0, dev=True)  # fmt: skip
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


# ---- a cluster: node processes, etcd, PostgreSQL, 40 jobs firing every second ---------------------------


async def _two_nodes_firing(c: Cluster, target: RecordingTarget) -> tuple[dict[str, Semantics], datetime]:
    """Nodes n1 and n2 sharing the shards, 40 jobs firing every second (FIRE_ALL, 60 s grace); returns the
    jobs and the first whole second from which every slot must be accounted for."""
    c.start("n1")
    c.start("n2")
    await trio.to_thread.run_sync(lambda: c.wait_for(lambda v: balanced(v, {"n1", "n2"})))
    jobs = await c.load(target, 40, misfire=Misfire(MisfirePolicy.FIRE_ALL, grace_ms=60_000))

    async def every_job_fired() -> bool:
        return {r.job for r in target.received} >= set(jobs)

    await wait_for(every_job_fired, timeout=30)
    return jobs, whole_second_ago(0)


@pytest.mark.slow
async def test_a_cluster_rides_out_postgresql_stalled_then_killed(
    own_pg: EmbeddedPostgres, etcd_server: EmbeddedEtcd, etcd_prefix: str
) -> None:
    async def degraded(node: str) -> bool:
        async with httpx.AsyncClient() as client:
            r = await client.get(f"{c.nodes[node].url}/readyz")
        return r.status_code == 503 and r.json()["detail"].startswith("PostgreSQL")

    async def paused(seconds: float) -> None:
        await trio.to_thread.run_sync(own_pg.pause)
        with trio.move_on_after(seconds):
            await wait_for(lambda: degraded("n1"), timeout=seconds)  # a stall raises nothing: it is timed
            reported.append(seconds)
            await trio.sleep_forever()
        own_pg.resume()

    async def killed_and_restarted() -> None:
        await trio.to_thread.run_sync(own_pg.kill)
        await wait_for(lambda: degraded("n1"), timeout=20)
        await trio.sleep(3)
        await trio.to_thread.run_sync(own_pg.start)

    # What the engine does meanwhile (claims held back, results kept, the misfire policy after) is tested on
    # virtual time (test_engine.py), a restart with one node above; here what real processes do: a server
    # stalls (answers nothing, raises nothing) past the lease TTL and the stall limit, then one is killed.
    reported: list[float] = []
    async with target_running() as target:
        with cluster(own_pg.dsn, etcd_server.endpoint, etcd_prefix) as c:
            jobs, since = await _two_nodes_firing(c, target)
            stall = STALL_S + 6  # past the stall limit with room to report it, and past 3 lease TTLs
            assert stall > 3 * TTL
            await paused(stall)
            assert reported == [stall]
            await caught_up(c, own_pg.dsn, target, jobs, since)
            await killed_and_restarted()  # every process of the server killed: crash recovery at start
            await caught_up(c, own_pg.dsn, target, jobs, since)
    left = await query(own_pg.dsn, "SELECT node, epoch, status, attempt, count(*) AS n, min(scheduled_at) AS first,"
                                    " max(scheduled_at) AS last FROM executions WHERE status IN ('claimed',"
                                    " 'retry_wait') GROUP BY node, epoch, status, attempt")  # fmt: skip
    assert left == []  # the nodes left gracefully: nothing stays claimed (if it does: whose, and which)


@pytest.mark.slow
async def test_a_cluster_rides_out_etcd_paused_under_the_ttl_and_killed_for_two(
    db_dsn: str, tmp_path: Path
) -> None:
    ttl = 3  # keepalives every second as with the default 5: a pause of TTL - 1.5 s must move nothing
    etcd = EmbeddedEtcd(tmp_path / "etcd", durable=False).start()

    async def placement() -> tuple[dict[int, str], dict[int, int]]:
        epochs = await query(db_dsn, "SELECT shard, epoch FROM shard_epochs")
        return c.view().live_owners(), {r["shard"]: r["epoch"] for r in epochs}

    try:
        async with target_running() as target:
            with cluster(db_dsn, etcd.endpoint, "/outage", ttl=ttl) as c:
                jobs, since = await _two_nodes_firing(c, target)
                before = await placement()
                await trio.to_thread.run_sync(etcd.pause)
                await trio.sleep(ttl - 1.5)
                etcd.resume()
                await trio.sleep(ttl)  # a lease that had expired meanwhile would have shown by now
                assert await placement() == before  # no shard moved, no epoch bumped
                await caught_up(c, db_dsn, target, jobs, since)

                await trio.to_thread.run_sync(etcd.kill)
                killed = datetime.now(UTC)
                await trio.sleep(2 * ttl)  # past the TTL: only leases kept across the restart keep the shards
                silent = (killed + timedelta(seconds=ttl), datetime.now(UTC))
                await trio.to_thread.run_sync(etcd.start)  # etcd keeps its leases across a restart
                await trio.to_thread.run_sync(lambda: c.wait_for(lambda v: balanced(v, {"n1", "n2"})))
                await caught_up(c, db_dsn, target, jobs, since)
                assert (await placement())[1] == before[1]  # the leases survived: nothing was taken over
    finally:
        etcd.stop()
    sent_while_unconfirmed = [
        r for r in target.received if silent[0] < datetime.fromtimestamp(r.at_ms / 1000, UTC) < silent[1]
    ]
    assert sent_while_unconfirmed == []  # nothing sent past valid_until
