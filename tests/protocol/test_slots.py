"""protocol.slots: slot math against simple reference models, and named DST cases.

Reference models (deliberately naive, sharing no code with the implementation but ``CronExpr.matches``, which
test_cron.py holds to croniter):
- absolute time: walk every second of real UTC time, read it on the zone's clock, keep it if the cron matches;
- DST policy: walk every wall-clock second, keep the matching ones, and resolve each by the policy's
  definition (its readings found by round-tripping both folds; a gap's end taken from transitions found here
  by scanning).
"""

from __future__ import annotations

import itertools
from collections import Counter
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from protocol.cron import CronExpr, parse_cron
from protocol.errors import SpecError
from protocol.jobs import DstGap, DstPolicy, DstRepeat, JobSpec, Target, validate_job_spec
from protocol.schedules import At, Cron, Every
from protocol.slots import (
    ABSOLUTE,
    AtRule,
    CronRule,
    EveryRule,
    FirstSlots,
    SlotRule,
    compile_schedule,
    preview,
    zone,
)
from protocol.slots.cron_slots import CronSlots

from .strategies import job_specs

S = timedelta(seconds=1)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[arg-type,misc]


def spec(
    schedule: Cron | Every | At | str,
    timezone: str = "UTC",
    gap: str = "shift",
    repeat: str = "first",
    start_at: datetime | None = None,
    end_at: datetime | None = None,
) -> JobSpec:
    if isinstance(schedule, str):
        schedule = Cron(cron=schedule)
    return JobSpec(
        name="t",
        schedule=schedule,
        target=Target(url="https://example.com/"),
        timezone=timezone,
        dst=DstPolicy(gap=DstGap(gap), repeat=DstRepeat(repeat)),
        start_at=start_at,
        end_at=end_at,
    )


# --- transitions, found by scanning (independent of protocol.slots.dst) -------------------------------------

DST_ZONES = ["America/New_York", "Europe/London", "Australia/Lord_Howe", "Pacific/Chatham", "Europe/Dublin"]


def _offset(t: datetime, tz: ZoneInfo) -> timedelta:
    off = t.astimezone(tz).utcoffset()
    assert off is not None
    return off


def _scan_transitions(
    name: str, first_year: int, last_year: int
) -> list[tuple[datetime, timedelta, timedelta]]:
    """(instant, offset before, offset after) of every change, scanning 6-hourly then second by second."""
    tz = zone(name)
    out = []
    t = utc(first_year, 1, 1)
    prev = _offset(t, tz)
    while t.year <= last_year:
        nxt = t + timedelta(hours=6)
        off = _offset(nxt, tz)
        if off != prev:
            lo, hi = t, nxt  # offset(lo) == prev != offset(hi)
            while hi - lo > S:
                mid = lo + (hi - lo) // 2
                mid = mid - timedelta(microseconds=mid.microsecond)
                if _offset(mid, tz) == prev:
                    lo = mid
                else:
                    hi = mid
            out.append((hi, prev, off))
        t, prev = nxt, off
    return out


TRANSITIONS = {name: _scan_transitions(name, 2024, 2045) for name in DST_ZONES}


def _gap_end(tz_name: str, wall: datetime) -> datetime:
    """The instant a spring-forward gap containing ``wall`` ends (from the scanned transitions)."""
    for t, before, after in TRANSITIONS[tz_name]:
        if after > before and (t + before).replace(tzinfo=None) <= wall < (t + after).replace(tzinfo=None):
            return t
    raise AssertionError(f"{wall} is in no known gap of {tz_name}")


# --- the reference models -----------------------------------------------------------------------------------


def absolute_reference(expr: CronExpr, tz_name: str, lo: datetime, hi: datetime) -> list[datetime]:
    """Every whole second t in (lo, hi] of real time whose reading on the zone's clock matches."""
    tz = zone(tz_name)
    out = []
    t = lo.replace(microsecond=0) + S
    while t <= hi:
        if expr.matches(t.astimezone(tz)):
            out.append(t)
        t += S
    return out


def _readings(wall: datetime, tz: ZoneInfo) -> list[datetime]:
    """The instants whose reading on the zone's clock is ``wall``: none, one, or two (by round trip)."""
    found = set()
    for fold in (0, 1):
        t = wall.replace(tzinfo=tz, fold=fold).astimezone(UTC)
        if t.astimezone(tz).replace(tzinfo=None) == wall:
            found.add(t)
    return sorted(found)


