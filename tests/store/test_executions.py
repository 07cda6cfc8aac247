"""Executions: claims, results, takeover, graceful release, partitions; batches are one statement."""

from __future__ import annotations

import uuid
from datetime import timedelta

import asyncpg
import pytest

from protocol.executions import ExecutionAttempt, ExecutionStatus, Origin
from protocol.internal import JobWrite, JobWriteOp
from protocol.jobs import Semantics
from scheduler_node.store import (
    ClaimRow,
    ExecKey,
    ResultRow,
    bound_excerpt,
    bump_epoch,
    claim_rows,
    claim_slots,
    delete_unsent_claims,
    drop_partitions_before,
    ensure_partitions,
    execution_counts,
    failed_executions,
    job_cursors,
    list_attempts,
    list_executions,
    own_unsent_claims,
    take_over_shard,
    write_job,
    write_results,
)
from scheduler_node.trio_store import TrioStore

from .conftest import T0, create_job, from_ms, job_in_shard, ms, own, slots, spec

S = ExecutionStatus
SCHED, MANUAL = Origin.SCHEDULED, Origin.MANUAL


def result(key: ExecKey, epoch: int, status: ExecutionStatus, attempt: int = 1, **kw: object) -> ResultRow:
    return ResultRow(key.shard, epoch, key.job_id, key.slot_ms, key.origin, status, attempt, **kw)  # type: ignore[arg-type]


async def rows_of(store: TrioStore, shard: int) -> dict[ExecKey, asyncpg.Record]:
    recs = await store.run(
        store.pool.fetch, "SELECT *, tableoid::regclass::text AS part FROM executions WHERE shard = $1", shard
    )
    return {ExecKey(r["shard"], r["job_id"], ms(r["scheduled_at"]), Origin(r["origin"])): r for r in recs}


async def test_claims_insert_once_and_raise_the_cursor(store: TrioStore) -> None:
    f = await own(store, 50)
    job, other = job_in_shard(50), job_in_shard(50)
    first = await store.call(claim_slots, "n1", [ClaimRow(50, f.epoch, job, ms(t)) for t in slots(3)])
    assert [k.slot_ms for k in first.applied] == [ms(t) for t in slots(3)] and first.conflicts == []
    assert all(type(k.slot_ms) is int for k in first.applied)
    assert await store.call(job_cursors, 50) == {job: slots(3)[-1]}
    # Overlapping claim: only the new slots are inserted (and may be sent); the cursor never goes back.
    again = await store.call(claim_slots, "n1", [ClaimRow(50, f.epoch, job, ms(t)) for t in slots(5)[1:]]
                             + [ClaimRow(50, f.epoch, job, ms(T0 - timedelta(hours=1)))])  # fmt: skip
    assert sorted(k.slot_ms for k in again.applied) == [
        ms(t) for t in [T0 - timedelta(hours=1), *slots(5)[3:]]
    ]
    assert [k.slot_ms for k in again.conflicts] == [ms(t) for t in slots(5)[1:3]]
    assert await store.call(job_cursors, 50) == {job: slots(5)[-1]}
    # Manual and backfill slots are not part of the schedule: they do not move the cursor.
    m = await store.call(claim_slots, "n1", [ClaimRow(50, f.epoch, job, ms(T0 + timedelta(days=1)), MANUAL),
                                             ClaimRow(50, f.epoch, other, ms(T0), Origin.BACKFILL)])  # fmt: skip
    assert len(m.applied) == 2
    assert await store.call(job_cursors, 50) == {job: slots(5)[-1]}
    assert await store.call(job_cursors, 50, [other]) == {}
    # A skip is recorded terminal at once, and counts for the cursor.
    skip = ClaimRow(50, f.epoch, other, ms(T0), SCHED, S.SKIPPED_MISFIRE, error="missed by 3 h")
    assert len((await store.call(claim_slots, "n1", [skip])).applied) == 1
    rec = (await rows_of(store, 50))[skip.key()]
    assert (rec["status"], rec["error"], rec["finished_at"] is not None, rec["epoch"], rec["node"]) == (
        "skipped_misfire",
        "missed by 3 h",
        True,
        f.epoch,
        "n1",
    )
    assert (await store.call(job_cursors, 50))[other] == T0
    with pytest.raises(ValueError, match="cannot insert status succeeded"):
        await store.call(claim_slots, "n1", [ClaimRow(50, f.epoch, job, ms(T0), SCHED, S.SUCCEEDED)])



