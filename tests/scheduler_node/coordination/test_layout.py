"""The pure parts: key layout, records, the view builder, coalescing, and the exported names."""

from __future__ import annotations

import importlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler_node import coordination
from scheduler_node.coordination import (
    Changed,
    KeyKind,
    KeyLayout,
    NodeInfo,
    ShardRecord,
    WatchLost,
    WatchResumed,
)
from scheduler_node.coordination.changes import START, ChangeNotice, coalesce
from scheduler_node.coordination.core import parse_endpoints
from scheduler_node.coordination.keys import check_node_id
from scheduler_node.coordination.records import decode_node, decode_shard, encode
from scheduler_node.coordination.view import KV, build_view

node_ids = st.text(st.characters(codec="utf-8", exclude_characters="/"), min_size=1, max_size=20).filter(
    lambda s: s.isprintable() and s.strip() == s
)


def test_layout_names_every_key() -> None:
    layout = KeyLayout("prod", prefix="/sw/")
    assert layout.root == "/sw/prod/"
    assert layout.node("n1") == "/sw/prod/nodes/n1"
    assert layout.shard(7) == "/sw/prod/shards/7"
    assert layout.status("n1") == "/sw/prod/status/n1"
    assert layout.drained("n1") == "/sw/prod/admin/drained/n1"
    assert layout.pin(7) == "/sw/prod/admin/pins/7"
    assert layout.paused == "/sw/prod/admin/paused"
    assert layout.rebalance == "/sw/prod/admin/rebalance"
    assert KeyLayout("prod").root == "/shardwheel/prod/"


@given(node_ids, st.integers(0, 10**6))
def test_parse_inverts_the_builders(node_id: str, shard: int) -> None:
    layout = KeyLayout("c", prefix="/p")
    for kind, key in [
        (KeyKind.NODE, layout.node(node_id)),
        (KeyKind.STATUS, layout.status(node_id)),
        (KeyKind.DRAINED, layout.drained(node_id)),
    ]:
        assert layout.parse(key) == (kind, node_id)
        assert layout.parse(key.encode()) == (kind, node_id)
    assert layout.parse(layout.shard(shard)) == (KeyKind.SHARD, str(shard))
    assert layout.parse(layout.pin(shard)) == (KeyKind.PIN, str(shard))
    assert layout.parse(layout.paused) == (KeyKind.PAUSED, "")
    assert layout.parse(layout.rebalance) == (KeyKind.REBALANCE, "")


@pytest.mark.parametrize(
    "key",
    [
        "/p/c",
        "/p/c/",
        "/p/other/nodes/n1",
        "/p/c/nodes/",
        "/p/c/nodes",
        "/p/c/shards/x",
        "/p/c/shards/-1",
        "/p/c/admin/pins/abc",
        "/p/c/future/thing",
        "/p/c/nodes/a/b",
        "/p/c/admin/paused/x",
    ],
)
def test_parse_ignores_unknown_keys(key: str) -> None:
    assert KeyLayout("c", prefix="/p").parse(key) is None


@pytest.mark.parametrize("bad", ["", "a/b", " n1", "n1\n", "tab\there"])
def test_node_ids_are_one_segment(bad: str) -> None:
    with pytest.raises(ValueError, match="node id"):
        check_node_id(bad)
    with pytest.raises(ValueError):
        KeyLayout("c").node(bad)


@pytest.mark.parametrize("bad", [-1, True, "3"])
def test_shards_are_non_negative_ints(bad: object) -> None:
    with pytest.raises(ValueError, match="shard"):
        KeyLayout("c").shard(bad)  # type: ignore[arg-type]


def test_endpoints_parse() -> None:
    assert parse_endpoints("http://127.0.0.1:2379") == [("127.0.0.1", 2379)]
    assert parse_endpoints("h1:1, http://h2:2,") == [("h1", 1), ("h2", 2)]
    assert parse_endpoints(["h3"]) == [("h3", 2379)]
    for bad in ("", "https://h:1", "http://:5"):
        with pytest.raises(ValueError):
            parse_endpoints(bad)


