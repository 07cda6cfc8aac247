"""The stale kept-alive rule: what to do when a connection fails under an exchange. The only automatic resend.

A kept-alive socket can be closed by the server at any moment, including just as we write on it. Idle checks
(the reactor sees a close while the connection is idle; ``looks_stale()`` polls before reuse) catch most of it;
this table decides the rest, from what is known when the exchange failed. Rows are mutually exclusive and
cover every case (``tests/scheduler_node/dispatch/test_stale.py`` checks both, and each row):

    =====  ======  =====  ================  ===============  ==============  ===========
    row    reused  first  response_started  request_written  resend allowed  action
    =====  ======  =====  ================  ===============  ==============  ===========
    fresh  no      any    any               any              any             FAIL
    again  yes     no     any               any              any             FAIL
    spoke  yes     yes    yes               any              any             FAIL
    clean  yes     yes    no                no               any             REOPEN
    lost   yes     yes    no                yes              yes             RESEND
    keep   yes     yes    no                yes              no              FAIL
    =====  ======  =====  ================  ===============  ==============  ===========

- ``fresh``: a new connection failing is the target's doing; the retry policy decides (with ``bytes_written``).
- ``again``: at most one automatic retry per exchange.
- ``spoke``: a response byte arrived, so the server was alive and took the request: not a stale socket.
- ``clean``: the write failed on its first byte (plain TCP knows exactly): nothing went out, so a fresh
  connection is safe under both semantics.
- ``lost``: bytes went out and the connection died with no response byte: the server most likely closed the
  idle socket as we wrote. Resent once on a fresh connection (``may_send()`` asked again) when the job is
  AT_LEAST_ONCE and resending is on; the target may see it twice, which AT_LEAST_ONCE allows and
  ``Idempotency-Key`` lets it dedupe.
- ``keep``: AT_MOST_ONCE (or resending switched off): never resent; the outcome is ``connection_error`` with
  ``bytes_written`` and ``reused_connection``, so the retry policy does not retry it either.

Example::

    stale_action(StaleFacts(reused=True, first=True, response_started=False, request_written=True,
                            resend_allowed=True))     # StaleAction.RESEND
"""

from __future__ import annotations

import enum
from typing import NamedTuple

__all__ = ["STALE_RULE", "StaleAction", "StaleFacts", "stale_action"]


class StaleAction(enum.Enum):
    FAIL = "fail"  # the exchange ends as connection_error
    REOPEN = "reopen"  # nothing went out: write it on a fresh connection
    RESEND = "resend"  # it went out: write it again on a fresh connection (AT_LEAST_ONCE only)


class StaleFacts(NamedTuple):
    reused: bool  # the connection had carried an exchange before this one
    first: bool  # the exchange has not used its one automatic retry
    response_started: bool  # a response byte arrived before the failure
    request_written: bool  # a byte of the request may have gone out
    resend_allowed: bool  # AT_LEAST_ONCE and the dispatcher's resend_on_stale


# (row name, pattern over StaleFacts with None for "any", action); first match wins, and exactly one matches.
STALE_RULE: tuple[tuple[str, tuple[bool | None, ...], StaleAction], ...] = (
    ("fresh", (False, None, None, None, None), StaleAction.FAIL),
    ("again", (True, False, None, None, None), StaleAction.FAIL),
    ("spoke", (True, True, True, None, None), StaleAction.FAIL),
    ("clean", (True, True, False, False, None), StaleAction.REOPEN),
    ("lost", (True, True, False, True, True), StaleAction.RESEND),
    ("keep", (True, True, False, True, False), StaleAction.FAIL),
)


def matches(pattern: tuple[bool | None, ...], facts: StaleFacts) -> bool:
    return all(p is None or p == f for p, f in zip(pattern, facts, strict=True))


def stale_action(facts: StaleFacts) -> StaleAction:
    for _name, pattern, action in STALE_RULE:
        if matches(pattern, facts):
            return action
    raise AssertionError(f"STALE_RULE covers every case, not {facts}")  # checked exhaustively by the tests
