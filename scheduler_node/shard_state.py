"""What a node keeps in memory for its shards: one ``ShardState`` per owned shard, its jobs, their slots.

Rules:
- Everything the engine holds for a shard lives in its ``ShardState`` (epoch, jobs, claimed-unsent slots, held
  slots, runs, refill mark, phase): dropping the shard drops that one object, and a task that held on
  to it can tell it was dropped (``engine.shard(n) is not state``).
- ``phase`` goes LOADING → LOADED → RELEASING, forward only; ``loaded`` is set on entering LOADED (or when the
  shard is dropped, so no waiter hangs), ``idle`` whenever no request of the shard is with the dispatcher.
- ``runs`` holds every run of the shard, also those of jobs that left memory meanwhile (next slot beyond the
  horizon, ``jobs`` no longer has them): dropping the shard cancels each of them.
- The per-firing path touches a ``ShardState`` through plain attribute access; nothing here allocates per firing.

Example::

    state = ShardState(shard=7, epoch=3)
    state.jobs[job.id] = job
    state.unsent[(job.id, slot_ms, Origin.SCHEDULED)] = wheel.insert(slot_ms, Pending(FIRE, job, slot_ms, ...))
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import trio

from protocol.executions import Origin
from protocol.jobs import JobSpec, JobState
from protocol.slots import SlotRule

from .dispatch import Exchange, RequestTemplate
from .wheel import Entry

__all__ = ["CLAIM", "FIRE", "LoadedJob", "Pending", "Phase", "Run", "ShardState", "SlotKey"]

CLAIM, FIRE = 0, 1
SlotKey = tuple[uuid.UUID, int, Origin]  # (job, slot ms, origin): an execution within a shard


@dataclass(slots=True, eq=False)
class Pending:
    """A wheel payload: claim the slot (CLAIM) or send attempt ``attempt + 1`` of it (FIRE)."""

    kind: int
    job: LoadedJob
    slot_ms: int
    origin: Origin
    attempt: int = 0


@dataclass(slots=True, eq=False)
class Run:
    """A slot between its first send and its terminal state."""

    exchange: Exchange | None = None  # while an attempt is with the dispatcher
    retry_entry: Entry[Pending] | None = None  # while waiting for the next attempt
    cancelled: bool = False


@dataclass(slots=True, eq=False)
class LoadedJob:
    id: uuid.UUID
    shard: int
    tenant: str
    spec: JobSpec
    state: JobState
    version: int
    rule: SlotRule
    template: RequestTemplate
    claim_entry: Entry[Pending] | None = None
    last_claimed_ms: int | None = None
    runs: dict[tuple[int, Origin], Run] = field(default_factory=dict)
    buffered: Pending | None = None
    failures: int = 0
    unsent: int = 0  # claimed slots waiting in the wheel for their second
    exhausted: bool = False  # the schedule has no slot left
    late_run: bool = False  # its last scheduled slot came past its grace (the node behind): see misfire.send_late
    offset_ms: int = 0  # its jitter's offset (protocol.jitter): a scheduled slot is due this long after its instant

    _slots: Iterator[int] | None = None  # kept while the job is in the horizon: get_next is ~5x cheaper
    _slots_at: int | None = None  # the slot the kept iterator last returned
    _asked: int | None = None  # the ``after_ms`` it was returned for

    def due_ms(self, slot_ms: int, origin: Origin) -> int:
        """When a slot of this job is to be sent: scheduled slots after the jitter's offset, others at once."""
        return slot_ms + self.offset_ms if origin is Origin.SCHEDULED else slot_ms

    def missed(self, slot_ms: int, now_ms: int) -> bool:
        """A scheduled slot of this job is past its misfire grace at ``now_ms`` (counted from its due time)."""
        return slot_ms + self.offset_ms < now_ms - self.spec.misfire.grace_ms

    def slots_after(self, after_ms: int) -> Iterator[int]:
        return self.rule.iter_ms(after_ms)

    def next_slot(self, after_ms: int) -> int | None:
        """The first slot after ``after_ms``, continuing the kept iterator when it stands there; asked again for
        the same ``after_ms`` it answers without iterating (the claimer orders a herd by it, then plans with it)."""
        if self._slots is not None and after_ms == self._asked:
            return self._slots_at
        if self._slots is None or self._slots_at != after_ms:
            self._slots = self.rule.iter_ms(after_ms)
        self._asked = after_ms
        self._slots_at = next(self._slots, None)
        return self._slots_at


class Phase(enum.Enum):
    LOADING = "loading"
    LOADED = "loaded"
    RELEASING = "releasing"


@dataclass(slots=True, eq=False)
class ShardState:
    shard: int
    epoch: int
    phase: Phase = Phase.LOADING
    jobs: dict[uuid.UUID, LoadedJob] = field(default_factory=dict)
    unsent: dict[SlotKey, Entry[Pending]] = field(default_factory=dict)  # claimed, waiting for their second
    held: dict[SlotKey, Pending] = field(default_factory=dict)  # due while sends were blocked
    # claimed slots that fell due while the shard was being released: not sent, so given back with the rest
    withdrawn: list[SlotKey] = field(default_factory=list)
    runs: dict[SlotKey, Run] = field(default_factory=dict)  # first send to terminal state (also in job.runs)
    refilled_until: int | None = None  # jobs due before this (ms) are loaded
    in_flight: int = 0  # requests of this shard with the dispatcher
    claiming: trio.Lock = field(default_factory=trio.Lock)  # held by this shard's claim statement in flight
    loaded: trio.Event = field(default_factory=trio.Event)
    idle: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        self.idle.set()

    def sending(self) -> None:
        """A request of this shard went to the dispatcher."""
        if self.in_flight == 0:
            self.idle = trio.Event()
        self.in_flight += 1

    def answered(self) -> None:
        """A request of this shard came back from the dispatcher."""
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()
