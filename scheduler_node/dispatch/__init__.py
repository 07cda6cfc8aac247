"""The dispatcher: the measured hot path that sends a job's HTTP request at the second (DESIGN.md §2, §5).

- ``request``: ``RequestTemplate`` (pre-encoded once per job; ``render`` adds a slot's headers), the
  signature recipe and ``verify_signature`` for targets.
- ``connection``: one HTTP/1.1 connection with synchronous non-blocking I/O (plain or TLS through
  ``ssl.SSLObject``), responses parsed by httptools.
- ``pool``: per-origin state: cap, kept-alive idle connections (LIFO, stale checks), queue.
- ``dispatcher``: ``Dispatcher.submit``/``send``: one reactor task for every exchange, per-host and node-wide
  caps, timeouts, ``may_send`` and the stale-connection resend rule (never for AT_MOST_ONCE).
- ``outcome``: ``Outcome``, what a send came to.

Example::

    async with Dispatcher() as d:
        t = RequestTemplate.for_job(job, node_id="node-a")
        o = await d.send(t, scheduled_at_ms=slot_ms, attempt=1, origin="scheduled", timeout_s=10)
"""

from .connection import EXCERPT_BYTES, ConnectError, Connection, ExchangeError, default_ssl_context
from .dispatcher import DEFAULT_NODE_LIMIT, DEFAULT_PER_HOST_LIMIT, Dispatcher, DispatcherStatistics, Exchange
from .outcome import Outcome, OutcomeKind, parse_retry_after
from .pool import OriginPool, OriginStatistics
from .request import USER_AGENT, HttpOrigin, RequestTemplate, format_scheduled_at, sign, verify_signature

__all__ = [
    "DEFAULT_NODE_LIMIT",
    "DEFAULT_PER_HOST_LIMIT",
    "EXCERPT_BYTES",
    "USER_AGENT",
    "ConnectError",
    "Connection",
    "Dispatcher",
    "DispatcherStatistics",
    "Exchange",
    "ExchangeError",
    "HttpOrigin",
    "OriginPool",
    "OriginStatistics",
    "Outcome",
    "OutcomeKind",
    "RequestTemplate",
    "default_ssl_context",
    "format_scheduled_at",
    "parse_retry_after",
    "sign",
    "verify_signature",
]
