"""``/v1/jobs``: create, read, list, delete, pause, resume and trigger a tenant's jobs.

Rules:
- Writes go to the shard's owner (``routing.WriteRouter``), which validates again, persists fenced and puts
  the job in its wheel before answering: a job created at second t fires at t+1 when its schedule says so.
- A spec is decoded strictly (``protocol.jobs.decode_job_spec``: unknown fields refused, every error naming
  its field) with the cluster's egress policy, before anything is sent anywhere.
- Reads come from PostgreSQL, filtered by the key's tenant: another tenant's job is 404. ``ETag`` is the
  version; ``If-Match`` on a delete, pause or resume makes it conditional (412 if stale).
- Lists are in id order (UUIDv7: creation order) with an opaque cursor: ``next_cursor`` is the last id of a
  full page; ``limit`` 1-1000 (default 100).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import Controller, Request, Response, get, post
from litestar import delete as delete_route
from litestar.datastructures import State
from litestar.params import Parameter

from protocol.errors import SpecError
from protocol.ids import new_job_id, parse_job_id
from protocol.internal import JobWrite, JobWriteOp, JobWritten
from protocol.jobs import Job, JobState, decode_job_spec
from protocol.shards import shard_of
from scheduler_node.store import ApiKey, get_job, list_jobs

from . import paths
from .auth import requires_reader, requires_writer

__all__ = ["JobController", "JobList"]


class JobList(msgspec.Struct, frozen=True):
    items: list[Job]
    next_cursor: str | None = None


def _version(if_match: str | None) -> int | None:
    if if_match is None:
        return None
    text = if_match.strip().removeprefix("W/").strip('"')
    if not text.isdigit() or not 1 <= int(text) < 2**63:
        raise SpecError("If-Match", f"'{if_match[:40]}' is not a version (an ETag of this API)")
    return int(text)


def _job_response(job: Job, status: int = 200, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(msgspec.json.encode(job), status_code=status, media_type="application/json",
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
        write = JobWrite(op=op, actor=f"key:{key.prefix}", tenant=key.tenant, **fields)
        written: JobWritten = await request.app.state.router.write(job_id, write)
        return written

    @post("/", guards=[requires_writer], operation_id="createJob", summary="Create a job", status_code=201)
    async def create(self, request: Request[ApiKey, Any, State]) -> Response[bytes]:
        spec = decode_job_spec(await request.body(), request.app.state.egress)
        job_id = new_job_id()
        written = await self._write(request, job_id, JobWriteOp.UPSERT, spec=spec)
        stored_id = uuid.UUID(written.job_id) if written.job_id else job_id
        job = await self._read(request.app.state, request.user, stored_id)
        return _job_response(job, 201, {"location": f"{paths.JOBS}/{job.id}"})

    @get("/{job_id:str}", guards=[requires_reader], operation_id="getJob", summary="Read a job")
    async def read(self, request: Request[ApiKey, Any, State], job_id: str) -> Response[bytes]:
        return _job_response(await self._read(request.app.state, request.user, parse_job_id(job_id)))

    @get("/", guards=[requires_reader], operation_id="listJobs", summary="List jobs, oldest first")
    async def index(self, request: Request[ApiKey, Any, State], tag: str | None = None,
                    state_filter: Annotated[str | None, Parameter(query="state")] = None, q: str | None = None,
                    cursor: str | None = None, limit: int = 100) -> JobList:  # fmt: skip
        state = state_filter
        if state is not None and state not in {s.value for s in JobState}:
            raise SpecError("state", f"'{state[:40]}' is not a job state")
        page = await list_jobs(request.app.state.pool, tenant=request.user.tenant, tag=tag,
                               state=None if state is None else JobState(state), name_contains=q,
                               after=None if cursor is None else parse_job_id(cursor, "cursor"),
                               limit=limit)  # fmt: skip
        return JobList(page.items, None if page.next_after is None else str(page.next_after))

    @delete_route("/{job_id:str}", guards=[requires_writer], operation_id="deleteJob", summary="Delete a job",
                  status_code=200)  # fmt: skip
    async def remove(self, request: Request[ApiKey, Any, State], job_id: str) -> JobWritten:
        return await self._write(request, parse_job_id(job_id), JobWriteOp.DELETE,
                                 expected_version=_version(request.headers.get("if-match")))  # fmt: skip

    @post("/{job_id:str}/pause", guards=[requires_writer], operation_id="pauseJob", summary="Pause a job",
          status_code=200)  # fmt: skip
    async def pause(self, request: Request[ApiKey, Any, State], job_id: str) -> JobWritten:
        return await self._write(request, parse_job_id(job_id), JobWriteOp.PAUSE,
                                 expected_version=_version(request.headers.get("if-match")))  # fmt: skip

    @post("/{job_id:str}/resume", guards=[requires_writer], operation_id="resumeJob", summary="Resume a job",
          status_code=200)  # fmt: skip
    async def resume(self, request: Request[ApiKey, Any, State], job_id: str) -> JobWritten:
        return await self._write(request, parse_job_id(job_id), JobWriteOp.RESUME,
                                 expected_version=_version(request.headers.get("if-match")))  # fmt: skip

    @post("/{job_id:str}/trigger", guards=[requires_writer], operation_id="triggerJob",
          summary="Fire one extra slot now (origin manual)", status_code=202)  # fmt: skip
    async def trigger(self, request: Request[ApiKey, Any, State], job_id: str) -> JobWritten:
        return await self._write(request, parse_job_id(job_id), JobWriteOp.TRIGGER)
