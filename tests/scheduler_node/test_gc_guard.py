from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from scheduler_node.gc_guard import GcGuard


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
