"""Run handling's pure rules (``scheduler_node.run_rules``) against simple models of what they promise."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.executions import FAILURES, TERMINAL, ExecutionStatus, Origin
from protocol.jobs import Concurrency, JobSpec, JobState, Semantics, Target
from protocol.schedules import Every
from scheduler_node.retry import AttemptResult, FailureKind
from scheduler_node.run_rules import (
    FireStep,
    NotAnAttempt,
    OutcomeStep,
    completes,
    finish_step,
    fire_step,
    outcome_step,
)

from .test_retry import policies, results

S = ExecutionStatus
ACTIVE = JobState.ACTIVE


# ---- at the slot's second -------------------------------------------------------------------------------


@dataclass
class Sent:
    slot: int
    start: int
    ends: int  # when its run ends (ms), unless cancelled first
    cancelled_at: int | None = None

    def live_at(self, t: int) -> bool:
        return self.start <= t < (self.ends if self.cancelled_at is None else self.cancelled_at)


def simulate(policy: Concurrency, period: int, durations: list[int]) -> tuple[list[Sent], dict[int, str]]:
    """A job firing every ``period`` ms whose n-th run sent takes ``durations[n]``, with ``fire_step`` taking
    the engine's decisions in time order (a run ending at a slot's instant ends first, and a buffered slot
    starts when the run it waits for ends). Returns the runs sent and each slot's fate: sent, skipped or
    buffered (then sent)."""
    sent: list[Sent] = []
    fate: dict[int, str] = {}
    buffered: int | None = None

    def start(slot: int, at: int) -> None:
        sent.append(Sent(slot, at, at + durations[len(sent)]))

    def start_buffered_until(t: int) -> None:
        nonlocal buffered
        if buffered is not None and (ends := sent[-1].ends) <= t:  # BUFFER_ONE: the last run is the only one
            start(buffered, ends)
            buffered = None

    for slot in (i * period for i in range(len(durations))):
        start_buffered_until(slot)
        in_flight = [r for r in sent if r.live_at(slot)]
        step = fire_step(ACTIVE, Origin.SCHEDULED, policy, len(in_flight), buffered is not None)
        fate[slot] = {FireStep.SKIP_OVERLAP: "skipped", FireStep.BUFFER: "buffered"}.get(step, "sent")
        if step is FireStep.BUFFER:
            buffered = slot
        elif step is not FireStep.SKIP_OVERLAP:
            for r in in_flight if step is FireStep.REPLACE else ():
                r.cancelled_at = slot
            start(slot, slot)
    start_buffered_until(10**12)
    return sent, fate


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(Concurrency),
    st.integers(1, 5_000),
    st.lists(st.integers(0, 20_000), min_size=1, max_size=30),
)
def test_each_concurrency_policy_keeps_its_promise(
    policy: Concurrency, period: int, durations: list[int]
) -> None:
    sent, fate = simulate(policy, period, durations)
    live_together = max(sum(r.live_at(t) for r in sent) for t in {r.start for r in sent})
    if policy is Concurrency.ALLOW:
        assert set(fate.values()) == {"sent"}
    elif policy is Concurrency.FORBID:
        assert live_together <= 1
        for slot, what in fate.items():  # skipped exactly when a run was in flight at its second
            assert (what == "skipped") == any(r.live_at(slot) for r in sent if r.slot < slot)
    elif policy is Concurrency.BUFFER_ONE:
        assert live_together <= 1
        assert sorted(r.slot for r in sent) == sorted(s for s, what in fate.items() if what != "skipped")
        started = {r.slot: r.start for r in sent}
        for slot, what in fate.items():
            if what == "buffered":  # it waited for the run before it, and started as that one ended
                assert started[slot] == max(r.ends for r in sent if r.slot < slot) > slot
            if what == "skipped":  # a run in flight, and another slot already waiting for it
                waiting = [b for b, w in fate.items() if w == "buffered" and b < slot < started[b]]
                assert any(r.live_at(slot) for r in sent if r.slot < slot) and len(waiting) == 1
    else:
        assert set(fate.values()) == {"sent"} and live_together <= 1
        for r in sent:  # a run is cancelled only by the next slot, at its second
            assert r.cancelled_at is None or r.cancelled_at == r.slot + period


def test_the_worked_example_forbid_every_second_with_a_2_5_s_target() -> None:
    _, fate = simulate(Concurrency.FORBID, 1000, [2500] * 7)
    assert fate == {0: "sent", 1000: "skipped", 2000: "skipped", 3000: "sent", 4000: "skipped",
                    5000: "skipped", 6000: "sent"}  # fmt: skip


@given(st.sampled_from(JobState), st.sampled_from(Origin), st.sampled_from(Concurrency), st.integers(0, 3),
       st.booleans())  # fmt: skip
def test_a_paused_job_skips_only_its_scheduled_slots(
    state: JobState, origin: Origin, policy: Concurrency, in_flight: int, buffered: bool
) -> None:
    step = fire_step(state, origin, policy, in_flight, buffered)
    paused = state in (JobState.PAUSED, JobState.AUTO_PAUSED)
    assert (step is FireStep.SKIP_PAUSED) == (paused and origin is Origin.SCHEDULED)
    if step is not FireStep.SKIP_PAUSED:
        assert step is fire_step(ACTIVE, origin, policy, in_flight, buffered)


# ---- with each attempt's outcome ------------------------------------------------------------------------


def job_spec(semantics: Semantics, policy: object) -> JobSpec:
    return JobSpec(name="j", schedule=Every("1s"), target=Target(url="http://127.0.0.1:9/"),
                   semantics=semantics, retry=policy)  # type: ignore[arg-type]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(Semantics),
    policies,
    st.lists(st.sampled_from(NotAnAttempt) | results, min_size=1, max_size=40),
    st.floats(0, 1, exclude_max=True),
)
def test_a_run_ends_within_its_attempts_and_at_most_once_never_resends_what_was_written(
    semantics: Semantics, policy: object, answers: list[AttemptResult | NotAnAttempt], u: float
) -> None:
    spec = job_spec(semantics, policy)
    attempt = 1
    for answer in answers:
        step, status, retry_in_ms = outcome_step(spec, attempt, answer, u)
        if answer is NotAnAttempt.NOT_SENT:
            assert step is OutcomeStep.HOLD  # no attempt was made: the same one goes again
            continue
        if answer is NotAnAttempt.CANCELLED:
            assert (step, status) == (OutcomeStep.CANCELLED, S.CANCELLED)
            break
        assert isinstance(answer, AttemptResult)
        if step is OutcomeStep.RETRY:
            assert retry_in_ms is not None and retry_in_ms >= 0
            assert answer.retry_after_ms is None or retry_in_ms >= min(answer.retry_after_ms, 86_400_000)
            assert not (semantics is Semantics.AT_MOST_ONCE and answer.bytes_written)
            attempt += 1
            continue
        assert step is OutcomeStep.END and status in TERMINAL
        assert status is not S.TIMED_OUT or answer.kind is FailureKind.TIMEOUT
        break
    assert attempt <= spec.retry.max_attempts


# ---- when a run ends ------------------------------------------------------------------------------------

RESUME = "resume"


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([*TERMINAL, RESUME]), max_size=60),
    st.none() | st.integers(1, 5),
)
def test_the_failure_streak_alerts_and_auto_pauses_as_a_model_says(
    events: list[ExecutionStatus | str], limit: int | None
) -> None:
    failures, state = 0, ACTIVE
    for i, event in enumerate(events):
        if event == RESUME:
            failures, state = 0, ACTIVE  # what the engine does on a resume
            continue
        assert isinstance(event, ExecutionStatus)
        failures, alert_failed, auto_pause = finish_step(event, failures, limit, state)
        # The model: the streak is the failures since the last success or resume, counted from the list.
        since = max([j for j, e in enumerate(events[: i + 1]) if e in (S.SUCCEEDED, RESUME)], default=-1)
        streak = sum(e in FAILURES for e in events[since + 1 : i + 1])
        assert failures == streak
        assert alert_failed == (event in FAILURES)
        first_pause_since = limit is not None and event in FAILURES and streak == limit
        assert auto_pause == (first_pause_since and state is ACTIVE)
        if auto_pause:
            state = JobState.AUTO_PAUSED


def test_the_worked_example_of_the_streak() -> None:
    streaks = []
    failures, state = 0, ACTIVE
    for status in (S.FAILED, S.CANCELLED, S.FAILED):
        failures, alert, pause = finish_step(status, failures, 2, state)
        streaks.append((failures, alert, pause))
    assert streaks == [(1, True, False), (1, False, False), (2, True, True)]


def test_a_job_completes_only_when_active_exhausted_and_nothing_is_left() -> None:
    assert completes(ACTIVE, True, 0, 0, False)
    assert not completes(ACTIVE, False, 0, 0, False)
    assert not completes(JobState.PAUSED, True, 0, 0, False)
    assert not completes(ACTIVE, True, 1, 0, False)
    assert not completes(ACTIVE, True, 0, 1, False)
    assert not completes(ACTIVE, True, 0, 0, True)
