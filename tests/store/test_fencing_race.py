"""A takeover racing a write: once the bump's UPDATE has returned, no write with the old epoch may commit.

How the check works (and why it can fail): the bump runs in its own transaction; right after its
``UPDATE shard_epochs`` returns, that same transaction counts the old-epoch writes it can see (READ COMMITTED:
every write committed so far). After everything has committed we count again. Any difference is a write with
the old epoch that committed after the bump took the epoch row, which the fencing rule forbids. Interleavings
are forced with a third connection that watches ``pg_stat_activity`` until one side is blocked on a lock (or
has finished: a broken fence does not block), so no iteration depends on scheduling luck:

- writer first: the writer's transaction has written (holding the epoch row FOR SHARE) when the bump starts;
  the bump must wait, and the writer's rows commit before it.
- bump first: the bump holds the row when the writer's statement starts; the writer must wait, re-check the
  epoch after the bump commits, and write nothing (``fenced``).
- random: both sides with random delays, many iterations.

The negative controls run the same harness against deliberately broken fences (``FOR KEY SHARE``, which does not
conflict with a non-key UPDATE, and no lock at all) and require it to report violations in both forced orders:
the test is able to fail.
"""

from __future__ import annotations

import abc
import asyncio
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg
import pytest

import scheduler_node.store.executions as executions_mod
import scheduler_node.store.jobs as jobs_mod
from protocol.errors import Fenced
from protocol.executions import ExecutionStatus, Origin
from protocol.internal import JobWrite, JobWriteOp
from scheduler_node.store import (
    ClaimRow,
    Fence,
    ResultRow,
    bump_epoch,
    claim_slots,
    current_epoch,
    write_job,
    write_results,
)
from scheduler_node.trio_store import TrioStore

from .conftest import T0, job_in_shard, ms, slots, spec

SHARD = 17  # the shard taken over
BYSTANDER = 18  # another shard in the same batch, never bumped


@dataclass
class Outcome:
    violations: int = 0  # old-epoch writes committed after the bump's UPDATE returned
    blocked: list[bool] = field(default_factory=list)  # did the second party wait on the first's lock?
    fenced: list[bool] = field(default_factory=list)  # did the writer report SHARD fenced?


class Scenario(abc.ABC):
    """One kind of write, runnable many times: ``write`` does it with the old epoch inside the caller's open
    transaction (returning whether it was fenced); ``count`` counts its effects on SHARD."""

    async def prepare(self, conn: asyncpg.Connection, epoch: int) -> None:
        """Committed set-up with the current epoch, before the race."""

    @abc.abstractmethod
    async def write(self, conn: asyncpg.Connection, epoch: int) -> bool: ...

    @abc.abstractmethod
    async def count(self, conn: asyncpg.Connection) -> int: ...


class ClaimBatch(Scenario):
    """A claim batch spanning SHARD and BYSTANDER (the multi-shard fence: parallel shard/epoch arrays)."""

    def __init__(self) -> None:
        self.job = job_in_shard(SHARD)
        self.other = job_in_shard(BYSTANDER)

    async def write(self, conn: asyncpg.Connection, epoch: int) -> bool:
        other_epoch = await current_epoch(conn, BYSTANDER)
        rows = [ClaimRow(SHARD, epoch, self.job, ms(t)) for t in slots(5)]
        rows += [ClaimRow(BYSTANDER, other_epoch, self.other, ms(t)) for t in slots(5)]
        result = await claim_slots(conn, "old-node", rows)
        assert sum(k.shard == BYSTANDER for k in result.applied) == 5  # the other shard is never held up
        return SHARD in result.fenced

    async def count(self, conn: asyncpg.Connection) -> int:
        return await conn.fetchval(
            "SELECT count(*) FROM executions WHERE shard = $1 AND job_id = $2", SHARD, self.job
        )


