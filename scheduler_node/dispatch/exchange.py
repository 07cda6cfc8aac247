"""One attempt of one slot inside the dispatcher: what was asked (``SendRequest``), its state, its outcome.

Rules (everything that changes an exchange's state lives in ``EXCHANGE_TRANSITIONS``; h11's ``_state.py`` is the
model):

    QUEUED --TAKE--> ACTIVE          an idle kept-alive connection took it: request written, response awaited
    QUEUED --OPEN--> CONNECTING      a new connection is being opened for it
    CONNECTING --TAKE--> ACTIVE      that connection is up and the request was written on it
    ACTIVE --OPEN--> CONNECTING      the stale kept-alive rule (``stale.py``): again on a fresh connection
    QUEUED | CONNECTING | ACTIVE --END--> DONE      ``outcome`` is set; nothing changes after

- CONNECTING and ACTIVE *hold slots*: one of the origin's cap and one of the node-wide cap. Leaving QUEUED for
  either takes them; END from either gives them back (the dispatcher's ``_move`` does that accounting, so no
  other code adjusts the counters).
- ``written`` is set before the first byte is tried and restored only when the connection is certain that
  nothing went out, so it errs towards "may have been written" (what AT_MOST_ONCE needs).
- One outcome builder for every way an exchange ends without a response (``ended``: not sent, timed out,
  cancelled, connect or connection error) and one for a response (``responded``).

Example::

    req = SendRequest(template=t, scheduled_at_ms=slot_ms, attempt=1, origin="scheduled", timeout_s=10.0)
    ex = dispatcher.submit(req, context=slot_key)   # QUEUED, then ACTIVE at once if a kept-alive connection is idle
    ...                                  # on_done(ex) later: ex.state is DONE, ex.outcome says what came of it
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from typing import Any

import msgspec
import trio

from .connection import Connection, InvalidTransition
from .outcome import Outcome, OutcomeKind, parse_retry_after
from .pool import OriginPool
from .request import RequestTemplate

__all__ = ["EXCHANGE_TRANSITIONS", "Exchange", "ExchangeEvent", "ExchangeState", "SendRequest"]


# gc=False: one is made per attempt (thousands per burst) and it holds no container that could lead back to it
# (the hooks are the caller's long-lived callables; the caller's per-exchange value goes on the ``Exchange``).
# Untracked, it adds nothing to the collections a burst triggers (measured: a tracked one per request cost the
# 5,000 burst ~7 % of its client CPU).
class SendRequest(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """What to send and whom to tell: the request argument of ``Dispatcher.submit``/``send``.

    ``origin`` is the execution origin (scheduled | manual | backfill) used in ``Idempotency-Key``;
    ``timeout_s`` bounds the whole exchange (queueing, connecting, writing, reading); ``body_contains`` is the
    job's success substring; ``may_send()`` is asked right before the first byte would be written (the node's
    lease check); ``on_done(exchange)`` gets the finished exchange from the reactor.
    """

    template: RequestTemplate
    scheduled_at_ms: int
    attempt: int
    origin: str
    timeout_s: float
    body_contains: str | bytes | None = None
    may_send: Callable[[], bool] | None = None
    on_done: Callable[[Exchange], object] | None = None


class ExchangeState(enum.IntEnum):
    QUEUED = 0  # in its origin's queue
    CONNECTING = 1  # holds its slots; a connection is being opened for it
    ACTIVE = 2  # holds its slots; its request is on a connection (``conn``)
    DONE = 3  # ``outcome`` is set


class ExchangeEvent(enum.IntEnum):
    TAKE = 0  # it goes on a connection (its request is written there)
    OPEN = 1  # a new connection is opened for it
    END = 2  # its outcome is decided


_S, _E = ExchangeState, ExchangeEvent
EXCHANGE_TRANSITIONS: dict[ExchangeState, dict[ExchangeEvent, ExchangeState]] = {
    _S.QUEUED: {_E.TAKE: _S.ACTIVE, _E.OPEN: _S.CONNECTING, _E.END: _S.DONE},
    _S.CONNECTING: {_E.TAKE: _S.ACTIVE, _E.END: _S.DONE},
    _S.ACTIVE: {_E.OPEN: _S.CONNECTING, _E.END: _S.DONE},
    _S.DONE: {},
}


class Exchange:
    """One ``SendRequest`` from ``submit`` to its ``outcome``; ``context`` is the caller's (given to ``submit``)."""

    __slots__ = (
        "_sent_at_before",
        "_written_before",
        "conn",
        "context",
        "deadline",
        "error",
        "event",
        "needle",
        "op",
        "outcome",
        "request",
        "resent",
        "retried",
        "reused",
        "sent_at",
        "started_at",
        "state",
        "t0",
        "written",
    )

    def __init__(
        self, request: SendRequest, op: OriginPool[Exchange], event: trio.Event | None, context: Any = None
    ) -> None:
        self.request = request
        self.context = context
        needle = request.body_contains
        self.needle = needle.encode() if isinstance(needle, str) else needle
        self.op = op
        self.event = event  # set when it ends (``Dispatcher.send`` waits on it)
        self.started_at = time.time()
        self.t0 = trio.current_time()
        self.deadline = self.t0 + request.timeout_s
        self.state = ExchangeState.QUEUED
        self.conn: Connection[Exchange] | None = None
        self.outcome: Outcome | None = None
        self.sent_at: float | None = None
        self.written = False  # a byte of the request may have gone out
        self.reused = False  # its (last) connection had carried an exchange before
        self.resent = False  # written again on a fresh connection after a kept-alive one died under it
        self.retried = False  # the one automatic retry on a fresh connection was used
        self.error: str | None = None  # why its last connection failed
        # ``written`` and ``sent_at`` before the last write (two slots, not a tuple: no allocation per request)
        self._written_before = False
        self._sent_at_before: float | None = None

    def advance(self, event: ExchangeEvent) -> ExchangeState:
        """Apply ``event``; returns the state it left (the dispatcher's slot accounting keys on it)."""
        old = self.state
        try:
            self.state = EXCHANGE_TRANSITIONS[old][event]
        except KeyError:
            raise InvalidTransition("exchange", old, event) from None
        return old

    def writing(self, now_s: float) -> None:
        """Its request is about to be written (at unix time ``now_s``): from here on bytes may go out."""
        self._written_before, self._sent_at_before = self.written, self.sent_at
        if self.sent_at is None:
            self.sent_at = now_s
        self.written = True

    def unwritten(self) -> None:
        """The connection is certain that not one byte of the last write went out."""
        self.written, self.sent_at = self._written_before, self._sent_at_before

    def ended(self, kind: OutcomeKind, error: str | None) -> Outcome:
        """The outcome of an exchange that ends without a response."""
        return Outcome(
            kind=kind,
            bytes_written=self.written,
            started_at=self.started_at,
            sent_at=self.sent_at,
            duration_s=trio.current_time() - self.t0,
            error=error,
            reused_connection=self.reused,
            resent=self.resent,
        )

    def failed(self) -> Outcome:
        """Its connection failed after the write began (``error`` says how)."""
        return self.ended(OutcomeKind.CONNECTION_ERROR, self.error)

    def responded(self, conn: Connection[Exchange], max_body: int) -> Outcome:
        """The connection's parsed response as the outcome."""
        retry_after = None if conn.retry_after is None else parse_retry_after(conn.retry_after, time.time())
        error = None
        if conn.oversize:
            error = f"response body larger than {max_body} bytes: checked that far, connection closed"
        return Outcome(
            kind=OutcomeKind.RESPONSE,
            bytes_written=True,
            started_at=self.started_at,
            sent_at=self.sent_at,
            duration_s=trio.current_time() - self.t0,
            http_status=conn.status,
            retry_after_s=retry_after,
            excerpt=conn.excerpt.decode("utf-8", "replace") if conn.excerpt else "",
            body_matched=None if self.needle is None else conn.matched,
            error=error,
            reused_connection=self.reused,
            resent=self.resent,
        )

    def __repr__(self) -> str:
        r = self.request
        return (
            f"<Exchange {r.template.job_id} slot={r.scheduled_at_ms} attempt={r.attempt} {self.state.name}>"
        )
