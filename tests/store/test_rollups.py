"""Rollups: flushes from several nodes add up per tenant and minute; reads cover whole minutes of a window."""

from __future__ import annotations

from datetime import timedelta

from protocol.lag_buckets import N_BUCKETS, bucket_of
from scheduler_node.rollup import Rollup
from scheduler_node.store import add_rollups, read_stats
from scheduler_node.trio_store import TrioStore

from .conftest import T0, ms


async def test_flushes_add_up_per_tenant_and_minute(store: TrioStore) -> None:
    node_a, node_b = Rollup(), Rollup()
    t = ms(T0)
    for r in (node_a, node_b):
        r.result("acme", t + 1_000, "succeeded")
        r.result("acme", t + 61_000, "failed")  # the next minute
        r.result("globex", t, "succeeded")
        r.lag("acme", t, 12.0)
    node_a.lag("acme", t + 61_000, 900.0)
    for r in (node_a, node_b):
        await store.call(add_rollups, *r.take())
    assert node_a.take() == ([], [])  # taken once
    first = await store.call(read_stats, "acme", T0, T0 + timedelta(minutes=1))
    assert first.counts == {"succeeded": 2}
    assert sum(first.lag_buckets) == 2 and first.lag_buckets[bucket_of(12)] == 2
    both = await store.call(read_stats, "acme", T0, T0 + timedelta(minutes=2))
    assert both.counts == {"succeeded": 2, "failed": 2} and sum(both.lag_buckets) == 3
    assert len(both.lag_buckets) == N_BUCKETS
    assert (await store.call(read_stats, "nobody", T0, T0 + timedelta(minutes=2))).counts == {}


def test_what_a_failed_flush_could_not_store_is_put_back() -> None:
    r = Rollup()
    r.result("acme", 0, "succeeded")
    r.lag("acme", 0, 5)
    counts, lags = r.take()
    r.result("acme", 0, "succeeded")
    r.put_back(counts, lags)
    counts, lags = r.take()
    assert [(c.status, c.count) for c in counts] == [("succeeded", 2)] and sum(lags[0].buckets) == 1
