"""The one bridge from the trio node to the asyncio store (``scheduler_node.store``).

asyncpg is asyncio-only, so the node runs an asyncio loop inside trio (trio-asyncio) and calls every store
coroutine through ``aio_as_trio``. That costs about 0.1 ms a call, which is why hot-path writes are batched.

Rules:
- ``TrioStore.open(dsn)`` owns the loop and the pool: both live exactly as long as the ``async with`` block,
  and the pool is closed (shielded from cancellation) before the loop goes away.
- ``await store.call(fn, *args)`` runs ``fn(pool, *args)``; ``await store.run(fn, *args)`` runs any asyncio
  coroutine function (a dedicated connection, say). Trio cancellation cancels the asyncio task, and asyncpg
  then cancels the query on the server.
- This is where the node classifies database errors (``store/errors.py``): a transient one (PostgreSQL
  unreachable, restarting, shutting down, a serialization failure...) comes out as ``DatabaseUnavailable``,
  which every loop of the node rides out; anything else is a bug and comes out as it is.
- A paused server (SIGSTOP, a frozen VM) raises nothing: statements just wait. ``stalled_for_s()`` says how
  long the oldest call in flight has waited, so the node can say it is degraded meanwhile.

Example::

    async with TrioStore.open(dsn) as store:
        epoch = await store.call(bump_epoch, shard, node_id)
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, ParamSpec, TypeVar

import asyncpg
import trio
import trio_asyncio

from protocol.errors import DatabaseUnavailable
from scheduler_node.store.errors import describe, is_transient
from scheduler_node.store.pool import create_pool

__all__ = ["TrioStore"]

P = ParamSpec("P")
T = TypeVar("T")


class TrioStore:
    def __init__(self, loop: trio_asyncio.TrioEventLoop, pool: asyncpg.Pool) -> None:
        self._loop = loop
        self.pool = pool
        self._started: dict[int, float] = {}  # call token -> trio time it began
        self._tokens = itertools.count()

    def stalled_for_s(self) -> float:
        """How long the oldest call in flight has been waiting for PostgreSQL (0 when none is)."""
        return trio.current_time() - min(self._started.values()) if self._started else 0.0

    @classmethod
    @asynccontextmanager
    async def open(cls, dsn: str, *, min_size: int = 1, max_size: int = 10) -> AsyncIterator[TrioStore]:
        async with trio_asyncio.open_loop() as loop:
            pool = await trio_asyncio.aio_as_trio(create_pool, loop=loop)(
                dsn, min_size=min_size, max_size=max_size
            )
            try:
                yield cls(loop, pool)
            finally:
                with trio.CancelScope(shield=True):
                    await trio_asyncio.aio_as_trio(pool.close, loop=loop)()

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """``await fn(pool, *args, **kwargs)`` on the asyncio side; ``DatabaseUnavailable`` if it failed
        transiently."""
        return await self.run(fn, self.pool, *args, **kwargs)

    async def run(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """``await fn(*args, **kwargs)`` on the asyncio side (no pool passed); errors as for ``call``."""
        token = next(self._tokens)
        self._started[token] = trio.current_time()
        try:
            result: T = await trio_asyncio.aio_as_trio(fn, loop=self._loop)(*args, **kwargs)
            return result
        except Exception as e:
            if is_transient(e):
                raise _unavailable(e) from e
            raise
        finally:
            del self._started[token]


def _unavailable(e: Exception) -> DatabaseUnavailable:
    return DatabaseUnavailable(f"PostgreSQL unavailable: {describe(e)}")
