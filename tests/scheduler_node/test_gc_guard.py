from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from scheduler_node.gc_guard import NODE_THRESHOLDS, GcGuard, node_thresholds


@pytest.fixture(autouse=True)
def collector_restored() -> Iterator[None]:
    was = gc.isenabled()
    yield
    (gc.enable if was else gc.disable)()


def test_hold_and_release_once() -> None:
    gc.enable()
    guard = GcGuard()
    assert guard.hold() and not gc.isenabled()
    assert not guard.hold()  # held already
    guard.release()
    assert gc.isenabled()
    guard.release()  # nothing held: nothing to give back
    assert gc.isenabled()


def test_a_collector_turned_off_by_the_process_is_left_alone() -> None:
    gc.disable()
    guard = GcGuard()
    assert not guard.hold()
    guard.release()
    assert not gc.isenabled()


def test_node_thresholds_hold_while_the_node_runs_and_are_given_back() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), node_thresholds():
        assert gc.get_threshold() == NODE_THRESHOLDS and NODE_THRESHOLDS[0] > before[0]
        raise RuntimeError("the node failed")
    assert gc.get_threshold() == before
