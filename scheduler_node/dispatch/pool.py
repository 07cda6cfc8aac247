"""Per-origin state of the dispatcher: the origin's cap, its kept-alive idle connections, its queue.

Rules:
- One ``OriginPool`` per origin (scheme, host, port). ``limit`` (default 256, DESIGN.md §5: a slow host cannot
  take every socket) caps both the exchanges in flight and the open connections: HTTP/1.1 carries one
  exchange per connection, so open connections (busy + idle + connecting) stay <= the cap.
- Idle connections are reused LIFO: the most recently used socket is the one least likely to have been closed
  by the server's keep-alive timeout, and the cold ones at the left end age out (``idle_timeout_s``).
- ``take_idle`` runs ``Connection.looks_stale()`` (one ``poll(0)``) on each candidate: a server that closed a
  kept-alive socket while it sat idle never costs a request. What happens when a kept-alive socket dies
  *during* an exchange is ``dispatcher.py``'s stale rule.
- ``queue`` holds exchanges waiting for a connection (or for the node-wide cap), oldest first. Exchanges that
  ended while queued (timeout, cancel) stay in it until popped; ``waiting`` counts only the live ones.
- Idle connections stay in the dispatcher's epoll set (no syscall to leave and rejoin it per exchange); one the
  server closes while idle is noticed there and closed at once. ``forget`` takes a connection out of that set
  before the pool closes it.
- Accounting goes through methods, never by hand: ``reserve()`` counts a connection about to be opened (so
  the cap sees it while it connects), ``release()`` uncounts one that failed to open or was closed;
  ``enqueue``/``hold``/``unhold``/``drop_waiting`` move an exchange between waiting, holding a slot, and gone.
- Plain bookkeeping, no I/O besides the stale check and closing; the dispatcher drives it. It knows nothing of
  an exchange but that it is queued (``X``), so it imports neither the exchange nor the dispatcher.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from .connection import Connection
from .request import HttpOrigin

X = TypeVar("X")

__all__ = ["OriginPool", "OriginStatistics"]


@dataclass(frozen=True, slots=True)
class OriginStatistics:
    open: int  # busy + idle + connecting
    idle: int
    in_flight: int  # exchanges holding a slot of the origin (connecting or on a connection)
    waiting: int  # exchanges queued for a connection
    limit: int


class OriginPool(Generic[X]):
    __slots__ = (
        "_forget",
        "busy",
        "idle",
        "limit",
        "open",
        "origin",
        "queue",
        "stale_closed",
        "starved",
        "waiting",
    )

    def __init__(self, origin: HttpOrigin, limit: int, forget: Callable[[Connection[X]], None]) -> None:
        """``forget(conn)``: the dispatcher stops watching a connection about to be closed."""
        self._forget = forget
        self.origin = origin
        self.limit = limit
        self.idle: deque[Connection[X]] = deque()  # right end = most recently used
        self.queue: deque[X] = deque()
        self.open = 0  # connections open or being opened
        self.busy = 0  # exchanges holding a slot
        self.waiting = 0  # live exchanges in ``queue``
        self.starved = False  # queued behind the node-wide cap, listed in the dispatcher's starved origins
        self.stale_closed = 0

    @property
    def full(self) -> bool:
        """No connection may be opened: the cap counts those open and those being opened."""
        return self.open >= self.limit

    def reserve(self) -> None:
        """A connection is about to be opened: count it now, so the cap sees it while it connects."""
        self.open += 1

    def release(self) -> None:
        """A reserved connection failed to open, or an open one was closed."""
        self.open -= 1

    def enqueue(self, ex: X) -> None:
        self.queue.append(ex)
        self.waiting += 1

    def hold(self) -> None:
        """A queued exchange took a slot (it connects, or is on a connection)."""
        self.waiting -= 1
        self.busy += 1

    def unhold(self) -> None:
        """An exchange holding a slot ended."""
        self.busy -= 1

    def drop_waiting(self) -> None:
        """A queued exchange ended before it took a slot; it stays in ``queue`` until popped."""
        self.waiting -= 1

    def take_idle(self) -> Connection[X] | None:
        """The most recent idle connection that does not look stale (stale ones are closed and uncounted)."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.looks_stale():
                return conn
            self.stale_closed += 1
            self.close(conn)
        return None

    def close(self, conn: Connection[X]) -> None:
        """Close a connection of this origin (not in ``idle`` any more) and uncount it."""
        self._forget(conn)
        conn.close()
        self.release()

    def sweep(self, older_than: float) -> None:
        """Close idle connections unused since before ``older_than`` (trio time)."""
        idle = self.idle
        while idle and idle[0].idle_since < older_than:
            self.close(idle.popleft())

    def close_idle(self) -> None:
        while self.idle:
            self.close(self.idle.pop())

    def unused(self) -> bool:
        return self.open == 0 and self.busy == 0 and self.waiting == 0

    def statistics(self) -> OriginStatistics:
        return OriginStatistics(self.open, len(self.idle), self.busy, self.waiting, self.limit)
