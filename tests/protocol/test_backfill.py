"""Backfill: exactly the schedule's slots in [from, to), past only, bounded, every refusal naming its field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import SpecError
from protocol.jobs import JobSpec, Target
from protocol.schedules import Cron, Every
from protocol.slots import compile_schedule
from protocol.slots.backfill import MAX_BACKFILL_SLOTS, BackfillRange, backfill_slots

from .strategies import instants, job_specs

NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)
MS = timedelta(milliseconds=1)


def _ms(t: datetime) -> int:
    return (t - datetime(1970, 1, 1, tzinfo=UTC)) // MS


def spec(schedule: Cron | Every) -> JobSpec:
    return JobSpec(name="b", schedule=schedule, target=Target(url="https://e.example/"))


@settings(max_examples=150, deadline=None)
@given(job_specs(), instants, st.integers(1, 3 * 86_400_000), st.integers(1, 10**9))
def test_the_slots_are_the_schedules_own_in_the_half_open_range(
    job: JobSpec, created: datetime, span_ms: int, micros: int
) -> None:
    start = created + timedelta(microseconds=micros)
    end = start + span_ms * MS
    try:
        got = backfill_slots(job, created, BackfillRange(start, end), end + MS)
    except SpecError as e:
        assert e.field == "to" and "more than" in e.problem
        return
    # reference: walk the rule's own datetimes, keep those in [start, end)
    want = []
    for t in compile_schedule(job, created).iter_after(start - timedelta(milliseconds=2)):
        if t >= end:
            break
        if t >= start:
            want.append(_ms(t))
    assert got == want
    assert len(got) <= MAX_BACKFILL_SLOTS


def test_consecutive_ranges_fire_no_slot_twice() -> None:
    hourly = spec(Every("1h"))
    created = datetime(2026, 11, 1, tzinfo=UTC)
    a = backfill_slots(hourly, created, BackfillRange(created + timedelta(hours=2), created + timedelta(hours=5)), NOW)
    b = backfill_slots(hourly, created, BackfillRange(created + timedelta(hours=5), created + timedelta(hours=7)), NOW)
    assert [(t - _ms(created)) // 3_600_000 for t in a + b] == [2, 3, 4, 5, 6]


@pytest.mark.parametrize(
    ("start", "end", "field", "says"),
    [
        (NOW - timedelta(hours=1), NOW - timedelta(hours=2), "to", "after from"),
        (NOW - timedelta(hours=1), NOW - timedelta(hours=1), "to", "after from"),
        (NOW - timedelta(hours=1), NOW + timedelta(seconds=1), "to", "future"),
        (NOW - timedelta(hours=1), datetime(2026, 11, 28, 11), "to", "UTC offset"),
        (datetime(2026, 11, 28, 10), NOW - timedelta(hours=1), "from", "UTC offset"),
        (NOW - timedelta(seconds=MAX_BACKFILL_SLOTS + 1), NOW, "to", f"more than {MAX_BACKFILL_SLOTS}"),
    ],
)
def test_a_range_that_cannot_be_backfilled_is_refused_naming_the_field(
    start: datetime, end: datetime, field: str, says: str
) -> None:
    with pytest.raises(SpecError) as e:
        backfill_slots(spec(Cron("* * * * * *")), NOW - timedelta(days=1), BackfillRange(start, end), NOW)
    assert (e.value.field, says in e.value.problem) == (field, True)


def test_exactly_the_bound_is_allowed() -> None:
    every_second = spec(Cron("* * * * * *"))
    got = backfill_slots(every_second, NOW - timedelta(days=1),
                         BackfillRange(NOW - timedelta(seconds=MAX_BACKFILL_SLOTS), NOW), NOW)  # fmt: skip
    assert len(got) == MAX_BACKFILL_SLOTS and got[-1] == _ms(NOW) - 1000
