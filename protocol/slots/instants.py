"""Preview instants: a schedule's next firing instants as the API shows them, each in UTC and in the job's
zone, with a note when daylight saving time had a hand in it. Pure. (Not ``preview.py``: that name would shadow
``protocol.slots.preview``, the function, once imported.)

Rules:
- The instants are ``rules.preview``'s (the node's own slots: the API and the nodes never disagree).
- ``dst`` is ``"gap"`` when the instant sits at the end of a gap (the clock had just jumped forward: a
  shifted wall time, with ``dst.gap = shift``, or a slot at the transition) and ``"repeat"`` when its wall
  time occurs twice that day (the clock went back; which of the two fired follows ``dst.repeat``); else
  None.

Example: ``0 30 1 * * *`` in Europe/London around 2026-03-29 (clocks go 01:00 → 02:00): 01:30 does not exist;
with gap=shift it fires at 01:00Z, shown as ``02:00+01:00`` with ``dst: "gap"``.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import msgspec

from ..jitter import jitter_offset_ms
from ..jobs import JobSpec
from .dst import zone
from .rules import compile_schedule

__all__ = ["PreviewInstant", "preview_instants"]

_SECOND = timedelta(seconds=1)


class PreviewInstant(msgspec.Struct, frozen=True):
    utc: datetime
    local: datetime  # in the job's zone, with its offset
    dst: str | None = None  # "gap" | "repeat"
    # A job with jitter (protocol.jitter): when this slot is sent, ``utc`` plus the job's offset. Absent for a
    # schedule not yet a job: the offset comes from the job's id.
    fires_at: datetime | None = None
    jitter_offset_ms: int | None = None


def _dst_note(local: datetime) -> str | None:
    before = (local - _SECOND).astimezone(local.tzinfo)
    offset, earlier = local.utcoffset(), before.utcoffset()
    if offset is not None and earlier is not None and offset > earlier:
        return "gap"
    other = local.replace(fold=1 - local.fold)
    if other.utcoffset() != local.utcoffset():
        return "repeat"
    return None


def preview_instants(
    spec: JobSpec, after: datetime, n: int, created_at: datetime | None = None, job_id: uuid.UUID | None = None
) -> list[PreviewInstant]:
    """The next ``n`` instants strictly after ``after`` (``created_at`` anchors ``every``; default ``after``);
    with ``job_id``, a job with jitter shows when each is sent."""
    tz = zone(spec.timezone)
    rule = compile_schedule(spec, created_at if created_at is not None else after)
    offset = jitter_offset_ms(job_id, spec.jitter) if job_id is not None and spec.jitter is not None else None
    out = []
    for t in rule.preview(after, n):
        local = t.astimezone(tz)
        fires = None if offset is None else t + timedelta(milliseconds=offset)
        out.append(PreviewInstant(t, local, _dst_note(local), fires, offset))
    return out
