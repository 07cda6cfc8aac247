"""The sync core against a real etcd: leases, the create-if-absent race, fenced release, snapshots, watches,
outages and recovery. TTL 2 s (etcd's minimum); every wait is bounded."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyetcd
import pytest

from protocol.errors import InfrastructureError
from scheduler_node.coordination import (
    Changed,
    EtcdCoordinator,
    KeyKind,
    KeyLayout,
    LeaseNotFound,
    NodeInfo,
    WatchLost,
    WatchNotice,
    WatchResumed,
)
from shardwheel.embedded import EmbeddedEtcd, free_port

from .conftest import TTL_S


def node(node_id: str) -> NodeInfo:
    return NodeInfo(node_id, f"http://127.0.0.1:1/{node_id}", time.time())


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> float:
    """Poll until ``predicate()``; the monotonic time it first held. Fails the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(step)
    return time.monotonic()


def next_notice(q: queue.Queue[WatchNotice], kind: type, timeout: float = 5.0) -> WatchNotice:
    deadline = time.monotonic() + timeout
    while True:
        notice = q.get(timeout=max(0.0, deadline - time.monotonic()))
        if isinstance(notice, kind):
            return notice


def wait_changed(q: queue.Queue[WatchNotice], revision: int, timeout: float = 5.0) -> Changed:
    """The first ``Changed`` at or after ``revision``."""
    deadline = time.monotonic() + timeout
    while True:
        notice = next_notice(q, Changed, timeout=max(0.0, deadline - time.monotonic()))
        if isinstance(notice, Changed) and notice.revision >= revision:
            return notice


def test_lease_grant_keepalive_ttl_and_revoke(coord: EtcdCoordinator) -> None:
    lease = coord.grant_lease(TTL_S)
    assert lease.ttl >= TTL_S
    assert coord.keepalive(lease.lease_id) == lease.ttl  # a keepalive restores the full granted TTL
    remaining = coord.lease_ttl(lease.lease_id)
    assert remaining is not None and 0 <= remaining <= lease.ttl  # whole seconds, rounded down
    assert (
        coord.grant_lease(1).ttl >= 1
    )  # etcd may round a tiny TTL up (to 2 s by default): use the granted one
    assert coord.revoke(lease.lease_id) is True
    assert coord.revoke(lease.lease_id) is False
    assert coord.keepalive(lease.lease_id) is None
    assert coord.lease_ttl(lease.lease_id) is None


def test_expiry_bounds_valid_until(coord: EtcdCoordinator) -> None:
    """The measurement behind valid_until: a lease renewed by a keepalive sent at t0 lives at least until
    t0 + ttl (so t0 + ttl - margin is safe), and its keys vanish soon after (here within 1 s)."""
    lease = coord.grant_lease(TTL_S)
    coord.register_node(node("n1"), lease.lease_id)
    assert coord.try_acquire_shard(3, "n1", lease.lease_id)
    t0 = time.monotonic()  # read BEFORE sending: the keepalive reaches etcd after this
    ttl = coord.keepalive(lease.lease_id)
    rtt = time.monotonic() - t0
    assert ttl is not None
    gone_at = wait_for(lambda: "n1" not in coord.snapshot().nodes, timeout=ttl + 2.0, step=0.02)
    assert t0 + ttl <= gone_at <= t0 + ttl + 1.0, (gone_at - t0, ttl, rtt)
    view = coord.snapshot()
    assert 3 not in view.owners
    # Gone for good: renewals say so, writes bound to it are refused distinguishably.
    assert coord.lease_ttl(lease.lease_id) is None
    assert coord.keepalive(lease.lease_id) is None
    with pytest.raises(LeaseNotFound):
        coord.try_acquire_shard(4, "n1", lease.lease_id)
    with pytest.raises(LeaseNotFound):
        coord.register_node(node("n1"), lease.lease_id)
    assert coord.revoke(lease.lease_id) is False


def test_two_nodes_race_and_exactly_one_wins(coord: EtcdCoordinator, other: EtcdCoordinator) -> None:
    la, lb = coord.grant_lease(10).lease_id, other.grant_lease(10).lease_id
    shards = list(range(24))
    barriers = {s: threading.Barrier(2) for s in shards}

    def attempt(c: EtcdCoordinator, node_id: str, lease_id: int, shard: int) -> bool:
        barriers[shard].wait(5)
        return c.try_acquire_shard(shard, node_id, lease_id)

    # One pool per node, both taking the shards in the same order, so every barrier gets its pair.
    with ThreadPoolExecutor(4) as pool_a, ThreadPoolExecutor(4) as pool_b:
        a = {s: pool_a.submit(attempt, coord, "a", la, s) for s in shards}
        b = {s: pool_b.submit(attempt, other, "b", lb, s) for s in shards}
        wins = {s: (a[s].result(10), b[s].result(10)) for s in shards}
    assert all(x != y for x, y in wins.values()), wins
    view = coord.snapshot()
    for s, (won_a, _) in wins.items():
        owner, lease_id = ("a", la) if won_a else ("b", lb)
        assert view.owners[s].node_id == owner and view.owners[s].lease_id == lease_id
        # Retrying is idempotent for the winner (a lost answer), and still a loss for the loser.
        assert coord.try_acquire_shard(s, "a", la) is won_a
        assert other.try_acquire_shard(s, "b", lb) is (not won_a)
    coord.revoke(la)
    other.revoke(lb)


