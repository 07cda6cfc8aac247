"""Jobs: fenced writes with optimistic versions, soft deletes, idempotency, listing, and the loading queries."""

from __future__ import annotations

import uuid
from datetime import timedelta

import asyncpg
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import Conflict, KeyReused, NotFound, SpecError, VersionMismatch
from protocol.executions import Origin
from protocol.internal import JobWrite, JobWriteOp, JobWritten
from protocol.jobs import Job, JobState, Semantics
from scheduler_node.store import (
    ClaimRow,
    Fence,
    NewJob,
    NextFire,
    StateChange,
    UnreadableJob,
    claim_slots,
    create_jobs,
    due_jobs,
    get_job,
    job_uuid,
    jobs_by_id,
    list_audit,
    list_jobs,
    raise_next_fire_at,
    set_job_state,
    set_job_states,
    write_job,
    write_job_and_claim,
)
from scheduler_node.trio_store import TrioStore

from .conftest import T0, create_job, job_in_shard, ms, own, spec


def op(kind: JobWriteOp, **kw: object) -> JobWrite:
    return JobWrite(op=kind, actor="alice", tenant=kw.pop("tenant", "acme"), **kw)  # type: ignore[arg-type]


def test_a_job_uuid_is_the_stdlib_uuid_for_every_use_but_faster() -> None:
    text = "9c19ecb7-de59-4cba-9e39-b4e7833f391a"
    fast, std = job_uuid(text), uuid.UUID(text)
    assert isinstance(fast, uuid.UUID) and type(fast) is not uuid.UUID
    assert fast == std and std == fast and hash(fast) == hash(std) and {std: 1}[fast] == 1
    assert (str(fast), fast.bytes, fast.int) == (str(std), std.bytes, std.int)
    assert msgspec.json.encode(fast) == msgspec.json.encode(std)


async def test_create_get_replace_with_versions(store: TrioStore) -> None:
    fence = await own(store, 3)
    job_id, out = await create_job(store, fence, job_spec=spec("one", tags=["a"]))
    assert (out.job_id, out.version, out.state, out.created, out.next_fire_at) == (
        job_id,
        1,
        JobState.ACTIVE,
        True,
        T0,
    )
    assert out.written() == JobWritten(version=1, state=JobState.ACTIVE, next_fire_at=T0, created=True,
                                       job_id=str(job_id))
    job = await store.call(get_job, 3, job_id)
    assert (job.id, job.tenant, job.spec, job.version, job.shard) == (
        str(job_id),
        "acme",
        spec("one", tags=["a"]),
        1,
        3,
    )

    two = spec("two", semantics=Semantics.AT_MOST_ONCE)
    out = await store.call(write_job, fence, job_id, op(JobWriteOp.UPSERT, spec=two, expected_version=1),
                           next_fire_at=T0 + timedelta(hours=1))  # fmt: skip
    assert (out.version, out.created, out.next_fire_at) == (2, False, T0 + timedelta(hours=1))
    with pytest.raises(VersionMismatch) as err:
        await store.call(
            write_job, fence, job_id, op(JobWriteOp.UPSERT, spec=spec("stale"), expected_version=1)
        )
    assert (err.value.expected, err.value.actual, err.value.status_hint) == (1, 2, 412)
    # No expected version: an unconditional replace.
    out = await store.call(
        write_job, fence, job_id, op(JobWriteOp.UPSERT, spec=spec("three")), next_fire_at=T0
    )
    assert out.version == 3
    job = await store.call(get_job, 3, job_id)
    assert job.spec.name == "three" and job.version == 3
    semantics = await store.run(store.pool.fetchval, "SELECT semantics FROM jobs WHERE id = $1", job_id)
    assert semantics == "AT_LEAST_ONCE"  # the denormalised copy follows the spec
    with pytest.raises(SpecError, match="spec: required"):
        await store.call(write_job, fence, job_id, op(JobWriteOp.UPSERT))


async def test_tenants_do_not_see_each_other(store: TrioStore) -> None:
    fence = await own(store, 3)
    job_id, _ = await create_job(store, fence, tenant="acme")
    with pytest.raises(NotFound):
        await store.call(get_job, 3, job_id, tenant="globex")
    with pytest.raises(NotFound):
        await store.call(write_job, fence, job_id, op(JobWriteOp.PAUSE, tenant="globex"))
    with pytest.raises(NotFound):  # even an upsert cannot take over another tenant's id
        await store.call(write_job, fence, job_id, op(JobWriteOp.UPSERT, tenant="globex", spec=spec()))
    assert (await store.call(get_job, 3, job_id, tenant="acme")).version == 1