def policy_reference(
    expr: CronExpr, tz_name: str, policy: DstPolicy, lo: datetime, hi: datetime
) -> list[datetime]:
    """Every matching wall-clock second near (lo, hi], resolved by the policy's definition."""
    tz = zone(tz_name)
    out: set[datetime] = set()
    w = (lo.astimezone(tz).replace(tzinfo=None, microsecond=0, fold=0)) - timedelta(hours=2)
    stop = hi.astimezone(tz).replace(tzinfo=None, fold=0) + timedelta(hours=2)
    folds = {DstRepeat.FIRST: [0], DstRepeat.SECOND: [1], DstRepeat.BOTH: [0, 1]}[policy.repeat]
    while w <= stop:
        if expr.matches(w):
            readings = _readings(w, tz)
            if not readings:
                if policy.gap is DstGap.SHIFT:
                    out.add(_gap_end(tz_name, w))
            elif len(readings) == 1:
                out.add(readings[0])
            else:
                out.update(readings[f] for f in folds)
        w += S
    return sorted(t for t in out if lo < t <= hi)


def take_until(rule: SlotRule, lo: datetime, hi: datetime, limit: int = 100_000) -> list[datetime]:
    return list(itertools.takewhile(lambda t: t <= hi, itertools.islice(rule.iter_after(lo), limit)))


def assert_resumes_anywhere(rule: SlotRule, slots: list[datetime]) -> None:
    """A fresh next_after from each slot gives the kept iterator's next one (the node mixes both)."""
    for a, b in itertools.pairwise(slots):
        assert rule.next_after(a) == b, (a, b)


# --- strategies ---------------------------------------------------------------------------------------------

_seconds = st.sampled_from(["0", "30", "*/20", "0,15", "*/7", "5-10", "59"])
_free_hours = st.sampled_from(["*", "*/2", "*/3", "1-3", "0-23/5", "*/1", "0-6", "2-3"])
_fixed_hours = st.sampled_from(["0", "1", "2", "3", "1,2", "2,14", "0,1,2,3", "23"])
_minutes = st.sampled_from(["*", "*/15", "0", "30", "0-59/7", "1,31", "*/5", "45", "40-50"])
_fixed_minutes = st.sampled_from(["0", "30", "15,45", "*/15", "45", "59", "*/10"])
_days = st.sampled_from(["* * *", "* * *", "? * SUN", "* * 0-5", "1-31 * ?", "*/2 * *"])
policies = st.builds(DstPolicy, gap=st.sampled_from(list(DstGap)), repeat=st.sampled_from(list(DstRepeat)))


@st.composite
def windows(draw: st.DrawFn) -> tuple[str, datetime, datetime]:
    """A zone and a window of 1-3 h that mostly contains one of its transitions (any year up to 2045)."""
    name = draw(st.sampled_from(DST_ZONES))
    t, _, _ = draw(st.sampled_from(TRANSITIONS[name]))
    lo = t + timedelta(
        seconds=draw(st.integers(-150 * 60, 40 * 60)), microseconds=draw(st.sampled_from([0, 1, 500]))
    )
    return name, lo, lo + timedelta(minutes=draw(st.integers(60, 180)))


# --- property tests -----------------------------------------------------------------------------------------


@settings(max_examples=120, deadline=None)
@given(_seconds, _minutes, _free_hours, _days, windows(), policies)
def test_wildcard_or_stepped_hour_follows_absolute_time(
    sec: str, minute: str, hour: str, days: str, window: tuple[str, datetime, datetime], policy: DstPolicy
) -> None:
    """Every real instant that matches fires exactly once, whatever the job's policy says."""
    name, lo, hi = window
    text = f"{sec} {minute} {hour} {days}"
    expr = parse_cron(text)
    assert not expr.hour_fixed
    rule = compile_schedule(spec(text, name, policy.gap, policy.repeat), lo)
    got = take_until(rule, lo, hi)
    expected = absolute_reference(expr, name, lo, hi)
    assert got == expected
    # The design's claim: absolute time is the policy (gap skip, repeat both) applied to wall-clock matches.
    assert policy_reference(expr, name, ABSOLUTE, lo, hi) == expected
    assert_resumes_anywhere(rule, got)


@settings(max_examples=120, deadline=None)
@given(_seconds, _fixed_minutes, _fixed_hours, _days, windows(), policies)
def test_fixed_hour_follows_the_dst_policy(
    sec: str, minute: str, hour: str, days: str, window: tuple[str, datetime, datetime], policy: DstPolicy
) -> None:
    name, lo, hi = window
    text = f"{sec} {minute} {hour} {days}"
    expr = parse_cron(text)
    assert expr.hour_fixed
    rule = compile_schedule(spec(text, name, policy.gap, policy.repeat), lo)
    got = take_until(rule, lo, hi)
    assert got == policy_reference(expr, name, policy, lo, hi)
    assert_resumes_anywhere(rule, got)


