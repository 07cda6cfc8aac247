"""The rows the node exchanges with its store facade: plain slotted records, cheap to build by the thousand.

Times are unix milliseconds (ints) on the node side; the facade converts to ``timestamptz`` at the boundary,
once per batch, so the firing path never builds ``datetime`` objects it does not need.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

from protocol.executions import ExecutionStatus, Origin
from protocol.jobs import JobSpec, JobState

__all__ = ["ClaimRow", "JobRow", "ResultRow", "ResumeRow", "SlotKey"]

SlotKey = tuple[uuid.UUID, int, Origin]  # (job id, scheduled_at ms, origin): an execution's identity in a shard


@dataclass(slots=True)
class JobRow:
    shard: int
    id: uuid.UUID
    tenant: str
    spec: JobSpec
    state: JobState
    version: int
    created_at: datetime
    next_fire_at: datetime | None
    last_slot: datetime | None  # job_cursor.last_slot


@dataclass(slots=True)
class ClaimRow:
    """An execution row to insert: ``claimed`` for a slot to send, or directly terminal (``skipped_misfire``)."""

    shard: int
    epoch: int
    job_id: uuid.UUID
    scheduled_ms: int
    origin: Origin
    status: ExecutionStatus = ExecutionStatus.CLAIMED
    error: str | None = None


@dataclass(slots=True)
class ResultRow:
    """The outcome of one attempt, and the execution's status after it (terminal, or ``retry_wait``)."""

    shard: int
    epoch: int
    job_id: uuid.UUID
    scheduled_ms: int
    origin: Origin
    status: ExecutionStatus
    attempt: int
    started_ms: int | None = None  # None: no attempt was made (skips, cancels before sending)
    finished_ms: int | None = None
    next_attempt_ms: int | None = None
    http_status: int | None = None
    duration_ms: int | None = None
    dispatch_lag_ms: int | None = None
    error: str | None = None
    excerpt: str | None = None


@dataclass(slots=True)
class ResumeRow:
    """An unfinished execution found at takeover that this node must continue (AT_LEAST_ONCE)."""

    job_id: uuid.UUID
    scheduled_ms: int
    origin: Origin
    status: ExecutionStatus
    attempt: int
    next_attempt_ms: int | None = None
    extra: dict[str, object] = field(default_factory=dict)
