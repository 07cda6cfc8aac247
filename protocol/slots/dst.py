"""DST resolution: which real instants a wall-clock time stands for, under a job's DST policy. Pure.

Rules:
- A wall-clock time (a naive ``datetime`` read in the job's zone) is one of ``UNIQUE`` (one instant),
  ``REPEATED`` (in the fall-back overlap: two instants, ``fold=0`` the earlier and ``fold=1`` the later) or
  ``MISSING`` (in the spring-forward gap: no instant at all).
- Detection without round trips: per PEP 495, zoneinfo resolves ``fold=0`` with the offset in force *before* a
  transition and ``fold=1`` with the one *after*. Equal offsets: unique. ``fold=0``'s offset larger (clocks
  went back): repeated. Smaller (clocks went forward): missing. That is what a round trip through UTC would
  find, at the cost of two ``utcoffset`` calls (~0.9 µs measured here). It holds for negative DST
  (Europe/Dublin) and for any shift size (Australia/Lord_Howe's 30 minutes, Antarctica/Troll's 2 hours).
- The policy as data (``GAP_INSTANT``, ``REPEAT_FOLDS``): gap ``skip`` → no instant, ``shift`` → the
  transition instant (the first instant after the gap); repeat ``first`` → fold 0, ``second`` → fold 1,
  ``both`` → fold 0 then fold 1.
- ``ABSOLUTE`` = (gap skip, repeat both) is "follow absolute time": every real instant whose wall-clock
  reading matches fires exactly once, since a missing wall time is read by no instant and a repeated one by
  two. Cron schedules whose hour is not fixed (``*``, ``*/2``, ``9-17``) use it whatever the job says
  (``effective_policy``); fixed-hour schedules (``0 30 2 * * *``) use the job's policy.
- Transitions are found by bisection on whole UTC seconds between the two readings of the wall time (a gap or
  an overlap is at most a day wide, so at most 17 steps). tzdata transitions fall on whole seconds.
- Zones come from the ``tzdata`` wheel (``zone``), not from the operating system, so every node computes the
  same slots whatever image it runs on; a name the wheel lacks falls back to the system database.

Worked example, America/New_York (UTC-5, UTC-4 in summer):
    2025-03-09 02:30 is MISSING (fold 0 reads it at UTC-5: 07:30Z; fold 1 at UTC-4: 06:30Z; 02:00 EST jumps to
    03:00 EDT at 07:00Z). ``gap_end`` finds 07:00Z and the wall time 03:00 there; gap=shift fires at 07:00Z.
    2025-11-02 01:30 is REPEATED: 05:30Z (EDT, fold 0) and 06:30Z (EST, fold 1). ``overlap`` gives the
    wall-time span [01:00, 02:00) read twice, first from 05:00Z, again from the transition at 06:00Z.
"""

from __future__ import annotations

import enum
import functools
import importlib.resources
import zoneinfo
from datetime import UTC, datetime, timedelta
from typing import Final

from ..cron import CronExpr
from ..jobs import DstGap, DstPolicy, DstRepeat

__all__ = [
    "ABSOLUTE",
    "GAP_INSTANT",
    "REPEAT_FOLDS",
    "WallKind",
    "classify",
    "effective_policy",
    "gap_end",
    "instant",
    "overlap",
    "transition",
    "zone",
]

ONE_SECOND: Final = timedelta(seconds=1)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_BISECT_STEPS: Final = 64  # 2**64 s covers any span; real spans need <= 17


class WallKind(enum.Enum):
    UNIQUE = "unique"
    REPEATED = "repeated"  # read by two instants (fall-back overlap)
    MISSING = "missing"  # read by no instant (spring-forward gap)


ABSOLUTE: Final = DstPolicy(gap=DstGap.SKIP, repeat=DstRepeat.BOTH)

# Which readings of a repeated wall time fire, in the order they occur.
REPEAT_FOLDS: Final[dict[DstRepeat, tuple[int, ...]]] = {
    DstRepeat.FIRST: (0,),
    DstRepeat.SECOND: (1,),
    DstRepeat.BOTH: (0, 1),
}
# Whether a missing wall time fires at the transition instant.
GAP_INSTANT: Final[dict[DstGap, bool]] = {DstGap.SKIP: False, DstGap.SHIFT: True}


