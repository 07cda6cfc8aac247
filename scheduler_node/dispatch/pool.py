"""Keep-alive connections per origin (scheme, host, port), with the origin's in-flight cap.

Rules:
- One ``trio.CapacityLimiter`` per origin is both the in-flight cap (default 256, DESIGN.md §5: a slow host
  cannot take every socket) and the connection cap: HTTP/1.1 carries one exchange per connection, so a
  holder of a token needs at most one connection, and open connections (busy + idle) stay <= the cap. A
  connection released while the origin is over its cap (prewarm raced a burst) is closed, not kept.
- Idle connections are reused LIFO: the most recently used socket is the one least likely to have been
  closed by the server's keep-alive timeout, and the cold ones at the bottom age out (``idle_timeout_s``,
  swept at most once a second from ``acquire``).
- Before reuse every idle connection gets ``Connection.looks_stale()`` (one ``poll(0)``); a stale one is
  closed and the next is tried, so a server that closed a kept-alive socket while it sat idle never costs a
  request. This is the only recovery here; what happens when a kept-alive socket dies *during* the exchange
  is ``dispatcher.py``'s stale rule (a resend only under AT_LEAST_ONCE).
- ``prewarm(origin, n)`` opens connections ahead of a burst, so the second strikes on open sockets (TCP and
  TLS handshakes off the critical path). It opens only what is missing up to min(n, cap) and returns how many
  it opened; connect failures are not raised (the sends will report them with full detail).
- No background task: sweeping is piggy-backed on ``acquire``; ``aclose()`` closes idle connections and marks
  the pool closed so busy ones are closed when released.

Example::

    pool = ConnectionPool(max_per_origin=100, ssl_context=None, connect_timeout_s=5, idle_timeout_s=60)
    await pool.prewarm(HttpOrigin("http", "127.0.0.1", 8080), 100)   # -> 100
    op = pool.get(origin); op.limiter.acquire_nowait()
    conn = await pool.acquire(op)          # an idle connection, or a new one
    ... exchange ...
    pool.release(conn, reusable=conn.keep_alive); op.limiter.release()
"""

from __future__ import annotations

import ssl
from collections import deque
from dataclasses import dataclass

import trio

from .connection import ConnectError, Connection
from .request import HttpOrigin

__all__ = ["ConnectionPool", "OriginPool", "OriginStatistics"]

_SWEEP_EVERY_S = 1.0


@dataclass(frozen=True, slots=True)
class OriginStatistics:
    open: int  # busy + idle + connecting
    idle: int
    in_flight: int  # tokens of the origin's cap held by sends
    waiting: int  # sends queued for a token
    limit: int


class OriginPool:
    """The per-origin part of the pool: its cap, its idle stack, its open count."""

    __slots__ = ("idle", "limiter", "open", "origin")

    def __init__(self, origin: HttpOrigin, limit: int) -> None:
        self.origin = origin
        self.limiter = trio.CapacityLimiter(limit)
        self.idle: deque[Connection] = deque()  # right end = most recently used
        self.open = 0

    def statistics(self) -> OriginStatistics:
        s = self.limiter.statistics()
        return OriginStatistics(
            open=self.open,
            idle=len(self.idle),
            in_flight=s.borrowed_tokens,
            waiting=s.tasks_waiting,
            limit=int(s.total_tokens),
        )

    def unused(self) -> bool:
        s = self.limiter.statistics()
        return self.open == 0 and s.borrowed_tokens == 0 and s.tasks_waiting == 0


