"""RequestTemplate: bytes parse back (with h11) to exactly the headers the design names; signatures verify."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import h11
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.executions import Origin
from protocol.jobs import HttpMethod, Semantics, Target
from scheduler_node.dispatch import (
    USER_AGENT,
    HttpOrigin,
    RequestTemplate,
    format_scheduled_at,
    verify_signature,
)

SLOT_MS = 1_795_428_000_000  # 2026-11-23T10:00:00Z
JOB = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"


def parse(raw: bytes) -> tuple[h11.Request, list[tuple[str, str]], bytes]:
    """Parse one request with h11; headers in order with original case."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    request = conn.next_event()
    assert isinstance(request, h11.Request)
    body = b""
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            break
        else:
            pytest.fail(f"incomplete request: {event!r}")
    assert conn.next_event() is h11.NEED_DATA  # nothing after the request
    headers = [(k.decode(), v.decode()) for k, v in request.headers.raw_items()]
    return request, headers, body


def reference_rfc3339(ms: int) -> str:
    dt = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def test_request_bytes_headers_in_order() -> None:
    target = Target(
        url="http://hooks.example.com:8080/run?x=1", body={"n": 1}, headers={"Authorization": "Bearer t"}
    )
    t = RequestTemplate.build(JOB, target, node_id="node-a")
    assert t.http_origin == HttpOrigin("http", "hooks.example.com", 8080)
    request, headers, body = parse(t.render(SLOT_MS, 2, "scheduled", 0))
    assert request.method == b"POST"
    assert request.target == b"/run?x=1"
    assert request.http_version == b"1.1"
    assert headers == [
        ("Host", "hooks.example.com:8080"),
        ("User-Agent", USER_AGENT),
        ("Content-Type", "application/json"),
        ("Content-Length", "7"),
        ("Authorization", "Bearer t"),
        ("X-Shardwheel-Job", JOB),
        ("X-Shardwheel-Node", "node-a"),
        ("X-Shardwheel-Scheduled-At", "2026-11-23T10:00:00.000Z"),
        ("X-Shardwheel-Attempt", "2"),
        ("Idempotency-Key", f"{JOB}:{SLOT_MS}:scheduled"),
    ]
    assert body == b'{"n":1}'
    assert USER_AGENT.startswith("shardwheel/")


@pytest.mark.parametrize(
    ("method", "content_length"),
    [
        (HttpMethod.GET, None),
        (HttpMethod.DELETE, None),
        (HttpMethod.POST, "0"),
        (HttpMethod.PUT, "0"),
        (HttpMethod.PATCH, "0"),
    ],
)
def test_content_length_without_body(method: HttpMethod, content_length: str | None) -> None:
    t = RequestTemplate.build(JOB, Target(url="https://h.example/", method=method), node_id="n")
    _, headers, body = parse(t.render(SLOT_MS, 1, "manual", 0))
    assert dict(headers).get("Content-Length") == content_length
    assert "Content-Type" not in dict(headers)
    assert body == b""


def test_host_header_and_origin_forms() -> None:
    cases = {
        "https://Example.COM/": (HttpOrigin("https", "example.com", 443), "example.com"),
        "http://example.com:80": (HttpOrigin("http", "example.com", 80), "example.com"),
        "https://example.com:8443/a": (HttpOrigin("https", "example.com", 8443), "example.com:8443"),
        "http://[::1]:9000/x": (HttpOrigin("http", "::1", 9000), "[::1]:9000"),
        "https://bücher.example/": (
            HttpOrigin("https", "xn--bcher-kva.example", 443),
            "xn--bcher-kva.example",
        ),
    }
    for url, (origin, host) in cases.items():
        t = RequestTemplate.build(JOB, Target(url=url, method=HttpMethod.GET), node_id="n")
        _, headers, _ = parse(t.render(SLOT_MS, 1, "scheduled", 0))
        assert t.http_origin == origin, url
        assert dict(headers)["Host"] == host, url
    assert str(HttpOrigin("http", "::1", 9000)) == "http://[::1]:9000"


def test_path_is_percent_encoded_not_double_encoded() -> None:
    t = RequestTemplate.build(JOB, Target(url="http://h/a b/ü%20?q=a b", method=HttpMethod.GET), node_id="n")
    request, _, _ = parse(t.render(SLOT_MS, 1, "scheduled", 0))
    assert request.target == b"/a%20b/%C3%BC%20?q=a%20b"


