"""The etcd key layout of one Shardwheel cluster: every key a node or the admin CLI reads or writes.

Rules:
- Everything lives under one root, ``<prefix>/<cluster>/`` (default prefix ``/shardwheel``), so one range read
  of the root is a consistent picture of the cluster and one prefix watch sees every change.
- Keys bound to a node's lease vanish when the node dies: ``nodes/<node_id>``, ``shards/<shard>``,
  ``status/<node_id>``. Admin keys are not bound to any lease and outlive every node: ``admin/drained/<node_id>``,
  ``admin/pins/<shard>``, ``admin/paused``, ``admin/rebalance``.
- A node id is non-empty printable text without ``/`` (it is one path segment); a shard is a non-negative int
  written in decimal without padding.
- ``parse`` is the inverse of the builders; keys it does not know (a newer version's) parse to ``None`` and are
  ignored, so rolling upgrades may add keys.

Example::

    >>> layout = KeyLayout("prod")
    >>> layout.shard(7)
    '/shardwheel/prod/shards/7'
    >>> layout.parse("/shardwheel/prod/admin/drained/n1")
    ParsedKey(kind=<KeyKind.DRAINED: 'admin/drained'>, ident='n1')
    >>> layout.parse("/shardwheel/prod/admin/paused")
    ParsedKey(kind=<KeyKind.PAUSED: 'admin/paused'>, ident='')
"""

from __future__ import annotations

import enum
from typing import NamedTuple

__all__ = ["DEFAULT_PREFIX", "KeyKind", "KeyLayout", "ParsedKey", "check_node_id"]

DEFAULT_PREFIX = "/shardwheel"


class KeyKind(enum.StrEnum):
    """What a key under the root is; the value is its path below the root (without the identifier)."""

    NODE = "nodes"  # JSON NodeInfo, bound to the node's lease
    SHARD = "shards"  # JSON ShardRecord {node_id, epoch}, bound to the owner's lease
    STATUS = "status"  # opaque status blob published by the node, bound to its lease
    DRAINED = "admin/drained"  # presence = the node is drained
    PIN = "admin/pins"  # value = the node id the shard is pinned to
    PAUSED = "admin/paused"  # presence = rebalancing paused
    REBALANCE = "admin/rebalance"  # rewritten on every rebalance request; its mod_revision is the request


# Data before branches: which kinds name a family of keys (``<kind>/<ident>``) and which are one key each.
_FAMILIES: dict[str, KeyKind] = {
    k.value: k for k in (KeyKind.NODE, KeyKind.SHARD, KeyKind.STATUS, KeyKind.DRAINED, KeyKind.PIN)
}
_SINGLETONS: dict[str, KeyKind] = {k.value: k for k in (KeyKind.PAUSED, KeyKind.REBALANCE)}
# Kinds whose identifier is a shard number rather than a node id.
_SHARD_KINDS = frozenset({KeyKind.SHARD, KeyKind.PIN})


class ParsedKey(NamedTuple):
    kind: KeyKind
    ident: str  # node id, or shard number as text; "" for singletons


def check_node_id(node_id: str) -> str:
    """``node_id`` if it can be one key segment; ``ValueError`` naming the problem otherwise."""
    if not node_id or "/" in node_id or not node_id.isprintable() or node_id.strip() != node_id:
        raise ValueError(f"node id {node_id!r} must be non-empty printable text without '/' or edge spaces")
    return node_id


def _check_shard(shard: int) -> int:
    if isinstance(shard, bool) or not isinstance(shard, int) or shard < 0:
        raise ValueError(f"shard {shard!r} must be a non-negative int")
    return shard


class KeyLayout:
    """Key names for one cluster under ``prefix`` (tests pass a fresh prefix each)."""

    __slots__ = ("cluster", "prefix", "root")

    def __init__(self, cluster: str, prefix: str = DEFAULT_PREFIX) -> None:
        check_node_id(cluster)  # the same rule: one path segment
        self.cluster = cluster
        self.prefix = prefix.rstrip("/")
        self.root = f"{self.prefix}/{cluster}/"

    def __repr__(self) -> str:
        return f"KeyLayout(root={self.root!r})"

    def node(self, node_id: str) -> str:
        return f"{self.root}{KeyKind.NODE}/{check_node_id(node_id)}"

    def shard(self, shard: int) -> str:
        return f"{self.root}{KeyKind.SHARD}/{_check_shard(shard)}"

    def status(self, node_id: str) -> str:
        return f"{self.root}{KeyKind.STATUS}/{check_node_id(node_id)}"

    def drained(self, node_id: str) -> str:
        return f"{self.root}{KeyKind.DRAINED}/{check_node_id(node_id)}"

    def pin(self, shard: int) -> str:
        return f"{self.root}{KeyKind.PIN}/{_check_shard(shard)}"

    @property
    def paused(self) -> str:
        return f"{self.root}{KeyKind.PAUSED}"

    @property
    def rebalance(self) -> str:
        return f"{self.root}{KeyKind.REBALANCE}"

    def parse(self, key: str | bytes) -> ParsedKey | None:
        """The kind and identifier of a key under the root; ``None`` for anything else."""
        text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        if not text.startswith(self.root):
            return None
        rel = text[len(self.root) :]
        if (kind := _SINGLETONS.get(rel)) is not None:
            return ParsedKey(kind, "")
        family, sep, ident = rel.rpartition("/")
        kind = _FAMILIES.get(family)
        if kind is None or not sep or not ident:
            return None
        if kind in _SHARD_KINDS and not (ident.isascii() and ident.isdigit()):
            return None
        return ParsedKey(kind, ident)