async def test_pause_resume_trigger_and_soft_delete(store: TrioStore) -> None:
    fence = await own(store, 4)
    job_id, _ = await create_job(store, fence)
    paused = await store.call(write_job, fence, job_id, op(JobWriteOp.PAUSE, expected_version=1))
    assert (paused.state, paused.version) == (JobState.PAUSED, 2)
    again = await store.call(write_job, fence, job_id, op(JobWriteOp.PAUSE))
    assert again.version == 2  # a no-op pause does not invalidate ETags
    assert await store.call(due_jobs, [4], T0 + timedelta(days=1)) == []
    resumed = await store.call(
        write_job, fence, job_id, op(JobWriteOp.RESUME), next_fire_at=T0 + timedelta(minutes=5)
    )
    assert (resumed.state, resumed.version, resumed.next_fire_at) == (
        JobState.ACTIVE,
        3,
        T0 + timedelta(minutes=5),
    )
    trig = await store.call(write_job, fence, job_id, op(JobWriteOp.TRIGGER, expected_version=3))
    assert trig.version == 3
    with pytest.raises(VersionMismatch):
        await store.call(write_job, fence, job_id, op(JobWriteOp.TRIGGER, expected_version=2))

    deleted = await store.call(write_job, fence, job_id, op(JobWriteOp.DELETE, expected_version=3))
    assert (deleted.state, deleted.version, deleted.next_fire_at) == (JobState.DELETED, 4, None)
    with pytest.raises(NotFound):
        await store.call(get_job, 4, job_id)
    kept = await store.call(get_job, 4, job_id, include_deleted=True)  # soft: the row is still there
    assert kept.version == 4
    for kind in (JobWriteOp.DELETE, JobWriteOp.PAUSE, JobWriteOp.TRIGGER):
        with pytest.raises(NotFound):
            await store.call(write_job, fence, job_id, op(kind))
    # A deleted job's id is never used again: re-creating it is refused, nothing changes.
    with pytest.raises(Conflict, match="was deleted; the id of a deleted job cannot be used again"):
        await store.call(write_job, fence, job_id, op(JobWriteOp.UPSERT, spec=spec()))
    assert (await store.call(get_job, 4, job_id, include_deleted=True)).version == 4
    assert await store.call(due_jobs, [4], T0 + timedelta(days=1)) == []
    assert (await store.call(list_jobs, tenant="acme")).items == []

    actions = [e.action for e in await store.call(list_audit, shard=4, job_id=job_id)]
    assert actions == ["job.delete", "job.trigger", "job.resume", "job.pause", "job.pause", "job.upsert"]


async def test_node_decided_states(store: TrioStore) -> None:
    fence = await own(store, 5)
    job_id, _ = await create_job(store, fence)
    out = await store.call(
        set_job_state, fence, job_id, JobState.COMPLETED, tenant="acme", reason="at job fired"
    )
    assert (out.state, out.version) == (JobState.COMPLETED, 2)
    entry = (await store.call(list_audit, shard=5, job_id=job_id))[0]
    assert (entry.action, entry.actor, entry.detail["reason"]) == (
        "job.state.completed",
        "system",
        "at job fired",
    )
    # Replacing a completed job's spec makes it active again (a new `at` instant should fire).
    out = await store.call(
        write_job, fence, job_id, op(JobWriteOp.UPSERT, spec=spec("again")), next_fire_at=T0
    )
    assert out.state == JobState.ACTIVE
    # A broken job keeps why; writing its spec again makes it active and clears the reason.
    await store.call(set_job_state, fence, job_id, JobState.BROKEN, tenant="acme",
                     reason="spec does not decode")  # fmt: skip
    broken = await store.call(get_job, 5, job_id)
    assert (broken.state, broken.state_reason) == (JobState.BROKEN, "spec does not decode")
    assert await store.call(due_jobs, [5], T0 + timedelta(days=1)) == []
    await store.call(write_job, fence, job_id, op(JobWriteOp.UPSERT, spec=spec("fixed")), next_fire_at=T0)
    fixed = await store.call(get_job, 5, job_id)
    assert (fixed.state, fixed.state_reason) == (JobState.ACTIVE, None)


