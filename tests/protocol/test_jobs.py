from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import SpecError
from protocol.jobs import JobSpec, decode_job_spec, validate_job_spec

from .strategies import job_specs

VALID = {
    "name": "nightly-report",
    "schedule": {"kind": "cron", "cron": "0 30 2 * * *"},
    "timezone": "Europe/London",
    "target": {"url": "https://reports.example.com/run", "headers": {"X-Team": "data"}, "body": {"a": 1}},
}


def with_(path: str, value: object) -> bytes:
    """VALID with one dotted path set (or removed when value is ...)."""
    doc = json.loads(json.dumps(VALID))
    *parents, last = path.split(".")
    node = doc
    for p in parents:
        node = node.setdefault(p, {})
    if value is ...:
        node.pop(last, None)
    else:
        node[last] = value
    return json.dumps(doc).encode()


@settings(max_examples=300, deadline=None)
@given(job_specs())
def test_every_valid_spec_survives_encode_decode(spec: JobSpec) -> None:
    validate_job_spec(spec)
    data = msgspec.json.encode(spec)
    assert decode_job_spec(data) == spec
    # and through a generic JSON round trip (what a client library does)
    assert decode_job_spec(json.dumps(json.loads(data))) == spec


def test_minimal_spec_gets_defaults() -> None:
    spec = decode_job_spec(json.dumps(VALID))
    assert spec.semantics == "AT_LEAST_ONCE"
    assert spec.target.method == "POST"
    assert spec.retry.max_attempts == 3
    assert spec.dst.gap == "shift" and spec.dst.repeat == "first"


