"""``TrioCoordinator``: the etcd core for trio code (the scheduler node, the CLI).

Rules:
- Every core call runs in a worker thread (``trio.to_thread.run_sync``) under a ``CapacityLimiter`` so calls
  never pile up threads; lease calls have their own one-thread limiter so a keepalive never queues behind a
  slow snapshot. Each call is bounded by the core's timeout.
- Cancellation: reads, lease grants/renewals and status publishing are abandoned on cancel (the thread finishes
  on its own, the result is dropped: harmless, at worst conservative). Node, shard and admin writes and lease
  revocation are NOT abandoned: the caller must learn whether they happened, so cancelling waits for them (at
  most the timeout).
- ``grant_lease``/``keepalive`` return a ``LeaseAck`` whose ``sent_at`` is ``trio.current_time()`` read before
  the request was handed to the thread, so ``ack.valid_until(margin)`` = sent_at + ttl − margin is a safe bound
  on the lease's life in trio time (DESIGN.md §4; the core's docstring has the argument and measurements).
  ``InfrastructureError`` means no answer: keep the previous ``valid_until`` and retry. ``None`` means etcd
  answered that the lease is gone (expired, or revoked by someone): stop sending at once (``valid_until`` =
  -inf, every shard lost) and join again with a new lease.
- ``changes()`` bridges the core's watch (callbacks on pyetcd's thread) into trio with
  ``TrioToken.run_sync_soon`` — non-blocking, so a busy trio loop never stalls etcd's watch thread — and
  coalesces notices (see ``changes.py``). A callback arriving after the trio run ended is dropped
  (``RunFinishedError``), never raised on pyetcd's thread.

Example::

    async with TrioCoordinator.open(endpoint, KeyLayout("prod")) as coord:
        ack = await coord.grant_lease(5)
        valid_until = ack.valid_until(margin=1.0)
        async with coord.changes() as changes:
            async for notice in changes:               # the first one arrives at once (resync)
                view = await coord.snapshot()
                ...                                    # plan, acquire, release
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

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

__all__ = ["ChangeStream", "ChangeStreamStatistics", "TrioCoordinator"]

T = TypeVar("T")

# Status blobs change every few seconds on every node and never affect shard planning.
_PLANNING_KINDS = frozenset(KeyKind) - {KeyKind.STATUS}


@dataclass(frozen=True, slots=True)
class ChangeStreamStatistics:
    notices: int  # watch notices received from the core
    delivered: int  # coalesced notifications handed to the consumer
    watch_losses: int
    healthy: bool  # the watch is subscribed (False between a loss and its repair)


class ChangeStream:
    """Coalesced "something changed, re-read the snapshot" notifications; iterate with ``async for``."""

    def __init__(self) -> None:
        self._pending: ChangeNotice | None = None
        self._wakeup = trio.Event()
        self._closed = False
        self._notices = 0
        self._delivered = 0
        self._losses = 0
        self.healthy = True

    def _post(self, notice: WatchNotice) -> None:
        """In the trio thread (scheduled by ``run_sync_soon``)."""
        if self._closed:
            return
        self._notices += 1
        if isinstance(notice, WatchLost):
            self._losses += 1
            self.healthy = False
        elif isinstance(notice, WatchResumed):
            self.healthy = True
        self._pending = coalesce(self._pending, notice)
        if self._pending is not None:
            self._wakeup.set()

    def _close(self) -> None:
        self._closed = True
        self._wakeup.set()

    def statistics(self) -> ChangeStreamStatistics:
        return ChangeStreamStatistics(self._notices, self._delivered, self._losses, self.healthy)

    def __aiter__(self) -> ChangeStream:
        return self

    async def __anext__(self) -> ChangeNotice:
        await trio.lowlevel.checkpoint()
        while self._pending is None:
            if self._closed:
                raise StopAsyncIteration
            await self._wakeup.wait()
            self._wakeup = trio.Event()
        notice, self._pending = self._pending, None
        self._delivered += 1
        return notice


class TrioCoordinator:
    """The core's calls as trio coroutines. ``core`` stays reachable for sync code in threads."""

    def __init__(self, core: EtcdCoordinator, *, max_threads: int = 4) -> None:
        self.core = core
        self._limiter = trio.CapacityLimiter(max_threads)
        self._lease_limiter = trio.CapacityLimiter(1)

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
    ) -> AsyncIterator[TrioCoordinator]:
        # No I/O here: gRPC connects on first use.
        core = EtcdCoordinator(endpoints, layout, timeout=timeout, tls=tls)
        try:
            yield cls(core, max_threads=max_threads)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(core.close)

    async def _call(
        self,
        fn: Callable[..., T],
        *args: Any,
        abandon: bool,
        limiter: trio.CapacityLimiter | None = None,
        **kwargs: Any,
    ) -> T:
        return await trio.to_thread.run_sync(
            functools.partial(fn, *args, **kwargs),
            abandon_on_cancel=abandon,
            limiter=limiter or self._limiter,
        )

    # -- leases ----------------------------------------------------------------------------------------------

    async def grant_lease(self, ttl_s: int) -> LeaseAck:
        sent_at = trio.current_time()  # before the request leaves: see the module docstring
        granted = await self._call(self.core.grant_lease, ttl_s, abandon=True, limiter=self._lease_limiter)
        return LeaseAck(granted.lease_id, granted.ttl, sent_at)

    async def keepalive(self, lease_id: int) -> LeaseAck | None:
        sent_at = trio.current_time()
        ttl = await self._call(self.core.keepalive, lease_id, abandon=True, limiter=self._lease_limiter)
        return None if ttl is None else LeaseAck(lease_id, ttl, sent_at)

    async def lease_ttl(self, lease_id: int) -> int | None:
        return await self._call(self.core.lease_ttl, lease_id, abandon=True, limiter=self._lease_limiter)

    async def revoke(self, lease_id: int) -> bool:
        return await self._call(self.core.revoke, lease_id, abandon=False, limiter=self._lease_limiter)

    # -- node and shard keys ---------------------------------------------------------------------------------

    async def register_node(self, info: NodeInfo, lease_id: int) -> int:
        return await self._call(self.core.register_node, info, lease_id, abandon=False)

    async def publish_status(self, node_id: str, blob: bytes, lease_id: int) -> None:
        await self._call(self.core.publish_status, node_id, blob, lease_id, abandon=True)

    async def try_acquire_shard(self, shard: int, node_id: str, lease_id: int, epoch: int = 0) -> bool:
        return await self._call(self.core.try_acquire_shard, shard, node_id, lease_id, epoch, abandon=False)

    async def set_shard_epoch(self, shard: int, node_id: str, epoch: int, lease_id: int) -> bool:
        return await self._call(self.core.set_shard_epoch, shard, node_id, epoch, lease_id, abandon=False)

    async def release_shard(self, shard: int, node_id: str) -> bool:
        return await self._call(self.core.release_shard, shard, node_id, abandon=False)

    # -- reads and admin marks -------------------------------------------------------------------------------

    async def snapshot(self) -> ClusterView:
        return await self._call(self.core.snapshot, abandon=True)

    async def drain(self, node_id: str, actor: str = "") -> int:
        return await self._call(self.core.drain, node_id, actor, abandon=False)

    async def undrain(self, node_id: str) -> int:
        return await self._call(self.core.undrain, node_id, abandon=False)

    async def pin(self, shard: int, node_id: str) -> int:
        return await self._call(self.core.pin, shard, node_id, abandon=False)

    async def unpin(self, shard: int) -> int:
        return await self._call(self.core.unpin, shard, abandon=False)

    async def pause_rebalancing(self, actor: str = "") -> int:
        return await self._call(self.core.pause_rebalancing, actor, abandon=False)

    async def resume_rebalancing(self) -> int:
        return await self._call(self.core.resume_rebalancing, abandon=False)

    async def request_rebalance(self, actor: str = "") -> int:
        return await self._call(self.core.request_rebalance, actor, abandon=False)

    # -- watch -----------------------------------------------------------------------------------------------

    @asynccontextmanager
    async def changes(
        self, *, include_status: bool = False, start_revision: int | None = None
    ) -> AsyncIterator[ChangeStream]:
        """Coalesced change notifications while the block runs; the first one (a resync) is already pending.

        Status blobs are left out unless ``include_status`` (they change every few seconds and never matter
        for shard planning). Raises ``InfrastructureError`` if the watch cannot be created."""
        stream = ChangeStream()
        token = trio.lowlevel.current_trio_token()

        def on_notice(notice: WatchNotice) -> None:  # on pyetcd's watch thread or the keeper thread
            try:
                token.run_sync_soon(stream._post, notice)
            except trio.RunFinishedError:
                pass  # the trio run is over: nobody is listening any more

        kinds = None if include_status else _PLANNING_KINDS
        handle = await self._call(
            self.core.watch, on_notice, abandon=False, start_revision=start_revision, kinds=kinds
        )
        stream._post(START)
        try:
            yield stream
        finally:
            stream._close()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(handle.cancel)  # bounded: joins the keeper within the timeout
