"""Accepted means runnable: ``decode_job_spec`` passes a spec only if every step a node takes with it
succeeds.

Hypothesis builds job documents from valid ones with edge values put in anywhere (the ends of the datetime
range with offsets, IDNA and IPv6 hosts, huge numbers, deep nesting, NUL and control characters, unicode
everywhere), and holds each to: a ``SpecError`` naming the field, or every step succeeds — compiling and
iterating the schedule from several instants, building and rendering the request, and (second test) a round
trip through PostgreSQL after which the node reads back the spec it was given. Before issue 12 it found
``at: 9999-12-31T23:30:00-01:00`` (OverflowError at load, every restart), zone ``America`` (a tzdata folder),
``every: 99999999999999999999d`` and NUL characters (jsonb refuses them: a 500 after validation).
"""

from __future__ import annotations

import itertools
import json
import math
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import SpecError
from protocol.internal import JobWrite, JobWriteOp
from protocol.jobs import Job, JobSpec, JobState, decode_job_spec
from protocol.slots import compile_schedule
from scheduler_node.dispatch import RequestTemplate
from scheduler_node.store import get_job, write_job
from scheduler_node.trio_store import TrioStore

from ..protocol.strategies import job_specs
from .conftest import job_in_shard, own

CREATED = datetime(2031, 5, 6, 12, 0, 0, 123_000, tzinfo=UTC)

_offsets = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
_any_instant = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=_offsets),
    st.sampled_from([datetime(9999, 12, 31, 23, 30), datetime(9998, 12, 31, 23, 59, 59, 999_999),
                     datetime(1, 1, 1, 0, 30), datetime(1970, 1, 1), datetime(1969, 12, 31, 23, 59)])
    .flatmap(lambda d: _offsets.map(lambda tz: d.replace(tzinfo=tz))),
).map(lambda d: d.isoformat())  # fmt: skip
_hosts = st.sampled_from([
    "é..com", "bücher.example", "例え.テスト", "xn--", "xn--bcher-kva.example", "a" * 64 + ".com", "[::1]",
    "[::ffff:127.0.0.1]", "[fe80::1%25eth0]", "[2001:db8::1]", "127.0.0.1", "0x7f.1", "1.2.3.4.5", "", ".",
    "..",
    "a..b", "-a.com", "ex ample.com", "exa\0mple.com", "ex\u200bample.com", "\ud800.com",
])  # fmt: skip
_urls = st.one_of(
    st.tuples(st.sampled_from(["http", "https", "HTTP", "ftp"]), _hosts,
              st.sampled_from(["", ":0", ":80", ":65535", ":65536", ":-1", ":x"]),
              st.sampled_from(["/", "/a b", "/ü?q=ü", "/%zz", "/\r\n", "?#", ""]))
    .map(lambda t: f"{t[0]}://{t[1]}{t[2]}{t[3]}"),
    st.text(max_size=30),
)  # fmt: skip
_numbers = st.sampled_from([0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64, 10**30, -(10**30), 0.5,
                            1e308,
                            -1e-308, 1.5e300])  # fmt: skip
_text = st.text(max_size=12) | st.sampled_from(["\0", "a\0b", "\r\n", "\x7f", "\u2028", "\ud800", "🕐", "\t"])
_deep = st.integers(1, 80).map(lambda n: json.loads("[" * n + "]" * n))
_values = st.one_of(
    _numbers,
    _text,
    _any_instant,
    _urls,
    _deep,
    st.none(),
    st.booleans(),
    st.dictionaries(_text, _numbers | _text, max_size=3),
    st.lists(_numbers | _text, max_size=3),
)
_every = st.one_of(
    st.tuples(st.integers(0, 10**22), st.sampled_from(["ms", "s", "m", "h", "d", "w"]))
    .map(lambda t: f"{t[0]}{t[1]}"),
    st.tuples(st.sampled_from(["P", "PT"]), st.integers(0, 10**22),
              st.sampled_from(["D", "W", "H", "M", "S"]))
    .map(lambda t: f"{t[0]}{t[1]}{t[2]}"),
    st.sampled_from(["PT0.0015S", "PT1.0001S", "PT31622400S", "P366D", "P367D"]),
)  # fmt: skip
_schedules = st.one_of(
    _any_instant.map(lambda t: {"kind": "at", "at": t}),
    _every.map(lambda e: {"kind": "every", "every": e}),
    st.sampled_from(["0 0 0 29 2 *", "59 59 23 31 12 *", "* * * * * *", "0 0 0 L * *", "0 0 0 1 1 MON"])
    .map(lambda c: {"kind": "cron", "cron": c}),
)  # fmt: skip
_zones = st.sampled_from(["America", "America/", "UTC", "Etc/GMT+12", "Pacific/Kiritimati", "../../etc/pwd",
                          "posixrules", "Factory", "\0", "", "Asia/Kolkata"])  # fmt: skip
