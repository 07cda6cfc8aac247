"""Schedule kinds: when a job fires. Wire types only; the firing math is in ``protocol.slots``.

Rules:
- ``cron``: 5 fields (minute first) or 6 fields with **seconds first** (Quartz/Spring style:
  ``31 10-15 1 * * MON-FRI``), or one of ``@yearly @annually @monthly @weekly @daily @midnight @hourly``.
  Evaluated in the job's timezone with its DST policy.
- ``every``: an *elapsed* period, ``"30s"``, ``"5m"``, ``"1h"``, ``"1d"``, compounds such as ``"1h30m"``,
  or an ISO-8601 duration (``PT90S``, ``P1DT12H``, ``P2W``) where a day is exactly 24 h and a week 7 days.
  Calendar durations (years, months: ``P1M``) are rejected: their length depends on the date.
  Slots are ``anchor + k * period`` with the anchor at ``start_at`` or else the job's creation time,
  so the timezone never moves them.
- ``at``: one RFC 3339 instant with an offset (``2026-12-01T09:00:00Z``). The job completes after it.
- Instants (``at``, and a job's ``start_at`` and ``end_at``) lie between ``MIN_INSTANT`` (1970-01-01Z) and
  ``MAX_INSTANT`` (9999-01-01Z): a node computes in unix milliseconds and in UTC, and an instant near the ends
  of Python's datetime range (``9999-12-31T23:30:00-01:00`` is in year 10000 in UTC) cannot be converted.

Example: ``{"kind": "cron", "cron": "0 30 2 * * *"}`` fires at 02:30:00 every day in the job's zone.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

import msgspec

from .errors import SpecError

__all__ = [
    "MAX_INSTANT",
    "MIN_INSTANT",
    "At",
    "Cron",
    "Every",
    "Schedule",
    "check_instant",
    "parse_every",
    "validate_schedule",
]

MAX_PERIOD = timedelta(days=366)
MIN_PERIOD = timedelta(seconds=1)
MIN_INSTANT = datetime(1970, 1, 1, tzinfo=UTC)
MAX_INSTANT = datetime(9999, 1, 1, tzinfo=UTC)


class Cron(msgspec.Struct, tag="cron", tag_field="kind", frozen=True):
    cron: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class Every(msgspec.Struct, tag="every", tag_field="kind", frozen=True):
    every: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class At(msgspec.Struct, tag="at", tag_field="kind", frozen=True):
    at: datetime


Schedule = Cron | Every | At

_SHORT = re.compile(r"(\d+)\s*(ms|s|m|h|d|w)")
_SHORT_WHOLE = re.compile(r"(?:\d+\s*(?:ms|s|m|h|d|w)\s*)+")
_ISO = re.compile(
    r"P(?:(?P<years>\d+)Y)?(?:(?P<months>\d+)M)?(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?"
)
_UNIT_US = {"ms": 1_000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000, "d": 86_400_000_000,
            "w": 604_800_000_000}  # fmt: skip
_ONE_US = timedelta(microseconds=1)


def parse_every(text: str) -> timedelta:
    """The period of an ``every`` schedule; raises ``ValueError`` with a one-line reason."""
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    # Counted in exact integer microseconds and bounded before any timedelta is built: a count such as
    # 99999999999999999999d overflows timedelta, and a float loses the whole-millisecond check.
    if s[0] in "Pp":
        m = _ISO.fullmatch(s.upper())
        if m is None or s.upper() in ("P", "PT") or s.upper().endswith("T"):
            raise ValueError(f"'{text}' is not an ISO-8601 duration (e.g. PT30S, P1DT12H)")
        if m["years"] or m["months"]:
            raise ValueError(f"'{text}' is a calendar duration (years or months); use cron for calendar schedules")
        whole, _, frac = (m["seconds"] or "0").partition(".")
        if len(frac.rstrip("0")) > 6:
            raise ValueError("period must be a whole number of milliseconds")
        us = int(whole) * 1_000_000 + int(frac.ljust(6, "0")[:6] or 0)
        for unit, seconds in (("weeks", 604_800), ("days", 86_400), ("hours", 3_600), ("minutes", 60)):
            us += int(m[unit] or 0) * seconds * 1_000_000
    else:
        if _SHORT_WHOLE.fullmatch(s) is None:
            raise ValueError(f"'{text}' is not a duration (e.g. 30s, 5m, 1h30m, 1d, or ISO-8601 PT30S)")
        us = sum(int(n) * _UNIT_US[u] for n, u in _SHORT.findall(s))
    if us > MAX_PERIOD // _ONE_US:
        raise ValueError(f"period '{text[:64]}' is longer than the maximum of 366 days")
    period = timedelta(microseconds=us)
    if period < MIN_PERIOD:
        raise ValueError(f"period {period.total_seconds():g}s is shorter than the minimum of 1s")
    if period.microseconds % 1000:
        raise ValueError("period must be a whole number of milliseconds")
    return period


def validate_schedule(schedule: Schedule) -> None:
    """Semantic checks msgspec's types cannot express; raises ``SpecError`` naming ``schedule.<field>``."""
    match schedule:
        case At(at=instant):
            check_instant("schedule.at", instant)
        case Cron(cron=expr):
            # Imported here so that reading wire types never pays for the cron parser.
            from .cron import parse_cron

            try:
                parse_cron(expr)
            except ValueError as e:
                raise SpecError("schedule.cron", str(e)) from None
        case Every(every=text):
            try:
                parse_every(text)
            except ValueError as e:
                raise SpecError("schedule.every", str(e)) from None


def check_instant(field: str, value: datetime) -> None:
    """An instant a node can compute with: an offset given, and within ``MIN_INSTANT``..``MAX_INSTANT``."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise SpecError(field, "instant needs a UTC offset or Z (RFC 3339)")
    # Aware datetimes compare through their offsets without converting (astimezone overflows at the ends).
    if not MIN_INSTANT <= value < MAX_INSTANT:
        raise SpecError(field, f"must lie between {MIN_INSTANT:%Y-%m-%d} and {MAX_INSTANT:%Y-%m-%d} (UTC)")
