"""The scheduler node end to end: real PostgreSQL, a recording target on 127.0.0.1, real time.

Timings are asserted only with wide bounds; outcomes (what the target saw, what the executions table says)
are asserted exactly.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import msgspec
import trio

from protocol.executions import ExecutionStatus as S
from protocol.internal import JobWriteOp
from protocol.jobs import Concurrency, JobSpec, JobState
from protocol.jobs import Target as JobTarget
from protocol.schedules import At, Cron, Every
from scheduler_node.dispatch import DispatcherConfig

from .harness import (
    Behaviour,
    create,
    executions,
    node_running,
    query,
    statuses,
    target_running,
    wait_for,
    write,
)


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
            assert (
                0
                <= r.at_ms
                - slots[0].timestamp() * 1000
                - (slots.index(datetime.fromisoformat(r.slot))) * 1000
                < 1000
            )
    rows = await executions(db_dsn, job)
    assert len(rows) >= 4 and all(r["status"] == "succeeded" for r in rows[:4])
    assert all(r["http_status"] == 200 and r["dispatch_lag_ms"] is not None for r in rows[:4])


async def _count(target: object, path: str, n: int) -> bool:
    return len(target.at(path)) >= n  # type: ignore[attr-defined]


def soon(seconds: float) -> datetime:
    """The first whole second at least ``seconds`` from now (rounded up: rounding down left as little as 1 ms)."""
    t = datetime.now(UTC) + timedelta(seconds=seconds)
    return t.replace(microsecond=0) + timedelta(seconds=1 if t.microsecond else 0)


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
        anchor = soon(1.5)
        job = await create(node, spec(target.url("/every"), Every("2s"), start_at=anchor))
        created = datetime.now(UTC)
        await wait_for(lambda: _count(target, "/every", 3), timeout=12)
    slots = [datetime.fromisoformat(r.slot) for r in target.at("/every")][:3]
    assert [(s - anchor) % timedelta(seconds=2) for s in slots] == [timedelta(0)] * 3  # on the anchor's grid
    assert [b - a for a, b in zip(slots, slots[1:])] == [timedelta(seconds=2)] * 2
    if created < anchor:  # a slow create (busy machine) rightly starts at the next slot after it
        assert slots[0] == anchor
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
        job = await create(
            node,
            spec(
                target.url("/fail"),
                At(soon(1.5)),
                alert_webhook=hook,
                retry=RetryPolicy(
                    max_attempts=3, initial_backoff_ms=300, multiplier=3.0, max_backoff_ms=10_000, jitter=0.0
                ),
            ),
        )
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
        job = await create(
            node, spec(target.url("/slow"), At(soon(1.5)), timeout_ms=300, retry=RetryPolicy(max_attempts=1))
        )

        async def ended() -> bool:
            return await statuses(db_dsn, job) == [S.TIMED_OUT]

        await wait_for(ended, timeout=10)
    (row,) = await executions(db_dsn, job)
    assert 250 <= row["duration_ms"] < 2000


async def test_forbid_skips_overlapping_slots(db_dsn: str) -> None:
    async with target_running() as target, node_running(db_dsn) as node:
        target.behaviours["/forbid"] = Behaviour(delay_s=2.5)
        job = await create(
            node, spec(target.url("/forbid"), concurrency=Concurrency.FORBID, timeout_ms=10_000)
        )

        async def some_skipped() -> bool:
            st = await statuses(db_dsn, job)
            return st.count(S.SKIPPED_OVERLAP) >= 2 and S.SUCCEEDED in st

        await wait_for(some_skipped, timeout=15)
    assert target.max_in_flight == 1


async def test_forbid_sees_a_finished_run_while_another_host_keeps_sends_queued(db_dsn: str) -> None:
    # Outcomes are recorded once the dispatcher's queue is empty (at most a second later). A slow host kept at
    # its cap keeps that queue busy; the FORBID job on another host must still see its last run as finished.
    async with target_running() as target, node_running(db_dsn, dispatcher=DispatcherConfig(per_host_limit=1)) as node:
        target.behaviours["/slow"] = Behaviour(delay_s=3)
        for _ in range(3):
            await create(node, spec(target.url("/slow"), timeout_ms=30_000))
        fast = target.url("/fast").replace("127.0.0.1", "localhost")  # its own origin, its own cap
        job = await create(node, spec(fast, concurrency=Concurrency.FORBID))

        async def six_done() -> bool:
            return (await statuses(db_dsn, job)).count(S.SUCCEEDED) >= 6

        await wait_for(six_done, timeout=20)
        assert node.engine is not None and node.engine.dispatcher.waiting > 0  # the slow host still queues
    assert S.SKIPPED_OVERLAP not in await statuses(db_dsn, job)


async def test_replace_cancels_the_run_in_flight(db_dsn: str) -> None:
    async with target_running() as target, node_running(db_dsn) as node:
        target.behaviours["/replace"] = Behaviour(delay_s=5)
        job = await create(
            node, spec(target.url("/replace"), concurrency=Concurrency.REPLACE, timeout_ms=10_000)
        )

        async def some_cancelled() -> bool:
            return (await statuses(db_dsn, job)).count(S.CANCELLED) >= 2

        await wait_for(some_cancelled, timeout=15)
    rows = await executions(db_dsn, job)
    cancelled = [r for r in rows if r["status"] == "cancelled"]
    assert all(r["error"].startswith("cancelled") for r in cancelled)


async def test_restart_after_being_down_applies_each_misfire_policy(db_dsn: str) -> None:
    from protocol.jobs import Misfire, MisfirePolicy

    grace = 1000
    policies = {p: Misfire(p, grace_ms=grace) for p in MisfirePolicy}
    async with target_running() as target:
        async with node_running(db_dsn) as node:
            jobs = {
                p: await create(node, spec(target.url(f"/m/{p.value}"), misfire=m))
                for p, m in policies.items()
            }
            await wait_for(lambda: _all_fired(target, policies), timeout=8)
        last_sent = {
            p: max(datetime.fromisoformat(r.slot) for r in target.at(f"/m/{p.value}")) for p in policies
        }
        await trio.sleep(5)
        # Taken before the node starts: every slot older than `back - grace` is a misfire when the node loads,
        # however long its start takes (measured after the start, a slow start let late-but-in-grace slots
        # fire as usual inside the window checked below).
        back = datetime.now(UTC)
        async with node_running(db_dsn):
            await trio.sleep(2.5)
    for policy, job in jobs.items():
        rows = await executions(db_dsn, job)
        missed = [
            r
            for r in rows
            if last_sent[policy] < r["scheduled_at"] < back - timedelta(milliseconds=grace + 200)
        ]
        assert len(missed) >= 2, (policy, rows)
        sent = sorted(r.slot for r in target.at(f"/m/{policy.value}"))
        assert len(sent) == len(set(sent)), policy  # no slot twice
        kinds = [r["status"] for r in missed]
        if policy is MisfirePolicy.FIRE_ALL:
            assert set(kinds) == {"succeeded"}
        elif policy is MisfirePolicy.SKIP:
            assert set(kinds) == {"skipped_misfire"}
        else:
            assert kinds[0] == "succeeded" and set(kinds[1:]) == {"skipped_misfire"}
        # every slot from the first to the last recorded one has exactly one row: none lost, none doubled
        seconds = [r["scheduled_at"] for r in rows if r["origin"] == "scheduled"]
        assert seconds == sorted(set(seconds))
        assert len(seconds) == int((seconds[-1] - seconds[0]).total_seconds()) + 1, policy


async def _all_fired(target: object, policies: dict[object, object]) -> bool:
    return all(target.at(f"/m/{p.value}") for p in policies)  # type: ignore[attr-defined]


async def test_at_most_once_never_resends_and_at_least_once_resends_after_a_crash(db_dsn: str) -> None:
    from protocol.jobs import Semantics

    async with target_running() as target:
        target.behaviours["/amo"] = Behaviour(delay_s=3)
        target.behaviours["/alo"] = Behaviour(delay_s=3, status=[200])
        async with node_running(db_dsn, crash=True) as node:
            when = soon(1.5)
            amo = await create(node, spec(target.url("/amo"), At(when), semantics=Semantics.AT_MOST_ONCE))
            alo = await create(node, spec(target.url("/alo"), At(when), semantics=Semantics.AT_LEAST_ONCE))
            await wait_for(lambda: _count(target, "/alo", 1))
            await wait_for(lambda: _count(target, "/amo", 1))
        # killed with both requests in flight: their rows are still `claimed`
        assert await statuses(db_dsn, amo) == [S.CLAIMED] and await statuses(db_dsn, alo) == [S.CLAIMED]
        target.behaviours["/alo"] = Behaviour()
        async with node_running(db_dsn):

            async def settled() -> bool:
                return await statuses(db_dsn, alo) == [S.SUCCEEDED] and await statuses(db_dsn, amo) == [
                    S.LOST
                ]

            await wait_for(settled, timeout=10)
            await trio.sleep(1)
    assert len(target.at("/amo")) == 1  # never twice
    assert [r.slot for r in target.at("/alo")] == [target.at("/alo")[0].slot] * 2  # sent again, same slot


async def test_a_newer_epoch_stops_the_node_firing_that_shard(db_dsn: str) -> None:
    from protocol.shards import shard_of

    async with target_running() as target, node_running(db_dsn) as node:
        job = await create(node, spec(target.url("/fenced")))
        await wait_for(lambda: _count(target, "/fenced", 2))
        shard = shard_of(job)
        await query(
            db_dsn, "UPDATE shard_epochs SET epoch = epoch + 1, owner = 'thief' WHERE shard = $1", shard
        )
        bumped = len(target.at("/fenced"))
        await trio.sleep(3)
        assert len(target.at("/fenced")) <= bumped + 1  # at most the slot already claimed before the bump
        assert node.engine is not None and str(shard) not in node.engine.status()["shards"]
        assert node.engine.metrics.fenced.get() >= 1
    (current,) = await query(db_dsn, "SELECT epoch FROM shard_epochs WHERE shard = $1", shard)
    assert all(r["epoch"] < current["epoch"] for r in await executions(db_dsn, job))  # nothing written after


async def test_a_node_past_its_valid_until_sends_and_claims_nothing_then_catches_up(db_dsn: str) -> None:
    from protocol.jobs import Misfire, MisfirePolicy, Semantics

    async with target_running() as target, node_running(db_dsn) as node:
        alo = await create(node, spec(target.url("/alo"), semantics=Semantics.AT_LEAST_ONCE))
        amo = await create(node, spec(target.url("/amo"), semantics=Semantics.AT_MOST_ONCE,
                                      misfire=Misfire(MisfirePolicy.SKIP, grace_ms=1000)))  # fmt: skip
        await wait_for(lambda: _count(target, "/alo", 1))
        await wait_for(lambda: _count(target, "/amo", 1))
        assert node.engine is not None
        engine = node.engine

        async def claimed_ahead() -> bool:  # a slot claimed and waiting for its second: blocked, it is held
            return engine.statistics().claimed_unsent > 0

        await wait_for(claimed_ahead, interval=0.01)
        ownership = engine.ownership
        # the lease unconfirmed (etcd away)
        ownership.valid_until = lambda: 0.0  # type: ignore[method-assign]
        await trio.sleep(0.5)  # a request already on the wire may land
        before = {p: len(target.at(p)) for p in ("/alo", "/amo")}
        rows_before = len(await query(db_dsn, "SELECT 1 FROM executions"))
        await trio.sleep(2.5)
        assert {p: len(target.at(p)) for p in ("/alo", "/amo")} == before  # nothing sent
        assert len(await query(db_dsn, "SELECT 1 FROM executions")) <= rows_before + 2  # nor claimed
        assert engine.statistics().held >= 1  # what was claimed already is held
        del ownership.valid_until  # the lease proves alive
        back = datetime.now(UTC)

        async def caught_up() -> bool:
            rows = await query(db_dsn, "SELECT status, scheduled_at FROM executions")
            return not [r for r in rows if r["status"] == "claimed"] and max(
                r["scheduled_at"] for r in rows
            ) > back + timedelta(seconds=1)

        await wait_for(caught_up, timeout=10)
    for job in (alo, amo):
        rows = [r for r in await executions(db_dsn, job) if r["status"] != "claimed"]
        seconds = sorted(r["scheduled_at"] for r in rows)
        assert len(seconds) == int((seconds[-1] - seconds[0]).total_seconds()) + 1  # every slot, once
    # AT_LEAST_ONCE (FIRE_ONCE, grace 60 s): the held slots went out late
    assert {r["status"] for r in await executions(db_dsn, alo)} == {"succeeded"}
    # AT_MOST_ONCE, SKIP after 1 s: never written a byte of, so skipped by its policy, not `lost`
    amo_rows = await executions(db_dsn, amo)
    assert "lost" not in {r["status"] for r in amo_rows}
    assert [r for r in amo_rows if r["status"] == "skipped_misfire"]
    sent = [r.slot for r in target.at("/amo")]
    assert len(sent) == len(set(sent))


async def test_signature_verifies_with_the_documented_recipe(db_dsn: str) -> None:
    from scheduler_node.dispatch import verify_signature

    async with target_running() as target, node_running(db_dsn, signing_secret="s3cret") as node:
        await create(
            node,
            JobSpec(
                name="signed",
                schedule=At(soon(1.5)),
                target=JobTarget(url=target.url("/signed"), body={"hello": "world"}),
            ),
        )
        await wait_for(lambda: _count(target, "/signed", 1))
    (r,) = target.at("/signed")
    now = datetime.now(UTC).timestamp()
    assert verify_signature("s3cret", r.headers, r.body, now)
    assert not verify_signature("wrong", r.headers, r.body, now)
    assert not verify_signature("s3cret", r.headers, r.body + b" ", now)


async def test_sigterm_releases_claims_flushes_and_loses_no_result(db_dsn: str) -> None:
    import os
    import signal
    import subprocess
    import sys

    from shardwheel.embedded import free_port

    from .harness import SECRET

    port = free_port()
    args = [
        sys.executable,
        "-m",
        "shardwheel.cli",
        "node",
        "--dsn",
        db_dsn,
        "--port",
        str(port),
        "--node-id",
        "node-term",
        "--cluster-secret",
        SECRET,
        "--release-timeout",
        "5",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDWHEEL_")}
    async with target_running() as target:
        target.behaviours["/term"] = Behaviour(delay_s=0.3)
        proc = await trio.lowlevel.open_process(args, env=env, stdin=subprocess.DEVNULL)
        try:
            node = _Remote(f"http://127.0.0.1:{port}")
            await wait_for(node.ready, timeout=30)
            jobs = [await create(node, spec(target.url("/term"), timeout_ms=5000)) for _ in range(20)]  # type: ignore[arg-type]
            await wait_for(lambda: _count(target, "/term", 40), timeout=10)
            # Inside the claim window of the next second (claims go out 300 ms ahead): those rows exist, unsent.
            now = datetime.now(UTC)
            await trio.sleep((1850 - now.microsecond / 1000) % 1000 / 1000)
            next_slot = (datetime.now(UTC) + timedelta(seconds=1)).replace(microsecond=0)
            proc.send_signal(signal.SIGTERM)
            with trio.fail_after(20):
                code = await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
    assert code == 0
    rows = await query(db_dsn, "SELECT * FROM executions WHERE job_id = ANY($1::uuid[])", jobs)
    assert not [r for r in rows if r["status"] in ("claimed", "retry_wait")]  # nothing left hanging
    received = {(r.job, r.slot) for r in target.at("/term")}
    succeeded = {
        (str(r["job_id"]), r["scheduled_at"].isoformat(timespec="milliseconds").replace("+00:00", "Z"))
        for r in rows
        if r["status"] == "succeeded"
    }
    assert succeeded == received  # every request sent has its result stored, and only those
    assert not [r for r in rows if r["scheduled_at"] >= next_slot]  # the claimed-unsent slots were given back
    cursors = await query(db_dsn, "SELECT last_slot FROM job_cursor WHERE job_id = ANY($1::uuid[])", jobs)
    assert all(c["last_slot"] < next_slot for c in cursors)  # so the next owner claims them afresh


class _Remote:
    """Enough of a Node for the harness's ``write``: its HTTP address."""

    def __init__(self, url: str) -> None:
        self.addresses = [url]

    async def ready(self) -> bool:
        import httpx

        try:
            async with httpx.AsyncClient() as c:
                return (await c.get(f"{self.addresses[0]}/readyz")).status_code == 200
        except httpx.HTTPError:
            return False


