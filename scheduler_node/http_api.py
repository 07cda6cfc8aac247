"""The node's HTTP port: health, readiness, Prometheus metrics, and the internal job-write API.

Routes:
- ``GET /healthz`` 200 while the process serves; ``GET /readyz`` 200 once every owned shard is loaded and
  PostgreSQL answers, else 503 with the reason as the problem's ``detail`` (``loading``, or ``PostgreSQL
  unavailable for 12.0 s ...``).
- ``GET /metrics``: Prometheus text format.
- ``GET /internal/v1/status``: this node's view (shards with epochs, counters) as JSON.
- ``POST /internal/v1/jobs/{id}``: a ``protocol.internal.JobWrite`` (JSON), authenticated by
  ``Authorization: Bearer <cluster secret>``. Answers ``JobWritten`` 200, or a problem: ``not-owner`` 409
  (decodes as ``NotOwner``), ``version-mismatch`` 412 (decodes as ``VersionConflict``), ``invalid-field``
  422 naming the field, ``conflict`` 409, ``not-found`` 404, ``unavailable`` 503.
- ``POST /internal/v1/jobs:batch``: a ``protocol.internal.JobWriteBatch``, same authentication; 200 with one
  result per item (``JobWriteResults``), each ``written`` or the problem its single write would answer. A
  body that is not a batch is one 4xx problem for the whole request.
- Every error answer is RFC 9457 problem details (``protocol.problems``), never a stack trace: an unexpected
  exception is logged here with its traceback and answered as ``internal`` 500.

Internal traffic is low-volume (job writes, scrapes), so this is a plain ASGI callable served by Hypercorn's
trio worker in the node's nursery rather than a framework; the firing path never passes through here.
"""

from __future__ import annotations

import hmac
import logging
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import msgspec

from protocol import problems
from protocol.errors import ShardwheelError
from protocol.ids import parse_job_id
from protocol.internal import JobWrite, JobWriteBatch, JobWriteResult, JobWriteResults, JobWritten
from protocol.jobs import decode_untrusted

__all__ = ["NodeApi", "NodeHttpApp"]

log = logging.getLogger(__name__)

MAX_BODY = 256 * 1024
MAX_BATCH_BODY = 32 * 1024 * 1024  # up to MAX_WRITE_BATCH specs
_BATCH_PATH = "/internal/v1/jobs:batch"
_JOB_PATH = re.compile(r"/internal/v1/jobs/([^/]+)")

Scope = Mapping[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]


class NodeApi(Protocol):
    """What the HTTP layer needs from a node."""

    def ready(self) -> bool: ...

    def not_ready_because(self) -> str: ...

    def metrics_text(self) -> str: ...

    def status(self) -> Any: ...

    async def apply_write(self, job_id: uuid.UUID, write: JobWrite) -> JobWritten: ...

    async def apply_writes(
        self, items: Sequence[tuple[uuid.UUID, JobWrite]]
    ) -> Sequence[JobWritten | ShardwheelError]: ...


class NodeHttpApp:
    def __init__(self, node: NodeApi, cluster_secret: str) -> None:
        self.node = node
        self._secret = cluster_secret.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        try:
            await self._route(scope, receive, send)
        except Exception:
            # After the response started there is nothing to answer; before, a 500 with no trace in it.
            log.exception("node HTTP port: %s %s failed", scope.get("method"), scope.get("path"))
            await _problem(send, problems.problem(500, "internal", "internal error; the node's log has it"))

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        method, path = scope["method"], scope["path"]
        if method == "GET" and path == "/healthz":
            await _respond(send, 200, b"ok\n", b"text/plain")
        elif method == "GET" and path == "/readyz":
            if self.node.ready():
                await _respond(send, 200, b"ready\n", b"text/plain")
            else:
                await _problem(send, problems.problem(503, "unavailable", self.node.not_ready_because()))
        elif method == "GET" and path == "/metrics":
            await _respond(send, 200, self.node.metrics_text().encode(), b"text/plain; version=0.0.4")
        elif method == "GET" and path == "/internal/v1/status":
            if not self._authorized(scope):
                await _problem(send, problems.problem(401, "unauthorized", "missing or wrong cluster secret"))
                return
            await _respond(send, 200, msgspec.json.encode(self.node.status()))
        elif (m := _JOB_PATH.fullmatch(path)) is not None or path == _BATCH_PATH:
            if method != "POST":
                await _problem(send, problems.problem(405, "method-not-allowed", f"{method} not allowed here"))
            elif not self._authorized(scope):
                await _problem(send, problems.problem(401, "unauthorized", "missing or wrong cluster secret"))
            elif m is None:
                await self._write_batch(receive, send)
            else:
                await self._write(m[1], receive, send)
        else:
            await _problem(send, problems.problem(404, "not-found", f"no route {method} {path[:200]}"))

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = bytes(value).partition(b" ")
                return scheme.lower() == b"bearer" and bool(token) and hmac.compare_digest(token, self._secret)
        return False

    async def _write(self, raw_id: str, receive: Receive, send: Send) -> None:
        body = await _read_body(receive)
        if body is None:
            await _problem(send, problems.problem(413, "too-large", f"body larger than {MAX_BODY} bytes"))
            return
        try:
            job_id = parse_job_id(raw_id)
            write: JobWrite = decode_untrusted(body, JobWrite)
            written = await self.node.apply_write(job_id, write)
        except ShardwheelError as e:
            await _problem(send, problems.from_error(e))
        else:
            await _respond(send, 200, msgspec.json.encode(written))


    async def _write_batch(self, receive: Receive, send: Send) -> None:
        body = await _read_body(receive, MAX_BATCH_BODY)
        if body is None:
            await _problem(send, problems.problem(413, "too-large", f"body larger than {MAX_BATCH_BODY} bytes"))
            return
        try:
            batch: JobWriteBatch = decode_untrusted(body, JobWriteBatch)
            for i, item in enumerate(batch.items):
                if item.job_id.int == 0:  # msgspec read a UUID; parse_job_id refuses the nil one, naming it
                    parse_job_id(str(item.job_id), f"items[{i}].job_id")
        except ShardwheelError as e:
            await _problem(send, problems.from_error(e))
            return
        done = await self.node.apply_writes([(item.job_id, item.write) for item in batch.items])
        results = [JobWriteResult(problem=problems.from_error(r)) if isinstance(r, ShardwheelError)
                   else JobWriteResult(written=r) for r in done]  # fmt: skip
        await _respond(send, 200, msgspec.json.encode(JobWriteResults(results)))


async def _read_body(receive: Receive, limit: int = MAX_BODY) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not msg.get("more_body", False):
            return b"".join(chunks)


async def _respond(send: Send, status: int, body: bytes, content_type: bytes = b"application/json") -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _problem(send: Send, problem: problems.Problem) -> None:
    await _respond(send, problem.status, msgspec.json.encode(problem), problems.CONTENT_TYPE.encode())
