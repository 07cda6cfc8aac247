"""``/v1/jobs``: create, read, list, delete, pause, resume and trigger a tenant's jobs.

Rules:
- Writes go to the shard's owner (``routing.WriteRouter``), which validates again, persists fenced and puts
  the job in its wheel before answering: a job created at second t fires at t+1 when its schedule says so.
- A spec is decoded strictly (``protocol.jobs.decode_job_spec``: unknown fields refused, every error naming
  its field) with the cluster's egress policy, before anything is sent anywhere.
- Target header values are sealed before a write is routed and shown ``"<redacted>"`` on every read
  (``protocol.sealed``); ``"<redacted>"`` written back keeps the stored value.
- Reads come from PostgreSQL, filtered by the key's tenant: another tenant's job is 404. ``ETag`` is the
  version; ``If-Match`` on a delete, pause or resume makes it conditional (412 if stale), and a replace
  (``PUT``, the whole spec) or a merge patch (``PATCH``, RFC 7396 over the stored spec) requires it (428
  without): a change is always made to the version the caller saw.
- ``Idempotency-Key`` on a create, a trigger or a backfill: the same key with the same request answers what the first
  answered (a create names the first job; a trigger fires once); with another request, 409. The key is
  the tenant's (``store.idempotency``), kept 24 h.
- Lists are in id order (UUIDv7: creation order) with an opaque cursor: ``next_cursor`` is the last id of a
  full page; ``limit`` 1-1000 (default 100).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import Controller, Request, Response, get, patch, post, put
from litestar import delete as delete_route
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery, QueryParameter

from protocol.errors import CallerError, SpecError, VersionMismatch
from protocol.executions import Execution
from protocol.ids import new_job_id, parse_job_id
from protocol.internal import JobWrite, JobWriteOp, JobWritten
from protocol.jitter import jitter_offset_ms
from protocol.jobs import Job, JobState, decode_job_spec, decode_untrusted
from protocol.sealed import redacted
from protocol.shards import shard_of
from protocol.slots import FirstSlots
from protocol.slots.backfill import MAX_BACKFILL_SLOTS, BackfillRange, backfill_slots
from protocol.slots.instants import preview_instants
from scheduler_node.store import ApiKey, get_job, get_job_detail, list_executions, list_jobs

from . import paths
from .auth import READER, WRITER
from .bodies import json_object
from .executions import check_statuses
from .idempotency import idempotency_of
from .limits import check_quota
from .schedules import Preview, check_n

__all__ = ["JobController", "JobList", "next_send_at"]


class JobList(msgspec.Struct, frozen=True):
    items: list[Job]
    next_cursor: str | None = None


class ExecutionList(msgspec.Struct, frozen=True):
    items: list[Execution]
    next_before: datetime | None = None  # pass as ``before`` for the next (older) page


_FIRES_OR_CREATES = frozenset({JobWriteOp.UPSERT, JobWriteOp.TRIGGER, JobWriteOp.BACKFILL})
def _required_version(request: Request[Any, Any, Any]) -> int:
    version = _version(request.headers.get("if-match"))
    if version is None:
        raise PreconditionRequired('If-Match: "<version>" is required: read the job, then change that version')
    return version


def _version(if_match: str | None) -> int | None:
    if if_match is None:
        return None
    text = if_match.strip().removeprefix("W/").strip('"')
    if not text.isdigit() or not 1 <= int(text) < 2**63:
        raise SpecError("If-Match", f"'{if_match[:40]}' is not a version (an ETag of this API)")
    return int(text)


class PreconditionRequired(CallerError):
    status_hint = 428


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396: objects merge key by key, ``null`` removes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class JobView(Job, frozen=True):
    """A job as ``GET /v1/jobs/{id}`` shows it: ``next_fire_at`` computed from the schedule and the slots
    already claimed (the stored one is only a lower bound): when its next slot is sent, the slot's instant plus
    the job's jitter offset; and the last execution that ended."""

    last_result: Execution | None = None


_FIRST_SLOTS = FirstSlots()  # the process's: reads of jobs on one schedule compute its next slot once


def next_send_at(job: Job, last_slot: datetime | None, now: datetime) -> datetime | None:
    """When an active job's next slot is sent (its instant plus the jitter offset): the newest claimed slot
    (``last_slot``) while its send is still ahead (a node claims a slot up to 300 ms before it sends it), else
    the first slot not claimed yet whose send is not past."""
    if job.state is not JobState.ACTIVE:
        return None
    offset = timedelta(milliseconds=jitter_offset_ms(uuid.UUID(job.id), job.spec.jitter))
    if last_slot is not None and last_slot + offset > now:
        return last_slot + offset
    # otherwise every claimed slot's send is past: the next is the first slot whose send is not
    slot = _FIRST_SLOTS.next_after(job.spec, job.created_at, now - offset)
    return None if slot is None else slot + offset


def shown(job: Job) -> Job:
    """A job as reads show it: its target header values redacted (``protocol.sealed``)."""
    return msgspec.structs.replace(job, spec=redacted(job.spec))


