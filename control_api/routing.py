"""Write routing: a job write goes to its shard's owner, whose internal API persists it fenced.

Rules:
- The shard is ``shard_of(job_id, S)``; the owner's address comes from ``OwnerMap``. Writes travel as the
  node's ``POST /internal/v1/jobs:batch`` with the cluster secret; each item's answer is returned as is
  (``JobWritten``), or its problem as the matching ``ShardwheelError`` (the node already named the field).
- Coalescing: a write bound for an owner with no request in flight goes at once; while one is in flight,
  the owner's next writes wait at most ``window_s`` (2 ms) or until ``max_batch`` (256) are queued, and go as
  one request, which the node applies in one statement for creates. Low load pays no wait, high load pays
  one round trip per batch instead of per write.
- Applied once: every write but a plain create (an upsert of a new id) carries an Idempotency-Key: the
  client's, or a request id made here (``request <uuid>``, a form no client key can take: they have no
  spaces). A request sent again after its answer was lost is then answered from the node's record, never
  applied twice (a trigger never fires twice, a replace is not refused as stale by its own first try); a
  plain create sent again finds its id stored and is answered as it is.
- While the owner is unknown, moving (``not-owner``), unavailable or unreachable, a write is tried again on
  the next view of the owners, for at most ``retry_for_s``; then ``Unavailable`` (503 with ``Retry-After``).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Sequence
from typing import Any

import msgspec

from protocol.errors import (
    CallerError,
    Conflict,
    InfrastructureError,
    KeyReused,
    NotFound,
    ShardwheelError,
    SpecError,
    VersionMismatch,
)
from protocol.internal import JobWrite, JobWriteBatch, JobWriteItem, JobWriteOp, JobWriteResults, JobWritten
from protocol.problems import Problem
from protocol.shards import shard_of

from .node_client import NodeClient, NodeUnreachable
from .owners import OwnerMap

__all__ = ["Unavailable", "WriteRouter"]

Answer = JobWritten | ShardwheelError
_RETRY = object()  # an item's answer: try it again on the next view of the owners


class Unavailable(InfrastructureError):
    """No owner answered in time; the caller may retry after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def error_of(problem: Problem) -> ShardwheelError:
    """A node's problem answer as the error the API answers with (the same problem, seen by the client)."""
    if problem.kind == "invalid-field":
        field = problem.errors[0].field if problem.errors else ""
        message = problem.errors[0].message if problem.errors else problem.detail
        # the public request's own field: the node names it within the internal message
        return SpecError(re.sub(r"^(spec|backfill)\.", "", field), message)
    if problem.kind == "version-mismatch" and problem.expected is not None and problem.actual is not None:
        return VersionMismatch(problem.expected, problem.actual)
    if problem.kind == "not-found":
        return NotFound(problem.detail)
    if problem.kind == "conflict":
        return Conflict(problem.detail)
    if problem.kind == "idempotency-key-reused":
        return KeyReused(problem.detail)
    if 400 <= problem.status < 500:
        error = CallerError(problem.detail)
        error.status_hint = problem.status
        return error
    return Unavailable(f"the owning node answered {problem.status}: {problem.detail}")


def _with_request_id(write: JobWrite) -> JobWrite:
    plain_create = write.op is JobWriteOp.UPSERT and write.expected_version is None
    if plain_create or write.idempotency_key is not None:
        return write
    return msgspec.structs.replace(write, idempotency_key=f"request {uuid.uuid4()}")


class _OwnerQueue:
    """The writes waiting for one owner's next internal batch."""

    def __init__(self) -> None:
        self.items: list[tuple[JobWriteItem, asyncio.Future[Any]]] = []
        self.in_flight = 0
        self.timer: asyncio.TimerHandle | None = None


