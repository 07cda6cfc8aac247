"""Retry policy: what an attempt's outcome means for its slot. Pure: times and randomness are arguments.

Rules (DESIGN.md §5):
- An attempt succeeds when a response arrived, its status is in ``success.status`` (any 2xx when that list
  is empty) and, if ``success.body_contains`` is set, the body contains it.
- AT_LEAST_ONCE retries timeouts, connection errors (before or after the request was written), 5xx and 429.
  Any other response (4xx, 3xx, a 2xx failing the body check) fails at once: sending it again would get the
  same answer.
- AT_MOST_ONCE retries only failures where no byte of the request was written (connection refused, connect
  timeout): the target cannot have acted on it. Once a byte is out, the outcome stands.
- An address the egress policy refuses (``egress_denied``) is never retried, whatever the semantics: the
  slot ends ``failed`` at once (and raises its ``execution_failed`` alert).
- Attempts are counted from 1; ``retry.max_attempts`` includes the first. When they run out the slot ends
  ``timed_out`` if the last attempt timed out, else ``failed``.
- Backoff before attempt n+1 = min(initial · multiplier^(n-1), max) scaled by a jitter factor drawn uniformly
  from [1 - jitter, 1 + jitter]; a ``Retry-After`` from the target raises it (never lowers it), bounded by
  one day so a hostile target cannot park a slot forever.

Example: max_attempts 3, initial 1000 ms, multiplier 2, jitter 0: a 500 at attempt 1 waits 1 s, a 503 at
attempt 2 waits 2 s, a 502 at attempt 3 ends ``failed``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from protocol.executions import ExecutionStatus
from protocol.jobs import RetryPolicy, Semantics, Success

__all__ = ["AttemptResult", "Decision", "FailureKind", "decide", "is_success"]

MAX_RETRY_AFTER_MS = 86_400_000


class FailureKind(enum.StrEnum):
    """How an attempt went, as far as the retry policy cares."""

    RESPONSE = "response"  # a complete response arrived (its status decides)
    TIMEOUT = "timeout"
    CONNECT_ERROR = "connect_error"  # nothing was written
    EGRESS_DENIED = "egress_denied"  # the egress policy refused the address: final, whatever the policy
    CONNECTION_ERROR = "connection_error"  # the connection failed after the request was (partly) written


@dataclass(frozen=True, slots=True)
class AttemptResult:
    kind: FailureKind
    http_status: int | None = None
    body_matched: bool | None = None  # None when no body check was asked for
    bytes_written: bool = True
    retry_after_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """Either ``terminal`` is set (the slot is done) or ``retry_in_ms`` is (send attempt ``attempt + 1`` then)."""

    terminal: ExecutionStatus | None
    retry_in_ms: int | None = None


_RETRYABLE_STATUS = frozenset({429}) | frozenset(range(500, 600))
SUCCEEDED = Decision(ExecutionStatus.SUCCEEDED)


def is_success(success: Success, result: AttemptResult) -> bool:
    if result.kind is not FailureKind.RESPONSE or result.http_status is None:
        return False
    status_ok = result.http_status in success.status if success.status else 200 <= result.http_status < 300
    return status_ok and (success.body_contains is None or bool(result.body_matched))


def _retryable(semantics: Semantics, result: AttemptResult) -> bool:
    if result.kind is FailureKind.EGRESS_DENIED:
        return False
    if semantics is Semantics.AT_MOST_ONCE:
        return not result.bytes_written and result.kind is not FailureKind.RESPONSE
    if result.kind is FailureKind.RESPONSE:
        return result.http_status in _RETRYABLE_STATUS
    return True


def backoff_ms(policy: RetryPolicy, attempt: int, unit_random: float) -> int:
    """Delay before attempt ``attempt + 1``; ``unit_random`` is uniform in [0, 1)."""
    base = min(policy.initial_backoff_ms * policy.multiplier ** (attempt - 1), policy.max_backoff_ms)
    factor = 1.0 + policy.jitter * (2.0 * unit_random - 1.0)
    return max(0, round(base * factor))


def decide(
    *,
    semantics: Semantics,
    success: Success,
    policy: RetryPolicy,
    attempt: int,
    result: AttemptResult,
    unit_random: float,
) -> Decision:
    """The fate of a slot after attempt number ``attempt`` (1-based) ended with ``result``."""
    if is_success(success, result):
        return SUCCEEDED
    if attempt < policy.max_attempts and _retryable(semantics, result):
        delay = backoff_ms(policy, attempt, unit_random)
        if result.retry_after_ms is not None:
            delay = max(delay, min(result.retry_after_ms, MAX_RETRY_AFTER_MS))
        return Decision(None, delay)
    if result.kind is FailureKind.TIMEOUT:
        return Decision(ExecutionStatus.TIMED_OUT)
    return Decision(ExecutionStatus.FAILED)
