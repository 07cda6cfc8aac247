"""Lag buckets: a percentile read off the buckets is never below the true one and at most 19 % above it."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from protocol.lag_buckets import N_BUCKETS, bucket_of, percentile, upper_bound


@given(st.lists(st.floats(0, 200_000, allow_nan=False), min_size=1, max_size=300), st.sampled_from([0.5, 0.9, 0.99]))
def test_a_percentile_is_a_tight_upper_bound_of_the_true_one(lags: list[float], q: float) -> None:
    buckets = [0] * N_BUCKETS
    for lag in lags:
        buckets[bucket_of(lag)] += 1
    true = sorted(lags)[max(0, math.ceil(q * len(lags)) - 1)]
    got = percentile(buckets, q)
    assert got is not None and got >= min(true, upper_bound(N_BUCKETS - 1)) - 0.05
    assert got <= max(1.0, true * 2 ** 0.25) + 0.05


def test_buckets_add_up_and_an_empty_histogram_has_no_percentile() -> None:
    assert percentile([0] * N_BUCKETS, 0.99) is None
    assert bucket_of(0) == bucket_of(1) == 0 and bucket_of(1.01) == 1 and bucket_of(10**9) == N_BUCKETS - 1
