"""Jitter: one offset per job, from its id alone, inside the window; a job's preview shows when each slot is sent."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.jitter import jitter_offset_ms, parse_jitter
from protocol.jobs import JobSpec, Target
from protocol.schedules import Cron
from protocol.shards import shard_of
from protocol.slots.instants import preview_instants


@given(st.uuids(), st.integers(1, 3_600))
def test_the_offset_is_the_jobs_own_and_inside_the_window(job_id: uuid.UUID, seconds: int) -> None:
    offset = jitter_offset_ms(job_id, f"{seconds}s")
    assert 0 <= offset < seconds * 1000
    assert jitter_offset_ms(uuid.UUID(bytes=job_id.bytes), f"{seconds}s") == offset  # any node, any time
    assert jitter_offset_ms(job_id, None) == 0


def test_a_herd_spreads_evenly_whatever_shard_its_jobs_share() -> None:
    # 3,000 jobs of one shard (the shard hashes the same ids): offsets of a 30 s window fill each second alike.
    rng = random.Random(7)
    ids = [i for i in (uuid.UUID(int=rng.getrandbits(128)) for _ in range(900_000)) if shard_of(i) == 7][:3_000]
    per_second = [0] * 30
    for job_id in ids:
        per_second[jitter_offset_ms(job_id, "30s") // 1000] += 1
    assert len(ids) == 3_000 and min(per_second) > 60 and max(per_second) < 140  # ~100 each


def test_parse_jitter() -> None:
    assert parse_jitter("30s") == 30_000 and parse_jitter("PT1H") == 3_600_000
    for bad, reason in (("61m", "maximum jitter of 1h"), ("500ms", "minimum of 1s"), ("", "empty")):
        with pytest.raises(ValueError, match=reason):
            parse_jitter(bad)


def test_a_jobs_preview_shows_when_each_slot_is_sent() -> None:
    hourly = JobSpec(name="h", schedule=Cron("0 0 * * * *"), target=Target(url="https://e.example/"), jitter="30s")
    job_id, after = uuid.uuid4(), datetime(2026, 11, 28, 10, 30, tzinfo=UTC)
    offset = jitter_offset_ms(job_id, "30s")
    shown = preview_instants(hourly, after, 3, job_id=job_id)
    assert [(p.utc, p.fires_at, p.jitter_offset_ms) for p in shown] == [
        (after + timedelta(minutes=30 + 60 * i), after + timedelta(minutes=30 + 60 * i, milliseconds=offset), offset)
        for i in range(3)]  # fmt: skip
    assert all(p.fires_at is None for p in preview_instants(hourly, after, 3))  # not yet a job: no id, no offset
