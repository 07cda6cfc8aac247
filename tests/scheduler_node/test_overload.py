"""The overload signal against a reference: overloaded exactly while the last late slot is under ``quiet_s`` old."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from scheduler_node.overload import OverloadSignal

events = st.lists(st.tuples(st.floats(0, 5, allow_nan=False), st.booleans()), max_size=40)  # (dt, late?)


@given(events)
def test_overloaded_while_a_late_slot_is_recent_and_each_change_said_once(steps: list[tuple[float, bool]]) -> None:
    signal = OverloadSignal(quiet_s=3.0)
    now, last_late, late_total, before = 0.0, -math.inf, 0, False
    for dt, late in steps:
        now += dt
        if late:
            signal.late(now, 2)
            last_late, late_total = now, late_total + 2
        expected = now - last_late < 3.0
        assert signal.changed(now) == (expected != before)
        assert signal.overloaded == expected
        if before and not expected:
            assert signal.late_slots == late_total
            signal.late_slots = late_total = 0
        before = expected
