"""Job ids: UUIDv7 (RFC 9562), so ids sort by creation time and cursor pagination by id is chronological.

Layout: 48-bit unix milliseconds | version 7 | 12 random bits | variant | 62 random bits. Python 3.11's
``uuid`` module has no ``uuid7``; this is the whole of it.

``parse_job_id`` is the one reading of an id a caller gives: any RFC 9562 UUID in its canonical text form (ids
made elsewhere are accepted; shards hash the 16 bytes), but not the nil UUID, which clients send by mistake.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid

from .errors import SpecError

__all__ = ["new_job_id", "new_job_ids", "parse_job_id", "uuid7_time_ms"]

_CANONICAL = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def new_job_id(now_ms: int | None = None, seed: bytes | None = None) -> uuid.UUID:
    """A UUIDv7 for ``now_ms`` (default: now); with ``seed``, its random bits are the seed's hash, so the same
    seed and time give the same id (the jobs of a batch sent again with its Idempotency-Key)."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    return _uuid7(ms, os.urandom(10) if seed is None else hashlib.sha256(seed).digest()[:10])


def new_job_ids(count: int) -> list[uuid.UUID]:
    """``count`` UUIDv7s for now from one read of the system's random source (a batch's: one syscall, not
    ``count``)."""
    ms = time.time_ns() // 1_000_000
    bits = os.urandom(10 * count)
    return [_uuid7(ms, bits[i : i + 10]) for i in range(0, 10 * count, 10)]


def _uuid7(ms: int, bits: bytes) -> uuid.UUID:
    rand = int.from_bytes(bits, "big")
    rand_a = rand >> 68  # 12 bits
    rand_b = rand & ((1 << 62) - 1)
    return uuid.UUID(int=(ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b)


def uuid7_time_ms(job_id: uuid.UUID) -> int:
    return job_id.int >> 80


def parse_job_id(text: str, field: str = "id") -> uuid.UUID:
    """A job id from a caller; ``SpecError`` naming ``field`` unless it is a canonical, non-nil UUID."""
    if not _CANONICAL.fullmatch(text):
        raise SpecError(field, f"'{text[:80]}' is not a UUID (8-4-4-4-12 hex digits)")
    job_id = uuid.UUID(text)
    if job_id.int == 0:
        raise SpecError(field, "the nil UUID is not a job id")
    return job_id
