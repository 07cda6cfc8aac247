"""The firing engine: from owned shards to HTTP requests on the second, and every slot to one terminal state.

Rules (DESIGN.md §4, §5):
- The wheel holds two kinds of entries, both at wall-clock milliseconds: ``CLAIM`` at ``slot - lookahead``
  and ``FIRE`` at the slot (or at a retry's ``next_attempt_at``); a job with jitter has its scheduled slots due
  its offset later (``LoadedJob.due_ms``, ``protocol.jitter``): claimed, sent and judged late from there. A job
  in memory has exactly one pending CLAIM (its next slot) while it is active and its next slot lies within the
  horizon.
- Claim ahead: the CLAIM entries due together are claimed in one fenced statement (execution rows inserted
  ``ON CONFLICT DO NOTHING``, ``job_cursor`` raised); only inserted rows get a FIRE entry. Next slots are
  computed after the claim and before the burst, so neither the database nor croniter sits between the second
  striking and the bytes leaving.
- A shard's claim statements commit one at a time, in the order they were planned (``ShardState.claiming``),
  each with a random token stored in its rows, so that a claim retried after a lost answer adopts its own rows
  only.
- A CLAIM handled later than its slot's misfire grace is a stall: the missed slots follow the job's misfire
  policy, exactly as at load time.
- FIRE: nothing is sent when the shard is no longer granted (the row stays ``claimed`` for the next owner).
  Past the lease validity (``valid_until``: etcd unreachable) a FIRE is held in memory and nothing is claimed;
  once the lease proves alive the held slots go out by the misfire policy (AT_MOST_ONCE ones too: the node
  knows it never sent them). A shard lost meanwhile has its unsent claims deleted if its epoch still stands,
  so the next owner plans them afresh instead of finding AT_MOST_ONCE rows it must call ``lost``.
- Claims that waited out an outage (PostgreSQL errors, or ``valid_until`` passed) are re-planned before
  they are retried: a job with a slot now past its misfire grace has its slots planned again from the first
  of them. A claim retried after an error first looks for the rows its lost attempt may have inserted.
- A scheduled slot of a job paused since its claim ends ``skipped_paused``; the concurrency policy decides
  between send, skip, buffer and replace.
- A run is in flight from its first send until its terminal state, retry waits included. Every attempt's
  outcome goes through the retry policy; results go to the batched writer, fenced by epoch, and so do the job
  states the node decides (completed, auto-paused: their own writer). A fenced write means the shard is gone:
  it is dropped at once.
- A claimed slot whose second comes when the node is more than its grace behind follows the misfire policy at
  its send (``misfire.send_late``); the node is then overloaded (``overload.py``) until none has for 10 s.
- Loading a shard: the store's takeover first (unfinished AT_LEAST_ONCE rows continue here; AT_MOST_ONCE rows
  that may have been sent become ``lost``), then the jobs due within the horizon, their missed slots (after
  ``job_cursor.last_slot``, not before ``next_fire_at``) planned by the misfire policy.
- ``jobs.next_fire_at`` stays a lower bound of each job's next unclaimed slot: writes set it to the write time,
  and a job leaving memory (next slot beyond the horizon) raises it to that slot before the next refill, which
  loads only jobs whose ``next_fire_at`` entered the horizon since the last one.
- Releasing a shard gracefully: stop claiming, delete (fenced) the claimed rows not yet sent, let runs in flight
  finish up to a deadline, flush the writer, then report it released.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import math
import random
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar

import trio

from protocol.egress import STRICT, EgressPolicy
from protocol.errors import (
    CallerError,
    Conflict,
    DatabaseUnavailable,
    Fenced,
    InfrastructureError,
    NotFound,
    NotOwnerError,
    ShardwheelError,
    SpecError,
    VersionMismatch,
)
from protocol.executions import Execution, ExecutionStatus, Origin
from protocol.internal import JobWrite, JobWriteOp, JobWritten
from protocol.jitter import jitter_offset_ms
from protocol.jobs import SEALED_PREFIX, Job, JobSpec, JobState, Target, validate_job_spec
from protocol.schedules import Every
from protocol.sealed import SecretBox
from protocol.shards import shard_of
from protocol.slots import FirstSlots, compile_schedule
from protocol.slots.backfill import backfill_slots

from . import store
from .alert_delivery import AlertDelivery
from .attempts import judged
from .clock import Clock, datetime_to_ms, ms_to_datetime
from .dispatch import Dispatcher, Exchange, RequestTemplate, SendRequest
from .gc_guard import GcGuard
from .metrics import Metrics
from .misfire import plan_missed, send_late
from .overload import OverloadSignal
from .ownership import Acquired, Lost, Ownership, RevokeRequested
from .rollup import Rollup
from .run_rules import FireStep, OutcomeStep, completes, finish_step, fire_step, outcome_step
from .shard_state import CLAIM, FIRE, LoadedJob, Pending, Phase, Run, ShardState
from .slot_plan import plan_slots
from .store import (
    AlertRow,
    ClaimRow,
    ExecKey,
    Fence,
    JobWriteOutcome,
    NewJob,
    NextFire,
    ResultRow,
    StateChange,
    UnreadableJob,
    job_uuid,
)
from .store_health import StoreHealth
from .trio_store import TrioStore
from .wheel import Entry, TimingWheel
from .writer import Writer

__all__ = ["Engine", "EngineConfig", "EngineStatistics", "EngineTuning"]

log = logging.getLogger(__name__)
T = TypeVar("T")
W = TypeVar("W")

S = ExecutionStatus
_NEVER = 2**63  # a slot key after every slot


@dataclass(slots=True)
class JobRow:
    """A stored job with its cursor (``job_cursor.last_slot``): what loading needs."""

    job: Job | UnreadableJob
    last_slot: datetime | None

    @property
    def job_id(self) -> uuid.UUID:
        return self.job.id if isinstance(self.job, UnreadableJob) else uuid.UUID(self.job.id)


@dataclass(frozen=True)
class EngineTuning:
    """How the engine runs. The defaults live here only: the node's config and its CLI flags take them."""

    horizon_ms: int = 60_000  # jobs whose next slot is this close are held in the wheel
    lookahead_ms: int = 300  # a slot is claimed this long before it is due (< lease TTL / 3)
    refill_interval_ms: int = 5_000
    claim_chunk: int = 5_000  # slots per claim statement
    herd_chunk: int = 2_500  # slots per claim statement of a herd's rest: what falls due meanwhile waits for one
    release_timeout_s: float = 30.0  # requests in flight get this long to finish when shards are released
    load_concurrency: int = 4  # shards loaded at once (loading is database-bound)
    rollup_interval_s: float = 10.0  # how often the tenants' per-minute figures are added to PostgreSQL


@dataclass(frozen=True, slots=True)
class EngineStatistics:
    """What the engine holds right now (for status, metrics and tests)."""

    shards_loaded: int
    jobs_in_memory: int
    claimed_unsent: int  # slots claimed and waiting in the wheel for their second
    held: int  # slots due while sends were blocked (lease unconfirmed), waiting to go out
    in_flight: int  # runs between their first send and their terminal state


@dataclass(frozen=True)
class EngineConfig:
    node_id: str
    shard_count: int
    tuning: EngineTuning = field(default_factory=EngineTuning)
    signing_secrets: tuple[bytes, ...] = ()  # the current first, then the previous one while rotating
    alert_webhook: str | None = None  # the cluster's, for jobs without their own
    egress: EgressPolicy = STRICT  # target addresses a job may name (protocol.egress); the node updates it
    secrets: SecretBox | None = None  # opens sealed target headers (protocol.sealed); None: none can be opened


