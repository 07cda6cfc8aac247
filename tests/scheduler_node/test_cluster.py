"""The cluster: several node processes, real etcd (TTL 2 s) and PostgreSQL; outcomes at the sink and in the
executions table, with time bounds of at least 3 x TTL."""

from __future__ import annotations

from collections import Counter

import pytest
import trio

from shardwheel.embedded import EmbeddedEtcd

from .cluster_harness import TTL, balanced, cluster

pytestmark = pytest.mark.slow


async def test_three_nodes_split_85_85_86_and_a_fourth_takes_exactly_64(
    db_dsn: str, etcd_server: EmbeddedEtcd, etcd_prefix: str
) -> None:
    with cluster(db_dsn, etcd_server.endpoint, etcd_prefix) as c:
        for n in ("n1", "n2", "n3"):
            c.start(n)
        three = await trio.to_thread.run_sync(
            lambda: c.wait_for(lambda v: balanced(v, {"n1", "n2", "n3"}), what="85/85/86")
        )
        assert sorted(Counter(three.live_owners().values()).values()) == [85, 85, 86]
        before = three.live_owners()
        c.start("n4")
        four = await trio.to_thread.run_sync(
            lambda: c.wait_for(lambda v: balanced(v, {"n1", "n2", "n3", "n4"}), what="64 each")
        )
        after = four.live_owners()
        assert sorted(Counter(after.values()).values()) == [64, 64, 64, 64]
        assert sum(before[s] != after[s] for s in range(256)) == 64
        assert {s for s in range(256) if before[s] != after[s]} == {s for s, n in after.items() if n == "n4"}


async def test_kill_9_under_load_moves_its_shards_without_duplicates_or_losses(
    db_dsn: str, etcd_server: EmbeddedEtcd, etcd_prefix: str
) -> None:
    import signal
    import time
    from datetime import UTC, datetime, timedelta

    from protocol.jobs import Misfire, MisfirePolicy, Semantics
    from protocol.shards import shard_of

    from .harness import query, target_running

    async with target_running() as target:
        with cluster(db_dsn, etcd_server.endpoint, etcd_prefix) as c:
            for n in ("n1", "n2", "n3"):
                c.start(n)
            view = await trio.to_thread.run_sync(
                lambda: c.wait_for(lambda v: balanced(v, {"n1", "n2", "n3"}))
            )
            owners = view.live_owners()
            jobs = await c.load(target, 24, misfire=Misfire(MisfirePolicy.FIRE_ALL, grace_ms=60_000))
            await trio.sleep(3)
            victim = "n2"
            victim_shards = {s for s, n in owners.items() if n == victim}
            victim_jobs = {j for j in jobs if shard_of(j) in victim_shards}
            assert victim_jobs, "some jobs live on the victim"
            killed_at = datetime.now(UTC)
            c.kill(victim, signal.SIGKILL)
            t0 = time.monotonic()
            await trio.to_thread.run_sync(
                lambda: c.wait_for(
                    lambda v: balanced(v, {"n1", "n3"}), timeout=3 * TTL + 10, what="shards owned again"
                )
            )
            reowned_s = time.monotonic() - t0
            await trio.sleep(4)
            ended_at = datetime.now(UTC) - timedelta(seconds=2)
    assert reowned_s <= 3 * TTL + 10
    received = Counter((r.job, r.slot) for r in target.received)
    amo_dups = [k for k, n in received.items() if n > 1 and jobs.get(k[0]) == Semantics.AT_MOST_ONCE]
    assert amo_dups == []
    for key in [k for k, n in received.items() if n > 1]:  # a resend after takeover says a higher attempt
        attempts = [r.headers["x-shardwheel-attempt"] for r in target.received if (r.job, r.slot) == key]
        assert len(set(attempts)) == len(attempts), (key, attempts)
    # every AT_LEAST_ONCE (FIRE_ALL) slot of the victim's jobs across the failover arrived at least once
    first = (killed_at - timedelta(seconds=2)).replace(microsecond=0)
    seconds = [first + timedelta(seconds=k) for k in range(int((ended_at - first).total_seconds()))]
    for job in victim_jobs:
        if jobs[job] is Semantics.AT_LEAST_ONCE:
            got = {datetime.fromisoformat(slot) for j, slot in received if j == job}
            missing = [s for s in seconds if s not in got]
            assert missing == [], (job, missing)
    # every slot in the window has exactly one execution row, terminal (or lost for AT_MOST_ONCE)
    rows = await query(
        db_dsn,
        "SELECT job_id, scheduled_at, status FROM executions WHERE scheduled_at >= $1 AND scheduled_at < $2",
        first,
        ended_at,
    )
    keys = Counter((str(r["job_id"]), r["scheduled_at"]) for r in rows)
    assert max(keys.values()) == 1
    assert not [r for r in rows if r["status"] in ("claimed", "retry_wait")]


