"""Epochs only grow; a write carrying a stale epoch is refused (reported fenced), the current one succeeds."""

from __future__ import annotations

import asyncpg
import pytest
import trio

from protocol.errors import Fenced, NotFound
from protocol.executions import ExecutionStatus, Origin
from protocol.internal import JobWrite, JobWriteOp
from protocol.jobs import JobState
from scheduler_node.store import (
    AlertRow,
    ClaimRow,
    ExecKey,
    NextFire,
    ResultRow,
    bump_epoch,
    claim_slots,
    current_epoch,
    delete_unsent_claims,
    fence_arrays,
    insert_alerts,
    raise_next_fire_at,
    read_epochs,
    set_job_state,
    take_over_shard,
    write_job,
    write_results,
)
from scheduler_node.trio_store import TrioStore

from .conftest import T0, create_job, job_in_shard, ms, own, slots, spec


async def test_bumps_grow_by_one_and_record_the_owner(store: TrioStore) -> None:
    assert await store.call(current_epoch, 5) == 0
    assert [await store.call(bump_epoch, 5, f"n{i}") for i in range(3)] == [1, 2, 3]
    e = await store.call(read_epochs, [5, 6])
    assert (e[5].epoch, e[5].owner, e[6].epoch, e[6].owner) == (3, "n2", 0, None)
    assert len(await store.call(read_epochs)) == 256
    with pytest.raises(NotFound, match="shard 999"):
        await store.call(bump_epoch, 999, "n")


async def test_concurrent_bumps_hand_out_distinct_increasing_epochs(store: TrioStore) -> None:
    got: list[int] = []

    async def bumper(i: int) -> None:
        for _ in range(10):
            got.append(await store.call(bump_epoch, 9, f"n{i}"))

    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(bumper, i)
    assert sorted(got) == list(range(1, 41))
    assert await store.call(current_epoch, 9) == 40


@pytest.mark.parametrize("sql", [
    "UPDATE shard_epochs SET epoch = epoch - 1 WHERE shard = 4",
    "UPDATE shard_epochs SET epoch = 0, owner = 'x' WHERE shard = 4",
    "UPDATE shard_epochs SET owner = 'x' WHERE shard = 4",
    "DELETE FROM shard_epochs WHERE shard = 4",
])  # fmt: skip
async def test_the_database_refuses_epochs_that_do_not_grow(store: TrioStore, sql: str) -> None:
    await store.call(bump_epoch, 4, "n")
    with pytest.raises(asyncpg.RaiseError, match="shard 4"):
        await store.run(store.pool.execute, sql)
    assert await store.call(current_epoch, 4) == 1


def test_fence_arrays_dedupe_and_refuse_two_epochs_for_a_shard() -> None:
    assert fence_arrays([(3, 1), (1, 7), (3, 1)]) == ([1, 3], [7, 1])
    with pytest.raises(ValueError, match="two epochs"):
        fence_arrays([(3, 1), (3, 2)])


async def test_every_write_kind_is_fenced_by_the_epoch(store: TrioStore) -> None:
    shard = 21
    old = await own(store, shard, "old")
    job, _ = await create_job(store, old)
    claimed = await store.call(claim_slots, "old", [ClaimRow(shard, old.epoch, job, ms(t)) for t in slots(3)])
    assert len(claimed.applied) == 3 and not claimed.fenced
    new = await own(store, shard, "new")

    # Batches: the stale epoch's rows are not written and the shard comes back fenced, not as conflicts.
    r = await store.call(claim_slots, "old", [ClaimRow(shard, old.epoch, job, ms(t))
                                              for t in slots(2, T0.replace(hour=13))])  # fmt: skip
    assert (r.applied, r.conflicts, r.fenced) == ([], [], frozenset({shard}))
    result = ResultRow(
        shard, old.epoch, job, ms(T0), Origin.SCHEDULED, ExecutionStatus.SUCCEEDED, 1, finished_ms=ms(T0)
    )
    r2 = await store.call(write_results, [result])
    assert (r2.applied, r2.conflicts, r2.fenced) == ([], [], frozenset({shard}))
    r3 = await store.call(raise_next_fire_at, [NextFire(shard, old.epoch, job, 1, T0.replace(hour=20))])
    assert r3.fenced == {shard}
    alert = AlertRow(shard, old.epoch, job, "acme", T0, Origin.SCHEDULED, "execution_failed", "x")
    assert (await store.call(insert_alerts, [alert])).fenced == {shard}
    r4 = await store.call(delete_unsent_claims, shard, old.epoch, claimed.applied)
    assert r4.fenced == {shard} and r4.applied == []
    # Transactions raise Fenced.
    with pytest.raises(Fenced) as err:
        await store.call(write_job, old, job, JobWrite(op=JobWriteOp.PAUSE, actor="a", tenant="acme"))
    assert err.value.shards == {shard}
    with pytest.raises(Fenced):
        await store.call(set_job_state, old, job, JobState.AUTO_PAUSED, tenant="acme")
    with pytest.raises(Fenced):
        await store.call(take_over_shard, shard, old.epoch)
    # Nothing of the above was written.
    rows = await store.run(store.pool.fetch, "SELECT status, epoch FROM executions WHERE shard = $1", shard)
    assert sorted((r["status"], r["epoch"]) for r in rows) == [("claimed", old.epoch)] * 3
    assert (await store.run(store.pool.fetchval, "SELECT count(*) FROM alerts")) == 0

    # The current epoch goes through.
    taken = await store.call(take_over_shard, shard, new.epoch)
    assert len(taken.resume) == 3
    r5 = await store.call(claim_slots, "new", [ClaimRow(shard, new.epoch, job, ms(T0.replace(hour=13)))])
    assert len(r5.applied) == 1 and not r5.fenced
    r6 = await store.call(write_results, [
        ResultRow(shard, new.epoch, job, ms(T0), Origin.SCHEDULED, ExecutionStatus.SUCCEEDED, 1, finished_ms=ms(T0))
    ])  # fmt: skip
    assert r6.applied == [ExecKey(shard, job, ms(T0), Origin.SCHEDULED)]
    out = await store.call(write_job, new, job, JobWrite(op=JobWriteOp.PAUSE, actor="a", tenant="acme"))
    assert out.state == JobState.PAUSED


async def test_a_batch_over_several_shards_drops_only_the_fenced_ones(store: TrioStore) -> None:
    a, b, c = await own(store, 30), await own(store, 31), await own(store, 32)
    jobs = {s: job_in_shard(s) for s in (30, 31, 32)}
    await store.call(bump_epoch, 31, "thief")
    rows = [ClaimRow(f.shard, f.epoch, jobs[f.shard], ms(t)) for f in (a, b, c) for t in slots(4)]
    r = await store.call(claim_slots, "me", rows)
    assert r.fenced == {31}
    assert sorted({k.shard for k in r.applied}) == [30, 32] and len(r.applied) == 8 and r.conflicts == []
    # Rows of an unfenced shard that already exist are conflicts, not fenced.
    again = await store.call(claim_slots, "me", rows)
    assert again.fenced == {31} and again.applied == [] and len(again.conflicts) == 8
    assert {k.shard for k in again.conflicts} == {30, 32}


async def test_a_job_write_with_the_current_epoch_succeeds(store: TrioStore) -> None:
    fence = await own(store, 40)
    job, out = await create_job(store, fence, job_spec=spec("fresh"))
    assert out.created and out.version == 1