class ConnectionPool:
    def __init__(
        self,
        *,
        max_per_origin: int,
        ssl_context: ssl.SSLContext | None,
        connect_timeout_s: float,
        idle_timeout_s: float,
    ) -> None:
        self.max_per_origin = max_per_origin
        self._ssl_context = ssl_context
        self._connect_timeout_s = connect_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._origins: dict[HttpOrigin, OriginPool] = {}
        self._closed = False
        self._last_sweep = 0.0
        self.opened = 0  # connections opened over the pool's life
        self.stale_closed = 0  # idle connections found closed by the server before reuse
        self.reused = 0  # acquisitions served by a kept-alive connection

    @property
    def closed(self) -> bool:
        return self._closed

    def get(self, origin: HttpOrigin) -> OriginPool:
        """The origin's pool (made on first use). Sync: take its limiter token before any checkpoint."""
        op = self._origins.get(origin)
        if op is None:
            op = self._origins[origin] = OriginPool(origin, self.max_per_origin)
        return op

    async def _open(self, op: OriginPool) -> Connection:
        op.open += 1  # counted while connecting, so prewarm and sends see it
        try:
            with trio.move_on_after(self._connect_timeout_s):
                conn = await Connection.open(op.origin, ssl_context=self._ssl_context)
                if self._closed:
                    conn.close()
                    raise trio.ClosedResourceError("the dispatcher is closed")
                self.opened += 1
                return conn
        except BaseException:
            op.open -= 1
            raise
        op.open -= 1
        raise ConnectError(
            f"connect to {op.origin} timed out after {self._connect_timeout_s:g} s", timed_out=True
        )

    async def acquire(self, op: OriginPool, *, fresh: bool = False) -> Connection:
        """A connection to ``op.origin`` for one exchange; the caller holds a token of ``op.limiter``.

        Reuses the most recent idle connection that does not look stale unless ``fresh``; else connects
        (``ConnectError`` on failure or after ``connect_timeout_s``). Reuse does not checkpoint: the exchange
        that follows does.
        """
        if self._closed:
            raise trio.ClosedResourceError("the dispatcher is closed")
        now = trio.current_time()
        if now - self._last_sweep >= _SWEEP_EVERY_S:
            self._sweep(now)
        if not fresh:
            idle = op.idle
            while idle:
                conn = idle.pop()
                if conn.looks_stale():
                    self.stale_closed += 1
                    self._drop(op, conn)
                    continue
                self.reused += 1
                return conn
        return await self._open(op)

    def release(self, conn: Connection, *, reusable: bool) -> None:
        """Give a connection back after an exchange: kept idle if ``reusable`` and there is room, else closed."""
        op = self._origins[conn.origin]
        if reusable and not conn.closed and not self._closed and op.open <= op.limiter.total_tokens:
            conn.idle_since = trio.current_time()
            op.idle.append(conn)
        else:
            self._drop(op, conn)

    def discard(self, conn: Connection) -> None:
        """Close a connection in an unknown state (cancelled, timed out, failed mid-exchange)."""
        self._drop(self._origins[conn.origin], conn)

    def _drop(self, op: OriginPool, conn: Connection) -> None:
        conn.close()
        op.open -= 1

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        horizon = now - self._idle_timeout_s
        empty = []
        for origin, op in self._origins.items():
            idle = op.idle
            while idle and idle[0].idle_since < horizon:
                self._drop(op, idle.popleft())
            if op.unused():
                empty.append(origin)
        for origin in empty:
            del self._origins[origin]

    async def prewarm(self, origin: HttpOrigin, n: int) -> int:
        """Open connections to ``origin`` until min(n, cap) are open; returns how many were opened."""
        if self._closed:
            raise trio.ClosedResourceError("the dispatcher is closed")
        op = self.get(origin)
        missing = min(n, self.max_per_origin) - op.open
        opened = 0

        async def open_one() -> None:
            nonlocal opened
            try:
                conn = await self._open(op)
            except ConnectError:
                return
            opened += 1
            self.release(conn, reusable=True)

        if missing > 0:
            async with trio.open_nursery() as nursery:
                for _ in range(missing):
                    nursery.start_soon(open_one)
        else:
            await trio.lowlevel.checkpoint()
        return opened

    def statistics(self) -> dict[HttpOrigin, OriginStatistics]:
        return {origin: op.statistics() for origin, op in self._origins.items()}

    async def aclose(self) -> None:
        """Close idle connections now; busy ones close when released. Idempotent."""
        self._closed = True
        for op in self._origins.values():
            while op.idle:
                self._drop(op, op.idle.pop())
        await trio.lowlevel.checkpoint()
