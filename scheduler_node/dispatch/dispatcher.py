"""The dispatcher: sends jobs' HTTP requests at their second and says what came of each, from one reactor task.

The parts (no import cycle: request, outcome → connection → pool → exchange → stale, reactor → dispatcher):
``connection.py`` one HTTP/1.1 connection and its state table; ``pool.py`` per-origin accounting (cap, idle
connections, queue); ``exchange.py`` one attempt, its state table and outcome building; ``stale.py`` the
stale kept-alive decision table; ``reactor.py`` the task, the epoll set, the deadline heap and delivery. This
module joins them: it decides which exchange goes on which connection.

Rules:
- ``submit(SendRequest, context=...)`` is synchronous: it queues the exchange on its origin and, when a kept-alive
  connection is idle (or one may be opened), starts it at once: ``may_send()``, render the template, write
  it. It returns an ``Exchange``; the outcome arrives later through the request's ``on_done(exchange)``,
  always called from the reactor task (never inside ``submit`` or ``cancel``), in batches. ``send(...)`` is
  the awaitable form for callers that want one outcome (tests, alerts, tools).
- No task, cancel scope or limiter per request: at a burst a request costs one ``send`` and one ``recv``
  (a 5,000-request burst over 100 connections: p99 drift 88–150 ms across runs, 408–461 ms with a task per
  send; ``docs/bench.md``). Connecting (and the TLS handshake) runs in a short task per new connection.
- Caps: an exchange holds a slot of its origin's cap (default 256, also the connection cap) and one of the
  node-wide cap (default 10,000) from connecting or writing until its outcome (``exchange.py``: CONNECTING
  and ACTIVE); beyond them it waits in the origin's queue, oldest first. An origin blocked only by the
  node-wide cap is served as slots free up.
- ``may_send()`` runs right before the first byte would be written, after the connection is ready; False
  means nothing is written and the outcome is ``not_sent``. The node passes its lease check here
  (``valid_until``, DESIGN.md §4), so a node that lost its lease while queued stops at the last moment.
- ``timeout_s`` bounds the whole exchange: queueing, connecting (also bounded by ``connect_timeout_s``),
  writing and reading. Its expiry is ``timeout`` with ``bytes_written`` telling whether the request had
  started to go out. An exchange whose deadline passed while queued or connecting is never written late.
- ``cancel(exchange)`` (how the node implements concurrency=REPLACE) ends it as ``cancelled`` with
  ``bytes_written``; a connection with an exchange cut short (timeout, cancel, error) is closed; only a
  completely read response puts a connection back.
- A kept-alive connection that dies under an exchange: ``stale.py`` decides (fail, reopen, or resend once
  on a fresh connection — never for AT_MOST_ONCE). An idle one the server closes is dropped when the reactor
  sees it, or by ``looks_stale()`` before reuse; nothing was written on it, so that costs no request.
- Use it as ``async with Dispatcher() as d`` (the reactor lives in its nursery). ``aclose()`` ends what is
  still pending without calling ``on_done`` (``send`` callers get ``cancelled``) and closes every connection.
  Nothing is logged on the hot path.

Example::

    async with Dispatcher(per_host_limit=100) as d:
        template = RequestTemplate.for_job(job, node_id="node-a", signing_secret=secret)
        await d.prewarm(template.http_origin, 100)
        d.submit(SendRequest(template=template, scheduled_at_ms=slot_ms, attempt=1, origin="scheduled",
                             timeout_s=job.spec.timeout_ms / 1000, may_send=lambda: trio.current_time() < valid_until,
                             on_done=lambda ex: print(ex.context, ex.outcome.kind)), context=job.id)
        outcome = await d.send(SendRequest(template=template, scheduled_at_ms=slot_ms, attempt=1,
                                           origin="manual", timeout_s=10))
        outcome.kind, outcome.http_status      # (OutcomeKind.RESPONSE, 200)
"""

from __future__ import annotations

import contextlib
import dataclasses
import select
import ssl
import time
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import trio

from protocol.egress import EgressPolicy
from protocol.jobs import Semantics