async def test_claim_rows_answers_with_the_batch_own_rows(store: TrioStore) -> None:
    f = await own(store, 49)
    job, other = job_in_shard(49), job_in_shard(49)
    t = [ms(s) for s in slots(3)]
    skip = ClaimRow(49, f.epoch, other, t[0], SCHED, S.SKIPPED_MISFIRE, error="missed")
    batch = [ClaimRow(49, f.epoch, job, t[2]), skip, ClaimRow(49, f.epoch, job, t[0])]
    first = await store.call(claim_rows, "n1", batch)
    # All inserted: the very objects, in batch order (not key order), each with its status.
    assert first.conflicts == [] and all(a is b for a, b in zip(first.applied, batch, strict=True))
    # A slot twice in one batch: its first row is inserted, the second is a conflict; with a stored slot.
    twice = [
        ClaimRow(49, f.epoch, job, t[0]),  # stored already
        ClaimRow(49, f.epoch, job, t[1], SCHED, S.SKIPPED_MISFIRE, error="missed"),
        ClaimRow(49, f.epoch, job, t[1]),
    ]
    r = await store.call(claim_rows, "n1", twice)
    assert r.applied == [twice[1]] and r.conflicts == [twice[0], twice[2]] and r.fenced == frozenset()
    assert (await rows_of(store, 49))[twice[1].key()]["status"] == "skipped_misfire"
    # Fenced: nothing inserted, nothing a conflict, the shard named.
    await store.call(bump_epoch, 49, "n2")
    r = await store.call(claim_rows, "n1", [ClaimRow(49, f.epoch, job, ms(slots(4)[3]))])
    assert (r.applied, r.conflicts, r.fenced) == ([], [], frozenset({49}))

async def test_the_batch_row_types_are_the_rows_as_tuples(store: TrioStore) -> None:
    # A batch is [astuple(row) for row in rows] sent as an array of claim_input / result_input: the types'
    # attributes must be the structs' fields, in order.
    for type_name, struct in (("claim_input", ClaimRow), ("result_input", ResultRow)):
        attributes = await store.run(
            store.pool.fetch,
            "SELECT a.attname FROM pg_attribute a JOIN pg_type t ON a.attrelid = t.typrelid"
            " WHERE t.oid = $1::regtype AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            type_name,
        )
        assert [a["attname"] for a in attributes] == list(struct.__struct_fields__)


async def test_a_long_excerpt_is_cut_on_write(store: TrioStore) -> None:
    f = await own(store, 48)
    job = job_in_shard(48)
    keys = (await store.call(claim_slots, "n1", [ClaimRow(48, f.epoch, job, ms(t)) for t in slots(3)])).applied
    long = "\ufffd" * 400  # 400 characters, 1,200 bytes
    await store.call(write_results, [result(keys[0], f.epoch, S.SUCCEEDED, response_excerpt=long),
                                     result(keys[1], f.epoch, S.SUCCEEDED, response_excerpt="ok"),
                                     result(keys[2], f.epoch, S.SUCCEEDED)])  # fmt: skip
    stored = await rows_of(store, 48)
    assert stored[keys[0]]["response_excerpt"] == bound_excerpt(long) and len(bound_excerpt(long) or "") == 341
    assert (stored[keys[1]]["response_excerpt"], stored[keys[2]]["response_excerpt"]) == ("ok", None)


async def test_ten_thousand_rows_are_one_statement(store: TrioStore, db_dsn: str) -> None:
    f = await own(store, 51)
    jobs = [job_in_shard(51) for _ in range(100)]
    rows = [ClaimRow(51, f.epoch, j, ms(t)) for j in jobs for t in slots(100)]
    assert len(rows) == 10_000
    conn = await store.run(asyncpg.connect, db_dsn)
    statements: list[str] = []
    conn.add_query_logger(lambda q: statements.append(q.query))
    try:
        # Warm up with one row each: asyncpg introspects the array types once per connection (a few queries)
        # and prepares each statement once; what we count is the steady state of the firing path.
        warm = await store.run(
            claim_slots, conn, "n1", [ClaimRow(51, f.epoch, jobs[0], ms(T0 - timedelta(hours=1)))]
        )
        await store.run(
            write_results, conn, [result(warm.applied[0], f.epoch, S.SUCCEEDED, attempt_started_ms=ms(T0))]
        )
        statements.clear()
        claimed = await store.run(claim_slots, conn, "n1", rows)
        assert len(claimed.applied) == 10_000
        assert len(statements) == 1, statements  # not one per row: unnest arrays in one statement
        done = [
            result(k, f.epoch, S.SUCCEEDED, finished_ms=ms(T0), attempt_started_ms=ms(T0))
            for k in claimed.applied
        ]
        written = await store.run(write_results, conn, done)
        assert len(written.applied) == 10_000
        assert len(statements) == 2
        assert (
            await store.run(conn.fetchval, "SELECT count(*) FROM execution_attempts WHERE shard = 51")
            == 10_001
        )
    finally:
        await store.run(conn.close)


