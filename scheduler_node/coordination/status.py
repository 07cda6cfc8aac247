"""The cluster's status as operators read it (``shardwheel cluster status``, ``GET /v1/cluster``): etcd's view
(members, their published figures, drains, pins, the paused flag) beside PostgreSQL's epochs. Pure: the
callers read both stores.

Moving shards: a shard whose owner is drained, or pinned to another node, is on its way (a graceful release,
then the next owner's takeover); ``unowned`` ones have no live owner right now.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import msgspec

from .view import ClusterView

__all__ = ["ClusterStatus", "Member", "Moving", "ShardStatus", "cluster_status"]


class Member(msgspec.Struct, frozen=True):
    node: str
    address: str
    shards: int
    drained: bool
    refusing: str | None = None  # why it takes no shards (a clock offset over the limit)
    firings_per_s: float | None = None
    dispatch_lag_p99_ms: float | None = None
    lag_ms: float | None = None  # how late its oldest due firing is
    clock_offset_ms: float | None = None
    degraded: str | None = None  # why PostgreSQL cannot be reached, while it cannot
    overloaded: bool = False  # slots come past their misfire grace: more work than it does on time


class ShardStatus(msgspec.Struct, frozen=True):
    owner: str | None
    epoch: int


class Moving(msgspec.Struct, frozen=True):
    shard: int
    owner: str
    to: str | None  # the pinned node, or None: wherever the plan puts it (its owner is drained)


class ClusterStatus(msgspec.Struct, frozen=True):
    cluster: str
    shard_count: int
    rebalancing_paused: bool
    members: list[Member]
    unowned_shards: list[int]
    moving: list[Moving]
    pins: dict[str, str]
    drained: list[str]
    shards: dict[str, ShardStatus]


def _figure(figures: Mapping[str, Any], name: str) -> Any:
    value = figures.get(name)
    return value if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None


def cluster_status(name: str, shard_count: int, epochs: Mapping[int, int], view: ClusterView) -> ClusterStatus:
    owners = view.live_owners()
    per_node = Counter(owners.values())
    members = []
    for node_id, info in sorted(view.nodes.items()):
        try:
            figures = msgspec.json.decode(view.status[node_id]) if node_id in view.status else {}
        except msgspec.DecodeError:
            figures = {}
        if not isinstance(figures, dict):
            figures = {}
        members.append(Member(
            node_id, info.address, per_node.get(node_id, 0), node_id in view.drained, info.refusing,
            _figure(figures, "firings_per_s"), _figure(figures, "dispatch_lag_p99_ms"), _figure(figures, "lag_ms"),
            _figure(figures, "clock_offset_ms"), _figure(figures, "degraded"), figures.get("overloaded") is True,
        ))  # fmt: skip
    moving = []
    for shard, owner in sorted(owners.items()):
        pinned = view.pins.get(shard)
        if pinned is not None and pinned != owner:
            moving.append(Moving(shard, owner, pinned))
        elif owner in view.drained:
            moving.append(Moving(shard, owner, None))
    return ClusterStatus(
        cluster=name, shard_count=shard_count, rebalancing_paused=view.paused, members=members,
        unowned_shards=sorted(set(range(shard_count)) - set(owners)), moving=moving,
        pins={str(s): n for s, n in sorted(view.pins.items())}, drained=sorted(view.drained),
        shards={str(s): ShardStatus(owners.get(s), epochs.get(s, 0)) for s in range(shard_count)},
    )  # fmt: skip
