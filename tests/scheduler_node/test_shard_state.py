"""``LoadedJob.next_slot`` against the schedule itself: the kept iterator and the repeated question change no answer."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import cast

from hypothesis import given
from hypothesis import strategies as st

from protocol.jobs import JobSpec, JobState, Target
from protocol.schedules import Cron, Every
from protocol.slots import compile_schedule
from scheduler_node.dispatch import RequestTemplate
from scheduler_node.shard_state import LoadedJob

T0 = datetime(2026, 11, 29, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)
SCHEDULES = [Every("7s"), Cron("*/5 * * * * *"), Cron("0 0 * * * *")]


@given(
    st.sampled_from(SCHEDULES),
    st.lists(st.one_of(st.integers(0, 10_000_000), st.just(-1), st.just(-2)), max_size=30),
)
def test_next_slot_is_the_schedules_first_slot_after_whatever_is_asked(
    schedule: Every | Cron, asks: list[int]
) -> None:
    """-1: ask for the slot after the last answer (the kept iterator's step); -2: the last question again."""
    spec = JobSpec(name="j", schedule=schedule, target=Target(url="http://127.0.0.1:9/"))
    rule = compile_schedule(spec, T0)
    job = LoadedJob(id=uuid.uuid4(), shard=0, tenant="t", spec=spec, state=JobState.ACTIVE, version=1, rule=rule,
                    template=cast(RequestTemplate, None))  # fmt: skip
    last_after, last_answer = T0_MS, None
    for ask in asks:
        after = {-1: last_answer, -2: last_after}.get(ask, T0_MS + ask)
        if after is None:
            continue
        answer = job.next_slot(after)
        assert answer == next(rule.iter_ms(after), None)
        last_after, last_answer = after, answer
