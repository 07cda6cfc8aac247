"""The garbage collector held off for a burst of sends, and given back: one owner, no flag kept in step by hand.

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

import gc

__all__ = ["GcGuard"]


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