class ResultBatch(Scenario):
    """Results for rows claimed (and committed) under the old epoch."""

    def __init__(self) -> None:
        self.job = job_in_shard(SHARD)

    async def prepare(self, conn: asyncpg.Connection, epoch: int) -> None:
        r = await claim_slots(conn, "old-node", [ClaimRow(SHARD, epoch, self.job, ms(t)) for t in slots(5)])
        assert len(r.applied) == 5

    async def write(self, conn: asyncpg.Connection, epoch: int) -> bool:
        rows = [ResultRow(SHARD, epoch, self.job, ms(t), Origin.SCHEDULED, ExecutionStatus.SUCCEEDED, 1,
                          finished_ms=ms(T0), attempt_started_ms=ms(T0)) for t in slots(5)]  # fmt: skip
        return SHARD in (await write_results(conn, rows)).fenced

    async def count(self, conn: asyncpg.Connection) -> int:
        return await conn.fetchval(
            "SELECT count(*) FROM executions WHERE shard = $1 AND job_id = $2 AND status = 'succeeded'",
            SHARD, self.job,
        )  # fmt: skip


class JobWriteTx(Scenario):
    """A job write: a multi-statement transaction fenced by ``lock_fence`` at its start."""

    def __init__(self) -> None:
        self.job = job_in_shard(SHARD)

    async def write(self, conn: asyncpg.Connection, epoch: int) -> bool:
        w = JobWrite(op=JobWriteOp.UPSERT, actor="old-node", tenant="acme", spec=spec())
        try:
            await write_job(conn, Fence(SHARD, epoch), self.job, w, next_fire_at=T0)
        except Fenced:
            return True
        return False

    async def count(self, conn: asyncpg.Connection) -> int:
        jobs = await conn.fetchval("SELECT count(*) FROM jobs WHERE shard = $1 AND id = $2", SHARD, self.job)
        audit = await conn.fetchval(
            "SELECT count(*) FROM audit_log WHERE shard = $1 AND job_id = $2", SHARD, self.job
        )
        return jobs + audit


async def _blocked_or_done(observer: asyncpg.Connection, pid: int, task: asyncio.Task[object]) -> bool:
    """Wait until backend ``pid`` waits on a lock (True) or ``task`` finished without waiting (False)."""
    deadline = time.monotonic() + 10
    while not task.done():
        state = await observer.fetchval("SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", pid)
        if state == "Lock":
            return True
        assert time.monotonic() < deadline, "the racing statement neither blocked nor finished"
        await asyncio.sleep(0.001)
    return False


