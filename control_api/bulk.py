"""Many jobs in one request: ``POST /v1/jobs:batch`` creates up to 1,000; ``POST /v1/jobs:bulk-pause``,
``bulk-resume``, ``bulk-delete`` and ``bulk-trigger`` act on jobs named by id or by tag.

Rules:
- Every item is answered on its own, in order (``index``): a bad spec or a missing job fails that item with
  its problem (the field named as for a single request) and the others go on. The request itself fails
  (4xx, nothing done) only when it is not a batch: not JSON, an unknown field, more items than allowed.
- The writes are routed like single ones (``routing.WriteRouter``): grouped per owning node, one internal
  request per group, creates applied in one statement on each node.
- ``Idempotency-Key``: on ``jobs:batch`` the jobs' ids derive from the key and the time it was first used,
  so the same batch sent again names the same jobs and gets them back as stored (``created: false``), never
  a second copy; on a bulk op each job's write is recorded under the key, so a retry applies none twice (a
  bulk trigger fires each job once). The key with another body is 422.
- Bulk by ``tag`` acts on the tenant's jobs with that tag, at most ``MAX_BY_TAG`` (422 if more match: narrow
  the tag or name ids). Bulk by ``ids``: at most ``MAX_BATCH`` ids, no repeats.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import Controller, Request, post
from litestar.datastructures import State

from protocol import problems
from protocol.errors import ShardwheelError, SpecError
from protocol.ids import new_job_id, new_job_ids, parse_job_id
from protocol.internal import MAX_WRITE_BATCH, JobWrite, JobWriteOp, JobWritten
from protocol.jobs import JobSpec, JobState, decode_job_spec, decode_untrusted
from protocol.problems import Problem
from scheduler_node.store import ApiKey, job_ids
from scheduler_node.store.idempotency import reserve_batch

from . import paths
from .auth import WRITER
from .idempotency import idempotency_of
from .limits import check_quota

__all__ = ["BulkController", "BulkResult", "ItemResult", "JobBatchDoc", "Selection"]

MAX_BATCH = MAX_WRITE_BATCH
MAX_BY_TAG = 10_000


class ItemResult(msgspec.Struct, frozen=True, omit_defaults=True):
    index: int
    status: int  # the HTTP status the single request would have answered
    id: str | None = None
    version: int | None = None
    state: JobState | None = None
    next_fire_at: datetime | None = None
    created: bool | None = None  # jobs:batch: false when an Idempotency-Key retry found the job stored
    problem: Problem | None = None


class BulkResult(msgspec.Struct, frozen=True):
    items: list[ItemResult]
    succeeded: int
    failed: int


class JobBatch(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    jobs: Annotated[list[msgspec.Raw], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]


class JobBatchDoc(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``JobBatch`` as the OpenAPI document shows it: each item a job spec (decoded one by one)."""

    jobs: Annotated[list[JobSpec], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]


