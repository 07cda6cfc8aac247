from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.executions import ExecutionStatus
from protocol.jobs import RetryPolicy, Semantics, Success
from scheduler_node.retry import AttemptResult, FailureKind, backoff_ms, decide, is_success

policies = st.builds(
    lambda initial, extra, mult, jitter, attempts: RetryPolicy(
        max_attempts=attempts,
        initial_backoff_ms=initial,
        multiplier=mult,
        max_backoff_ms=initial + extra,
        jitter=jitter,
    ),
    st.integers(0, 100_000),
    st.integers(0, 1_000_000),
    st.floats(1.0, 10.0),
    st.floats(0.0, 1.0),
    st.integers(1, 20),
)
results = st.builds(
    AttemptResult,
    kind=st.sampled_from(FailureKind),
    http_status=st.none() | st.integers(100, 599),
    body_matched=st.none() | st.booleans(),
    bytes_written=st.booleans(),
    retry_after_ms=st.none() | st.integers(0, 10**9),
)


def reference(
    semantics: Semantics, success: Success, policy: RetryPolicy, attempt: int, r: AttemptResult, u: float
) -> tuple[ExecutionStatus | None, int | None]:
    """The rules of DESIGN.md §5 written the slow, obvious way."""
    ok = (
        r.kind == "response"
        and r.http_status is not None
        and ((r.http_status in success.status) if success.status else 200 <= r.http_status <= 299)
        and (success.body_contains is None or r.body_matched is True)
    )
    if ok:
        return ExecutionStatus.SUCCEEDED, None
    if r.kind == "egress_denied":
        retryable = False  # the policy refused the address: no later attempt can differ
    elif semantics == "AT_MOST_ONCE":
        retryable = r.kind != "response" and not r.bytes_written
    else:
        retryable = r.kind != "response" or r.http_status == 429 or (r.http_status or 0) >= 500
    if retryable and attempt < policy.max_attempts:
        delay = policy.initial_backoff_ms
        for _ in range(attempt - 1):
            delay *= policy.multiplier
        delay = min(delay, policy.max_backoff_ms) * (1 + policy.jitter * (2 * u - 1))
        if r.retry_after_ms is not None:
            delay = max(delay, min(r.retry_after_ms, 86_400_000))
        return None, round(delay)
    return (ExecutionStatus.TIMED_OUT if r.kind == "timeout" else ExecutionStatus.FAILED), None


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(Semantics),
    st.lists(st.integers(200, 599), max_size=3),
    st.none() | st.just("ok"),
    policies,
    st.integers(1, 20),
    results,
    st.floats(0.0, 0.999999),
)
def test_agrees_with_reference(
    semantics: Semantics,
    statuses: list[int],
    contains: str | None,
    policy: RetryPolicy,
    attempt: int,
    result: AttemptResult,
    u: float,
) -> None:
    success = Success(status=statuses, body_contains=contains)
    d = decide(
        semantics=semantics, success=success, policy=policy, attempt=attempt, result=result, unit_random=u
    )
    want_terminal, want_delay = reference(semantics, success, policy, attempt, result, u)
    assert d.terminal == want_terminal
    if want_delay is None:
        assert d.retry_in_ms is None
    else:
        assert d.retry_in_ms is not None and abs(d.retry_in_ms - want_delay) <= 1


@settings(max_examples=300, deadline=None)
@given(policies, results)
def test_at_most_once_never_retries_after_a_byte_was_written(
    policy: RetryPolicy, result: AttemptResult
) -> None:
    if result.bytes_written:
        d = decide(
            semantics=Semantics.AT_MOST_ONCE,
            success=Success(),
            policy=policy,
            attempt=1,
            result=result,
            unit_random=0.5,
        )
        assert d.retry_in_ms is None and d.terminal is not None


@settings(max_examples=300, deadline=None)
@given(policies, st.floats(0.0, 0.999999))
def test_backoff_grows_and_stays_in_its_jitter_band(policy: RetryPolicy, u: float) -> None:
    flat = RetryPolicy(
        initial_backoff_ms=policy.initial_backoff_ms,
        multiplier=policy.multiplier,
        max_backoff_ms=policy.max_backoff_ms,
        jitter=0.0,
    )
    delays = [backoff_ms(flat, n, u) for n in range(1, 12)]
    assert delays == sorted(delays) and max(delays) <= policy.max_backoff_ms
    for n in range(1, 12):
        d = backoff_ms(policy, n, u)
        base = min(policy.initial_backoff_ms * policy.multiplier ** (n - 1), policy.max_backoff_ms)
        assert base * (1 - policy.jitter) - 1 <= d <= base * (1 + policy.jitter) + 1


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (AttemptResult(FailureKind.RESPONSE, 500), None),
        (AttemptResult(FailureKind.RESPONSE, 429, retry_after_ms=30_000), None),
        (AttemptResult(FailureKind.RESPONSE, 404), ExecutionStatus.FAILED),
        (AttemptResult(FailureKind.RESPONSE, 302), ExecutionStatus.FAILED),
        (AttemptResult(FailureKind.RESPONSE, 204), ExecutionStatus.SUCCEEDED),
        (AttemptResult(FailureKind.TIMEOUT), None),
        (AttemptResult(FailureKind.CONNECT_ERROR, bytes_written=False), None),
    ],
)
def test_named_outcomes_at_least_once(result: AttemptResult, expected: ExecutionStatus | None) -> None:
    d = decide(
        semantics=Semantics.AT_LEAST_ONCE,
        success=Success(),
        policy=RetryPolicy(),
        attempt=1,
        result=result,
        unit_random=0.5,
    )
    assert d.terminal == expected
    if result.retry_after_ms:
        assert d.retry_in_ms == 30_000


def test_last_attempt_timeout_is_timed_out() -> None:
    d = decide(
        semantics=Semantics.AT_LEAST_ONCE,
        success=Success(),
        policy=RetryPolicy(max_attempts=2),
        attempt=2,
        result=AttemptResult(FailureKind.TIMEOUT),
        unit_random=0.5,
    )
    assert d.terminal == ExecutionStatus.TIMED_OUT


def test_body_condition() -> None:
    s = Success(body_contains="OK")
    assert not is_success(s, AttemptResult(FailureKind.RESPONSE, 200, body_matched=False))
    assert is_success(s, AttemptResult(FailureKind.RESPONSE, 200, body_matched=True))
    assert is_success(Success(status=[404]), AttemptResult(FailureKind.RESPONSE, 404))
    assert not is_success(Success(status=[404]), AttemptResult(FailureKind.RESPONSE, 200))