from .connection import ConnectError, Connection, ConnState, ExchangeError
from .exchange import Exchange, ExchangeEvent, ExchangeState, SendRequest
from .outcome import Outcome, OutcomeKind
from .pool import OriginPool, OriginStatistics
from .reactor import Reactor
from .request import HttpOrigin
from .stale import StaleAction, StaleFacts, stale_action

__all__ = [
    "DEFAULT_NODE_LIMIT",
    "DEFAULT_PER_HOST_LIMIT",
    "Dispatcher",
    "DispatcherConfig",
    "DispatcherStatistics",
]

DEFAULT_PER_HOST_LIMIT = 256
DEFAULT_NODE_LIMIT = 10_000


@dataclass(frozen=True, slots=True)
class DispatcherConfig:
    """The dispatcher's settings, defined once (the node's config embeds it)."""

    per_host_limit: int = DEFAULT_PER_HOST_LIMIT  # exchanges in flight and connections open per origin
    node_limit: int = DEFAULT_NODE_LIMIT  # exchanges in flight on the node
    connect_timeout_s: float = 5.0
    idle_timeout_s: float = 60.0  # kept-alive connections unused this long are closed
    max_body_bytes: int = 1 << 20  # responses are read (and ``body_contains`` checked) this far
    resend_on_stale: bool = True  # the ``lost`` row of the stale rule (AT_LEAST_ONCE only)


_QUEUED, _CONNECTING, _ACTIVE, _DONE = ExchangeState
_TAKE, _OPEN, _END = ExchangeEvent
_IDLE, _CLOSED = ConnState.IDLE, ConnState.CLOSED
_AT_LEAST_ONCE = Semantics.AT_LEAST_ONCE
_EPOLLOUT = select.EPOLLOUT
_SWEEP_EVERY_S = 1.0
_NO_SCOPE = contextlib.nullcontext()


@dataclass(frozen=True, slots=True)
class DispatcherStatistics:
    in_flight: int  # exchanges holding a node-wide slot
    waiting: int  # exchanges queued for a connection or a slot
    node_limit: int
    open_connections: int
    connections_opened: int  # over the dispatcher's life
    connections_reused: int
    stale_closed: int  # kept-alive connections found closed by the server before anything went out on them
    resent: int  # requests written again after a kept-alive connection died under them (AT_LEAST_ONCE)
    origins: dict[HttpOrigin, OriginStatistics]


