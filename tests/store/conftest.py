"""Fixtures of the store tests: a TrioStore (the node's trio-asyncio bridge) on a fresh migrated database.

Tests run under pytest-trio and reach PostgreSQL through ``store.call`` / ``store.run``, so every store test
also exercises the adapter. ``job_in_shard`` makes job ids that land in a chosen shard. The firing path's rows
(``ClaimRow``, ``ResultRow``, ``ExecKey``) carry unix milliseconds: ``ms`` / ``from_ms`` convert the datetimes of
``T0`` and ``slots`` exactly.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from protocol.ids import new_job_id
from protocol.internal import JobWrite, JobWriteOp
from protocol.jobs import JobSpec, Semantics, Target
from protocol.schedules import Every
from protocol.shards import DEFAULT_SHARD_COUNT, shard_of
from scheduler_node.store import Fence, JobWriteOutcome, bump_epoch, write_job
from scheduler_node.trio_store import TrioStore

S = DEFAULT_SHARD_COUNT
# A fixed instant well inside one UTC day, so slots of a test never straddle a partition boundary by accident.
T0 = datetime(2031, 5, 6, 12, 0, tzinfo=UTC)
_ms = itertools.count(1)
UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@pytest.fixture
async def store(db_dsn: str) -> AsyncIterator[TrioStore]:
    async with TrioStore.open(db_dsn, max_size=4) as s:
        yield s


def job_in_shard(shard: int) -> uuid.UUID:
    """A fresh UUIDv7 job id whose shard (S = 256) is ``shard`` (about 256 draws)."""
    while True:
        job_id = new_job_id(1_900_000_000_000 + next(_ms))
        if shard_of(job_id, S) == shard:
            return job_id


def spec(
    name: str = "job", *, semantics: Semantics = Semantics.AT_LEAST_ONCE, tags: list[str] | None = None
) -> JobSpec:
    return JobSpec(name=name, schedule=Every("1s"), target=Target(url="https://example.com/hook"),
                   semantics=semantics, tags=tags or [])  # fmt: skip


async def create_job(
    store: TrioStore,
    fence: Fence,
    *,
    tenant: str = "acme",
    job_spec: JobSpec | None = None,
    next_fire_at: datetime | None = T0,
) -> tuple[uuid.UUID, JobWriteOutcome]:
    job_id = job_in_shard(fence.shard)
    w = JobWrite(op=JobWriteOp.UPSERT, actor="tester", tenant=tenant, spec=job_spec or spec())
    return job_id, await store.call(write_job, fence, job_id, w, next_fire_at=next_fire_at)


async def own(store: TrioStore, shard: int, node: str = "node-a") -> Fence:
    return Fence(shard, await store.call(bump_epoch, shard, node))


def slots(n: int, start: datetime = T0, step: timedelta = timedelta(seconds=1)) -> list[datetime]:
    return [start + i * step for i in range(n)]


def ms(t: datetime) -> int:
    """``t`` (aware) in unix milliseconds, as the firing path carries times (exact for whole milliseconds)."""
    return (t - UNIX_EPOCH) // timedelta(milliseconds=1)


def from_ms(v: int) -> datetime:
    """Unix milliseconds back to an aware UTC datetime (the inverse of ``ms``)."""
    return UNIX_EPOCH + timedelta(milliseconds=v)