async def test_node_decided_states_in_one_statement(store: TrioStore) -> None:
    """A herd of completions is one fenced statement: each changed job gets a version and an audit entry; a job
    already in its state, deleted, or named with another tenant is left alone; a stale epoch writes nothing."""
    fence, other = await own(store, 6), await own(store, 7)
    done, paused, same, gone, foreign = [(await create_job(store, fence))[0] for _ in range(5)]
    elsewhere, _ = await create_job(store, other)
    await store.call(set_job_state, fence, same, JobState.COMPLETED, tenant="acme")
    await store.call(write_job, fence, gone, op(JobWriteOp.DELETE))

    def change(job_id: uuid.UUID, state: JobState, f: Fence = fence, tenant: str = "acme") -> StateChange:
        return StateChange(f.shard, f.epoch, job_id, tenant, state, f"why {state}")

    result = await store.call(set_job_states, [
        change(done, JobState.AUTO_PAUSED), change(done, JobState.COMPLETED),  # the last one of a job counts
        change(paused, JobState.AUTO_PAUSED), change(same, JobState.COMPLETED), change(gone, JobState.COMPLETED),
        change(foreign, JobState.COMPLETED, tenant="other"), change(elsewhere, JobState.COMPLETED, other),
    ])  # fmt: skip
    assert sorted(result.applied) == sorted([(done, 2), (paused, 2), (elsewhere, 2)])
    assert result.fenced == frozenset()
    assert [(await store.call(get_job, 6, j)).state for j in (done, paused, same, foreign)] == [
        JobState.COMPLETED, JobState.AUTO_PAUSED, JobState.COMPLETED, JobState.ACTIVE]  # fmt: skip
    assert (await store.call(get_job, 6, done)).state_reason == "why completed"
    entry = (await store.call(list_audit, shard=6, job_id=done))[0]
    assert (entry.action, entry.actor, entry.detail) == ("job.state.completed", "system",
                                                         {"version": 2, "reason": "why completed"})  # fmt: skip

    await own(store, 7)  # shard 7 moved on: the old epoch's change is refused, shard 6's goes through
    result = await store.call(set_job_states, [change(foreign, JobState.AUTO_PAUSED),
                                               change(elsewhere, JobState.AUTO_PAUSED, other)])  # fmt: skip
    assert (result.applied, result.fenced) == ([(foreign, 2)], frozenset({7}))
    assert (await store.call(get_job, 7, elsewhere)).state is JobState.COMPLETED


async def test_rows_of_another_version_load_or_read_as_unreadable(store: TrioStore) -> None:
    """A field this version does not know (a newer version wrote it) is ignored; a row that does not decode at
    all (an unknown schedule kind, a hand edit) comes back as an ``UnreadableJob`` beside the others."""
    fence = await own(store, 8)
    newer, _ = await create_job(store, fence)
    bad, _ = await create_job(store, fence)
    good, _ = await create_job(store, fence)
    newer_fields = """spec || '{"sla_ms": 500}'
                      || jsonb_build_object('target', spec->'target' || '{"http2": 1}')"""
    await store.run(store.pool.execute, f"UPDATE jobs SET spec = {newer_fields} WHERE id = $1", newer)
    rrule = """jsonb_set(spec, '{schedule}', '{"kind": "rrule"}')"""
    await store.run(store.pool.execute, f"UPDATE jobs SET spec = {rrule} WHERE id = $1", bad)
    loaded = {r.id if isinstance(r, UnreadableJob) else uuid.UUID(r.id): r
              for r, _ in await store.call(due_jobs, [8], T0 + timedelta(days=1))}  # fmt: skip
    assert isinstance(loaded[newer], Job) and isinstance(loaded[good], Job)
    assert loaded[newer].spec == (await store.call(get_job, 8, good)).spec
    unreadable = loaded[bad]
    assert isinstance(unreadable, UnreadableJob) and (unreadable.shard, unreadable.tenant) == (8, "acme")
    assert "stored spec does not decode" in unreadable.reason and "rrule" in unreadable.reason
    by_id = await store.call(jobs_by_id, 8, [bad, good, job_in_shard(8)])
    assert [type(j) for j in by_id] == ([UnreadableJob, Job] if bad < good else [Job, UnreadableJob])