async def test_a_day_without_partition_lands_in_default_then_moves(store: TrioStore) -> None:
    f = await own(store, 52)
    job = job_in_shard(52)
    c = await store.call(claim_slots, "n1", [ClaimRow(52, f.epoch, job, ms(t)) for t in slots(3)])
    await store.call(write_results, [result(c.applied[0], f.epoch, S.SUCCEEDED, attempt_started_ms=ms(T0))])
    assert {r["part"] for r in (await rows_of(store, 52)).values()} == {"executions_default"}

    created = await store.call(ensure_partitions, T0.date(), 2)
    assert created == [f"{t}_p{d:%Y%m%d}" for d in (T0.date(), T0.date() + timedelta(days=1))
                       for t in ("executions", "execution_attempts")]  # fmt: skip
    assert await store.call(ensure_partitions, T0.date(), 2) == []  # idempotent
    rows = await rows_of(store, 52)
    assert {r["part"] for r in rows.values()} == {"executions_p20310506"}  # moved out of DEFAULT
    assert len(rows) == 3 and rows[c.applied[0]]["status"] == "succeeded"
    assert len(await store.call(list_attempts, c.applied[0])) == 1
    assert await store.run(store.pool.fetchval, "SELECT count(*) FROM execution_attempts_default") == 0
    # Claims go on: into the new partition, and the primary key still refuses duplicates there.
    more = await store.call(claim_slots, "n1", [ClaimRow(52, f.epoch, job, ms(t)) for t in slots(4)])
    assert len(more.applied) == 1 and len(more.conflicts) == 3
    assert (await rows_of(store, 52))[more.applied[0]]["part"] == "executions_p20310506"

    # Retention: the day partition goes; DEFAULT rows before the cutoff are deleted too.
    old = T0 - timedelta(days=3)
    await store.call(claim_slots, "n1", [ClaimRow(52, f.epoch, job, ms(old))])
    retention = await store.call(drop_partitions_before, T0.date() + timedelta(days=1))
    assert retention.dropped == ["executions_p20310506", "execution_attempts_p20310506"] and retention.busy == []
    assert await rows_of(store, 52) == {}
    assert (
        await store.call(ensure_partitions, T0.date() + timedelta(days=1), 1) == []
    )  # the later day remains


async def test_retention_never_queues_the_firing_path_behind_a_long_reader(store: TrioStore, db_dsn: str) -> None:
    # A DROP of a partition needs the parent's ACCESS EXCLUSIVE lock; while it waited for one, every claim and
    # result write would queue behind it. So it waits at most its lock_timeout, and what it could not lock is
    # left for the next run.
    f = await own(store, 54)
    day = T0.date() - timedelta(days=40)
    await store.call(ensure_partitions, day, 1)
    old = T0 - timedelta(days=40)
    await store.call(claim_slots, "n1", [ClaimRow(54, f.epoch, job_in_shard(54), ms(old))])
    reader = await store.run(asyncpg.connect, db_dsn)
    try:
        tx = reader.transaction()
        await store.run(tx.start)
        await store.run(reader.fetchval, "SELECT count(*) FROM executions WHERE shard = 54")  # holds its lock
        held = await store.call(drop_partitions_before, day + timedelta(days=1), lock_timeout_ms=50)
        assert held.busy == [f"executions_p{day:%Y%m%d}"]
        assert held.dropped == [f"execution_attempts_p{day:%Y%m%d}"]  # not read: not held
        # Nothing was left locked: a claim goes through.
        now = await store.call(claim_slots, "n1", [ClaimRow(54, f.epoch, job_in_shard(54), ms(T0))])
        assert len(now.applied) == 1
        await store.run(tx.rollback)
    finally:
        await store.run(reader.close)
    again = await store.call(drop_partitions_before, day + timedelta(days=1), lock_timeout_ms=50)
    assert again.dropped == [f"executions_p{day:%Y%m%d}"] and again.busy == []
    assert ms(old) not in {k.slot_ms for k in await rows_of(store, 54)}


