"""The node's garbage collector: its thresholds for a process that makes tens of thousands of short-lived
objects a second, and held off for a burst of sends and given back (one owner, no flag kept in step by hand).

``node_thresholds()``: the young generation is collected every 10,000 net allocations instead of 700; the
older ones keep their defaults (10, 10). At 10,000 firings/s a node with the defaults ran ~46 young, ~4 middle
and ~0.4 full passes a second, ~0.7, 5 and 32 ms each (the young generation holds a second's lists and dicts of
10,000 references), ~10 % of its CPU, and they found ~10 objects a second to free: nearly everything dies by
its reference count. (100,000, 50, 100), tried first, saved as much (70.6 -> 65.0 µs per firing, median of
three interleaved runs) but put the full pass hours apart: in a 10-minute soak the node's RSS crept up ~0.7
MiB a minute (cyclic garbage that reached the old generation waits for a full pass). docs/bench.md, session 16.

A tick firing 64 slots or more turns the collector off (collections of the burst's young objects landed between
its sends and pushed the last ones later); it comes back on once the burst's outcomes are recorded, or when the
engine stops mid-burst. A collector the process had turned off itself is left alone.

Example::

    guard = GcGuard()
    if guard.hold():      # the driver, at the 64th firing of a tick
        ...
    guard.release()       # the outcome loop, after recording; the engine's exit, always
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["NODE_THRESHOLDS", "GcGuard", "node_thresholds"]

NODE_THRESHOLDS = (10_000, 10, 10)


@contextlib.contextmanager
def node_thresholds() -> Iterator[None]:
    """The node's collector thresholds while the block runs; the process's own again after it."""
    before = gc.get_threshold()
    gc.set_threshold(*NODE_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)


class GcGuard:
    def __init__(self) -> None:
        self.held = False

    def hold(self) -> bool:
        """Turn the collector off; True if this call did (it was on and not held already)."""
        if self.held or not gc.isenabled():
            return False
        gc.disable()
        self.held = True
        return True

    def release(self) -> None:
        """Turn the collector back on if ``hold`` turned it off."""
        if self.held:
            self.held = False
            gc.enable()
