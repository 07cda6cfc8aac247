from __future__ import annotations

import math

import pytest
import trio

from scheduler_node.ownership import Acquired, Lost, StaticOwnership, Validity, parse_shard_ranges


def test_parse_shard_ranges() -> None:
    assert parse_shard_ranges("0-3,7, 5", 256) == [0, 1, 2, 3, 5, 7]
    assert parse_shard_ranges("0-255", 256) == list(range(256))
    for bad, why in [("0-256", "outside"), ("5-2", "reversed"), ("a", "not a shard"), ("", "no shards")]:
        with pytest.raises(ValueError, match=why):
            parse_shard_ranges(bad, 256)


async def test_static_ownership_bumps_each_epoch_and_reports_loss() -> None:
    epochs = {1: 4, 2: 9}

    async def bump(shard: int) -> int:
        epochs[shard] += 1
        return epochs[shard]

    own = StaticOwnership([1, 2], bump)
    async with trio.open_nursery() as nursery:
        await nursery.start(own.run)
        assert [await own.events.receive(), await own.events.receive()] == [Acquired(1, 5), Acquired(2, 10)]
        assert own.grants()[1].epoch == 5 and own.valid_until() == math.inf
        own.lost(1)
        own.lost(1)  # reported once
        assert await own.events.receive() == Lost(1)
        assert set(own.grants()) == {2}
        with pytest.raises(trio.WouldBlock):
            own.events.receive_nowait()
        nursery.cancel_scope.cancel()


async def test_a_wait_for_validity_returns_only_once_the_lease_lies_ahead(
    autojump_clock: trio.testing.MockClock,
) -> None:
    validity = Validity()
    woke: list[float] = []

    async def waiter() -> None:
        await validity.wait()
        woke.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(5)
        validity.set(trio.current_time() - 1)  # a keepalive answered too late: still past
        await trio.sleep(5)
        assert woke == []
        validity.set(trio.current_time() + 3)
    assert woke == [10.0]
    await validity.wait()  # ahead: at once
    await trio.sleep(3)
    with trio.move_on_after(60) as waited:
        await validity.wait()  # it passed meanwhile, and nothing renews it
    assert waited.cancelled_caught


def test_metrics_render_and_quantiles() -> None:
    from scheduler_node.metrics import Metrics

    m = Metrics()
    m.results.inc(status="succeeded")
    m.results.inc(status="succeeded")
    for v in range(1, 101):
        m.dispatch_lag.record(v)
    m.dispatch_lag.record(-5)
    text = m.render()
    assert 'shardwheel_results_total{status="succeeded"} 2' in text
    assert "shardwheel_dispatch_lag_count 101" in text
    assert 98 <= m.dispatch_lag.quantile(0.99) <= 100 and m.dispatch_lag.early == 1