class Race:
    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    async def __aenter__(self) -> Race:
        self.w, self.b, self.obs = [await asyncpg.connect(self.dsn) for _ in range(3)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for c in (self.w, self.b, self.obs):
            await c.close()

    async def _writer_tx(self, sc: Scenario, epoch: int) -> bool:
        """The writer's whole transaction; a Fenced exception rolls it back."""
        tx = self.w.transaction()
        await tx.start()
        try:
            fenced = await sc.write(self.w, epoch)
        except BaseException:
            await tx.rollback()
            raise
        await tx.commit()
        return fenced

    async def _bump_and_count(self, sc: Scenario) -> int:
        """Inside the bump's open transaction: bump, then at once count the old-epoch writes visible."""
        await bump_epoch(self.b, SHARD, "new-node")
        return await sc.count(self.b)

    async def writer_first(self, sc: Scenario, out: Outcome) -> None:
        old = await current_epoch(self.obs, SHARD)
        await sc.prepare(self.obs, old)
        wtx = self.w.transaction()
        await wtx.start()
        out.fenced.append(await sc.write(self.w, old))  # holds SHARD's epoch row FOR SHARE (if fenced right)
        btx = self.b.transaction()
        await btx.start()
        bump = asyncio.ensure_future(self._bump_and_count(sc))
        out.blocked.append(await _blocked_or_done(self.obs, self.b.get_server_pid(), bump))
        await wtx.commit()
        seen_by_bump = await bump
        await btx.commit()
        out.violations += await sc.count(self.obs) - seen_by_bump

    async def bump_first(self, sc: Scenario, out: Outcome) -> None:
        old = await current_epoch(self.obs, SHARD)
        await sc.prepare(self.obs, old)
        btx = self.b.transaction()
        await btx.start()
        seen_by_bump = await self._bump_and_count(sc)
        writer = asyncio.ensure_future(self._writer_tx(sc, old))
        out.blocked.append(await _blocked_or_done(self.obs, self.w.get_server_pid(), writer))
        await btx.commit()
        out.fenced.append(await writer)
        out.violations += await sc.count(self.obs) - seen_by_bump

    async def random_order(self, sc: Scenario, out: Outcome, rng: random.Random) -> None:
        old = await current_epoch(self.obs, SHARD)
        await sc.prepare(self.obs, old)
        seen: list[int] = []

        async def writer() -> None:
            await asyncio.sleep(rng.random() * 0.003)
            out.fenced.append(await self._writer_tx(sc, old))

        async def bumper() -> None:
            await asyncio.sleep(rng.random() * 0.003)
            async with self.b.transaction():
                seen.append(await self._bump_and_count(sc))
                await asyncio.sleep(rng.random() * 0.002)

        await asyncio.gather(writer(), bumper())
        out.violations += await sc.count(self.obs) - seen[0]


async def run_race(
    dsn: str, make: Callable[[], Scenario], order: str, iterations: int, seed: int = 0
) -> Outcome:
    out = Outcome()
    rng = random.Random(seed)
    async with Race(dsn) as race:
        for _ in range(iterations):
            sc = make()
            match order:
                case "writer_first":
                    await race.writer_first(sc, out)
                case "bump_first":
                    await race.bump_first(sc, out)
                case "random":
                    await race.random_order(sc, out, rng)
    return out


SCENARIOS: dict[str, Callable[[], Scenario]] = {
    "claims": ClaimBatch,
    "results": ResultBatch,
    "job_write": JobWriteTx,
}


@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_writer_first_commits_before_the_bump(store: TrioStore, db_dsn: str, scenario: str) -> None:
    out = await store.run(run_race, db_dsn, SCENARIOS[scenario], "writer_first", 10)
    assert out.violations == 0
    assert all(out.blocked), "the bump must wait for the writer's FOR SHARE lock"
    assert not any(out.fenced), "a writer that locked first is not fenced"


@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_bump_first_fences_the_writer(store: TrioStore, db_dsn: str, scenario: str) -> None:
    out = await store.run(run_race, db_dsn, SCENARIOS[scenario], "bump_first", 10)
    assert out.violations == 0
    assert all(out.blocked), "the writer must wait for the bump's row lock"
    assert all(out.fenced), "after the bump commits, the writer re-checks the epoch and is fenced"


@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_random_interleavings(store: TrioStore, db_dsn: str, scenario: str) -> None:
    out = await store.run(run_race, db_dsn, SCENARIOS[scenario], "random", 60, 1234)
    assert out.violations == 0
    assert 0 < sum(out.fenced) < 60, "both orders should occur (about half and half with these delays)"


# ---- negative controls: the harness must catch broken fences ---------------------------------------------------

BROKEN_CLAIM_SQL = {
    "key_share": executions_mod._CLAIM_SQL.replace("FOR SHARE OF se", "FOR KEY SHARE OF se"),
    "no_lock": executions_mod._CLAIM_SQL.replace("FOR SHARE OF se", ""),
}


async def _check_then_write(conn: asyncpg.Connection, fence: Fence) -> None:
    """A broken lock_fence: checks the epoch without locking the row, so a bump can commit in between."""
    if await conn.fetchval("SELECT epoch FROM shard_epochs WHERE shard = $1", fence.shard) != fence.epoch:
        raise Fenced([fence.shard])


@pytest.mark.parametrize("order", ["writer_first", "bump_first"])
@pytest.mark.parametrize("broken", BROKEN_CLAIM_SQL)
async def test_harness_catches_a_broken_batch_fence(
    store: TrioStore, db_dsn: str, monkeypatch: pytest.MonkeyPatch, broken: str, order: str
) -> None:
    assert BROKEN_CLAIM_SQL[broken] != executions_mod._CLAIM_SQL
    monkeypatch.setattr(executions_mod, "_CLAIM_SQL", BROKEN_CLAIM_SQL[broken])
    out = await store.run(run_race, db_dsn, ClaimBatch, order, 3)
    assert out.violations == 3 * 5  # every iteration's 5 rows committed after the bump


@pytest.mark.parametrize("order", ["writer_first", "bump_first"])
async def test_harness_catches_a_broken_transaction_fence(
    store: TrioStore, db_dsn: str, monkeypatch: pytest.MonkeyPatch, order: str
) -> None:
    monkeypatch.setattr(jobs_mod, "lock_fence", _check_then_write)
    out = await store.run(run_race, db_dsn, JobWriteTx, order, 3)
    assert out.violations == 3 * 2  # the job row and its audit row, each iteration


def test_scenarios_use_distinct_jobs() -> None:
    assert len({ClaimBatch().job for _ in range(5)}) == 5 and isinstance(ClaimBatch().job, uuid.UUID)
