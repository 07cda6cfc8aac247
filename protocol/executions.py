"""Execution records: one per (job, slot, origin), and one attempt row per HTTP request.

Life of a slot (the transition table is the rule; nothing else moves a status)::

    claimed ──send──▶ (retry_wait ◀──▶ attempt) ──▶ exactly one terminal state
      │                                              succeeded  failed  timed_out  cancelled
      ├──▶ skipped_overlap | skipped_paused | skipped_misfire   (decided without sending)
      └──▶ lost        (claimed by a node that died; AT_MOST_ONCE never re-sends, so the outcome is unknown)

A claimed row that was never sent may also be deleted by its own owner during a graceful release, so the
next owner claims the slot afresh; that is the only delete.

Example: a job with 3 attempts whose target answers 500, 500, 200 ends ``succeeded`` with ``attempt = 3``
and three rows in ``execution_attempts``.
"""

from __future__ import annotations

import enum
from datetime import datetime

import msgspec

__all__ = [
    "ACTIVE",
    "TERMINAL",
    "TRANSITIONS",
    "Execution",
    "ExecutionAttempt",
    "ExecutionStatus",
    "Origin",
    "can_transition",
]


class ExecutionStatus(enum.StrEnum):
    CLAIMED = "claimed"
    RETRY_WAIT = "retry_wait"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    SKIPPED_OVERLAP = "skipped_overlap"
    SKIPPED_MISFIRE = "skipped_misfire"
    SKIPPED_PAUSED = "skipped_paused"
    CANCELLED = "cancelled"
    LOST = "lost"


class Origin(enum.StrEnum):
    SCHEDULED = "scheduled"
    MANUAL = "manual"  # trigger-now
    BACKFILL = "backfill"


S = ExecutionStatus
ACTIVE: frozenset[ExecutionStatus] = frozenset({S.CLAIMED, S.RETRY_WAIT})
TERMINAL: frozenset[ExecutionStatus] = frozenset(set(S) - ACTIVE)
FAILURES: frozenset[ExecutionStatus] = frozenset({S.FAILED, S.TIMED_OUT})

TRANSITIONS: dict[ExecutionStatus, frozenset[ExecutionStatus]] = {
    S.CLAIMED: frozenset(TERMINAL | {S.RETRY_WAIT}),
    # A retry that is due again goes back to being sent; it stays retry_wait until its result lands.
    S.RETRY_WAIT: frozenset(TERMINAL | {S.RETRY_WAIT}),
    **{t: frozenset() for t in TERMINAL},
}


def can_transition(old: ExecutionStatus, new: ExecutionStatus) -> bool:
    return new in TRANSITIONS[old]


class ExecutionAttempt(msgspec.Struct, frozen=True):
    attempt: int
    started_at: datetime
    finished_at: datetime | None = None
    http_status: int | None = None
    duration_ms: int | None = None
    error: str | None = None


class Execution(msgspec.Struct, frozen=True):
    job_id: str
    shard: int
    scheduled_at: datetime
    origin: Origin
    status: ExecutionStatus
    epoch: int
    node: str
    attempt: int = 0
    next_attempt_at: datetime | None = None
    claimed_at: datetime | None = None
    sent_at: datetime | None = None
    finished_at: datetime | None = None
    http_status: int | None = None
    duration_ms: int | None = None
    dispatch_lag_ms: int | None = None  # send start - scheduled time; drift is what the target sees
    error: str | None = None
    response_excerpt: str | None = None  # the first 1 KiB of the response body
    attempts: list[ExecutionAttempt] = msgspec.field(default_factory=list)
