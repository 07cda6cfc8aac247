"""Cron syntax: parse, validate and normalise a cron expression, and convert it to croniter's field order.

Rules:
- Two shapes. 5 fields, minute first: ``minute hour day-of-month month day-of-week`` (second = 0). 6 fields,
  **seconds first** (Quartz, Spring, node-cron): ``second minute hour day-of-month month day-of-week``.
  croniter puts the seconds field *last*; ``CronExpr.croniter_expr`` is the same schedule in croniter's order.
  7 fields (Quartz's year) are rejected.
- Macros (case-insensitive; ``@reboot`` is rejected):
  ``@yearly`` and ``@annually`` = ``0 0 0 1 1 *``, ``@monthly`` = ``0 0 0 1 * *``,
  ``@weekly`` = ``0 0 0 * * 0``, ``@daily`` and ``@midnight`` = ``0 0 0 * * *``,
  ``@hourly`` = ``0 0 * * * *``.
- A field is ``*``, or a comma list of elements; an element is ``n``, ``a-b`` (a <= b), ``*/s``, ``a-b/s`` or
  ``a/s`` (= ``a-max/s``). Ranges: second and minute 0-59, hour 0-23, day-of-month 1-31, month 1-12 or
  ``JAN``-``DEC``, day-of-week 0-7 or ``SUN``-``SAT`` with 0 and 7 both Sunday (names case-insensitive). A
  step is 1 up to the field's size (60, 24, 31, 12, 7). ``*`` and ``?`` stand alone; ``?`` (Quartz's "no
  specific value") is allowed in the two day fields only and means ``*``.
- Wrap-around ranges (``FRI-MON``, ``22-2``) are rejected: croniter reads them one way, Quartz another; write
  a list (``FRI-SAT,SUN-MON``). ``5-5`` is the single value 5 (croniter alone reads an equal range as the
  whole cycle; we never hand croniter such a range, see below).
- ``L`` in day-of-month is the last day of the month, alone or as a list element (``L``, ``15,L``). The other
  Quartz specials are rejected with a message naming them: ``W`` (nearest weekday), ``L`` in day-of-week (last
  Friday: ``5L``), ``#`` (nth weekday: ``5#3``), offsets (``L-3``). croniter's support for them has changed
  from release to release and mixes badly with the OR rule below; a job that needs them can list days.
- Day-of-month and day-of-week together (croniter's rule, which is Vixie cron's): when **both** are restricted
  a day matches if **either** matches (``0 0 0 13 * FRI`` fires on every 13th and on every Friday); when one
  is unrestricted, the other alone decides. A day field is unrestricted when written ``*`` or ``?``; a field
  that spells out every value (``1-31``, ``0-6``, ``*/1``) is unrestricted only when the *other* day field
  contains a ``*`` (that is how croniter decides, kept so the conversion means exactly what croniter means).
- A restricted day-of-month that can never fall in the allowed months (``30`` with ``FEB``) is rejected when
  it alone decides the day; under the OR rule that side simply contributes no days. 29 February is allowed
  (leap years: at most 8 years apart, 2096 -> 2104), so every accepted expression fires within 8 years.
- "Fixed hour" (``CronExpr.hour_fixed``): the hour field lists only single hours, ``2`` or ``1,13``: no ``*``,
  no range, no step. Such a schedule names wall-clock times, so the job's DST policy decides what happens to a
  time that is skipped or repeated. Anything else (``*``, ``*/2``, ``9-17``) is a cadence and follows absolute
  time (see ``protocol.slots``). ``@hourly`` is not fixed; the other macros are (hour 0).
- Errors are ``ValueError`` with one line naming the field and the problem:
  ``minute field '61' out of range 0-59``, ``expected 5 or 6 fields, got 7``,
  ``day-of-week field 'FUNDAY' is not a number or a day name``.

A croniter bug worked around: croniter reads a day-of-month list of 31 entries, counting ``L``, as ``*``, so
``2-31,L`` (every day but the 1st: the L adds nothing) fires daily there. Here it means what it says: we
drop an ``L`` that adds nothing and write a field that holds every date as ``*``; the one shape left, 30 days
plus an ``L`` that still misses a date (``1-29,31,L``), is rejected, so croniter never sees such a list.

Normalised form: every field is re-rendered from its set of values (``*`` for all, runs as ``a-b``, an
arithmetic progression as ``a-b/s``, else a list; numbers, never names), and the two day fields are rewritten
so that "restricted" simply means "not ``*``". Handing croniter only this form sidesteps its parsing quirks
(equal ranges, wrap-around, full-list heuristics): it only ever sees plain ascending ranges and lists.

Example::

    >>> e = parse_cron("31 10-15 1 * * MON-FRI")
    >>> e.fields
    ('31', '10-15', '1', '*', '*', '1-5')
    >>> e.croniter_expr  # seconds last
    '10-15 1 * * 1-5 31'
    >>> e.hour_fixed, parse_cron("0 */15 * * * *").hour_fixed
    (True, False)
"""

