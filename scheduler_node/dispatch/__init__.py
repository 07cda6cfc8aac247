"""The dispatcher: the measured hot path that sends a job's HTTP request at the second (DESIGN.md §2, §5).

- ``request``: ``RequestTemplate`` (pre-encoded once per job; ``render`` adds a slot's headers), the
  signature recipe and ``verify_signature`` for targets.
- ``connection``: one HTTP/1.1 connection with synchronous non-blocking I/O (plain or TLS through
  ``ssl.SSLObject``), responses parsed by httptools; its states in one transition table.
- ``pool``: per-origin accounting: cap, kept-alive idle connections (LIFO, stale checks), queue.
- ``exchange``: ``SendRequest`` (what to send, the one argument of ``submit``/``send``) and ``Exchange`` (one
  attempt in flight: its states in one transition table, its outcome).
- ``stale``: the stale kept-alive rule as a decision table (the only automatic resend, never AT_MOST_ONCE).
- ``reactor``: the one task: the epoll set, the deadline heap, batched delivery of outcomes.
- ``dispatcher``: ``Dispatcher.submit``/``send``: which exchange goes on which connection, per-host and
  node-wide caps, timeouts, ``may_send``.
- ``outcome``: ``Outcome``, what a send came to.

Example::

    async with Dispatcher() as d:
        t = RequestTemplate.for_job(job, node_id="node-a")
        o = await d.send(SendRequest(template=t, scheduled_at_ms=slot_ms, attempt=1, origin="scheduled",
                                     timeout_s=10))
"""

from .connection import (
    CONNECTION_TRANSITIONS,
    EXCERPT_BYTES,
    ConnectError,
    Connection,
    ConnEvent,
    ConnState,
    ExchangeError,
    InvalidTransition,
    checked_addresses,
    default_ssl_context,
)
from .dispatcher import (
    DEFAULT_NODE_LIMIT,
    DEFAULT_PER_HOST_LIMIT,
    Dispatcher,
    DispatcherConfig,
    DispatcherStatistics,
)
from .exchange import EXCHANGE_TRANSITIONS, Exchange, ExchangeEvent, ExchangeState, SendRequest
from .outcome import Outcome, OutcomeKind, parse_retry_after
from .pool import OriginPool, OriginStatistics
from .request import USER_AGENT, HttpOrigin, RequestTemplate, format_scheduled_at, sign, verify_signature

__all__ = [
    "CONNECTION_TRANSITIONS",
    "DEFAULT_NODE_LIMIT",
    "DEFAULT_PER_HOST_LIMIT",
    "EXCERPT_BYTES",
    "EXCHANGE_TRANSITIONS",
    "USER_AGENT",
    "ConnEvent",
    "ConnState",
    "ConnectError",
    "Connection",
    "Dispatcher",
    "DispatcherConfig",
    "DispatcherStatistics",
    "Exchange",
    "ExchangeError",
    "ExchangeEvent",
    "ExchangeState",
    "HttpOrigin",
    "InvalidTransition",
    "OriginPool",
    "OriginStatistics",
    "Outcome",
    "OutcomeKind",
    "RequestTemplate",
    "SendRequest",
    "checked_addresses",
    "default_ssl_context",
    "format_scheduled_at",
    "parse_retry_after",
    "sign",
    "verify_signature",
]
