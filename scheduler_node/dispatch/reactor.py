"""The dispatcher's reactor: one task, a private epoll set, a deadline heap, and batched delivery of outcomes.

Rules:
- Every open connection's socket is in the epoll set (``watch``): EPOLLIN always (an idle one that turns
  readable was closed by the server), EPOLLOUT too while part of a request waits for the socket. ``forget``
  takes it out before it is closed. The set's own fd is what the task waits on, so a burst of ready sockets
  costs one trio wake-up, not one per socket.
- Per wake-up, in this order: every ready socket goes to ``on_ready(conn, mask)``; exchanges whose deadline
  passed go to ``on_expired(exchange)``; ``on_tick(now)`` (the dispatcher serves origins that waited for the
  node-wide cap and sweeps idle connections); finished exchanges queued with ``later`` get their ``on_done``.
- ``on_done`` is never called from inside ``submit`` or ``cancel``: ``later`` queues it and, outside the
  reactor, wakes the task, which delivers in a batch. Callbacks may queue more; delivery runs until none is
  left.
- Deadlines: one heap entry per exchange, never removed early (an ended exchange's entry is skipped when it
  comes up); ``compact`` drops the dead ones when they outnumber the live ones by far. The task sleeps until
  the earliest deadline, and ``add_deadline`` pulls its wake-up forward when a shorter one arrives.
- Linux only (epoll), like the deployment. No I/O besides epoll itself: the dispatcher's callbacks do the
  socket work.
"""

from __future__ import annotations

import heapq
import math
import select
from collections.abc import Callable

import trio

from .connection import Connection
from .exchange import Exchange, ExchangeState

__all__ = ["Reactor"]

_EPOLLIN, _EPOLLOUT = select.EPOLLIN, select.EPOLLOUT
_MAX_EVENTS = 1024
_DONE = ExchangeState.DONE


class Reactor:
    def __init__(
        self,
        on_ready: Callable[[Connection[Exchange], int], None],
        on_expired: Callable[[Exchange], None],
        on_tick: Callable[[float], None],
    ) -> None:
        self._on_ready = on_ready
        self._on_expired = on_expired
        self._on_tick = on_tick
        self.epoll = select.epoll()
        self.by_fd: dict[int, Connection[Exchange]] = {}
        self._deadlines: list[tuple[float, int, Exchange]] = []
        self._seq = 0
        self._later: list[Exchange] = []  # finished, ``on_done`` not yet called
        self._in_reactor = False
        self._wait_scope: trio.CancelScope | None = None

    # -- the epoll set -----------------------------------------------------------------------------------

    def watch(self, conn: Connection[Exchange]) -> None:
        """Watch ``conn`` for what it needs now: EPOLLIN, plus EPOLLOUT while its request is being written."""
        mask = _EPOLLIN | _EPOLLOUT if conn.writing else _EPOLLIN
        if conn.registered != mask:
            if conn.registered:
                self.epoll.modify(conn.fd, mask)
            else:
                self.epoll.register(conn.fd, mask)
                self.by_fd[conn.fd] = conn
            conn.registered = mask

    def forget(self, conn: Connection[Exchange]) -> None:
        if conn.registered:
            self.epoll.unregister(conn.fd)
            del self.by_fd[conn.fd]
            conn.registered = 0

    # -- deadlines and delivery --------------------------------------------------------------------------

    def add_deadline(self, ex: Exchange) -> None:
        self._seq += 1
        heapq.heappush(self._deadlines, (ex.deadline, self._seq, ex))
        scope = self._wait_scope
        if scope is not None and ex.deadline < scope.deadline:
            scope.deadline = ex.deadline

    def compact(self, live: int) -> None:
        """Drop ended exchanges' heap entries once they outnumber the ``live`` ones by far."""
        if len(self._deadlines) > 4096 and len(self._deadlines) > 4 * live:
            self._deadlines = [e for e in self._deadlines if e[2].state is not _DONE]
            heapq.heapify(self._deadlines)

    def later(self, ex: Exchange) -> None:
        """Queue ``ex``'s ``on_done`` for the reactor task (woken if it is waiting)."""
        self._later.append(ex)
        if not self._in_reactor and self._wait_scope is not None:
            self._wait_scope.cancel()

    def discard_later(self) -> None:
        self._later.clear()

    def _deliver(self) -> None:
        later = self._later
        while later:
            batch, self._later = later, []
            for ex in batch:
                on_done = ex.request.on_done
                assert on_done is not None
                on_done(ex)
            later = self._later

    def _expire(self, now: float) -> None:
        heap = self._deadlines
        while heap and heap[0][0] <= now:
            ex = heapq.heappop(heap)[2]
            if ex.state is not _DONE:
                self._on_expired(ex)

    # -- the task ----------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        epoll = self.epoll
        fd = epoll.fileno()
        by_fd = self.by_fd
        on_ready = self._on_ready
        task_status.started()
        while True:
            if not self._later:
                deadline = self._deadlines[0][0] if self._deadlines else math.inf
                with trio.CancelScope(deadline=deadline) as scope:
                    self._wait_scope = scope
                    await trio.lowlevel.wait_readable(fd)
                self._wait_scope = None
            else:
                await trio.lowlevel.checkpoint()
            self._in_reactor = True
            try:
                for ready, mask in epoll.poll(0, _MAX_EVENTS):
                    conn = by_fd.get(ready)
                    if conn is not None:
                        on_ready(conn, mask)
                now = trio.current_time()
                self._expire(now)
                self._on_tick(now)
                self._deliver()
            finally:
                self._in_reactor = False

    def close(self) -> None:
        self.epoll.close()
