"""The cluster row: which cluster this database holds, with how many shards and which hash.

Rules:
- A database holds exactly one cluster (the ``cluster`` table has a single row). Its shard count S and hash
  name are fixed when it is created; moving to another S is a re-shard, never a restart with a new flag.
- ``allowed_target_nets``: the egress policy's allowed networks (``protocol.egress``), read by every node at
  start and every few seconds after; ``set_allowed_target_nets`` replaces them.
- ``ensure_cluster`` creates the row and the S ``shard_epochs`` rows (epoch 0) on the first call, and on every
  later call checks the caller's configuration against what is stored, raising ``ClusterMismatch`` (an
  ``InfrastructureError``: the node cannot start) on any difference. Concurrent first calls are serialised by
  a transaction-scoped advisory lock, so S rows are created exactly once.

Example: a node configured with 128 shards against a cluster created with 256 fails with
``cluster 'prod' was created with 256 shards and blake2b-64/uuid-bytes; this node is configured with 128 shards
and blake2b-64/uuid-bytes``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec

from protocol.errors import InfrastructureError

from .pool import Executor, transaction

__all__ = ["ClusterInfo", "ClusterMismatch", "ensure_cluster", "read_cluster", "set_allowed_target_nets"]

# pg_advisory_xact_lock key: "shardwheel cluster" (an arbitrary constant shared by every version).
CLUSTER_LOCK_KEY = 0x5357_636C_7573_7472


class ClusterMismatch(InfrastructureError):
    """This node's cluster configuration differs from the one stored in PostgreSQL."""


class ClusterInfo(msgspec.Struct, frozen=True):
    name: str
    shard_count: int
    hash_name: str
    created_at: datetime
    created: bool = False  # True when this call created the cluster
    allowed_target_nets: tuple[str, ...] = ()  # CIDRs the egress policy allows (protocol.egress)

    def __str__(self) -> str:
        return f"'{self.name}': {self.shard_count} shards, {self.hash_name}, created {self.created_at:%Y-%m-%d %H:%M:%S}Z"


_COLUMNS = "name, shard_count, hash_name, created_at, allowed_target_nets::text[] AS allowed_target_nets"


def _info(row: Any, created: bool = False) -> ClusterInfo:
    fields = {**dict(row), "allowed_target_nets": tuple(row["allowed_target_nets"])}
    return ClusterInfo(**fields, created=created)


async def read_cluster(db: Executor) -> ClusterInfo | None:
    row = await db.fetchrow(f"SELECT {_COLUMNS} FROM cluster")
    return None if row is None else _info(row)


async def set_allowed_target_nets(db: Executor, nets: Sequence[str]) -> tuple[str, ...]:
    """Replace the allowed target networks (CIDR strings; PostgreSQL's ``cidr`` refuses a malformed one)."""
    row = await db.fetchrow(
        "UPDATE cluster SET allowed_target_nets = $1::text[]::cidr[]"
        " RETURNING allowed_target_nets::text[] AS n",
        list(nets),
    )
    if row is None:
        raise InfrastructureError("the database has no cluster row: run `shardwheel migrate` first")
    return tuple(row["n"])


async def ensure_cluster(db: Executor, *, name: str, shard_count: int, hash_name: str) -> ClusterInfo:
    if not 1 <= shard_count <= 65_536:
        raise ValueError(f"shard_count must be 1-65536, got {shard_count}")
    async with transaction(db) as conn:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", CLUSTER_LOCK_KEY)
        stored = await read_cluster(conn)
        if stored is None:
            row = await conn.fetchrow(
                f"INSERT INTO cluster (name, shard_count, hash_name) VALUES ($1, $2, $3) RETURNING {_COLUMNS}",
                name,
                shard_count,
                hash_name,
            )
            await conn.execute(
                "INSERT INTO shard_epochs (shard) SELECT generate_series(0, $1::int - 1)", shard_count
            )
            return _info(row, created=True)
    if stored.name != name:
        raise ClusterMismatch(
            f"this database holds cluster '{stored.name}'; this node is configured for cluster '{name}'"
        )
    if (stored.shard_count, stored.hash_name) != (shard_count, hash_name):
        raise ClusterMismatch(
            f"cluster '{stored.name}' was created with {stored.shard_count} shards and {stored.hash_name}; "
            f"this node is configured with {shard_count} shards and {hash_name}"
        )
    return stored
