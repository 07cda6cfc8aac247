"""The batched writer: results go to PostgreSQL in batches, one statement per batch, with back-pressure.

Rules:
- At most ``max_pending`` items wait unwritten: ``put(item)`` waits for room (a slow database slows the
  producers down instead of growing memory without bound). ``put_nowait(item)`` never blocks nor refuses, for
  callers that cannot wait (the engine records an outcome in the middle of a burst); they bound the backlog
  by waiting for ``room()`` before taking on new work (the engine's claimer does: no claim while the
  results of earlier ones cannot be written).
- An item counts from the moment ``put`` is called, so ``flush()`` also waits for puts still waiting for
  room: a shutdown's flush leaves nothing unwritten.
- A batch is written when ``max_batch`` items are waiting or ``max_delay_s`` after its first item arrived,
  whichever comes first, so a burst of 5,000 results is a handful of statements and a lone result waits
  at most a few milliseconds. With ``quiet_s``, a batch is also written once no item arrived for that long:
  the node's results then go out just after a second's burst of responses rather than in the middle of it
  (encoding a batch holds the node's one thread for milliseconds, and the burst's last sends would wait).
- A batch whose write finds PostgreSQL unavailable (``DatabaseUnavailable``) is retried (same items, the
  pause of ``store_health.py``: 0.1 s doubling to 2 s);
  nothing is dropped while the writer runs. ``flush()`` returns once everything put before it is written;
  closing (leaving ``run``) drains what is queued first.
- The write function returns the fences it found stale, ``(shard, epoch)`` pairs; each goes to ``on_fenced``
  (that ownership of the shard is gone; a newer one of the same node may already stand).

Example: ``Writer(write_batch, on_fenced=lose, max_batch=2000, max_delay_s=0.005)`` run in the node's
nursery; the firing path calls ``await writer.put(result)``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Generic, TypeVar

import trio

from protocol.errors import DatabaseUnavailable

from .store_health import StoreHealth

__all__ = ["Writer"]

T = TypeVar("T")
log = logging.getLogger(__name__)


class Writer(Generic[T]):
    def __init__(
        self,
        write_batch: Callable[[list[T]], Awaitable[Iterable[tuple[int, int]]]],
        *,
        on_fenced: Callable[[tuple[int, int]], None],
        health: StoreHealth | None = None,
        max_batch: int = 2_000,
        max_delay_s: float = 0.005,
        max_pending: int = 50_000,
        quiet_s: float | None = None,
        name: str = "writer",
    ) -> None:
        self._write = write_batch
        self._on_fenced = on_fenced
        self.health = health or StoreHealth()
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.quiet_s = quiet_s
        self.name = name
        self.max_pending = max_pending
        self._send, self._receive = trio.open_memory_channel[T](math.inf)  # bounded by room()
        self._put_count = 0  # accepted: queued, in the batch being written, or in a put waiting for room
        self._waiting = 0  # puts waiting for room
        self._written_count = 0
        self._progress = trio.Event()
        self.batches = 0
        self.last_batch_size = 0
        self.on_batch: Callable[[int, float], None] | None = None  # (rows, seconds), for metrics

    async def put(self, item: T) -> None:
        self._put_count += 1
        self._waiting += 1
        try:
            await self.room()
        except BaseException:
            self._put_count -= 1  # cancelled while waiting: never accepted
            raise
        finally:
            self._waiting -= 1
        self._send.send_nowait(item)

    def put_nowait(self, item: T) -> None:
        """Accept ``item`` now, whatever the backlog (see the module's rules)."""
        self._put_count += 1
        self._send.send_nowait(item)

    async def room(self) -> bool:
        """Return once fewer than ``max_pending`` items wait to be written: True if that took a wait."""
        waited = False
        while self._put_count - self._waiting - self._written_count >= self.max_pending:
            waited = True
            await self._progress.wait()
        return waited

    async def flush(self) -> None:
        """Return once everything put before this call is written."""
        target = self._put_count
        while self._written_count < min(target, self._put_count):  # a cancelled put lowers the count
            await self._progress.wait()

    def pending(self) -> int:
        """Items accepted and not yet written (for metrics)."""
        return self._put_count - self._written_count

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        receive = self._receive
        try:
            while True:
                try:
                    first = await receive.receive()
                except trio.EndOfChannel:
                    return
                batch = [first]
                latest = trio.current_time() + self.max_delay_s
                while len(batch) < self.max_batch:
                    try:
                        batch.append(receive.receive_nowait())
                        continue
                    except trio.WouldBlock:
                        pass
                    except trio.EndOfChannel:
                        break
                    quiet = latest if self.quiet_s is None else trio.current_time() + self.quiet_s
                    with trio.move_on_at(min(latest, quiet)) as waited:
                        try:
                            batch.append(await receive.receive())
                        except trio.EndOfChannel:
                            break
                    if waited.cancelled_caught:
                        break
                with trio.CancelScope(shield=True):
                    await self._write_with_retry(batch)
        finally:
            self._progress.set()

    async def drain_and_close(self) -> None:
        """Stop accepting items; ``run`` returns once everything queued is written."""
        await self._send.aclose()

    async def _write_with_retry(self, batch: list[T]) -> None:
        """Until it is written: a PostgreSQL outage holds the batch (and, past ``max_pending``, the writer's
        callers), it never drops it."""
        while True:
            started = trio.current_time()
            try:
                fenced = await self._write(batch)
            except DatabaseUnavailable as e:
                await self.health.pause(self.name, e)
                continue
            break
        self.health.ok(self.name)
        self.batches += 1
        self.last_batch_size = len(batch)
        if self.on_batch is not None:
            self.on_batch(len(batch), trio.current_time() - started)
        for fence in fenced:
            self._on_fenced(fence)
        self._written_count += len(batch)
        self._progress.set()
        self._progress = trio.Event()
