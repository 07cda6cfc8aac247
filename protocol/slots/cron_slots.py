"""Cron slots: the firing instants of a cron schedule in a time zone, as a cheap iterator. Pure.

Rules:
- croniter walks **naive wall-clock time**: given a naive start it does plain calendar arithmetic and knows
  nothing of DST. Each wall time ``w`` it yields is turned into instants by ``dst``: UNIQUE → ``w - offset``;
  MISSING → nothing (gap=skip) or the transition instant (gap=shift), and the walk jumps to the end of the
  gap; REPEATED → the readings the policy names (``REPEAT_FOLDS``).
- The policy is ``dst.effective_policy``: the job's for a fixed hour, ``ABSOLUTE`` (skip, both) otherwise,
  which yields every real instant whose wall-clock reading matches, exactly once.
- Output is strictly increasing UTC, each instant once, all whole seconds. In an overlap, wall order is not
  real order (01:15 EST comes after 01:45 EDT), so the span ``[start, end)`` of repeated wall times is walked
  once per fold: fold 0 through the span, then croniter is rewound to ``start`` and walks it again for fold 1,
  then on past ``end``. A shifted gap firing equal to a regular one (a match at the wall time where the gap
  ends) is dropped by the strictly-increasing check, which is also what "none if a regular firing falls there"
  means.
- Why not croniter's own time-zone support: with an aware start it moves a nonexistent time forward minute by
  minute and picks readings of an ambiguous one by closeness to the previous result; releases have changed
  that logic again and again. Here croniter only does calendar arithmetic, and the DST rule is ours, in
  ``dst``.
- Bounds: one ``next`` takes at most ``MAX_STEPS`` croniter steps; in practice 1, plus 1 per gap jump, per
  fold rewind and per dropped duplicate. croniter itself searches at most 50 years, and ``protocol.cron``
  accepts only expressions that fire within 8 years (29 February), so a sparse schedule costs one step per
  slot. A croniter failure to find a date (or a date past year 9999) ends the iteration.
- State is small: the croniter (a shallow copy of a shared, never-advanced template: ~3 µs instead of ~130 µs
  to build one), the zone, the policy as two small values, the end bound, the last instant, the current
  overlap span and its folds. The durable state is the job's last slot: ``CronSlots(..., after=last_slot)``
  resumes exactly.

Worked example: ``0 */15 * * * *`` (hour not fixed: absolute) in Australia/Lord_Howe (+10:30, summer +11).

    2025-04-06: clocks go back from 02:00 (+11) to 01:30 (+10:30) at 15:00Z.
    croniter yields 01:15, 01:30 (REPEATED: span [01:30, 02:00)), 01:45, then 02:00 (past the span).
    Fold 0 gives 14:30Z, 14:45Z; at 02:00 the walk rewinds to 01:30 for fold 1: 15:00Z, 15:15Z;
    then 02:00 (+10:30) = 15:30Z. One firing every 15 minutes of real time.

    2025-10-05: clocks go forward from 02:00 (+10:30) to 02:30 (+11) at 15:30Z.
    01:45 = 15:15Z; 02:00 is MISSING, so the walk jumps to 02:30 = 15:30Z.
    With a fixed hour (``0 15 2 * * *``) and gap=shift, 02:15 fires at 15:30Z instead.
"""

from __future__ import annotations

import copy
import functools
import zoneinfo
from datetime import UTC, datetime
from typing import Final

from croniter import croniter

from ..jobs import DstPolicy
from .dst import GAP_INSTANT, ONE_SECOND, REPEAT_FOLDS, WallKind, classify, gap_end, instant, overlap

__all__ = ["MAX_STEPS", "CronSlots", "cron_template"]

MAX_STEPS: Final = 1_000  # per `next`; real iterations need a handful. Exceeding it is a bug, not user input.


@functools.lru_cache(maxsize=4096)
def cron_template(croniter_expr: str) -> croniter:
    """A croniter for ``croniter_expr`` (seconds last) to copy from; never advanced itself.

    Building one costs ~130 µs (measured here; DESIGN.md §2 says ~114 µs); a shallow copy plus ``set_current``
    ~3 µs. Copies may share its expanded field lists: croniter copies them before changing anything, and the
    one structure it mutates in place (nth-weekday sets, ``#``) is rejected by ``protocol.cron``.
    """
    return croniter(croniter_expr, datetime(2000, 1, 1), ret_type=datetime)


