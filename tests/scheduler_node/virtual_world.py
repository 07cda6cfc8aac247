"""The engine on virtual time: a memory store, a scripted dispatcher and an ownership the test drives.

Everything the engine reads runs on trio's clock, so under ``MockClock(autojump_threshold=0)`` a test of a
minute of firings, retries and outages finishes in milliseconds and always the same way:

- ``VirtualClock``: the engine's wall clock, ``T0_MS`` plus trio's (virtual) time.
- ``ScriptedDispatcher``: answers each ``SendRequest`` with what ``respond(request)`` says (a ``Reply``:
  status, delay, ``Retry-After``, or an outcome kind such as a timeout), after the reply's delay on trio's
  clock; it records every send (``sends``) and honours ``may_send`` (the lease check) and ``cancel``.
- ``TestOwnership``: grants, revokes and loses shards when the test says so, epochs from the memory store.
- ``world()``: all of it around a running ``Engine``; ``World.add_job`` stores a job as a write would.

Example::

    async with world() as w:               # in a test that takes the ``autojump_clock`` fixture
        await w.grant(0)
        job = await w.add_job(spec(every="1s"))
        await w.until(T0_MS + 5_500)
        assert [s.slot_ms for s in w.dispatcher.sends_of(job)] == [T0_MS + 1000 * i for i in range(6)]
"""

from __future__ import annotations

import itertools
import math
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import trio

from protocol.egress import EgressPolicy
from protocol.executions import ExecutionStatus, Origin
from protocol.ids import new_job_id
from protocol.internal import JobWrite, JobWriteOp
from protocol.jobs import JobSpec
from protocol.shards import shard_of
from scheduler_node.clock import Clock, ms_to_datetime
from scheduler_node.dispatch import DispatcherStatistics, Outcome, OutcomeKind, SendRequest
from scheduler_node.engine import Engine, EngineConfig, EngineTuning
from scheduler_node.ownership import Acquired, Grant, Lost, OwnershipEvent, RevokeRequested, Validity
from scheduler_node.store import Fence
from scheduler_node.store_health import StoreHealth

from .memory_store import MemoryStore, Row

T0_MS = 1_935_000_000_000  # 2031-04-27T...Z, a whole second
SHARDS = 4
_ids = itertools.count(1)


class VirtualClock(Clock):
    """Wall-clock ms read off trio's clock: ``T0_MS`` at trio time 0."""

    def __init__(self, start_ms: int = T0_MS) -> None:
        super().__init__()
        self.start_ms = start_ms

    def now_ms(self) -> int:
        return self.start_ms + math.floor(trio.current_time() * 1000 + 1e-6)

    def seconds_until(self, when_ms: int) -> float:
        return (when_ms - self.start_ms) / 1000 - trio.current_time()


@dataclass(frozen=True)
class Reply:
    status: int = 200
    delay_s: float = 0.01
    retry_after_s: float | None = None
    kind: OutcomeKind = OutcomeKind.RESPONSE
    bytes_written: bool = True
    queued_s: float = 0.0  # waits this long for a connection (a host at its cap) before a byte is written


@dataclass(frozen=True)
class Sent:
    job_id: uuid.UUID
    slot_ms: int
    attempt: int
    origin: str
    at_ms: int


class FakeExchange:
    def __init__(self, request: SendRequest, context: Any) -> None:
        self.request = request
        self.context = context
        self.outcome: Outcome | None = None
        self.cancel_scope = trio.CancelScope()
        self.written = False  # as the dispatcher's: set before the first byte of the request is tried