async def test_idempotency_key_replays_or_conflicts(store: TrioStore) -> None:
    a, b = await own(store, 6), await own(store, 7)
    first_id, second_id = job_in_shard(6), job_in_shard(7)
    w = op(JobWriteOp.UPSERT, spec=spec(), idempotency_key="k1", request_hash="h1")
    first = await store.call(write_job, a, first_id, w, next_fire_at=T0)
    assert first.created and not first.replayed
    # The retry carries a new job id, in another shard; it gets the first answer and creates nothing.
    replay = await store.call(write_job, b, second_id, w, next_fire_at=T0)
    assert replay.replayed and (replay.job_id, replay.version, replay.created) == (first_id, 1, True)
    with pytest.raises(NotFound):
        await store.call(get_job, 7, second_id)
    with pytest.raises(KeyReused, match="'k1' was already used with a different request"):
        await store.call(write_job, b, second_id, op(JobWriteOp.UPSERT, spec=spec("other"), idempotency_key="k1",
                                                     request_hash="h2"))  # fmt: skip
    # Keys are per tenant.
    other = await store.call(write_job, b, second_id, op(JobWriteOp.UPSERT, tenant="globex", spec=spec(),
                                                         idempotency_key="k1", request_hash="h2"))  # fmt: skip
    assert other.created and not other.replayed
    # An expired record is as good as absent.
    await store.run(store.pool.execute, "UPDATE idempotency SET expires_at = now() - interval '1 s'")
    third_id = job_in_shard(7)
    fresh = await store.call(write_job, b, third_id, op(JobWriteOp.UPSERT, spec=spec(), idempotency_key="k1",
                                                        request_hash="h9"))  # fmt: skip
    assert fresh.created and fresh.job_id == third_id


async def test_list_jobs_filters_and_cursor_pages(store: TrioStore) -> None:
    fences = [await own(store, s) for s in (10, 11, 12)]
    made = []
    for i in range(7):
        job_id, _ = await create_job(
            store, fences[i % 3], job_spec=spec(f"report_{i}%", tags=["even"] if i % 2 == 0 else [])
        )
        made.append(job_id)
    await create_job(store, fences[0], tenant="globex")
    await store.call(write_job, fences[1 % 3], made[1], op(JobWriteOp.PAUSE))

    pages, after = [], None
    while True:
        page = await store.call(list_jobs, tenant="acme", after=after, limit=3)
        pages.append([uuid.UUID(j.id) for j in page.items])
        if page.next_after is None:
            break
        after = page.next_after
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [j for p in pages for j in p] == sorted(made)  # UUIDv7: id order is creation order
    tagged = await store.call(list_jobs, tenant="acme", tag="even")
    assert sorted(uuid.UUID(j.id) for j in tagged.items) == sorted(made[0::2])
    assert [
        uuid.UUID(j.id) for j in (await store.call(list_jobs, tenant="acme", state=JobState.PAUSED)).items
    ] == [made[1]]
    named = await store.call(
        list_jobs, tenant="acme", name_contains="RT_3%"
    )  # case-insensitive, % and _ literal
    assert [uuid.UUID(j.id) for j in named.items] == [made[3]]
    assert (await store.call(list_jobs, tenant="acme", name_contains="t_3x")).items == []
    assert len((await store.call(list_jobs, tenant=None)).items) == 8
    with pytest.raises(SpecError):
        await store.call(list_jobs, tenant="acme", limit=0)


async def test_a_tenant_the_statistics_do_not_know_is_listed_by_walking_its_index(store: TrioStore) -> None:
    """A new tenant's bulk import, before the table is analysed again: the statistics (500 tenants of 10 jobs)
    estimate a few jobs for it, and the planner chose a bitmap scan that read all 5,000 and sorted them for
    every page (0.8 s a page at 200,000 jobs). Read here: the transaction's own counter of rows fetched."""
    insert = ("INSERT INTO jobs (shard, id, tenant, name, spec, state, semantics, next_fire_at)"
              " SELECT 0, gen_random_uuid(), $1 || (i % $3), 'j', $2::text::jsonb, 'active', 'AT_LEAST_ONCE',"
              " now() FROM generate_series(1, 5000) AS i")  # fmt: skip
    stored_spec = msgspec.json.encode(spec()).decode()
    await store.run(store.pool.execute, insert, "small-tenant-", stored_spec, 500)  # 10 jobs each
    await store.run(store.pool.execute, "ANALYZE jobs")
    await store.run(store.pool.execute, insert, "new-importer", stored_spec, 1)

    async def first_page_and_rows_read(pool: asyncpg.Pool) -> tuple[int, int]:
        async with pool.acquire() as conn, conn.transaction():
            page = await list_jobs(conn, tenant="new-importer0", limit=20)
            read = await conn.fetchval(
                "SELECT idx_tup_fetch FROM pg_stat_xact_user_tables WHERE relname = 'jobs'"
            )
            return len(page.items), read

    assert await store.run(first_page_and_rows_read, store.pool) == (20, 21)