class CronSlots:
    """Iterator over the firing instants (aware, UTC) strictly after ``after`` and at or before ``end``."""

    __slots__ = ("_cron", "_end", "_fold", "_folds", "_last", "_pending", "_shift", "_span", "_tz")

    def __init__(
        self,
        croniter_expr: str,
        tz: zoneinfo.ZoneInfo,
        policy: DstPolicy,
        after: datetime,
        end: datetime | None = None,
    ) -> None:
        if after.tzinfo is None:
            raise ValueError("after must be an aware datetime")
        self._cron: croniter | None = copy.copy(cron_template(croniter_expr))
        self._tz = tz
        self._folds = REPEAT_FOLDS[policy.repeat]
        self._shift = GAP_INSTANT[policy.gap]
        self._end = end
        self._last = after
        self._span: tuple[datetime, datetime] | None = None  # the overlap being walked, naive [start, end)
        self._fold = 0  # which reading of the span this pass yields
        self._pending: tuple[int, ...] = ()  # folds still to walk over the span

        # Start the wall-clock walk where `after` is. Inside an overlap, the passes already behind `after` are
        # skipped, the current one resumes at `after` and a later one starts at the span's beginning.
        local = after.astimezone(tz)
        wall = local.replace(tzinfo=None, fold=0)
        cursor = wall
        kind, off0, off1 = classify(wall, tz)
        if kind is WallKind.REPEATED:
            start, stop = overlap(wall, tz, off0, off1)
            folds = tuple(f for f in self._folds if f >= local.fold)
            if folds:
                self._span, self._fold, self._pending = (start, stop), folds[0], folds[1:]
                if folds[0] != local.fold:
                    cursor = start - ONE_SECOND
            else:
                cursor = stop - ONE_SECOND  # nothing left in this overlap for this policy
        self._cron.set_current(cursor, force=True)

    def __iter__(self) -> CronSlots:
        return self

    def __next__(self) -> datetime:
        cron = self._cron
        if cron is None:
            raise StopIteration
        for _ in range(MAX_STEPS):
            try:
                # No date found (CroniterBadDateError, a ValueError) or past year 9999 (ValueError, Overflow).
                wall: datetime = cron.get_next(datetime)
            except (ValueError, OverflowError):
                self._cron = None
                raise StopIteration from None
            try:
                t = self._resolve(cron, wall)
            except OverflowError:  # an instant past year 9999
                self._cron = None
                raise StopIteration from None
            if t is None or t <= self._last:
                continue
            if self._end is not None and t > self._end:
                self._cron = None  # instants only grow: nothing later can be in bounds
                raise StopIteration
            self._last = t
            return t
        raise RuntimeError(f"cron slot search exceeded {MAX_STEPS} steps after {self._last.isoformat()}")

    def _resolve(self, cron: croniter, wall: datetime) -> datetime | None:
        """The instant ``wall`` stands for in this pass, or None; moves the walk at gaps and overlap ends."""
        tz = self._tz
        if self._span is not None:
            start, stop = self._span
            if wall < stop:
                _, off0, off1 = classify(wall, tz)
                return instant(wall, off1 if self._fold else off0)
            if self._pending:  # walk the span again for the next reading
                self._fold, self._pending = self._pending[0], self._pending[1:]
                cron.set_current(start - ONE_SECOND, force=True)
                return None
            self._span = None
        kind, off0, off1 = classify(wall, tz)
        if kind is WallKind.UNIQUE:
            return instant(wall, off0)
        if kind is WallKind.REPEATED:
            # `wall` is the first match in the span (the walk was before it), so this pass starts here.
            self._span = overlap(wall, tz, off0, off1)
            self._fold, self._pending = self._folds[0], self._folds[1:]
            return instant(wall, off1 if self._fold else off0)
        # MISSING: every other match in this gap resolves the same way, so jump to where the gap ends.
        t, resume = gap_end(wall, tz, off0, off1)
        cron.set_current(resume - ONE_SECOND, force=True)
        return t.astimezone(UTC) if self._shift else None