async def test_takeover_resumes_or_loses_per_semantics(store: TrioStore) -> None:
    old = await own(store, 53, "node-a")
    alo, _ = await create_job(store, old)
    amo, _ = await create_job(store, old, job_spec=spec("amo", semantics=Semantics.AT_MOST_ONCE))
    gone, _ = await create_job(store, old)
    far = T0 + timedelta(days=365 * 20)  # a retry due long after the takeover (the database's now())
    past = T0 - timedelta(days=365 * 20)  # a retry that was due before the takeover
    claims = [ClaimRow(53, old.epoch, j, ms(t)) for j in (alo, amo) for t in slots(4)]
    claims += [ClaimRow(53, old.epoch, gone, ms(T0))]
    c = await store.call(claim_slots, "node-a", claims)
    k = {(r.job_id, from_ms(r.slot_ms)): r.key() for r in claims}
    t0, t1, t2, t3 = slots(4)
    await store.call(write_results, [
        result(k[alo, t0], old.epoch, S.SUCCEEDED, finished_ms=ms(T0)),
        result(k[alo, t2], old.epoch, S.RETRY_WAIT, next_attempt_ms=ms(far)),
        result(k[amo, t0], old.epoch, S.FAILED, finished_ms=ms(T0)),
        result(k[amo, t2], old.epoch, S.RETRY_WAIT, next_attempt_ms=ms(far)),  # waiting: certainly not re-sent yet
        result(k[amo, t3], old.epoch, S.RETRY_WAIT, next_attempt_ms=ms(past)),  # was due: may have been in flight
    ])  # fmt: skip
    assert len(c.applied) == 9
    await store.call(write_job, old, gone, JobWrite(op=JobWriteOp.DELETE, actor="a", tenant="acme"))

    new = await own(store, 53, "node-b")
    taken = await store.call(take_over_shard, 53, new.epoch)
    resumed = {(uuid_, e.scheduled_at) for e in taken.resume for uuid_ in [e.job_id]}
    assert resumed == {(str(alo), t1), (str(alo), t2), (str(alo), t3), (str(amo), t2)}
    assert all((e.epoch, e.node) == (new.epoch, "node-b") for e in taken.resume)
    retry = next(e for e in taken.resume if e.job_id == str(alo) and e.scheduled_at == t2)
    assert (retry.status, retry.attempt, retry.next_attempt_at) == (S.RETRY_WAIT, 1, far)  # retries continue
    # A claim or a due retry may have been sent by the old owner: counted as an attempt made, so the resend
    # carries a higher X-Shardwheel-Attempt than anything the target may have seen.
    attempts = {(e.job_id, e.scheduled_at): e.attempt for e in taken.resume}
    assert attempts == {(str(alo), t1): 1, (str(alo), t2): 1, (str(alo), t3): 1, (str(amo), t2): 1}
    assert {(e.job_id, e.scheduled_at) for e in taken.lost} == {(str(amo), t1), (str(amo), t3)}
    for e in taken.lost:
        assert e.status == S.LOST and e.finished_at is not None and e.next_attempt_at is None
        assert e.error is not None and "node-a (epoch 1)" in e.error and "AT_MOST_ONCE" in e.error
    assert [(e.job_id, e.status) for e in taken.cancelled] == [(str(gone), S.CANCELLED)]
    # Terminal rows are untouched.
    rows = await rows_of(store, 53)
    assert (rows[k[alo, t0]]["status"], rows[k[alo, t0]]["epoch"]) == ("succeeded", old.epoch)
    assert (rows[k[amo, t0]]["status"], rows[k[amo, t0]]["epoch"]) == ("failed", old.epoch)

    # A retried takeover (same epoch) resumes the same rows again and loses nothing more.
    again = await store.call(take_over_shard, 53, new.epoch)
    assert {
        (e.job_id, e.scheduled_at) for e in again.resume
    } == resumed and again.lost == again.cancelled == []
    assert {(e.job_id, e.scheduled_at): e.attempt for e in again.resume} == attempts  # counted once

    # The old owner's late result is fenced; the new owner's lands.
    late = await store.call(write_results, [result(k[alo, t1], old.epoch, S.SUCCEEDED, finished_ms=ms(T0))])
    assert late.fenced == {53} and late.applied == []
    ok = await store.call(write_results, [result(k[alo, t1], new.epoch, S.SUCCEEDED, finished_ms=ms(T0))])
    assert ok.applied == [k[alo, t1]]


async def test_results_need_the_rows_epoch_and_a_live_row(store: TrioStore) -> None:
    a = await own(store, 54, "node-a")
    job, _ = await create_job(store, a)
    c = await store.call(claim_slots, "node-a", [ClaimRow(54, a.epoch, job, ms(t)) for t in slots(2)])
    b = await own(store, 54, "node-b")
    # node-b holds the shard but has not re-stamped the row: the row's epoch is not the writer's.
    r = await store.call(write_results, [result(c.applied[0], b.epoch, S.SUCCEEDED, finished_ms=ms(T0))])
    assert (r.applied, r.conflicts, r.fenced) == ([], [c.applied[0]], frozenset())
    await store.call(take_over_shard, 54, b.epoch)
    assert (
        await store.call(write_results, [result(c.applied[0], b.epoch, S.SUCCEEDED, finished_ms=ms(T0))])
    ).applied
    # A terminal row is never overwritten (a duplicate or reordered result is dropped).
    r = await store.call(write_results, [result(c.applied[0], b.epoch, S.FAILED, finished_ms=ms(T0))])
    assert r.conflicts == [c.applied[0]]
    missing = ExecKey(54, job, ms(T0 + timedelta(hours=5)), SCHED)
    assert (await store.call(write_results, [result(missing, b.epoch, S.FAILED)])).conflicts == [missing]
    with pytest.raises(ValueError, match="cannot set status claimed"):
        await store.call(write_results, [result(missing, b.epoch, S.CLAIMED)])