def test_records_ignore_unknown_fields_and_keep_defaults() -> None:
    assert decode_shard(b'{"node_id":"n1"}') == ShardRecord("n1", 0)
    info = NodeInfo("n1", "http://h:1", 1.5, shards_hint=64)
    assert decode_node(encode(info)[:-1] + b',"later":[1]}') == info


def test_view_from_one_read() -> None:
    layout = KeyLayout("c", prefix="/p")
    kvs = [
        KV(layout.node("n1").encode(), encode(NodeInfo("n1", "http://a", 1.0)), 10, 3),
        KV(layout.node("n2").encode(), encode(NodeInfo("n2", "http://b", 2.0)), 11, 4),
        KV(layout.shard(0).encode(), encode(ShardRecord("n1", 5)), 10, 5),
        KV(layout.shard(1).encode(), encode(ShardRecord("n2", 0)), 11, 6),
        KV(layout.shard(2).encode(), b"garbage", 12, 7),  # taken by someone, value unreadable
        KV(layout.node("n3").encode(), encode(NodeInfo("nX", "http://c", 3.0)), 13, 8),  # id mismatch
        KV(layout.drained("n2").encode(), b"{}", 0, 9),
        KV(layout.pin(1).encode(), b"n1", 0, 10),
        KV(layout.paused.encode(), b"", 0, 11),
        KV(layout.rebalance.encode(), b"{}", 0, 12),
        KV(layout.status("n1").encode(), b'{"firings_per_s":9}', 10, 13),
        KV(b"/p/c/from/the/future", b"?", 0, 14),
    ]
    view = build_view(layout, kvs, revision=20)
    assert view.revision == 20
    assert set(view.nodes) == {"n1", "n2"}
    assert view.owners[0].node_id == "n1" and view.owners[0].epoch == 5 and view.owners[0].lease_id == 10
    assert view.owner_of(1) == "n2" and view.owner_of(2) == "" and view.owner_of(3) is None
    assert view.shards_of("n1") == {0}
    assert view.drained == {"n2"}
    assert dict(view.pins) == {1: "n1"}
    assert view.paused and view.rebalance_revision == 12
    assert view.status == {"n1": b'{"firings_per_s":9}'}
    assert view.malformed == ("/p/c/shards/2", "/p/c/nodes/n3")
    assert dict(view.node_leases) == {"n1": 10, "n2": 11}
    assert view.live_owners() == {0: "n1", 1: "n2"}


def test_live_owners_ignore_an_earlier_incarnation() -> None:
    """n1 restarted with lease 20; the shard key its old process (lease 10) left is not the new n1's."""
    layout = KeyLayout("c", prefix="/p")
    view = build_view(
        layout,
        [
            KV(layout.node("n1").encode(), encode(NodeInfo("n1", "http://a", 9.0)), 20, 30),
            KV(layout.shard(0).encode(), encode(ShardRecord("n1", 3)), 10, 5),
            KV(layout.shard(1).encode(), encode(ShardRecord("n1", 4)), 20, 31),
            KV(layout.shard(2).encode(), encode(ShardRecord("gone", 1)), 11, 6),
        ],
        revision=32,
    )
    assert view.owner_of(0) == "n1" and view.live_owners() == {1: "n1"}


def test_coalescing_folds_notices() -> None:
    assert coalesce(None, WatchLost("x")) is None
    assert coalesce(None, WatchResumed(gapless=True)) is None  # the replayed events will follow
    assert coalesce(None, START) == ChangeNotice(0, True, 1)
    p = coalesce(None, Changed(7, frozenset({KeyKind.SHARD}), ()))
    assert p == ChangeNotice(7, False, 1)
    p = coalesce(coalesce(p, Changed(5, frozenset(), ())), WatchLost("x"))
    assert p == ChangeNotice(7, False, 2)
    assert coalesce(p, WatchResumed(gapless=False)) == ChangeNotice(7, True, 3)


def test_exported_names() -> None:
    for name in coordination.__all__:
        assert getattr(coordination, name) is not None
    for module in ("asyncio_adapter", "changes", "core", "keys", "records", "trio_adapter", "view"):
        mod = importlib.import_module(f"scheduler_node.coordination.{module}")
        for name in mod.__all__:
            assert hasattr(mod, name), f"{module}.{name}"
    assert coordination.__all__ == sorted(coordination.__all__, key=lambda n: (not n.isupper(), n))