async def test_drain_undrain_and_move_a_shard(
    db_dsn: str, etcd_server: EmbeddedEtcd, etcd_prefix: str
) -> None:
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "shardwheel.cli", "cluster", *args, "--dsn", db_dsn, "--etcd",
                               etcd_server.endpoint, "--etcd-prefix", etcd_prefix],
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    with cluster(db_dsn, etcd_server.endpoint, etcd_prefix) as c:
        for n in ("n1", "n2", "n3"):
            c.start(n)
        await trio.to_thread.run_sync(lambda: c.wait_for(lambda v: balanced(v, {"n1", "n2", "n3"})))
        assert cli("drain", "n3").returncode == 0
        await trio.to_thread.run_sync(lambda: c.wait_for(lambda v: balanced(v, {"n1", "n2"}), what="drained"))
        status = cli("status", "--json")
        assert status.returncode == 0, status.stderr
        import json

        doc = json.loads(status.stdout)
        assert {m["node"]: m["shards"] for m in doc["members"]} == {"n1": 128, "n2": 128, "n3": 0}
        assert doc["drained"] == ["n3"] and doc["unowned_shards"] == []
        assert all(m["degraded"] is None for m in doc["members"])  # PostgreSQL answers every node
        assert all(doc["shards"][str(s)]["epoch"] >= 1 for s in range(256))
        assert cli("undrain", "n3").returncode == 0
        await trio.to_thread.run_sync(
            lambda: c.wait_for(lambda v: balanced(v, {"n1", "n2", "n3"}), what="undrained")
        )
        shard = next(s for s, n in c.view().live_owners().items() if n == "n1")
        assert cli("move", str(shard), "n2").returncode == 0
        await trio.to_thread.run_sync(
            lambda: c.wait_for(lambda v: v.live_owners().get(shard) == "n2", what="moved")
        )
        # the pin survives a restart of its node
        c.kill("n2")
        c.nodes["n2"].proc.wait(10)
        await trio.sleep(0.5)
        c.start("n2")
        await trio.to_thread.run_sync(
            lambda: c.wait_for(
                lambda v: v.live_owners().get(shard) == "n2" and balanced(v, {"n1", "n2", "n3"}),
                what="pin kept",
            )
        )
        bad = cli("move", "999", "n2")
        assert (
            bad.returncode == 1
            and len(bad.stderr.strip().splitlines()) == 1
            and "outside 0-255" in bad.stderr
        )
        bad = cli("drain", "ghost")
        assert bad.returncode == 1 and "not a live member" in bad.stderr


async def test_a_node_with_a_skewed_clock_takes_no_shards_and_says_why(
    db_dsn: str, etcd_server: EmbeddedEtcd, etcd_prefix: str
) -> None:
    with cluster(db_dsn, etcd_server.endpoint, etcd_prefix) as c:
        c.start("n1")
        c.start("skewed", "--clock-offset-ms", "400")
        view = await trio.to_thread.run_sync(
            lambda: c.wait_for(lambda v: balanced(v, {"n1"}) and "skewed" in v.nodes, what="n1 owns all")
        )
        assert view.nodes["skewed"].refusing and "clock offset" in view.nodes["skewed"].refusing
        await trio.sleep(2 * TTL)
        assert c.counts() == Counter({"n1": 256})