async def test_retry_then_success_in_one_batch(store: TrioStore) -> None:
    f = await own(store, 55)
    job = job_in_shard(55)
    key = (await store.call(claim_slots, "n1", [ClaimRow(55, f.epoch, job, ms(T0))])).applied[0]
    sent1, sent2 = T0 + timedelta(milliseconds=3), T0 + timedelta(seconds=2)
    body = "é" * 700  # 1400 bytes of UTF-8
    r = await store.call(write_results, [
        result(key, f.epoch, S.RETRY_WAIT, 1, next_attempt_ms=ms(sent2), sent_ms=ms(sent1), http_status=503,
               dispatch_lag_ms=3, error="HTTP 503", attempt_started_ms=ms(sent1),
               attempt_finished_ms=ms(sent1 + timedelta(milliseconds=40))),
        result(key, f.epoch, S.SUCCEEDED, 2, sent_ms=ms(sent2), finished_ms=ms(sent2), http_status=200, duration_ms=12,
               dispatch_lag_ms=2000, response_excerpt=body, attempt_started_ms=ms(sent2),
               attempt_finished_ms=ms(sent2)),
    ])  # fmt: skip
    assert r.applied == [key] and r.conflicts == []
    [ex] = await store.call(list_executions, 55, job, with_attempts=True)
    assert (ex.status, ex.attempt, ex.http_status, ex.sent_at, ex.dispatch_lag_ms) == (
        S.SUCCEEDED,
        2,
        200,
        sent1,
        3,
    )
    assert ex.response_excerpt == body[:512] and len(ex.response_excerpt.encode()) == 1024
    assert [(a.attempt, a.http_status, a.error) for a in ex.attempts] == [
        (1, 503, "HTTP 503"),
        (2, 200, None),
    ]


async def test_a_run_ended_at_its_first_attempt_keeps_it_in_its_own_row(store: TrioStore) -> None:
    # Most runs end at their first attempt; the execution's row then holds that attempt exactly, so no attempt
    # row is written (a row write and ~a fifth of the WAL per firing) and the readers take it from there.
    f = await own(store, 58)
    job = job_in_shard(58)
    t = slots(4)
    keys = (await store.call(claim_slots, "n1", [ClaimRow(58, f.epoch, job, ms(s)) for s in t])).applied
    sent = [ms(s) + 3 for s in t]
    await store.call(write_results, [
        result(keys[0], f.epoch, S.SUCCEEDED, 1, sent_ms=sent[0], finished_ms=sent[0] + 7, http_status=204,
               duration_ms=7, dispatch_lag_ms=3, attempt_started_ms=sent[0], attempt_finished_ms=sent[0] + 7),
        result(keys[1], f.epoch, S.TIMED_OUT, 1, sent_ms=sent[1], finished_ms=sent[1] + 900, duration_ms=900,
               error="timeout", attempt_started_ms=sent[1], attempt_finished_ms=sent[1] + 900),
        # Not held by the row: a first attempt that is retried, and one whose row says otherwise (no send time).
        result(keys[2], f.epoch, S.RETRY_WAIT, 1, next_attempt_ms=sent[2] + 500, sent_ms=sent[2], http_status=503,
               error="HTTP 503", attempt_started_ms=sent[2], attempt_finished_ms=sent[2] + 4),
        result(keys[3], f.epoch, S.FAILED, 1, finished_ms=sent[3] + 4, http_status=500, error="HTTP 500",
               attempt_started_ms=sent[3], attempt_finished_ms=sent[3] + 4),
    ])  # fmt: skip
    stored = await store.run(store.pool.fetch, "SELECT scheduled_at FROM execution_attempts WHERE shard = 58"
                             " ORDER BY scheduled_at")  # fmt: skip
    assert [ms(r["scheduled_at"]) for r in stored] == [keys[2].slot_ms, keys[3].slot_ms]
    expected = {
        keys[0]: [(1, from_ms(sent[0]), from_ms(sent[0] + 7), 204, 7, None)],
        keys[1]: [(1, from_ms(sent[1]), from_ms(sent[1] + 900), None, 900, "timeout")],
        keys[2]: [(1, from_ms(sent[2]), from_ms(sent[2] + 4), 503, None, "HTTP 503")],
        keys[3]: [(1, from_ms(sent[3]), from_ms(sent[3] + 4), 500, None, "HTTP 500")],
    }

    def shown(attempts: list[ExecutionAttempt]) -> list[tuple[object, ...]]:
        return [(a.attempt, a.started_at, a.finished_at, a.http_status, a.duration_ms, a.error) for a in attempts]

    assert {k: shown(await store.call(list_attempts, k)) for k in keys} == expected
    listed = await store.call(list_executions, 58, job, with_attempts=True)
    assert {ExecKey(58, job, ms(e.scheduled_at), e.origin): shown(e.attempts) for e in listed} == expected
    # The retried one's second attempt ends it: both attempts stored, both listed.
    await store.call(write_results, [result(keys[2], f.epoch, S.SUCCEEDED, 2, finished_ms=sent[2] + 600,
                                            http_status=200, attempt_started_ms=sent[2] + 590,
                                            attempt_finished_ms=sent[2] + 600)])  # fmt: skip
    assert [a.attempt for a in await store.call(list_attempts, keys[2])] == [1, 2]