class Dispatcher:
    def __init__(
        self,
        config: DispatcherConfig | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        **changes: Any,
    ) -> None:
        """``changes`` override fields of ``config`` (``Dispatcher(per_host_limit=8)``); ``ssl_context`` None: a
        verifying default (system CAs, hostname check, SNI = host)."""
        self.config = config = dataclasses.replace(config or DispatcherConfig(), **changes)
        self._per_host_limit = config.per_host_limit
        self._node_limit = config.node_limit
        self._max_body = config.max_body_bytes
        self._ssl_context = ssl_context
        # Target addresses the node may connect to (protocol.egress); the node replaces it when the cluster's
        # setting changes. None: no check (the dispatcher's own tests and benches).
        self.egress: EgressPolicy | None = None
        self._reactor = Reactor(self._on_ready, self._on_expired, self._on_tick)
        self._origins: dict[HttpOrigin, OriginPool[Exchange]] = {}
        self._starved: deque[OriginPool[Exchange]] = deque()
        self._connecting: set[Exchange] = set()  # exchanges waiting for a connection opened for them
        self._in_flight = 0
        self._waiting = 0
        self._stack: contextlib.AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None
        self._closed = False
        self._last_sweep = 0.0
        self._opened = 0
        self._reused = 0
        self._stale_on_write = 0
        self._resent = 0

    # ---- lifecycle -------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        stack = contextlib.AsyncExitStack()
        self._nursery = await stack.enter_async_context(trio.open_nursery())
        self._stack = stack
        await self._nursery.start(self._reactor.run)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        stack, self._stack = self._stack, None
        if stack is None:
            return
        # No checkpoint before the nursery is left: under a cancel (a crash) it would raise and leave it open.
        self._close_now()
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        try:
            await stack.__aexit__(exc_type, exc, tb)
        finally:
            self._reactor.close()

    async def aclose(self) -> None:
        """End everything pending (no ``on_done``; ``send`` callers get ``cancelled``), close every connection."""
        self._close_now()
        await trio.lowlevel.checkpoint()

    def _close_now(self) -> None:
        if self._closed:
            return
        self._closed = True
        for op in self._origins.values():
            for ex in op.queue:
                if ex.state is not _DONE:
                    self._end(ex, ex.ended(OutcomeKind.CANCELLED, "the dispatcher closed"))
            op.queue.clear()
            op.close_idle()
        for ex in list(self._connecting):
            if ex.state is not _DONE:
                self._end(ex, ex.ended(OutcomeKind.CANCELLED, "the dispatcher closed"))
        for conn in list(self._reactor.by_fd.values()):
            busy = conn.exchange
            if busy is not None and busy.state is not _DONE:
                self._end(busy, busy.ended(OutcomeKind.CANCELLED, "the dispatcher closed"))
            self._drop(conn)
        self._reactor.discard_later()
        if self._nursery is None:
            self._reactor.close()

    async def prewarm(self, origin: HttpOrigin, n: int) -> int:
        """Open connections to ``origin`` until min(n, cap) are open; returns how many were opened.

        Connect failures are not raised (the sends report them with full detail).
        """
        if self._closed:
            raise trio.ClosedResourceError("the dispatcher is closed")
        op = self._pool(origin)
        missing = min(n, op.limit) - op.open
        opened = 0

        async def open_one() -> None:
            nonlocal opened
            conn = await self._connect(op)
            if isinstance(conn, Connection):
                opened += 1
                self._use(op, conn)

        if missing > 0:
            async with trio.open_nursery() as nursery:
                for _ in range(missing):
                    op.reserve()
                    nursery.start_soon(open_one)
        else:
            await trio.lowlevel.checkpoint()
        return opened

    @property
    def waiting(self) -> int:
        """Exchanges queued for a connection or a slot: a burst is still being written while this is > 0."""
        return self._waiting

    def statistics(self) -> DispatcherStatistics:
        origins = {origin: op.statistics() for origin, op in self._origins.items()}
        return DispatcherStatistics(
            in_flight=self._in_flight,
            waiting=self._waiting,
            node_limit=self._node_limit,
            open_connections=sum(o.open for o in origins.values()),
            connections_opened=self._opened,
            connections_reused=self._reused,
            stale_closed=sum(op.stale_closed for op in self._origins.values()) + self._stale_on_write,
            resent=self._resent,
            origins=origins,
        )

    # ---- the API ---------------------------------------------------------------------------------------

    def submit(
        self, request: SendRequest, *, context: Any = None, _event: trio.Event | None = None
    ) -> Exchange:
        """Queue one attempt of one slot and start it if a connection is free; never blocks.

        ``request.on_done(exchange)`` gets ``exchange.outcome`` (every failure is an ``Outcome``, never an
        exception) and ``exchange.context`` (``context``, the caller's). ``trio.ClosedResourceError`` after
        ``aclose``.
        """
        if self._closed:
            raise trio.ClosedResourceError("the dispatcher is closed")
        if self._nursery is None:
            raise RuntimeError("use the dispatcher as `async with Dispatcher() as d`")
        op = self._pool(request.template.http_origin)
        ex = Exchange(request, op, _event, context)
        self._reactor.add_deadline(ex)
        op.enqueue(ex)
        self._waiting += 1
        self._pump(op)
        self._reactor.compact(self._in_flight + self._waiting)
        return ex

    def cancel(self, ex: Exchange) -> None:
        """End ``ex`` now as ``cancelled`` (its connection, if any, is closed); nothing if it already ended."""
        if ex.state is _DONE:
            return
        conn = ex.conn
        self._end(ex, ex.ended(OutcomeKind.CANCELLED, "cancelled"))
        if conn is not None:
            self._drop(conn)
            self._pump(ex.op)
        self._pump_starved()

    async def send(self, request: SendRequest, *, cancel_scope: trio.CancelScope | None = None) -> Outcome:
        """``submit`` and wait for the outcome (the request's ``on_done``, if any, is called as well).

        A cancel from outside propagates as ``trio.Cancelled`` (the exchange is cancelled, its connection
        closed); a cancel through ``cancel_scope`` is returned as ``cancelled``.
        """
        event = trio.Event()
        ex = self.submit(request, _event=event)
        try:
            with cancel_scope if cancel_scope is not None else _NO_SCOPE:
                await event.wait()
        except BaseException:
            self.cancel(ex)
            raise
        if ex.outcome is None:  # the caller's scope caught a cancel
            self.cancel(ex)
        assert ex.outcome is not None
        return ex.outcome

    # ---- state changes and their accounting ------------------------------------------------------------

    def _move(self, ex: Exchange, event: ExchangeEvent) -> None:
        """``ex`` takes ``event`` (``exchange.py``'s table); leaving QUEUED takes its slots, END gives them back."""
        old = ex.advance(event)
        if old is _QUEUED:
            self._waiting -= 1
            if ex.state is _DONE:
                ex.op.drop_waiting()
            else:
                ex.op.hold()
                self._in_flight += 1
        elif ex.state is _DONE:
            ex.op.unhold()
            self._in_flight -= 1

    def _end(self, ex: Exchange, outcome: Outcome) -> None:
        """``ex`` ended: release its slots, keep the outcome, wake its waiter, queue its ``on_done``."""
        self._move(ex, _END)
        ex.outcome = outcome
        ex.conn = None
        if ex.event is not None:
            ex.event.set()
        if ex.request.on_done is not None and not self._closed:
            self._reactor.later(ex)

    # ---- scheduling exchanges onto connections -----------------------------------------------------------

    def _pool(self, origin: HttpOrigin) -> OriginPool[Exchange]:
        op = self._origins.get(origin)
        if op is None:
            op = self._origins[origin] = OriginPool(origin, self._per_host_limit, self._forget)
        return op

    def _next_queued(self, op: OriginPool[Exchange]) -> Exchange | None:
        """The oldest live QUEUED exchange of ``op``, popped; None if none, or if the node-wide cap is reached.

        The caller moves it on at once (TAKE or OPEN, which take its slots, or END).
        """
        queue = op.queue
        while queue:
            if self._in_flight >= self._node_limit:
                if not op.starved:
                    op.starved = True
                    self._starved.append(op)
                return None
            ex = queue.popleft()
            if ex.state is not _QUEUED:
                continue  # ended while queued (timeout, cancel): it stayed in the queue until now
            if ex.deadline <= trio.current_time():
                self._time_out(ex)  # expired in the queue: never written late
                continue
            return ex
        return None

    def _pump(self, op: OriginPool[Exchange]) -> None:
        """Start what ``op``'s queue holds on idle connections, then on new ones up to the cap."""
        while op.waiting:
            conn = op.take_idle()
            if conn is not None:
                self._use(op, conn)
                if conn.state is _IDLE:
                    return  # it went back idle: nothing startable is left
                continue
            if op.full:
                return
            ex = self._next_queued(op)
            if ex is None:
                return
            self._open_for(op, ex)

    def _pump_starved(self) -> None:
        starved = self._starved
        while starved and self._in_flight < self._node_limit:
            op = starved.popleft()
            op.starved = False
            self._pump(op)

    def _use(self, op: OriginPool[Exchange], conn: Connection[Exchange]) -> None:
        """A free connection: start the next queued exchanges on it until one is on the wire; else park it."""
        while True:
            ex = self._next_queued(op)
            if ex is None:
                self._park(op, conn)
                return
            if self._start(ex, conn):
                self._reused += 1
                return
            if conn.state is not _IDLE:
                return  # the write failed and the connection is gone

    def _park(self, op: OriginPool[Exchange], conn: Connection[Exchange]) -> None:
        """An idle connection: kept (still watched, so a close by the server is seen at once), or closed."""
        conn.exchange = None
        if self._closed or op.open > op.limit:
            op.close(conn)
            return
        if conn.registered & _EPOLLOUT:
            self._reactor.watch(conn)
        conn.idle_since = trio.current_time()
        op.idle.append(conn)

    def _forget(self, conn: Connection[Exchange]) -> None:
        self._reactor.forget(conn)

    def _drop(self, conn: Connection[Exchange]) -> None:
        self._forget(conn)
        if conn.state is not _CLOSED:
            conn.close()
            self._origins[conn.origin].release()

    def _idle_event(self, conn: Connection[Exchange]) -> None:
        """An idle connection became readable or hung up: the server closed it (or sent what nobody asked for),
        unless it was TLS session tickets on a connection not used yet."""
        if conn.idle_readable():
            return
        op = self._origins[conn.origin]
        try:
            op.idle.remove(conn)
        except ValueError:
            pass
        op.stale_closed += 1
        self._drop(conn)

    def _start(self, ex: Exchange, conn: Connection[Exchange]) -> bool:
        """Write ``ex``'s request on ``conn`` (``may_send()`` first); True if it is on the wire.

        False: ``may_send()`` refused (``ex`` ended, ``conn`` is still IDLE) or the write failed (``conn`` is
        gone and ``ex`` ended or went to a fresh connection).
        """
        request = ex.request
        may_send = request.may_send
        if may_send is not None and not may_send():
            if ex.written:  # a resend refused: the first failure stands
                self._end(ex, ex.failed())
            else:
                self._end(ex, ex.ended(OutcomeKind.NOT_SENT, "may_send() refused"))
            return False
        self._move(ex, _TAKE)
        ex.conn = conn
        conn.exchange = ex
        ex.reused = conn.exchanges > 0
        now = time.time()
        data = request.template.render(request.scheduled_at_ms, request.attempt, request.origin, int(now))
        ex.writing(now)
        try:
            conn.begin(data, needle=ex.needle, max_body=self._max_body)
        except ExchangeError as e:
            self._exchange_failed(ex, conn, e)
            return False
        self._reactor.watch(conn)
        return True

    def _open_for(self, op: OriginPool[Exchange], ex: Exchange) -> None:
        """Open a new connection for ``ex`` in a short task; ``ex`` holds its slots meanwhile."""
        self._move(ex, _OPEN)
        self._connecting.add(ex)
        op.reserve()
        assert self._nursery is not None
        self._nursery.start_soon(self._connect_for, op, ex)

    async def _connect(self, op: OriginPool[Exchange]) -> Connection[Exchange] | ConnectError | None:
        """A new connection to ``op.origin``, the error that prevented it, or None if the dispatcher closed.

        The caller reserved it in ``op`` already; a failure releases it.
        """
        try:
            with trio.move_on_after(self.config.connect_timeout_s):
                conn: Connection[Exchange] = await Connection.open(
                    op.origin, ssl_context=self._ssl_context, egress=self.egress
                )
                if self._closed:
                    conn.close()
                    op.release()
                    return None
                self._opened += 1
                return conn
            error = ConnectError(
                f"connect to {op.origin} timed out after {self.config.connect_timeout_s:g} s", timed_out=True
            )
        except ConnectError as e:
            error = e
        except BaseException:
            op.release()
            raise
        op.release()
        return error

    async def _connect_for(self, op: OriginPool[Exchange], ex: Exchange) -> None:
        try:
            conn = await self._connect(op)
        except BaseException:
            if ex.state is not _DONE:
                self._end(ex, ex.ended(OutcomeKind.CANCELLED, "the dispatcher closed"))
            raise
        finally:
            self._connecting.discard(ex)
        if conn is None:  # the dispatcher closed meanwhile
            if ex.state is _CONNECTING:
                self._end(ex, ex.ended(OutcomeKind.CANCELLED, "the dispatcher closed"))
            return
        if isinstance(conn, ConnectError):
            if ex.state is _CONNECTING:
                if ex.written:  # a resend could not connect: the first failure stands
                    self._end(ex, ex.failed())
                else:
                    kind = OutcomeKind.TIMEOUT if conn.timed_out else OutcomeKind.CONNECT_ERROR
                    if conn.denied:
                        kind = OutcomeKind.EGRESS_DENIED
                    self._end(ex, ex.ended(kind, str(conn)))
            self._pump(op)
        else:
            if ex.state is _CONNECTING and ex.deadline <= trio.current_time():
                self._time_out(ex)  # its deadline passed while connecting: never write it now
            if ex.state is not _CONNECTING:
                self._use(op, conn)  # the exchange ended meanwhile: the connection serves the queue
            elif not self._start(ex, conn):
                if conn.state is _IDLE:
                    self._use(op, conn)  # may_send() refused: serve the queue
                else:
                    self._pump(op)
        self._pump_starved()

    # ---- what the reactor reports ------------------------------------------------------------------------

    def _on_ready(self, conn: Connection[Exchange], mask: int) -> None:
        ex = conn.exchange
        if ex is None:  # IDLE: nothing asked of the server, so it closed the connection (or misbehaves)
            self._idle_event(conn)
            return
        try:
            if mask & _EPOLLOUT and conn.writing:
                conn.flush()
            over = conn.readable() if mask & ~_EPOLLOUT else False
        except ExchangeError as e:
            self._exchange_failed(ex, conn, e)
            self._pump(ex.op)
            return
        if not over:
            self._reactor.watch(conn)  # drops EPOLLOUT once the request is out
            return
        conn.finish()
        self._end(ex, ex.responded(conn, self._max_body))
        op = ex.op
        if conn.state is _IDLE and not self._closed and op.open <= op.limit:
            self._use(op, conn)
            if conn.state is _CLOSED:  # a write on it failed: room for a new connection
                self._pump(op)
        else:
            self._drop(conn)
            self._pump(op)

    def _exchange_failed(self, ex: Exchange, conn: Connection[Exchange], e: ExchangeError) -> None:
        """``conn`` failed under ``ex``: drop it, then the stale rule says whether ``ex`` tries a fresh one."""
        ex.conn = None
        self._drop(conn)
        ex.error = str(e)
        if not e.request_written:  # certain: not one byte of this write went out
            ex.unwritten()
        facts = StaleFacts(
            reused=ex.reused,
            first=not ex.retried,
            response_started=e.response_started,
            request_written=e.request_written,
            resend_allowed=self.config.resend_on_stale and ex.request.template.semantics is _AT_LEAST_ONCE,
        )
        action = StaleAction.FAIL if self._closed else stale_action(facts)
        if action is StaleAction.FAIL:
            self._end(ex, ex.failed())
            return
        ex.retried = True
        if action is StaleAction.RESEND:
            ex.resent = True
            self._resent += 1
        else:
            self._stale_on_write += 1
        self._open_for(ex.op, ex)

    def _on_expired(self, ex: Exchange) -> None:
        self._time_out(ex)
        if ex.op.waiting:
            self._pump(ex.op)

    def _on_tick(self, now: float) -> None:
        self._pump_starved()
        if now - self._last_sweep >= _SWEEP_EVERY_S:
            self._sweep(now)

    def _time_out(self, ex: Exchange) -> None:
        conn = ex.conn
        if ex.state is _QUEUED or (not ex.written and conn is None):
            error = f"not sent within {ex.request.timeout_s:g} s (waiting for a connection)"
        else:
            error = f"no complete response within {ex.request.timeout_s:g} s"
        self._end(ex, ex.ended(OutcomeKind.TIMEOUT, error))
        if conn is not None:
            self._drop(conn)

    def _sweep(self, now: float) -> None:
        self._last_sweep = now
        horizon = now - self.config.idle_timeout_s
        for origin, op in list(self._origins.items()):
            op.sweep(horizon)
            if op.unused():
                del self._origins[origin]
