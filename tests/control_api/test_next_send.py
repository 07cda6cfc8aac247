"""``GET /v1/jobs/{id}``'s ``next_fire_at``: when the job's next slot is sent, from the schedule, the newest
claimed slot and the job's jitter offset, at explicit instants."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from control_api.jobs import next_send_at
from protocol.ids import new_job_id
from protocol.jitter import jitter_offset_ms
from protocol.jobs import Job, JobSpec, JobState, Target
from protocol.schedules import Every

T0 = datetime(2031, 5, 6, 12, 0, tzinfo=UTC)


def _job(jitter: str | None, state: JobState = JobState.ACTIVE) -> tuple[Job, timedelta]:
    """A job every 10 s from T0 whose jitter offset is at least 1 s (so "claimed, not sent yet" has room)."""
    while True:
        job_id = new_job_id()
        offset = jitter_offset_ms(job_id, jitter)
        if jitter is None or offset >= 1_000:
            break
    spec = JobSpec(name="j", schedule=Every("10s"), target=Target(url="https://example.com/"), jitter=jitter)
    job = Job(id=str(job_id), tenant="t", spec=spec, state=state, version=1, shard=0, created_at=T0,
              updated_at=T0, next_fire_at=T0)  # fmt: skip
    return job, timedelta(milliseconds=offset)


def test_a_slot_claimed_but_not_sent_yet_is_the_next_send() -> None:
    job, offset = _job("5s")
    claimed = T0 + timedelta(seconds=10)
    # claimed up to 300 ms before its send: the next send is that slot's, not the one after
    assert next_send_at(job, claimed, claimed + offset - timedelta(milliseconds=200)) == claimed + offset
    # once sent, the slot after it
    assert next_send_at(job, claimed, claimed + offset + timedelta(milliseconds=1)) == claimed + timedelta(
        seconds=10) + offset  # fmt: skip


def test_without_a_claim_the_first_slot_whose_send_is_ahead() -> None:
    job, offset = _job("5s")
    # at T0 + 10.5 s: slot 10 s is sent at 10 s + offset (>= 11 s), still ahead
    assert next_send_at(job, None, T0 + timedelta(seconds=10.5)) == T0 + timedelta(seconds=10) + offset
    plain, _ = _job(None)
    assert next_send_at(plain, None, T0 + timedelta(seconds=10.5)) == T0 + timedelta(seconds=20)
    assert next_send_at(plain, T0 + timedelta(seconds=20), T0 + timedelta(seconds=10.5)) == T0 + timedelta(
        seconds=20)  # claimed ahead, not sent: that slot  # fmt: skip


def test_a_job_that_is_not_active_has_no_next_send() -> None:
    job, _ = _job("5s", JobState.PAUSED)
    assert next_send_at(job, None, T0) is None
