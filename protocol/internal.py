"""Messages between the control API and the scheduler nodes (DESIGN.md §5b).

``POST /internal/v1/jobs/{id}`` carries a ``JobWrite`` and answers ``JobWritten`` (200), ``NotOwner`` (409)
or ``VersionConflict`` (412). ``POST /internal/v1/jobs:batch`` carries a ``JobWriteBatch`` (up to
``MAX_WRITE_BATCH`` writes, each for its own job) and answers ``JobWriteResults`` (200), one result per item in
order: ``written``, or the ``problem`` the single write would have answered. Authenticated with the cluster
secret.

Evolution rules (rolling upgrades mix versions): fields are never removed or retyped, new fields get defaults,
unknown fields are ignored here (unlike public input) so an older node accepts a newer API's message. Error
answers are RFC 9457 problem details (``protocol.problems``) whose extension members make the 409 body decode
as ``NotOwner`` and the 412 body as ``VersionConflict``.

Bounds: ids and keys are what PostgreSQL stores as text and what a log line can show: ``tenant`` is a short
slug, ``actor``, ``idempotency_key`` and ``request_hash`` are printable and bounded, ``expected_version`` fits
the stored ``bigint``. A message outside them is refused with 422 naming the field, nothing stored.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Annotated

import msgspec

from .jobs import JobSpec, JobState
from .problems import Problem
from .slots.backfill import BackfillRange

__all__ = [
    "DEV_CLUSTER_SECRET",
    "MIN_SECRET_BYTES",
    "MAX_WRITE_BATCH",
    "JobWrite",
    "JobWriteBatch",
    "JobWriteItem",
    "JobWriteOp",
    "JobWriteResult",
    "JobWriteResults",
    "JobWritten",
    "NotOwner",
    "VersionConflict",
    "cluster_secret",
]

MIN_SECRET_BYTES = 32
MAX_WRITE_BATCH = 1000
DEV_CLUSTER_SECRET = "shardwheel-dev-mode-cluster-secret-not-for-production"


def cluster_secret(given: str | None, *, dev: bool) -> str:
    """The bearer token of the nodes' internal API, as nodes and API replicas take it: at least
    ``MIN_SECRET_BYTES`` outside dev mode (``ValueError`` naming the option), the built-in one in dev mode
    when none is given."""
    secret = given or ""
    if dev:
        return secret or DEV_CLUSTER_SECRET
    if len(secret.encode()) < MIN_SECRET_BYTES:
        problem = "is empty" if not secret else f"is {len(secret.encode())} bytes"
        raise ValueError(f"--cluster-secret {problem}; it must be at least {MIN_SECRET_BYTES} bytes "
                         "outside dev mode (--dev)")  # fmt: skip
    return secret


class JobWriteOp(enum.StrEnum):
    UPSERT = "upsert"
    DELETE = "delete"
    PAUSE = "pause"
    RESUME = "resume"
    TRIGGER = "trigger"
    BACKFILL = "backfill"


Tenant = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
# Printable, no control characters: what a log line and an audit row can show as is.
Printable = Annotated[str, msgspec.Meta(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]+$")]
Version = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]


class JobWrite(msgspec.Struct, frozen=True):
    op: JobWriteOp
    actor: Printable
    tenant: Tenant
    expected_version: Version | None = None
    spec: JobSpec | None = None
    idempotency_key: Printable | None = None
    request_hash: Printable | None = None  # of the public request: a reused Idempotency-Key with other content
    backfill: BackfillRange | None = None  # the range of a backfill


class JobWritten(msgspec.Struct, frozen=True):
    version: int
    state: JobState
    next_fire_at: datetime | None = None
    created: bool = False
    job_id: str | None = None  # the job written: an Idempotency-Key replay names the first request's job
    slots: int | None = None  # trigger and backfill: the slots claimed to fire (0: all fired or claimed before)
    created_at: datetime | None = None  # a job created by this write: when (the API answers without a read)


class JobWriteItem(msgspec.Struct, frozen=True):
    job_id: uuid.UUID
    write: JobWrite


class JobWriteBatch(msgspec.Struct, frozen=True):
    items: Annotated[list[JobWriteItem], msgspec.Meta(max_length=MAX_WRITE_BATCH)]


class JobWriteResult(msgspec.Struct, frozen=True, omit_defaults=True):
    written: JobWritten | None = None
    problem: Problem | None = None


class JobWriteResults(msgspec.Struct, frozen=True):
    items: list[JobWriteResult]


class NotOwner(msgspec.Struct, frozen=True):
    shard: int
    owner_hint: str | None = None


class VersionConflict(msgspec.Struct, frozen=True):
    expected: int
    actual: int
