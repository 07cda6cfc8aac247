"""protocol.cron: syntax, normal forms, and the seconds-first -> croniter conversion, checked by croniter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from croniter import CroniterBadDateError, croniter
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from protocol.cron import MACROS, parse_cron
from protocol.jobs import JobSpec, Target
from protocol.schedules import Cron
from protocol.slots import compile_schedule

# --- a strategy that builds valid seconds-first expressions field by field ----------------------------------
# Forms croniter and we read alike: plain values, ascending ranges, steps, lists, names, '?', and L in
# day-of-month. Left out on purpose (documented divergences): equal ranges '5-5' (croniter: the whole cycle),
# wrap-around ranges (we reject them).

_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]


def _case(draw: st.DrawFn, name: str) -> str:
    return draw(st.sampled_from([name, name.upper(), name.capitalize()]))


@st.composite
def _value(draw: st.DrawFn, lo: int, hi: int, names: list[str] | None, name_base: int) -> tuple[int, str]:
    v = draw(st.integers(lo, hi))
    if names is not None and 0 <= v - name_base < len(names) and draw(st.booleans()):
        return v, _case(draw, names[v - name_base])
    return v, str(v)


@st.composite
def _element(
    draw: st.DrawFn, lo: int, hi: int, size: int, names: list[str] | None = None, base: int = 0
) -> str:
    kind = draw(st.sampled_from(["value", "range", "star_step", "range_step", "start_step"]))
    if kind == "value":
        return draw(_value(lo, hi, names, base))[1]
    step = draw(st.integers(1, size))
    if kind == "star_step":
        return f"*/{step}"
    a, at = draw(_value(lo, hi - 1, names, base))
    if kind == "start_step":
        return f"{at}/{step}"
    _b, bt = draw(_value(a + 1, hi, names, base))
    return f"{at}-{bt}" if kind == "range" else f"{at}-{bt}/{step}"


def _field(
    lo: int, hi: int, size: int, names: list[str] | None = None, base: int = 0, extra: tuple[str, ...] = ()
) -> st.SearchStrategy[str]:
    elements = st.one_of(_element(lo, hi, size, names, base), *(st.just(e) for e in extra if e not in "*?"))
    return st.one_of(
        st.just("*"),
        *(st.just(e) for e in extra if e in ("*", "?")),
        st.lists(elements, min_size=1, max_size=3).map(",".join),
    )


seconds_f = _field(0, 59, 60)
minutes_f = _field(0, 59, 60)
hours_f = _field(0, 23, 24)
doms_f = _field(1, 31, 31, extra=("?", "L"))
months_f = _field(1, 12, 12, _MONTHS, 1)
dows_f = _field(0, 7, 7, _DAYS, 0, extra=("?",))
six_field = st.tuples(seconds_f, minutes_f, hours_f, doms_f, months_f, dows_f).map(" ".join)
instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)
)


def seconds_last(expr: str) -> str:
    """The reference conversion, independent of ours: move the first field to the end."""
    fields = expr.split()
    return " ".join(fields[1:] + fields[:1])


def croniter_misreads_day_of_month(expr: str) -> bool:
    """croniter's bug: a day-of-month list of 31 entries counting L (``2-31,L``) is ``*`` to it.

    Then only our conversion (which drops the L that adds nothing) is compared, not croniter's raw reading.
    """
    dom = expr.split()[3]
    if "l" not in dom.lower() or croniter.expand(seconds_last(expr))[0][2] != ["*"]:
        return False
    try:
        return parse_cron(f"* * * {dom} * *").fields[3] != "*"
    except ValueError:  # "30 days plus L": refused alone precisely because croniter misreads it
        return True


def utc_spec(expr: str) -> JobSpec:
    return JobSpec(name="t", schedule=Cron(cron=expr), target=Target(url="https://example.com/"))


@settings(max_examples=200, deadline=None)
@given(six_field, instants)
@example("31 10-15 1 * * MON-FRI", datetime(2026, 1, 1, tzinfo=UTC))
@example("0 0 0 13 * FRI", datetime(2026, 1, 1, tzinfo=UTC))
@example("0 0 0 L 2 ?", datetime(2027, 3, 1, tzinfo=UTC))
@example("0 0 0 30 2 MON", datetime(2026, 1, 1, tzinfo=UTC))
@example("0 0 0 1-31 * */2", datetime(2026, 1, 1, tzinfo=UTC))
@example("0 0 0 1-31 * MON", datetime(2026, 1, 1, tzinfo=UTC))
@example("0 0 0 */2 * 0-7", datetime(2026, 1, 1, tzinfo=UTC))
@example("59/15 0 0 * * 7/2", datetime(2026, 1, 1, tzinfo=UTC))
@example("0 0 0 15,L * 5-7", datetime(2026, 1, 1, tzinfo=UTC))
@example("* * * 2/1,L * *", datetime(2000, 1, 1, tzinfo=UTC))
@example("0 0 0 1-29,31,L * *", datetime(2000, 1, 1, tzinfo=UTC))
@example("0 0 0 1-29,31,L * MON", datetime(2000, 1, 1, tzinfo=UTC))
@example("0 0 0 1-29,31,L * */2", datetime(2000, 1, 1, tzinfo=UTC))
def test_six_field_seconds_first_agrees_with_croniter(expr: str, start: datetime) -> None:
    try:
        parsed = parse_cron(expr)
    except ValueError as e:
        if "30 days plus L" in str(e):  # refused because croniter misreads it (see below)
            assert croniter.expand(seconds_last(expr))[0][2] == ["*"]
            return
        # Otherwise the only strategy expressions we refuse never fire; croniter finds no date either.
        assert "never occurs" in str(e)
        with pytest.raises(CroniterBadDateError):
            croniter(seconds_last(expr), start).get_next(datetime)
        return
    rule = compile_schedule(utc_spec(expr), start)
    ours = croniter(parsed.croniter_expr, start)
    reference = ours if croniter_misreads_day_of_month(expr) else croniter(seconds_last(expr), start)
    after = start
    for _ in range(3):
        expected = reference.get_next(datetime)
        if reference is not ours:
            assert ours.get_next(datetime) == expected
        got = rule.next_after(after)
        assert got == expected, (parsed.normalized, parsed.croniter_expr)
        assert got is not None and parsed.matches(got)
        after = got
    # croniter's own seconds-first switch reads it as the seconds-last text does.
    assert croniter(expr, start, second_at_beginning=True).get_next(datetime) == croniter(
        seconds_last(expr), start
    ).get_next(datetime)
    # The normal form is a fixed point and means the same.
    assert parse_cron(parsed.normalized).fields == parsed.fields


@settings(max_examples=200, deadline=None)
@given(six_field, st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1)))
def test_matches_is_exactly_what_croniter_yields(expr: str, wall: datetime) -> None:
    try:
        parsed = parse_cron(expr)
    except ValueError:
        assume(False)
        raise
    wall = wall.replace(microsecond=0)
    yielded = croniter(parsed.croniter_expr, wall - timedelta(seconds=1)).get_next(datetime)
    assert parsed.matches(wall) == (yielded == wall)


# --- 5 fields and macros ------------------------------------------------------------------------------------

NORMAL_FORMS = [
    ("31 10-15 1 * * MON-FRI", "31 10-15 1 * * 1-5", "10-15 1 * * 1-5 31", True),
    ("*/5 * * * *", "0 0-55/5 * * * *", "0-55/5 * * * * 0", False),
    ("0 2 * * *", "0 0 2 * * *", "0 2 * * * 0", True),
    ("30 1,13 * * 1-5", "0 30 1,13 * * 1-5", "30 1,13 * * 1-5 0", True),
    ("0 30 2 * * *", "0 30 2 * * *", "30 2 * * * 0", True),
    ("* * * * * *", "* * * * * *", "* * * * * *", False),
    ("0 */15 * * * *", "0 0-45/15 * * * *", "0-45/15 * * * * 0", False),
    ("0 0 9-17 * * *", "0 0 9-17 * * *", "0 9-17 * * * 0", False),
    ("0 0 2-2 * * *", "0 0 2 * * *", "0 2 * * * 0", False),  # a range, even of one hour: not fixed
    ("0 0 0 ? JAN,jul sun", "0 0 0 * 1,7 0", "0 0 * 1,7 0 0", True),
    ("0 0 0 * * 7", "0 0 0 * * 0", "0 0 * * 0 0", True),  # 7 is Sunday
    ("0 0 0 * * 0-7", "0 0 0 * * *", "0 0 * * * 0", True),
    ("0 0 12 L * ?", "0 0 12 L * *", "0 12 L * * 0", True),
    ("0 0 0 1-31 * MON", "0 0 0 * * *", "0 0 * * * 0", True),  # both restricted: OR with every day
    ("0 0 0 30 2 MON", "0 0 0 * 2 1", "0 0 * 2 1 0", True),  # the 30th never comes: Mondays of February
    ("0 0 0 29 2 *", "0 0 0 29 2 *", "0 0 29 2 * 0", True),
    ("0 0 0 2-31,L * *", "0 0 0 2-31 * *", "0 0 2-31 * * 0", True),  # L adds nothing: dropped
    ("0 0 0 1-30,L * *", "0 0 0 * * *", "0 0 * * * 0", True),  # every date
    ("0 0 0 28-31,L * ?", "0 0 0 28-31 * *", "0 0 28-31 * * 0", True),
    ("10/20 * * * * *", "10-50/20 * * * * *", "* * * * * 10-50/20", False),
    ("1,2,3,5 * * * * *", "1-3,5 * * * * *", "* * * * * 1-3,5", False),
    ("  0\t0   12 * * *  ", "0 0 12 * * *", "0 12 * * * 0", True),
    ("@yearly", "0 0 0 1 1 *", "0 0 1 1 * 0", True),
    ("@annually", "0 0 0 1 1 *", "0 0 1 1 * 0", True),
    ("@monthly", "0 0 0 1 * *", "0 0 1 * * 0", True),
    ("@weekly", "0 0 0 * * 0", "0 0 * * 0 0", True),
    ("@daily", "0 0 0 * * *", "0 0 * * * 0", True),
    ("@MIDNIGHT", "0 0 0 * * *", "0 0 * * * 0", True),
    ("@hourly", "0 0 * * * *", "0 * * * * 0", False),
]


@pytest.mark.parametrize(("expr", "normalized", "croniter_expr", "hour_fixed"), NORMAL_FORMS)
def test_normal_forms(expr: str, normalized: str, croniter_expr: str, hour_fixed: bool) -> None:
    parsed = parse_cron(expr)
    assert parsed.normalized == normalized
    assert parsed.croniter_expr == croniter_expr
    assert parsed.hour_fixed is hour_fixed
    assert parsed.source == expr


@pytest.mark.parametrize("macro", sorted(MACROS))
def test_macros_fire_like_croniter(macro: str) -> None:
    start = datetime(2026, 5, 17, 13, 7, 9, tzinfo=UTC)
    rule = compile_schedule(utc_spec(macro), start)
    reference = croniter(macro, start)  # croniter knows the macros too (5-field form)
    after = start
    for _ in range(3):
        got = rule.next_after(after)
        assert got == reference.get_next(datetime)
        after = got


@pytest.mark.parametrize(
    ("five", "start"),
    [
        ("*/7 3-5 * * *", datetime(2026, 1, 1, tzinfo=UTC)),
        ("0 12 13 * FRI", datetime(2026, 1, 1, tzinfo=UTC)),
        ("15 10 L * *", datetime(2026, 1, 30, tzinfo=UTC)),
        ("0 0 * jun-aug 6", datetime(2026, 1, 1, tzinfo=UTC)),
    ],
)
def test_five_fields_fire_like_croniter(five: str, start: datetime) -> None:
    rule = compile_schedule(utc_spec(five), start)
    reference = croniter(five, start)
    after = start
    for _ in range(5):
        got = rule.next_after(after)
        assert got == reference.get_next(datetime)
        assert got is not None and got.second == 0
        after = got


def test_day_fields_or_when_both_restricted() -> None:
    # Friday the 13th style: every 13th AND every Friday (Vixie cron / croniter), not only Friday the 13th.
    rule = compile_schedule(utc_spec("0 0 12 13 * FRI"), datetime(2026, 2, 1, tzinfo=UTC))
    got = rule.preview(datetime(2026, 2, 1, tzinfo=UTC), 5)
    assert [t.day for t in got] == [
        6,
        13,
        20,
        27,
        6,
    ]  # Feb 2026: Fridays 6, 13 (also the 13th), 20, 27; Mar 6
    rule = compile_schedule(utc_spec("0 0 12 14 * FRI"), datetime(2026, 2, 1, tzinfo=UTC))
    assert [t.day for t in rule.preview(datetime(2026, 2, 1, tzinfo=UTC), 4)] == [6, 13, 14, 20]


def test_cached_parse_returns_equal_values() -> None:
    assert parse_cron("0 0 * * *") is parse_cron("0 0 * * *")
    assert parse_cron("0 0 * * *").fields == parse_cron("0 0 0 * * *").fields


# --- rejections: one line, naming the field -----------------------------------------------------------------

INVALID = [
    ("", "empty cron expression"),
    ("   ", "empty cron expression"),
    ("* * * *", "expected 5 or 6 fields, got 4"),
    ("* * * * * * *", "expected 5 or 6 fields, got 7"),
    ("0 0 0 1 1 * 2030", "expected 5 or 6 fields, got 7"),
    ("@reboot", "unknown macro '@reboot'"),
    ("@every 5m", "unknown macro '@every 5m'"),
    ("0 61 * * * *", "minute field '61' out of range 0-59"),
    ("60 * * * * *", "second field '60' out of range 0-59"),
    ("0 0 24 * * *", "hour field '24' out of range 0-23"),
    ("0 0 0 0 * *", "day-of-month field '0' out of range 1-31"),
    ("0 0 0 32 * *", "day-of-month field '32' out of range 1-31"),
    ("0 0 0 * 0 *", "month field '0' out of range 1-12"),
    ("0 0 0 * 13 *", "month field '13' out of range 1-12"),
    ("0 0 0 * * 8", "day-of-week field '8' out of range 0-7"),
    ("10-70 5 * * *", "minute field '70' out of range 0-59"),
    ("0 0 0 * * FUNDAY", "day-of-week field 'FUNDAY' is not a number or a day name"),
    ("0 0 0 * FOO *", "month field 'FOO' is not a number or a month name"),
    ("0 0 0 * MONDAY *", "month field 'MONDAY' is not a number or a month name"),
    ("0 0 MON * * *", "hour field 'MON' is not a number"),
    ("H * * * *", "minute field 'H' is not a number"),
    ("R * * * *", "minute field 'R' is not a number"),
    ("-5 * * * *", "minute field '-5' is not a number"),
    ("1-2-3 * * * *", "minute field '1-2-3' is not a value, a range a-b or a step x/s"),
    ("1/2/3 * * * *", "minute field '1/2/3' is not a value, a range a-b or a step x/s"),
    ("１ * * * *", "minute field '１' is not a number"),  # a full-width digit is not an ASCII digit
    ("*/0 * * * *", "minute field '*/0': step must be between 1 and 60"),
    ("0 0 */25 * * *", "hour field '*/25': step must be between 1 and 24"),
    ("*/x * * * *", "minute field '*/x': step 'x' is not a number"),
    ("1,,2 * * * *", "minute field '1,,2' has an empty list element"),
    ("1, * * * *", "minute field '1,' has an empty list element"),
    ("*,5 * * * *", "minute field '*,5': '*' must stand alone"),
    ("0 0 ? * * *", "hour field '?': '?' is only allowed in day-of-month and day-of-week"),
    ("0 0 0 ?,1 * *", "day-of-month field '?,1': '?' must stand alone"),
    ("0 0 0 * * FRI-MON", "day-of-week field 'FRI-MON': range start is after its end"),
    ("0 0 22-2 * * *", "hour field '22-2': range start is after its end"),
    ("0 0 0 * NOV-FEB *", "month field 'NOV-FEB': range start is after its end"),
    ("0 0 0 15W * *", "day-of-month field '15W': W (nearest weekday) is not supported"),
    ("0 0 0 LW * *", "day-of-month field 'LW': W (nearest weekday) is not supported"),
    (
        "0 0 0 L-3 * *",
        "day-of-month field 'L-3': L (last day of the month) must stand alone or as a list element",
    ),
    ("0 0 0 * * 5#3", "day-of-week field '5#3': # (nth weekday of the month) is not supported"),
    ("0 0 0 * * FRI#1", "day-of-week field 'FRI#1': # (nth weekday of the month) is not supported"),
    ("0 0 0 * * 5L", "day-of-week field '5L': L (last weekday of the month) is not supported"),
    ("0 0 0 * * L", "day-of-week field 'L': L (last weekday of the month) is not supported"),
    ("0 0 L * * *", "hour field 'L' is not a number"),
    ("0 0 0 30 2 *", "day-of-month field '30' never occurs in month field '2'"),
    ("0 0 0 1-29,31,L * *", "day-of-month field '1-29,31,L': 30 days plus L is not supported"),
    ("0 0 0 31 APR,JUN *", "day-of-month field '31' never occurs in month field 'APR,JUN'"),
]


@pytest.mark.parametrize(("expr", "message"), INVALID)
def test_invalid_expressions_name_the_field(expr: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_cron(expr)
    text = str(info.value)
    assert text.startswith(message)
    assert "\n" not in text
