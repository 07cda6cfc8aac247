"""scheduler_node.attempts: a dispatcher Outcome as the retry policy sees it."""

from __future__ import annotations

from typing import Any

import pytest

from protocol.executions import ExecutionStatus
from protocol.jobs import RetryPolicy, Semantics, Success
from scheduler_node import attempts
from scheduler_node.attempts import ATTEMPT_KINDS, attempt_result
from scheduler_node.dispatch import Outcome, OutcomeKind
from scheduler_node.retry import FailureKind, decide

NOW = 1_795_428_000.0


def outcome(kind: OutcomeKind, *, bytes_written: bool = True, **kw: Any) -> Outcome:
    return Outcome(kind=kind, bytes_written=bytes_written, started_at=NOW, duration_s=0.01, **kw)


def test_attempt_result_feeds_the_retry_policy() -> None:
    def fate(o: Outcome, semantics: Semantics) -> ExecutionStatus | None:
        d = decide(
            semantics=semantics,
            success=Success(),
            policy=RetryPolicy(),
            attempt=1,
            result=attempt_result(o),
            unit_random=0.5,
        )
        return d.terminal

    ok = outcome(OutcomeKind.RESPONSE, http_status=204)
    assert attempt_result(ok).kind is FailureKind.RESPONSE
    assert fate(ok, Semantics.AT_MOST_ONCE) is ExecutionStatus.SUCCEEDED
    refused = outcome(OutcomeKind.CONNECT_ERROR, bytes_written=False)
    assert fate(refused, Semantics.AT_MOST_ONCE) is None  # nothing written: retried even at most once
    broken = outcome(OutcomeKind.CONNECTION_ERROR)
    assert fate(broken, Semantics.AT_MOST_ONCE) is ExecutionStatus.FAILED
    assert fate(broken, Semantics.AT_LEAST_ONCE) is None
    busy = outcome(OutcomeKind.RESPONSE, http_status=503, retry_after_s=30.0)
    assert attempt_result(busy).retry_after_ms == 30_000
    for kind in (OutcomeKind.NOT_SENT, OutcomeKind.CANCELLED):
        with pytest.raises(ValueError):
            attempt_result(outcome(kind))


def test_outcome_kinds_match_retry_failure_kinds() -> None:
    assert {k.value for k in FailureKind} <= {k.value for k in OutcomeKind}
    # The table maps each attempt kind onto the failure kind of the same value, and misses only non-attempts.
    assert {o.value: f.value for o, f in ATTEMPT_KINDS.items()} == {f.value: f.value for f in FailureKind}
    assert set(OutcomeKind) - set(ATTEMPT_KINDS) == {OutcomeKind.NOT_SENT, OutcomeKind.CANCELLED}


def test_fields_pass_through() -> None:
    o = outcome(OutcomeKind.RESPONSE, http_status=200, body_matched=False, retry_after_s=0.0004)
    r = attempt_result(o)
    assert (r.http_status, r.body_matched, r.bytes_written, r.retry_after_ms) == (200, False, True, 0)
    assert attempt_result(outcome(OutcomeKind.TIMEOUT, bytes_written=False)).bytes_written is False


def test_public_api() -> None:
    assert sorted(attempts.__all__) == ["ATTEMPT_KINDS", "attempt_result", "judged"]
