"""Dispatch-lag histograms that add up: fixed buckets, so the counts of every node and every minute merge by
adding (the ``dispatch_lag_rollup`` table; ``GET /v1/stats`` reads percentiles off the sum). Pure.

Bucket ``i`` holds lags in ``(2^((i-1)/4), 2^(i/4)]`` ms (bucket 0: up to 1 ms; the last one: everything
from ``2^((N-2)/4)`` ms on, ~3.7 min). A percentile is its bucket's upper bound: at most 19 % above the
true value, never below it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["N_BUCKETS", "bucket_of", "percentile", "upper_bound"]

N_BUCKETS = 72


def bucket_of(lag_ms: float) -> int:
    if lag_ms <= 1:
        return 0
    return min(math.ceil(4 * math.log2(lag_ms)), N_BUCKETS - 1)


def upper_bound(i: int) -> float:
    return 2 ** (i / 4)


def percentile(buckets: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0 < q <= 1) of the lags counted in ``buckets``, as a bucket bound in ms (rounded
    to 0.1); None when nothing was counted."""
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(buckets):
        seen += n
        if seen >= rank:
            return round(upper_bound(i), 1)
    return round(upper_bound(len(buckets) - 1), 1)  # pragma: no cover - seen reaches total
