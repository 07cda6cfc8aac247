"""The compose topology run as local processes: a 3-member etcd cluster, PostgreSQL and 3 nodes, jobs firing
every second while one node and then one etcd member are killed (and the member brought back).

After each: every shard owned again, one terminal row per slot (nothing left ``claimed``), every AT_LEAST_ONCE
slot delivered, no AT_MOST_ONCE slot sent twice (``caught_up``).
"""

from __future__ import annotations

import signal
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import trio

from protocol.jobs import Misfire, MisfirePolicy
from shardwheel.embedded import EmbeddedEtcd

from ..scheduler_node.cluster_harness import balanced, caught_up, cluster, whole_second_ago
from ..scheduler_node.harness import target_running, wait_for

pytestmark = pytest.mark.slow


async def test_jobs_keep_firing_through_a_node_kill_and_an_etcd_member_kill(db_dsn: str, tmp_path: Path) -> None:
    members = EmbeddedEtcd.start_all(EmbeddedEtcd.cluster(tmp_path / "etcd", 3, durable=False))
    try:
        async with target_running() as target:
            with cluster(db_dsn, EmbeddedEtcd.endpoints(members), "/topology") as c:
                for n in ("n1", "n2", "n3"):
                    c.start(n)
                await trio.to_thread.run_sync(lambda: c.wait_for(lambda v: balanced(v, {"n1", "n2", "n3"})))
                jobs = await c.load(target, 30, misfire=Misfire(MisfirePolicy.FIRE_ALL, grace_ms=60_000))

                async def every_job_fired() -> bool:
                    return {r.job for r in target.received} >= set(jobs)

                await wait_for(every_job_fired, timeout=30)
                since = whole_second_ago(0)

                c.kill("n3", signal.SIGKILL)
                c.nodes.pop("n3").proc.wait()
                await trio.to_thread.run_sync(lambda: c.wait_for(lambda v: balanced(v, {"n1", "n2"})))
                await caught_up(c, db_dsn, target, jobs, since)

                await trio.to_thread.run_sync(members[0].kill)  # the nodes' clients fail over to the others
                member_down = whole_second_ago(0)

                async def fired_with_the_member_down() -> bool:  # slots two seconds past its death delivered
                    later = member_down + timedelta(seconds=2)
                    return any(datetime.fromisoformat(r.slot) >= later for r in target.received)

                await wait_for(fired_with_the_member_down, timeout=30)
                await caught_up(c, db_dsn, target, jobs, since)
                await trio.to_thread.run_sync(members[0].start)
                await caught_up(c, db_dsn, target, jobs, since)
    finally:
        for m in members:
            m.stop()