async def test_raise_next_fire_at_only_raises_for_the_current_version(store: TrioStore) -> None:
    fence = await own(store, 8)
    a, _ = await create_job(store, fence)
    b, _ = await create_job(store, fence)
    c, _ = await create_job(store, fence)
    await store.call(
        write_job, fence, c, op(JobWriteOp.UPSERT, spec=spec("v2")), next_fire_at=T0
    )  # c is at version 2
    later = T0 + timedelta(hours=2)
    r = await store.call(raise_next_fire_at, [
        NextFire(8, fence.epoch, a, 1, later),
        NextFire(8, fence.epoch, b, 1, T0 - timedelta(hours=1)),  # lower: ignored
        NextFire(8, fence.epoch, c, 1, later),  # computed from an old version: ignored
    ])  # fmt: skip
    assert (r.applied, sorted(r.conflicts), r.fenced) == ([a], sorted([b, c]), frozenset())
    got = {uuid.UUID(j.id): j.next_fire_at for j, _ in await store.call(due_jobs, [8], later)}
    assert got == {a: later, b: T0, c: T0}
    done = await store.call(raise_next_fire_at, [NextFire(8, fence.epoch, b, 1, None)])  # never fires again
    assert done.applied == [b]
    assert b not in {uuid.UUID(j.id) for j, _ in await store.call(due_jobs, [8], later + timedelta(days=999))}


# ---- due_jobs against a model --------------------------------------------------------------------------------

SHARDS = [0, 1, 2, 200, 255]
_SPEC_JSON = msgspec.json.encode(spec()).decode()

job_rows = st.lists(
    st.tuples(
        st.sampled_from(SHARDS),
        st.sampled_from(
            [JobState.ACTIVE] * 3 + [s for s in JobState if s != JobState.ACTIVE]
        ),  # mostly active
        st.integers(0, 3).map(lambda n: n == 0),  # deleted, one time in four
        # next_fire_at and `until` share a small range, so ties (next_fire_at == until) are frequent.
        st.none() | st.integers(-5, 5).map(lambda s: T0 + timedelta(seconds=s)),  # next_fire_at
    ),
    max_size=40,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=job_rows, shards=st.lists(st.sampled_from([*SHARDS, 3]), unique=True),
       until=st.integers(-6, 6).map(lambda s: T0 + timedelta(seconds=s)),
       after=st.none() | st.integers(-6, 6).map(lambda s: T0 + timedelta(seconds=s)))  # fmt: skip
async def test_due_jobs_returns_exactly_the_due_jobs_of_the_given_shards(
    db_dsn: str,
    rows: list[tuple[int, JobState, bool, object]],
    shards: list[int],
    until: object,
    after: object,
) -> None:
    # pytest-trio runs each example in its own trio run, so the example opens its own bridge (the `store`
    # fixture's loop belongs to another run).
    async with TrioStore.open(db_dsn, max_size=1) as store:
        await store.run(store.pool.execute, "DELETE FROM jobs")
        ids = [job_in_shard(r[0]) for r in rows]
        await store.run(
            store.pool.execute,
            "INSERT INTO jobs (shard, id, tenant, name, spec, state, semantics, next_fire_at, deleted_at)"
            " SELECT s, id, 'acme', 'job', $6::text::jsonb, st, 'AT_LEAST_ONCE', nf, CASE WHEN d THEN now() END"
            " FROM unnest($1::int[], $2::uuid[], $3::text[], $4::bool[], $5::timestamptz[]) AS t(s, id, st, d, nf)",
            [r[0] for r in rows], ids, [r[1].value for r in rows], [r[2] for r in rows], [r[3] for r in rows],
            _SPEC_JSON,
        )  # fmt: skip
        got = [job for job, _ in await store.call(due_jobs, shards, until, after=after)]
    expected = {
        job_id for job_id, (shard, state, deleted, nf) in zip(ids, rows, strict=True)
        if shard in shards and state == JobState.ACTIVE and not deleted and nf is not None and nf <= until
        and (after is None or nf > after)
    }  # fmt: skip
    assert {uuid.UUID(j.id) for j in got} == expected
    assert len(got) == len(expected)
    order = [(j.shard, j.next_fire_at) for j in got]
    assert order == sorted(order)  # by shard, then firing order