def test_release_and_epoch_only_touch_our_own_key(coord: EtcdCoordinator, other: EtcdCoordinator) -> None:
    la, lb = coord.grant_lease(10).lease_id, other.grant_lease(10).lease_id
    assert coord.try_acquire_shard(5, "a", la)
    assert coord.snapshot().owners[5].epoch == 0  # 0 until the PostgreSQL bump is copied in

    assert other.release_shard(5, "b") is False
    assert other.set_shard_epoch(5, "b", 99, lb) is False
    assert coord.set_shard_epoch(5, "a", 99, lb) is False  # our node id but not our lease: not ours
    owner = coord.snapshot().owners[5]
    assert (owner.node_id, owner.epoch, owner.lease_id) == ("a", 0, la)

    assert coord.set_shard_epoch(5, "a", 7, la) is True
    owner = coord.snapshot().owners[5]
    assert (owner.node_id, owner.epoch, owner.lease_id) == ("a", 7, la)  # still bound to the lease

    assert coord.release_shard(5, "a") is True
    assert 5 not in coord.snapshot().owners
    assert coord.release_shard(5, "a") is False
    assert coord.set_shard_epoch(5, "a", 8, la) is False  # never recreates a released key
    assert 5 not in coord.snapshot().owners
    # Someone else's key again: our release leaves it alone.
    assert other.try_acquire_shard(5, "b", lb)
    assert coord.release_shard(5, "a") is False
    assert coord.snapshot().owner_of(5) == "b"
    coord.revoke(la)
    other.revoke(lb)


def test_snapshot_reflects_nodes_owners_and_admin_marks(
    coord: EtcdCoordinator, other: EtcdCoordinator, etcd_server: EmbeddedEtcd, layout: KeyLayout
) -> None:
    la, lb = coord.grant_lease(10).lease_id, other.grant_lease(10).lease_id
    coord.register_node(node("a"), la)
    other.register_node(node("b"), lb)
    assert coord.try_acquire_shard(0, "a", la) and other.try_acquire_shard(1, "b", lb)
    coord.publish_status("a", b'{"lag_ms":3}', la)
    coord.drain("b", actor="ops")
    coord.pin(7, "a")
    coord.pause_rebalancing()
    requested = coord.request_rebalance()

    view = coord.snapshot()
    assert set(view.nodes) == {"a", "b"} and view.nodes["a"].address == "http://127.0.0.1:1/a"
    assert {s: o.node_id for s, o in view.owners.items()} == {0: "a", 1: "b"}
    assert dict(view.node_leases) == {"a": la, "b": lb} and view.live_owners() == {0: "a", 1: "b"}
    assert view.drained == {"b"} and dict(view.pins) == {7: "a"} and view.paused
    assert view.rebalance_revision == requested and view.revision >= requested
    assert view.status == {"a": b'{"lag_ms":3}'}
    assert view.malformed == ()

    coord.undrain("b")
    coord.unpin(7)
    coord.resume_rebalancing()
    assert coord.request_rebalance() > requested
    other.revoke(lb)  # b dies: its node, shard and nothing else vanish
    view2 = coord.snapshot()
    assert view2.revision > view.revision
    assert set(view2.nodes) == {"a"} and set(view2.owners) == {0}
    assert view2.drained == frozenset() and dict(view2.pins) == {} and not view2.paused
    assert view2.rebalance_revision > requested

    # A hand-written bad value is reported, never raised; the shard still counts as taken.
    host, port = etcd_server.endpoint.removeprefix("http://").rsplit(":", 1)
    raw = pyetcd.client(host=host, port=int(port))
    try:
        raw.put(layout.shard(9), "not json")
    finally:
        raw.close()
    view3 = coord.snapshot()
    assert view3.owner_of(9) == "" and view3.malformed == (layout.shard(9),)
    assert coord.try_acquire_shard(9, "a", la) is False
    coord.revoke(la)


def test_watch_delivers_changes_filtered_by_kind(coord: EtcdCoordinator) -> None:
    notices: queue.Queue[WatchNotice] = queue.Queue()
    lease = coord.grant_lease(10).lease_id
    handle = coord.watch(notices.put, kinds={KeyKind.SHARD, KeyKind.DRAINED})
    try:
        coord.publish_status("a", b"{}", lease)  # filtered out
        rev = coord.drain("a")
        got = next_notice(notices, Changed)
        assert isinstance(got, Changed) and got.revision == rev and got.kinds == {KeyKind.DRAINED}
        assert got.keys == (coord.layout.drained("a"),)
        assert coord.try_acquire_shard(2, "a", lease)
        got = next_notice(notices, Changed)
        assert isinstance(got, Changed) and got.kinds == {KeyKind.SHARD}
        assert handle.active
    finally:
        handle.cancel()
    assert not handle.active
    coord.undrain("a")
    time.sleep(0.3)
    assert notices.empty()  # nothing after cancel
    coord.revoke(lease)


