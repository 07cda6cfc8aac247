"""Rate limits: a key's bucket never grants more than its burst plus its rate over any stretch of time, and
says how long to wait when it refuses."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from control_api.limits import RateLimiter, TokenBucket


@given(st.floats(0.5, 1000), st.integers(1, 50), st.lists(st.floats(0, 2), min_size=1, max_size=200))
def test_a_bucket_grants_at_most_burst_plus_rate_times_elapsed(rate: float, burst: int, gaps: list[float]) -> None:
    bucket = TokenBucket(rate, burst, 0.0)
    now, granted = 0.0, []
    for gap in gaps:
        now += gap
        wait = bucket.take(now)
        if wait == 0:
            granted.append(now)
        else:
            assert 0 < wait <= 1 / rate + 1e-9
    for i, start in enumerate(granted):  # any window [start, end] of the grants
        for j in range(i, len(granted)):
            assert j - i + 1 <= burst + rate * (granted[j] - start) + 1e-6


def test_a_key_over_its_limit_waits_whole_seconds_and_its_own_limits_apply() -> None:
    limiter = RateLimiter(rate_per_s=1000, burst=1000)
    assert [limiter.retry_after("k", 0.5, 2, now=0.0) for _ in range(3)] == [0, 0, 2]
    assert limiter.retry_after("k", 0.5, 2, now=2.0) == 0  # one token back after 2 s
    assert limiter.retry_after("other", None, None, now=0.0) == 0  # the replica's defaults
