"""``ClusterView``: the whole coordination state of a cluster as read at one etcd revision.

Rules:
- A view is built from ONE range read of the layout's root (``build_view`` is pure: keys, values and the
  read's revision in, a frozen view out), so nodes, owners and admin marks are mutually consistent: a shard
  owner in the view was alive at ``revision``, a drained mark and the node it drains were read together.
- A node is live iff its ``nodes/<id>`` key exists (the key dies with the node's lease). A shard is owned iff
  its key exists, whoever wrote it; a shard key whose value cannot be decoded still counts as owned (by node
  ``""``): the create-if-absent acquire would fail on it anyway, so the planner must not think it free.
- Malformed values never raise: the key is listed in ``malformed`` and, except for shard keys, skipped.
- ``rebalance_revision`` is the mod_revision of ``admin/rebalance`` (0 if never requested): a node recomputes
  its plan when it sees a value larger than the last it acted on.
- A node name stands for one incarnation: ``node_leases`` gives the lease of each live node's registration,
  and ``live_owners()`` keeps only shard keys bound to that lease. A key left by an earlier process of the same
  name (its old lease still running out) or a malformed one is therefore "not held by a live node" there,
  which is what the planner wants as ``current``.

Example::

    >>> layout = KeyLayout("c", prefix="/t")
    >>> view = build_view(layout, [KV(b"/t/c/shards/3", b'{"node_id":"n1","epoch":2}', 77, 10),
    ...                            KV(b"/t/c/admin/pins/5", b"n2", 0, 11)], revision=12)
    >>> view.owners[3].node_id, dict(view.pins), view.owner_of(4)
    ('n1', {5: 'n2'}, None)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

import msgspec

from .keys import KeyKind, KeyLayout
from .records import NodeInfo, decode_node, decode_shard

__all__ = ["KV", "ClusterView", "ShardOwner", "build_view"]

log = logging.getLogger(__name__)


class KV(NamedTuple):
    """The parts of an etcd KeyValue a view needs."""

    key: bytes
    value: bytes
    lease: int  # 0 = not bound to a lease
    mod_revision: int


@dataclass(frozen=True, slots=True)
class ShardOwner:
    node_id: str  # "" if the stored value was malformed
    epoch: int  # as last written by the owner (0 before its PostgreSQL bump); informational, never fences
    lease_id: int
    mod_revision: int


@dataclass(frozen=True, slots=True)
class ClusterView:
    revision: int
    nodes: Mapping[str, NodeInfo] = field(default_factory=dict)
    node_leases: Mapping[str, int] = field(default_factory=dict)  # node id -> lease of its nodes/<id> key
    owners: Mapping[int, ShardOwner] = field(default_factory=dict)
    drained: frozenset[str] = frozenset()
    pins: Mapping[int, str] = field(default_factory=dict)
    paused: bool = False
    rebalance_revision: int = 0
    status: Mapping[str, bytes] = field(default_factory=dict)
    malformed: tuple[str, ...] = ()

    def owner_of(self, shard: int) -> str | None:
        owner = self.owners.get(shard)
        return None if owner is None else owner.node_id

    def shards_of(self, node_id: str) -> frozenset[int]:
        return frozenset(s for s, o in self.owners.items() if o.node_id == node_id)

    def live_owners(self) -> dict[int, str]:
        """shard -> node id, for shard keys bound to the lease their node is registered with now."""
        return {
            s: o.node_id
            for s, o in self.owners.items()
            if o.node_id and self.node_leases.get(o.node_id) == o.lease_id
        }


def build_view(layout: KeyLayout, kvs: Iterable[KV], revision: int) -> ClusterView:
    nodes: dict[str, NodeInfo] = {}
    node_leases: dict[str, int] = {}
    owners: dict[int, ShardOwner] = {}
    drained: set[str] = set()
    pins: dict[int, str] = {}
    status: dict[str, bytes] = {}
    paused = False
    rebalance_revision = 0
    malformed: list[str] = []
    for kv in kvs:
        parsed = layout.parse(kv.key)
        if parsed is None:
            continue
        kind, ident = parsed
        try:
            match kind:
                case KeyKind.NODE:
                    info = decode_node(kv.value)
                    if info.node_id != ident:
                        raise ValueError(f"node_id {info.node_id!r} differs from the key")
                    nodes[ident] = info
                    node_leases[ident] = kv.lease
                case KeyKind.SHARD:
                    # Record the owner entry first so a malformed value still marks the shard as taken.
                    owners[int(ident)] = ShardOwner("", 0, kv.lease, kv.mod_revision)
                    rec = decode_shard(kv.value)
                    owners[int(ident)] = ShardOwner(rec.node_id, rec.epoch, kv.lease, kv.mod_revision)
                case KeyKind.STATUS:
                    status[ident] = kv.value
                case KeyKind.DRAINED:
                    drained.add(ident)
                case KeyKind.PIN:
                    pins[int(ident)] = kv.value.decode()
                case KeyKind.PAUSED:
                    paused = True
                case KeyKind.REBALANCE:
                    rebalance_revision = kv.mod_revision
        except (msgspec.DecodeError, ValueError) as e:  # UnicodeDecodeError is a ValueError
            key = kv.key.decode("utf-8", "replace")
            log.warning("coordination: malformed value at %s: %s", key, e)
            malformed.append(key)
    return ClusterView(
        revision=revision,
        nodes=MappingProxyType(nodes),
        node_leases=MappingProxyType(node_leases),
        owners=MappingProxyType(owners),
        drained=frozenset(drained),
        pins=MappingProxyType(pins),
        paused=paused,
        rebalance_revision=rebalance_revision,
        status=MappingProxyType(status),
        malformed=tuple(malformed),
    )
