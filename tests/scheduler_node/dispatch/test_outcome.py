"""Outcome: Retry-After parsing and the package's exported names (the mapping to the retry policy is
scheduler_node.attempts, tested in tests/scheduler_node/test_attempts.py)."""

from __future__ import annotations

import email.utils
import importlib

import pytest

from scheduler_node import dispatch
from scheduler_node.dispatch import parse_retry_after

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
