"""``AsyncioCoordinator``: the etcd core for asyncio code (the control API: snapshots, admin writes, watches).

Rules:
- Every core call runs on the adapter's own thread pool (``max_threads`` workers, so calls never pile up
  threads); each is bounded by the core's timeout. Cancelling the awaiting task does not stop the thread: the
  call completes (or times out) and its result is dropped, so await admin writes to the end if you need to
  know their outcome.
- ``grant_lease``/``keepalive`` return a ``LeaseAck`` stamped with ``loop.time()`` read before the request was
  handed to the pool (same reasoning as the trio adapter); the control API holds no lease, this is for parity.
- ``changes()`` bridges watch callbacks into the loop with ``loop.call_soon_threadsafe`` and coalesces them
  (``changes.py``); a callback after the loop closed is dropped, never raised on pyetcd's thread.

Example::

    async with AsyncioCoordinator.open(endpoint, KeyLayout("prod")) as coord:
        await coord.drain("n3")
        async with coord.changes() as changes:
            async for notice in changes:
                owners = (await coord.snapshot()).owners   # the API's owner cache
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from .changes import START, ChangeNotice, coalesce
from .core import (
    DEFAULT_TIMEOUT_S,
    EtcdCoordinator,
    EtcdTls,
    LeaseAck,
    WatchLost,
    WatchNotice,
    WatchResumed,
)
from .keys import KeyKind, KeyLayout
from .records import NodeInfo
from .view import ClusterView

__all__ = ["AsyncioChangeStream", "AsyncioCoordinator"]

T = TypeVar("T")

_PLANNING_KINDS = frozenset(KeyKind) - {KeyKind.STATUS}


class AsyncioChangeStream:
    """Coalesced "something changed, re-read the snapshot" notifications; iterate with ``async for``."""

    def __init__(self) -> None:
        self._pending: ChangeNotice | None = None
        self._wakeup = asyncio.Event()
        self._closed = False
        self.healthy = True
        self.watch_losses = 0

    def _post(self, notice: WatchNotice) -> None:
        """On the loop (scheduled by ``call_soon_threadsafe``)."""
        if self._closed:
            return
        if isinstance(notice, WatchLost):
            self.watch_losses += 1
            self.healthy = False
        elif isinstance(notice, WatchResumed):
            self.healthy = True
        self._pending = coalesce(self._pending, notice)
        if self._pending is not None:
            self._wakeup.set()

    def _close(self) -> None:
        self._closed = True
        self._wakeup.set()

    def __aiter__(self) -> AsyncioChangeStream:
        return self

    async def __anext__(self) -> ChangeNotice:
        while self._pending is None:
            if self._closed:
                raise StopAsyncIteration
            await self._wakeup.wait()
            self._wakeup.clear()
        notice, self._pending = self._pending, None
        await asyncio.sleep(0)  # always yield to the loop, like a trio checkpoint
        return notice


class AsyncioCoordinator:
    """The core's calls as asyncio coroutines."""

    def __init__(self, core: EtcdCoordinator, *, max_threads: int = 4) -> None:
        self.core = core
        self._pool = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="coordination")

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        endpoints: str | Sequence[str],
        layout: KeyLayout,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_threads: int = 4,
        tls: EtcdTls | None = None,
    ) -> AsyncIterator[AsyncioCoordinator]:
        coord = cls(EtcdCoordinator(endpoints, layout, timeout=timeout, tls=tls), max_threads=max_threads)
        try:
            yield coord
        finally:
            await coord.aclose()

    async def aclose(self) -> None:
        """Close the core (stops watches) and the pool."""
        await asyncio.get_running_loop().run_in_executor(None, self.core.close)
        self._pool.shutdown(wait=False)

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    # -- leases ----------------------------------------------------------------------------------------------

    async def grant_lease(self, ttl_s: int) -> LeaseAck:
        sent_at = asyncio.get_running_loop().time()
        granted = await self._call(self.core.grant_lease, ttl_s)
        return LeaseAck(granted.lease_id, granted.ttl, sent_at)

    async def keepalive(self, lease_id: int) -> LeaseAck | None:
        sent_at = asyncio.get_running_loop().time()
        ttl = await self._call(self.core.keepalive, lease_id)
        return None if ttl is None else LeaseAck(lease_id, ttl, sent_at)

    async def lease_ttl(self, lease_id: int) -> int | None:
        return await self._call(self.core.lease_ttl, lease_id)

    async def revoke(self, lease_id: int) -> bool:
        return await self._call(self.core.revoke, lease_id)

    # -- node and shard keys ---------------------------------------------------------------------------------

    async def register_node(self, info: NodeInfo, lease_id: int) -> int:
        return await self._call(self.core.register_node, info, lease_id)

    async def publish_status(self, node_id: str, blob: bytes, lease_id: int) -> None:
        await self._call(self.core.publish_status, node_id, blob, lease_id)

    async def try_acquire_shard(self, shard: int, node_id: str, lease_id: int, epoch: int = 0) -> bool:
        return await self._call(self.core.try_acquire_shard, shard, node_id, lease_id, epoch)

    async def set_shard_epoch(self, shard: int, node_id: str, epoch: int, lease_id: int) -> bool:
        return await self._call(self.core.set_shard_epoch, shard, node_id, epoch, lease_id)

    async def release_shard(self, shard: int, node_id: str) -> bool:
        return await self._call(self.core.release_shard, shard, node_id)

    # -- reads and admin marks -------------------------------------------------------------------------------

    async def snapshot(self) -> ClusterView:
        return await self._call(self.core.snapshot)

    async def drain(self, node_id: str, actor: str = "") -> int:
        return await self._call(self.core.drain, node_id, actor)

    async def undrain(self, node_id: str) -> int:
        return await self._call(self.core.undrain, node_id)

    async def pin(self, shard: int, node_id: str) -> int:
        return await self._call(self.core.pin, shard, node_id)

    async def unpin(self, shard: int) -> int:
        return await self._call(self.core.unpin, shard)

    async def pause_rebalancing(self, actor: str = "") -> int:
        return await self._call(self.core.pause_rebalancing, actor)

    async def resume_rebalancing(self) -> int:
        return await self._call(self.core.resume_rebalancing)

    async def request_rebalance(self, actor: str = "") -> int:
        return await self._call(self.core.request_rebalance, actor)

    # -- watch -----------------------------------------------------------------------------------------------

    @asynccontextmanager
    async def changes(
        self, *, include_status: bool = False, start_revision: int | None = None
    ) -> AsyncIterator[AsyncioChangeStream]:
        """Coalesced change notifications while the block runs; the first one (a resync) is already pending."""
        stream = AsyncioChangeStream()
        loop = asyncio.get_running_loop()

        def on_notice(notice: WatchNotice) -> None:  # on pyetcd's watch thread or the keeper thread
            try:
                loop.call_soon_threadsafe(stream._post, notice)
            except RuntimeError:
                pass  # the loop is closed: nobody is listening any more

        kinds = None if include_status else _PLANNING_KINDS
        handle = await self._call(self.core.watch, on_notice, start_revision=start_revision, kinds=kinds)
        stream._post(START)
        try:
            yield stream
        finally:
            stream._close()
            # Shielded so a cancelled consumer still stops the watch (bounded by the core's timeout).
            await asyncio.shield(loop.run_in_executor(None, handle.cancel))