def _job_response(job: Job, status: int = 200, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(msgspec.json.encode(shown(job)), status_code=status, media_type="application/json",
                    headers={"etag": f'"{job.version}"', **(headers or {})})  # fmt: skip


class JobController(Controller):
    path = paths.JOBS
    tags = ["jobs"]

    async def _read(self, state: State, key: ApiKey, job_id: uuid.UUID) -> Job:
        pool: asyncpg.Pool = state.pool
        return await get_job(pool, shard_of(job_id, state.shard_count), job_id, tenant=key.tenant)

    async def _write(self, request: Request[ApiKey, Any, State], job_id: uuid.UUID, op: JobWriteOp,
                     **fields: Any) -> JobWritten:  # fmt: skip
        key = request.user
        idempotency = await idempotency_of(request) if op in _FIRES_OR_CREATES else None
        if idempotency is not None and "expected_version" not in fields:
            fields |= {"idempotency_key": idempotency.key, "request_hash": idempotency.request_hash}
        write = JobWrite(op=op, actor=f"key:{key.prefix}", tenant=key.tenant, **fields)
        written: JobWritten = await request.app.state.router.write(job_id, write)
        return written

    @post("/", opt=WRITER, operation_id="createJob", summary="Create a job", status_code=201)
    async def create(self, request: Request[ApiKey, Any, State]) -> Response[bytes]:
        spec = decode_job_spec(await request.body(), request.app.state.egress)
        await check_quota(request, 1)
        job_id = new_job_id()
        spec = request.app.state.secrets.seal_headers(spec, tenant=request.user.tenant, job_id=str(job_id))
        written = await self._write(request, job_id, JobWriteOp.UPSERT, spec=spec)
        if written.created and written.created_at is not None and written.job_id == str(job_id):
            # the node said what it stored: answered without reading it back
            job = Job(id=str(job_id), tenant=request.user.tenant, spec=spec, state=written.state,
                      version=written.version, shard=shard_of(job_id, request.app.state.shard_count),
                      created_at=written.created_at, updated_at=written.created_at,
                      next_fire_at=written.next_fire_at)  # fmt: skip
        else:  # an Idempotency-Key replay names the first request's job
            job = await self._read(request.app.state, request.user, uuid.UUID(written.job_id or str(job_id)))
        return _job_response(job, 201, {"location": f"{paths.JOBS}/{job.id}"})

    @get("/{job_id:str}", opt=READER, operation_id="getJob", summary="Read a job")
    async def read(self, request: Request[ApiKey, Any, State], job_id: FromPath[str]) -> Response[bytes]:
        jid = parse_job_id(job_id)
        state = request.app.state
        detail = await get_job_detail(state.pool, shard_of(jid, state.shard_count), jid, tenant=request.user.tenant)
        job = shown(detail.job)
        view = JobView(**msgspec.structs.asdict(job), last_result=detail.last_result)
        now = datetime.now(UTC)
        view = msgspec.structs.replace(view, next_fire_at=next_send_at(detail.job, detail.last_slot, now))
        return Response(msgspec.json.encode(view), media_type="application/json",
                        headers={"etag": f'"{job.version}"'})  # fmt: skip

    @get("/", opt=READER, operation_id="listJobs", summary="List jobs, oldest first")
    async def index(self, request: Request[ApiKey, Any, State], tag: FromQuery[str | None] = None,
                    state_filter: Annotated[str | None, QueryParameter(name="state")] = None,
                    q: FromQuery[str | None] = None, cursor: FromQuery[str | None] = None,
                    limit: FromQuery[int] = 100) -> JobList:  # fmt: skip
        state = state_filter
        if state is not None and state not in {s.value for s in JobState}:
            raise SpecError("state", f"'{state[:40]}' is not a job state")
        page = await list_jobs(request.app.state.pool, tenant=request.user.tenant, tag=tag,
                               state=None if state is None else JobState(state), name_contains=q,
                               after=None if cursor is None else parse_job_id(cursor, "cursor"),
                               limit=limit)  # fmt: skip
        return JobList([shown(j) for j in page.items], None if page.next_after is None else str(page.next_after))

    async def _replace(self, request: Request[ApiKey, Any, State], job_id: uuid.UUID, spec_json: bytes,
                       expected: int, current: Job | None = None) -> Response[bytes]:  # fmt: skip
        spec = decode_job_spec(spec_json, request.app.state.egress)
        stored = current or await self._read(request.app.state, request.user, job_id)
        spec = request.app.state.secrets.seal_headers(spec, tenant=request.user.tenant, job_id=str(job_id),
                                                      stored=stored.spec)  # fmt: skip
        await self._write(request, job_id, JobWriteOp.UPSERT, spec=spec, expected_version=expected)
        return _job_response(await self._read(request.app.state, request.user, job_id))

    @put("/{job_id:str}", opt=WRITER, operation_id="replaceJob",
         summary="Replace a job's spec (If-Match required)")  # fmt: skip
    async def replace(self, request: Request[ApiKey, Any, State], job_id: FromPath[str]) -> Response[bytes]:
        expected = _required_version(request)
        return await self._replace(request, parse_job_id(job_id), await request.body(), expected)

    @patch("/{job_id:str}", opt=WRITER, operation_id="patchJob",
           summary="Change part of a job's spec: a JSON merge patch, RFC 7396 (If-Match required)")  # fmt: skip
    async def modify(self, request: Request[ApiKey, Any, State], job_id: FromPath[str]) -> Response[bytes]:
        expected = _required_version(request)
        jid = parse_job_id(job_id)
        changes = await json_object(request, "a merge patch: a JSON object")
        current = await self._read(request.app.state, request.user, jid)
        if current.version != expected:
            raise VersionMismatch(expected, current.version)
        base = msgspec.to_builtins(current.spec)
        schedule = changes.get("schedule")
        if isinstance(schedule, dict) and schedule.get("kind") not in (None, base["schedule"]["kind"]):
            base["schedule"] = {}  # another kind of schedule replaces the old one, not merges into it
        merged = merge_patch(base, changes)
        return await self._replace(request, jid, msgspec.json.encode(merged), expected, current)

    @get("/{job_id:str}/preview", opt=READER, operation_id="previewJob",
         summary="The job's next instants, in UTC and in its zone, with DST notes")  # fmt: skip
    async def preview(self, request: Request[ApiKey, Any, State], job_id: FromPath[str], n: FromQuery[int] = 10) -> Preview:
        job = await self._read(request.app.state, request.user, parse_job_id(job_id))
        return Preview(preview_instants(job.spec, datetime.now(UTC), check_n(n), job.created_at, uuid.UUID(job.id)))

    @get("/{job_id:str}/executions", opt=READER, operation_id="listJobExecutions",
         summary="A job's executions, newest slot first, with their attempts")  # fmt: skip
    async def executions(self, request: Request[ApiKey, Any, State], job_id: FromPath[str],
                         status: FromQuery[list[str] | None] = None, before: FromQuery[datetime | None] = None,
                         limit: FromQuery[int] = 20) -> ExecutionList:  # fmt: skip
        jid = parse_job_id(job_id)
        if not 1 <= limit <= 200:
            raise SpecError("limit", "must be 1-200")
        if before is not None and before.tzinfo is None:
            raise SpecError("before", "needs a UTC offset or Z")
        state = request.app.state
        shard = shard_of(jid, state.shard_count)
        await get_job(state.pool, shard, jid, tenant=request.user.tenant, include_deleted=True)  # 404 if not theirs
        items = await list_executions(state.pool, shard, jid, limit=limit, before=before, with_attempts=True,
                                      statuses=check_statuses(status))  # fmt: skip
        return ExecutionList(items, items[-1].scheduled_at if len(items) == limit else None)

    @delete_route("/{job_id:str}", opt=WRITER, operation_id="deleteJob", summary="Delete a job",
                  status_code=200)  # fmt: skip
    async def remove(self, request: Request[ApiKey, Any, State], job_id: FromPath[str]) -> JobWritten:
        return await self._write(request, parse_job_id(job_id), JobWriteOp.DELETE,
                                 expected_version=_version(request.headers.get("if-match")))  # fmt: skip

    @post("/{job_id:str}/pause", opt=WRITER, operation_id="pauseJob", summary="Pause a job",
          status_code=200)  # fmt: skip
    async def pause(self, request: Request[ApiKey, Any, State], job_id: FromPath[str]) -> JobWritten:
        return await self._write(request, parse_job_id(job_id), JobWriteOp.PAUSE,
                                 expected_version=_version(request.headers.get("if-match")))  # fmt: skip

    @post("/{job_id:str}/resume", opt=WRITER, operation_id="resumeJob", summary="Resume a job",
          status_code=200)  # fmt: skip
    async def resume(self, request: Request[ApiKey, Any, State], job_id: FromPath[str]) -> JobWritten:
        return await self._write(request, parse_job_id(job_id), JobWriteOp.RESUME,
                                 expected_version=_version(request.headers.get("if-match")))  # fmt: skip

    @post("/{job_id:str}/trigger", opt=WRITER, operation_id="triggerJob",
          summary="Fire one extra slot now (origin manual)", status_code=202)  # fmt: skip
    async def trigger(self, request: Request[ApiKey, Any, State], job_id: FromPath[str]) -> JobWritten:
        return await self._write(request, parse_job_id(job_id), JobWriteOp.TRIGGER)

    @post("/{job_id:str}/backfill", opt=WRITER, operation_id="backfillJob", status_code=202,
          summary=f"Fire every slot of a past range [from, to) now (origin backfill, at most "
                  f"{MAX_BACKFILL_SLOTS} slots)")  # fmt: skip
    async def backfill(self, request: Request[ApiKey, Any, State], job_id: FromPath[str]) -> JobWritten:
        jid = parse_job_id(job_id)
        span = decode_untrusted(await request.body(), BackfillRange)
        job = await self._read(request.app.state, request.user, jid)
        backfill_slots(job.spec, job.created_at, span, datetime.now(UTC))  # refused here, before it is routed
        return await self._write(request, jid, JobWriteOp.BACKFILL, backfill=span)
