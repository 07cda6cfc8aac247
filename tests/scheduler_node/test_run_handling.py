"""Run handling against a model: hypothesis drives the engine on virtual time through random faults.

A generated script sets up a few jobs (semantics, concurrency, retries, misfire policy) and a target whose
answer to each attempt is drawn (success, 500, 503 with ``Retry-After``, timeout, refused, reset after the
write, any delay), then applies events at drawn times: pause and resume, the lease running out and the shard
taken back (a takeover), another node fencing the shard, PostgreSQL down, sends blocked while the lease is
unconfirmed, a graceful release. Afterwards every job is paused and the world left to settle. Then:

- every execution row is terminal (nothing ``claimed`` or ``retry_wait`` left), and no terminal row was
  written twice;
- AT_MOST_ONCE: no slot was sent twice; AT_LEAST_ONCE: no slot is ``lost``;
- nothing is lost: every slot of an active job's schedule has its row, except those a pause covered;
- every ``succeeded`` slot was sent.
"""

from __future__ import annotations

import uuid
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

import hypothesis.strategies as st
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings

from protocol.errors import DatabaseUnavailable, NotOwnerError
from protocol.executions import TERMINAL, ExecutionStatus, Origin
from protocol.internal import JobWrite, JobWriteOp
from protocol.jobs import Concurrency, JobSpec, Misfire, MisfirePolicy, RetryPolicy, Semantics, Target
from protocol.schedules import Every
from scheduler_node.dispatch import OutcomeKind, SendRequest
from scheduler_node.store import ResultRow

from .memory_store import MemoryStore
from .virtual_world import T0_MS, Reply, VirtualClock, World, job_id_in, world

S = ExecutionStatus
END_MS = 40_000  # events happen before this; then every job is paused and the world settles


@dataclass(frozen=True)
class JobPlan:
    every_s: int
    semantics: Semantics
    concurrency: Concurrency
    attempts: int
    misfire: MisfirePolicy


REPLIES = [
    Reply(status=200),
    Reply(status=200, delay_s=2.5),
    Reply(status=500),
    Reply(status=503, retry_after_s=2),
    Reply(kind=OutcomeKind.TIMEOUT, delay_s=1.0),
    Reply(kind=OutcomeKind.CONNECT_ERROR, bytes_written=False, delay_s=0.05),
    Reply(kind=OutcomeKind.CONNECTION_ERROR, delay_s=0.2),
]

jobs = st.lists(
    st.builds(
        JobPlan,
        every_s=st.integers(1, 3),
        semantics=st.sampled_from(list(Semantics)),
        concurrency=st.sampled_from(list(Concurrency)),
        attempts=st.integers(1, 3),
        misfire=st.sampled_from(list(MisfirePolicy)),
    ),
    min_size=1,
    max_size=3,
)
EVENTS = ["pause", "resume", "expire", "fence", "db_down", "lease_gap", "release"]
events = st.lists(
    st.tuples(
        st.integers(500, END_MS - 5_000), st.sampled_from(EVENTS), st.integers(0, 2), st.integers(1, 8)
    ),
    max_size=6,
).map(sorted)
replies = st.lists(st.integers(0, len(REPLIES) - 1), min_size=1, max_size=20)


