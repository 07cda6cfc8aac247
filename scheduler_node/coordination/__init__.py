"""Coordination over etcd: membership, shard ownership keys, admin overrides and watches (DESIGN.md §4, §5b).

A synchronous core (``EtcdCoordinator``, one pyetcd client, every call bounded by a timeout) with thin trio
(``TrioCoordinator``) and asyncio (``AsyncioCoordinator``) adapters that run its calls on threads and bridge its
watch into their loop as coalesced "re-read the snapshot" notifications. The assignment policy (which node
should hold each shard) is pure and lives in ``protocol/planner.py``.

Rules:
- Key layout under ``<prefix>/<cluster>/`` (``keys.py``): ``nodes/<id>``, ``shards/<s>``, ``status/<id>`` bound
  to the node's lease; ``admin/drained/<id>``, ``admin/pins/<s>``, ``admin/paused``, ``admin/rebalance`` not.
- A shard key is created only if absent and deleted or rewritten only by its owner; epochs come from
  PostgreSQL, never from etcd revisions.
- ``snapshot()`` is one consistent range read; a node re-reads it on every change notification.
- etcd unreachable -> ``InfrastructureError`` (one line); a lease etcd no longer has -> ``keepalive`` returns
  ``None`` / writes raise ``LeaseNotFound``.
- ``valid_until = sent_at + ttl - margin`` from a ``LeaseAck`` (clock read before the keepalive was sent).

Importing the package loads no trio, so the control API (asyncio) can use it; trio code takes the trio adapter
from its own module: ``from scheduler_node.coordination.trio_adapter import TrioCoordinator``
(tests/test_layering.py checks that nothing but ``trio_adapter`` here reaches trio).

Example (in trio code)::

    async with TrioCoordinator.open("http://127.0.0.1:2379", KeyLayout("prod")) as coord:
        ack = await coord.grant_lease(5)
        await coord.register_node(NodeInfo("n1", "http://10.0.0.5:8081", time.time()), ack.lease_id)
        won = await coord.try_acquire_shard(7, "n1", ack.lease_id)
"""

from .asyncio_adapter import AsyncioChangeStream, AsyncioCoordinator
from .changes import ChangeNotice
from .core import (
    Changed,
    EtcdCoordinator,
    EtcdTls,
    GrantedLease,
    LeaseAck,
    LeaseNotFound,
    WatchHandle,
    WatchLost,
    WatchNotice,
    WatchResumed,
    parse_endpoints,
)
from .keys import DEFAULT_PREFIX, KeyKind, KeyLayout, ParsedKey
from .records import AdminMark, NodeInfo, ShardRecord
from .status import ClusterStatus, Member, Moving, ShardStatus, cluster_status
from .view import ClusterView, ShardOwner

__all__ = [
    "DEFAULT_PREFIX",
    "AdminMark",
    "AsyncioChangeStream",
    "AsyncioCoordinator",
    "ChangeNotice",
    "Changed",
    "ClusterStatus",
    "ClusterView",
    "EtcdCoordinator",
    "EtcdTls",
    "GrantedLease",
    "KeyKind",
    "KeyLayout",
    "LeaseAck",
    "LeaseNotFound",
    "Member",
    "Moving",
    "NodeInfo",
    "ParsedKey",
    "ShardOwner",
    "ShardRecord",
    "ShardStatus",
    "WatchHandle",
    "WatchLost",
    "WatchNotice",
    "WatchResumed",
    "cluster_status",
    "parse_endpoints",
]
