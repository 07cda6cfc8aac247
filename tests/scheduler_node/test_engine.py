"""The engine's behaviour on virtual time: a memory store, a scripted dispatcher, trio's MockClock.

Each test drives seconds to minutes of firings in milliseconds, the same way on every machine (no sleep is
long enough or too short here: time only moves when every task waits). The wiring to PostgreSQL and a real
HTTP target is covered by the end-to-end tests in ``test_node.py``.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable

import msgspec
import pytest
import trio

from protocol.errors import Conflict, DatabaseUnavailable, NotFound, SpecError
from protocol.executions import TERMINAL, ExecutionStatus, Origin
from protocol.internal import JobWrite, JobWriteOp, JobWritten
from protocol.jitter import jitter_offset_ms
from protocol.jobs import (
    Concurrency,
    JobSpec,
    JobState,
    Misfire,
    MisfirePolicy,
    RetryPolicy,
    Semantics,
    Target,
)
from protocol.schedules import At, Cron, Every
from protocol.slots import compile_schedule
from protocol.slots.backfill import BackfillRange
from scheduler_node.clock import datetime_to_ms, ms_to_datetime
from scheduler_node.dispatch import SendRequest
from scheduler_node.engine import EngineTuning
from scheduler_node.store import ClaimRow

from .virtual_world import SHARDS, T0_MS, Reply, at, job_id_in, world

S = ExecutionStatus
NO_RETRY = RetryPolicy(max_attempts=1)


def spec(every: str = "1s", **kw: object) -> JobSpec:
    target = Target(url="http://127.0.0.1:9/hook")
    return JobSpec(name="job", schedule=Every(every), target=target, **kw)  # type: ignore[arg-type]


def slow(seconds: float) -> Reply:
    return Reply(delay_s=seconds)


async def test_an_every_second_job_fires_on_the_second_and_records_each_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with world() as w:
        await w.grant(0)
        job = await w.add_job(spec())
        await w.until(T0_MS + 5_500)
        await w.settle()
        sends = w.dispatcher.sends_of(job)
        assert [(s.slot_ms - T0_MS, s.at_ms - T0_MS, s.attempt) for s in sends] == [
            (1000 * i, 1000 * i, 1) for i in range(6)
        ]
        assert w.statuses(job) == {1000 * i: S.SUCCEEDED for i in range(6)}
        assert all(r.dispatch_lag_ms == 0 and r.http_status == 200 for r in w.rows(job).values())


async def test_a_job_with_jitter_fires_each_slot_at_its_fixed_offset_and_a_herd_spreads_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """40 jobs every 10 s with 5 s of jitter: each slot goes out at the slot plus its job's offset (the same offset
    for every slot), carrying the slot, not the send time; lateness counts from the offset; a retry and a trigger
    are not moved again. Without jitter they all went out at the slot's millisecond."""
    async with world(lambda r: Reply(status=500) if r.attempt == 1 and r.origin == "scheduled" else Reply()) as w:
        await w.grant(0)
        retry = RetryPolicy(max_attempts=2, initial_backoff_ms=1_000, jitter=0.0)
        jobs = [await w.add_job(spec("10s", jitter="5s", retry=retry)) for _ in range(40)]
        # the answer's next_fire_at, for an offset within the claim lookahead (claimed at once) and one
        # past it, by a single write and by a batch's create
        near, far = _id_with_offset(lambda o: o < 300), _id_with_offset(lambda o: o >= 300)
        near2, far2 = _id_with_offset(lambda o: o < 300), _id_with_offset(lambda o: o >= 300)
        write = JobWrite(op=JobWriteOp.UPSERT, actor="t", tenant="acme", spec=spec("10s", jitter="5s"))
        told = {job: await w.engine.apply_write(job, write) for job in (near, far)}
        batch = await w.engine.apply_writes([(near2, write), (far2, write)])
        told |= dict(zip((near2, far2), batch, strict=True))
        await w.until(T0_MS + 25_000)
        trigger = JobWrite(op=JobWriteOp.TRIGGER, actor="t", tenant="acme")
        await w.engine.apply_write(jobs[0], trigger)
        # Every slot due by 35 s is sent and, 10 ms later, answered: a job whose offset puts its last slot at
        # 34.99x s was answered after 35 s and its row still `claimed` here (1 run in ~40 failed: random ids).
        await w.until(T0_MS + 35_100)
        await w.settle()
        offsets = {job: jitter_offset_ms(job, "5s") for job in jobs}
        assert len(set(offsets.values())) > 30 and all(0 <= o < 5_000 for o in offsets.values())
        for job in jobs:
            first = [s for s in w.dispatcher.sends_of(job) if s.attempt == 1 and s.origin == "scheduled"]
            assert [(s.slot_ms - T0_MS, s.at_ms - s.slot_ms) for s in first] == [
                (slot, offsets[job]) for slot in (0, 10_000, 20_000, 30_000) if slot + offsets[job] <= 35_000]
            retries = [s for s in w.dispatcher.sends_of(job) if s.attempt == 2]
            assert retries and {s.at_ms - s.slot_ms - offsets[job] for s in retries} == {1_010}  # sent, 10 ms, backoff
            assert all(r.dispatch_lag_ms == 0 for (_, origin), r in w.rows(job).items() if origin is Origin.SCHEDULED)
        manual = [s for s in w.dispatcher.sends_of(jobs[0]) if s.origin == "manual"]
        assert [s.at_ms for s in manual] == [T0_MS + 25_000]  # now: a trigger is not a scheduled slot
        per_second = Counter(s.at_ms // 1000 for job in jobs for s in w.dispatcher.sends_of(job) if s.attempt == 1)
        assert max(per_second.values()) < 40  # spread over the window, not all in one second
        for job, answer in told.items():  # the write's answer: when its first slot is sent
            assert isinstance(answer, JobWritten) and answer.next_fire_at is not None
            assert w.dispatcher.sends_of(job)[0].at_ms == datetime_to_ms(answer.next_fire_at)


def _id_with_offset(wanted: Callable[[int], bool]) -> uuid.UUID:
    """A job id in shard 0 whose 5 s jitter offset is ``wanted``."""
    while not wanted(jitter_offset_ms(job := job_id_in(0), "5s")):
        pass
    return job


@pytest.mark.parametrize(
    ("policy", "fired_of_missed"),
    [(MisfirePolicy.FIRE_ONCE, 1), (MisfirePolicy.SKIP, 0), (MisfirePolicy.FIRE_ALL, 89)],
)
async def test_slots_missed_while_no_node_ran_follow_the_misfire_policy(
    autojump_clock: trio.testing.MockClock, policy: MisfirePolicy, fired_of_missed: int
) -> None:
    """Down from 0 s to 100 s, grace 10 s: slots 1-89 s are missed, 90-100 s late within grace."""
    async with world() as w:
        job = job_id_in(0)
        w.store_job(job, spec(misfire=Misfire(policy=policy, grace_ms=10_000)), shard=0)
        w.store.cursors[(0, job)] = T0_MS  # slot 0 was claimed before the outage
        await w.until(T0_MS + 100_000)
        await w.grant(0)
        await w.until(T0_MS + 102_500)
        await w.settle()
        statuses = w.statuses(job)
        missed = {s: st for s, st in statuses.items() if s < 90_000}
        assert Counter(missed.values())[S.SUCCEEDED] == fired_of_missed
        assert set(missed.values()) <= {S.SUCCEEDED, S.SKIPPED_MISFIRE}
        assert set(statuses) == set(range(1_000, 103_000, 1000))  # one row per slot: none lost, none doubled
        assert max(Counter(s.slot_ms for s in w.dispatcher.sends_of(job)).values()) == 1
        assert all(statuses[s] is S.SUCCEEDED for s in range(90_000, 103_000, 1000))  # within grace: sent
        late = {s.slot_ms - T0_MS: s.at_ms - T0_MS for s in w.dispatcher.sends_of(job)}
        assert all(late[s] == 100_000 for s in range(90_000, 100_001, 1000))  # sent at load, late
        assert late[101_000] == 101_000 and late[102_000] == 102_000  # then on the second again


@pytest.mark.parametrize(
    ("policy", "sent"),
    [
        (MisfirePolicy.FIRE_ONCE, [*range(0, 5), *range(12, 21)]),  # slot 4: the one send for the run 4-11
        (MisfirePolicy.SKIP, [*range(0, 4), *range(12, 21)]),
        (MisfirePolicy.FIRE_ALL, list(range(0, 21))),
    ],
)
async def test_a_node_behind_past_the_grace_skips_by_the_misfire_policy_and_says_it_is_overloaded(
    autojump_clock: trio.testing.MockClock, policy: MisfirePolicy, sent: list[int]
) -> None:
    """The node's process stands still for 10 s at 3.8 s (wall clock on, trio's clock not): slot 4, claimed, comes
    9.8 s late at its send, 5-11 past the 2 s grace at their claim, 12 and 13 late within it. Past the grace a slot
    is sent only as its policy says (FIRE_ONCE: one for the whole run, at the send as at the claim), never late
    for the sake of it; from 14 s the job fires on the second again, and the node said it was overloaded meanwhile
    and no longer is once nothing came late for 10 s."""
    async with world() as w:
        await w.grant(0)
        job = await w.add_job(spec(misfire=Misfire(policy=policy, grace_ms=2_000)))
        await w.until(T0_MS + 3_800)
        assert not w.engine.overload.overloaded
        w.clock.start_ms += 10_000
        await trio.sleep(1.5)
        assert w.engine.overload.overloaded and w.engine.summary()["overloaded"]
        assert w.engine.metrics.overloaded.read() == 1.0
        await w.until(T0_MS + 20_500)
        await w.settle()
        sends = {s.slot_ms - T0_MS: s.at_ms - T0_MS for s in w.dispatcher.sends_of(job)}
        assert sorted(sends) == [1000 * i for i in sent]
        if policy is not MisfirePolicy.FIRE_ALL:  # which sends every missed slot, late as it must be
            assert all(at - slot <= 2_000 for slot, at in sends.items() if slot != 4_000)  # 4: FIRE_ONCE's one
        assert all(sends[s] == s for s in range(14_000, 21_000, 1000))  # on the second again
        statuses = w.statuses(job)
        assert set(statuses) == set(range(0, 21_000, 1000))  # one row per slot: none lost, none doubled
        assert {s for s, st in statuses.items() if st is S.SKIPPED_MISFIRE} == {
            1000 * i for i in range(21) if i not in sent}  # fmt: skip
        await w.until(T0_MS + 26_000)
        assert not w.engine.overload.overloaded
        assert w.store.claimed_again == 0


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (Concurrency.ALLOW, {0: S.SUCCEEDED, 1: S.SUCCEEDED, 2: S.SUCCEEDED, 3: S.SUCCEEDED, 4: S.SUCCEEDED}),
        # the run of :00 ends at 2.5 s: :01 and :02 skipped, :03 sent
        (
            Concurrency.FORBID,
            {
                0: S.SUCCEEDED,
                1: S.SKIPPED_OVERLAP,
                2: S.SKIPPED_OVERLAP,
                3: S.SUCCEEDED,
                4: S.SKIPPED_OVERLAP,
            },
        ),
        # :01 waits for :00 (sent at 2.5 s, ends at 5 s), :02 finds the buffer full; :03 waits for :01
        (
            Concurrency.BUFFER_ONE,
            {0: S.SUCCEEDED, 1: S.SUCCEEDED, 2: S.SKIPPED_OVERLAP, 3: S.SUCCEEDED, 4: S.SKIPPED_OVERLAP},
        ),
        (
            Concurrency.REPLACE,
            {0: S.CANCELLED, 1: S.CANCELLED, 2: S.CANCELLED, 3: S.CANCELLED, 4: S.SUCCEEDED},
        ),
    ],
)
async def test_each_concurrency_policy_with_a_target_slower_than_the_period(
    autojump_clock: trio.testing.MockClock, policy: Concurrency, expected: dict[int, ExecutionStatus]
) -> None:
    async with world(lambda r: slow(2.5)) as w:
        await w.grant(0)
        job = await w.add_job(spec(concurrency=policy, end_at=at(4_500)))
        await w.until(T0_MS + 30_000)
        await w.settle()
        assert {s // 1000: st for s, st in w.statuses(job).items()} == expected
        if policy is Concurrency.BUFFER_ONE:
            sent_at = {s.slot_ms - T0_MS: s.at_ms - T0_MS for s in w.dispatcher.sends_of(job)}
            assert sent_at == {0: 0, 1000: 2_500, 3000: 5_000}
        if policy is Concurrency.REPLACE:
            assert len(w.dispatcher.cancelled) == 4
            assert all(
                r.error and "replaced" in r.error for r in w.rows(job).values() if r.status is S.CANCELLED
            )
        assert w.store.job(0, job).state is JobState.COMPLETED  # end_at passed, nothing in flight


async def test_a_retry_waits_what_retry_after_asks_then_succeeds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def respond(r: SendRequest) -> Reply:
        return Reply(status=503, retry_after_s=7) if r.attempt == 1 else Reply(status=200)

    async with world(respond) as w:
        await w.grant(0)
        job = await w.add_job(spec("1h", retry=RetryPolicy(max_attempts=3, initial_backoff_ms=100, jitter=0)))
        await w.until(T0_MS + 1_000)
        await w.settle()
        (row,) = w.rows(job).values()
        assert row.status is S.RETRY_WAIT and row.next_attempt_ms == T0_MS + 10 + 7_000
        await w.until(T0_MS + 10_000)
        await w.settle()
        sends = w.dispatcher.sends_of(job)
        assert [(s.attempt, s.at_ms - T0_MS) for s in sends] == [(1, 0), (2, 7_010)]
        (row,) = w.rows(job).values()
        assert (row.status, row.attempt, row.http_status, row.sent_ms) == (S.SUCCEEDED, 2, 200, T0_MS)
        assert [a for (_, a) in w.store.attempts] == [1, 2]


@pytest.mark.parametrize("semantics", list(Semantics))
async def test_takeover_resends_at_least_once_and_never_at_most_once(
    autojump_clock: trio.testing.MockClock, semantics: Semantics
) -> None:
    """A dead node claimed slot 0 and may have sent it: the new owner resends it one attempt higher, or calls
    it lost."""
    async with world() as w:
        job = job_id_in(0)
        w.store_job(job, spec("1h", semantics=semantics), shard=0, next_fire_at_ms=T0_MS + 3_600_000)
        dead_epoch = w.store.bump_epoch(0, "node-dead")
        w.store.claim_slots("node-dead", [ClaimRow(0, dead_epoch, job, T0_MS)])
        await w.until(T0_MS + 2_000)
        await w.grant(0)
        await w.until(T0_MS + 3_000)
        await w.settle()
        (row,) = w.rows(job).values()
        sends = w.dispatcher.sends_of(job)
        if semantics is Semantics.AT_LEAST_ONCE:
            assert [(s.slot_ms, s.attempt) for s in sends] == [(T0_MS, 2)]  # higher than the dead node's 1
            assert (row.status, row.attempt, row.node) == (S.SUCCEEDED, 2, "node-a")
        else:
            assert sends == []
            assert row.status is S.LOST and "node-dead" in (row.error or "")


async def test_a_shard_lost_mid_run_cancels_its_request_and_the_next_owner_finishes_the_slot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with world(lambda r: slow(10)) as a:
        await a.grant(0)
        job = await a.add_job(spec("1h"))
        await a.until(T0_MS + 500)
        a.ownership.expire(0)  # the lease ran out while the request was in flight
        await a.until(T0_MS + 600)
        assert len(a.dispatcher.cancelled) == 1
        assert a.engine.statistics().in_flight == 0
        (row,) = a.rows(job).values()
        assert row.status is S.CLAIMED  # sent: not given back, the next owner's takeover decides
        async with world(store=a.store, node="node-b") as b:
            await b.grant(0)
            await b.until(T0_MS + 20_000)
            await b.settle()
            (row,) = b.rows(job).values()
            assert (row.status, row.attempt, row.node) == (S.SUCCEEDED, 2, "node-b")
            assert [s.attempt for s in b.dispatcher.sends_of(job)] == [2]


async def test_consecutive_failures_auto_pause_the_job_with_alerts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with world(lambda r: Reply(status=500)) as w:
        await w.grant(0)
        job = await w.add_job(spec(retry=NO_RETRY, pause_after_failures=3))
        await w.until(T0_MS + 10_000)
        await w.settle()
        assert w.store.job(0, job).state is JobState.AUTO_PAUSED
        assert len(w.dispatcher.sends_of(job)) == 3
        statuses = w.statuses(job)
        assert [statuses[s] for s in (0, 1000, 2000)] == [S.FAILED] * 3
        assert set(list(statuses.values())[3:]) <= {S.SKIPPED_PAUSED}  # claimed before the pause took effect
        kinds = Counter(a.kind for a in w.store.alerts.values())
        assert kinds == {"execution_failed": 3, "job_auto_paused": 1}
        # Resuming starts a new streak: three more failures, not one, pause the job again.
        await w.engine.apply_write(job, JobWrite(op=JobWriteOp.RESUME, actor="t", tenant="acme"))
        await w.until(T0_MS + 20_000)
        await w.settle()
        assert w.store.job(0, job).state is JobState.AUTO_PAUSED
        assert len(w.dispatcher.sends_of(job)) == 6
        kinds = Counter(a.kind for a in w.store.alerts.values())
        assert kinds == {"execution_failed": 6, "job_auto_paused": 2}


async def test_a_job_no_node_can_run_is_marked_broken_and_the_rest_of_its_shard_fires(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Defence behind validation: one row that does not decode and one spec that fails to compile (stored
    past validation, as another version or a hand edit could) neither stop the shard from loading nor fire."""
    async with world() as w:
        good, unreadable, uncompilable = job_id_in(0), job_id_in(0), job_id_in(0)
        w.store_job(good, spec(), shard=0)
        w.store_job(unreadable, spec(), shard=0)
        w.store.corrupt(0, unreadable, "stored spec does not decode: Invalid value 'rrule' - at `$.schedule`")
        bad_cron = msgspec.structs.replace(spec(), schedule=Cron("0 61 * * * *"))
        w.store_job(uncompilable, bad_cron, shard=0)  # validation would refuse it
        await w.grant(0)
        await w.until(T0_MS + 2_500)
        await w.settle()
        assert len(w.dispatcher.sends_of(good)) == 3
        for job, why in ((unreadable, "rrule"), (uncompilable, "minute field '61' out of range")):
            stored = w.store.job(0, job)
            assert stored.state is JobState.BROKEN and why in (stored.state_reason or "")
            assert w.dispatcher.sends_of(job) == [] and w.rows(job) == {}
        assert Counter(a.kind for a in w.store.alerts.values()) == {"job_broken": 2}
        assert w.engine.metrics.broken.get() == 2
        # A trigger of a broken job is refused; writing its spec again makes it run.
        trigger = JobWrite(op=JobWriteOp.TRIGGER, actor="t", tenant="acme")
        with pytest.raises(Conflict, match="is broken"):
            await w.engine.apply_write(uncompilable, trigger)
        await w.engine.apply_write(uncompilable, JobWrite(op=JobWriteOp.UPSERT, actor="t", tenant="acme",
                                                          spec=spec()))  # fmt: skip
        await w.until(T0_MS + 4_500)
        await w.settle()
        assert w.store.job(0, uncompilable).state is JobState.ACTIVE
        assert len(w.dispatcher.sends_of(uncompilable)) == 2


async def test_pause_stops_firing_and_resume_fires_again(autojump_clock: trio.testing.MockClock) -> None:
    async with world() as w:
        await w.grant(0)
        job = await w.add_job(spec())
        await w.until(T0_MS + 2_500)
        version = w.store.job(0, job).version
        paused = await w.engine.apply_write(
            job, JobWrite(op=JobWriteOp.PAUSE, actor="t", tenant="acme", expected_version=version)
        )
        assert (paused.state, paused.next_fire_at, paused.version) == (JobState.PAUSED, None, version + 1)
        await w.until(T0_MS + 6_500)
        resumed = await w.engine.apply_write(job, JobWrite(op=JobWriteOp.RESUME, actor="t", tenant="acme"))
        assert resumed.state is JobState.ACTIVE and resumed.next_fire_at == at(7_000)
        await w.until(T0_MS + 8_500)
        await w.settle()
        sent = sorted(s.slot_ms - T0_MS for s in w.dispatcher.sends_of(job))
        assert sent == [0, 1000, 2000, 7000, 8000]
        assert all(st in TERMINAL for st in w.statuses(job).values())


async def test_a_slot_claimed_at_write_time_fires_even_when_the_next_is_beyond_the_horizon(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with world() as w:
        await w.grant(0)
        await w.until(T0_MS + 1_000)
        # due within the 300 ms lookahead when written; its next slot is 2 h away, beyond the 60 s horizon
        job = await w.add_job(spec("2h", start_at=at(1_200)))
        await w.until(T0_MS + 5_000)
        await w.settle()
        assert [s.slot_ms for s in w.dispatcher.sends_of(job)] == [T0_MS + 1_200]
        assert w.statuses(job) == {1_200: S.SUCCEEDED}


async def test_a_slot_buffered_across_a_reload_of_its_job_is_fired(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A write reloads the job while its next slot is being claimed; that slot, claimed for the old object,
    is buffered behind the slow run in flight and must fire when the run ends (found by the model test: it was
    buffered on the old object, which nothing fired, and stayed ``claimed``)."""
    async with world(lambda r: slow(2.5)) as w:
        await w.grant(0)
        job = await w.add_job(spec(concurrency=Concurrency.BUFFER_ONE))
        await w.until(T0_MS + 700)  # the claim of 1 s falls due now
        await w.engine.apply_write(job, JobWrite(op=JobWriteOp.RESUME, actor="t", tenant="acme"))
        await w.until(T0_MS + 12_500)
        await w.settle()
        statuses = w.statuses(job)
        assert statuses[1_000] is S.SUCCEEDED
        # runs of 2.5 s, one at a time: by 12.5 s the slots up to 7 s have ended
        assert {s: st for s, st in statuses.items() if s <= 7_000 and st not in TERMINAL} == {}


async def test_a_herd_is_claimed_a_chunk_at_a_time_and_other_jobs_slots_go_ahead_of_its_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """1,000 one-shot jobs due at 1 s beside a job every second (created after them), claims of 100 rows taking
    0.2 s: the herd's claims take 2 s. The other job's slot in the herd's second is claimed in the first chunk
    (its next slot comes soonest), its slots due meanwhile between the herd's chunks, and each is sent on its
    second (claimed after the whole herd, its slots at 1 and 2 s went out 1.7 and 0.7 s late)."""
    async with world(tuning=EngineTuning(refill_interval_ms=2_000, claim_chunk=100, herd_chunk=100)) as w:
        await w.grant(0)
        herd = [await w.add_job(JobSpec(name="h", schedule=At(at(1_000)), target=Target(url="http://127.0.0.1:9/")))
                for _ in range(1_000)]  # fmt: skip
        every = await w.add_job(spec())
        w.store.claim_row_s = 0.002
        await w.until(T0_MS + 4_500)
        await w.settle()
        sends = {s.slot_ms - T0_MS: s.at_ms - T0_MS for s in w.dispatcher.sends_of(every)}
        assert [sends[slot] for slot in (1_000, 2_000, 3_000, 4_000)] == [1_000, 2_000, 3_000, 4_000]
        herd_sends = [s for job in herd for s in w.dispatcher.sends_of(job)]
        assert len(herd_sends) == 1_000 and {s.slot_ms for s in herd_sends} == {T0_MS + 1_000}
        assert max(s.at_ms for s in herd_sends) - T0_MS >= 2_500  # the herd did take its claims' time
        assert all(w.statuses(job) == {1_000: S.SUCCEEDED} for job in herd)


@pytest.mark.parametrize("edited", [False, True])
async def test_an_at_job_fires_once_and_completes(
    autojump_clock: trio.testing.MockClock, edited: bool
) -> None:
    once = JobSpec(name="once", schedule=At(at(3_000)), target=Target(url="http://127.0.0.1:9/"))
    async with world() as w:
        await w.grant(0)
        job = await w.add_job(once)
        if edited:  # edited once its slot is claimed: the reloaded job still waits for that slot to end
            await w.until(T0_MS + 2_800)
            await w.engine.apply_write(
                job,
                JobWrite(
                    op=JobWriteOp.UPSERT,
                    actor="t",
                    tenant="acme",
                    spec=msgspec.structs.replace(once, description="x"),
                ),
            )
            await w.until(T0_MS + 2_900)
            assert w.store.job(0, job).state is JobState.ACTIVE
        await w.until(T0_MS + 10_000)
        await w.settle()
        assert [s.slot_ms - T0_MS for s in w.dispatcher.sends_of(job)] == [3_000]
        assert w.statuses(job) == {3_000: S.SUCCEEDED}
        assert w.store.job(0, job).state is JobState.COMPLETED


async def test_a_trigger_fires_a_manual_slot_now(autojump_clock: trio.testing.MockClock) -> None:
    async with world() as w:
        await w.grant(0)
        job = await w.add_job(spec("1h"))
        await w.until(T0_MS + 1_234)
        trigger = JobWrite(op=JobWriteOp.TRIGGER, actor="t", tenant="acme")
        first = await w.engine.apply_write(job, trigger)
        second = await w.engine.apply_write(job, trigger)  # the same millisecond: a slot of its own
        assert (first.slots, second.slots) == (1, 1)
        await w.until(T0_MS + 2_000)
        await w.settle()
        assert {(k[0] - T0_MS, k[1]): r.status for k, r in w.rows(job).items()} == {
            (0, Origin.SCHEDULED): S.SUCCEEDED,
            (1_234, Origin.MANUAL): S.SUCCEEDED,
            (1_235, Origin.MANUAL): S.SUCCEEDED,
        }


async def test_a_batch_of_writes_is_answered_item_by_item_and_its_creates_fire(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with world() as w:
        await w.grant(0)
        existing = await w.add_job(spec("1h"))
        await w.until(T0_MS + 500)
        new = [job_id_in(0) for _ in range(3)]
        create = JobWrite(op=JobWriteOp.UPSERT, actor="t", tenant="acme", spec=spec("1s"))
        invalid = JobWrite(op=JobWriteOp.UPSERT, actor="t", tenant="acme", spec=spec("0s"))
        out = await w.engine.apply_writes([
            (new[0], create), (new[1], invalid), (job_id_in(1), create), (existing, JobWrite(
                op=JobWriteOp.PAUSE, actor="t", tenant="acme")), (new[2], create), (new[0], create)])  # fmt: skip
        kinds = [type(o).__name__ for o in out]
        assert kinds == ["JobWritten", "SpecError", "NotOwnerError", "JobWritten", "JobWritten", "JobWritten"]
        assert getattr(out[1], "field", None) == "spec.schedule.every"
        assert [getattr(o, "created", None) for o in out] == [True, None, None, False, True, False]
        assert w.store.job(0, existing).state is JobState.PAUSED
        await w.until(T0_MS + 3_200)
        await w.settle()
        for job in (new[0], new[2]):  # created at 500: every second from then, once each
            assert [s.slot_ms - T0_MS for s in w.dispatcher.sends_of(job)] == [500, 1_500, 2_500]


async def test_a_job_created_far_from_its_first_slot_waits_outside_memory_and_fires_on_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with world() as w:
        await w.grant(0)
        job = job_id_in(0)
        every_ten_minutes = JobSpec(name="j", schedule=Cron("0 */10 * * * *"), target=Target(url="http://127.0.0.1:9/"))
        boundary = next(compile_schedule(every_ten_minutes, ms_to_datetime(T0_MS)).iter_ms(T0_MS))
        await w.until(boundary + 1_000)  # created just after a slot: its first one is ten minutes away
        (out,) = await w.engine.apply_writes([(job, JobWrite(op=JobWriteOp.UPSERT, actor="t", tenant="acme",
                                                             spec=every_ten_minutes))])  # fmt: skip
        first = boundary + 600_000
        assert getattr(out, "next_fire_at", None) == ms_to_datetime(first)
        assert job not in w.engine.jobs  # not loaded: the refill brings it in
        await w.until(first + 500)
        await w.settle()
        assert first in [s.slot_ms for s in w.dispatcher.sends_of(job)]


async def test_a_backfill_fires_each_past_slot_once(autojump_clock: trio.testing.MockClock) -> None:
    async with world() as w:
        await w.grant(0)
        job = await w.add_job(spec("10s", misfire=Misfire(policy=MisfirePolicy.SKIP, grace_ms=1_000)))
        await w.until(T0_MS + 65_000)
        span = BackfillRange(ms_to_datetime(T0_MS + 20_000), ms_to_datetime(T0_MS + 50_000))
        fill = JobWrite(op=JobWriteOp.BACKFILL, actor="t", tenant="acme", backfill=span)
        assert (await w.engine.apply_write(job, fill)).slots == 3
        await w.engine.apply_write(job, fill)  # the same range again: claimed already, not sent twice
        await w.until(T0_MS + 70_000)
        await w.settle()
        backfilled = {k[0] - T0_MS: r.status for k, r in w.rows(job).items() if k[1] is Origin.BACKFILL}
        assert backfilled == {20_000: S.SUCCEEDED, 30_000: S.SUCCEEDED, 40_000: S.SUCCEEDED}
        sends = Counter((s.slot_ms, s.origin) for s in w.dispatcher.sends_of(job))
        assert max(sends.values()) == 1
        with pytest.raises(SpecError) as refused:
            await w.engine.apply_write(job, msgspec.structs.replace(fill, backfill=BackfillRange(
                span.start, ms_to_datetime(T0_MS + 80_000))))  # fmt: skip
        assert refused.value.field == "backfill.to"
        with pytest.raises(NotFound):
            await w.engine.apply_write(job, msgspec.structs.replace(fill, tenant="globex"))


async def test_a_postgresql_outage_holds_claims_back_then_the_misfire_policy_decides(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """PostgreSQL refuses everything for 20 s: nothing is sent that was not claimed; afterwards the slots
    past the grace are planned by the policy (FIRE_ONCE: one send for the gap), nothing stays claimed and
    nothing is claimed twice."""
    async with world() as w:
        await w.grant(0)
        job = await w.add_job(spec(misfire=Misfire(policy=MisfirePolicy.FIRE_ONCE, grace_ms=5_000)))
        await w.until(T0_MS + 2_500)
        w.store.down_for(20)
        await w.until(T0_MS + 40_500)
        await w.settle()
        statuses = w.statuses(job)
        sends = Counter(s.slot_ms for s in w.dispatcher.sends_of(job))
        assert max(sends.values()) == 1
        assert set(statuses) == set(range(0, 40_001, 1000))  # every slot has its row
        assert all(st in TERMINAL for st in statuses.values())
        assert Counter(statuses.values())[S.SKIPPED_MISFIRE] >= 10
        assert all(st is S.SUCCEEDED for s, st in statuses.items() if s >= 30_000)
        # The held claim's re-plan reached past the job's next claim, already due: that one claims nothing again
        # (it did: 47 rows refused as stored, a node far behind spending half its claims on them).
        assert w.store.claimed_again == 0


async def test_a_claim_whose_answer_was_lost_is_sent_not_stranded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with world() as w:
        await w.grant(0)
        w.store.lose_answer("claim_rows")  # the job's first claim commits, its answer never arrives
        job = await w.add_job(spec("1h"))
        await w.until(T0_MS + 100)
        # A trigger whose write and claim commit but whose answer is lost; the API's retry carries the same
        # request id and is answered from the record: the committed claim is found and sent, once.
        w.store.lose_answer("write_job_and_claim")
        trigger = JobWrite(op=JobWriteOp.TRIGGER, actor="t", tenant="acme", idempotency_key="request 1")
        with pytest.raises(DatabaseUnavailable):
            await w.engine.apply_write(job, trigger)
        assert (await w.engine.apply_write(job, trigger)).slots == 1
        assert (await w.engine.apply_write(job, trigger)).slots == 1  # a third try finds it in the wheel
        await w.until(T0_MS + 5_000)
        await w.settle()
        assert {k[1]: r.status for k, r in w.rows(job).items()} == {
            Origin.SCHEDULED: S.SUCCEEDED,
            Origin.MANUAL: S.SUCCEEDED,
        }
        assert Counter(s.origin for s in w.dispatcher.sends_of(job)) == {"scheduled": 1, "manual": 1}
        assert "own_unsent_claims" in w.store.calls


@pytest.mark.parametrize("semantics", list(Semantics))
async def test_sends_stop_while_the_lease_is_unconfirmed_and_held_slots_follow_the_policy(
    autojump_clock: trio.testing.MockClock, semantics: Semantics
) -> None:
    """AT_MOST_ONCE too: the node never wrote a byte of a held slot, so the policy decides, not ``lost``."""
    async with world() as w:
        await w.grant(0)
        job = await w.add_job(
            spec(semantics=semantics, misfire=Misfire(policy=MisfirePolicy.SKIP, grace_ms=3_000))
        )
        await w.until(T0_MS + 1_800)  # slot 2 s is claimed and waits for its second
        w.ownership.valid = trio.current_time()  # etcd unreachable: the lease is no longer confirmed
        await w.until(T0_MS + 10_500)
        assert max(s.at_ms for s in w.dispatcher.sends) < T0_MS + 1_800
        assert len(w.rows(job)) <= 3 and w.engine.statistics().held >= 1  # nothing claimed, the claimed held
        w.ownership.valid = float("inf")
        await w.until(T0_MS + 14_500)
        await w.settle()
        statuses = w.statuses(job)
        sends = w.dispatcher.sends_of(job)
        assert Counter(s.slot_ms for s in sends).most_common(1)[0][1] == 1
        assert all(st in TERMINAL for st in statuses.values())
        # slots older than the grace when sends resumed are skipped; the recent ones go out late
        assert statuses[2_000] is S.SKIPPED_MISFIRE and statuses[14_000] is S.SUCCEEDED
        assert set(statuses) == set(range(0, 14_001, 1000)) and S.LOST not in statuses.values()


async def test_a_release_as_the_lease_returns_leaves_no_slot_unplanned(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Claims held back by an unconfirmed lease go out when it returns, as a release of the shard begins:
    the release gives back only after the claim statement in flight committed, and no claim of the shard
    starts after it (the model test found a give-back between two claims, the second raising the job's cursor
    past the slot given back, which the next owner then never planned)."""
    async with world() as w:
        shards = range(SHARDS)  # one race per shard: trio's scheduling order decides which way each goes
        for shard in shards:
            await w.grant(shard)
        grace = Misfire(policy=MisfirePolicy.SKIP, grace_ms=5_000)
        jobs = [await w.add_job(spec("2s", misfire=grace), shard=shard) for shard in shards]
        await w.until(T0_MS + 900)
        w.ownership.valid = trio.current_time()
        await w.until(T0_MS + 4_900)  # the claims of 2 s and 4 s wait for the lease
        w.ownership.valid = float("inf")
        for shard in shards:
            w.ownership.revoke(shard)
        for shard in shards:
            await w.ownership.wait_released(shard)
        await w.until(T0_MS + 10_000)
        for shard in shards:
            await w.grant(shard)
        await w.until(T0_MS + 16_500)
        await w.settle()
        for job in jobs:
            statuses = w.statuses(job)
            assert set(statuses) == set(range(0, 16_001, 2000)), statuses
            assert all(st in TERMINAL for st in statuses.values())


async def test_a_retry_waiting_when_its_shard_is_released_is_the_next_owners(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Found by the model test: a retry entry left in the wheel by a release fired under the state that held
    the shard next, next to the new owner's own resumption of the row: the slot ran twice."""
    async with world(lambda r: Reply(status=503, retry_after_s=2)) as w:
        await w.grant(0)
        job = await w.add_job(
            JobSpec(name="once", schedule=At(at(1_000)), target=Target(url="http://127.0.0.1:9/"),
                    retry=RetryPolicy(max_attempts=3, jitter=0))  # fmt: skip
        )
        await w.until(T0_MS + 1_500)  # attempt 1 answered 503: attempt 2 waits for 3 s
        w.ownership.revoke(0)
        await w.ownership.wait_released(0)
        await w.grant(0)  # the next owner (this node again) resumes the row from the store
        await w.until(T0_MS + 10_000)
        await w.settle()
        assert [s.attempt for s in w.dispatcher.sends_of(job)] == [1, 2, 3]
        (row,) = w.rows(job).values()
        assert (row.status, row.attempt) == (S.FAILED, 3)


async def test_a_graceful_release_gives_back_unsent_claims_and_lets_runs_finish(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with world(lambda r: slow(0.8)) as w:
        await w.grant(0)
        job = await w.add_job(spec())
        await w.until(T0_MS + 2_800)  # slot 3 s is claimed (300 ms ahead) and waiting; slot 2 s is in flight
        w.ownership.revoke(0)
        await w.until(T0_MS + 10_000)
        assert w.ownership.released_shards == [0]
        statuses = w.statuses(job)
        assert statuses == {0: S.SUCCEEDED, 1000: S.SUCCEEDED, 2000: S.SUCCEEDED}  # 3 s given back: no row
        assert w.store.cursors[(0, job)] == T0_MS + 2_999  # the next owner claims 3 s afresh


async def test_a_claim_committing_while_its_shard_is_released_is_given_back_not_left_claimed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Behind a graceful stop under load (rows left `claimed` once the node was gone): the release began while
    a claim statement was in flight, waited for it to commit as it must, and its rows were then neither sent nor
    given back."""
    async with world() as w:
        await w.grant(0)
        job = await w.add_job(spec())
        await w.until(T0_MS + 2_650)
        w.store.hold()  # slot 3's claim (due at 2.7 s) waits in PostgreSQL
        await w.until(T0_MS + 2_750)
        w.ownership.revoke(0)
        await w.until(T0_MS + 2_800)
        w.store.release()
        await w.ownership.wait_released(0)
        await w.settle()
        statuses = w.statuses(job)
        assert statuses == {0: S.SUCCEEDED, 1000: S.SUCCEEDED, 2000: S.SUCCEEDED}  # 3 s given back: no row
        assert w.store.cursors[(0, job)] == T0_MS + 2_999  # the next owner claims 3 s afresh


async def test_a_release_past_its_deadline_gives_back_slots_still_queued_for_a_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Busy-core runs left ~1,000 rows claimed after a graceful stop: a node behind had handed slots to the
    dispatcher that were still waiting for a connection when the release deadline passed. No byte of them was
    written, so they are given back like unsent claims; a request already written stays for the takeover."""
    written_slowly = {T0_MS + 1_000}

    def reply(r: SendRequest) -> Reply:
        if r.scheduled_at_ms in written_slowly:
            return Reply(delay_s=120)  # written, then no answer
        return Reply(queued_s=120)  # never gets a connection

    async with world(reply, tuning=EngineTuning(refill_interval_ms=2_000, release_timeout_s=5)) as w:
        await w.grant(0)
        job = await w.add_job(spec())
        await w.until(T0_MS + 2_800)  # slots 0, 1 and 2 s are with the dispatcher, 3 s claimed and waiting
        w.ownership.revoke(0)
        await w.ownership.wait_released(0)
        rows = w.store.rows_of(job)
        assert [(slot - T0_MS, row.status) for (slot, _), row in rows.items()] == [(1_000, S.CLAIMED)]
        assert w.store.cursors[(0, job)] == T0_MS - 1  # the next owner plans 0 s, 2 s and 3 s afresh
        assert len(w.dispatcher.cancelled) == 3  # 0 s, 2 s (queued) and 1 s (written: dropped, row kept)


async def test_a_drain_releases_shards_still_loading_and_hands_back_those_granted_meanwhile(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Found by the cluster outage test (both nodes stopped at once, each picking up what the other gave back):
    a shard still loading when the drain began, and one granted during the drain, went on to claim slots
    after it, and those rows stayed claimed once the node was gone."""
    async with world(lambda r: slow(3)) as w:
        await w.grant(0)
        jobs = [job_id_in(shard) for shard in (0, 1, 2)]
        for shard, job in zip((0, 1, 2), jobs, strict=True):
            w.store_job(job, spec(), shard=shard)
        await w.until(T0_MS + 1_500)  # shard 0 has a run in flight: its release waits for it
        w.store.hold()  # shard 1's load waits on the store
        w.ownership.grant(1)
        await w.until(T0_MS + 1_600)
        async with trio.open_nursery() as n:
            n.start_soon(w.engine.drain)
            await w.until(T0_MS + 1_700)
            w.store.release()
            w.ownership.grant(2)  # granted while draining
        assert sorted(w.ownership.released_shards) == [0, 1, 2]
        for i, job in enumerate(jobs):
            left = {slot - T0_MS: r.status for (slot, _), r in w.store.rows_of(job).items()}
            assert S.CLAIMED not in left.values(), (i, left, w.ownership.released_shards)
        assert w.store.rows_of(jobs[2]) == {}  # never loaded: nothing claimed


async def test_a_write_to_a_fenced_shard_drops_it(autojump_clock: trio.testing.MockClock) -> None:
    async with world() as w:
        await w.grant(0)
        job = await w.add_job(spec())
        await w.until(T0_MS + 1_500)
        w.store.bump_epoch(0, "node-new")  # another node took the shard over
        await w.until(T0_MS + 5_000)
        assert w.engine.statistics().shards_loaded == 0 and w.engine.metrics.fenced.get() >= 1
        assert max(s.slot_ms for s in w.dispatcher.sends_of(job)) <= T0_MS + 2_000
        assert all(r.epoch == 1 for r in w.rows(job).values())  # nothing written after the takeover


async def test_forbid_sees_a_finished_run_while_another_host_keeps_sends_queued(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Outcomes are recorded once the dispatcher's queue is empty, or a second later: a slow host kept at its
    cap keeps that queue busy, and a FORBID job elsewhere must still see its last run as finished."""
    async with world(lambda r: slow(0.2)) as w:
        w.dispatcher.backlog = 5
        await w.grant(0)
        job = await w.add_job(spec(concurrency=Concurrency.FORBID))
        await w.until(T0_MS + 9_500)  # the outcomes of up to a second ago are recorded by now
        await w.settle()
        done = {s: st for s, st in w.statuses(job).items() if s <= 8_000}
        assert done == {s: S.SUCCEEDED for s in range(0, 8_001, 1000)}