class RecordingStore(MemoryStore):
    """Also records every result that tried to change a row already terminal at its epoch: a slot that would
    have ended twice."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.second_ends: list[ResultRow] = []

    def write_results(self, rows: Any, *, report: bool = True) -> Any:
        for r in rows:
            row = self.rows.get(r.key())
            if row is not None and row.epoch == r.epoch and row.status in TERMINAL:
                self.second_ends.append(r)
        return super().write_results(rows, report=report)


def covered(lo: int, hi: int, intervals: list[tuple[int, int]]) -> bool:
    """Whether [lo, hi] lies within the union of ``intervals``."""
    reach = lo
    for a, b in sorted(intervals):
        if a > reach:
            break
        reach = max(reach, b)
    return reach >= hi


def spec_of(plan: JobPlan) -> JobSpec:
    return JobSpec(
        name="job",
        schedule=Every(f"{plan.every_s}s"),
        target=Target(url="http://127.0.0.1:9/"),
        semantics=plan.semantics,
        concurrency=plan.concurrency,
        retry=RetryPolicy(max_attempts=plan.attempts, initial_backoff_ms=500, jitter=0),
        misfire=Misfire(policy=plan.misfire, grace_ms=3_000),
        timeout_ms=1_500,
    )


async def write(w: World, job: uuid.UUID, op: JobWriteOp) -> int:
    """Apply ``op`` as a client would: retried while PostgreSQL is down or the shard is between owners;
    returns when it applied (ms after T0)."""
    while True:
        try:
            await w.engine.apply_write(job, JobWrite(op=op, actor="t", tenant="acme"))
            return w.clock.now_ms() - T0_MS
        except (DatabaseUnavailable, NotOwnerError):
            await trio.sleep(1)


async def run_script(
    plans: list[JobPlan], script: list[tuple[int, str, int, int]], answers: list[int]
) -> None:
    def respond(r: SendRequest) -> Reply:
        # The same attempt of the same slot always gets the same answer, whatever happened before, and in
        # every run of the example (job ids are random: the job's place in the plans stands for it).
        job = ids.index(uuid.UUID(r.template.job_id))
        which = zlib.crc32(f"{job} {r.scheduled_at_ms - T0_MS} {r.attempt}".encode())
        return REPLIES[answers[which % len(answers)]]

    clock = VirtualClock()
    store = RecordingStore(clock.now_ms)
    ids: list[uuid.UUID] = []
    async with world(respond, store=store) as w:
        for plan in plans:
            job_id = job_id_in(0)
            w.store_job(job_id, spec_of(plan), shard=0)
            ids.append(job_id)
        await w.grant(0)
        paused: dict[uuid.UUID, list[list[int]]] = {
            j: [] for j in ids
        }  # job -> [[from, to], ...] (ms after T0)
        blocked: list[tuple[int, int]] = []  # claims impossible (sends blocked, no store, shard not ours)
        for at_ms, what, which, seconds in script:
            await w.until(T0_MS + at_ms)
            started = w.clock.now_ms() - T0_MS
            job = ids[which % len(ids)]
            if what in ("pause", "resume"):
                if 0 not in w.ownership.grants():
                    continue  # not ours to write: the control API would get "not the owner"
                op = JobWriteOp.PAUSE if what == "pause" else JobWriteOp.RESUME
                now = await write(w, job, op)
                if what == "pause":
                    now = started  # from the moment it was asked, slots may be skipped
                if what == "pause" and (not paused[job] or paused[job][-1][1] <= now):
                    paused[job].append([now, END_MS + 100_000])
                elif what == "resume" and paused[job] and paused[job][-1][1] > now:
                    paused[job][-1][1] = now
            elif what == "expire":
                w.ownership.expire(0)
                await trio.sleep(seconds)
                await w.grant(0)
            elif what == "fence":
                w.store.bump_epoch(0, "node-other")
                await trio.sleep(seconds)
                w.ownership.expire(0)  # unless a fenced write told the node already, its lease tells it
                await w.grant(0)
            elif what == "db_down":
                w.store.down_for(seconds)
            elif what == "lease_gap":
                w.ownership.valid = trio.current_time()
                await trio.sleep(seconds)
                w.ownership.valid = float("inf")
            elif what == "release":
                w.ownership.revoke(0)
                await w.ownership.wait_released(0)
                await trio.sleep(seconds)
                await w.grant(0)
            if what not in ("pause", "resume"):
                # nothing could be claimed meanwhile (and for a backoff after): a pause may then cover slots
                # whose claims never happened
                down_ms = seconds * 1000 if what == "db_down" else 0  # the others waited it out above
                blocked.append((started, w.clock.now_ms() - T0_MS + down_ms + 2_500))
        await w.until(T0_MS + END_MS)
        w.ownership.valid = float("inf")
        if 0 not in w.ownership.grants():
            await w.grant(0)
        end = w.clock.now_ms() - T0_MS
        for job in ids:
            await write(w, job, JobWriteOp.PAUSE)
            if not paused[job] or paused[job][-1][1] < end:
                paused[job].append([end, END_MS + 100_000])
        await w.until(T0_MS + END_MS + 60_000)  # retries, slow targets and writers all finish
        await w.settle()

        rows = w.store.rows
        assert not store.second_ends, [
            (r.job_id, r.slot_ms - T0_MS, r.status, r.attempt, r.epoch, w.store.rows[r.key()])
            for r in store.second_ends
        ]
        assert {r.status for r in rows.values()} <= TERMINAL, Counter(r.status for r in rows.values())
        for job, plan in zip(ids, plans, strict=True):
            sends = Counter((s.slot_ms, s.origin) for s in w.dispatcher.sends_of(job))
            mine = {(k.slot_ms, k.origin): r for k, r in rows.items() if k.job_id == job}
            if plan.semantics is Semantics.AT_MOST_ONCE:
                assert max(sends.values(), default=0) <= 1, sends
            else:
                assert all(r.status is not S.LOST for r in mine.values())
            for key, r in mine.items():
                if r.status is S.SUCCEEDED:
                    assert sends[(key[0], key[1].value)] >= 1
            windows = paused[job]
            period = plan.every_s * 1000
            for slot in range(0, end - 1_000, period):
                # a pause (and a resume's claim, made from the write on) may leave slots without a row
                if any(lo - 1_000 <= slot <= hi + 1_000 for lo, hi in windows):
                    continue
                if any(slot < lo and covered(slot - 300, lo, blocked) for lo, _ in windows):
                    continue  # its claim (300 ms ahead) was held back until the pause came
                assert (T0_MS + slot, Origin.SCHEDULED) in mine, (slot, plan)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plans=jobs, script=events, answers=replies)
def test_every_slot_ends_once_and_at_most_once_never_sends_twice(
    plans: list[JobPlan], script: list[tuple[int, str, int, int]], answers: list[int]
) -> None:
    async def bounded() -> None:
        with trio.fail_after(600):  # virtual seconds: a script that never ends is a failure, not a hang
            await run_script(plans, script, answers)

    trio.run(bounded, clock=trio.testing.MockClock(autojump_threshold=0))
