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
from protocol.jobs import JobSpec
from protocol.jobs import Target as JobTarget
from protocol.schedules import At, Cron, Every

from .harness import (
    Behaviour,
    create,
    executions,
    node_running,
    query,
    statuses,
    target_running,
    wait_for,
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


async def test_signature_verifies_with_the_documented_recipe_through_a_rotation(db_dsn: str) -> None:
    from scheduler_node.dispatch import verify_signature

    rotating = {"signing_secret": "n3w-s3cret", "previous_signing_secret": "s3cret"}
    async with target_running() as target, node_running(db_dsn, **rotating) as node:
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
    assert verify_signature("s3cret", r.headers, r.body, now)  # a target not switched yet
    assert verify_signature("n3w-s3cret", r.headers, r.body, now)  # one that has
    assert not verify_signature("wrong", r.headers, r.body, now)
    assert not verify_signature("s3cret", r.headers, r.body + b" ", now)


async def test_a_target_resolving_to_a_refused_address_fails_once_with_an_alert(db_dsn: str) -> None:
    """Validation passes a name (no DNS there); at firing time the node resolves it, finds an address the
    egress policy refuses, and the slot ends failed (``egress denied``) after one attempt, with its alert."""
    from .dispatch.test_egress import resolving

    with resolving({"internal.example": ["10.0.0.8"]}):
        async with node_running(db_dsn) as node:
            job = await create(node, spec("http://internal.example/hook", At(soon(0.5)),
                                          alert_webhook="http://internal.example/alerts"))  # fmt: skip

            async def ended() -> bool:
                return [r["status"] for r in await executions(db_dsn, job)] == [S.FAILED.value]

            await wait_for(ended, timeout=10)
            (row,) = await executions(db_dsn, job)
            assert row["attempt"] == 1
            assert row["error"] == "egress denied: internal.example is a private address 10.0.0.8"
            sql = "SELECT kind, last_error, next_delivery_at FROM alerts WHERE job_id = $1"

            async def given_up() -> bool:
                return any(a["last_error"] is not None for a in await query(db_dsn, sql, job))

            await wait_for(given_up, timeout=10)  # the webhook resolves to the same address: refused, no retry
            (a,) = await query(db_dsn, sql, job)
            assert a["kind"] == "execution_failed"
            assert a["last_error"].startswith("egress denied") and a["next_delivery_at"] is None


async def test_a_row_a_newer_version_wrote_loads_and_fires(db_dsn: str) -> None:
    """Rolling upgrades: fields this version does not know, in the spec and in its target, are ignored at
    load; the job fires."""
    async with target_running() as target:
        async with node_running(db_dsn) as node:
            job = await create(node, spec(target.url("/newer"), At(soon(4))))
        newer = """spec || '{"sla_ms": 500}' || jsonb_build_object('target', spec->'target' || '{"http2": 1}')"""
        await query(db_dsn, f"UPDATE jobs SET spec = {newer} WHERE id = $1", job)
        async with node_running(db_dsn):

            async def fired() -> bool:
                return await statuses(db_dsn, job) == [S.SUCCEEDED]

            await wait_for(fired, timeout=15)
    assert len(target.at("/newer")) == 1


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
        "--dev",
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