from __future__ import annotations

import calendar
import functools
import itertools
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Final

__all__ = ["MACROS", "CronExpr", "parse_cron"]

MACROS: Final[dict[str, str]] = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}

_MONTH_NAMES: Final = {n.lower(): i for i, n in enumerate(calendar.month_abbr) if n}  # jan..dec -> 1..12
_DAY_NAMES: Final = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    low: int
    high: int  # highest value accepted in the text (7 for day-of-week)
    top: int  # highest value after aliasing (6 for day-of-week): the end of '*' and of 'a/s'
    names: dict[str, int] | None = None
    noun: str = ""  # 'month' / 'day' for "is not a number or a <noun> name"

    @property
    def size(self) -> int:
        return self.top - self.low + 1

    @property
    def full(self) -> frozenset[int]:
        return frozenset(range(self.low, self.top + 1))


# Seconds-first order: the order of CronExpr.fields.
_FIELDS: Final = (
    _Field("second", 0, 59, 59),
    _Field("minute", 0, 59, 59),
    _Field("hour", 0, 23, 23),
    _Field("day-of-month", 1, 31, 31),
    _Field("month", 1, 12, 12, _MONTH_NAMES, "month"),
    _Field("day-of-week", 0, 7, 6, _DAY_NAMES, "day"),
)
_SECOND, _MINUTE, _HOUR, _DOM, _MONTH, _DOW = range(6)
_LAST_DAYS: Final = frozenset({28, 29, 30, 31})  # every month ends on one of these
_MONTH_DAYS: Final = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # February at its leap-year longest

_NUMBER = re.compile(r"[0-9]+")  # ASCII digits only: str.isdigit would accept '²' and Arabic-Indic digits
_FIXED_HOUR = re.compile(r"[0-9]+(?:,[0-9]+)*")
_W = re.compile(r"(?:[0-9]+W|W[0-9]*|LW)", re.IGNORECASE)
_SEPARATORS = re.compile(r"[ \t]+")


@dataclass(frozen=True, slots=True)
class CronExpr:
    """A validated cron expression: ``fields`` normalised (seconds first), ``values`` each field's set.

    ``values`` for an unrestricted day field is the full set, so ``matches`` needs no special case for ``*``;
    ``last_day`` is the ``L`` of day-of-month. ``values[5]`` uses 0 for Sunday (never 7).
    """

    source: str
    fields: tuple[str, str, str, str, str, str]
    values: tuple[
        frozenset[int], frozenset[int], frozenset[int], frozenset[int], frozenset[int], frozenset[int]
    ]
    last_day: bool
    hour_fixed: bool

    @property
    def normalized(self) -> str:
        """The six normalised fields, seconds first: ``parse_cron(e.normalized)`` is the same schedule."""
        return " ".join(self.fields)

    @property
    def croniter_expr(self) -> str:
        """The same schedule in croniter's order (seconds last), in forms croniter reads as we do."""
        return " ".join((*self.fields[1:], self.fields[0]))

    def matches(self, wall: datetime) -> bool:
        """Whether the wall-clock time ``wall`` (its fields, whatever its tzinfo) is a firing time.

        The simple reference semantics that tests hold the croniter-based iteration to.
        """
        sec, minute, hour, dom, month, dow = self.values
        if (
            wall.second not in sec
            or wall.minute not in minute
            or wall.hour not in hour
            or wall.month not in month
        ):
            return False
        day_ok = wall.day in dom or (
            self.last_day and wall.day == calendar.monthrange(wall.year, wall.month)[1]
        )
        weekday_ok = wall.isoweekday() % 7 in dow
        if self.fields[_DOM] != "*" and self.fields[_DOW] != "*":
            return day_ok or weekday_ok  # both restricted: OR (Vixie cron, croniter)
        return day_ok and weekday_ok  # an unrestricted field holds every value


def parse_cron(expr: str) -> CronExpr:
    """Parse a 5-field, 6-field (seconds first) or macro cron expression; ``ValueError`` names the bad field.

    Results are cached: many jobs share a handful of expressions, and the node compiles every job it loads.
    """
    return _parse_cached(expr)


