"""The engine tests' memory store (``tests/scheduler_node/memory_store.py``) agrees with PostgreSQL.

Takeover, fencing, claims, results and release live in SQL; the engine's virtual-time tests run on a model of
them. Here hypothesis generates sequences of those operations (stale epochs, duplicate claims, retries due or
not, deleted jobs, both semantics) and runs each on both stores: every answer and the rows left behind must be
the same.
"""

from __future__ import annotations

import time
from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, example, given, settings

from protocol.executions import ExecutionStatus, Origin
from protocol.internal import JobWrite, JobWriteOp
from protocol.jobs import JobState, Semantics
from scheduler_node.clock import datetime_to_ms
from scheduler_node.store import (
    BatchResult,
    ClaimRow,
    ExecKey,
    Fence,
    ResultRow,
    StateChange,
    TakeoverResult,
    bump_epoch,
    claim_rows,
    delete_unsent_claims,
    get_job,
    job_cursors,
    list_attempts,
    own_unsent_claims,
    set_job_states,
    take_over_shard,
    write_job,
    write_results,
)
from scheduler_node.trio_store import TrioStore

from ..scheduler_node.memory_store import MemoryStore
from .conftest import T0, job_in_shard, ms, spec

S = ExecutionStatus
SHARD = 77
SLOTS = [ms(T0) + 1000 * i for i in range(2)]  # few keys: operations often meet on one row
HOUR_MS = 3_600_000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


slot_keys = st.tuples(
    st.integers(0, 2),
    st.sampled_from(SLOTS),
    st.sampled_from([Origin.SCHEDULED, Origin.SCHEDULED, Origin.MANUAL]),
)
claim_status = st.sampled_from([S.CLAIMED, S.CLAIMED, S.CLAIMED, S.SKIPPED_MISFIRE, S.SKIPPED_OVERLAP])
# a retry due already (the old owner may have sent it), one still to come, or an end
result_kind = st.sampled_from(["retry_due", "retry_later", S.SUCCEEDED, S.FAILED, S.TIMED_OUT])
stale = st.sampled_from([False, False, False, True])  # mostly the current epoch
node = st.sampled_from(["node-a", "node-b"])
token = st.sampled_from([1, 2])  # which claim statement of a node
claims = st.tuples(
    st.just("claim"),
    node,
    stale,
    st.lists(st.tuples(slot_keys, claim_status), min_size=1, max_size=6),  # a slot twice: its first row
    token,
)
operation = st.one_of(
    st.tuples(st.just("bump"), node),
    claims,
    claims,  # the rows everything else works on: twice as likely
    st.tuples(
        st.just("result"),
        stale,
        st.lists(st.tuples(slot_keys, result_kind, st.integers(1, 3), st.booleans()), min_size=1, max_size=6),
    ),
    st.tuples(st.just("release"), stale, st.lists(slot_keys, min_size=1, max_size=6, unique=True)),
    st.tuples(st.just("own"), node, stale, st.lists(slot_keys, min_size=1, max_size=6, unique=True), token),
    st.tuples(st.just("takeover"), stale),
    st.tuples(st.just("delete"), st.integers(0, 2)),
    st.tuples(st.just("states"), stale, st.lists(
        st.tuples(st.integers(0, 2), st.sampled_from([JobState.COMPLETED, JobState.AUTO_PAUSED])), max_size=4)),
)
# Every sequence hands the shard over once (a new owner's bump and takeover) between two runs of operations.
operations = st.tuples(
    st.lists(operation, min_size=1, max_size=8), node, st.lists(operation, max_size=6)
).map(lambda t: [*t[0], ("bump", t[1]), ("takeover", False), *t[2]])


def _batch(r: BatchResult[Any]) -> tuple[Any, ...]:
    return sorted(r.applied), sorted(r.conflicts), r.fenced


def _claimed(r: BatchResult[ClaimRow]) -> tuple[Any, ...]:
    """The rows themselves, in batch order: which of two rows of one slot was inserted matters (its status)."""
    return [(c.key(), c.status) for c in r.applied], [(c.key(), c.status) for c in r.conflicts], r.fenced


def _takeover(r: TakeoverResult) -> tuple[Any, ...]:
    def rows(es: list[Any]) -> list[tuple[Any, ...]]:
        return sorted(
            (
                e.job_id,
                datetime_to_ms(e.scheduled_at),
                e.origin,
                e.status,
                e.attempt,
                e.epoch,
                e.node,
                e.error,
            )
            for e in es
        )

    return rows(r.resume), rows(r.lost), rows(r.cancelled)


