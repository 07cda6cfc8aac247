"""The trio adapter against a real etcd: calls on threads, LeaseAck timing, coalesced change notifications, and
watch callbacks that arrive after the trio run has ended."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pytest
import trio

from scheduler_node.coordination import (
    EtcdCoordinator,
    KeyLayout,
    LeaseNotFound,
    NodeInfo,
    WatchHandle,
    WatchNotice,
)
from scheduler_node.coordination.trio_adapter import TrioCoordinator
from shardwheel.embedded import EmbeddedEtcd

from .conftest import TTL_S


async def test_lease_ack_gives_valid_until(coord: EtcdCoordinator) -> None:
    tc = TrioCoordinator(coord)
    before = trio.current_time()
    granted = await tc.grant_lease(TTL_S)
    assert before <= granted.sent_at <= trio.current_time()
    ack = await tc.keepalive(granted.lease_id)
    assert ack is not None and ack.ttl == granted.ttl and ack.sent_at >= granted.sent_at
    assert ack.valid_until(margin=1.0) == ack.sent_at + ack.ttl - 1.0
    assert await tc.lease_ttl(granted.lease_id) is not None
    assert await tc.revoke(granted.lease_id)
    assert await tc.keepalive(granted.lease_id) is None
    assert await tc.lease_ttl(granted.lease_id) is None
    with pytest.raises(LeaseNotFound):
        await tc.try_acquire_shard(1, "n1", granted.lease_id)


async def test_node_lifecycle_through_trio(coord: EtcdCoordinator) -> None:
    tc = TrioCoordinator(coord)
    lease = (await tc.grant_lease(10)).lease_id
    await tc.register_node(NodeInfo("n1", "http://h:1", time.time(), shards_hint=2), lease)
    assert await tc.try_acquire_shard(4, "n1", lease)
    assert await tc.set_shard_epoch(4, "n1", 12, lease)
    await tc.publish_status("n1", b'{"drift_p99_ms":4}', lease)
    await tc.drain("n1")
    await tc.pin(4, "n1")
    await tc.pause_rebalancing()
    rebalance = await tc.request_rebalance()
    view = await tc.snapshot()
    assert view.nodes["n1"].shards_hint == 2 and view.owners[4].epoch == 12
    assert view.drained == {"n1"} and dict(view.pins) == {4: "n1"} and view.paused
    assert view.rebalance_revision == rebalance and view.status["n1"] == b'{"drift_p99_ms":4}'
    await tc.undrain("n1")
    await tc.unpin(4)
    await tc.resume_rebalancing()
    assert await tc.release_shard(4, "n1")
    view = await tc.snapshot()
    assert not view.owners and not view.drained and not view.pins and not view.paused
    await tc.revoke(lease)


async def test_changes_notify_within_a_bound_and_coalesce(coord: EtcdCoordinator) -> None:
    tc = TrioCoordinator(coord)
    lease = (await tc.grant_lease(10)).lease_id
    async with tc.changes() as changes:
        with trio.fail_after(1):
            first = await changes.__anext__()
        assert first.resync  # read the first snapshot now: the watch already exists

        rev = await tc.drain("n1")
        with trio.fail_after(5):
            notice = await changes.__anext__()
        assert notice.revision == rev and not notice.resync

        await tc.publish_status("n1", b"{}", lease)  # status blobs do not wake the planner
        with trio.move_on_after(0.5) as idle:
            await changes.__anext__()
        assert idle.cancelled_caught

        # Many changes while the consumer is busy: one notification carries them all.
        last = 0
        for shard in range(20):
            last = await tc.pin(shard, "n1")
        with trio.fail_after(5):
            while (notice := await changes.__anext__()).revision < last:
                pass
        stats = changes.statistics()
        assert stats.delivered < stats.notices and stats.healthy and stats.watch_losses == 0
    await tc.revoke(lease)


async def test_status_changes_when_asked(coord: EtcdCoordinator) -> None:
    tc = TrioCoordinator(coord)
    lease = (await tc.grant_lease(10)).lease_id
    async with tc.changes(include_status=True) as changes:
        await changes.__anext__()
        await tc.publish_status("n1", b"{}", lease)
        with trio.fail_after(5):
            assert (await changes.__anext__()).revision > 0
    await tc.revoke(lease)


async def test_open_owns_the_core(etcd_server: EmbeddedEtcd, layout: KeyLayout) -> None:
    async with TrioCoordinator.open(etcd_server.endpoint, layout, timeout=1.0) as tc:
        assert (await tc.snapshot()).revision > 0
        async with tc.changes() as changes:
            await changes.__anext__()
    # Leaving the block closed the stream: iteration ends instead of hanging.
    with trio.fail_after(1):
        assert [n async for n in changes] == []


def test_watch_callback_after_the_run_ended_is_harmless(
    coord: EtcdCoordinator, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Keep the watch alive past ``trio.run`` (its cancel is suppressed), then change a key: the bridge's
    ``run_sync_soon`` meets a finished run and must swallow ``RunFinishedError`` on pyetcd's thread."""
    handles: list[WatchHandle] = []
    delivered = threading.Event()
    real_watch = coord.watch

    class Kept:
        active = True

        def cancel(self) -> None:  # leave the real watch running after the trio run
            pass

    def keep_watch(callback: Callable[[WatchNotice], None], **kwargs: object) -> WatchHandle:
        def counting(notice: WatchNotice) -> None:
            callback(notice)  # raises out of here if the bridge does not swallow RunFinishedError
            delivered.set()

        handles.append(real_watch(counting, **kwargs))  # type: ignore[arg-type]
        return Kept()

    monkeypatch.setattr(coord, "watch", keep_watch)

    async def main() -> None:
        async with TrioCoordinator(coord).changes() as changes:
            await changes.__anext__()

    caplog.set_level(logging.ERROR)
    trio.run(main)
    try:
        coord.drain("late")
        assert delivered.wait(5), "the watch callback never ran"
        assert not [r for r in caplog.records if r.name.startswith("scheduler_node.coordination")]
    finally:
        for h in handles:
            h.cancel()