# Where each kind of edge value goes: a dotted path into the document (a list index as a number).
_PATHS: list[tuple[str, st.SearchStrategy[Any]]] = [
    ("schedule", _schedules), ("timezone", _zones), ("start_at", _any_instant), ("end_at", _any_instant),
    ("target.url", _urls), ("alert_webhook", _urls), ("name", _text), ("description", _text),
    ("tags", st.lists(_text, max_size=2)),
    ("target.headers", st.dictionaries(st.sampled_from(["X-A", "x-b", "Bad Name", "X-\0"]), _text,
                                       max_size=2)),
    ("target.body", _values), ("target.method", st.sampled_from(["GET", "POST", "TRACE"])),
    ("success.body_contains", _text), ("success.status", st.lists(_numbers, max_size=2)),
    ("retry.max_attempts", _numbers), ("retry.initial_backoff_ms", _numbers),
    ("retry.max_backoff_ms", _numbers),
    ("retry.multiplier", _numbers), ("retry.jitter", _numbers), ("timeout_ms", _numbers),
    ("misfire.grace_ms", _numbers), ("misfire.max_catchup", _numbers), ("pause_after_failures", _numbers),
    ("dst.gap", st.sampled_from(["skip", "shift", "x"])),
]  # fmt: skip


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    doc = msgspec.to_builtins(draw(job_specs()))
    for path, values in draw(
        st.lists(st.sampled_from(_PATHS), min_size=1, max_size=4, unique_by=lambda p: p[0])
    ):
        *parents, last = path.split(".")
        node = doc
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = draw(values)
    return json.dumps(doc).encode()


def runs(spec: JobSpec) -> Job:
    """Every step a node takes with a spec, short of the network; returns the job it would hold."""
    job_id = str(job_in_shard(0))
    job = Job(id=job_id, tenant="acme", spec=spec, state=JobState.ACTIVE, version=1, shard=0,
              created_at=CREATED, updated_at=CREATED)  # fmt: skip
    rule = compile_schedule(spec, CREATED)
    starts = [datetime(1970, 1, 1, tzinfo=UTC), CREATED, spec.start_at, spec.end_at]
    for after in [s for s in starts if s is not None]:
        slots = rule.preview(after, 3)
        ms = list(
            itertools.islice(
                rule.iter_ms((after.astimezone(UTC) - starts[0]) // timedelta(milliseconds=1)), 3
            )
        )
        assert len(ms) == len(slots)
    template = RequestTemplate.for_job(job, node_id="node-a", signing_secret=b"secret")
    for slot in [s for s in (rule.next_after(CREATED), CREATED) if s is not None]:
        slot_ms = (slot - starts[0]) // timedelta(milliseconds=1)  # type: ignore[operator]
        template.render(slot_ms, 0, "scheduled", 2_000_000_000)
        template.render(slot_ms, 7, "manual", 2_000_000_000)
    return job


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON: numbers by value (jsonb keeps numerals, so 1e300 may come back as an int)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return a == b or math.isclose(a, b, rel_tol=1e-15)
    return a == b and type(a) is type(b)


@settings(max_examples=600, deadline=None)
@given(documents())
def test_a_spec_is_refused_naming_the_field_or_every_step_of_a_node_succeeds(data: bytes) -> None:
    try:
        spec = decode_job_spec(data)
    except SpecError as e:
        assert e.problem and "\n" not in str(e)
        return
    runs(spec)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.lists(documents(), min_size=5, max_size=5))
async def test_an_accepted_spec_is_stored_and_read_back_as_it_was_given(
    db_dsn: str, data: list[bytes]
) -> None:
    accepted = []
    for doc in data:
        try:
            accepted.append(decode_job_spec(doc))
        except SpecError:
            pass
    async with TrioStore.open(db_dsn, max_size=1) as store:
        fence = await own(store, 0)
        for spec in accepted:
            job_id = job_in_shard(0)
            write = JobWrite(op=JobWriteOp.UPSERT, actor="t", tenant="acme", spec=spec)
            await store.call(write_job, fence, job_id, write, next_fire_at=CREATED)
            back = await store.call(get_job, 0, job_id)
            assert same_json(msgspec.to_builtins(back.spec), msgspec.to_builtins(spec))
            runs(back.spec)
            assert back.id == str(uuid.UUID(back.id))
