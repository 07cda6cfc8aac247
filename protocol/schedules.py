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

Example: ``{"kind": "cron", "cron": "0 30 2 * * *"}`` fires at 02:30:00 every day in the job's zone.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Annotated

import msgspec

from .errors import SpecError

__all__ = ["At", "Cron", "Every", "Schedule", "parse_every", "validate_schedule"]

MAX_PERIOD = timedelta(days=366)
MIN_PERIOD = timedelta(seconds=1)


class Cron(msgspec.Struct, tag="cron", tag_field="kind", forbid_unknown_fields=True, frozen=True):
    cron: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]


class Every(msgspec.Struct, tag="every", tag_field="kind", forbid_unknown_fields=True, frozen=True):
    every: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class At(msgspec.Struct, tag="at", tag_field="kind", forbid_unknown_fields=True, frozen=True):
    at: datetime


Schedule = Cron | Every | At

_SHORT = re.compile(r"(\d+)\s*(ms|s|m|h|d|w)")
_SHORT_WHOLE = re.compile(r"(?:\d+\s*(?:ms|s|m|h|d|w)\s*)+")
_ISO = re.compile(
    r"P(?:(?P<years>\d+)Y)?(?:(?P<months>\d+)M)?(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?"
)
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_every(text: str) -> timedelta:
    """The period of an ``every`` schedule; raises ``ValueError`` with a one-line reason."""
    s = text.strip()
    if not s:
        raise ValueError("empty duration")
    if s[0] in "Pp":
        m = _ISO.fullmatch(s.upper())
        if m is None or s.upper() in ("P", "PT") or s.upper().endswith("T"):
            raise ValueError(f"'{text}' is not an ISO-8601 duration (e.g. PT30S, P1DT12H)")
        if m["years"] or m["months"]:
            raise ValueError(f"'{text}' is a calendar duration (years or months); use cron for calendar schedules")
        period = timedelta(
            weeks=int(m["weeks"] or 0),
            days=int(m["days"] or 0),
            hours=int(m["hours"] or 0),
            minutes=int(m["minutes"] or 0),
            seconds=float(m["seconds"] or 0),
        )
    else:
        if _SHORT_WHOLE.fullmatch(s) is None:
            raise ValueError(f"'{text}' is not a duration (e.g. 30s, 5m, 1h30m, 1d, or ISO-8601 PT30S)")
        period = timedelta(seconds=sum(int(n) * _UNIT_SECONDS[u] for n, u in _SHORT.findall(s)))
    if period < MIN_PERIOD:
        raise ValueError(f"period {period.total_seconds():g}s is shorter than the minimum of 1s")
    if period > MAX_PERIOD:
        raise ValueError(f"period '{text}' is longer than the maximum of 366 days")
    if period.microseconds % 1000:
        raise ValueError("period must be a whole number of milliseconds")
    return period


def validate_schedule(schedule: Schedule) -> None:
    """Semantic checks msgspec's types cannot express; raises ``SpecError`` naming ``schedule.<field>``."""
    # Imported here so that reading wire types never pays for the cron parser.
    from .cron import parse_cron

    match schedule:
        case Cron(cron=expr):
            try:
                parse_cron(expr)
            except ValueError as e:
                raise SpecError("schedule.cron", str(e)) from None
        case Every(every=text):
            try:
                parse_every(text)
            except ValueError as e:
                raise SpecError("schedule.every", str(e)) from None
        case At(at=instant):
            if instant.tzinfo is None:
                raise SpecError("schedule.at", "instant needs a UTC offset or Z (RFC 3339)")
