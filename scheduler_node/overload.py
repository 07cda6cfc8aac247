"""Whether the node is overloaded: more work offered than it can do on time. Pure: times are arguments.

A node behind by more than a job's misfire grace skips slots instead of sending them ever later
(``misfire.send_late``, and the claim-time stall rule). Each such slot is a sign: the node is *overloaded* from the
first one until ``quiet_s`` passed without another. The engine reports the state on ``/metrics``
(``shardwheel_overloaded``), in its status (``overloaded``), and logs each change once.

Example::

    signal = OverloadSignal(quiet_s=10)
    signal.late(now=100.0, n=3)
    signal.changed(now=100.5)   # True: overloaded
    signal.changed(now=101.0)   # False: still
    signal.changed(now=111.0)   # True: over; signal.late_slots == 3
"""

from __future__ import annotations

import math

__all__ = ["OverloadSignal"]


class OverloadSignal:
    def __init__(self, quiet_s: float = 10.0) -> None:
        self.quiet_s = quiet_s
        self.overloaded = False
        self.late_slots = 0  # slots late past their grace since the last change back to normal
        self._last_late = -math.inf

    def late(self, now: float, n: int = 1) -> None:
        """``n`` slots came past their grace at ``now``."""
        self._last_late = now
        self.late_slots += n

    def changed(self, now: float) -> bool:
        """Update the state at ``now``; True when it changed (the caller logs it, and on the way back to normal
        takes ``late_slots``)."""
        overloaded = now - self._last_late < self.quiet_s
        if overloaded == self.overloaded:
            return False
        self.overloaded = overloaded
        return True
