"""What one ``Dispatcher.send`` came to: a small frozen record the node turns into an attempt row.

Rules:
- ``kind`` says how far the exchange got; ``bytes_written`` says whether any byte of the request may have
  reached the network (it is set before the first write is tried, so it errs towards "written"). AT_MOST_ONCE
  may retry only when it is False (DESIGN.md §5).

  ============= ======================================================== ===============
  kind          meaning                                                  bytes_written
  ============= ======================================================== ===============
  response      a complete response arrived (3xx too: no redirects)      True
  timeout       ``timeout_s`` ran out (queueing, connecting or reading)  either
  connect_error refused, DNS, TLS handshake or verification failure      False
  egress_denied the egress policy refused the target's address            False
  connection_   the connection failed after the request was (partly)     True
  error         written: reset, closed mid-response, invalid response
  not_sent      ``may_send()`` said no (lease validity passed)           False
  cancelled     the caller's ``cancel_scope`` was cancelled (REPLACE)    either
  ============= ======================================================== ===============

- The first five are attempts; ``not_sent`` is no attempt at all and ``cancelled`` ends the slot. What an
  outcome means for the slot is the engine's business: ``scheduler_node.attempts`` maps it onto the retry
  policy, so the dispatcher reports and never imports the policy.
- ``excerpt`` is the first 1 KiB of the body decoded as UTF-8 with replacement; ``body_matched`` is None
  unless a ``body_contains`` check was asked for, then whether it was found in the first ``max_body_bytes``.
- Times: ``started_at``/``sent_at`` are wall-clock unix seconds (for rows and dispatch lag), ``duration_s``
  is measured on trio's clock from the start of ``send``.

Example::

    Outcome(kind=OutcomeKind.RESPONSE, http_status=503, retry_after_s=30.0, excerpt="busy",
            body_matched=None, bytes_written=True, started_at=1795428000.001, sent_at=1795428000.002,
            duration_s=0.012)
"""

from __future__ import annotations

import enum
from datetime import UTC
from email.utils import parsedate_to_datetime

import msgspec

__all__ = ["Outcome", "OutcomeKind", "parse_retry_after"]


class OutcomeKind(enum.StrEnum):
    RESPONSE = "response"
    TIMEOUT = "timeout"
    CONNECT_ERROR = "connect_error"
    EGRESS_DENIED = "egress_denied"  # the target's address is one the egress policy refuses: never retried
    CONNECTION_ERROR = "connection_error"  # after (part of) the request was written
    NOT_SENT = "not_sent"
    CANCELLED = "cancelled"


# gc=False: no reference cycles possible, and thousands are made per burst (DESIGN.md §2 on GC and tails).
class Outcome(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    kind: OutcomeKind
    bytes_written: bool
    started_at: float  # unix s, when send() began (before queueing for a connection)
    duration_s: float
    http_status: int | None = None
    retry_after_s: float | None = None
    excerpt: str = ""
    body_matched: bool | None = None
    sent_at: float | None = None  # unix s, just before the first byte was written
    error: str | None = None
    reused_connection: bool = False  # the request went out on a kept-alive connection
    resent: bool = False  # a kept-alive connection was found closed and the request went again on a fresh one


def parse_retry_after(value: bytes | str, now_s: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP-date; None if unparseable.

    A date in the past gives 0. Bounding it is the retry policy's job.
    """
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip()
    if text.isdigit():  # the common form, e.g. "120"
        return float(int(text))
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" parses naive; HTTP-dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now_s)
