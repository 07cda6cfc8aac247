"""Messages between the control API and the scheduler nodes (DESIGN.md §5b).

``POST /internal/v1/jobs/{id}`` carries a ``JobWrite`` and answers ``JobWritten`` (200), ``NotOwner`` (409)
or ``VersionConflict`` (412). Authenticated with the cluster secret.

Evolution rules (rolling upgrades mix versions): fields are never removed or retyped, new fields get defaults,
unknown fields are ignored here (unlike public input) so an older node accepts a newer API's message.
"""

from __future__ import annotations

import enum
from datetime import datetime

import msgspec

from .jobs import JobSpec, JobState

__all__ = ["JobWrite", "JobWriteOp", "JobWritten", "NotOwner", "VersionConflict"]


class JobWriteOp(enum.StrEnum):
    UPSERT = "upsert"
    DELETE = "delete"
    PAUSE = "pause"
    RESUME = "resume"
    TRIGGER = "trigger"


class JobWrite(msgspec.Struct, frozen=True):
    op: JobWriteOp
    actor: str
    tenant: str
    expected_version: int | None = None
    spec: JobSpec | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None  # of the public request, so a reused Idempotency-Key with other content is refused


class JobWritten(msgspec.Struct, frozen=True):
    version: int
    state: JobState
    next_fire_at: datetime | None = None
    created: bool = False


class NotOwner(msgspec.Struct, frozen=True):
    shard: int
    owner_hint: str | None = None


class VersionConflict(msgspec.Struct, frozen=True):
    expected: int
    actual: int