async def test_reads_are_not_fenced(store: TrioStore) -> None:
    # Reads are never fenced: a node that just lost a shard may still read it (it will not write).
    fence = await own(store, 9)
    job_id, _ = await create_job(store, fence)
    await own(store, 9, "thief")
    assert [j.id for j, _ in await store.call(due_jobs, [9], T0)] == [str(job_id)]


async def test_due_jobs_carry_their_misfire_cursor(store: TrioStore) -> None:
    fence = await own(store, 12)
    fired, fresh = (await create_job(store, fence))[0], (await create_job(store, fence))[0]
    await store.call(claim_slots, "node-a", [ClaimRow(12, fence.epoch, fired, ms(T0 - timedelta(seconds=s)))
                                             for s in (3, 2)])  # fmt: skip
    got = {uuid.UUID(j.id): last for j, last in await store.call(due_jobs, [12], T0)}
    assert got == {fired: T0 - timedelta(seconds=2), fresh: None}


async def test_create_jobs_inserts_many_in_one_fenced_statement_and_answers_a_retry_as_stored(
    store: TrioStore,
) -> None:
    a, b = await own(store, 5), await own(store, 6)
    rows = [NewJob(f.shard, f.epoch, job_in_shard(f.shard), "acme", "key:k", spec(f"j{i}", tags=["x", "y"]), T0)
            for i, f in enumerate([a, a, b])]  # fmt: skip
    out = await store.call(create_jobs, rows)
    assert sorted(j.spec.name for j in out.created) == ["j0", "j1", "j2"] and not out.existing and not out.fenced
    stored = await store.call(get_job, 5, rows[0].job_id, tenant="acme")
    assert (stored.version, stored.state, stored.next_fire_at, stored.spec) == (1, JobState.ACTIVE, T0, rows[0].spec)
    listed = await store.call(list_jobs, tenant="acme", tag="y")
    assert {j.id for j in listed.items} == {str(r.job_id) for r in rows}  # name and tags columns from the spec
    audit = await store.call(list_audit, tenant="acme")
    assert sorted(str(e.job_id) for e in audit if e.action == "job.upsert") == sorted(str(r.job_id) for r in rows)

    # The same request again (its answer was lost): nothing written twice, every row answered as stored.
    await store.call(write_job, a, rows[1].job_id, op(JobWriteOp.PAUSE))
    await store.call(write_job, a, rows[0].job_id, op(JobWriteOp.DELETE))
    other = NewJob(b.shard, b.epoch, rows[2].job_id, "globex", "key:g", spec("taken"), T0)
    again = await store.call(create_jobs, [*rows, other])
    assert not again.created
    assert {k: (o.version, o.state) for k, o in again.existing.items()} == {
        rows[1].job_id: (2, JobState.PAUSED), rows[2].job_id: (1, JobState.ACTIVE)}
    assert "deleted" in str(again.refused[rows[0].job_id])
    (fenced_epoch, current) = (b.epoch, await own(store, 6))
    late = await store.call(create_jobs, [NewJob(6, fenced_epoch, job_in_shard(6), "acme", "k", spec("late"), T0)])
    assert late.fenced == {6} and not late.created and current.epoch > fenced_epoch


async def test_a_trigger_claims_its_slot_in_its_own_transaction_and_a_replay_claims_none(store: TrioStore) -> None:
    fence = await own(store, 9)
    job_id, _ = await create_job(store, fence)
    trigger = op(JobWriteOp.TRIGGER, idempotency_key="t-1", request_hash="h")
    claim = [ClaimRow(9, fence.epoch, job_id, ms(T0), origin=Origin.MANUAL)]
    out, claimed = await store.call(write_job_and_claim, fence, job_id, trigger, claims=claim, node="node-a")
    assert out.slots == 1 and [k.job_id for k in claimed] == [job_id]
    again, none = await store.call(write_job_and_claim, fence, job_id, trigger, claims=claim, node="node-a")
    assert again.replayed and again.slots == 1 and none == []
    rows = await store.run(store.pool.fetch, "SELECT origin, status FROM executions WHERE job_id = $1", job_id)
    assert [(r["origin"], r["status"]) for r in rows] == [("manual", "claimed")]
    with pytest.raises(NotFound):  # another tenant's job: nothing written, nothing claimed
        await store.call(write_job_and_claim, fence, job_id, op(JobWriteOp.TRIGGER, tenant="globex"),
                         claims=[ClaimRow(9, fence.epoch, job_id, ms(T0) + 1, origin=Origin.MANUAL)], node="n")
    assert len(await store.run(store.pool.fetch, "SELECT 1 FROM executions WHERE job_id = $1", job_id)) == 1
