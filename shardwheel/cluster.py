"""`shardwheel cluster ... --etcd`: the cluster as etcd and PostgreSQL see it, and the admin writes that steer
it, straight from the stores (for when the API is down; without ``--etcd`` the command goes through the API).

Status is read from both stores, not from one node: members and their published figures, drains, pins and
the paused flag from etcd; epochs from ``shard_epochs`` in PostgreSQL. The operations only write admin keys in
etcd; the nodes watch them and move shards with the graceful release (nothing lost, nothing sent twice):

| command | admin key |
| --- | --- |
| `drain NODE` / `undrain NODE` | `admin/drained/NODE` |
| `move SHARD NODE` / `unpin SHARD` | `admin/pins/SHARD` (a pin survives node restarts) |
| `pause` / `resume` | `admin/paused` (no shard is given away; free shards are still taken) |
| `rebalance` | `admin/rebalance` (every node re-plans now) |
"""

from __future__ import annotations

import asyncio

import asyncpg

from protocol.errors import ShardwheelError
from scheduler_node.coordination import ClusterStatus, EtcdCoordinator, EtcdTls, KeyLayout
from scheduler_node.coordination import cluster_status as build_status

__all__ = ["apply_operation", "cluster_status"]


async def _read_pg(dsn: str) -> tuple[str, int, dict[int, tuple[int, str | None]]]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        row = await conn.fetchrow("SELECT name, shard_count FROM cluster")
        if row is None:
            raise ShardwheelError("the database has no cluster row: run `shardwheel migrate` first")
        epochs = {r["shard"]: (r["epoch"], r["owner"]) for r in await conn.fetch("SELECT * FROM shard_epochs")}
        return row["name"], row["shard_count"], epochs
    finally:
        await conn.close()


def cluster_status(dsn: str, etcd: str, prefix: str, tls: EtcdTls | None = None) -> ClusterStatus:
    name, shard_count, epochs = asyncio.run(_read_pg(dsn))
    with EtcdCoordinator(etcd, KeyLayout(name, prefix), tls=tls) as coord:
        view = coord.snapshot()
    return build_status(name, shard_count, {s: e for s, (e, _) in epochs.items()}, view)


def apply_operation(dsn: str, etcd: str, prefix: str, op: str, *args: str, actor: str = "cli",
                    tls: EtcdTls | None = None) -> str:  # fmt: skip
    name, shard_count, _ = asyncio.run(_read_pg(dsn))
    with EtcdCoordinator(etcd, KeyLayout(name, prefix), tls=tls) as coord:
        if op in ("drain", "undrain"):
            (node,) = args
            if op == "drain" and node not in coord.snapshot().nodes:
                raise ShardwheelError(f"node '{node}' is not a live member of cluster '{name}'")
            coord.drain(node, actor) if op == "drain" else coord.undrain(node)
            return f"{op}ed {node}"
        if op in ("move", "unpin"):
            try:
                shard = int(args[0])
            except ValueError:
                raise ShardwheelError(f"shard: '{args[0]}' is not a number") from None
            if not 0 <= shard < shard_count:
                raise ShardwheelError(f"shard: {shard} is outside 0-{shard_count - 1}")
            if op == "unpin":
                coord.unpin(shard)
                return f"unpinned shard {shard}"
            node = args[1]
            if node not in coord.snapshot().nodes:
                raise ShardwheelError(f"node '{node}' is not a live member of cluster '{name}'")
            coord.pin(shard, node)
            return f"shard {shard} pinned to {node}; it moves with a graceful release"
        if op == "pause":
            coord.pause_rebalancing(actor)
            return "rebalancing paused"
        if op == "resume":
            coord.resume_rebalancing()
            return "rebalancing resumed"
        if op == "rebalance":
            coord.request_rebalance(actor)
            return "rebalance requested"
    raise ShardwheelError(f"unknown operation '{op}'")