async def test_sigstop_longer_than_the_ttl_sends_nothing_for_lost_shards_then_rejoins(
    db_dsn: str, etcd_server: EmbeddedEtcd, etcd_prefix: str
) -> None:
    import signal
    from datetime import UTC, datetime, timedelta

    from .harness import target_running, wait_for

    def n2_slots_after(when: datetime) -> list[object]:
        return [
            r
            for r in target.received
            if r.headers["x-shardwheel-node"] == "n2" and datetime.fromisoformat(r.slot) > when
        ]

    async with target_running() as target:
        with cluster(db_dsn, etcd_server.endpoint, etcd_prefix) as c:
            for n in ("n1", "n2", "n3"):
                c.start(n)
            await trio.to_thread.run_sync(lambda: c.wait_for(lambda v: balanced(v, {"n1", "n2", "n3"})))
            # 30 jobs: the chance that none lands on n2's shards after the rebalance is (2/3)^30, about 5e-6.
            await c.load(target, 30)
            await trio.sleep(2)
            stopped_at = datetime.now(UTC)
            c.kill("n2", signal.SIGSTOP)
            await trio.to_thread.run_sync(
                lambda: c.wait_for(lambda v: balanced(v, {"n1", "n3"}), what="taken over")
            )
            await trio.sleep(1)
            resumed_at = datetime.now(UTC)
            c.kill("n2", signal.SIGCONT)
            await trio.to_thread.run_sync(
                lambda: c.wait_for(lambda v: balanced(v, {"n1", "n2", "n3"}), what="n2 back in")
            )
            rejoined = datetime.now(UTC)

            async def n2_fires_again() -> bool:
                return bool(n2_slots_after(rejoined))

            await wait_for(n2_fires_again, timeout=6 * TTL)
    # Nothing from n2 for slots due while its lease was dead. The window ends when n2 resumed: it owns no shard
    # before it rejoins, and the slots it fires from then on (some already due, as shards move back to it one
    # by one before the view is balanced again) are its own.
    late = [
        r
        for r in target.received
        if r.headers["x-shardwheel-node"] == "n2"
        and stopped_at + timedelta(seconds=TTL) < datetime.fromisoformat(r.slot) < resumed_at
    ]
    assert late == []
    amo = Counter((r.job, r.slot) for r in target.received)
    assert not [k for k, n in amo.items() if n > 2]


async def test_a_fenced_shard_whose_key_is_still_ours_is_taken_again(
    db_dsn: str, etcd_server: EmbeddedEtcd, etcd_prefix: str
) -> None:
    from datetime import UTC, datetime, timedelta

    from protocol.shards import shard_of

    from .harness import query, target_running

    async with target_running() as target:
        with cluster(db_dsn, etcd_server.endpoint, etcd_prefix) as c:
            c.start("n1")
            await trio.to_thread.run_sync(lambda: c.wait_for(lambda v: balanced(v, {"n1"})))
            (job,) = await c.load(target, 1)
            await trio.sleep(2)
            shard = shard_of(job)
            (before,) = await query(db_dsn, "SELECT epoch FROM shard_epochs WHERE shard = $1", shard)
            await query(db_dsn, "UPDATE shard_epochs SET epoch = epoch + 1, owner = 'intruder' WHERE shard = $1",
                        shard)  # fmt: skip
            bumped = datetime.now(UTC)
            await trio.sleep(3 * TTL)
            (after,) = await query(db_dsn, "SELECT epoch, owner FROM shard_epochs WHERE shard = $1", shard)
    assert after["owner"] == "n1" and after["epoch"] >= before["epoch"] + 2  # fenced, then taken again
    again = [r for r in target.received if datetime.fromisoformat(r.slot) > bumped + timedelta(seconds=TTL)]
    assert again  # the job fires again under the new epoch