async def test_results_without_report_write_the_same_and_report_only_fenced(store: TrioStore) -> None:
    a, by = await own(store, 59), await own(store, 60)
    loud, quiet, bystander = job_in_shard(59), job_in_shard(59), job_in_shard(60)
    t = slots(3)
    c = await store.call(claim_slots, "n1", [ClaimRow(59, a.epoch, j, ms(s)) for j in (loud, quiet) for s in t]
                         + [ClaimRow(60, by.epoch, bystander, ms(s)) for s in t])  # fmt: skip
    assert len(c.applied) == 9
    sent1, sent2 = ms(T0) + 5, ms(T0) + 2000

    def batch(job: uuid.UUID) -> list[ResultRow]:
        return [
            ResultRow(59, a.epoch, job, ms(t[0]), SCHED, S.RETRY_WAIT, 1, next_attempt_ms=sent2, sent_ms=sent1,
                      http_status=503, dispatch_lag_ms=5, error="HTTP 503", attempt_started_ms=sent1,
                      attempt_finished_ms=sent1 + 40),
            ResultRow(59, a.epoch, job, ms(t[0]), SCHED, S.SUCCEEDED, 2, sent_ms=sent2, finished_ms=sent2 + 12,
                      http_status=200, duration_ms=12, dispatch_lag_ms=2000, response_excerpt="é" * 700,
                      attempt_started_ms=sent2, attempt_finished_ms=sent2 + 12),
            ResultRow(59, a.epoch, job, ms(t[1]), SCHED, S.FAILED, 1, sent_ms=ms(t[1]) + 1, finished_ms=ms(t[1]) + 9,
                      http_status=500, duration_ms=8, dispatch_lag_ms=1, error="HTTP 500",
                      attempt_started_ms=ms(t[1]) + 1, attempt_finished_ms=ms(t[1]) + 9),
            ResultRow(59, a.epoch, job, ms(t[2]), SCHED, S.RETRY_WAIT, 1, next_attempt_ms=ms(t[2]) + 60_000,
                      sent_ms=ms(t[2]) + 2, dispatch_lag_ms=2, error="timeout", attempt_started_ms=ms(t[2]) + 2),
        ]  # fmt: skip

    loud_r = await store.call(write_results, batch(loud))
    assert len(loud_r.applied) == 3 and loud_r.conflicts == [] and loud_r.fenced == frozenset()
    quiet_r = await store.call(write_results, batch(quiet), report=False)
    assert (quiet_r.applied, quiet_r.conflicts, quiet_r.fenced) == ([], [], frozenset())

    async def stored(table: str, job: uuid.UUID) -> list[dict[str, object]]:
        recs = await store.run(store.pool.fetch, f"SELECT * FROM {table} WHERE shard = 59 AND job_id = $1"
                               " ORDER BY scheduled_at, origin, attempt", job)  # fmt: skip
        return [{k: v for k, v in r.items() if k != "job_id"} for r in recs]

    # Row for row and column for column, the quiet batch wrote what the reported one did (claimed_at included:
    # both jobs were claimed in one statement).
    for table in ("executions", "execution_attempts"):
        assert await stored(table, quiet) == await stored(table, loud)
    [ex0, ex1, ex2] = sorted(await store.call(list_executions, 59, quiet, with_attempts=True),
                             key=lambda e: e.scheduled_at)  # fmt: skip
    assert (ex0.status, ex0.attempt, ex0.sent_at, ex0.finished_at, ex0.dispatch_lag_ms) == (
        S.SUCCEEDED,
        2,
        from_ms(sent1),
        from_ms(sent2 + 12),
        5,
    )
    assert ex0.response_excerpt == "é" * 512 and [x.attempt for x in ex0.attempts] == [1, 2]
    assert (ex1.status, ex1.http_status, ex2.status, ex2.next_attempt_at) == (
        S.FAILED,
        500,
        S.RETRY_WAIT,
        from_ms(ms(t[2]) + 60_000),
    )
    assert (ex2.attempts[0].started_at, ex2.attempts[0].finished_at) == (from_ms(ms(t[2]) + 2), None)

    # A row not written (terminal already) is not reported as a conflict either; reporting would say so.
    again = batch(quiet)[2]
    quiet_again = await store.call(write_results, [again], report=False)
    assert (quiet_again.applied, quiet_again.conflicts, quiet_again.fenced) == ([], [], frozenset())
    assert (await store.call(write_results, [again])).conflicts == [again.key()]

    # A stale epoch: its shard comes back fenced (and nothing of it is written), the other shard's rows land.
    await own(store, 59, "thief")
    before = await stored("executions", loud)
    mixed = [ResultRow(59, a.epoch, loud, ms(t[2]), SCHED, S.SUCCEEDED, 2, finished_ms=ms(t[2]) + 70_000)]
    mixed += [ResultRow(60, by.epoch, bystander, ms(s), SCHED, S.SUCCEEDED, 1, finished_ms=ms(s) + 5,
                        attempt_started_ms=ms(s) + 1) for s in t]  # fmt: skip
    r = await store.call(write_results, mixed, report=False)
    assert (r.applied, r.conflicts, r.fenced) == ([], [], frozenset({59}))
    assert await stored("executions", loud) == before
    assert [e.status for e in await store.call(list_executions, 60, bystander)] == [S.SUCCEEDED] * 3
    assert (
        await store.run(store.pool.fetchval, "SELECT count(*) FROM execution_attempts WHERE shard = 60") == 3
    )
    # The reporting variant fences the same shard.
    assert (await store.call(write_results, mixed[:1])).fenced == {59}


