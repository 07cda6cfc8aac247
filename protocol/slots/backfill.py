"""Backfill: every slot of a past range of a job's schedule, fired now with origin ``backfill``. Pure.

Rules:
- The range is ``[from, to)``: a slot exactly at ``from`` is in it, one at ``to`` is not, so consecutive
  ranges (``to`` of one the ``from`` of the next) never fire a slot twice.
- Past only: ``to`` must not be after ``now``: the schedule fires what is still to come by itself.
- Bounded: at most ``MAX_BACKFILL_SLOTS`` slots in one request, or the request is refused naming ``to`` with
  the slot count it would hold (the caller splits the range): a backfill claims its slots at once, and a year
  of a per-second job must not flood a node's wheel or a target.
- The slots are the schedule's own (``rules.compile_schedule``, the job's ``start_at``/``end_at`` included),
  the ones the node would have fired then. A slot already backfilled is not fired again (the executions key
  includes the origin, and a claim inserts only what is not there).

Example: ``{"kind": "every", "every": "1h"}`` created at 00:00Z, ``from`` 02:00Z, ``to`` 05:00Z → the slots
02:00, 03:00 and 04:00 (05:00 is the next range's).
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

import msgspec

from ..errors import SpecError
from ..jobs import JobSpec
from .rules import _to_ms, compile_schedule

__all__ = ["MAX_BACKFILL_SLOTS", "BackfillRange", "backfill_slots"]

MAX_BACKFILL_SLOTS: Final = 1000


class BackfillRange(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    start: datetime = msgspec.field(name="from")  # inclusive
    end: datetime = msgspec.field(name="to")  # exclusive, not after now


def _ceil_ms(t: datetime) -> int:
    # slots are whole ms: the first one at or after t, the first one not before t
    return _to_ms(t) + (1 if t.microsecond % 1000 else 0)


def backfill_slots(spec: JobSpec, created_at: datetime, span: BackfillRange, now: datetime) -> list[int]:
    """The slots (unix ms) of ``spec`` in ``[span.start, span.end)``; ``SpecError`` naming ``from`` or ``to``."""
    for field, t in (("from", span.start), ("to", span.end)):
        if t.tzinfo is None:
            raise SpecError(field, "needs a UTC offset or Z")
    if span.end <= span.start:
        raise SpecError("to", "must be after from")
    if span.end > now:
        raise SpecError("to", f"must not be in the future (now is {now.isoformat()}): backfill fills the past")
    end_ms = _ceil_ms(span.end)
    slots: list[int] = []
    for slot in compile_schedule(spec, created_at).iter_ms(_ceil_ms(span.start) - 1):
        if slot >= end_ms:
            break
        if len(slots) == MAX_BACKFILL_SLOTS:
            raise SpecError("to", f"the range holds more than {MAX_BACKFILL_SLOTS} slots; backfill it in "
                                  "smaller ranges")  # fmt: skip
        slots.append(slot)
    return slots
