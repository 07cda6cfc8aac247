"""Write routing: a job write goes to its shard's owner, whose internal API persists it fenced.

Rules:
- The shard is ``shard_of(job_id, S)``; the owner's address comes from ``OwnerMap``. The write is the node's
  ``POST /internal/v1/jobs/{id}`` with the cluster secret; its answer is returned as is (``JobWritten``), or
  its problem is raised as the matching ``ShardwheelError`` (the node already named the field).
- While the owner is unknown, moving (409 ``not-owner``) or unreachable, the write is retried on the next view
  of the owners, for at most ``retry_for_s``; then ``Unavailable`` (503 with ``Retry-After``). A write is
  never applied twice by this: a node answers 409 without writing, and a connection that failed before an
  answer is retried only for ops that are idempotent on the node (every op but ``trigger``, which carries an
  Idempotency-Key for that reason when the client gave one).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import msgspec

from protocol.errors import (
    CallerError,
    Conflict,
    InfrastructureError,
    NotFound,
    SpecError,
    VersionMismatch,
)
from protocol.internal import JobWrite, JobWriteOp, JobWritten
from protocol.problems import Problem
from protocol.shards import shard_of

from .owners import OwnerMap

__all__ = ["Unavailable", "WriteRouter"]


class Unavailable(InfrastructureError):
    """No owner answered in time; the caller may retry after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def _raise_problem(problem: Problem) -> None:
    if problem.kind == "invalid-field":
        field = problem.errors[0].field if problem.errors else ""
        message = problem.errors[0].message if problem.errors else problem.detail
        raise SpecError(field.removeprefix("spec.") if field.startswith("spec.") else field, message)
    if problem.kind == "version-mismatch" and problem.expected is not None and problem.actual is not None:
        raise VersionMismatch(problem.expected, problem.actual)
    if problem.kind == "not-found":
        raise NotFound(problem.detail)
    if problem.kind == "conflict":
        raise Conflict(problem.detail)
    if 400 <= problem.status < 500:
        error = CallerError(problem.detail)
        error.status_hint = problem.status
        raise error
    raise Unavailable(f"the owning node answered {problem.status}: {problem.detail}")


class WriteRouter:
    def __init__(self, owners: OwnerMap, http: httpx.AsyncClient, *, shard_count: int, cluster_secret: str,
                 retry_for_s: float = 10.0) -> None:  # fmt: skip
        self.owners = owners
        self.http = http
        self.shard_count = shard_count
        self._auth = {"authorization": f"Bearer {cluster_secret}"}
        self.retry_for_s = retry_for_s
        self.retries = 0  # writes sent again after a not-owner answer or an unreachable owner (a metric)

    async def write(self, job_id: uuid.UUID, write: JobWrite) -> JobWritten:
        shard = shard_of(job_id, self.shard_count)
        body = msgspec.json.encode(write)
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.retry_for_s
        why = "no node owns it yet"
        while True:
            address = self.owners.address_of(shard)
            if address is not None:
                answer = await self._send(address, job_id, body, write.op)
                if isinstance(answer, JobWritten):
                    return answer
                why = answer
            left = give_up_at - loop.time()
            if left <= 0:
                raise Unavailable(f"shard {shard} of job {job_id} has no reachable owner ({why}); retry later")
            self.retries += 1
            await self.owners.wait_changed(min(left, 0.5))

    async def _send(self, address: str, job_id: uuid.UUID, body: bytes, op: JobWriteOp) -> JobWritten | str:
        """The node's answer, or why to try again (a string)."""
        try:
            r = await self.http.post(f"{address}/internal/v1/jobs/{job_id}", content=body, headers=self._auth)
        except httpx.TransportError as e:
            if op is JobWriteOp.TRIGGER and not isinstance(e, httpx.ConnectError):
                # The request may have reached the node: a second trigger could fire twice.
                raise Unavailable(f"the owner of job {job_id} did not answer the trigger ({e}); check the "
                                  "job's executions before triggering again") from None  # fmt: skip
            return f"{address} unreachable: {type(e).__name__}"
        if r.status_code == 200:
            return msgspec.json.decode(r.content, type=JobWritten)
        problem = _decode_problem(r.content, r.status_code)
        if problem.kind == "not-owner":
            return f"{address} does not own it"
        if problem.kind == "unavailable":
            return f"{address}: {problem.detail}"
        _raise_problem(problem)
        raise AssertionError("unreachable")  # pragma: no cover - _raise_problem always raises


def _decode_problem(content: bytes, status: int) -> Problem:
    try:
        return msgspec.json.decode(content, type=Problem)
    except (msgspec.ValidationError, msgspec.DecodeError):
        text: Any = content[:200].decode("utf-8", "replace")
        return Problem("urn:shardwheel:problem:internal", "Internal error", status, str(text))
