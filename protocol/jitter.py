"""Per-job jitter: each scheduled slot fires at a fixed offset after its instant, spreading a herd of jobs on the
same schedule (every hourly job at :00) over a window instead of one second. Pure.

Rules:
- A job's ``jitter`` (a duration, at most ``MAX_JITTER``) gives it one offset in [0, jitter), derived from its
  id alone: the same on every node, after every move of its shard, for every slot and every retry.
- Only scheduled slots move; the slot itself does not: ``X-Shardwheel-Scheduled-At``, the Idempotency-Key and
  the execution's ``scheduled_at`` stay the slot's. Lateness (the misfire grace, ``dispatch_lag_ms``) counts
  from the slot plus the offset, the time the job asked to fire.
- The offset hashes the id with its own key, so it is independent of the shard the id hashes to.

Example: ``"jitter": "30s"`` on a cron ``0 0 * * * *`` job: it fires every hour at :00:00 plus its offset,
say 00:00:17.342, every hour alike.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta

from .schedules import parse_every

__all__ = ["MAX_JITTER", "jitter_offset_ms", "parse_jitter"]

MAX_JITTER = timedelta(hours=1)


def parse_jitter(text: str) -> int:
    """The jitter in milliseconds; raises ``ValueError`` with a one-line reason."""
    window = parse_every(text)  # the duration syntax of `every` (30s, 5m, PT30S), at least 1 s
    if window > MAX_JITTER:
        raise ValueError(f"'{text[:64]}' is longer than the maximum jitter of 1h")
    return window // timedelta(milliseconds=1)


def jitter_offset_ms(job_id: uuid.UUID, jitter: str | None) -> int:
    """The job's offset in [0, jitter) ms; 0 without jitter."""
    if jitter is None:
        return 0
    digest = hashlib.blake2b(job_id.bytes, digest_size=8, key=b"shardwheel-jitter").digest()
    return int.from_bytes(digest, "big") % parse_jitter(jitter)
