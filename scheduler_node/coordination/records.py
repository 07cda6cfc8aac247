"""The JSON values stored at the coordination keys (see ``keys.py`` for where each lives).

Rules:
- Values are msgspec Structs encoded as JSON, readable with ``etcdctl get``.
- Evolution (rolling upgrades mix versions): fields are never removed or retyped, new fields get defaults, and
  unknown fields are ignored when decoding so an older node reads a newer node's record.
- The epoch in a ``ShardRecord`` is informational (who wrote it, for the status page and ``owner_hint``): the
  fencing epoch lives in PostgreSQL (``shard_epochs``) and is bumped *after* the key is won, so a freshly won
  key carries epoch 0 until ``set_shard_epoch`` writes the bumped value.
- Admin marks (drained, paused, rebalance) matter by presence or revision; their ``AdminMark`` value only says
  when and by whom, for operators.

Example::

    >>> encode(ShardRecord("n1", 4))
    b'{"node_id":"n1","epoch":4}'
    >>> decode_shard(b'{"node_id":"n1","epoch":4,"future_field":true}')
    ShardRecord(node_id='n1', epoch=4)
"""

from __future__ import annotations

import msgspec

__all__ = ["AdminMark", "NodeInfo", "ShardRecord", "decode_mark", "decode_node", "decode_shard", "encode"]


class NodeInfo(msgspec.Struct, frozen=True):
    """``nodes/<node_id>``: a live node and where to reach it."""

    node_id: str
    address: str  # the node's internal HTTP base URL, e.g. http://10.0.0.5:8081
    started_at: float  # unix seconds
    shards_hint: int | None = (
        None  # how many shards the node means to hold (its fair share), for status pages
    )
    refusing: str | None = None  # why the node takes no shards (a clock offset over the limit), or None


class ShardRecord(msgspec.Struct, frozen=True):
    """``shards/<shard>``: who owns the shard (bound to that node's lease)."""

    node_id: str
    epoch: int = 0  # 0 until the PostgreSQL bump is written back; never used for fencing


class AdminMark(msgspec.Struct, frozen=True):
    """The value of a presence-style admin key: when and by whom."""

    at: float  # unix seconds
    actor: str = ""


_encoder = msgspec.json.Encoder()
_node_decoder = msgspec.json.Decoder(NodeInfo)
_shard_decoder = msgspec.json.Decoder(ShardRecord)
_mark_decoder = msgspec.json.Decoder(AdminMark)


def encode(value: NodeInfo | ShardRecord | AdminMark) -> bytes:
    return _encoder.encode(value)


def decode_node(raw: bytes) -> NodeInfo:
    """Raises ``msgspec.DecodeError`` (a ``ValueError``) on a malformed value."""
    return _node_decoder.decode(raw)


def decode_shard(raw: bytes) -> ShardRecord:
    return _shard_decoder.decode(raw)


def decode_mark(raw: bytes) -> AdminMark:
    return _mark_decoder.decode(raw)