@settings(max_examples=60, deadline=None)
@given(_fixed_minutes, _fixed_hours, st.sampled_from(DST_ZONES), st.integers(0, 20), policies)
def test_fixed_hour_fires_at_most_the_policy_count_per_local_day(
    minute: str, hour: str, name: str, index: int, policy: DstPolicy
) -> None:
    transitions = TRANSITIONS[name]
    t, _, _ = transitions[index % len(transitions)]
    tz = zone(name)
    text = f"0 {minute} {hour} * * *"
    expr = parse_cron(text)
    per_day = len(expr.values[1]) * len(expr.values[2])  # wall-clock matches in one local day
    folds = 2 if policy.repeat is DstRepeat.BOTH else 1
    lo, hi = t - timedelta(days=2), t + timedelta(days=2)
    got = take_until(compile_schedule(spec(text, name, policy.gap, policy.repeat), lo), lo, hi)
    counts = Counter(s.astimezone(tz).date() for s in got)
    for day, count in counts.items():
        assert count <= per_day * folds, (day, count)
    transition_day = t.astimezone(tz).date()
    for day in (transition_day - timedelta(days=1), transition_day + timedelta(days=1)):
        assert counts[day] == per_day  # an ordinary day fires each wall time once
    if policy.repeat is not DstRepeat.BOTH and policy.gap is DstGap.SKIP:
        assert counts[transition_day] <= per_day