class Engine:
    def __init__(
        self,
        config: EngineConfig,
        *,
        db: TrioStore,
        ownership: Ownership,
        dispatcher: Dispatcher,
        metrics: Metrics | None = None,
        clock: Clock | None = None,
        health: StoreHealth | None = None,
    ) -> None:
        self.config = config
        self.egress = config.egress  # replaced by the node when the cluster's allowed networks change
        self.tuning = config.tuning
        self.db = db
        self.ownership = ownership
        self.dispatcher = dispatcher
        self.metrics = metrics or Metrics()
        self.clock = clock or Clock()
        self.health = health or StoreHealth(self.metrics)
        self.wheel: TimingWheel[Pending] = TimingWheel(self.clock.now_ms())
        self.jobs: dict[uuid.UUID, LoadedJob] = {}
        self._shards: dict[int, ShardState] = {}  # every shard acquired and not yet dropped or released
        self._shards_changed = trio.Event()  # set (and renewed) when a shard is acquired, loaded or dropped
        self._held_ready = trio.Event()  # a slot was held (sends blocked): _held_loop sends it when they resume
        self._raise_queue: list[NextFire] = []
        self._wakeup = trio.Event()
        self._wake_below = -math.inf  # while the driver sleeps, until when: an entry due earlier wakes it
        self._outcomes: list[Exchange] = []  # outcomes the dispatcher handed back, not yet recorded
        self._outcomes_ready = trio.Event()
        self._firing = False  # the driver is between the firings of one wheel tick
        self._burst_over = trio.Event()  # set when the driver has fired everything it took from the wheel
        self._claims_due: list[Pending] = []  # CLAIM entries the wheel gave, for _claim_loop
        self._claims_ready = trio.Event()
        self._frozen_at = -math.inf
        self._gc = GcGuard()  # the collector off during a burst's sends
        self._rng = random.Random()
        self._nursery: trio.Nursery | None = None
        self._draining = False
        # Results are written once 20 ms pass without one (at most 500 ms after the first): a second's results
        # become a few statements written after its burst, not small ones competing with the sends for the
        # node's one thread.
        self.rollup = Rollup()
        self.overload = OverloadSignal()
        self._manual_ms = 0  # the last manual slot given out (apply_write)
        self._first_slots = FirstSlots()  # new jobs' next_fire_at bounds
        self.writer: Writer[ResultRow] = self._batched(
            self._write_results, "results", max_batch=5_000, max_delay_s=0.5, quiet_s=0.02
        )
        self.writer.on_batch = self._record_write_batch
        # Alerts are batched like results: a target that is down fails every slot, and an insert per failure
        # would put a database round trip behind each of them.
        self.alerts: Writer[AlertRow] = self._batched(self._write_alerts, "alerts", max_batch=1_000, max_delay_s=0.2)
        # States the node decides (completed, auto-paused) are batched too: they come in herds (every job whose
        # end_at passed in one second), and a statement per job queued ahead of the next claims starved them.
        self.states: Writer[StateChange] = self._batched(
            self._write_states, "job states", max_batch=5_000, max_delay_s=0.2
        )
        self.metrics.wheel_size.read = lambda: float(len(self.wheel))
        self.metrics.in_flight.read = lambda: float(sum(st.in_flight for st in self._shards.values()))
        self.metrics.shards.read = lambda: float(len(self._loaded_shards()))
        self.metrics.connections_open.read = lambda: float(dispatcher.statistics().open_connections)
        self.metrics.connections_opened.read = lambda: float(dispatcher.statistics().connections_opened)
        self.metrics.sends_waiting.read = lambda: float(dispatcher.waiting)
        self.metrics.overloaded.read = lambda: float(self.overload.overloaded)
        self.metrics.writes_pending.read = lambda: float(
            self.writer.pending() + self.alerts.pending() + self.states.pending()
        )

    def _batched(self, write: Callable[[list[W]], Awaitable[Iterable[tuple[int, int]]]], name: str,
                 **tuning: Any) -> Writer[W]:  # fmt: skip
        """A writer of fenced batches: a fenced shard is lost, a PostgreSQL outage is ridden out."""
        return Writer(write, on_fenced=lambda fence: self.lose_shard(*fence), health=self.health, name=name,
                      **tuning)  # fmt: skip

    # ---- lifecycle ---------------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self._run(task_status)
        finally:
            self._gc.release()  # stopped mid-burst: give the process its collector back

    async def _run(self, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.writer.run)
            await nursery.start(self.alerts.run)
            await nursery.start(self.states.run)
            nursery.start_soon(self._drive)
            nursery.start_soon(self._outcome_loop)
            nursery.start_soon(self._claim_loop)
            nursery.start_soon(self._refill_loop)
            nursery.start_soon(self._ownership_events)
            nursery.start_soon(self._held_loop)
            nursery.start_soon(self._rollup_loop)
            nursery.start_soon(self._overload_loop)
            delivery = AlertDelivery(
                self.db,
                self._loaded_shards,
                metrics=self.metrics,
                clock=self.clock,
                health=self.health,
                egress=lambda: self.egress,
            )
            await nursery.start(delivery.run)
            await nursery.start(self.ownership.run)
            task_status.started()

    def ready(self) -> bool:
        grants = self.ownership.grants()
        loaded = self._loaded_shards()
        return (bool(grants) and all(s in loaded for s in grants) and self.health.problem() is None
                and self.ownership.problem() is None)  # fmt: skip

    async def wait_loaded(self, shards: Iterable[int]) -> None:
        """Return once every one of ``shards`` is loaded (acquired and firing)."""
        wanted = set(shards)
        while not wanted <= set(self._loaded_shards()):
            await self._shards_changed.wait()

    def _shards_change(self) -> None:
        self._shards_changed.set()
        self._shards_changed = trio.Event()

    def _loaded_shards(self) -> list[int]:
        """Shards loaded (firing, or being released), in acquisition order."""
        return [s for s, st in self._shards.items() if st.phase is not Phase.LOADING]

    def not_ready_because(self) -> str:
        """Why ``ready()`` is False: PostgreSQL unavailable (degraded), or shards still loading."""
        return self.health.problem() or self.ownership.problem() or "loading"

    async def _db(self, where: str, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """A store call that rides a PostgreSQL outage out (``store_health.py``): retried until it is back."""
        return await self.health.retry(where, self.db.call, fn, *args, **kwargs)

    async def drain(self) -> None:
        """The graceful shutdown: release every shard (no loss, no duplicate), then flush the writer."""
        self._draining = True
        self.ownership.stop_taking()
        deadline = trio.current_time() + self.tuning.release_timeout_s
        async with trio.open_nursery() as n:
            # Loading ones too (each release waits for its load, up to the deadline): a shard still loading
            # at SIGTERM went on to claim after the drain, and its rows stayed claimed once the node was gone.
            for shard in list(self._shards):
                n.start_soon(self._release, shard, deadline)
        await self.writer.flush()
        await self.alerts.flush()
        await self.states.flush()
        await self._flush_rollup()

    # ---- ownership ---------------------------------------------------------------------------------------

    async def _ownership_events(self) -> None:
        assert self._nursery is not None
        limiter = trio.CapacityLimiter(self.tuning.load_concurrency)  # loading is database-bound
        async for event in self.ownership.events:
            match event:
                case Acquired(shard=shard, epoch=epoch):
                    self._nursery.start_soon(self._acquire, shard, epoch, limiter)
                case RevokeRequested(shard=shard, deadline=deadline):
                    self._nursery.start_soon(self._release, shard, deadline)
                case Lost(shard=shard):
                    self._drop_shard(shard, give_back=True)

    async def _acquire(self, shard: int, epoch: int, limiter: trio.CapacityLimiter) -> None:
        if self._draining:
            # Granted while the node drains (another node released it meanwhile): loading it would claim
            # slots nobody releases any more. Handed back at once, nothing claimed.
            await self.ownership.released(shard)
            return
        if shard in self._shards:
            self._drop_shard(shard)  # granted again without a Lost first: nothing of the old epoch goes on
        state = self._shards[shard] = ShardState(shard, epoch)
        self._shards_change()
        async with limiter:
            try:
                takeover = await self._db("load", store.take_over_shard, shard, epoch)
            except Fenced:
                self.lose_shard(shard, epoch)
                return
            now = self.clock.now_ms()
            until = now + self.tuning.horizon_ms
            rows = await self._load_rows([shard], until)
            missing = {uuid.UUID(e.job_id) for e in takeover.resume} - {r.job_id for r in rows}
            if missing:
                rows += await self._get_rows(shard, sorted(missing))
            if self._shards.get(shard) is not state:
                return  # dropped while loading
            claims: list[ClaimRow] = []
            loaded: dict[uuid.UUID, LoadedJob] = {}
            for row in rows:
                if (made := self._load_job(row, now)) is not None:
                    loaded[made[0].id] = made[0]
                    claims += made[1]
            await self._claim_rows(claims, loaded)
            for e in takeover.resume:
                self._resume(state, loaded, e, now)
            if self._shards.get(shard) is not state:
                return
            state.refilled_until = until
            state.phase = Phase.LOADED
            state.loaded.set()
            self._shards_change()
            self._freeze_loaded(now_anyway=self.ready())
            self.metrics.skips.inc(len(takeover.lost), kind="lost")
            # An empty shard's load is routine (256 lines at a dev cluster's start): told only at debug level.
            log.log(
                logging.INFO if rows or takeover.resume or takeover.lost else logging.DEBUG,
                "shard %d loaded at epoch %d: %d jobs, %d resumed, %d lost",
                shard,
                epoch,
                len(rows),
                len(takeover.resume),
                len(takeover.lost),
                extra={"shard": shard},
            )

    def _freeze_loaded(self, *, now_anyway: bool = False) -> None:
        """Move what loading built (jobs, templates, rules) out of the collector's way, at most twice a second
        unless ``now_anyway``: after a shard's load (the last one at once), a refill that loaded jobs, a batch of
        created jobs. Frozen objects are freed by their reference counts, never by the collector: what is frozen
        must not end up in a reference cycle (a job's claim entry, which points back at it, is dropped with it).

        Jobs live long: in the collector's full passes they cost ~30 % of a burst's CPU (bench.dispatch_burst),
        and while shards load, full passes over the growing heap took ~5 s of a 22 s start at 100,000 jobs
        (the old generation is rescanned at every 25 % of growth). Jobs created through the API were not frozen:
        with 100,000 of them due at once, node CPU per firing was 199 µs against 158 µs frozen (bench herd).
        A young-generation pass first, so that only garbage that already aged into the old generation is frozen
        along (none of the loading's own).
        """
        now = trio.current_time()
        if now_anyway or now - self._frozen_at >= 0.5:
            self._frozen_at = now
            gc.collect(1)
            gc.freeze()

    def _resume(
        self, state: ShardState, loaded: Mapping[uuid.UUID, LoadedJob], e: Execution, now: int
    ) -> None:
        """Continue a run taken over. Its job may have left memory already (next slot beyond the horizon): the
        run is the shard's all the same."""
        job = loaded.get(uuid.UUID(e.job_id))
        if job is None:
            return
        slot = datetime_to_ms(e.scheduled_at)
        run = Run()
        job.runs[(slot, e.origin)] = run
        state.runs[(job.id, slot, e.origin)] = run
        when = now if e.next_attempt_at is None else max(now, datetime_to_ms(e.next_attempt_at))
        run.retry_entry = self._insert(when, Pending(FIRE, job, slot, e.origin, e.attempt))

    async def _release(self, shard: int, deadline: float) -> None:
        state = self._shards.get(shard)
        if state is not None:
            with trio.move_on_at(deadline):
                await state.loaded.wait()  # still loading: release once it is whole
        while self._firing:  # slots the driver took from the wheel mid-burst are sent, not left claimed
            await self._burst_over.wait()
        state = self._shards.get(shard)
        if state is not None and state.phase is Phase.RELEASING:
            return
        if state is None or state.phase is Phase.LOADING:  # dropped, or loading outlasted the deadline
            if state is not None:
                self._drop_shard(shard)  # its claims so far stay for the next owner's takeover
            await self.ownership.released(shard)
            return
        state.phase = Phase.RELEASING  # no claim statement of the shard starts from here on
        epoch = state.epoch
        for job in list(state.jobs.values()):
            self._cancel_claim(job)
        # Give back once the claim statement in flight, if any, committed: one committing after the give-back
        # would raise cursors past the slots given back, and the next owner would never plan them. Should a
        # claim wait out an unconfirmed lease past the deadline, the rows stay ``claimed`` for the takeover.
        # Only the wait for the lock is bounded: the give-back runs to its end, however slow PostgreSQL is.
        locked = False
        with trio.move_on_at(deadline):
            await state.claiming.acquire()
            locked = True
        if locked:
            try:
                keys = self._take_unsent(state)
                keys += [ExecKey(shard, *k) for k in state.withdrawn]
                state.withdrawn.clear()
                if keys:
                    result = await self._db("release", store.delete_unsent_claims, shard, epoch, keys)
                    if result.fenced:
                        log.info("shard %d: fenced while releasing; the new owner handles its claims", shard,
                                 extra={"shard": shard})
            finally:
                state.claiming.release()
        with trio.move_on_at(deadline):
            await state.idle.wait()
        # Past the deadline, slots still queued for a connection (a node behind, a slow target) were never
        # written: given back like the unsent ones, not left claimed (busy-core runs left ~1,000 claimed).
        # Only when no claim statement can still commit after the give-back (the lock was had: see above).
        unwritten = []
        if locked:
            unwritten = self._withdraw_unwritten(state) + [ExecKey(shard, *k) for k in state.withdrawn]
            state.withdrawn.clear()
        if unwritten:
            result = await self._db("release", store.delete_unsent_claims, shard, epoch, unwritten)
            log.info("shard %d: gave back %d claims whose request was never written", shard,
                     len(result.applied), extra={"shard": shard})
        await self.writer.flush()
        await self.states.flush()  # the next owner loads the job as this node left it (completed, paused)
        if self._shards.get(shard) is state:
            # What is left (a retry waiting for its time, a request past the deadline) is the next owner's, as
            # its row says: cancelled here, or it would go on under whatever state holds the shard next.
            self._drop_shard(shard)
        await self.ownership.released(shard)

    def lose_shard(self, shard: int, epoch: int) -> None:
        """A write at ``epoch`` was fenced, which proves a newer owner: stop everything for this shard now.

        Unless the shard is held at another epoch by now: lost and taken back since that write was queued, the
        stale write says nothing about the new ownership."""
        state = self._shards.get(shard)
        if state is not None and state.epoch != epoch:
            return
        self.metrics.fenced.inc()
        self.ownership.lost(shard)
        self._drop_shard(shard)

    def _drop_shard(self, shard: int, *, give_back: bool = False) -> None:
        """Stop everything for ``shard``. ``give_back``: its lease ran out (no fenced write proved a newer
        owner yet), so the claims it never sent are deleted if its epoch still stands, and the next owner
        plans those slots by their misfire policy instead of finding them ``claimed`` (AT_MOST_ONCE: lost)."""
        state = self._shards.get(shard)
        if state is None:
            return
        unsent = self._take_unsent(state)
        if give_back and unsent and self._nursery is not None:
            self._nursery.start_soon(self._give_back, state, unsent)
        for job in list(state.jobs.values()):
            self._cancel_claim(job)
        for run in state.runs.values():
            run.cancelled = True
            if run.exchange is not None:
                self.dispatcher.cancel(run.exchange)
            if run.retry_entry is not None:
                self.wheel.cancel(run.retry_entry)
        self._forget_shard(shard)

    def _take_unsent(self, state: ShardState) -> list[ExecKey]:
        """Cancel the shard's claimed slots still waiting for their second, and forget its held ones; returns
        the keys of those never sent (what a release or a give-back deletes)."""
        unsent, state.unsent = state.unsent, {}
        held, state.held = state.held, {}
        keys = [ExecKey(state.shard, *key) for key, entry in unsent.items() if self.wheel.cancel(entry)]
        keys += [ExecKey(state.shard, *key) for key, p in held.items() if p.attempt == 0]
        return keys

    def _withdraw_unwritten(self, state: ShardState) -> list[ExecKey]:
        """Cancel the shard's first attempts whose request no byte of was written (queued for a connection or
        connecting); returns their keys. A later attempt's slot was sent before: it stays for the takeover."""
        keys = []
        for key, run in state.runs.items():
            ex = run.exchange
            if ex is not None and not ex.written and ex.request.attempt == 1:
                run.cancelled, run.exchange = True, None
                ex.context = None  # its cancelled outcome is recorded by nobody: the row is given back
                self.dispatcher.cancel(ex)
                state.answered()
                keys.append(ExecKey(state.shard, *key))
        return keys

    async def _give_back(self, state: ShardState, keys: list[ExecKey]) -> None:
        try:
            async with state.claiming:  # after the claim statement in flight (see _release)
                result = await self.db.call(store.delete_unsent_claims, state.shard, state.epoch, keys)
        except DatabaseUnavailable:
            return  # best effort: the next owner's takeover settles them
        if not result.fenced:
            log.info("shard %d: gave back %d unsent claims", state.shard, len(result.applied),
                     extra={"shard": state.shard})

    def _forget_shard(self, shard: int) -> None:
        state = self._shards.pop(shard, None)
        if state is not None:
            for job_id in state.jobs:
                self.jobs.pop(job_id, None)
            state.loaded.set()  # nobody waits for a shard that is gone
            self._shards_change()

    def _granted_epoch(self, shard: int) -> int | None:
        """The epoch to write and send with for ``shard`` (loading counts: its first claims go out then)."""
        state = self._shards.get(shard)
        if state is None or state.phase is Phase.RELEASING:
            return None
        grant = self.ownership.grants().get(shard)
        return state.epoch if grant is not None and grant.epoch == state.epoch else None

    def _may_send(self) -> bool:
        return trio.current_time() < self.ownership.valid_until()

    def _hold(self, p: Pending) -> None:
        """A slot due while sends are blocked (``valid_until`` passed, e.g. etcd unreachable): kept, not sent.

        The node knows it never wrote a byte of it, so once the lease proves alive it goes out as a late slot
        would (the misfire policy decides, for AT_MOST_ONCE too); should the shard move instead, the row is
        still ``claimed`` and the new owner's takeover settles it."""
        self.metrics.not_sent.inc()
        state = self._shards.get(p.job.shard)
        if state is not None:
            state.held[(p.job.id, p.slot_ms, p.origin)] = p
            self._held_ready.set()

    async def _held_loop(self) -> None:
        while True:
            await self._held_ready.wait()
            await self.ownership.wait_valid()
            self._held_ready = trio.Event()
            now = self.clock.now_ms()
            for state in list(self._shards.values()):
                held, state.held = state.held, {}
                if held and self._granted_epoch(state.shard) is not None:  # else: the row stays for the next owner
                    self._resume_held(list(held.values()), now)

    def _resume_held(self, held: list[Pending], now: int) -> None:
        """Send what was held, slots past their job's grace following its misfire policy."""
        missed: dict[uuid.UUID, list[Pending]] = {}
        for p in held:
            if p.attempt == 0 and p.origin is Origin.SCHEDULED and p.job.missed(p.slot_ms, now):
                missed.setdefault(p.job.id, []).append(p)
            else:
                self._fire(p)
        for pending in missed.values():
            pending.sort(key=lambda p: p.slot_ms)
            job = self._current(pending[0].job)
            plan = plan_missed([p.slot_ms for p in pending], now - job.offset_ms, job.spec.misfire)
            fire = set(plan.fire)
            for p in pending:
                if p.slot_ms in fire:
                    self._fire(p)
                else:
                    self._record(job, p, S.SKIPPED_MISFIRE, "missed: sends were blocked (lease unconfirmed)")
            self._maybe_complete(job)

    # ---- loading -----------------------------------------------------------------------------------------

    async def _load_rows(
        self, shards: Sequence[int], until_ms: int, after_ms: int | None = None
    ) -> list[JobRow]:
        after = None if after_ms is None else ms_to_datetime(after_ms)
        rows = await self._db("load", store.due_jobs, shards, ms_to_datetime(until_ms), after=after)
        return [JobRow(job, last_slot) for job, last_slot in rows]

    async def _get_rows(self, shard: int, ids: Sequence[uuid.UUID]) -> list[JobRow]:
        jobs = await self._db("load", store.jobs_by_id, shard, ids)
        if not jobs:
            return []
        rows = [JobRow(j, None) for j in jobs]
        cursors = await self._db("load", store.job_cursors, shard, [r.job_id for r in rows])
        return [JobRow(r.job, cursors.get(r.job_id)) for r in rows]

    def _make_job(self, job: Job) -> LoadedJob:
        job_id = job_uuid(job.id)
        return LoadedJob(
            id=job_id, shard=job.shard, tenant=job.tenant, spec=job.spec, state=job.state,
            version=job.version, rule=compile_schedule(job.spec, job.created_at),
            offset_ms=jitter_offset_ms(job_id, job.spec.jitter),
            template=RequestTemplate.for_job(job, node_id=self.config.node_id, target=self._opened(job),
                                             signing_secret=self.config.signing_secrets),
        )  # fmt: skip

    def _opened(self, job: Job) -> Target:
        """The job's target as sent: its sealed header values opened, in memory only."""
        if self.config.secrets is None:
            if any(v.startswith(SEALED_PREFIX) for v in job.spec.target.headers.values()):
                raise ValueError("its target headers are sealed and this node has no --secrets-key")
            return job.spec.target
        return self.config.secrets.open_target(job.spec.target, tenant=job.tenant, job_id=job.id)

    def _loadable(self, stored: Job | UnreadableJob) -> LoadedJob | None:
        """The job ready to run, or None once it is marked broken. Validation accepts only runnable specs;
        this is the defence behind it (a spec another version wrote, a hand edit): one row no node can run
        must not stop the rest of its shard from loading, on this node or on any other."""
        if isinstance(stored, UnreadableJob):
            self._mark_broken(stored.shard, stored.id, stored.tenant, stored.version, None, stored.reason)
            return None
        try:
            return self._make_job(stored)
        except Exception as e:  # whatever a bad spec raises, a bug's included: the shard loads all the same
            reason = f"cannot be loaded: {type(e).__name__}: {e}"
            self._mark_broken(stored.shard, uuid.UUID(stored.id), stored.tenant, stored.version,
                              stored.spec.alert_webhook, reason)  # fmt: skip
            return None

    def _mark_broken(
        self, shard: int, job_id: uuid.UUID, tenant: str, version: int, webhook: str | None, reason: str
    ) -> None:
        log.error("job %s of shard %d is broken and will not fire: %s", job_id, shard, reason,
                  extra={"shard": shard})
        self.metrics.broken.inc()
        epoch = self._granted_epoch(shard)
        if epoch is not None and self._nursery is not None:
            self._nursery.start_soon(
                self._store_broken, shard, epoch, job_id, tenant, version, webhook, reason
            )

    async def _store_broken(
        self, shard: int, epoch: int, job_id: uuid.UUID, tenant: str, version: int, webhook: str | None,
        reason: str,
    ) -> None:  # fmt: skip
        stored = await self._set_state(shard, epoch, job_id, tenant, JobState.BROKEN, reason[:2000], version)
        if stored is None:
            return  # deleted, written again since it was read, or the shard moved on
        self.metrics.alerts.inc(kind="job_broken")
        self.alerts.put_nowait(AlertRow(
            shard, epoch, job_id, tenant, ms_to_datetime(self.clock.now_ms()), Origin.SCHEDULED, "job_broken",
            f"job {job_id} is broken and will not fire until its spec is written again: {reason}"[:2000],
            webhook=webhook or self.config.alert_webhook, payload={"reason": reason[:2000]},
        ))  # fmt: skip

    def _load_job(self, row: JobRow, now: int) -> tuple[LoadedJob, list[ClaimRow]] | None:
        """Put a job in memory and plan its slots up to now; returns it and the rows to claim for them, or
        None for a job that cannot run (marked broken)."""
        job = self._loadable(row.job)
        if job is None:
            return None
        old = self.jobs.get(job.id)
        if old is not None:
            # What runs and waits moves to the new object; the old one keeps none of it (both holding the
            # buffered slot fired it twice). Work in flight still points at the old one: see _current.
            job.runs, job.failures, job.buffered = old.runs, old.failures, old.buffered
            job.last_claimed_ms, job.unsent = old.last_claimed_ms, old.unsent
            old.buffered, old.unsent = None, 0
            self._cancel_claim(old)
        self.jobs[job.id] = job
        state = self._shards.get(job.shard)
        if state is not None:
            state.jobs[job.id] = job
        if job.state is not JobState.ACTIVE:
            return job, []
        assert isinstance(row.job, Job)  # _loadable made it
        nfa = row.job.next_fire_at
        start = -1 if nfa is None else datetime_to_ms(nfa) - 1
        if row.last_slot is not None:
            last = datetime_to_ms(row.last_slot)
            job.last_claimed_ms = max(job.last_claimed_ms or last, last)
        if job.last_claimed_ms is not None:
            start = max(start, job.last_claimed_ms)
        return job, self._plan_from(job, start, now)

    def _plan_from(self, job: LoadedJob, after_ms: int, now: int) -> list[ClaimRow]:
        """Claim rows for the job's slots after ``after_ms`` up to ``now + lookahead``, and its next CLAIM.

        Slots older than the misfire grace follow the misfire policy; later ones (late within grace, or due
        within the lookahead) are claimed to be sent, at most ``max_catchup`` of them per call so one call stays
        bounded; the rest come with the next CLAIM, due at once. One batch catches a job up, not one per slot.
        """
        # planned on the job's clock: its slots are due its jitter's offset after their instants
        plan = plan_slots(job.slots_after, after_ms, now - job.offset_ms, job.spec.misfire, self.tuning.lookahead_ms)
        epoch = self._shards[job.shard].epoch
        rows = [ClaimRow(job.shard, epoch, job.id, s) for s in plan.send]
        rows += [ClaimRow(job.shard, epoch, job.id, s, status=S.SKIPPED_MISFIRE,
                          error="missed: no node could fire it in time") for s in plan.skip]  # fmt: skip
        if plan.missed:
            self.metrics.skips.inc(plan.missed - plan.missed_sent, kind="misfire")
        if plan.last is not None:
            job.last_claimed_ms = plan.last
        self._schedule_claim(job, plan.next_slot, now)
        return rows

    def _schedule_claim(self, job: LoadedJob, slot: int | None, now: int) -> None:
        self._cancel_claim(job)
        if slot is None:
            job.exhausted = True
            self._maybe_complete(job)
            return
        if slot > now + self.tuning.horizon_ms:
            # Leaves memory until the refill brings it back; its lower bound moves up to this slot first.
            state = self._shards.get(job.shard)
            if state is not None:
                self._raise_queue.append(
                    NextFire(job.shard, state.epoch, job.id, job.version, ms_to_datetime(slot))
                )
                state.jobs.pop(job.id, None)
            if not job.runs:
                self.jobs.pop(job.id, None)
            return
        job.claim_entry = self._insert(
            slot + job.offset_ms - self.tuning.lookahead_ms, Pending(CLAIM, job, slot, Origin.SCHEDULED)
        )

    def _cancel_claim(self, job: LoadedJob) -> None:
        if job.claim_entry is not None:
            self.wheel.cancel(job.claim_entry)
            job.claim_entry = None

    def _insert(self, when_ms: int, pending: Pending) -> Entry[Pending]:
        entry = self.wheel.insert(when_ms, pending)
        if when_ms < self._wake_below:  # else the driver wakes for it anyway (not asleep, or sleeping less)
            self._wakeup.set()
        return entry

    async def _refill_loop(self) -> None:
        interval = self.tuning.refill_interval_ms
        while not self._draining:
            # 400 ms into a second: after the whole-second burst of sends, before the next second's claims.
            now = self.clock.now_ms()
            await trio.sleep(((now // 1000) * 1000 + interval + 400 - now) / 1000)
            await self._refill()

    async def _refill(self) -> None:
        """Load the jobs that entered the horizon; one query per group of shards refilled up to the same time."""
        await self._flush_raises()
        now = self.clock.now_ms()
        until = now + self.tuning.horizon_ms
        groups: dict[int, list[int]] = {}
        for shard, state in self._shards.items():
            if state.phase is Phase.LOADED and state.refilled_until is not None:
                groups.setdefault(state.refilled_until, []).append(shard)
        for since, shards in groups.items():
            rows = await self._load_rows(shards, until, after_ms=since)
            claims: list[ClaimRow] = []
            loaded: dict[uuid.UUID, LoadedJob] = {}
            for row in rows:
                if row.job_id not in self.jobs and self._granted_epoch(row.job.shard) is not None:
                    if (made := self._load_job(row, now)) is not None:
                        loaded[made[0].id] = made[0]
                        claims += made[1]
            await self._claim_rows(claims, loaded)
            for shard in shards:
                if (st := self._shards.get(shard)) is not None and st.refilled_until is not None:
                    st.refilled_until = until
            if loaded:
                self._freeze_loaded()

    async def _flush_raises(self) -> None:
        queue, self._raise_queue = self._raise_queue, []
        live = [r for r in queue if self._granted_epoch(r.shard) == r.epoch]
        if live:
            result = await self._db("refill", store.raise_next_fire_at, live)
            for fence in _stale_fences(live, result.fenced):
                self.lose_shard(*fence)

    # ---- the driver --------------------------------------------------------------------------------------

    async def _drive(self) -> None:
        wheel, clock = self.wheel, self.clock
        while True:
            now = clock.now_ms()
            due = wheel.advance(now)
            if due:
                claims: list[Pending] = []
                fired = 0
                for entry in due:
                    p = entry.payload
                    if p.kind == CLAIM:
                        if p.job.claim_entry is entry:
                            p.job.claim_entry = None
                            claims.append(p)
                    else:
                        self._fire(p)
                        fired += 1
                        if fired == 64 and self._gc.hold():
                            # A burst: no collection until its sends are out (_outcome_loop releases it).
                            self._outcomes_ready.set()
                        if fired % 128 == 0:
                            # Let the sends started so far go out while the rest of the second is prepared.
                            if not self._firing:
                                self._firing = True
                                self._burst_over = trio.Event()
                            await trio.lowlevel.checkpoint()
                if self._firing:
                    self._firing = False
                    self._burst_over.set()
                if claims and not self._draining:
                    self._claims_due += claims
                    self._claims_ready.set()
                await trio.lowlevel.checkpoint()
                continue
            nd = wheel.next_deadline()
            self._wakeup = trio.Event()
            self._wake_below = math.inf if nd is None else nd
            with trio.move_on_after(1.0 if nd is None else max(0.0, clock.seconds_until(nd))):
                await self._wakeup.wait()
            self._wake_below = -math.inf

    async def _claim_loop(self) -> None:
        """One claimer: what fell due while a claim statement ran goes out as the next one.

        Jobs whose slots are spread over the second (anchors at any millisecond) would otherwise cost a
        statement per wheel tick (measured: ~1,000 statements/s of 2 rows at 2,200 firings/s, most of a node's
        CPU); claims are 300 ms ahead, so waiting for the previous statement costs nothing.

        More due at once than one claim statement takes (a herd: 100,000 jobs at :00) is claimed a statement at a
        time (``herd_chunk`` slots after the first ``claim_chunk``), the jobs whose next slot comes soonest first
        (an every-second job before an hourly one, a one-shot last: a late claim delays the job's next slot too),
        and what falls due meanwhile goes ahead of the rest. The herd drains at the claim rate while the other
        jobs' slots wait for one statement; before, they waited behind the whole herd (13.5 s for 100,000,
        docs/bench.md).
        """
        backlog: deque[list[Pending]] = deque()
        chunk, rest = self.tuning.claim_chunk, self.tuning.herd_chunk
        while True:
            if not backlog:
                await self._claims_ready.wait()
            self._claims_ready = trio.Event()
            due, self._claims_due = self._claims_due, []
            if self._draining:
                backlog.clear()
                continue
            if due:
                if len(due) > chunk:
                    due.sort(key=_by_next_slot)
                    backlog.extend(due[i : i + rest] for i in range(chunk, len(due), rest))
                await self._claim_due(due[:chunk])
            elif backlog:
                await self._claim_due(backlog.popleft())

    async def _claim_due(self, due: list[Pending]) -> None:
        now = self.clock.now_ms()
        rows: list[ClaimRow] = []
        on_time: list[Pending] = []
        for p in due:
            job = p.job
            epoch = self._granted_epoch(job.shard)
            if epoch is None or job.state is not JobState.ACTIVE or self.jobs.get(job.id) is not job:
                continue
            if job.last_claimed_ms is not None and p.slot_ms <= job.last_claimed_ms:
                continue  # planned since it fell due (a late claim's re-plan reached past it): claimed already
            if job.missed(p.slot_ms, now):  # a stall: the misfire policy decides
                self.overload.late(trio.current_time())
                rows += self._plan_from(job, p.slot_ms - 1, now)
                continue
            rows.append(ClaimRow(job.shard, epoch, job.id, p.slot_ms))
            job.last_claimed_ms = p.slot_ms
            on_time.append(p)
        jobs = {p.job.id: p.job for p in due}
        await self._claim_rows(rows, jobs)
        # Next slots after the claims went out, still ahead of the burst; yield now and then so that the
        # driver fires on time should this run long. A job that fell behind gets its late slots here too.
        now = self.clock.now_ms()
        follow: list[ClaimRow] = []
        limit = now + self.tuning.lookahead_ms
        for i, p in enumerate(on_time):
            job = p.job
            if self.jobs.get(job.id) is job and job.state is JobState.ACTIVE and job.claim_entry is None:
                nxt = job.next_slot(p.slot_ms)
                if nxt is None or nxt + job.offset_ms > limit:
                    self._schedule_claim(job, nxt, now)  # the usual case: one get_next
                else:
                    follow += self._plan_from(job, p.slot_ms, now)  # behind: catch up in one batch
            if i % 500 == 499:
                await trio.lowlevel.checkpoint()
        await self._claim_rows(follow, jobs)

    async def _claim_rows(self, rows: list[ClaimRow], jobs: Mapping[uuid.UUID, LoadedJob]) -> None:
        """Claim, then put what was inserted in the wheel. ``jobs``: the rows' jobs, which may have left
        ``self.jobs`` meanwhile (next slot beyond the horizon) but still owe these slots.

        A shard's claims go one after the other (its ``claiming`` lock, taken in shard order): a later claim
        committing first would raise a job's cursor past slots an earlier one, held back by an outage, has not
        claimed yet; were the earlier one then dropped with the shard, the next owner would never see them.
        """
        # Shards being released (or lost) claim nothing, and their locks are not taken: a drain releases every
        # shard at once, and a claim queuing on each of their locks in turn held every release up behind it.
        rows = self._still_ours(rows)
        if not rows:
            return
        # Back-pressure: results and alerts past their writers' bound (PostgreSQL slow or away) stop new claims,
        # so memory holds at most the bound plus what is already claimed. Waited for before the shards' claim
        # locks are taken: a release waits for those locks, and one held through this wait ran past its deadline
        # with nothing given back (a graceful stop under load left its claims `claimed`).
        started = trio.current_time()
        # waited: re-planned like any claim an outage held back (not `time passed`: on a real clock it always has)
        held_back = await self.writer.room()
        held_back = await self.alerts.room() or held_back
        states = [st for s in sorted({r.shard for r in rows}) if (st := self._shards.get(s)) is not None]
        async with contextlib.AsyncExitStack() as held:
            for st in states:
                # Free locks are taken without a checkpoint: each is a turn of the whole run queue, and a claim
                # across 256 shards of a busy node spent ~0.5 s taking them (a herd's other slots waited for it).
                try:
                    st.claiming.acquire_nowait()
                except trio.WouldBlock:
                    await st.claiming.acquire()
                held.callback(st.claiming.release)
            for i in range(0, len(rows), self.tuning.claim_chunk):
                await self._claim_chunk(rows[i : i + self.tuning.claim_chunk], jobs, started, held_back)

    async def _claim_chunk(
        self, rows: list[ClaimRow], jobs: Mapping[uuid.UUID, LoadedJob], started: float, held_back: bool
    ) -> None:
        if not rows:
            return
        adopted: list[ExecKey] = []
        token = self._rng.getrandbits(62)  # the same on every try: finds the rows of a try whose answer was lost
        failed = False
        while True:
            rows = self._still_ours(rows)  # a shard released or lost since they were planned claims nothing
            if not rows:
                return
            if not self._may_send():
                # Nothing is claimed that could not be sent: the claims wait for the lease to prove alive.
                held_back = True
                await self.ownership.wait_valid()
                continue
            if held_back:
                # Claims that waited (an outage, the lease, the writers' room): slots now past their
                # grace follow the misfire policy.
                replanned = self._replan_late(rows, jobs, self.clock.now_ms())
                if replanned is not rows:
                    # one row per slot: what is sent must be what was inserted (a re-plan may repeat a slot)
                    rows = list({r.key(): r for r in replanned}.values())
                if not rows:
                    return
            try:
                if failed:  # what a lost first attempt inserted is ours to send (ON CONFLICT hides it from a retry)
                    node = self.config.node_id
                    adopted = await self.db.call(store.own_unsent_claims, node, rows, token=token)
                result = await self.db.call(store.claim_rows, self.config.node_id, rows, token=token)
                break
            except DatabaseUnavailable as e:
                held_back = failed = True
                await self.health.pause("claim", e)
        self.health.ok("claim")
        self.metrics.claim_batch.record(len(rows))
        self.metrics.claim_latency.record((trio.current_time() - started) * 1000)
        for fence in _stale_fences(rows, result.fenced):
            self.lose_shard(*fence)
        for r in result.applied:
            job = jobs.get(r.job_id)
            if job is None:
                continue
            if r.status is not S.CLAIMED:
                self._counted(job, r.status)
                continue
            self._enqueue(r, job)
        for key in adopted:  # claimed already, by us: sent whatever the re-plan said
            if (job := jobs.get(key.job_id)) is not None:
                self._enqueue(key, job)

    def _enqueue(self, key: ExecKey | ClaimRow, job: LoadedJob) -> None:
        """A slot just claimed, into the wheel for its time (unsent until its first attempt goes out)."""
        state = self._shards.get(job.shard)
        if state is None:
            return  # dropped meanwhile: the row is the next owner's (its takeover)
        if state.phase is Phase.RELEASING:
            # The release began while this claim was in flight (it waits for the claim to commit): the slot goes
            # back with the unsent ones instead of staying `claimed` for a takeover that a graceful stop avoids.
            state.withdrawn.append((key.job_id, key.slot_ms, key.origin))
            return
        slot = key.slot_ms
        job = self._current(job)  # reloaded while the claim ran: the slot is the new object's
        entry = self._insert(job.due_ms(slot, key.origin), Pending(FIRE, job, slot, key.origin))
        state.unsent[(job.id, slot, key.origin)] = entry
        job.unsent += 1

    def _replan_late(
        self, rows: list[ClaimRow], jobs: Mapping[uuid.UUID, LoadedJob], now: int
    ) -> list[ClaimRow]:
        """Rows that waited, re-planned: a job with a scheduled slot now past its misfire grace has its slots from
        the first of them planned again in one go (FIRE_ONCE fires once for the whole gap). ``rows`` itself when
        none is late."""
        replan: dict[uuid.UUID, int] = {}
        for r in rows:
            job = jobs.get(r.job_id)
            if job is None or r.origin is not Origin.SCHEDULED:
                continue
            if not job.missed(r.slot_ms, now):
                continue
            if self.jobs.get(job.id) is job and job.state is JobState.ACTIVE:
                replan[job.id] = min(replan.get(job.id, r.slot_ms), r.slot_ms)
        if not replan:
            return rows
        kept = [r for r in rows if r.origin is not Origin.SCHEDULED or r.job_id not in replan]
        for job_id, first in replan.items():
            kept += self._plan_from(jobs[job_id], first - 1, now)
        return kept

    def _still_ours(self, rows: list[ClaimRow]) -> list[ClaimRow]:
        """The rows whose shard is still held at the row's epoch and not being released."""
        stale = {(r.shard, r.epoch) for r in rows}
        stale = {(shard, epoch) for shard, epoch in stale if self._granted_epoch(shard) != epoch}
        return [r for r in rows if (r.shard, r.epoch) not in stale] if stale else rows

    # ---- firing ------------------------------------------------------------------------------------------

    def _fire(self, p: Pending) -> None:
        # A slot claimed before a reload of its job fires on the reloaded object, which holds its runs and
        # buffered slot now (buffered on the old one, it was never fired).
        job = self._current(p.job)
        key = (p.slot_ms, p.origin)
        state = self._shards.get(job.shard)
        if state is None:
            self.metrics.not_sent.inc()
            return  # the row stays as it is; the next owner continues it
        skey = (job.id, p.slot_ms, p.origin)
        if p.attempt == 0 and state.unsent.pop(skey, None) is not None:
            job.unsent -= 1
        if self._granted_epoch(job.shard) is None:
            self.metrics.not_sent.inc()
            if state.phase is Phase.RELEASING and p.attempt == 0:
                state.withdrawn.append(skey)  # due after the release began: given back with the unsent ones
            return  # else the row stays as it is; the next owner continues it
        if not self._may_send():
            self._hold(p)
            return
        if p.attempt == 0 and p.origin is Origin.SCHEDULED:
            if job.missed(p.slot_ms, self.clock.now_ms()):  # the node is that far behind
                self.overload.late(trio.current_time())
                if not send_late(job.spec.misfire.policy, job.late_run):
                    self._record(job, p, S.SKIPPED_MISFIRE, "missed: the node was behind (overloaded)")
                    self._maybe_complete(job)
                    return
                job.late_run = True
            else:
                job.late_run = False
        if p.attempt > 0:  # a retry, or a run resumed at takeover
            run = job.runs.get(key)
            if run is None or run.cancelled or state.runs.get(skey) is not run:
                return  # replaced or dropped while its entry was already due in this tick: nothing to send
            run.retry_entry = None
            self._attempt(job, p, run)
            return
        if job.runs:
            # A run whose outcome is in but not yet recorded (_outcome_loop waits out bursts) is recorded now,
            # so that concurrency, BUFFER_ONE and REPLACE see the job as it is.
            for ex in [
                r.exchange for r in job.runs.values() if r.exchange is not None and r.exchange.outcome
            ]:
                self._handle_outcome(ex)
        step = fire_step(job.state, p.origin, job.spec.concurrency, len(job.runs), job.buffered is not None)
        if step is not FireStep.SEND:
            if step is FireStep.SKIP_PAUSED:
                self._record(job, p, S.SKIPPED_PAUSED, "the job was paused after its slot was claimed")
                return
            if step is FireStep.SKIP_OVERLAP:
                self._record(job, p, S.SKIPPED_OVERLAP, "the previous run was still in flight")
                return
            if step is FireStep.BUFFER:
                job.buffered = p
                return
            for other_key, other in list(job.runs.items()):  # REPLACE
                self._cancel_run(job, other_key, other)
        new = job.runs.get(key)
        if new is None:
            new = job.runs[key] = state.runs[skey] = Run()
        self.metrics.firings.inc()
        self._attempt(job, p, new)

    def _end_run(self, job: LoadedJob, slot_ms: int, origin: Origin) -> None:
        job.runs.pop((slot_ms, origin), None)
        state = self._shards.get(job.shard)
        if state is not None:
            state.runs.pop((job.id, slot_ms, origin), None)

    def _cancel_run(self, job: LoadedJob, key: tuple[int, Origin], run: Run) -> None:
        run.cancelled = True
        if run.exchange is not None:
            self.dispatcher.cancel(run.exchange)  # its outcome records ``cancelled``
        elif run.retry_entry is not None:
            self.wheel.cancel(run.retry_entry)
            self._end_run(job, *key)
            # the waiting retry's entry carries the attempts made so far
            self._record(job, run.retry_entry.payload, S.CANCELLED, "replaced by a newer slot")

    def _record(self, job: LoadedJob, p: Pending, status: ExecutionStatus, error: str) -> None:
        """A terminal decision taken without sending (skips, cancels of a waiting retry)."""
        state = self._shards.get(job.shard)
        if state is None:
            return
        epoch = state.epoch
        if status.value.startswith("skipped_"):
            self.metrics.skips.inc(kind=status.value.removeprefix("skipped_"))
        self._counted(job, status)
        self._put_result(
            ResultRow(
                job.shard,
                epoch,
                job.id,
                p.slot_ms,
                p.origin,
                status,
                p.attempt,
                finished_ms=self.clock.now_ms(),
                error=error,
            )
        )

    def _counted(self, job: LoadedJob, status: ExecutionStatus) -> None:
        """A slot ended: the node's metric and the tenant's rollup (``GET /v1/stats``)."""
        # the member itself, a str (``.value`` is a Python property: ~0.1 µs a read on the firing path)
        self.metrics.results.inc(status=status)
        self.rollup.result(job.tenant, self.clock.now_ms(), status)

    async def _rollup_loop(self) -> None:
        while True:
            await trio.sleep(self.tuning.rollup_interval_s)
            await self._flush_rollup()

    async def _overload_loop(self) -> None:
        while True:
            await trio.sleep(1.0)
            if not self.overload.changed(trio.current_time()):
                continue
            if self.overload.overloaded:
                log.warning("overloaded: slots come past their misfire grace (more work offered than this node "
                            "does on time); they follow their jobs' misfire policy instead of firing ever later")
            else:
                log.warning("no longer overloaded: %d slots came past their grace meanwhile",
                            self.overload.late_slots)
                self.overload.late_slots = 0

    async def _flush_rollup(self) -> None:
        counts, lags = self.rollup.take()
        try:
            await self.db.call(store.add_rollups, counts, lags)
        except DatabaseUnavailable:
            self.rollup.put_back(counts, lags)  # figures wait for PostgreSQL; the record is the rows
        except Exception:  # statistics must never stop a node: these figures are dropped, and said so
            log.exception("adding %d execution counts to the rollups failed; they are dropped", len(counts))

    def _put_result(self, row: ResultRow) -> None:
        """Queue a result row. Never waits: the claimer waits for the writer's room before taking new work."""
        self.writer.put_nowait(row)

    def _attempt(self, job: LoadedJob, p: Pending, run: Run) -> None:
        """Hand attempt ``p.attempt + 1`` to the dispatcher; ``_attempted`` gets its outcome."""
        state = self._shards.get(job.shard)
        if state is None:
            return
        state.sending()
        run.exchange = self.dispatcher.submit(
            SendRequest(
                template=job.template,
                scheduled_at_ms=p.slot_ms,
                attempt=p.attempt + 1,
                origin=p.origin,
                timeout_s=job.spec.timeout_ms / 1000,
                body_contains=job.spec.success.body_contains,
                may_send=self._may_send,
                on_done=self._attempted,
            ),
            context=(job, p, run, state),
        )

    def _attempted(self, ex: Exchange) -> None:
        """An attempt's outcome, from the dispatcher's reactor: kept for ``_outcome_loop``."""
        self._outcomes.append(ex)
        if len(self._outcomes) == 1:
            self._outcomes_ready.set()

    async def _outcome_loop(self) -> None:
        """Outcomes are handled once the second's queued sends are all written (at most a second later).

        Recording a result (rows, retry decision, metrics) costs about as much CPU as sending it; done between
        the sends it pushed the last sends of a burst later (p99 drift at N=1000: +37 ms over the bare
        dispatcher). A send written, its response can wait a little to be read into history. The collector,
        which the driver turns off for a burst of 64 firings or more (collections of the burst's young
        objects landed between its sends), is turned on again here.
        """
        while True:
            await self._outcomes_ready.wait()
            # The bound matters only when sends queue for long (a slow host at its cap): then outcomes are
            # recorded in batches once a second. A burst of 5,000 takes a few hundred ms: it is never cut.
            # A poll, not a wait on the queue emptying: measured, waking the moment the queue empties (at
            # N=5000 on the whole second) put the node seconds behind in 7 of 17 bench runs, the poll in
            # none of 15 (docs/bench.md, issue 11).
            latest = trio.current_time() + 1.0
            while (self._firing or self.dispatcher.waiting) and trio.current_time() < latest:
                await trio.sleep(0.005)
            self._gc.release()
            batch, self._outcomes = self._outcomes, []
            self._outcomes_ready = trio.Event()
            for i, ex in enumerate(batch):
                self._handle_outcome(ex)
                if i % 500 == 499:
                    await trio.lowlevel.checkpoint()

    def _handle_outcome(self, ex: Exchange) -> None:
        """Record an attempt's outcome: retry it, or finish its run. Once per exchange."""
        if ex.context is None:
            return  # recorded already (by _fire, ahead of the batch)
        job, p, run, state = ex.context
        ex.context = None
        outcome = ex.outcome
        assert outcome is not None
        shard, epoch = job.shard, state.epoch
        run.exchange = None
        state.answered()
        if self._shards.get(shard) is not state:
            return  # the shard was dropped meanwhile: not ours to record
        attempt = p.attempt + 1
        step, status, retry_in_ms = outcome_step(job.spec, attempt, judged(outcome), self._rng.random())
        if step is OutcomeStep.HOLD:
            if p.attempt == 0:
                self._end_run(job, p.slot_ms, p.origin)
            self._hold(p)
            return
        started_ms = round(outcome.started_at * 1000)
        duration_ms = round(outcome.duration_s * 1000)
        finished = started_ms + duration_ms
        if step is OutcomeStep.CANCELLED:
            self._end_run(job, p.slot_ms, p.origin)
            self._finish(job, ResultRow(shard, epoch, job.id, p.slot_ms, p.origin, S.CANCELLED, attempt,
                                        finished_ms=finished, duration_ms=duration_ms,
                                        error="cancelled: replaced by a newer slot",
                                        attempt_started_ms=started_ms,
                                        attempt_finished_ms=finished))  # fmt: skip
            return
        sent_ms = lag = None  # the first send's: a retry's row keeps them
        if attempt == 1:
            sent_ms = started_ms
            sent_at_ms = round(outcome.sent_at * 1000) if outcome.sent_at else started_ms
            lag = sent_at_ms - job.due_ms(p.slot_ms, p.origin)
            if p.origin is not Origin.BACKFILL:  # a past slot sent now: its lag says nothing of the node
                self.metrics.dispatch_lag.record(lag)
                self.rollup.lag(job.tenant, started_ms, lag)
        self.metrics.http_latency.record(outcome.duration_s * 1000)
        excerpt = outcome.excerpt or None
        # Positional: the row's fields in order (keywords cost this path ~0.4 µs a row).
        if step is OutcomeStep.RETRY:
            assert retry_in_ms is not None
            next_at = finished + retry_in_ms
            self.metrics.retries.inc()
            if not run.cancelled:
                run.retry_entry = self._insert(next_at, Pending(FIRE, job, p.slot_ms, p.origin, attempt))
            self._put_result(ResultRow(shard, epoch, job.id, p.slot_ms, p.origin, S.RETRY_WAIT, attempt,
                                       next_at, sent_ms, None, outcome.http_status, duration_ms, lag,
                                       outcome.error, excerpt, started_ms, finished))  # fmt: skip
            return
        assert status is not None
        self._end_run(job, p.slot_ms, p.origin)
        self._finish(job, ResultRow(shard, epoch, job.id, p.slot_ms, p.origin, status, attempt, None, sent_ms,
                                    finished, outcome.http_status, duration_ms, lag, outcome.error, excerpt,
                                    started_ms, finished))  # fmt: skip

    def _finish(self, job: LoadedJob, row: ResultRow) -> None:
        """A run reached its terminal state: record it, then failure counting, alerts, buffered slot, completion."""
        job = self._current(job)
        status = row.status
        self._counted(job, status)
        self._put_result(row)
        job.failures, alert_failed, auto_pause = finish_step(
            status, job.failures, job.spec.pause_after_failures, job.state
        )
        if alert_failed:
            what = row.error or f"HTTP {row.http_status}"
            self._alert(job, row, "execution_failed",
                        f"job '{job.spec.name}' slot {ms_to_datetime(row.slot_ms).isoformat()} ended {status.value} "
                        f"after {row.attempt} attempt(s): {what}")  # fmt: skip
        if auto_pause:
            self._change_state(job, JobState.AUTO_PAUSED, f"{job.failures} consecutive failures")
            self._alert(job, row, "job_auto_paused",
                        f"job '{job.spec.name}' paused after {job.failures} consecutive failures")  # fmt: skip
        if job.buffered is not None and not job.runs:
            buffered, job.buffered = job.buffered, None
            self._fire(Pending(FIRE, job, buffered.slot_ms, buffered.origin))
        self._maybe_complete(job)

    def _current(self, job: LoadedJob) -> LoadedJob:
        """The job as loaded now: a slot claimed or a run begun before a reload goes on on the reloaded object
        (which took over the old one's runs, buffered slot and count of claimed slots)."""
        now = self.jobs.get(job.id)
        return now if now is not None and now.runs is job.runs else job

    def _maybe_complete(self, job: LoadedJob) -> None:
        # job.exhausted first: most jobs never run out of slots, and this runs per outcome
        if job.exhausted and completes(
            job.state, job.exhausted, len(job.runs), job.unsent, job.buffered is not None
        ):
            self._change_state(job, JobState.COMPLETED, "no slot left")

    def _change_state(self, job: LoadedJob, state: JobState, reason: str) -> None:
        """Take the new state now (no further claims); it is stored with the next batch of the states writer."""
        epoch = self._granted_epoch(job.shard)
        if epoch is None:
            return
        job.state = state
        self._cancel_claim(job)
        self.states.put_nowait(StateChange(job.shard, epoch, job.id, job.tenant, state, reason))

    async def _set_state(
        self, shard: int, epoch: int, job_id: uuid.UUID, tenant: str, state: JobState, reason: str,
        expected_version: int | None = None,
    ) -> JobWriteOutcome | None:  # fmt: skip
        """A state the node decided, stored fenced; None if the job was deleted or (with ``expected_version``)
        written since, or if the shard moved on (then dropped here)."""
        try:
            return await self._db("job state", store.set_job_state, Fence(shard, epoch), job_id, state,
                                  tenant=tenant, reason=reason,
                                  expected_version=expected_version)  # fmt: skip
        except Fenced:
            self.lose_shard(shard, epoch)
        except (NotFound, VersionMismatch):
            pass
        return None

    def _alert(self, job: LoadedJob, row: ResultRow, kind: str, message: str) -> None:
        self.metrics.alerts.inc(kind=kind)
        alert = AlertRow(job.shard, row.epoch, job.id, job.tenant, ms_to_datetime(row.slot_ms), row.origin, kind,
                         message,
                         webhook=job.spec.alert_webhook or self.config.alert_webhook,
                         payload={"status": row.status.value, "http_status": row.http_status,
                                  "error": row.error, "attempt": row.attempt})  # fmt: skip
        self.alerts.put_nowait(alert)

    async def _write_results(self, batch: list[ResultRow]) -> set[tuple[int, int]]:
        return _stale_fences(batch, (await self.db.call(store.write_results, batch, report=False)).fenced)

    async def _write_states(self, batch: list[StateChange]) -> set[tuple[int, int]]:
        result = await self.db.call(store.set_job_states, batch)
        for job_id, version in result.applied:
            if (job := self.jobs.get(job_id)) is not None:
                job.version = version
        return _stale_fences(batch, result.fenced)

    async def _write_alerts(self, batch: list[AlertRow]) -> set[tuple[int, int]]:
        return _stale_fences(batch, (await self.db.call(store.insert_alerts, batch)).fenced)

    def _record_write_batch(self, rows: int, seconds: float) -> None:
        self.metrics.write_batch.record(rows)
        self.metrics.write_latency.record(seconds * 1000)

    # ---- job writes (the internal API) -------------------------------------------------------------------

    async def _write_epoch(self, shard: int) -> int:
        """The epoch a write to ``shard`` is fenced with, once a shard just acquired has loaded (at most 5 s);
        ``NotOwnerError`` if the shard is not this node's."""
        state = self._shards.get(shard)
        if state is not None and not state.loaded.is_set() and shard in self.ownership.grants():
            with trio.move_on_after(5):
                await state.loaded.wait()
        epoch = self._granted_epoch(shard)
        if epoch is None:
            raise NotOwnerError(shard, None)
        return epoch

    async def apply_writes(self, items: Sequence[tuple[uuid.UUID, JobWrite]]) -> list[JobWritten | ShardwheelError]:
        """Many writes (the internal batch), each answered on its own: one failing leaves the others applied.

        Plain creates (an upsert of a new id, no version, no Idempotency-Key) go in one statement
        (``store.create_jobs``) and one claim; every other write is ``apply_write``'s, a few at a time, those
        of one job in the order given.
        """
        out: list[JobWritten | ShardwheelError | None] = [None] * len(items)
        creates: list[int] = []
        others: dict[uuid.UUID, list[int]] = {}
        seen: set[uuid.UUID] = set()
        for i, (job_id, w) in enumerate(items):
            plain = w.op is JobWriteOp.UPSERT and w.expected_version is None and w.idempotency_key is None
            if plain and job_id not in seen:
                creates.append(i)
                seen.add(job_id)
            else:
                others.setdefault(job_id, []).append(i)
        limit = trio.CapacityLimiter(8)

        async def in_order(indices: list[int]) -> None:
            async with limit:
                for i in indices:
                    try:
                        out[i] = await self.apply_write(*items[i])
                    except (CallerError, NotOwnerError, InfrastructureError) as e:
                        out[i] = e

        async with trio.open_nursery() as nursery:
            for indices in others.values():
                nursery.start_soon(in_order, indices)
            if creates:
                try:
                    await self._create_many(items, creates, out)
                except InfrastructureError as e:
                    for i in creates:
                        out[i] = out[i] or e
        assert all(r is not None for r in out)
        return out  # type: ignore[return-value]

    async def _create_many(self, items: Sequence[tuple[uuid.UUID, JobWrite]], indices: list[int],
                           out: list[JobWritten | ShardwheelError | None]) -> None:  # fmt: skip
        rows: dict[uuid.UUID, tuple[int, NewJob]] = {}
        now = self.clock.now_ms()
        now_dt = ms_to_datetime(now)
        epochs: dict[int, int | NotOwnerError] = {}  # a batch names each shard many times: asked once
        for i in indices:
            job_id, w = items[i]
            shard = shard_of(job_id, self.config.shard_count)
            try:
                spec = self._checked_spec(w)
            except CallerError as e:
                out[i] = e
                continue
            if (epoch := epochs.get(shard)) is None:
                try:
                    epoch = epochs[shard] = await self._write_epoch(shard)
                except NotOwnerError as e:
                    epoch = epochs[shard] = e
            if isinstance(epoch, NotOwnerError):
                out[i] = epoch
                continue
            first = _first_slot_bound(spec, now, self._first_slots, now_dt)
            rows[job_id] = (i, NewJob(shard, epoch, job_id, w.tenant, w.actor, spec,
                                      now_dt if first == now else ms_to_datetime(first)))  # fmt: skip
        if not rows:
            return
        result = await self.db.call(store.create_jobs, [r for _, r in rows.values()])
        for shard in result.fenced:
            self.lose_shard(shard, next(r.epoch for _, r in rows.values() if r.shard == shard))
        created_at = {uuid.UUID(j.id): j.created_at for j in result.created}
        loaded: dict[uuid.UUID, tuple[LoadedJob, Job]] = {}
        claims: list[ClaimRow] = []
        later: dict[uuid.UUID, int] = {}
        for stored in result.created:
            first = datetime_to_ms(stored.next_fire_at) if stored.next_fire_at is not None else now
            if first > now + self.tuning.horizon_ms:
                later[uuid.UUID(stored.id)] = first  # the refill brings it in when its first slot is near
                continue
            if (made := self._load_job(JobRow(stored, None), now)) is not None:
                loaded[made[0].id] = (made[0], stored)
                claims += made[1]
        if loaded:
            self._freeze_loaded()
        await self._claim_rows(claims, {job_id: job for job_id, (job, _) in loaded.items()})
        first_sends = _first_sends(claims)
        for job_id, (i, row) in rows.items():
            if row.shard in result.fenced:
                out[i] = NotOwnerError(row.shard, None)
            elif (refused := result.refused.get(job_id)) is not None:
                out[i] = refused
            elif (existing := result.existing.get(job_id)) is not None:
                out[i] = existing.written()
            else:
                next_fire = later.get(job_id)
                if job_id in loaded:
                    next_fire = self._next_fire_ms(*loaded[job_id], now, first_sends.get(job_id))
                out[i] = JobWritten(version=1, state=JobState.ACTIVE, created=True, job_id=str(job_id),
                                    next_fire_at=None if next_fire is None else ms_to_datetime(next_fire),
                                    created_at=created_at.get(job_id))  # fmt: skip

    def _checked_spec(self, write: JobWrite) -> JobSpec:
        """An upsert's spec, validated again here (the API did; a node trusts no caller): ``SpecError``."""
        if write.spec is None:
            raise SpecError("spec", "required for upsert")
        try:
            validate_job_spec(write.spec, self.egress)
        except SpecError as e:
            raise e.within("spec") from None
        return write.spec

    async def apply_write(self, job_id: uuid.UUID, write: JobWrite) -> JobWritten:
        """A job write routed here by the control API: fenced in PostgreSQL, then in the wheel, then answered."""
        shard = shard_of(job_id, self.config.shard_count)
        epoch = await self._write_epoch(shard)
        if write.op is JobWriteOp.UPSERT:
            self._checked_spec(write)
        now = self.clock.now_ms()
        if write.op is JobWriteOp.TRIGGER or write.op is JobWriteOp.BACKFILL:
            return await self._fire_now(shard, epoch, job_id, write, now)
        first = _first_slot_bound(write.spec, now, self._first_slots) if write.spec is not None else now
        try:
            outcome = await self.db.call(
                store.write_job, Fence(shard, epoch), job_id, write, next_fire_at=ms_to_datetime(first)
            )
        except Fenced:
            self.lose_shard(shard, epoch)
            raise NotOwnerError(shard, None) from None
        next_fire: int | None = None
        if not outcome.replayed:
            next_fire = await self._apply_written(shard, job_id, write.op, now)
        return JobWritten(
            version=outcome.version,
            state=outcome.state,
            created=outcome.created,
            job_id=str(outcome.job_id),
            next_fire_at=None if next_fire is None else ms_to_datetime(next_fire),
        )

    async def _fire_now(self, shard: int, epoch: int, job_id: uuid.UUID, write: JobWrite, now: int) -> JobWritten:
        """A trigger or a backfill: its slots claimed in the write's own transaction, then sent."""
        rows = await self._get_rows(shard, [job_id])
        if not rows or rows[0].job.tenant != write.tenant:
            raise NotFound(f"job {job_id} not found")
        stored = rows[0].job
        # A job out of memory (next slot past the horizon) stays out: the claimed keys carry it.
        job = None if isinstance(stored, Job) and stored.state is JobState.BROKEN else (
            self.jobs.get(job_id) or self._loadable(stored))  # fmt: skip
        if job is None or not isinstance(stored, Job):
            raise Conflict(f"job {job_id} is broken and cannot fire: write its spec again")
        if write.op is JobWriteOp.TRIGGER:
            # Manual slots strictly increase on a node: two triggers in one millisecond are two slots (the
            # executions key is the slot), not one claim that the second finds taken.
            self._manual_ms = max(now, self._manual_ms + 1)
            slots, origin = [self._manual_ms], Origin.MANUAL
        else:
            if write.backfill is None:
                raise SpecError("backfill", 'required for backfill: {"from": ..., "to": ...}')
            try:
                slots = backfill_slots(stored.spec, stored.created_at, write.backfill, ms_to_datetime(now))
            except SpecError as e:
                raise e.within("backfill") from None
            origin = Origin.BACKFILL
        claims = [ClaimRow(shard, epoch, job_id, slot, origin=origin) for slot in slots]
        try:
            outcome, claimed = await self.db.call(store.write_job_and_claim, Fence(shard, epoch), job_id, write,
                                                  claims=claims, node=self.config.node_id)  # fmt: skip
        except Fenced:
            self.lose_shard(shard, epoch)
            raise NotOwnerError(shard, None) from None
        if outcome.replayed:
            # A retry of a write whose answer was lost after it committed: its claims are in the table, maybe
            # not in the wheel (the first try never got to put them there).
            state = self._shards.get(shard)
            known = set() if state is None else {*state.unsent, *state.runs}
            stored_claims = await self.db.call(store.unsent_fired_claims, shard, epoch, self.config.node_id, job_id)
            claimed = [k for k in stored_claims if (k.job_id, k.slot_ms, k.origin) not in known]
        for key in claimed:
            self._enqueue(key, job)
        return JobWritten(version=outcome.version, state=outcome.state, job_id=str(outcome.job_id),
                          slots=outcome.slots,
                          next_fire_at=ms_to_datetime(slots[0]) if origin is Origin.MANUAL else None)  # fmt: skip

    async def _apply_written(self, shard: int, job_id: uuid.UUID, op: JobWriteOp, now: int) -> int | None:
        """Bring memory in line with a job just written; returns the job's next slot (ms), if any."""
        old = self.jobs.get(job_id)
        if op is JobWriteOp.DELETE or op is JobWriteOp.PAUSE:
            if old is not None:
                old.state = JobState.PAUSED  # its claimed slots still in the wheel end skipped_paused
                self._cancel_claim(old)
                if op is JobWriteOp.DELETE and (state := self._shards.get(shard)) is not None:
                    state.jobs.pop(job_id, None)
                    if not old.runs:
                        self.jobs.pop(job_id, None)
            return None
        (row,) = await self._get_rows(shard, [job_id])
        # upsert or resume: (re)load; slots from the write on, after what was already claimed
        made = self._load_job(row, now)
        if made is None:
            return None
        job, claims = made
        if op is JobWriteOp.RESUME:
            job.failures = 0  # a new failure streak (run_rules)
        await self._claim_rows(claims, {job_id: job})
        assert isinstance(row.job, Job)  # _load_job made it
        return self._next_fire_ms(job, row.job, now, _first_sends(claims).get(job_id))

    @staticmethod
    def _next_fire_ms(job: LoadedJob, stored: Job, now: int, claimed_slot: int | None) -> int | None:
        """A job just (re)loaded: when it next sends (its jitter's offset after the slot): the earliest slot
        its load claimed to send (due within the lookahead, its offset still ahead), else the slot its next
        claim is for, else its schedule's next not yet due."""
        if claimed_slot is not None:
            return job.due_ms(claimed_slot, Origin.SCHEDULED)
        if job.claim_entry is not None:
            return job.due_ms(job.claim_entry.payload.slot_ms, Origin.SCHEDULED)
        if job.state is not JobState.ACTIVE:
            return None
        after = max(now - job.offset_ms - 1, stored.next_fire_at and datetime_to_ms(stored.next_fire_at) - 1 or 0)
        slot = next(compile_schedule(stored.spec, stored.created_at).iter_ms(after), None)
        return None if slot is None else job.due_ms(slot, Origin.SCHEDULED)

    # ---- introspection -----------------------------------------------------------------------------------

    def metrics_text(self) -> str:
        return self.metrics.render()

    def statistics(self) -> EngineStatistics:
        states = self._shards.values()
        return EngineStatistics(
            shards_loaded=sum(st.phase is not Phase.LOADING for st in states),
            jobs_in_memory=len(self.jobs),
            claimed_unsent=sum(len(st.unsent) for st in states),
            held=sum(len(st.held) for st in states),
            in_flight=sum(st.in_flight for st in states),
        )

    def summary(self) -> dict[str, Any]:
        """The figures a node publishes for cluster status."""
        now = self.clock.now_ms()
        nd = self.wheel.next_deadline()
        stats = self.statistics()
        return {
            "shards": stats.shards_loaded,
            "jobs_in_memory": stats.jobs_in_memory,
            "in_flight": stats.in_flight,
            "held": stats.held,
            "dispatch_lag_p99_ms": self.metrics.dispatch_lag.quantile(0.99),
            "lag_ms": max(0, now - nd) if nd is not None else 0,  # how late the oldest due entry is
            "degraded": self.health.problem(),  # None, or why PostgreSQL cannot be reached
            "overloaded": self.overload.overloaded,  # slots came past their misfire grace lately
        }

    def status(self) -> dict[str, Any]:
        grants = self.ownership.grants()
        loaded = set(self._loaded_shards())
        return {
            **self.summary(),
            "node": self.config.node_id,
            "shards": {
                str(s): {"epoch": g.epoch, "loaded": s in loaded} for s, g in sorted(grants.items())
            },
            "wheel": dataclasses.asdict(self.wheel.statistics()),
            "firings": self.metrics.firings.get(),
        }


def _by_next_slot(p: Pending) -> int:
    """A herd's claims in order of their job's next slot after this one (none: last)."""
    nxt = p.job.next_slot(p.slot_ms)
    return _NEVER if nxt is None else nxt


def _first_sends(claims: Iterable[ClaimRow]) -> dict[uuid.UUID, int]:
    """Each job's earliest slot among ``claims`` that is to be sent (not one recorded as skipped)."""
    first: dict[uuid.UUID, int] = {}
    for c in claims:
        if c.status is S.CLAIMED and c.slot_ms < first.get(c.job_id, c.slot_ms + 1):
            first[c.job_id] = c.slot_ms
    return first


def _first_slot_bound(spec: JobSpec, now: int, first_slots: FirstSlots, now_dt: datetime | None = None) -> int:
    """A lower bound of a job's first slot from ``now`` (ms), stored as its ``next_fire_at``: a job whose first
    slot is past the horizon (an hourly cron, an ``at`` next year) is then not loaded again at every refill
    until it is near. An ``every`` schedule without ``start_at`` is anchored at the row's creation time, which
    PostgreSQL sets: ``now`` is its bound."""
    if isinstance(spec.schedule, Every) and spec.start_at is None:
        return now
    first = first_slots.at_or_after(spec, now_dt or ms_to_datetime(now), now)
    return now if first is None else max(now, first)


class _Fenced(Protocol):
    @property
    def shard(self) -> int: ...

    @property
    def epoch(self) -> int: ...


def _stale_fences(rows: Iterable[_Fenced], fenced: frozenset[int]) -> set[tuple[int, int]]:
    """The (shard, epoch) pairs of ``rows`` whose shard a batch found fenced (none, nearly always)."""
    return {(r.shard, r.epoch) for r in rows if r.shard in fenced} if fenced else set()