INVALID = [
    (with_("schedule.cron", "0 61 * * * *"), "schedule.cron", "minute field '61' out of range 0-59"),
    (with_("schedule.cron", "* * * *"), "schedule.cron", "fields"),
    (with_("timezone", "Mars/Olympus"), "timezone", "unknown IANA zone 'Mars/Olympus'"),
    (with_("target.url", "ftp://example.com/x"), "target.url", "scheme must be http or https"),
    (with_("target.url", "https:///nohost"), "target.url", "no host"),
    (with_("target.url", 42), "target.url", "Expected `str`, got `int`"),
    (with_("target.headers", {"Bad Header": "x"}), "target.headers.Bad Header", "not a valid HTTP header name"),
    (with_("target.headers", {"X-Shardwheel-Job": "x"}), "target.headers.X-Shardwheel-Job", "set by the scheduler"),
    (with_("target.headers", {"X-A": "a\r\nb"}), "target.headers.X-A", "control character"),
    (with_("target.headers", {"X-A": "a\x01b"}), "target.headers.X-A", "control character"),
    (with_("target.body", "x" * 70_000), "target.body", "more than 65536"),
    (with_("target.method", "TRACE"), "target.method", "Invalid enum value 'TRACE'"),
    (with_("name", ""), "name", "must not be empty"),
    (with_("name", "x" * 201), "name", "longer than 200"),
    (with_("tags", ["ok", "not ok"]), "tags[1]", "is not a tag"),
    (with_("schedule", {"kind": "every", "every": "P1M"}), "schedule.every", "calendar duration"),
    (with_("schedule", {"kind": "every", "every": "0s"}), "schedule.every", "shorter than the minimum"),
    (with_("schedule", {"kind": "every", "every": "soon"}), "schedule.every", "not a duration"),
    (with_("schedule", {"kind": "at", "at": "2026-01-01T00:00:00"}), "schedule.at", "UTC offset"),
    (with_("schedule", {"kind": "weekly"}), "schedule.kind", "Invalid value 'weekly'"),
    (with_("schedule", {"kind": "cron", "cron": "* * * * *", "every": "5s"}), "schedule.every", "unknown field"),
    (with_("timout_ms", 5), "timout_ms", "unknown field"),
    (with_("timeout_ms", 0), "timeout_ms", ">= 1"),
    (with_("timeout_ms", 400_000), "timeout_ms", "at most 300000"),
    (with_("retry", {"max_attempts": 0}), "retry.max_attempts", ">= 1"),
    (with_("retry", {"initial_backoff_ms": 5000, "max_backoff_ms": 10}), "retry.initial_backoff_ms", "larger"),
    (with_("start_at", "2026-01-02T00:00:00Z") and json.dumps(
        {**VALID, "start_at": "2026-01-02T00:00:00Z", "end_at": "2026-01-01T00:00:00Z"}).encode(),
     "end_at", "after start_at"),
    (with_("alert_webhook", "mailto:ops@example.com"), "alert_webhook", "scheme must be http or https"),
    # What the node cannot build a request from is refused here (protocol.targets is the one parse).
    (with_("target.url", "http://é..com/"), "target.url", "host 'é..com' is not a valid internationalised"),
    (with_("alert_webhook", "https://é..com/hook"), "alert_webhook", "label empty or too long"),
    (with_("target.url", "http://example.com:0/"), "target.url", "port 0 is not allowed"),
    (with_("target.url", "http://example.com:99999/"), "target.url", "not a valid URL"),
    (with_("target.url", "https://user:pw@example.com/"), "target.url", "credentials"),
    (with_("target.url", "https://example.com/a b"), "target.url", "whitespace"),
    (with_("target.url", "https://example.com/" + "a" * 2_100), "target.url", "longer than 2048"),
    # Accepted once, then fatal to every node loading the shard (issue 12), or a 500 answer.
    (with_("schedule", {"kind": "at", "at": "9999-12-31T23:30:00-01:00"}), "schedule.at", "must lie between"),
    (with_("schedule", {"kind": "at", "at": "0001-01-01T00:30:00+01:00"}), "schedule.at", "must lie between"),
    (with_("start_at", "9999-12-31T23:30:00-01:00"), "start_at", "between 1970-01-01 and 9999-01-01"),
    (with_("end_at", "1969-12-31T23:59:59Z"), "end_at", "must lie between"),
    (with_("timezone", "America"), "timezone", "unknown IANA zone 'America'"),
    (with_("timezone", "../../etc/passwd"), "timezone", "unknown IANA zone"),
    (with_("schedule", {"kind": "every", "every": "9" * 20 + "d"}), "schedule.every", "maximum of 366"),
    (with_("schedule", {"kind": "every", "every": "P99999999999999999999D"}), "schedule.every", "maximum"),
    (with_("schedule", {"kind": "every", "every": "PT1.0005S"}), "schedule.every", "whole number of milli"),
    (with_("jitter", "2h"), "jitter", "longer than the maximum jitter of 1h"),
    (with_("jitter", "0s"), "jitter", "shorter than the minimum of 1s"),
    (with_("jitter", "a while"), "jitter", "not a duration"),
    (with_("jitter", 30), "jitter", "Expected `str | null`, got `int`"),
    (with_("description", "a\0b"), "description", "NUL character"),
    (with_("description", "a\x07b"), "description", "control characters"),
    (with_("target.body", {"k": ["ok", "a\0b"]}), "target.body.k[1]", "NUL"),
    (with_("target.body", {"a\0": 1}), "target.body.a\\x00", "NUL"),  # escaped: messages are one line
    (with_("success", {"body_contains": "\0"}), "success.body_contains", "NUL"),
    (with_("target.body", json.loads("[" * 40 + "]" * 40)), "target.body", "nested more than 32"),
    (with_("target.body", "x").replace(b'"x"', b"[" * 100_000 + b"]" * 100_000), "", "nested too deeply"),
    (with_("target", {"url": "https://example.com/", "retries": 3}), "target.retries", "unknown field"),
    (with_("", 1), "", "unknown field"),  # an empty key names no field: the problem alone
    (with_("dst", {"": 1}), "dst.", "unknown field"),
    (with_("retry", {"max_attempts": 2, "x": {"y": 1}}), "retry.x", "unknown field"),
    (with_("schedule", ...), "schedule", "required"),
    (b"{not json", "", "malformed"),
]


@pytest.mark.parametrize(("data", "field", "problem"), INVALID, ids=[f"{i}-{c[1] or 'root'}" for i, c in enumerate(INVALID)])
def test_invalid_specs_name_the_field(data: bytes, field: str, problem: str) -> None:
    with pytest.raises(SpecError) as info:
        decode_job_spec(data)
    assert info.value.field == field
    assert problem.lower() in info.value.problem.lower()
    assert str(info.value).startswith(f"{field}: " if field else info.value.problem)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_garbage_is_a_spec_error_never_a_crash(data: bytes | str) -> None:
    try:
        decode_job_spec(data)
    except SpecError:
        pass


@given(st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=30))
def test_control_characters_are_found_as_by_their_code_points(text: str) -> None:
    from protocol.jobs import _CONTROL, _CONTROL_BUT_WHITESPACE

    assert (_CONTROL.search(text) is not None) == any(ord(c) < 32 for c in text)
    assert (_CONTROL_BUT_WHITESPACE.search(text) is not None) == any(ord(c) < 32 and c not in "\t\n\r" for c in text)
