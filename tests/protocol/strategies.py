"""Hypothesis strategies for valid job specs (shared by protocol and API tests)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import strategies as st

from protocol.jobs import (
    Concurrency,
    DstGap,
    DstPolicy,
    DstRepeat,
    HttpMethod,
    JobSpec,
    Misfire,
    MisfirePolicy,
    RetryPolicy,
    Semantics,
    Success,
    Target,
)
from protocol.schedules import At, Cron, Every

ZONES = ["UTC", "America/New_York", "Europe/London", "Australia/Lord_Howe", "Asia/Kolkata", "Pacific/Chatham"]

_sec_min = st.sampled_from(["*", "0", "30", "*/5", "0-29", "10-40/10", "1,2,3", "59"])
_hour = st.sampled_from(["*", "2", "*/2", "9-17", "0,12", "23"])
_dom = st.sampled_from(["*", "1", "15", "1-7", "*/10", "29", "?"])
_month = st.sampled_from(["*", "1", "JAN", "jun-aug", "*/3", "12"])
_dow = st.sampled_from(["*", "0", "7", "MON-FRI", "sun,sat", "1-5", "?"])

cron_expressions = st.one_of(
    st.tuples(_sec_min, _sec_min, _hour, _dom, _month, _dow).map(" ".join),
    st.tuples(_sec_min, _hour, _dom, _month, _dow).map(" ".join),
    st.sampled_from(["@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"]),
)
every_texts = st.one_of(
    st.sampled_from(["s", "m", "h", "d"]).flatmap(
        lambda u: st.integers(1, 366 if u == "d" else 500).map(lambda n: f"{n}{u}")),
    st.integers(1, 86_400).map(lambda n: f"PT{n}S"),
    st.sampled_from(["1h30m", "P1D", "P2W", "P1DT12H", "PT1.5S"]),
)
instants = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)).map(
    lambda d: d.replace(microsecond=(d.microsecond // 1000) * 1000)
)
schedules = st.one_of(
    cron_expressions.map(lambda c: Cron(cron=c)),
    every_texts.map(lambda e: Every(every=e)),
    instants.map(lambda t: At(at=t)),
)
_text = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF, exclude_categories=("Cs",)), max_size=40)
# jsonb refuses NUL anywhere, and a lone surrogate is no UTF-8 at all
_stored_text = st.text(st.characters(exclude_characters="\0", exclude_categories=("Cs",)), max_size=20)
names = _text.filter(lambda s: s.strip() != "").map(lambda s: s[:200])
tags = st.lists(st.from_regex(r"[a-z0-9][a-z0-9_.:=-]{0,20}", fullmatch=True), max_size=5, unique=True)
header_names = st.from_regex(r"X-[A-Za-z0-9-]{1,20}", fullmatch=True)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | _stored_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_stored_text, children, max_size=4),
    max_leaves=12,
)
targets = st.builds(
    Target,
    url=st.sampled_from(["https://example.com/hook", "http://api.example.org:8080/run?x=1", "https://a.b.c/"]),
    method=st.sampled_from([HttpMethod.POST, HttpMethod.PUT, HttpMethod.PATCH, HttpMethod.DELETE]),
    headers=st.dictionaries(header_names, st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30),
                            max_size=4),
    body=json_values,
)


@st.composite
def job_specs(draw: st.DrawFn) -> JobSpec:
    start = draw(st.none() | instants)
    end = draw(st.none() | instants.filter(lambda e: start is None or e > start))
    backoff = draw(st.integers(0, 60_000))
    return JobSpec(
        name=draw(names),
        schedule=draw(schedules),
        target=draw(targets),
        description=draw(_text),
        tags=draw(tags),
        timezone=draw(st.sampled_from(ZONES)),
        dst=DstPolicy(gap=draw(st.sampled_from(DstGap)), repeat=draw(st.sampled_from(DstRepeat))),
        start_at=start,
        end_at=end if end is None or start is None or end > start else start + timedelta(days=1),
        success=Success(status=draw(st.lists(st.integers(200, 599), max_size=3)),
                        body_contains=draw(st.none() | _stored_text)),
        semantics=draw(st.sampled_from(Semantics)),
        retry=RetryPolicy(max_attempts=draw(st.integers(1, 20)), initial_backoff_ms=backoff,
                          multiplier=draw(st.floats(1.0, 10.0)),
                          max_backoff_ms=draw(st.integers(backoff, 86_400_000)),
                          jitter=draw(st.floats(0.0, 1.0))),
        timeout_ms=draw(st.integers(1, 300_000)),
        concurrency=draw(st.sampled_from(Concurrency)),
        misfire=Misfire(policy=draw(st.sampled_from(MisfirePolicy)), grace_ms=draw(st.integers(0, 86_400_000)),
                        max_catchup=draw(st.integers(1, 10_000))),
        pause_after_failures=draw(st.none() | st.integers(1, 100)),
        alert_webhook=draw(st.none() | st.just("https://alerts.example.com/hook")),
    )
