"""Shard epochs and fencing: how a node that lost a shard is kept from writing to it.

The fencing rule: **every write for shard s locks its ``shard_epochs`` row ``FOR SHARE`` with
``epoch = <the writer's epoch>`` in the same statement or transaction as the write, and writes nothing if that
row is not found.** A new owner takes over with ``UPDATE shard_epochs SET epoch = epoch + 1`` (``bump_epoch``).

Why that suffices (READ COMMITTED, the default):
- ``FOR SHARE`` conflicts with the row lock an ``UPDATE`` takes, and share locks never conflict with each other,
  so writers of one shard run concurrently while a takeover excludes them all.
- Writer first: the writer holds the share lock until it commits, so the takeover's UPDATE waits; the
  writer's rows commit *before* the bump. They carry the old epoch and are handled by the takeover like any
  row the old owner wrote before it died.
- Takeover first: the writer's ``FOR SHARE`` waits for the UPDATE's transaction. If it commits, PostgreSQL
  re-evaluates the writer's WHERE clause against the new row version (EvalPlanQual); ``epoch = old`` is now
  false, the row drops out, and the statement writes nothing for that shard: it is reported *fenced*.
  If the bump statement committed before the writer's statement even started, its snapshot sees the new
  epoch and the result is the same.
- Hence the invariant the race test checks: once a bump's UPDATE has returned, no write carrying an older
  epoch can commit any more.
- Not ``FOR KEY SHARE``: it does not conflict with an UPDATE that leaves key columns alone (epoch is not a
  key), so the takeover would not wait and a stale write could commit after it. Not a separate "check, then
  write" without a lock either: the bump can commit in between. The race tests run both broken variants to
  show they are caught.
- Epochs come from PostgreSQL, not etcd revisions (which restart when etcd is rebuilt), and a trigger makes
  them strictly increasing, so a token can never be reissued.

Batches spanning several shards pass the distinct (shard, epoch) pairs as parallel arrays (``fence_arrays``),
joined to ``shard_epochs`` in a CTE (``FENCE_CTE``) whose rows the write joins to, so a batch writes the
shards whose epoch still holds and reports the others in ``BatchResult.fenced``, separately from rows skipped
by ``ON CONFLICT`` or a stale row (``conflicts``). Locks are taken in shard order, so two batches over the
same shards never deadlock; a bump touches one shard per transaction.

Example::

    e = await bump_epoch(pool, 7, "node-a")                  # 1: node-a owns shard 7
    await bump_epoch(pool, 7, "node-b")                      # 2: node-b took over
    r = await claim_slots(pool, "node-a", [ClaimRow(7, e, job, slot_ms)])
    assert r.fenced == {7} and r.applied == []               # node-a's write is refused
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Generic, NamedTuple, TypeVar

import msgspec

from protocol.errors import Fenced, NotFound

from .pool import Connection, Executor

__all__ = [
    "FENCED_SHARDS_SQL",
    "FENCE_CTE",
    "BatchResult",
    "Fence",
    "ShardEpoch",
    "bump_epoch",
    "current_epoch",
    "fence_arrays",
    "lock_fence",
    "read_epochs",
]

K = TypeVar("K")


class Fence(NamedTuple):
    """A writer's claim to a shard: the epoch it was granted."""

    shard: int
    epoch: int


class ShardEpoch(msgspec.Struct, frozen=True):
    shard: int
    epoch: int
    owner: str | None
    updated_at: datetime


class BatchResult(msgspec.Struct, Generic[K], frozen=True):
    """What a fenced batch did.

    ``applied``: rows written. ``conflicts``: rows of unfenced shards that were not written because they already
    existed (``ON CONFLICT``) or their stored row refused the change (other epoch, already terminal, wrong
    version). ``fenced``: shards whose epoch no longer matches: none of their rows were written, and the
    caller must treat those shards as lost.
    """

    applied: list[K]
    conflicts: list[K]
    fenced: frozenset[int]


# The fence of a batch statement: parameters $1 (int[] shards) and $2 (bigint[] epochs), one pair per shard.
# The write joins to `fence`; shards missing from it are fenced. ORDER BY: lock in shard order (no deadlocks).
FENCE_CTE = """fence AS (
    SELECT se.shard, se.epoch
    FROM shard_epochs se
    JOIN unnest($1::int[], $2::bigint[]) AS want(shard, epoch) ON se.shard = want.shard AND se.epoch = want.epoch
    ORDER BY se.shard
    FOR SHARE OF se
)"""

# The shards of $1 that the fence refused (select after FENCE_CTE).
FENCED_SHARDS_SQL = "SELECT s FROM unnest($1::int[]) AS s WHERE s NOT IN (SELECT shard FROM fence)"


def fence_arrays(pairs: Iterable[tuple[int, int]]) -> tuple[list[int], list[int]]:
    """The distinct (shard, epoch) pairs of a batch as parallel arrays, sorted by shard.

    Raises ``ValueError`` if one shard comes with two epochs: a batch is written by one owner.
    """
    epochs: dict[int, int] = {}
    for shard, epoch in pairs:
        seen = epochs.setdefault(shard, epoch)
        if seen != epoch:
            raise ValueError(f"batch carries two epochs ({seen}, {epoch}) for shard {shard}")
    shards = sorted(epochs)
    return shards, [epochs[s] for s in shards]


async def lock_fence(conn: Connection, fence: Fence) -> None:
    """Inside a transaction: hold shard ``fence.shard``'s epoch row FOR SHARE until commit, or raise ``Fenced``."""
    if not conn.is_in_transaction():
        raise RuntimeError("lock_fence needs an open transaction: the lock must last until the writes commit")
    ok = await conn.fetchval(
        "SELECT true FROM shard_epochs WHERE shard = $1 AND epoch = $2 FOR SHARE", fence.shard, fence.epoch
    )
    if not ok:
        raise Fenced([fence.shard])


async def bump_epoch(db: Executor, shard: int, node: str) -> int:
    """Take shard ``shard`` for ``node``: its new epoch. Waits for in-flight fenced writes of the old epoch."""
    epoch = await db.fetchval(
        "UPDATE shard_epochs SET epoch = epoch + 1, owner = $2, updated_at = now() WHERE shard = $1 RETURNING epoch",
        shard,
        node,
    )
    if epoch is None:
        raise NotFound(f"shard {shard} does not exist in this cluster")
    return int(epoch)


async def current_epoch(db: Executor, shard: int) -> int:
    epoch = await db.fetchval("SELECT epoch FROM shard_epochs WHERE shard = $1", shard)
    if epoch is None:
        raise NotFound(f"shard {shard} does not exist in this cluster")
    return int(epoch)


async def read_epochs(db: Executor, shards: Iterable[int] | None = None) -> dict[int, ShardEpoch]:
    """Epochs and owners of ``shards`` (all shards if None)."""
    if shards is None:
        rows = await db.fetch("SELECT shard, epoch, owner, updated_at FROM shard_epochs ORDER BY shard")
    else:
        rows = await db.fetch(
            "SELECT shard, epoch, owner, updated_at FROM shard_epochs WHERE shard = ANY($1::int[]) ORDER BY shard",
            list(shards),
        )
    return {r["shard"]: ShardEpoch(**dict(r)) for r in rows}
