"""Shard ownership as the node sees it: grants with epochs and a validity deadline, and events when they change.

Rules (DESIGN.md §4, §5b):
- ``grants()`` maps each owned shard to ``Grant(epoch, valid_until)``. The epoch comes from PostgreSQL
  (``shard_epochs``), never from etcd, and fences every write. ``valid_until`` is in ``trio.current_time()``
  seconds: past it the node must not send for any shard (the lease may have expired and another node taken over).
  ``wait_valid()`` returns once it lies ahead again (at once when it does): the node waits on it, never polls.
- Changes arrive as events, in order, on ``events`` (a trio receive channel):
  ``Acquired(shard, epoch)`` — load the shard; ``RevokeRequested(shard, deadline)`` — release it gracefully
  and then ``await ownership.released(shard)``; ``Lost(shard)`` — drop it at once, no more writes for it.
- A write refused as fenced means the shard is gone whatever the ownership source believes: the node calls
  ``lost(shard)``, which emits ``Lost`` once.

``StaticOwnership`` owns a fixed set of shards given on the command line (no etcd): it bumps each shard's
epoch at start, never revokes, and its grants never expire. The etcd implementation (leases, rebalancing)
implements the same interface.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

import trio

from protocol.errors import InfrastructureError

__all__ = [
    "Acquired",
    "Grant",
    "Lost",
    "Ownership",
    "OwnershipEvent",
    "RevokeRequested",
    "StaticOwnership",
    "Validity",
    "format_shards",
    "parse_shard_ranges",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Grant:
    epoch: int
    valid_until: float


@dataclass(frozen=True, slots=True)
class Acquired:
    shard: int
    epoch: int


@dataclass(frozen=True, slots=True)
class RevokeRequested:
    shard: int
    deadline: float  # trio time by which the release should be done


@dataclass(frozen=True, slots=True)
class Lost:
    shard: int


OwnershipEvent = Acquired | RevokeRequested | Lost


class Validity:
    """A lease's validity deadline in ``trio.current_time()`` seconds, and a wait for it to lie ahead."""

    def __init__(self, until: float = -math.inf) -> None:
        self.until = until
        self._changed = trio.Event()

    def set(self, until: float) -> None:
        self.until = until
        self._changed.set()
        self._changed = trio.Event()

    async def wait(self) -> None:
        """Return once ``now < until`` (with a checkpoint when it already is)."""
        while trio.current_time() >= self.until:
            await self._changed.wait()
        await trio.lowlevel.checkpoint()


class Ownership(Protocol):
    events: trio.MemoryReceiveChannel[OwnershipEvent]

    def grants(self) -> Mapping[int, Grant]: ...

    def valid_until(self) -> float: ...

    async def wait_valid(self) -> None: ...

    async def released(self, shard: int) -> None: ...

    def lost(self, shard: int) -> None: ...

    def problem(self) -> str | None:
        """Why this node does not hold what it should (a static shard another node took), for readiness."""
        ...

    def stop_taking(self) -> None:
        """The node drains: acquire no more shards (those granted already are released by the drain)."""
        ...

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None: ...


def format_shards(shards: Iterable[int]) -> str:
    """``{0, 1, 2, 5}`` -> ``"0-2,5"`` (what ``parse_shard_ranges`` reads)."""
    parts: list[str] = []
    run: list[int] = []
    for s in sorted(shards):
        if run and s == run[-1] + 1:
            run.append(s)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [s]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


def parse_shard_ranges(text: str, shard_count: int) -> list[int]:
    """``"0-63,128,200-255"`` -> sorted shard numbers; raises ``ValueError`` naming the bad part."""
    shards: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        lo_s, sep, hi_s = part.partition("-")
        try:
            lo, hi = int(lo_s), int(hi_s) if sep else int(lo_s)
        except ValueError:
            raise ValueError(f"'{part}' is not a shard or a range like 0-63") from None
        if not 0 <= lo <= hi < shard_count:
            raise ValueError(f"'{part}' is outside 0-{shard_count - 1} or reversed")
        shards.update(range(lo, hi + 1))
    if not shards:
        raise ValueError("no shards given")
    return sorted(shards)


class StaticOwnership:
    """A fixed set of shards; ``bump_epoch(shard) -> epoch`` allocates the epoch in PostgreSQL.

    Another process may take one of them anyway (a second node started on the same range, or an operator's
    bump): every ``check_interval_s`` the stored epochs (``epochs_of``) are compared with the granted ones, and
    a shard whose epoch moved on is lost at once, not at its next fenced write (an idle shard writes nothing).
    A static node that lost a shard it was told to own is not ready; ``problem`` says which.
    """

    def __init__(
        self,
        shards: Iterable[int],
        bump_epoch: Callable[[int], Awaitable[int]],
        epochs_of: Callable[[list[int]], Awaitable[Mapping[int, int]]] | None = None,
        check_interval_s: float = 5.0,
    ) -> None:
        self._wanted = list(shards)
        self._bump = bump_epoch
        self._epochs_of = epochs_of
        self._check_interval_s = check_interval_s
        self._grants: dict[int, Grant] = {}
        self._taken: set[int] = set()
        self._send, self.events = trio.open_memory_channel[OwnershipEvent](math.inf)

    def grants(self) -> Mapping[int, Grant]:
        return self._grants

    def valid_until(self) -> float:
        return math.inf

    async def wait_valid(self) -> None:
        await trio.lowlevel.checkpoint()

    async def released(self, shard: int) -> None:
        self._grants.pop(shard, None)

    def lost(self, shard: int) -> None:
        if self._grants.pop(shard, None) is not None:
            self._taken.add(shard)
            log.error("shard %d: another node holds a newer epoch; dropped (static ownership)", shard,
                      extra={"shard": shard})
            self._send.send_nowait(Lost(shard))

    def stop_taking(self) -> None:
        pass  # static shards are all acquired at start

    def problem(self) -> str | None:
        if not self._taken:
            return None
        return f"shard(s) {format_shards(self._taken)} of --shards taken by another node"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # All epochs first, then all grants at once: readiness ("every granted shard loaded") must never see a
        # partial set and answer ready while shards are still being acquired.
        epochs = {shard: await self._bump(shard) for shard in self._wanted}
        for shard, epoch in epochs.items():
            self._grants[shard] = Grant(epoch, math.inf)
            self._send.send_nowait(Acquired(shard, epoch))
        task_status.started()
        if self._epochs_of is None:
            await trio.sleep_forever()
        while True:
            await trio.sleep(self._check_interval_s)
            held = dict(self._grants)
            try:
                stored = await self._epochs_of(sorted(held))
            except InfrastructureError:
                continue  # PostgreSQL away: the writes are fenced all the same; look again later
            for shard, grant in held.items():
                if stored.get(shard, grant.epoch) > grant.epoch and self._grants.get(shard) == grant:
                    self.lost(shard)