class Pair:
    """The same operation on PostgreSQL and on the memory store; their answers, normalised."""

    def __init__(self, db: TrioStore, mem: MemoryStore) -> None:
        self.db, self.mem = db, mem

    async def both(self, fn: Any, *args: Any, norm: Any = lambda x: x, **kw: Any) -> tuple[Any, Any]:
        answers = []
        for store in (self.db, self.mem):
            try:
                answers.append(norm(await store.call(fn, *args, **kw)))
            except Exception as e:  # noqa: BLE001 -- the same error on both sides is an answer too
                answers.append(type(e).__name__)
        return answers[0], answers[1]


async def _rows(db: TrioStore) -> dict[ExecKey, tuple[Any, ...]]:
    recs = await db.run(db.pool.fetch, "SELECT * FROM executions WHERE shard = $1", SHARD)
    attempts = await db.run(db.pool.fetch, "SELECT * FROM execution_attempts WHERE shard = $1", SHARD)
    tried: dict[ExecKey, list[int]] = {}
    for a in attempts:
        tried.setdefault(ExecKey(SHARD, a["job_id"], ms(a["scheduled_at"]), Origin(a["origin"])), []).append(
            a["attempt"]
        )

    for r in recs:  # a run that ended at its first attempt keeps it in its own row (list_attempts reads it there)
        key = ExecKey(SHARD, r["job_id"], ms(r["scheduled_at"]), Origin(r["origin"]))
        if key not in tried and (listed := await db.call(list_attempts, key)):
            tried[key] = [a.attempt for a in listed]

    def opt(t: Any) -> int | None:
        return None if t is None else ms(t)

    return {
        (key := ExecKey(SHARD, r["job_id"], ms(r["scheduled_at"]), Origin(r["origin"]))): (
            S(r["status"]),
            r["epoch"],
            r["node"],
            r["attempt"],
            opt(r["next_attempt_at"]),
            opt(r["sent_at"]),
            r["released_at"] is not None,
            r["error"],
            r["http_status"],
            r["claim_token"],
            sorted(tried.get(key, [])),
        )
        for r in recs
    }


