"""Who owns each shard, as the control API routes writes: followed from etcd, never from PostgreSQL.

Rules:
- ``OwnerMap.follow`` reads the cluster view once and again after every change etcd's watch reports (the
  asyncio adapter coalesces them), so the map is at most one watch round-trip stale. Only live owners count:
  a shard key bound to the lease its node is registered with now (``ClusterView.live_owners``), with the
  node's advertised address.
- ``address_of(shard)`` answers from memory; ``wait_changed`` lets a writer that found an owner gone (a
  connection refused, a ``not-owner`` answer) wait for the next view rather than spin.
- A stale map costs a retry, never a wrong write: the node fences every write by its epoch, and a node that
  does not own the shard answers 409 ``not-owner``.
"""

from __future__ import annotations

import asyncio
import logging

from scheduler_node.coordination import AsyncioCoordinator, ClusterView

__all__ = ["OwnerMap"]

log = logging.getLogger(__name__)


class OwnerMap:
    def __init__(self) -> None:
        self.view: ClusterView | None = None
        self._addresses: dict[int, str] = {}
        self._changed = asyncio.Event()

    def address_of(self, shard: int) -> str | None:
        return self._addresses.get(shard)

    @property
    def known(self) -> bool:
        return self.view is not None

    async def wait_changed(self, timeout_s: float) -> None:
        """Return at the next view (or after ``timeout_s``)."""
        self._changed.clear()
        try:
            await asyncio.wait_for(self._changed.wait(), timeout_s)
        except TimeoutError:
            pass

    def apply(self, view: ClusterView) -> None:
        addresses = {}
        for shard, node in view.live_owners().items():
            info = view.nodes.get(node)
            if info is not None and info.address:
                addresses[shard] = info.address
        self.view, self._addresses = view, addresses
        self._changed.set()

    async def follow(self, coord: AsyncioCoordinator) -> None:
        """Keep the map current until cancelled (``known`` once the first view is in)."""
        while True:
            try:
                async with coord.changes() as changes:
                    async for _ in changes:
                        self.apply(await coord.snapshot())
            except asyncio.CancelledError:
                raise
            except Exception as e:  # etcd away: keep the last view, try again
                log.warning("following the shard owners failed (%s); retrying", e)
                await asyncio.sleep(1)
