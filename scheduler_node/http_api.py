"""The node's HTTP port: health, readiness, Prometheus metrics, and the internal job-write API.

Routes:
- ``GET /healthz`` 200 while the process serves; ``GET /readyz`` 200 once every owned shard is loaded and
  PostgreSQL answers, else 503 with the reason (``loading``, or ``PostgreSQL unavailable for 12.0 s ...``).
- ``GET /metrics``: Prometheus text format.
- ``GET /internal/v1/status``: this node's view (shards with epochs, counters) as JSON.
- ``POST /internal/v1/jobs/{id}``: a ``protocol.internal.JobWrite`` (JSON), authenticated by
  ``Authorization: Bearer <cluster secret>``. Answers ``JobWritten`` 200, ``NotOwner`` 409,
  ``VersionConflict`` 412, or ``{"error": "<field>: <problem>"}`` with the error's status hint.

Internal traffic is low-volume (job writes, scrapes), so this is a plain ASGI callable served by Hypercorn's
trio worker in the node's nursery rather than a framework; the firing path never passes through here.
"""

from __future__ import annotations

import hmac
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import msgspec

from protocol.errors import NotOwnerError, ShardwheelError, VersionMismatch
from protocol.internal import JobWrite, JobWritten, NotOwner, VersionConflict

__all__ = ["NodeApi", "NodeHttpApp"]

MAX_BODY = 256 * 1024
_JOB_PATH = re.compile(r"/internal/v1/jobs/([0-9a-fA-F-]{32,36})")
_write_decoder = msgspec.json.Decoder(JobWrite)

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
        method, path = scope["method"], scope["path"]
        if method == "GET" and path == "/healthz":
            await _respond(send, 200, b"ok\n", b"text/plain")
        elif method == "GET" and path == "/readyz":
            if self.node.ready():
                await _respond(send, 200, b"ready\n", b"text/plain")
            else:
                await _respond(send, 503, self.node.not_ready_because().encode() + b"\n", b"text/plain")
        elif method == "GET" and path == "/metrics":
            await _respond(send, 200, self.node.metrics_text().encode(), b"text/plain; version=0.0.4")
        elif method == "GET" and path == "/internal/v1/status":
            if not self._authorized(scope):
                await _error(send, 401, "missing or wrong cluster secret")
                return
            await _respond(send, 200, msgspec.json.encode(self.node.status()))
        elif (m := _JOB_PATH.fullmatch(path)) is not None:
            if method != "POST":
                await _error(send, 405, f"{method} not allowed here")
            elif not self._authorized(scope):
                await _error(send, 401, "missing or wrong cluster secret")
            else:
                await self._write(m[1], receive, send)
        else:
            await _error(send, 404, f"no route {method} {path}")

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = bytes(value).partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token, self._secret)
        return False

    async def _write(self, raw_id: str, receive: Receive, send: Send) -> None:
        try:
            job_id = uuid.UUID(raw_id)
        except ValueError:
            await _error(send, 400, f"'{raw_id}' is not a job id")
            return
        body = await _read_body(receive)
        if body is None:
            await _error(send, 413, f"body larger than {MAX_BODY} bytes")
            return
        try:
            write = _write_decoder.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError) as e:
            await _error(send, 422, str(e))
            return
        try:
            written = await self.node.apply_write(job_id, write)
        except NotOwnerError as e:
            await _respond(send, 409, msgspec.json.encode(NotOwner(e.shard, e.owner_hint)))
        except VersionMismatch as e:
            await _respond(send, 412, msgspec.json.encode(VersionConflict(e.expected, e.actual)))
        except ShardwheelError as e:
            await _error(send, e.status_hint, str(e))
        else:
            await _respond(send, 200, msgspec.json.encode(written))


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
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


async def _error(send: Send, status: int, message: str) -> None:
    await _respond(send, status, msgspec.json.encode({"error": message}))