def test_job_headers_replace_content_type_and_user_agent() -> None:
    target = Target(
        url="http://h/", body=[1], headers={"content-type": "application/vnd.x+json", "User-Agent": "me"}
    )
    _, headers, _ = parse(RequestTemplate.build(JOB, target, node_id="n").render(SLOT_MS, 1, "scheduled", 0))
    names = [k.lower() for k, _ in headers]
    assert names.count("content-type") == 1 and names.count("user-agent") == 1
    assert dict(headers)["content-type"] == "application/vnd.x+json"
    assert dict(headers)["User-Agent"] == "me"


@pytest.mark.parametrize(
    "headers",
    [
        {"Host": "evil"},
        {"Content-Length": "1"},
        {"X-Shardwheel-Job": "x"},
        {"Idempotency-Key": "k"},
        {"X-Ok": "a\r\nInjected: 1"},
        {"Bad Name": "v"},
    ],
)
def test_refuses_headers_that_could_break_framing(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        RequestTemplate.build(JOB, Target(url="http://h/", headers=headers), node_id="n")


def test_refuses_bad_ids_and_origins() -> None:
    with pytest.raises(ValueError):
        RequestTemplate.build("a:b", Target(url="http://h/"), node_id="n")
    with pytest.raises(ValueError):
        RequestTemplate.build(JOB, Target(url="http://h/"), node_id="n\r\nX: y")
    with pytest.raises(ValueError):
        RequestTemplate.build(JOB, Target(url="ftp://h/"), node_id="n")
    t = RequestTemplate.build(JOB, Target(url="http://h/"), node_id="n")
    with pytest.raises(ValueError):
        t.render(SLOT_MS, 1, "sched\r\nuled", 0)


def test_for_job_takes_semantics() -> None:
    from protocol.jobs import Job, JobSpec, JobState
    from protocol.schedules import Every

    spec = JobSpec(
        name="j", schedule=Every(every="1s"), target=Target(url="http://h/"), semantics=Semantics.AT_MOST_ONCE
    )
    now = datetime.now(UTC)
    job = Job(
        id=JOB,
        tenant="t",
        spec=spec,
        state=JobState.ACTIVE,
        version=1,
        shard=3,
        created_at=now,
        updated_at=now,
    )
    t = RequestTemplate.for_job(job, node_id="n", signing_secret="s")
    assert t.semantics is Semantics.AT_MOST_ONCE and t.signed and t.job_id == JOB


def test_signature_verifies_and_fails_when_tampered() -> None:
    secret = b"topsecret"
    t = RequestTemplate.build(
        JOB, Target(url="http://h/", body={"a": [1, 2]}), node_id="n", signing_secret=secret
    )
    now = 1_795_428_001
    _, headers, body = parse(t.render(SLOT_MS, 1, "scheduled", now))
    h = dict(headers)
    assert h["X-Shardwheel-Timestamp"] == str(now)
    assert h["X-Shardwheel-Signature"].startswith("v1=") and len(h["X-Shardwheel-Signature"]) == 67
    assert verify_signature(secret, h, body, now_s=now + 10)
    assert verify_signature(secret.decode(), {k.upper(): v for k, v in h.items()}, body, now_s=now)
    # Tampering with anything signed, the wrong secret, or a replay outside the tolerance: rejected.
    assert not verify_signature(secret, h, body + b" ", now_s=now)
    assert not verify_signature(b"other", h, body, now_s=now)
    assert not verify_signature(secret, {**h, "X-Shardwheel-Job": "other"}, body, now_s=now)
    assert not verify_signature(
        secret, {**h, "X-Shardwheel-Scheduled-At": format_scheduled_at(SLOT_MS + 1)}, body, now_s=now
    )
    assert not verify_signature(secret, {**h, "X-Shardwheel-Timestamp": str(now + 1)}, body, now_s=now)
    assert not verify_signature(secret, h, body, now_s=now + 301)
    assert verify_signature(secret, h, body, now_s=now + 1000, tolerance_s=2000)
    missing = {k: v for k, v in h.items() if k != "X-Shardwheel-Signature"}
    assert not verify_signature(secret, missing, body, now_s=now)
    assert not verify_signature(secret, {**h, "X-Shardwheel-Timestamp": "soon"}, body, now_s=now)


def test_a_rotated_secret_signs_with_both_and_a_target_holding_either_accepts() -> None:
    """While a secret rotates, nodes sign with the new and the previous one; a target that still has the old
    secret, one that has switched, and one that holds both all accept; a stranger's secret does not."""
    new, old = b"the-new-secret", b"the-old-secret"
    target = Target(url="http://h/", body={"a": 1})
    t = RequestTemplate.build(JOB, target, node_id="n", signing_secret=[new, old])
    now = 1_795_428_001
    _, headers, body = parse(t.render(SLOT_MS, 1, "scheduled", now))
    h = dict(headers)
    first, second = h["X-Shardwheel-Signature"].split(",")
    only_new = RequestTemplate.build(JOB, target, node_id="n", signing_secret=new)
    assert first == dict(parse(only_new.render(SLOT_MS, 1, "scheduled", now))[1])["X-Shardwheel-Signature"]
    assert second.startswith("v1=") and second != first
    for target_holds in (new, old, [old, new], [b"unrelated", new]):
        assert verify_signature(target_holds, h, body, now_s=now)
    assert not verify_signature(b"stranger", h, body, now_s=now)
    assert not verify_signature([new, old], h, body + b"tampered", now_s=now)


def test_signature_without_body_signs_empty_body() -> None:
    import hashlib
    import hmac

    t = RequestTemplate.build(
        JOB, Target(url="http://h/", method=HttpMethod.GET), node_id="n", signing_secret=b"k"
    )
    _, headers, body = parse(t.render(SLOT_MS, 1, "scheduled", 1000))
    h = dict(headers)
    msg = f"1000.{JOB}.{h['X-Shardwheel-Scheduled-At']}.".encode()
    assert h["X-Shardwheel-Signature"] == "v1=" + hmac.new(b"k", msg, hashlib.sha256).hexdigest()
    assert body == b"" and verify_signature(b"k", h, b"", now_s=1000)


def test_format_scheduled_at() -> None:
    assert format_scheduled_at(SLOT_MS) == "2026-11-23T10:00:00.000Z"
    assert format_scheduled_at(0) == "1970-01-01T00:00:00.000Z"
    assert format_scheduled_at(951_782_400_007) == "2000-02-29T00:00:00.007Z"  # leap day


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(
    job_id=st.text(alphabet="abcdefABCDEF0123456789-_.", min_size=1, max_size=40),
    slot_ms=st.integers(0, 253_402_300_799_999),  # up to 9999-12-31T23:59:59.999Z
    attempt=st.integers(0, 100_000),
    origin=st.sampled_from(list(Origin)),
    body=json_values,
    secret=st.none() | st.binary(min_size=1, max_size=32),
    send_time=st.integers(0, 2**40),
)
def test_render_parses_back(
    job_id: str,
    slot_ms: int,
    attempt: int,
    origin: Origin,
    body: object,
    secret: bytes | None,
    send_time: int,
) -> None:
    t = RequestTemplate.build(
        job_id, Target(url="http://h.example/x", body=body), node_id="node-7", signing_secret=secret
    )
    _, headers, got_body = parse(t.render(slot_ms, attempt, origin, send_time))
    h = dict(headers)
    assert h["X-Shardwheel-Job"] == job_id
    assert h["X-Shardwheel-Node"] == "node-7"
    assert h["X-Shardwheel-Scheduled-At"] == reference_rfc3339(slot_ms)
    assert h["X-Shardwheel-Attempt"] == str(attempt)
    assert h["Idempotency-Key"] == f"{job_id}:{slot_ms}:{origin.value}"
    if body is None:
        assert got_body == b"" and h["Content-Length"] == "0"
    else:
        assert msgspec.json.decode(got_body) == body
        assert h["Content-Length"] == str(len(got_body))
    if secret is None:
        assert "X-Shardwheel-Signature" not in h
    else:
        assert verify_signature(secret, h, got_body, now_s=send_time)


def test_template_is_untracked_by_gc_and_hides_its_secret() -> None:
    import gc

    t = RequestTemplate.build(
        JOB, Target(url="http://h/", body={"a": 1}), node_id="n", signing_secret=b"hush"
    )
    assert not gc.is_tracked(t)  # one per job in the horizon: kept out of every collection
    assert "hush" not in repr(t) and JOB in repr(t)


def test_render_cost_sanity() -> None:
    """No timing assert (machines vary); prints the cost and checks the output is stable under repetition."""
    t = RequestTemplate.build(JOB, Target(url="http://h/", body={"k": "v" * 100}), node_id="n")
    ts = RequestTemplate.build(
        JOB, Target(url="http://h/", body={"k": "v" * 100}), node_id="n", signing_secret=b"k"
    )
    n = 20_000
    for template in (t, ts):
        first = template.render(SLOT_MS, 1, "scheduled", 1)
        start = time.perf_counter()
        for _ in range(n):
            out = template.render(SLOT_MS, 1, "scheduled", 1)
        per_call_us = (time.perf_counter() - start) / n * 1e6
        assert out == first
        print(f"render ({'signed' if template.signed else 'unsigned'}): {per_call_us:.2f} µs")