class Selection(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    ids: Annotated[list[str], msgspec.Meta(max_length=MAX_BATCH)] | None = None
    tag: str | None = None


def _result(index: int, job_id: uuid.UUID | None, answer: JobWritten | ShardwheelError,
            status: int = 200) -> ItemResult:  # fmt: skip
    if isinstance(answer, ShardwheelError):
        problem = problems.from_error(answer)
        return ItemResult(index, problem.status, None if job_id is None else str(job_id), problem=problem)
    return ItemResult(index, status, answer.job_id or str(job_id), answer.version, answer.state,
                      answer.next_fire_at, answer.created if status == 201 else None)  # fmt: skip


def _summary(items: list[ItemResult]) -> BulkResult:
    failed = sum(1 for i in items if i.problem is not None)
    return BulkResult(items, len(items) - failed, failed)


class BulkController(Controller):
    path = paths.V1
    tags = ["jobs"]

    @post(paths.JOBS_BATCH.removeprefix(paths.V1), opt=WRITER, operation_id="createJobs",
          status_code=200, request_max_body_size=32 * 1024 * 1024,
          summary=f"Create up to {MAX_BATCH} jobs; one result per job, in order")  # fmt: skip
    async def batch(self, request: Request[ApiKey, Any, State]) -> BulkResult:
        key: ApiKey = request.user
        body: JobBatch = decode_untrusted(await request.body(), JobBatch)
        idempotency = await idempotency_of(request)
        first_used_ms = None
        if idempotency is not None:
            pool: asyncpg.Pool = request.app.state.pool
            first = await reserve_batch(pool, tenant=key.tenant, key=idempotency.key,
                                        request_hash=idempotency.request_hash)  # fmt: skip
            first_used_ms = int(first.timestamp() * 1000)
        items: list[ItemResult | None] = [None] * len(body.jobs)
        writes: list[tuple[int, uuid.UUID, JobWrite]] = []
        actor = f"key:{key.prefix}"
        if idempotency is None:
            new_ids = new_job_ids(len(body.jobs))
        else:  # the ids the first request with this key made: its time, and seeds from the key and the index
            new_ids = [new_job_id(first_used_ms, f"{key.tenant}\0{idempotency.key}\0{i}".encode())
                       for i in range(len(body.jobs))]  # fmt: skip
        for i, (raw, job_id) in enumerate(zip(body.jobs, new_ids, strict=True)):
            try:
                spec = request.app.state.secrets.seal_headers(decode_job_spec(raw, request.app.state.egress),
                                                              tenant=key.tenant, job_id=str(job_id))  # fmt: skip
            except SpecError as e:
                items[i] = _result(i, None, e)
                continue
            writes.append((i, job_id, JobWrite(op=JobWriteOp.UPSERT, actor=actor, tenant=key.tenant, spec=spec)))
        await check_quota(request, len(writes))
        answers = await request.app.state.router.write_many([(job_id, w) for _, job_id, w in writes])
        for (i, job_id, _), answer in zip(writes, answers, strict=True):
            items[i] = _result(i, job_id, answer, 201)
        return _summary([i for i in items if i is not None])

    async def _bulk(self, request: Request[ApiKey, Any, State], op: JobWriteOp) -> BulkResult:
        key: ApiKey = request.user
        selection = decode_untrusted(await request.body(), Selection)
        if (selection.ids is None) == (selection.tag is None):
            raise SpecError("", "name the jobs by exactly one of ids or tag")
        if selection.ids is not None:
            ids = [parse_job_id(text, f"ids[{i}]") for i, text in enumerate(selection.ids)]
            if len(set(ids)) != len(ids):
                raise SpecError("ids", "lists a job twice")
        else:
            assert selection.tag is not None
            ids = await job_ids(request.app.state.pool, tenant=key.tenant, tag=selection.tag, limit=MAX_BY_TAG + 1)
            if len(ids) > MAX_BY_TAG:
                raise SpecError("tag", f"more than {MAX_BY_TAG} jobs have it: narrow the tag or name ids")
        write = JobWrite(op=op, actor=f"key:{key.prefix}", tenant=key.tenant)
        writes = [(job_id, write) for job_id in ids]
        if (idempotency := await idempotency_of(request)) is not None:  # each write under its own key
            writes = [(job_id, msgspec.structs.replace(write, idempotency_key=idempotency.for_item(str(job_id)),
                                                       request_hash=idempotency.request_hash))
                      for job_id in ids]  # fmt: skip
        answers = await request.app.state.router.write_many(writes)
        status = 202 if op is JobWriteOp.TRIGGER else 200
        return _summary([_result(i, job_id, a, status) for i, (job_id, a) in enumerate(zip(ids, answers))])

    @post("/jobs:bulk-pause", opt=WRITER, operation_id="bulkPauseJobs", status_code=200,
          summary="Pause jobs named by ids or by tag")  # fmt: skip
    async def bulk_pause(self, request: Request[ApiKey, Any, State]) -> BulkResult:
        return await self._bulk(request, JobWriteOp.PAUSE)

    @post("/jobs:bulk-resume", opt=WRITER, operation_id="bulkResumeJobs", status_code=200,
          summary="Resume jobs named by ids or by tag")  # fmt: skip
    async def bulk_resume(self, request: Request[ApiKey, Any, State]) -> BulkResult:
        return await self._bulk(request, JobWriteOp.RESUME)

    @post("/jobs:bulk-delete", opt=WRITER, operation_id="bulkDeleteJobs", status_code=200,
          summary="Delete jobs named by ids or by tag")  # fmt: skip
    async def bulk_delete(self, request: Request[ApiKey, Any, State]) -> BulkResult:
        return await self._bulk(request, JobWriteOp.DELETE)

    @post("/jobs:bulk-trigger", opt=WRITER, operation_id="bulkTriggerJobs", status_code=200,
          summary="Fire one extra slot now of each job named by ids or by tag")  # fmt: skip
    async def bulk_trigger(self, request: Request[ApiKey, Any, State]) -> BulkResult:
        return await self._bulk(request, JobWriteOp.TRIGGER)
