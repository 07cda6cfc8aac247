"""The dispatcher: sends one job's HTTP request at its second and says what came of it.

Rules:
- ``send`` = take a token of the origin's in-flight cap (default 256), then one of the node-wide cap
  (default 10,000; in that order, so sends queued behind a slow host hold no node-wide token), take a
  kept-alive connection (or open one), call ``may_send()``, render the template, write it in one go,
  parse the response with httptools. No redirects: a 3xx is a result like any other.
- ``may_send()`` runs right before the first byte would be written, after the connection is ready; False
  means nothing is written and the outcome is ``not_sent``. The node passes its lease check here
  (``valid_until``, DESIGN.md §4), so a node that lost its lease while queued stops at the last moment.
- ``timeout_s`` (the job's ``timeout_ms``) bounds the whole send: queueing for a token, connecting (also
  bounded by ``connect_timeout_s``), writing and reading. Its expiry is ``timeout`` with ``bytes_written``
  telling whether the request had started to go out.
- Cancellation: anything that interrupts an exchange (timeout, cancel, error) closes that connection; only
  a completely read response puts a connection back. A cancel from outside propagates as ``trio.Cancelled``
  as usual; a cancel through the ``cancel_scope`` the caller passes in (how the node implements
  concurrency=REPLACE) is caught here and returned as ``cancelled``, with ``bytes_written``.
- Stale kept-alive rule (the only automatic resend, chosen to be conservative):
    1. An idle connection that is readable or hung up before reuse was closed by the server: it is closed
       and another (or a new one) is taken; nothing was written, so this is safe under both semantics.
    2. If, on a *reused* connection, the write fails on its first byte (plain TCP knows exactly: the reset
       arrived after the idle check), nothing went out: a fresh connection is taken, under both semantics.
    3. If, on a *reused* connection, bytes went out and the exchange fails with *zero response bytes* (EOF
       or reset: the server closed the idle socket just as we wrote), then
       - AT_LEAST_ONCE: the same request is written once more on a fresh connection (``may_send()`` asked
         again) and the outcome says ``resent=True``. The target may see it twice, which AT_LEAST_ONCE
         allows; ``Idempotency-Key`` lets it dedupe.
       - AT_MOST_ONCE: never resent. The outcome is ``connection_error`` with ``bytes_written=True`` and
         ``reused_connection=True``, so the retry policy does not retry it either.
    At most one fresh retry per send. A timeout, a fresh connection, or a failure after a response byte
    arrived is never retried here (the retry policy decides, with ``bytes_written``).
- Sync never blocks, async always checkpoints; no background tasks (pool sweeping rides on ``send``), so
  ``async with Dispatcher() as d`` only closes connections on exit. Nothing is logged on the hot path.

Example::

    async with Dispatcher(per_host_limit=100) as d:
        template = RequestTemplate.for_job(job, node_id="node-a", signing_secret=secret)
        await d.prewarm(template.http_origin, 100)
        outcome = await d.send(template, scheduled_at_ms=slot_ms, attempt=1, origin="scheduled",
                               timeout_s=job.spec.timeout_ms / 1000,
                               body_contains=job.spec.success.body_contains,
                               may_send=lambda: trio.current_time() < valid_until)
        outcome.kind, outcome.http_status      # (OutcomeKind.RESPONSE, 200)
"""

from __future__ import annotations

import contextlib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import trio

from protocol.jobs import Semantics

from .connection import ConnectError, Connection, ExchangeError
from .outcome import Outcome, OutcomeKind, parse_retry_after
from .pool import ConnectionPool, OriginPool, OriginStatistics
from .request import HttpOrigin, RequestTemplate

__all__ = ["DEFAULT_NODE_LIMIT", "DEFAULT_PER_HOST_LIMIT", "Dispatcher", "DispatcherStatistics"]

DEFAULT_PER_HOST_LIMIT = 256
DEFAULT_NODE_LIMIT = 10_000
MAX_BODY_BYTES = 1 << 20

_RESPONSE = OutcomeKind.RESPONSE
_AT_LEAST_ONCE = Semantics.AT_LEAST_ONCE


@dataclass(frozen=True, slots=True)
class DispatcherStatistics:
    in_flight: int  # sends holding a node-wide token
    waiting: int  # sends queued for a node-wide token
    node_limit: int
    open_connections: int
    connections_opened: int  # over the dispatcher's life
    connections_reused: int
    stale_closed: int  # kept-alive connections found closed by the server before anything went out on them
    resent: int  # requests written again after a kept-alive connection died under them (AT_LEAST_ONCE)
    origins: dict[HttpOrigin, OriginStatistics]