class ScriptedDispatcher:
    def __init__(self, clock: VirtualClock, respond: Callable[[SendRequest], Reply] | None = None) -> None:
        self.clock = clock
        self.respond = respond or (lambda _: Reply())
        self.sends: list[Sent] = []
        self.cancelled: list[FakeExchange] = []
        self.in_flight = 0
        self.backlog = 0  # what ``waiting`` reports: sends queued for a connection (a slow host at its cap)
        self._nursery: trio.Nursery | None = None

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ScriptedDispatcher]:
        async with trio.open_nursery() as n:
            self._nursery = n
            yield self
            n.cancel_scope.cancel()

    @property
    def waiting(self) -> int:
        return self.backlog

    def statistics(self) -> DispatcherStatistics:
        return DispatcherStatistics(
            in_flight=self.in_flight,
            waiting=0,
            node_limit=10_000,
            open_connections=0,
            connections_opened=0,
            connections_reused=0,
            stale_closed=0,
            resent=0,
            origins={},
        )

    def sends_of(self, job_id: uuid.UUID) -> list[Sent]:
        return [s for s in self.sends if s.job_id == job_id]

    def submit(self, request: SendRequest, *, context: Any = None) -> FakeExchange:
        assert self._nursery is not None
        ex = FakeExchange(request, context)
        self.in_flight += 1
        self._nursery.start_soon(self._exchange, ex)
        return ex

    def cancel(self, ex: Any) -> None:
        if ex.outcome is None:
            self.cancelled.append(ex)
            self._end(ex, OutcomeKind.CANCELLED, bytes_written=ex.written, error="cancelled")
            ex.cancel_scope.cancel()

    async def _exchange(self, ex: FakeExchange) -> None:
        r = ex.request
        started = self.clock.now_ms()
        with ex.cancel_scope:
            await trio.lowlevel.checkpoint()
            if r.may_send is not None and not r.may_send():
                self._end(ex, OutcomeKind.NOT_SENT, bytes_written=False, started_ms=started)
                return
            reply = self.respond(r)
            await trio.sleep(reply.queued_s)
            ex.written = reply.kind is not OutcomeKind.CONNECT_ERROR
            if reply.kind is not OutcomeKind.CONNECT_ERROR:
                self.sends.append(
                    Sent(
                        uuid.UUID(r.template.job_id),
                        r.scheduled_at_ms,
                        r.attempt,
                        r.origin,
                        self.clock.now_ms(),
                    )
                )
            await trio.sleep(reply.delay_s)
            if reply.kind is OutcomeKind.RESPONSE:
                self._end(
                    ex,
                    reply.kind,
                    bytes_written=True,
                    started_ms=started,
                    http_status=reply.status,
                    retry_after_s=reply.retry_after_s,
                )
            else:
                self._end(
                    ex,
                    reply.kind,
                    bytes_written=reply.bytes_written,
                    started_ms=started,
                    error=reply.kind.value,
                )

    def _end(
        self,
        ex: FakeExchange,
        kind: OutcomeKind,
        *,
        bytes_written: bool,
        started_ms: int | None = None,
        **fields: Any,
    ) -> None:
        if ex.outcome is not None:
            return
        now = self.clock.now_ms()
        started = now if started_ms is None else started_ms
        ex.outcome = Outcome(
            kind=kind,
            bytes_written=bytes_written,
            started_at=started / 1000,
            sent_at=started / 1000 if bytes_written else None,
            duration_s=(now - started) / 1000,
            **fields,
        )
        self.in_flight -= 1
        if ex.request.on_done is not None:
            ex.request.on_done(ex)  # type: ignore[arg-type]


class TestOwnership:
    """Grants what the test grants; epochs from the store (``bump_epoch``), valid until the test says."""

    __test__ = False

    def __init__(self, store: MemoryStore, node: str) -> None:
        self.store = store
        self.node = node
        self._validity = Validity(math.inf)
        self._grants: dict[int, Grant] = {}
        self.released_shards: list[int] = []
        self._dropped = trio.Event()  # a grant ended (released, lost or expired)
        self._send, self.events = trio.open_memory_channel[OwnershipEvent](math.inf)

    def grants(self) -> dict[int, Grant]:
        return self._grants

    @property
    def valid(self) -> float:
        """The lease's validity (trio seconds): set it to the present to block sends, to inf to free them."""
        return self._validity.until

    @valid.setter
    def valid(self, until: float) -> None:
        self._validity.set(until)

    def valid_until(self) -> float:
        return self._validity.until

    async def wait_valid(self) -> None:
        await self._validity.wait()

    async def released(self, shard: int) -> None:
        self._grants.pop(shard, None)
        self.released_shards.append(shard)
        self._grant_dropped()

    def _grant_dropped(self) -> None:
        self._dropped.set()
        self._dropped = trio.Event()

    async def wait_released(self, shard: int) -> None:
        """Return once ``shard`` is no longer granted (after ``revoke``: once the engine released it)."""
        while shard in self._grants:
            await self._dropped.wait()

    def stop_taking(self) -> None:
        pass  # the test grants what it means to; a grant during a drain is handed back by the engine

    def problem(self) -> str | None:
        return None

    def lost(self, shard: int) -> None:
        if self._grants.pop(shard, None) is not None:
            self._send.send_nowait(Lost(shard))
            self._grant_dropped()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep_forever()

    def grant(self, shard: int) -> int:
        epoch = self.store.bump_epoch(shard, self.node)
        self._grants[shard] = Grant(epoch, math.inf)
        self._send.send_nowait(Acquired(shard, epoch))
        return epoch

    def revoke(self, shard: int, within_s: float = 5.0) -> None:
        self._send.send_nowait(RevokeRequested(shard, trio.current_time() + within_s))

    def expire(self, shard: int) -> None:
        """The lease ran out (another node may take the shard): ``Lost`` without a fenced write."""
        self.lost(shard)


