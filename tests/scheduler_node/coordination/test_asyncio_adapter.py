"""The asyncio adapter (the control API's side) against a real etcd, run with ``asyncio.run`` in sync tests."""

from __future__ import annotations

import asyncio
import time

from scheduler_node.coordination import AsyncioCoordinator, KeyLayout, NodeInfo
from shardwheel.embedded import EmbeddedEtcd


def test_snapshot_admin_writes_and_changes(etcd_server: EmbeddedEtcd, layout: KeyLayout) -> None:
    async def main() -> None:
        async with AsyncioCoordinator.open(etcd_server.endpoint, layout, timeout=5.0) as coord:
            ack = await coord.grant_lease(10)
            assert ack.sent_at <= asyncio.get_running_loop().time()
            await coord.register_node(NodeInfo("n1", "http://h:1", time.time()), ack.lease_id)
            assert await coord.try_acquire_shard(3, "n1", ack.lease_id)
            async with coord.changes() as changes:
                async with asyncio.timeout(5):
                    assert (await anext(changes)).resync

                await coord.drain("n1")
                await coord.pin(3, "n1")
                paused = await coord.pause_rebalancing()
                async with asyncio.timeout(5):
                    while (await anext(changes)).revision < paused:
                        pass
                view = await coord.snapshot()
                assert view.drained == {"n1"} and dict(view.pins) == {3: "n1"} and view.paused
                assert view.owner_of(3) == "n1" and "n1" in view.nodes

                rebalance = await coord.request_rebalance()
                async with asyncio.timeout(5):
                    notice = await anext(changes)
                assert notice.revision == rebalance
                assert (await coord.snapshot()).rebalance_revision == rebalance

                await coord.undrain("n1")
                await coord.unpin(3)
                await coord.resume_rebalancing()
                assert await coord.release_shard(3, "n1")
                assert changes.healthy and changes.watch_losses == 0
            assert await coord.revoke(ack.lease_id)
            assert await coord.keepalive(ack.lease_id) is None
            view = await coord.snapshot()
            assert not view.nodes and not view.owners and not view.drained and not view.paused

    # A plain asyncio loop, as under uvicorn: once trio-asyncio has been used in this process its event loop
    # policy would make asyncio.run() build a trio-asyncio loop, which refuses foreign thread pools.
    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        runner.run(main())