def test_bound_excerpt_never_splits_a_character() -> None:
    assert bound_excerpt(None) is None and bound_excerpt("ok") == "ok"
    cut = bound_excerpt("a" + "€" * 400)  # 1 + 1200 bytes
    assert cut is not None and len(cut.encode()) <= 1024 and cut == "a" + "€" * 341


async def test_graceful_release_deletes_only_unsent_claims(store: TrioStore) -> None:
    a = await own(store, 56, "node-a")
    job, _ = await create_job(store, a, job_spec=spec("amo", semantics=Semantics.AT_MOST_ONCE))
    t0, t1, t2, t3 = slots(4)
    c = await store.call(claim_slots, "node-a", [ClaimRow(56, a.epoch, job, ms(t)) for t in (t0, t1, t2, t3)]
                         + [ClaimRow(56, a.epoch, job, ms(t1), MANUAL)])  # fmt: skip
    k = {(from_ms(x.slot_ms), x.origin): x for x in c.applied}
    await store.call(write_results, [result(k[t0, SCHED], a.epoch, S.SUCCEEDED, finished_ms=ms(T0)),
                                     result(k[t3, SCHED], a.epoch, S.RETRY_WAIT,
                                            next_attempt_ms=ms(T0 - timedelta(days=3650)))])  # fmt: skip
    assert (await store.call(job_cursors, 56))[job] == t3
    give_back = [k[t0, SCHED], k[t2, SCHED], k[t3, SCHED], k[t1, MANUAL]]
    stale = await store.call(delete_unsent_claims, 56, a.epoch - 1, give_back)
    assert stale.fenced == {56} and stale.applied == []
    r = await store.call(delete_unsent_claims, 56, a.epoch, give_back)
    assert sorted(r.applied) == sorted([k[t2, SCHED], k[t1, MANUAL]])  # unsent claims only
    assert sorted(r.conflicts) == sorted([k[t0, SCHED], k[t3, SCHED]])  # finished / retrying: kept
    rows = await rows_of(store, 56)
    assert k[t2, SCHED] not in rows and k[t1, SCHED] in rows  # t1 was not handed back (it was sent)
    assert rows[k[t1, MANUAL]]["released_at"] is not None  # a manual slot cannot be re-derived: handed over
    # The next owner sees t2 as unclaimed: the cursor is just below it.
    assert (await store.call(job_cursors, 56))[job] == t2 - timedelta(microseconds=1)
    with pytest.raises(ValueError, match="shard 56"):
        await store.call(delete_unsent_claims, 56, a.epoch, [ExecKey(57, job, ms(T0), SCHED)])

    b = await own(store, 56, "node-b")
    taken = await store.call(take_over_shard, 56, b.epoch)
    # AT_MOST_ONCE: the handed-over manual claim resumes; t1 (claimed, maybe sent) and t3 (retry due) are lost.
    assert [(e.scheduled_at, e.origin) for e in taken.resume] == [(t1, MANUAL)]
    assert sorted(e.scheduled_at for e in taken.lost) == [t1, t3]
    again = await store.call(claim_slots, "node-b", [ClaimRow(56, b.epoch, job, ms(t2))])
    assert len(again.applied) == 1  # claimed afresh by the next owner


async def test_execution_reads(store: TrioStore) -> None:
    f = await own(store, 57)
    job, _ = await create_job(store, f, tenant="acme")
    other, _ = await create_job(store, f, tenant="globex")
    c = await store.call(
        claim_slots, "n1", [ClaimRow(57, f.epoch, j, ms(t)) for j in (job, other) for t in slots(5)]
    )
    by = {(x.job_id, from_ms(x.slot_ms)): x for x in c.applied}
    t = slots(5)
    await store.call(write_results, [
        result(by[job, t[0]], f.epoch, S.FAILED, finished_ms=ms(T0 + timedelta(seconds=10))),
        result(by[job, t[1]], f.epoch, S.TIMED_OUT, finished_ms=ms(T0 + timedelta(seconds=11))),
        result(by[job, t[2]], f.epoch, S.SUCCEEDED, finished_ms=ms(T0 + timedelta(seconds=12))),
        result(by[other, t[0]], f.epoch, S.FAILED, finished_ms=ms(T0 + timedelta(seconds=13))),
    ])  # fmt: skip
    newest = await store.call(list_executions, 57, job, limit=2)
    assert [e.scheduled_at for e in newest] == [t[4], t[3]]
    page2 = await store.call(list_executions, 57, job, limit=2, before=t[3])
    assert [e.scheduled_at for e in page2] == [t[2], t[1]]
    failed_only = await store.call(list_executions, 57, job, statuses=[S.FAILED, S.TIMED_OUT])
    assert [e.status for e in failed_only] == [S.TIMED_OUT, S.FAILED]
    acme = await store.call(failed_executions, tenant="acme")
    assert [(e.job_id, e.status) for e in acme] == [(str(job), S.TIMED_OUT), (str(job), S.FAILED)]
    assert len(await store.call(failed_executions)) == 3
    assert len(await store.call(failed_executions, before=T0 + timedelta(seconds=11))) == 1
    counts = await store.call(execution_counts, 57, job)
    assert counts == {S.FAILED: 1, S.TIMED_OUT: 1, S.SUCCEEDED: 1, S.CLAIMED: 2}
    assert await store.call(bump_epoch, 57, "x") == f.epoch + 1


