"""Per-key rate limits and per-tenant job quotas. The bucket and the quota arithmetic are pure; the API holds
one ``RateLimiter`` and one ``JobQuota`` per replica.

Rules:
- Rate: a token bucket per API key, ``rate_limit_per_s`` tokens a second up to ``burst``, from the key's record
  or the replica's defaults (``shardwheel api --rate-limit --burst``). Every request costs one token, a batch
  of 1,000 jobs too. Out of tokens: 429 with ``Retry-After`` (whole seconds until the next token). Per
  process: N replicas (or ``--workers N``) behind a load balancer allow up to N times the rate.
- Quota: at most ``max_jobs`` undeleted jobs per tenant (``--max-jobs-per-tenant``; none by default). A create
  (or a batch, as a whole) that would pass it is refused 403 ``quota-exceeded``, nothing stored. The count is
  read from PostgreSQL at most every ``QUOTA_CACHE_S`` seconds and the replica's own creates are added in
  between, so replicas creating at once may pass the quota by what they create within those seconds: a soft
  limit, documented as such.
"""

from __future__ import annotations

import math
import time
from typing import Any

import asyncpg
from litestar import Request

from protocol.errors import QuotaExceeded

__all__ = ["QUOTA_CACHE_S", "JobQuota", "RateLimiter", "TokenBucket", "check_quota"]

QUOTA_CACHE_S = 5.0


class TokenBucket:
    __slots__ = ("at", "burst", "rate", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.at = now

    def take(self, now: float) -> float:
        """0.0 if a token was taken, else the seconds until one will be there."""
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._buckets: dict[object, TokenBucket] = {}

    def retry_after(self, key_id: object, rate_per_s: float | None, burst: int | None,
                    now: float | None = None) -> int:  # fmt: skip
        """0 if the request may go, else the whole seconds to wait (for ``Retry-After``)."""
        at = time.monotonic() if now is None else now
        rate, size = rate_per_s or self.rate_per_s, burst or self.burst
        bucket = self._buckets.get(key_id)
        if bucket is None or bucket.rate != rate or bucket.burst != size:  # new, or the key's limits changed
            bucket = self._buckets[key_id] = TokenBucket(rate, size, at)
        wait = bucket.take(at)
        return 0 if wait == 0 else max(1, math.ceil(wait))


class JobQuota:
    def __init__(self, max_jobs: int | None) -> None:
        self.max_jobs = max_jobs
        self._counts: dict[str, tuple[float, int]] = {}  # tenant -> (read at, count then + created since)

    async def check(self, pool: asyncpg.Pool, tenant: str, adding: int) -> None:
        """``QuotaExceeded`` if ``adding`` more jobs would pass the tenant's quota; else they are counted."""
        if self.max_jobs is None:
            return
        now = time.monotonic()
        read = self._counts.get(tenant)
        if read is None or now - read[0] >= QUOTA_CACHE_S:
            count = await pool.fetchval(
                "SELECT count(*) FROM jobs WHERE tenant = $1 AND deleted_at IS NULL", tenant
            )
            read = (now, int(count))
        if read[1] + adding > self.max_jobs:
            self._counts[tenant] = read
            raise QuotaExceeded(f"tenant '{tenant}' has {read[1]} jobs; {adding} more would pass its quota of "
                                f"{self.max_jobs}: delete jobs or ask for a larger quota")  # fmt: skip
        self._counts[tenant] = (read[0], read[1] + adding)


async def check_quota(request: Request[Any, Any, Any], adding: int) -> None:
    """The request's tenant may create ``adding`` more jobs (the quota, and its refusal counted)."""
    state = request.app.state
    try:
        await state.quota.check(state.pool, request.user.tenant, adding)
    except QuotaExceeded:
        state.metrics.quota_refused.inc()
        raise