@functools.lru_cache(maxsize=4096)
def _parse_cached(expr: str) -> CronExpr:
    text = expr.strip(" \t")
    if not text:
        raise ValueError("empty cron expression")
    if text.startswith("@"):
        six = MACROS.get(text.lower())
        if six is None:
            raise ValueError(f"unknown macro '{text[:40]}'; expected one of {', '.join(MACROS)}")
        tokens = six.split(" ")
    else:
        tokens = _SEPARATORS.split(text)
        if len(tokens) == 5:
            tokens = ["0", *tokens]
        elif len(tokens) != 6:
            raise ValueError(f"expected 5 or 6 fields, got {len(tokens)}")

    values: list[frozenset[int]] = []
    last_day = False
    for field, token in zip(_FIELDS, tokens, strict=True):
        vals, last = _parse_field(field, token)
        values.append(vals)
        last_day = last_day or last

    dom_star, dow_star, last_day = _day_fields(tokens, values, last_day)
    fields = tuple(
        "*"
        if (i == _DOM and dom_star) or (i == _DOW and dow_star)
        else _render(f, values[i], last_day and i == _DOM)
        for i, f in enumerate(_FIELDS)
    )
    return CronExpr(
        source=expr,
        fields=fields,  # type: ignore[arg-type]  # six by construction
        values=tuple(values),  # type: ignore[arg-type]
        last_day=last_day,
        hour_fixed=_FIXED_HOUR.fullmatch(tokens[_HOUR]) is not None,
    )


def _day_fields(tokens: list[str], values: list[frozenset[int]], last_day: bool) -> tuple[bool, bool, bool]:
    """Settle the two day fields: ``(day-of-month is *, day-of-week is *, L kept)``; updates ``values``.

    Afterwards "restricted" means "not ``*``" and both restricted means OR, in ``matches`` and for croniter.
    """
    dom_text, dow_text = tokens[_DOM], tokens[_DOW]
    dom_vals, dow_vals = values[_DOM], values[_DOW]
    # croniter's rule for "unrestricted" (see the module docstring): '*'/'?' as written, or a list with as
    # many entries as the field has values while the other field contains a '*'. croniter counts an L as an
    # entry, which makes '2-31,L' "every day" there; we require the list to really hold every date.
    dom_entries = len(dom_vals) + (1 if last_day else 0)
    dom_star = dom_text in ("*", "?") or (
        dom_entries == _FIELDS[_DOM].size and _every_date(dom_vals, last_day) and "*" in dow_text
    )
    dow_star = dow_text in ("*", "?") or (dow_vals == _FIELDS[_DOW].full and "*" in dom_text)
    if not dom_star and not _day_of_month_possible(dom_vals, last_day, values[_MONTH]):
        if dow_star:
            raise ValueError(
                f"day-of-month field '{dom_text}' never occurs in month field '{tokens[_MONTH]}'"
            )
        dom_star, dom_vals, last_day = True, _FIELDS[_DOM].full, False  # OR: that side adds no day
    if last_day and _LAST_DAYS <= dom_vals:
        last_day = False  # every month's last day is listed anyway
    dom_full, dow_full = _every_date(dom_vals, last_day), dow_vals == _FIELDS[_DOW].full
    if not dom_star and not dow_star:
        if dom_full or dow_full:
            dom_star = dow_star = True  # OR with a side that holds every day: every day
    else:
        dom_star, dow_star = dom_star or dom_full, dow_star or dow_full  # AND with every day: no restriction
    if dom_star:
        dom_vals, last_day = _FIELDS[_DOM].full, False
    elif dow_star and last_day and len(dom_vals) == _FIELDS[_DOM].size - 1:
        # 30 days and L, yet not every date (1-29,31,L misses 30 July): croniter would read it as '*'.
        raise ValueError(
            f"day-of-month field '{dom_text}': 30 days plus L is not supported (croniter reads it as '*');"
            " list the days without L"
        )
    if dow_star:
        dow_vals = _FIELDS[_DOW].full
    values[_DOM], values[_DOW] = dom_vals, dow_vals
    return dom_star, dow_star, last_day


def _parse_field(field: _Field, token: str) -> tuple[frozenset[int], bool]:
    """One field's value set and whether it holds ``L`` (day-of-month only)."""
    if token == "*":
        return field.full, False
    if token == "?":
        if field.name not in ("day-of-month", "day-of-week"):
            raise ValueError(f"{field.name} field '?': '?' is only allowed in day-of-month and day-of-week")
        return field.full, False
    values: set[int] = set()
    last = False
    for element in token.split(","):
        if element == "":
            raise ValueError(f"{field.name} field '{token}' has an empty list element")
        if element in ("*", "?"):
            raise ValueError(f"{field.name} field '{token}': '{element}' must stand alone, not in a list")
        _reject_specials(field, element)
        if field.name == "day-of-month" and element.upper() == "L":
            last = True
            continue
        values.update(_parse_element(field, element))
    return frozenset(values), last