def job_id_in(shard: int) -> uuid.UUID:
    while True:
        job_id = new_job_id(T0_MS - 10_000_000 + next(_ids))
        if shard_of(job_id, SHARDS) == shard:
            return job_id


@dataclass
class World:
    clock: VirtualClock
    store: MemoryStore
    dispatcher: ScriptedDispatcher
    ownership: TestOwnership
    engine: Engine
    nursery: trio.Nursery
    node: str = "node-a"
    loaded: set[int] = field(default_factory=set)

    async def add_job(
        self, spec: JobSpec, *, shard: int = 0, next_fire_at_ms: int | None = None, tenant: str = "acme"
    ) -> uuid.UUID:
        """Store a job as the owner's write would (the engine picks it up as it would after a write)."""
        job_id = job_id_in(shard)
        if shard in self.ownership.grants():
            write = JobWrite(op=JobWriteOp.UPSERT, actor="tester", tenant=tenant, spec=spec)
            await self.engine.apply_write(job_id, write)
        else:
            self.store_job(job_id, spec, shard=shard, next_fire_at_ms=next_fire_at_ms, tenant=tenant)
        return job_id

    def store_job(
        self,
        job_id: uuid.UUID,
        spec: JobSpec,
        *,
        shard: int,
        next_fire_at_ms: int | None = None,
        tenant: str = "acme",
    ) -> None:
        """A job already in the store (written while no node held its shard)."""
        nfa = ms_to_datetime(self.clock.now_ms() if next_fire_at_ms is None else next_fire_at_ms)
        epoch = self.store.epochs.setdefault(shard, (0, ""))[0]
        write = JobWrite(op=JobWriteOp.UPSERT, actor="tester", tenant=tenant, spec=spec)
        self.store.write_job(Fence(shard, epoch), job_id, write, next_fire_at=nfa)

    async def grant(self, shard: int = 0) -> int:
        """Give the node ``shard`` and wait until it is loaded."""
        epoch = self.ownership.grant(shard)
        await self.engine.wait_loaded([shard])
        return epoch

    async def until(self, when_ms: int) -> None:
        await trio.sleep(max(0.0, self.clock.seconds_until(when_ms)))

    def rows(self, job_id: uuid.UUID) -> dict[tuple[int, Origin], Row]:
        return self.store.rows_of(job_id)

    def statuses(self, job_id: uuid.UUID) -> dict[int, ExecutionStatus]:
        """Scheduled slots (ms after T0) -> status."""
        return {
            slot - T0_MS: r.status
            for (slot, origin), r in self.rows(job_id).items()
            if origin is Origin.SCHEDULED
        }

    async def settle(self) -> None:
        """Let every result reach the store."""
        await self.engine.writer.flush()
        await self.engine.alerts.flush()


@asynccontextmanager
async def world(
    respond: Callable[[SendRequest], Reply] | None = None,
    *,
    tuning: EngineTuning | None = None,
    node: str = "node-a",
    store: MemoryStore | None = None,
) -> AsyncIterator[World]:
    """An engine on virtual time (the test must run on ``autojump_clock``), stopped at the end."""
    clock = VirtualClock()
    store = store or MemoryStore(clock.now_ms)
    dispatcher = ScriptedDispatcher(clock, respond)
    ownership = TestOwnership(store, node)
    config = EngineConfig(
        node_id=node, shard_count=SHARDS, tuning=tuning or EngineTuning(refill_interval_ms=2_000),
        egress=EgressPolicy.of([], dev=True),  # the tests' targets are on 127.0.0.1
    )  # fmt: skip
    async with dispatcher.running(), trio.open_nursery() as n:
        engine = Engine(
            config,
            db=store,
            ownership=ownership,
            dispatcher=dispatcher,  # type: ignore[arg-type]
            clock=clock,
            health=StoreHealth(stalled_for_s=store.stalled_for_s),
        )
        await n.start(engine.run)
        yield World(clock, store, dispatcher, ownership, engine, n, node)
        n.cancel_scope.cancel()


def at(ms_after_t0: int) -> datetime:
    return ms_to_datetime(T0_MS + ms_after_t0)
