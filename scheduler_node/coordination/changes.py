"""Coalescing watch notices into "re-read the snapshot" notifications (pure; shared by both adapters).

Rules:
- A consumer never needs each event: on any notification it re-reads ``snapshot()`` and recomputes. So all
  notices that arrive while the consumer is busy fold into ONE pending ``ChangeNotice``: the highest revision
  seen, ``resync`` if any of them says events may have been missed, and how many were folded (``count``).
- ``WatchLost`` adds nothing to wait for (the watch keeper is repairing the stream); the ``WatchResumed`` that
  follows asks for a re-read unless it was gapless (then the missed events are replayed as ``Changed``).
- The first notification of every stream is a resync (``START``): the consumer reads its first snapshot only
  after the watch exists, so no change can fall between the two.

Example::

    >>> p = coalesce(None, START)
    >>> p = coalesce(p, Changed(41, frozenset(), ()))
    >>> coalesce(p, Changed(40, frozenset(), ()))
    ChangeNotice(revision=41, resync=True, count=3)
"""

from __future__ import annotations

from dataclasses import dataclass

from .core import Changed, WatchNotice, WatchResumed

__all__ = ["START", "ChangeNotice", "coalesce"]

START = WatchResumed(gapless=False)


@dataclass(frozen=True, slots=True)
class ChangeNotice:
    revision: int  # highest revision among the folded changes; 0 if only resyncs
    resync: bool  # events may have been missed: do not reason from deltas, re-read everything
    count: int  # notices folded into this one


def coalesce(pending: ChangeNotice | None, notice: WatchNotice) -> ChangeNotice | None:
    """Fold ``notice`` into ``pending``; ``None`` stays ``None`` only if the notice asks for nothing."""
    match notice:
        case Changed():
            revision, resync = notice.revision, False
        case WatchResumed(gapless=False):
            revision, resync = 0, True
        case _:  # WatchLost, gapless WatchResumed: nothing new to read yet
            return pending
    if pending is None:
        return ChangeNotice(revision, resync, 1)
    return ChangeNotice(max(pending.revision, revision), pending.resync or resync, pending.count + 1)
