"""The node's wall clock in unix milliseconds, with an injectable offset.

Slots are wall-clock instants, so the wheel runs on wall-clock milliseconds; callers sleep on trio's monotonic
clock for the duration (``seconds_until``), so this module needs no trio. ``offset_ms`` shifts what this node
believes the time is: tests use it to simulate a node whose clock is wrong (clock discipline must refuse
such a node shards), and nothing else should set it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

__all__ = ["Clock", "ms_to_datetime", "datetime_to_ms"]


class Clock:
    def __init__(self, offset_ms: int = 0) -> None:
        self.offset_ms = offset_ms

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset_ms

    def seconds_until(self, when_ms: int) -> float:
        """Exact (sub-ms) seconds from now to ``when_ms``; ``when_ms - now_ms()`` is up to 1 ms too long."""
        return (when_ms - self.offset_ms) / 1000 - time.time_ns() / 1e9


def ms_to_datetime(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def datetime_to_ms(dt: datetime) -> int:
    # Exact for the millisecond-truncated instants we store: avoids float rounding of .timestamp().
    delta = dt - _EPOCH
    return delta.days * 86_400_000 + delta.seconds * 1000 + delta.microseconds // 1000


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
