"""Test harness for the node: a recording HTTP target, a node in the test's nursery, and database reads.

- ``Target``: a trio + h11 server on 127.0.0.1 that records every request (path, headers, body, receive time)
  and answers per path as told (status, delay, body), so tests assert what a real target would have seen.
- ``node_running``: a ``Node`` started in the test's trio run on a free port, stopped gracefully at the end.
- ``query``: reads the database from a worker thread with plain asyncio, independent of the node's loop.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import h11
import httpx
import msgspec
import trio

from protocol.executions import ExecutionStatus
from protocol.ids import new_job_id
from protocol.internal import JobWrite, JobWriteOp, JobWritten
from protocol.jobs import JobSpec
from scheduler_node.engine import EngineTuning
from scheduler_node.node import Node, NodeConfig
from scheduler_node.ownership import parse_shard_ranges

SECRET = "test-cluster-secret-of-32-bytes-or-more"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at_ms: int

    @property
    def job(self) -> str:
        return self.headers["x-shardwheel-job"]

    @property
    def slot(self) -> str:
        return self.headers["x-shardwheel-scheduled-at"]


@dataclass
class Behaviour:
    status: int | list[int] = 200  # a list: one per request in turn, the last one repeating
    delay_s: float = 0.0
    body: bytes = b"ok"


@dataclass
class Target:
    port: int = 0
    received: list[Received] = field(default_factory=list)
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    _counts: dict[str, int] = field(default_factory=dict)
    in_flight: int = 0
    max_in_flight: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request: h11.Request | None = None
                body = b""
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        data = await stream.receive_some(65536)
                        conn.receive_data(data)
                        if not data and conn.their_state is not h11.DONE:
                            return
                        continue
                    if isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    elif isinstance(event, h11.ConnectionClosed):
                        return
                assert request is not None
                path = request.target.decode()
                headers = {k.decode().lower(): v.decode() for k, v in request.headers}
                self.received.append(Received(path, headers, body, time.time_ns() // 1_000_000))
                behaviour = self.behaviours.get(path, Behaviour())
                n = self._counts.get(path, 0)
                self._counts[path] = n + 1
                statuses = behaviour.status if isinstance(behaviour.status, list) else [behaviour.status]
                status = statuses[min(n, len(statuses) - 1)]
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
                try:
                    await trio.sleep(behaviour.delay_s)
                finally:
                    self.in_flight -= 1
                out = conn.send(
                    h11.Response(status_code=status, headers=[("content-length", str(len(behaviour.body)))])
                )
                out += conn.send(h11.Data(data=behaviour.body)) + conn.send(h11.EndOfMessage())
                await stream.send_all(out)
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.RemoteProtocolError):
            return
        finally:
            await stream.aclose()


@asynccontextmanager
async def target_running() -> AsyncIterator[Target]:
    target = Target()
    async with trio.open_nursery() as n:
        await n.start(target.serve)
        yield target
        n.cancel_scope.cancel()


@asynccontextmanager
async def node_running(db_dsn: str, *, crash: bool = False, **overrides: Any) -> AsyncIterator[Node]:
    """A node in this trio run. Leaving the block stops it gracefully, or with ``crash=True`` kills it: every
    task is cancelled where it stands, nothing is released or flushed (what ``kill -9`` leaves behind)."""
    config = NodeConfig(
        dsn=db_dsn,
        shards=overrides.pop("shards", "0-255"),
        port=0,
        cluster_secret=SECRET,
        node_id=overrides.pop("node_id", "node-a"),
        engine=EngineTuning(release_timeout_s=5),
        dev=True,
        **overrides,
    )
    node = Node(config)
    async with trio.open_nursery() as n:
        await n.start(lambda task_status: node.run(handle_signals=False, task_status=task_status))
        assert node.engine is not None
        with trio.fail_after(60):  # a bound, not a wait: 256 shards load in a few seconds on an idle machine
            await node.engine.wait_loaded(parse_shard_ranges(config.shards, node.engine.config.shard_count))
        yield node
        if crash:
            n.cancel_scope.cancel()
        else:
            node.stop()


def node_url(node: Node) -> str:
    return node.addresses[0].replace("0.0.0.0", "127.0.0.1")  # the node reports http://host:port


async def write(node: Node, job_id: uuid.UUID, op: JobWriteOp, spec: JobSpec | None = None,
                tenant: str = "acme", **kw: Any) -> JobWritten:  # fmt: skip
    body = msgspec.json.encode(JobWrite(op=op, actor="tester", tenant=tenant, spec=spec, **kw))
    async with httpx.AsyncClient() as client:
        r = await client.post(f"{node_url(node)}/internal/v1/jobs/{job_id}", content=body,
                              headers={"authorization": f"Bearer {SECRET}"})  # fmt: skip
    assert r.status_code == 200, r.text
    return msgspec.json.decode(r.content, type=JobWritten)


async def create(node: Node, spec: JobSpec, tenant: str = "acme") -> uuid.UUID:
    job_id = new_job_id()
    await write(node, job_id, JobWriteOp.UPSERT, spec, tenant)
    return job_id


async def query(dsn: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(dsn)
        try:
            return [dict(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return await trio.to_thread.run_sync(lambda: asyncio.run(run()))


async def executions(dsn: str, job_id: uuid.UUID) -> list[dict[str, Any]]:
    return await query(
        dsn, "SELECT * FROM executions WHERE job_id = $1 ORDER BY scheduled_at, origin", job_id
    )


async def wait_for(predicate: Any, timeout: float = 15.0, interval: float = 0.1) -> None:
    """Poll an async predicate until it holds (bounded)."""
    with trio.fail_after(timeout):
        while not await predicate():
            await trio.sleep(interval)


async def statuses(dsn: str, job_id: uuid.UUID) -> list[ExecutionStatus]:
    return [ExecutionStatus(r["status"]) for r in await executions(dsn, job_id)]