def _reject_specials(field: _Field, element: str) -> None:
    """Quartz's L/W/# get a message that names them rather than "is not a number"."""
    upper = element.upper()
    if field.name == "day-of-month":
        if _W.fullmatch(upper):
            raise ValueError(f"day-of-month field '{element}': W (nearest weekday) is not supported")
        if "L" in upper and upper != "L":
            raise ValueError(
                f"day-of-month field '{element}': L (last day of the month) must stand alone"
                " or as a list element;"
                " offsets such as L-3 are not supported"
            )
    elif field.name == "day-of-week":
        if "#" in element:
            raise ValueError(f"day-of-week field '{element}': # (nth weekday of the month) is not supported")
        if upper == "L" or re.fullmatch(r"(?:[0-7]|[A-Z]{3})L|L[0-7]", upper):
            raise ValueError(f"day-of-week field '{element}': L (last weekday of the month) is not supported")


def _parse_element(field: _Field, element: str) -> range | list[int]:
    if element.count("/") > 1 or element.count("-") > 1:
        raise ValueError(f"{field.name} field '{element}' is not a value, a range a-b or a step x/s")
    base, slash, step_text = element.partition("/")
    step = 1
    if slash:
        if not _NUMBER.fullmatch(step_text):
            raise ValueError(f"{field.name} field '{element}': step '{step_text}' is not a number")
        step = int(step_text)
        if not 1 <= step <= field.size:
            raise ValueError(f"{field.name} field '{element}': step must be between 1 and {field.size}")
    if base == "*":
        if not slash:  # '*' inside a list
            raise ValueError(f"{field.name} field '{element}': '*' must stand alone, not in a list")
        low, high = field.low, field.top
    else:
        start_text, dash, end_text = base.partition("-")
        low = _value(field, start_text, element)
        if dash:
            high = _value(field, end_text, element)
            if high < low:
                raise ValueError(
                    f"{field.name} field '{element}': range start is after its end"
                    " (wrap-around ranges are not supported; write a list)"
                )
        elif slash:
            if field.name == "day-of-week" and low == 7:
                low = 0  # '7/2' starts on Sunday, as croniter reads it
            high = field.top  # 'a/s' runs to the end of the field (Quartz, croniter)
        else:
            high = low
    out = range(low, high + 1, step)
    if field.name == "day-of-week":
        return [v % 7 for v in out]  # 7 is Sunday too
    return out


def _value(field: _Field, text: str, element: str) -> int:
    if _NUMBER.fullmatch(text):
        v = int(text)
        if not field.low <= v <= field.high:
            raise ValueError(f"{field.name} field '{text}' out of range {field.low}-{field.high}")
        return v
    if field.names is not None and text.lower() in field.names:
        return field.names[text.lower()]
    what = f"a number or a {field.noun} name" if field.noun else "a number"
    shown = text if text else element
    raise ValueError(f"{field.name} field '{shown[:40]}' is not {what}")


def _every_date(days: frozenset[int], last_day: bool) -> bool:
    """Whether the day-of-month values (and L) hold every day of every month (``1-30,L`` does)."""
    return all(days >= frozenset(range(1, n + (0 if last_day else 1))) for n in (28, 29, 30, 31))


def _day_of_month_possible(days: frozenset[int], last_day: bool, months: frozenset[int]) -> bool:
    return last_day or any(d <= _MONTH_DAYS[m] for d in days for m in months)


def _render(field: _Field, values: frozenset[int], last_day: bool = False) -> str:
    """Canonical text of a value set: '*', 'a-b/s' for a progression, else runs ('a-b') and singles."""
    suffix = ["L"] if last_day else []
    if values == field.full and not last_day:
        return "*"
    vs = sorted(values)
    if len(vs) >= 3:
        step = vs[1] - vs[0]
        if step > 1 and all(b - a == step for a, b in itertools.pairwise(vs)):
            return ",".join([f"{vs[0]}-{vs[-1]}/{step}", *suffix])
    parts: list[str] = []
    i = 0
    while i < len(vs):
        j = i
        while j + 1 < len(vs) and vs[j + 1] == vs[j] + 1:
            j += 1
        if j - i >= 2:
            parts.append(f"{vs[i]}-{vs[j]}")
            i = j + 1
        else:
            parts.append(str(vs[i]))
            i += 1
    return ",".join(parts + suffix)
