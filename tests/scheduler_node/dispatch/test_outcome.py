"""Outcome: Retry-After parsing, the mapping to the retry policy, and the package's exported names."""

from __future__ import annotations

import email.utils
import importlib
from typing import Any

import pytest

from protocol.executions import ExecutionStatus
from protocol.jobs import RetryPolicy, Semantics, Success
from scheduler_node import dispatch
from scheduler_node.dispatch import Outcome, OutcomeKind, parse_retry_after
from scheduler_node.retry import FailureKind, decide

NOW = 1_795_428_000.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"120", 120.0),
        (" 0 ", 0.0),
        (email.utils.formatdate(NOW + 90, usegmt=True), 90.0),
        (email.utils.formatdate(NOW - 90, usegmt=True), 0.0),  # in the past: now
        ("Mon, 23 Nov 2026 10:01:00 -0000", 60.0),  # naive date taken as GMT
        (b"-5", None),
        (b"1.5", None),
        (b"tomorrow", None),
        (b"", None),
    ],
)
def test_parse_retry_after(value: bytes | str, expected: float | None) -> None:
    got = parse_retry_after(value, NOW)
    assert got == expected if expected is None else got == pytest.approx(expected, abs=1)


def outcome(kind: OutcomeKind, *, bytes_written: bool = True, **kw: Any) -> Outcome:
    return Outcome(kind=kind, bytes_written=bytes_written, started_at=NOW, duration_s=0.01, **kw)


def test_attempt_result_feeds_the_retry_policy() -> None:
    def fate(o: Outcome, semantics: Semantics) -> ExecutionStatus | None:
        d = decide(
            semantics=semantics,
            success=Success(),
            policy=RetryPolicy(),
            attempt=1,
            result=o.attempt_result(),
            unit_random=0.5,
        )
        return d.terminal

    ok = outcome(OutcomeKind.RESPONSE, http_status=204)
    assert ok.attempt_result().kind is FailureKind.RESPONSE
    assert fate(ok, Semantics.AT_MOST_ONCE) is ExecutionStatus.SUCCEEDED
    refused = outcome(OutcomeKind.CONNECT_ERROR, bytes_written=False)
    assert fate(refused, Semantics.AT_MOST_ONCE) is None  # nothing written: retried even at most once
    broken = outcome(OutcomeKind.CONNECTION_ERROR)
    assert fate(broken, Semantics.AT_MOST_ONCE) is ExecutionStatus.FAILED
    assert fate(broken, Semantics.AT_LEAST_ONCE) is None
    busy = outcome(OutcomeKind.RESPONSE, http_status=503, retry_after_s=30.0)
    assert busy.attempt_result().retry_after_ms == 30_000
    for kind in (OutcomeKind.NOT_SENT, OutcomeKind.CANCELLED):
        with pytest.raises(ValueError):
            outcome(kind).attempt_result()


def test_outcome_kinds_match_retry_failure_kinds() -> None:
    assert {k.value for k in FailureKind} <= {k.value for k in OutcomeKind}


def test_exported_members() -> None:
    # Every public name of every module is re-exported by the package, and every exported name exists.
    exported = set(dispatch.__all__)
    for module in ("connection", "dispatcher", "exchange", "outcome", "pool", "request"):
        names = set(importlib.import_module(f"scheduler_node.dispatch.{module}").__all__)
        missing = names - exported
        assert not missing, (module, missing)
    for name in exported:
        assert getattr(dispatch, name) is not None
    assert dispatch.__all__ == sorted(dispatch.__all__, key=lambda n: (not n.isupper(), n))