class _SendState:
    """What one send has done so far; read after a timeout or cancel interrupted it."""

    __slots__ = ("conn", "error", "resent", "reused", "sent_at", "written")

    def __init__(self) -> None:
        self.conn: Connection | None = None  # the connection while an exchange is on it
        self.written = False
        self.reused = False
        self.resent = False
        self.sent_at: float | None = None
        self.error: str | None = None


# A reusable no-op context for sends without a caller scope (a CancelScope costs a few µs to make).
_NO_SCOPE = contextlib.nullcontext()


class Dispatcher:
    def __init__(
        self,
        *,
        per_host_limit: int = DEFAULT_PER_HOST_LIMIT,
        node_limit: int = DEFAULT_NODE_LIMIT,
        connect_timeout_s: float = 5.0,
        idle_timeout_s: float = 60.0,
        max_body_bytes: int = MAX_BODY_BYTES,
        ssl_context: ssl.SSLContext | None = None,
        resend_on_stale: bool = True,
    ) -> None:
        """``ssl_context`` None: a verifying default (system CAs, hostname check, SNI = host)."""
        self._pool = ConnectionPool(
            max_per_origin=per_host_limit,
            ssl_context=ssl_context,
            connect_timeout_s=connect_timeout_s,
            idle_timeout_s=idle_timeout_s,
        )
        self._node_limiter = trio.CapacityLimiter(node_limit)
        self._max_body = max_body_bytes
        self._resend_on_stale = resend_on_stale
        self._resent = 0
        self._stale_on_write = 0

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._pool.aclose()

    async def prewarm(self, origin: HttpOrigin, n: int) -> int:
        """Open up to ``n`` connections to ``origin`` (bounded by the per-host cap) before a burst."""
        return await self._pool.prewarm(origin, n)

    def statistics(self) -> DispatcherStatistics:
        origins = self._pool.statistics()
        node = self._node_limiter.statistics()
        return DispatcherStatistics(
            in_flight=node.borrowed_tokens,
            waiting=node.tasks_waiting,
            node_limit=int(node.total_tokens),
            open_connections=sum(o.open for o in origins.values()),
            connections_opened=self._pool.opened,
            connections_reused=self._pool.reused,
            stale_closed=self._pool.stale_closed + self._stale_on_write,
            resent=self._resent,
            origins=origins,
        )

    async def send(
        self,
        template: RequestTemplate,
        *,
        scheduled_at_ms: int,
        attempt: int,
        origin: str,
        timeout_s: float,
        body_contains: str | bytes | None = None,
        may_send: Callable[[], bool] | None = None,
        cancel_scope: trio.CancelScope | None = None,
    ) -> Outcome:
        """Send one attempt of one slot; every failure is an ``Outcome``, never an exception.

        ``origin`` is the execution origin (scheduled | manual | backfill) used in ``Idempotency-Key``.
        Raises only ``trio.Cancelled`` (a cancel from outside ``cancel_scope``) and ``trio.ClosedResourceError``
        (after ``aclose``).
        """
        started_at = time.time()
        t0 = trio.current_time()
        needle = body_contains.encode() if isinstance(body_contains, str) else body_contains
        op = self._pool.get(template.http_origin)
        host_limiter = op.limiter
        node_limiter = self._node_limiter
        state = _SendState()
        # The caller's scope (REPLACE) sits outside the deadline: when both fire, trio lets the outer one catch
        # it, so a REPLACE that lands as the timeout expires is reported as cancelled.
        outer = cancel_scope if cancel_scope is not None else _NO_SCOPE
        try:
            with outer, trio.move_on_after(timeout_s) as deadline:
                # acquire_nowait first: trio's acquire() reschedules the task even when a token is free, and a
                # 5,000-request burst pays every scheduler pass in drift.
                try:
                    host_limiter.acquire_nowait()
                except trio.WouldBlock:
                    await host_limiter.acquire()
                try:
                    try:
                        node_limiter.acquire_nowait()
                    except trio.WouldBlock:
                        await node_limiter.acquire()
                    try:
                        return await self._send_on_connection(
                            state,
                            op,
                            template,
                            scheduled_at_ms,
                            attempt,
                            origin,
                            needle,
                            may_send,
                            started_at,
                            t0,
                        )
                    finally:
                        node_limiter.release()
                finally:
                    host_limiter.release()
        finally:
            if state.conn is not None:
                # Interrupted mid-exchange (timeout, cancel, or a bug): the stream is in an unknown state.
                self._pool.discard(state.conn)
        # Only a caught cancellation gets here.
        timed_out = deadline.cancelled_caught
        if not timed_out:
            error = "cancelled"
        elif state.written:
            error = f"no complete response within {timeout_s:g} s"
        else:
            error = f"not sent within {timeout_s:g} s (waiting for a token or a connection)"
        return Outcome(
            kind=OutcomeKind.TIMEOUT if timed_out else OutcomeKind.CANCELLED,
            bytes_written=state.written,
            started_at=started_at,
            sent_at=state.sent_at,
            duration_s=trio.current_time() - t0,
            error=error,
            reused_connection=state.reused,
            resent=state.resent,
        )

    async def _send_on_connection(
        self,
        state: _SendState,
        op: OriginPool,
        template: RequestTemplate,
        scheduled_at_ms: int,
        attempt: int,
        origin: str,
        needle: bytes | None,
        may_send: Callable[[], bool] | None,
        started_at: float,
        t0: float,
    ) -> Outcome:
        """The part of ``send`` after the tokens: connection, ``may_send``, exchange, the stale rule."""
        pool = self._pool
        retried = False
        while True:
            try:
                conn = await pool.acquire(op, fresh=retried)
            except ConnectError as e:
                if state.written:  # a resend could not connect: the first failure stands
                    return self._failed(state, started_at, t0)
                return Outcome(
                    kind=OutcomeKind.TIMEOUT if e.timed_out else OutcomeKind.CONNECT_ERROR,
                    bytes_written=False,
                    started_at=started_at,
                    duration_s=trio.current_time() - t0,
                    error=str(e),
                )
            if may_send is not None and not may_send():
                pool.release(conn, reusable=True)  # untouched, still good
                if state.written:
                    return self._failed(state, started_at, t0)
                await trio.lowlevel.checkpoint()  # a reused connection got here without one
                return Outcome(
                    kind=OutcomeKind.NOT_SENT,
                    bytes_written=False,
                    started_at=started_at,
                    duration_s=trio.current_time() - t0,
                    error="may_send() refused",
                )
            state.conn = conn
            reused = state.reused = conn.exchanges > 0
            now = time.time()
            request = template.render(scheduled_at_ms, attempt, origin, int(now))
            written_before, sent_at_before = state.written, state.sent_at
            if state.sent_at is None:
                state.sent_at = now
            state.written = True  # from here on a timeout or cancel may have let bytes out
            try:
                await conn.exchange(request, needle=needle, max_body=self._max_body)
            except ExchangeError as e:
                state.conn = None
                pool.discard(conn)
                state.error = str(e)
                if not e.request_written:  # certain: not one byte of this write went out
                    state.written, state.sent_at = written_before, sent_at_before
                if reused and not retried and not e.response_started:
                    if not e.request_written:
                        # The kept-alive socket was dead and nothing went out: safe under both semantics.
                        retried = True
                        self._stale_on_write += 1
                        continue
                    if self._resend_on_stale and template.semantics is _AT_LEAST_ONCE:
                        retried = state.resent = True
                        self._resent += 1
                        continue
                return self._failed(state, started_at, t0)
            state.conn = None
            outcome = self._response(conn, started_at, state.sent_at or now, t0, needle, reused, state.resent)
            pool.release(conn, reusable=conn.keep_alive)
            return outcome

    @staticmethod
    def _failed(state: _SendState, started_at: float, t0: float) -> Outcome:
        return Outcome(
            kind=OutcomeKind.CONNECTION_ERROR,
            bytes_written=state.written,
            started_at=started_at,
            sent_at=state.sent_at,
            duration_s=trio.current_time() - t0,
            error=state.error,
            reused_connection=state.reused,
            resent=state.resent,
        )

    def _response(
        self,
        conn: Connection,
        started_at: float,
        sent_at: float,
        t0: float,
        needle: bytes | None,
        reused: bool,
        resent: bool,
    ) -> Outcome:
        """The connection's parsed response as an ``Outcome``."""
        retry_after = None if conn.retry_after is None else parse_retry_after(conn.retry_after, time.time())
        error = None
        if conn.oversize:
            error = f"response body larger than {self._max_body} bytes: checked that far, connection closed"
        return Outcome(
            kind=_RESPONSE,
            bytes_written=True,
            started_at=started_at,
            sent_at=sent_at,
            duration_s=trio.current_time() - t0,
            http_status=conn.status,
            retry_after_s=retry_after,
            excerpt=conn.excerpt.decode("utf-8", "replace") if conn.excerpt else "",
            body_matched=None if needle is None else conn.matched,
            error=error,
            reused_connection=reused,
            resent=resent,
        )