def _mem_rows(mem: MemoryStore) -> dict[ExecKey, tuple[Any, ...]]:
    tried: dict[ExecKey, list[int]] = {}
    for key, attempt in mem.attempts:
        tried.setdefault(key, []).append(attempt)
    return {
        key: (
            r.status,
            r.epoch,
            r.node,
            r.attempt,
            r.next_attempt_ms,
            r.sent_ms,
            r.released,
            r.error,
            r.http_status,
            r.claim_token,
            sorted(tried.get(key, [])),
        )
        for key, r in mem.rows.items()
    }


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
# The takeover rules, each met for sure (random sequences meet them only now and then):
# a claim that may have been sent, and AT_MOST_ONCE retries due (lost) or still to come (resumed).
@example(
    ops=[
        ("claim", "node-a", False, [((0, SLOTS[0], Origin.SCHEDULED), S.CLAIMED)], 1),
        ("bump", "node-b"),
        ("takeover", False),
    ]
)
@example(
    ops=[
        ("claim", "node-a", False, [((1, SLOTS[0], Origin.SCHEDULED), S.CLAIMED)], 1),
        ("result", False, [((1, SLOTS[0], Origin.SCHEDULED), "retry_due", 1, True)]),
        ("bump", "node-b"),
        ("takeover", False),
    ]
)
@example(
    ops=[
        ("claim", "node-a", False, [((1, SLOTS[1], Origin.MANUAL), S.CLAIMED)], 2),
        ("result", False, [((1, SLOTS[1], Origin.MANUAL), "retry_later", 1, True)]),
        ("bump", "node-a"),
        ("takeover", False),
    ]
)
async def test_the_memory_store_answers_and_stores_what_postgresql_does(db_dsn: str, ops: list[Any]) -> None:
    async with TrioStore.open(db_dsn, max_size=1) as db:
        for table in ("execution_attempts", "executions", "job_cursor", "jobs"):
            await db.run(db.pool.execute, f"DELETE FROM {table} WHERE shard = $1", SHARD)
        mem = MemoryStore(now_ms)
        epoch = await db.call(bump_epoch, SHARD, "node-a")
        mem.epochs[SHARD] = (epoch, "node-a")
        pair = Pair(db, mem)
        jobs = [job_in_shard(SHARD) for _ in range(3)]
        for job_id, semantics in zip(
            jobs, [Semantics.AT_LEAST_ONCE, Semantics.AT_MOST_ONCE, Semantics.AT_LEAST_ONCE], strict=True
        ):
            w = JobWrite(op=JobWriteOp.UPSERT, actor="t", tenant="acme", spec=spec(semantics=semantics))
            db_out, mem_out = await pair.both(
                write_job,
                Fence(SHARD, epoch),
                job_id,
                w,
                next_fire_at=T0,
                norm=lambda o: (o.version, o.state, o.created),
            )
            assert db_out == mem_out

        def key(k: tuple[int, int, Origin]) -> ExecKey:
            return ExecKey(SHARD, jobs[k[0]], k[1], k[2])

        for op in ops:
            current = mem.epochs[SHARD][0]
            kind = op[0]
            if kind == "bump":
                db_out, mem_out = await pair.both(bump_epoch, SHARD, op[1])
            elif kind == "claim":
                e = current - 1 if op[2] else current
                rows = [
                    ClaimRow(
                        SHARD, e, *key(k)[1:], status=status, error=None if status is S.CLAIMED else "skipped"
                    )
                    for k, status in op[3]
                ]
                db_out, mem_out = await pair.both(claim_rows, op[1], rows, token=op[4], norm=_claimed)
            elif kind == "result":
                e = current - 1 if op[1] else current
                results = []
                for k, what, attempt, sent in op[2]:
                    now = now_ms()
                    status = S.RETRY_WAIT if what in ("retry_due", "retry_later") else S(what)
                    next_at = {"retry_due": now - HOUR_MS, "retry_later": now + HOUR_MS}.get(str(what))
                    results.append(
                        ResultRow(
                            SHARD,
                            e,
                            *key(k)[1:],
                            status,
                            attempt,
                            next_attempt_ms=next_at,
                            sent_ms=SLOTS[0] + 5 if sent else None,
                            http_status=503 if sent else None,
                            error=None if sent else "connect refused",
                            attempt_started_ms=SLOTS[0] if sent else None,
                            attempt_finished_ms=SLOTS[0] + 9 if sent else None,
                            finished_ms=None if status is S.RETRY_WAIT else now,
                        )
                    )
                db_out, mem_out = await pair.both(write_results, results, norm=_batch)
            elif kind == "release":
                e = current - 1 if op[1] else current
                db_out, mem_out = await pair.both(
                    delete_unsent_claims, SHARD, e, [key(k) for k in op[2]], norm=_batch
                )
            elif kind == "own":
                e = current - 1 if op[2] else current
                rows = [ClaimRow(SHARD, e, *key(k)[1:]) for k in op[3]]
                db_out, mem_out = await pair.both(own_unsent_claims, op[1], rows, token=op[4], norm=sorted)
            elif kind == "takeover":
                db_out, mem_out = await pair.both(
                    take_over_shard, SHARD, current - 1 if op[1] else current, norm=_takeover
                )
            elif kind == "states":
                e = current - 1 if op[1] else current
                changes = [StateChange(SHARD, e, jobs[i], "acme", state, "why") for i, state in op[2]]
                db_out, mem_out = await pair.both(set_job_states, changes, norm=_batch)
                assert db_out == mem_out, op
                for job_id in jobs:
                    db_out, mem_out = await pair.both(get_job, SHARD, job_id, include_deleted=True,
                                                      norm=lambda j: (j.state, j.version, j.state_reason))  # fmt: skip
                    assert db_out == mem_out, op
            else:
                w = JobWrite(op=JobWriteOp.DELETE, actor="t", tenant="acme")
                db_out, mem_out = await pair.both(
                    write_job, Fence(SHARD, current), jobs[op[1]], w, norm=lambda o: (o.version, o.state)
                )
            assert db_out == mem_out, op
        assert await _rows(db) == _mem_rows(mem)
        db_cursors = await db.call(job_cursors, SHARD)
        assert {j: datetime_to_ms(t) for j, t in db_cursors.items()} == {
            j: datetime_to_ms(t) for j, t in mem.job_cursors(SHARD).items()
        }


def test_the_agreement_test_covers_every_store_function_the_engine_calls() -> None:
    """A store function the engine starts to call must be modelled, or its tests fail loudly, not silently."""
    import ast
    from pathlib import Path

    import scheduler_node

    root = Path(scheduler_node.__file__).parent
    called: set[str] = set()
    for name in ("engine.py", "alert_delivery.py"):
        tree = ast.parse((root / name).read_text())
        called |= {
            n.attr
            for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "store"
        }
    missing = {f for f in called if not hasattr(MemoryStore, f)}
    assert not missing, f"MemoryStore lacks {sorted(missing)}"