class WriteRouter:
    def __init__(self, owners: OwnerMap, *, shard_count: int, cluster_secret: str, retry_for_s: float = 10.0,
                 window_s: float = 0.002, max_batch: int = 256) -> None:  # fmt: skip
        self.owners = owners
        self.client = NodeClient(cluster_secret)
        self.shard_count = shard_count
        self.retry_for_s = retry_for_s
        self.window_s = window_s
        self.max_batch = max_batch
        self.retries = 0  # writes sent again after a not-owner answer or an unreachable owner (a metric)
        self.batches = 0  # internal requests sent (a metric: writes per request = writes / batches)
        self.writes = 0  # job writes routed
        self._queues: dict[str, _OwnerQueue] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def write(self, job_id: uuid.UUID, write: JobWrite) -> JobWritten:
        (answer,) = await self.write_many([(job_id, write)])
        if isinstance(answer, ShardwheelError):
            raise answer
        return answer

    async def write_many(self, items: Sequence[tuple[uuid.UUID, JobWrite]]) -> list[Answer]:
        """Every write routed to its owner; one answer per item, in order (an error does not stop the rest)."""
        todo = {i: JobWriteItem(job_id, _with_request_id(w)) for i, (job_id, w) in enumerate(items)}
        self.writes += len(items)
        answers: dict[int, Answer] = {}
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.retry_for_s
        why: dict[int, str] = {}
        while True:
            sent: list[tuple[int, asyncio.Future[Any]]] = []
            for i, item in todo.items():
                address = self.owners.address_of(shard_of(item.job_id, self.shard_count))
                if address is None:
                    why[i] = "no node owns it yet"
                else:
                    sent.append((i, self._submit(address, item)))
            if sent:
                await asyncio.wait([f for _, f in sent])
            for i, future in sent:
                answer = future.result()
                if isinstance(answer, str):
                    why[i] = answer
                else:
                    answers[i] = answer
                    del todo[i]
            if not todo:
                return [answers[i] for i in range(len(items))]
            left = give_up_at - loop.time()
            if left <= 0:
                for i, item in todo.items():
                    shard = shard_of(item.job_id, self.shard_count)
                    answers[i] = Unavailable(f"shard {shard} of job {item.job_id} has no reachable owner "
                                             f"({why[i]}); retry later")  # fmt: skip
                return [answers[i] for i in range(len(items))]
            self.retries += len(todo)
            await self.owners.wait_changed(min(left, 0.5))

    def _submit(self, address: str, item: JobWriteItem) -> asyncio.Future[Any]:
        """Queue one write for ``address``; its future ends with the answer, or a string: why to retry."""
        queue = self._queues.setdefault(address, _OwnerQueue())
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        queue.items.append((item, future))
        if queue.in_flight == 0 or len(queue.items) >= self.max_batch:
            self._flush(address)
        elif queue.timer is None:
            queue.timer = asyncio.get_running_loop().call_later(self.window_s, self._flush, address)
        return future

    def _flush(self, address: str) -> None:
        queue = self._queues[address]
        if queue.timer is not None:
            queue.timer.cancel()
            queue.timer = None
        while queue.items:
            batch, queue.items = queue.items[: self.max_batch], queue.items[self.max_batch :]
            queue.in_flight += 1
            task = asyncio.create_task(self._send(address, queue, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, address: str, queue: _OwnerQueue,
                    batch: list[tuple[JobWriteItem, asyncio.Future[Any]]]) -> None:  # fmt: skip
        self.batches += 1
        try:
            answers = await self._post(address, [item for item, _ in batch])
        except BaseException:  # cancelled with the app: nobody may wait forever
            for _, future in batch:
                if not future.done():
                    future.set_result(Unavailable("the API is shutting down"))
            raise
        finally:
            queue.in_flight -= 1
        for (_, future), answer in zip(batch, answers, strict=True):
            if not future.done():
                future.set_result(answer)
        if queue.items and queue.in_flight == 0:
            self._flush(address)  # what queued behind this batch goes now, not at its timer

    async def _post(self, address: str, items: list[JobWriteItem]) -> list[JobWritten | ShardwheelError | str]:
        try:
            status, content = await self.client.post(address, "/internal/v1/jobs:batch",
                                                     msgspec.json.encode(JobWriteBatch(items)))  # fmt: skip
        except NodeUnreachable as e:
            return [f"unreachable: {e}"] * len(items)
        if status != 200:
            problem = _decode_problem(content, status)
            if problem.kind == "unavailable" or problem.status >= 500:
                return [f"{address}: {problem.detail}"] * len(items)
            return [error_of(problem)] * len(items)
        try:
            results = msgspec.json.decode(content, type=JobWriteResults).items
        except (msgspec.ValidationError, msgspec.DecodeError) as e:
            return [Unavailable(f"{address} answered what is not a batch result: {e}")] * len(items)
        if len(results) != len(items):  # a broken node; the writes may have been applied: not retried
            return [Unavailable(f"{address} answered {len(results)} results for {len(items)} writes")] * len(items)
        out: list[JobWritten | ShardwheelError | str] = []
        for result in results:
            if result.written is not None:
                out.append(result.written)
            elif result.problem is None:
                out.append(Unavailable(f"{address} answered an empty result"))
            elif result.problem.kind in ("not-owner", "unavailable"):
                out.append(f"{address}: {result.problem.detail}")
            else:
                out.append(error_of(result.problem))
        return out

    async def aclose(self) -> None:
        """Cancel the batches still in flight (the app is stopping) and close the connections to nodes."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.aclose()


def _decode_problem(content: bytes, status: int) -> Problem:
    try:
        return msgspec.json.decode(content, type=Problem)
    except (msgspec.ValidationError, msgspec.DecodeError):
        text: Any = content[:200].decode("utf-8", "replace")
        return Problem("urn:shardwheel:problem:internal", "Internal error", status, str(text))