def effective_policy(expr: CronExpr, policy: DstPolicy) -> DstPolicy:
    """The job's policy for fixed-hour schedules, ``ABSOLUTE`` for the rest (DESIGN.md §3)."""
    return policy if expr.hour_fixed else ABSOLUTE


@functools.lru_cache(maxsize=1024)
def zone(name: str) -> zoneinfo.ZoneInfo:
    """The IANA zone ``name`` from the pinned ``tzdata`` wheel (the system database if the wheel lacks it)."""
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return zoneinfo.ZoneInfo(name)  # not a zone key: let zoneinfo raise its ValueError
    try:
        ref = importlib.resources.files("tzdata.zoneinfo").joinpath(*parts)
        with ref.open("rb") as f:
            return zoneinfo.ZoneInfo.from_file(f, key=name)
    except (ModuleNotFoundError, FileNotFoundError, IsADirectoryError, NotADirectoryError, ValueError):
        return zoneinfo.ZoneInfo(name)


def classify(wall: datetime, tz: zoneinfo.ZoneInfo) -> tuple[WallKind, timedelta, timedelta]:
    """``(kind, offset read with fold=0, offset read with fold=1)`` for a naive wall-clock time."""
    off0 = tz.utcoffset(wall.replace(fold=0))
    off1 = tz.utcoffset(wall.replace(fold=1))
    assert off0 is not None and off1 is not None  # ZoneInfo always answers
    if off0 == off1:
        return WallKind.UNIQUE, off0, off1
    return (WallKind.REPEATED if off0 > off1 else WallKind.MISSING), off0, off1


def instant(wall: datetime, offset: timedelta) -> datetime:
    """The UTC instant at which the zone reads ``wall`` while its offset is ``offset``."""
    return (wall.replace(fold=0) - offset).replace(tzinfo=UTC)


def _offset_at(t: datetime, tz: zoneinfo.ZoneInfo) -> timedelta:
    off = t.astimezone(tz).utcoffset()
    assert off is not None
    return off


def transition(lo: datetime, hi: datetime, tz: zoneinfo.ZoneInfo) -> datetime:
    """The first whole-second instant in ``(lo, hi]`` whose offset differs from ``lo``'s (aware UTC instants).

    Assumes one transition in the span, as between the two readings of one wall time.
    """
    base = _offset_at(lo, tz)
    low = (lo - _EPOCH) // ONE_SECOND  # invariant: offset(low) == base
    high = -((_EPOCH - hi) // ONE_SECOND)  # ceil; invariant: offset(high) != base
    for _ in range(_MAX_BISECT_STEPS):
        if high - low <= 1:
            break
        mid = (low + high) // 2
        if _offset_at(_EPOCH + mid * ONE_SECOND, tz) == base:
            low = mid
        else:
            high = mid
    return _EPOCH + high * ONE_SECOND


def gap_end(
    wall: datetime, tz: zoneinfo.ZoneInfo, off0: timedelta, off1: timedelta
) -> tuple[datetime, datetime]:
    """For a MISSING ``wall``: the transition instant (UTC) and the wall-clock time the zone reads then.

    Every wall time of the gap is before that reading; ``gap=shift`` fires at that instant.
    """
    # fold=1 applies the later, larger offset: an instant before the transition; fold=0 one at or after it.
    t = transition(instant(wall, off1), instant(wall, off0), tz)
    return t, (t + _offset_at(t, tz)).replace(tzinfo=None)


def overlap(
    wall: datetime, tz: zoneinfo.ZoneInfo, off0: timedelta, off1: timedelta
) -> tuple[datetime, datetime]:
    """For a REPEATED ``wall``: the span ``[start, end)`` of wall times read twice (naive).

    The first readings run from ``transition - (off0 - off1)`` to the transition, the second from it.
    """
    t = transition(instant(wall, off0), instant(wall, off1), tz)
    start = (t + _offset_at(t, tz)).replace(tzinfo=None)
    return start, start + (off0 - off1)