async def test_cursor_upserts_stay_hot(store: TrioStore, db_dsn: str) -> None:
    # job_cursor has no index on last_slot and fillfactor 70, so raising a cursor is a heap-only-tuple update:
    # no index entry per firing. Statistics are flushed explicitly on the claiming connection itself.
    f = await own(store, 58)
    jobs = [job_in_shard(58) for _ in range(50)]
    conn = await store.run(asyncpg.connect, db_dsn)
    stats = "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'job_cursor'"
    try:
        await store.run(claim_slots, conn, "n1", [ClaimRow(58, f.epoch, j, ms(T0)) for j in jobs])
        await store.run(conn.execute, "SELECT pg_stat_force_next_flush()")
        before = await store.run(conn.fetchrow, stats)
        for t in slots(20)[1:]:
            await store.run(claim_slots, conn, "n1", [ClaimRow(58, f.epoch, j, ms(t)) for j in jobs])
        await store.run(conn.execute, "SELECT pg_stat_force_next_flush()")
        after = await store.run(conn.fetchrow, stats)
    finally:
        await store.run(conn.close)
    updates, hot = after[0] - before[0], after[1] - before[1]
    assert updates == 19 * 50
    assert hot >= 0.9 * updates


async def test_own_unsent_claims_finds_what_a_lost_claim_inserted(store: TrioStore) -> None:
    f = await own(store, 62)
    job = job_in_shard(62)
    rows = [ClaimRow(62, f.epoch, job, ms(t)) for t in slots(4)]
    await store.call(claim_slots, "n1", rows[:3], token=7)  # committed, its answer lost
    await store.call(claim_slots, "n1", rows[3:], token=8)  # another claim of the node: maybe sent already
    await store.call(write_results, [result(rows[0].key(), f.epoch, S.SUCCEEDED)])  # sent meanwhile
    ours = await store.call(own_unsent_claims, "n1", rows, token=7)
    assert sorted(k.slot_ms for k in ours) == [rows[1].slot_ms, rows[2].slot_ms]
    assert await store.call(own_unsent_claims, "n2", rows, token=7) == []  # not another node's claims
    newer = await own(store, 62)  # a takeover since: the old epoch's claims are not ours to send
    assert await store.call(own_unsent_claims, "n1", rows, token=7) == []
    assert newer.epoch > f.epoch



async def test_a_result_write_probes_by_primary_key_not_by_the_partial_index(
    store: TrioStore, db_dsn: str
) -> None:
    # executions_active's statistics are taken while few rows are unfinished, and the newest slots are always
    # past them: the planner, counting ~1 row there, made a full scan of that index (the slot range its only
    # condition) the inner side of a nested loop, run once per result: 2,000 results against 300,000 claimed
    # rows took 88 s while the claims waited on their row locks. A result write must find each row by its key.
    await store.call(ensure_partitions, T0.date(), 1)
    f = await own(store, 63)
    jobs = [job_in_shard(63) for _ in range(50)]
    done = await store.call(claim_slots, "n1", [ClaimRow(63, f.epoch, j, ms(t)) for j in jobs for t in slots(40)])
    await store.call(write_results, [result(k, f.epoch, S.SUCCEEDED) for k in done.applied])
    await store.run(store.pool.execute, f"ANALYZE executions_p{T0:%Y%m%d}")
    later = slots(100, T0 + timedelta(seconds=40))
    active = await store.call(claim_slots, "n1", [ClaimRow(63, f.epoch, j, ms(t)) for j in jobs for t in later])
    batch = active.applied[::25]
    scans = """
        SELECT coalesce(sum(s.idx_scan) FILTER (WHERE i.indpred IS NOT NULL), 0)::int8 AS partial,
               coalesce(sum(s.idx_tup_read), 0)::int8 AS entries
        FROM pg_stat_user_indexes s JOIN pg_index i ON i.indexrelid = s.indexrelid
        WHERE s.relname LIKE 'executions\\_p%'
    """
    conn = await store.run(asyncpg.connect, db_dsn)
    try:
        await store.run(conn.execute, "SELECT pg_stat_force_next_flush()")
        before = await store.run(conn.fetchrow, scans)
        written = await store.run(write_results, conn, [result(k, f.epoch, S.SUCCEEDED) for k in batch])
        await store.run(conn.execute, "SELECT pg_stat_force_next_flush()")
        after = await store.run(conn.fetchrow, scans)
    finally:
        await store.run(conn.close)
    assert len(written.applied) == len(batch) == 200
    assert after["partial"] == before["partial"]
    assert after["entries"] - before["entries"] <= 2 * len(batch)