async def test_graceful_stop_gives_back_claimed_unsent_slots(db_dsn: str) -> None:
    async with target_running() as target:
        async with node_running(db_dsn) as node:
            jobs = [await create(node, spec(target.url("/give"))) for _ in range(10)]
            await wait_for(lambda: _count(target, "/give", 20), timeout=10)
            now = datetime.now(UTC)
            await trio.sleep((1850 - now.microsecond / 1000) % 1000 / 1000)
            next_slot = (datetime.now(UTC) + timedelta(seconds=1)).replace(microsecond=0)
            assert node.engine is not None
            unsent = node.engine.statistics().claimed_unsent
            claimed = await query(
                db_dsn, "SELECT count(*) AS n FROM executions WHERE scheduled_at = $1", next_slot
            )
            assert unsent == 10 and claimed[0]["n"] == 10  # the next second is claimed, not yet sent
    rows = await query(db_dsn, "SELECT * FROM executions WHERE job_id = ANY($1::uuid[])", jobs)
    assert not [r for r in rows if r["scheduled_at"] >= next_slot]
    assert {r["status"] for r in rows} == {"succeeded"}
    assert len(rows) == len(target.at("/give"))


async def test_a_slot_claimed_at_write_time_fires_even_when_the_next_is_beyond_the_horizon(
    db_dsn: str,
) -> None:
    async with target_running() as target, node_running(db_dsn) as node:
        start = datetime.now(UTC) + timedelta(milliseconds=200)
        start = start.replace(microsecond=start.microsecond // 1000 * 1000)
        # due within the 300 ms lookahead when written; its next slot is 2 h away, beyond the 60 s horizon
        job = await create(node, spec(target.url("/soon"), Every("2h"), start_at=start))
        await wait_for(lambda: _count(target, "/soon", 1), timeout=5)
    assert await statuses(db_dsn, job) == [S.SUCCEEDED]


async def test_a_graceful_stop_mid_burst_leaves_nothing_claimed_and_records_every_send(db_dsn: str) -> None:
    from bench.harness import insert_jobs

    n = 1000
    async with target_running() as target:
        jobs = await trio.to_thread.run_sync(
            lambda: asyncio.run(insert_jobs(db_dsn, [spec(target.url("/burst"))] * n))
        )
        async with node_running(db_dsn) as node:
            await wait_for(lambda: _count(target, "/burst", 2 * n), timeout=20)
            now = datetime.now(UTC)
            await trio.sleep((1005 - now.microsecond / 1000) % 1000 / 1000)  # 5 ms into a second's burst
            assert node.engine is not None
        sent = {(r.job, datetime.fromisoformat(r.slot)) for r in target.at("/burst")}
    rows = await query(db_dsn, "SELECT job_id, scheduled_at, status FROM executions WHERE job_id = ANY($1)", jobs)
    assert [r for r in rows if r["status"] == "claimed"] == []  # given back or finished, none left claimed
    recorded = {(str(r["job_id"]), r["scheduled_at"]) for r in rows if r["status"] == "succeeded"}
    assert sent <= recorded  # every send's result is in PostgreSQL