@settings(max_examples=150, deadline=None)
@given(
    job_specs(),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
)
def test_slots_strictly_increase_within_bounds(job: JobSpec, after: datetime) -> None:
    try:
        validate_job_spec(job)
    except SpecError:  # the shared strategy can draw specs validation refuses (e.g. "500d")
        assume(False)
    created = utc(2001, 2, 3, 4, 5, 6)
    rule = compile_schedule(job, created)
    slots = list(itertools.islice(rule.iter_after(after), 40))
    previous = after
    for s in slots:
        assert s.tzinfo is UTC
        assert s > previous  # strictly increasing, so never two equal instants
        previous = s
        if job.start_at is not None:
            assert s >= job.start_at
        if job.end_at is not None:
            assert s <= job.end_at
    assert rule.next_after(after) == (slots[0] if slots else None)
    assert_resumes_anywhere(rule, slots[:10])
    ms = list(itertools.islice(rule.iter_ms((after - utc(1970, 1, 1)) // timedelta(milliseconds=1)), 5))
    assert ms == [(s - utc(1970, 1, 1)) // timedelta(milliseconds=1) for s in slots[:5]]


# --- named DST cases ----------------------------------------------------------------------------------------
# America/New_York: 2025-03-09 02:00 EST -> 03:00 EDT at 07:00Z; 2025-11-02 02:00 EDT -> 01:00 EST at 06:00Z.
# Europe/London:    2025-03-30 01:00 GMT -> 02:00 BST at 01:00Z; 2025-10-26 02:00 BST -> 01:00 GMT at 01:00Z.
# Australia/Lord_Howe (30-minute shift): 2025-04-06 02:00 (+11) -> 01:30 (+10:30) at 2025-04-05 15:00Z;
#                   2025-10-05 02:00 (+10:30) -> 02:30 (+11) at 2025-10-04 15:30Z.

NY, LON, LH = "America/New_York", "Europe/London", "Australia/Lord_Howe"

# fmt: off
NAMED: dict[str, tuple[str, str, str, str, datetime, list[datetime]]] = {
    # name: (zone, cron, gap, repeat, after, expected firings)
    "ny_spring_gap_skip": (NY, "0 30 2 * * *", "skip", "first", utc(2025, 3, 8),
        [utc(2025, 3, 8, 7, 30), utc(2025, 3, 10, 6, 30), utc(2025, 3, 11, 6, 30)]),
    "ny_spring_gap_shift": (NY, "0 30 2 * * *", "shift", "first", utc(2025, 3, 8),
        [utc(2025, 3, 8, 7, 30), utc(2025, 3, 9, 7), utc(2025, 3, 10, 6, 30)]),
    "ny_spring_gap_shift_meets_regular": (NY, "0 0 2,3 * * *", "shift", "first", utc(2025, 3, 8),
        [utc(2025, 3, 8, 7), utc(2025, 3, 8, 8), utc(2025, 3, 9, 7),
         utc(2025, 3, 10, 6), utc(2025, 3, 10, 7)]),
    "ny_spring_gap_shift_many_in_gap": (NY, "0 */20 2 * * *", "shift", "first", utc(2025, 3, 9),
        [utc(2025, 3, 9, 7), utc(2025, 3, 10, 6), utc(2025, 3, 10, 6, 20)]),
    "ny_fall_repeat_first": (NY, "0 30 1 * * *", "shift", "first", utc(2025, 11, 1, 12),
        [utc(2025, 11, 2, 5, 30), utc(2025, 11, 3, 6, 30)]),
    "ny_fall_repeat_second": (NY, "0 30 1 * * *", "shift", "second", utc(2025, 11, 1, 12),
        [utc(2025, 11, 2, 6, 30), utc(2025, 11, 3, 6, 30)]),
    "ny_fall_repeat_both": (NY, "0 30 1 * * *", "shift", "both", utc(2025, 11, 1, 12),
        [utc(2025, 11, 2, 5, 30), utc(2025, 11, 2, 6, 30), utc(2025, 11, 3, 6, 30)]),
    "ny_fall_repeat_both_two_times": (NY, "0 15,45 1 * * *", "shift", "both", utc(2025, 11, 2),
        [utc(2025, 11, 2, 5, 15), utc(2025, 11, 2, 5, 45), utc(2025, 11, 2, 6, 15),
         utc(2025, 11, 2, 6, 45), utc(2025, 11, 3, 6, 15)]),
    "ny_fall_repeat_both_from_inside": (NY, "0 15,45 1 * * *", "shift", "both", utc(2025, 11, 2, 5, 20),
        [utc(2025, 11, 2, 5, 45), utc(2025, 11, 2, 6, 15), utc(2025, 11, 2, 6, 45)]),
    "ny_fall_first_from_second_pass": (NY, "0 15,45 1 * * *", "shift", "first", utc(2025, 11, 2, 6, 20),
        [utc(2025, 11, 3, 6, 15)]),
    "ny_fall_second_from_first_pass": (NY, "0 15,45 1 * * *", "shift", "second", utc(2025, 11, 2, 5, 50),
        [utc(2025, 11, 2, 6, 15), utc(2025, 11, 2, 6, 45)]),
    "ny_wildcard_hour_spring": (NY, "0 0,30 * * * *", "shift", "first", utc(2025, 3, 9, 6),
        [utc(2025, 3, 9, 6, 30), utc(2025, 3, 9, 7), utc(2025, 3, 9, 7, 30)]),
    "ny_wildcard_hour_fall": (NY, "0 */30 * * * *", "skip", "first", utc(2025, 11, 2, 4, 45),
        [utc(2025, 11, 2, 5), utc(2025, 11, 2, 5, 30), utc(2025, 11, 2, 6),
         utc(2025, 11, 2, 6, 30), utc(2025, 11, 2, 7)]),
    "ny_stepped_hour_spring": (NY, "0 30 */1 * * *", "shift", "first", utc(2025, 3, 9, 5),
        [utc(2025, 3, 9, 5, 30), utc(2025, 3, 9, 6, 30), utc(2025, 3, 9, 7, 30)]),
    "ny_stepped_hour_fall": (NY, "0 30 */1 * * *", "shift", "first", utc(2025, 11, 2, 4),
        [utc(2025, 11, 2, 4, 30), utc(2025, 11, 2, 5, 30), utc(2025, 11, 2, 6, 30),
         utc(2025, 11, 2, 7, 30)]),
    "ny_hour_range_is_absolute": (NY, "0 0 1-3 * * *", "skip", "first", utc(2025, 11, 2),
        [utc(2025, 11, 2, 5), utc(2025, 11, 2, 6), utc(2025, 11, 2, 7),
         utc(2025, 11, 2, 8)]),
    "ny_hourly_macro_fall": (NY, "@hourly", "skip", "first", utc(2025, 11, 2, 4, 30),
        [utc(2025, 11, 2, 5), utc(2025, 11, 2, 6), utc(2025, 11, 2, 7)]),
    "london_spring_gap_skip": (LON, "0 30 1 * * *", "skip", "first", utc(2025, 3, 29),
        [utc(2025, 3, 29, 1, 30), utc(2025, 3, 31, 0, 30)]),
    "london_spring_gap_shift": (LON, "0 30 1 * * *", "shift", "first", utc(2025, 3, 29),
        [utc(2025, 3, 29, 1, 30), utc(2025, 3, 30, 1), utc(2025, 3, 31, 0, 30)]),
    "london_fall_repeat_first": (LON, "0 30 1 * * *", "shift", "first", utc(2025, 10, 25, 12),
        [utc(2025, 10, 26, 0, 30), utc(2025, 10, 27, 1, 30)]),
    "london_fall_repeat_second": (LON, "0 30 1 * * *", "shift", "second", utc(2025, 10, 25, 12),
        [utc(2025, 10, 26, 1, 30), utc(2025, 10, 27, 1, 30)]),
    "london_fall_repeat_both": (LON, "0 30 1 * * *", "shift", "both", utc(2025, 10, 25, 12),
        [utc(2025, 10, 26, 0, 30), utc(2025, 10, 26, 1, 30), utc(2025, 10, 27, 1, 30)]),
    "london_wildcard_hour_spring": (LON, "0 */20 * * * *", "shift", "first", utc(2025, 3, 30, 0, 30),
        [utc(2025, 3, 30, 0, 40), utc(2025, 3, 30, 1), utc(2025, 3, 30, 1, 20)]),
    "london_stepped_hour_fall": (LON, "0 0 */1 * * *", "shift", "first", utc(2025, 10, 25, 23, 30),
        [utc(2025, 10, 26, 0), utc(2025, 10, 26, 1), utc(2025, 10, 26, 2)]),
    "lord_howe_spring_gap_skip": (LH, "0 15 2 * * *", "skip", "first", utc(2025, 10, 3, 12),
        [utc(2025, 10, 3, 15, 45), utc(2025, 10, 5, 15, 15)]),
    "lord_howe_spring_gap_shift": (LH, "0 15 2 * * *", "shift", "first", utc(2025, 10, 3, 12),
        [utc(2025, 10, 3, 15, 45), utc(2025, 10, 4, 15, 30), utc(2025, 10, 5, 15, 15)]),
    "lord_howe_spring_gap_edge_exists": (LH, "0 30 2 * * *", "skip", "first", utc(2025, 10, 4, 12),
        [utc(2025, 10, 4, 15, 30), utc(2025, 10, 5, 15, 30)]),
    "lord_howe_fall_repeat_first": (LH, "0 45 1 * * *", "shift", "first", utc(2025, 4, 5, 12),
        [utc(2025, 4, 5, 14, 45), utc(2025, 4, 6, 15, 15)]),
    "lord_howe_fall_repeat_second": (LH, "0 45 1 * * *", "shift", "second", utc(2025, 4, 5, 12),
        [utc(2025, 4, 5, 15, 15), utc(2025, 4, 6, 15, 15)]),
    "lord_howe_fall_repeat_both": (LH, "0 45 1 * * *", "shift", "both", utc(2025, 4, 5, 12),
        [utc(2025, 4, 5, 14, 45), utc(2025, 4, 5, 15, 15), utc(2025, 4, 6, 15, 15)]),
    "lord_howe_fall_fixed_hour_after_overlap": (LH, "0 15 2 * * *", "shift", "both", utc(2025, 4, 5, 12),
        [utc(2025, 4, 5, 15, 45)]),
    "lord_howe_stepped_hour_fall": (LH, "0 */15 * * * *", "shift", "first", utc(2025, 4, 5, 14),
        [utc(2025, 4, 5, 14, 15), utc(2025, 4, 5, 14, 30), utc(2025, 4, 5, 14, 45),
         utc(2025, 4, 5, 15), utc(2025, 4, 5, 15, 15), utc(2025, 4, 5, 15, 30)]),
    "lord_howe_stepped_hour_spring": (LH, "0 */15 * * * *", "shift", "first", utc(2025, 10, 4, 15),
        [utc(2025, 10, 4, 15, 15), utc(2025, 10, 4, 15, 30), utc(2025, 10, 4, 15, 45)]),
    "lord_howe_wildcard_hour_fall": (LH, "0 0,30 * * * *", "shift", "second", utc(2025, 4, 5, 14),
        [utc(2025, 4, 5, 14, 30), utc(2025, 4, 5, 15), utc(2025, 4, 5, 15, 30)]),
}
# fmt: on


@pytest.mark.parametrize("case", sorted(NAMED))
def test_named_dst_case(case: str) -> None:
    name, text, gap, repeat, after, expected = NAMED[case]
    got = preview(spec(text, name, gap, repeat), after, len(expected), created_at=after)
    assert got == expected
    for g in got:
        assert g.tzinfo is UTC


@settings(max_examples=100, deadline=None)
@given(
    st.lists(job_specs(), min_size=1, max_size=3),
    st.lists(st.tuples(st.integers(0, 2), st.integers(946_684_800_000, 4_102_444_800_000)), min_size=1, max_size=12),
    st.integers(1, 3),
)
def test_first_slots_answer_what_a_fresh_compile_answers(specs: list[JobSpec], asks: list[tuple[int, int]],
                                                         size: int) -> None:  # fmt: skip
    """Reference: compile the schedule afresh for every question. Jobs drawn with the same schedule and asks
    close together exercise the remembered entries; a tiny ``size`` their eviction."""
    created = utc(2001, 2, 3, 4, 5, 6)
    first_slots = FirstSlots(size)
    for which, t_ms in asks:
        job = specs[which % len(specs)]
        for t in (t_ms, t_ms + 1, t_ms + 60_000, t_ms - 1):
            expected = next(compile_schedule(job, created).iter_ms(t - 1), None)
            assert first_slots.at_or_after(job, created, t) == expected
        after = datetime.fromtimestamp(t_ms / 1000, UTC) + timedelta(microseconds=250)
        assert first_slots.next_after(job, created, after) == compile_schedule(job, created).next_after(after)


def test_every_second_across_lord_howe_fall_back() -> None:
    # `* * * * * *`: each real second once, 1 s apart, through the 30-minute repeat.
    rule = compile_schedule(spec("* * * * * *", "Australia/Lord_Howe"), utc(2025, 1, 1))
    lo, hi = utc(2025, 4, 5, 14, 25), utc(2025, 4, 5, 15, 35)
    got = take_until(rule, lo, hi)
    assert len(got) == (hi - lo) // S
    assert all(b - a == S for a, b in itertools.pairwise(got))


@pytest.mark.parametrize(
    ("name", "lo", "hi"),
    [
        ("America/New_York", utc(2025, 3, 9, 6, 50), utc(2025, 3, 9, 7, 10)),
        ("Australia/Lord_Howe", utc(2025, 10, 4, 15, 20), utc(2025, 10, 4, 15, 40)),
    ],
)
def test_every_second_across_a_spring_gap(name: str, lo: datetime, hi: datetime) -> None:
    # The gap's missing wall seconds cost one jump, not one step each (3,600 would exceed MAX_STEPS).
    rule = compile_schedule(spec("* * * * * *", name, "skip"), utc(2025, 1, 1))
    got = take_until(rule, lo, hi)
    assert len(got) == (hi - lo) // S
    assert all(b - a == S for a, b in itertools.pairwise(got))


def test_every_minute_across_new_york_spring_forward() -> None:
    rule = compile_schedule(spec("0 * * * * *", "America/New_York"), utc(2025, 1, 1))
    got = take_until(rule, utc(2025, 3, 9, 6, 30), utc(2025, 3, 9, 7, 30))
    assert len(got) == 60 and all(b - a == timedelta(minutes=1) for a, b in itertools.pairwise(got))


# --- every / at / bounds ------------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1_000, 86_400_000),  # parse_every's minimum is 1 s
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)),
    st.integers(-(10**12), 10**12),
    st.booleans(),
    st.sampled_from(["UTC", "America/New_York", "Australia/Lord_Howe"]),
)
def test_every_keeps_period_and_anchor(
    period_ms: int, anchor: datetime, shift_ms: int, by_start: bool, tz: str
) -> None:
    anchor = anchor.replace(microsecond=anchor.microsecond // 1000 * 1000)
    period = timedelta(milliseconds=period_ms)
    after = anchor + timedelta(milliseconds=shift_ms)
    every = Every(every=f"PT{period_ms // 1000}.{period_ms % 1000:03d}S")
    job = spec(every, tz, start_at=anchor if by_start else None)
    rule = compile_schedule(job, created_at=utc(1999, 1, 1) if by_start else anchor)
    got = rule.preview(after, 4)
    assert len(got) == 4
    for i, s in enumerate(got):
        k, rem = divmod(s - anchor, period)
        assert rem == timedelta(0) and k >= 0  # on the grid anchor + k*period
        assert s > after
        if i:
            assert s - got[i - 1] == period
    assert got[0] - period <= after or got[0] == anchor  # nothing on the grid skipped


def test_every_fires_at_its_anchor_and_ignores_the_zone() -> None:
    created = utc(2025, 3, 9, 6, 59, 30, 123456)  # sub-millisecond part is truncated
    for tz in ("UTC", "America/New_York"):
        rule = compile_schedule(spec(Every(every="30s"), tz), created)
        assert rule.next_after(created - S) == utc(2025, 3, 9, 6, 59, 30, 123000)
        assert rule.preview(created, 3) == [
            utc(2025, 3, 9, 7, 0, 0, 123000),
            utc(2025, 3, 9, 7, 0, 30, 123000),
            utc(2025, 3, 9, 7, 1, 0, 123000),
        ]
    start = utc(2026, 1, 1, 0, 0, 10)
    rule = compile_schedule(spec(Every(every="1h30m"), start_at=start), created)
    assert rule.next_after(utc(2020, 1, 1)) == start
    assert rule.next_after(start) == start + timedelta(minutes=90)
    assert isinstance(rule, EveryRule) and rule.anchor == start


def test_at_fires_once() -> None:
    at = utc(2026, 12, 1, 9)
    rule = compile_schedule(spec(At(at=at)), utc(2026, 1, 1))
    assert isinstance(rule, AtRule)
    assert rule.preview(utc(2026, 1, 1), 5) == [at]
    assert rule.next_after(at - timedelta(milliseconds=1)) == at
    assert rule.next_after(at) is None
    assert (
        compile_schedule(spec(At(at=at), start_at=at + S), utc(2026, 1, 1)).next_after(utc(2026, 1, 1))
        is None
    )
    assert (
        compile_schedule(spec(At(at=at), end_at=at - S), utc(2026, 1, 1)).next_after(utc(2026, 1, 1)) is None
    )
    assert compile_schedule(spec(At(at=at), start_at=at, end_at=at), utc(2026, 1, 1)).preview(
        utc(2026, 1, 1), 2
    ) == [at]


def test_start_and_end_are_inclusive() -> None:
    start, end = utc(2026, 1, 1, 10, 0, 0), utc(2026, 1, 1, 10, 0, 20)
    rule = compile_schedule(spec("*/10 * * * * *", start_at=start, end_at=end), utc(2025, 1, 1))
    assert rule.preview(utc(2025, 6, 1), 10) == [start, start + 10 * S, end]
    assert rule.next_after(end) is None
    assert rule.next_after(start) == start + 10 * S
    rule = compile_schedule(spec("*/10 * * * * *", start_at=start + S), utc(2025, 1, 1))
    assert rule.next_after(utc(2025, 6, 1)) == start + 10 * S
    every = compile_schedule(spec(Every(every="10s"), start_at=start, end_at=end), utc(2025, 1, 1))
    assert every.preview(utc(2000, 1, 1), 10) == [start, start + 10 * S, end]


def test_leap_day_and_years_ahead() -> None:
    rule = compile_schedule(spec("0 0 0 29 2 *", "Europe/London"), utc(2025, 1, 1))
    assert rule.preview(utc(2025, 1, 1), 3) == [utc(2028, 2, 29), utc(2032, 2, 29), utc(2036, 2, 29)]
    assert rule.next_after(utc(2096, 3, 1)) == utc(2104, 2, 29)  # 2100 is not a leap year: 8 years apart
    ny = compile_schedule(spec("0 0 12 29 2 *", "America/New_York"), utc(2025, 1, 1))
    assert ny.next_after(utc(2399, 1, 1)) == utc(2400, 2, 29, 17)
    daily = compile_schedule(spec("0 30 2 * * *", "America/New_York"), utc(2025, 1, 1))
    assert daily.next_after(utc(2230, 3, 14)) == utc(2230, 3, 14, 7)  # a gap 205 years out: shifted
    assert compile_schedule(spec("0 0 0 L 2 *"), utc(2025, 1, 1)).preview(utc(2027, 1, 1), 2) == [
        utc(2027, 2, 28),
        utc(2028, 2, 29),
    ]


def test_the_end_of_time_ends_the_iteration() -> None:
    rule = compile_schedule(spec("0 0 0 1 1 *"), utc(2025, 1, 1))
    assert rule.preview(datetime(9998, 6, 1, tzinfo=UTC), 3) == [utc(9999, 1, 1)]


def test_iter_ms_matches_datetimes() -> None:
    rule = compile_schedule(spec(Every(every="PT1.5S")), utc(2026, 1, 1))
    base = (utc(2026, 1, 1) - utc(1970, 1, 1)) // timedelta(milliseconds=1)
    assert list(itertools.islice(rule.iter_ms(base), 3)) == [base + 1500, base + 3000, base + 4500]
    assert list(itertools.islice(rule.iter_ms(base - 1), 1)) == [base]


def test_preview_defaults_created_at_to_after() -> None:
    after = utc(2026, 1, 1, 12)
    assert preview(spec(Every(every="5m")), after, 2) == [
        after + timedelta(minutes=5),
        after + timedelta(minutes=10),
    ]
    assert preview(spec("0 0 * * * *"), after, 0) == []
    with pytest.raises(ValueError):
        preview(spec("0 0 * * * *"), after, -1)


def test_naive_datetimes_are_refused() -> None:
    rule = compile_schedule(spec("0 0 * * * *"), utc(2026, 1, 1))
    with pytest.raises(ValueError, match="aware"):
        rule.next_after(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="aware"):
        compile_schedule(spec(Every(every="1m")), datetime(2026, 1, 1))


def test_effective_policy_and_pinned_zone() -> None:
    fixed = compile_schedule(spec("0 30 2 * * *", "Europe/London", "skip", "second"), utc(2026, 1, 1))
    free = compile_schedule(spec("0 30 */2 * * *", "Europe/London", "skip", "second"), utc(2026, 1, 1))
    assert isinstance(fixed, CronRule) and isinstance(free, CronRule)
    assert fixed.policy == DstPolicy(gap=DstGap.SKIP, repeat=DstRepeat.SECOND)
    assert free.policy == ABSOLUTE
    assert zone("Europe/London") is zone("Europe/London")
    assert zone("Europe/London").key == "Europe/London"


def test_kept_iterator_is_independent_of_others() -> None:
    rule = compile_schedule(spec("*/10 * * * * *", "America/New_York"), utc(2026, 1, 1))
    a, b = rule.iter_after(utc(2026, 1, 1)), rule.iter_after(utc(2026, 1, 1))
    assert isinstance(a, CronSlots)
    assert [next(a), next(a), next(a)] == [
        utc(2026, 1, 1, 0, 0, 10),
        utc(2026, 1, 1, 0, 0, 20),
        utc(2026, 1, 1, 0, 0, 30),
    ]
    assert next(b) == utc(2026, 1, 1, 0, 0, 10)


@settings(max_examples=300, deadline=None)
@given(
    seconds=st.one_of(
        st.just("*"),
        st.integers(1, 30).map(lambda k: f"*/{k}"),
        st.sets(st.integers(0, 59), min_size=1, max_size=6).map(lambda s: ",".join(map(str, sorted(s)))),
    ),
    zone_name=st.sampled_from(
        [
            "UTC",
            "America/New_York",
            "Australia/Lord_Howe",
            "Asia/Kolkata",
            "Africa/Monrovia",
            "Europe/Amsterdam",
        ]
    ),  # fmt: skip
    after=st.datetimes(
        min_value=datetime(1900, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
    start=st.none() | st.timedeltas(timedelta(0), timedelta(minutes=5)),
    length=st.none() | st.timedeltas(timedelta(0), timedelta(minutes=10)),
    dst=st.sampled_from([("shift", "first"), ("skip", "both"), ("skip", "second")]),
)
def test_seconds_only_cron_fast_path_matches_the_croniter_walk(
    seconds: str, zone_name: str, after: datetime, start: timedelta | None, length: timedelta | None,
    dst: tuple[str, str],
) -> None:  # fmt: skip
    # Africa/Monrovia ran on -0:44:30 until 1972 (not whole minutes: the general walk), Amsterdam on +0:19:32
    # until 1937; the rest cross DST gaps and overlaps. iter_after never takes the fast path.
    start_at = None if start is None else after + start
    end_at = None if length is None else (start_at or after) + length
    rule = compile_schedule(spec(f"{seconds} * * * * *", zone_name, *dst, start_at, end_at), utc(2000, 1, 1))
    assert isinstance(rule, CronRule) and rule.seconds is not None
    after_ms = (after - utc(1970, 1, 1)) // timedelta(milliseconds=1)
    fast = list(itertools.islice(rule.iter_ms(after_ms), 30))
    walked = [
        (s - utc(1970, 1, 1)) // timedelta(milliseconds=1)
        for s in itertools.islice(rule.iter_after(after), 30)
    ]
    assert fast == walked


def test_only_unrestricted_minute_hour_and_day_take_the_fast_path() -> None:
    def seconds(expr: str) -> tuple[int, ...] | None:
        rule = compile_schedule(spec(expr), utc(2025, 1, 1))
        assert isinstance(rule, CronRule)
        return rule.seconds

    assert seconds("*/15 * * * * *") == (0, 15, 30, 45)
    assert seconds("* * * * * *") == tuple(range(60))
    for restricted in (
        "0 0 * * * *",
        "* * 3 * * *",
        "* * * 1 * *",
        "* * * * 2 *",
        "* * * * * MON",
        "* * * L * *",
    ):
        assert seconds(restricted) is None