def test_watch_from_a_revision_replays(coord: EtcdCoordinator) -> None:
    first = coord.drain("x")
    coord.undrain("x")
    notices: queue.Queue[WatchNotice] = queue.Queue()
    handle = coord.watch(notices.put, start_revision=first)
    try:
        got = next_notice(notices, Changed)
        assert isinstance(got, Changed) and got.revision >= first
    finally:
        handle.cancel()


def test_unreachable_etcd_is_a_quick_infrastructure_error(layout: KeyLayout) -> None:
    port = free_port()  # nothing listens there
    with EtcdCoordinator(f"http://127.0.0.1:{port}", layout, timeout=1.0) as dead:
        calls: list[Callable[[], object]] = [
            dead.snapshot,
            lambda: dead.keepalive(1),
            lambda: dead.grant_lease(2),
            lambda: dead.drain("n"),
            lambda: dead.try_acquire_shard(1, "n", 1),
            lambda: dead.watch(lambda n: None),
            lambda: dead.snapshot(),
        ]
        for call in calls:
            t0 = time.monotonic()
            with pytest.raises(InfrastructureError) as err:
                call()
            assert time.monotonic() - t0 < 1.5
            assert f"127.0.0.1:{port}" in str(err.value) and "\n" not in str(err.value)


@pytest.fixture
def private_etcd() -> Iterator[EmbeddedEtcd]:
    """An etcd of our own, to stop and restart (the session's is shared)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="sw-coord-"))
    etcd = EmbeddedEtcd(path / "etcd", durable=False)
    try:
        yield etcd.start()
    finally:
        etcd.stop()
        shutil.rmtree(path, ignore_errors=True)


def test_outage_then_recovery(private_etcd: EmbeddedEtcd, layout: KeyLayout) -> None:
    """etcd stops and comes back: calls fail clearly meanwhile, then work again at once (pyetcd alone would
    refuse the endpoint for 300 s), the lease is still alive, and the watch resumes by itself."""
    notices: queue.Queue[WatchNotice] = queue.Queue()
    with EtcdCoordinator(private_etcd.endpoint, layout, timeout=1.0) as c:
        lease = c.grant_lease(30).lease_id
        c.register_node(node("a"), lease)
        handle = c.watch(notices.put)
        try:
            private_etcd.stop()
            assert isinstance(next_notice(notices, WatchLost), WatchLost)
            with pytest.raises(InfrastructureError):
                c.keepalive(lease)
            with pytest.raises(InfrastructureError):
                c.snapshot()
            private_etcd.start()
            back = wait_for(lambda: _answers(c), timeout=5.0)
            assert c.keepalive(lease) is not None  # "if the lease is still alive, carry on"
            assert "a" in c.snapshot().nodes
            resumed = next_notice(notices, WatchResumed, timeout=6.0)
            assert isinstance(resumed, WatchResumed)
            wait_changed(notices, c.drain("a"))
            assert time.monotonic() - back < 10
        finally:
            handle.cancel()


def test_several_endpoints_fail_over(etcd_server: EmbeddedEtcd, layout: KeyLayout) -> None:
    """One dead endpoint in the list costs at most one failed call, then the live one serves."""
    dead = f"http://127.0.0.1:{free_port()}"
    with EtcdCoordinator([dead, etcd_server.endpoint], layout, timeout=1.0) as c:
        outcomes = []
        for _ in range(4):
            outcomes.append(_answers(c))
        assert outcomes[1:] == [True, True, True]
    with pytest.raises(InfrastructureError, match="closed"):
        c.snapshot()


def test_frozen_etcd_times_out_and_the_watch_survives(private_etcd: EmbeddedEtcd, layout: KeyLayout) -> None:
    """etcd paused (SIGSTOP): connected but silent. Every call ends at its deadline; after SIGCONT calls work
    and the existing watch stream still delivers (pyetcd drops its watcher object on a deadline, not the
    stream)."""
    notices: queue.Queue[WatchNotice] = queue.Queue()
    with EtcdCoordinator(private_etcd.endpoint, layout, timeout=0.5) as c:
        lease = c.grant_lease(30).lease_id
        handle = c.watch(notices.put)
        private_etcd.pause()
        try:
            for call in (c.snapshot, lambda: c.keepalive(lease), lambda: c.drain("n")):
                t0 = time.monotonic()
                with pytest.raises(InfrastructureError, match="did not answer"):
                    call()
                assert 0.4 < time.monotonic() - t0 < 1.5
        finally:
            private_etcd.resume()
        try:
            wait_for(lambda: _answers(c), timeout=5.0)
            assert c.keepalive(lease) is not None
            rev = c.drain("m")
            # Wait for *that* change: a drain sent during the freeze may have been applied after it.
            wait_changed(notices, rev)
        finally:
            handle.cancel()


def _answers(c: EtcdCoordinator) -> bool:
    try:
        c.snapshot()
        return True
    except InfrastructureError:
        return False
