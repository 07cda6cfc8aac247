"""Job ids: UUIDv7 (RFC 9562), so ids sort by creation time and cursor pagination by id is chronological.

Layout: 48-bit unix milliseconds | version 7 | 12 random bits | variant | 62 random bits. Python 3.11's
``uuid`` module has no ``uuid7``; this is the whole of it.
"""

from __future__ import annotations

import os
import time
import uuid

__all__ = ["new_job_id", "uuid7_time_ms"]


def new_job_id(now_ms: int | None = None) -> uuid.UUID:
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    rand_a = rand >> 68  # 12 bits
    rand_b = rand & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return uuid.UUID(int=value)


def uuid7_time_ms(job_id: uuid.UUID) -> int:
    return job_id.int >> 80
