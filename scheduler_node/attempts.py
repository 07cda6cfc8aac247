"""Attempts: what a dispatcher ``Outcome`` is to the retry policy. Pure.

The dispatcher reports what happened (how far the exchange got, the status, ``Retry-After``); the engine
decides what that means for the slot through ``scheduler_node.retry``. This mapping is the seam between the
two, kept out of the dispatcher so that the hot path never depends on the policy (tests/test_layering.py
checks it).

Rules:
- ``response``, ``timeout``, ``connect_error``, ``egress_denied`` and ``connection_error`` are attempts, mapped one to one onto
  the retry policy's ``FailureKind`` (the same values, by the table below; a test holds them equal).
- ``not_sent`` (``may_send()`` refused: the lease validity passed) is no attempt at all, and ``cancelled``
  (REPLACE) ends the slot rather than judging an attempt: ``attempt_result`` raises ``ValueError`` for both,
  ``judged`` gives them as ``run_rules.NotAnAttempt`` (what the engine hands to ``run_rules.outcome_step``).
- ``retry_after_s`` becomes whole milliseconds (rounded); bounding it is the policy's job. The status, the
  body check and ``bytes_written`` (whether AT_MOST_ONCE may retry) pass through unchanged.

Example::

    attempt_result(Outcome(kind=OutcomeKind.RESPONSE, http_status=503, retry_after_s=30.0, bytes_written=True,
                           started_at=1795428000.001, duration_s=0.012))
    # AttemptResult(kind=FailureKind.RESPONSE, http_status=503, body_matched=None, bytes_written=True,
    #               retry_after_ms=30000)
"""

from __future__ import annotations

from .dispatch.outcome import Outcome, OutcomeKind
from .retry import AttemptResult, FailureKind
from .run_rules import NotAnAttempt

__all__ = ["ATTEMPT_KINDS", "attempt_result", "judged"]

ATTEMPT_KINDS: dict[OutcomeKind, FailureKind] = {
    OutcomeKind.RESPONSE: FailureKind.RESPONSE,
    OutcomeKind.TIMEOUT: FailureKind.TIMEOUT,
    OutcomeKind.CONNECT_ERROR: FailureKind.CONNECT_ERROR,
    OutcomeKind.EGRESS_DENIED: FailureKind.EGRESS_DENIED,
    OutcomeKind.CONNECTION_ERROR: FailureKind.CONNECTION_ERROR,
}
_NOT_ATTEMPTS = {OutcomeKind.NOT_SENT: NotAnAttempt.NOT_SENT, OutcomeKind.CANCELLED: NotAnAttempt.CANCELLED}


def attempt_result(outcome: Outcome) -> AttemptResult:
    """The retry policy's view of an outcome; ``ValueError`` for ``not_sent`` and ``cancelled``."""
    try:
        kind = ATTEMPT_KINDS[outcome.kind]
    except KeyError:
        raise ValueError(f"a {outcome.kind} outcome is not an attempt") from None
    return AttemptResult(
        kind=kind,
        http_status=outcome.http_status,
        body_matched=outcome.body_matched,
        bytes_written=outcome.bytes_written,
        retry_after_ms=None if outcome.retry_after_s is None else round(outcome.retry_after_s * 1000),
    )


def judged(outcome: Outcome) -> AttemptResult | NotAnAttempt:
    """What ``run_rules.outcome_step`` takes: the attempt's result, or why the outcome is none."""
    not_attempt = _NOT_ATTEMPTS.get(outcome.kind)
    return attempt_result(outcome) if not_attempt is None else not_attempt
