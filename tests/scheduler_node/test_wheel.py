from __future__ import annotations

import bisect
import dataclasses
import itertools
from typing import TypeVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule

from scheduler_node import wheel as wheel_module
from scheduler_node.wheel import Entry, TimingWheel, WheelStatistics

DAY_MS = 86_400_000
T = TypeVar("T")


def fired(entries: list[Entry[T]]) -> list[T]:
    return [e.payload for e in entries]


class WheelAgainstModel(RuleBasedStateMachine):
    """The wheel against a sorted list of (deadline, serial): same firings, same times, same counts.

    Small wheels (2-16 buckets, 1-3 levels) so that levels, cascades and the overflow are all reached.
    """

    handles = Bundle("handles")

    @initialize(
        tick=st.sampled_from([1, 2, 10]),
        size=st.sampled_from([2, 3, 4, 16]),
        levels=st.integers(1, 3),
        start=st.integers(-100, 100),
    )
    def setup(self, tick: int, size: int, levels: int, start: int) -> None:
        self.wheel: TimingWheel[int] = TimingWheel(start, tick_ms=tick, wheel_size=size, levels=levels)
        self.tick = tick
        self.level_ticks = [tick * size**k for k in range(levels + 1)]  # the last one is the whole span
        self.span = self.level_ticks[-1]
        self.now = start
        self.pending: list[tuple[int, int]] = []  # the model: (deadline, serial), sorted
        self.entries: dict[int, Entry[int]] = {}
        self.serials = itertools.count()

    # -- model helpers ------------------------------------------------------------------------------------

    def _advance(self, target: int) -> None:
        got = self.wheel.advance(target)
        self.now = max(self.now, target)
        cut = bisect.bisect_right(self.pending, (self.now, float("inf")))
        due, self.pending = self.pending[:cut], self.pending[cut:]
        deadlines = [e.deadline_ms for e in got]
        assert deadlines == sorted(deadlines), "fired out of deadline order"
        # exactly the model's due entries: none early, none late (a call reaching a deadline fires it), once
        assert sorted((e.deadline_ms, e.payload) for e in got) == due
        assert all(not e.pending for e in got)
        for _, serial in due:
            del self.entries[serial]
        assert self.wheel.now_ms == self.now

    # -- rules ------------------------------------------------------------------------------------------

    @rule(
        target=handles,
        data=st.data(),
        kind=st.sampled_from(["past", "this tick", "near", "within span", "beyond span", "boundary"]),
    )
    def insert(self, data: st.DataObject, kind: str) -> Entry[int]:
        if kind == "past":
            deadline = self.now - data.draw(st.integers(0, 3 * self.tick))
        elif kind == "this tick":
            deadline = self.now + data.draw(st.integers(1, self.tick))
        elif kind == "near":
            deadline = self.now + data.draw(st.integers(1, 2 * self.level_ticks[1]))
        elif kind == "within span":
            deadline = self.now + data.draw(st.integers(1, self.span))
        elif kind == "beyond span":
            deadline = self.now + data.draw(st.integers(self.span, 3 * self.span))
        else:  # a bucket (or span) boundary of some level, at or after now
            step = data.draw(st.sampled_from(self.level_ticks))
            deadline = (self.now // step + data.draw(st.integers(0, 3))) * step + data.draw(
                st.sampled_from([-1, 0])
            )
        serial = next(self.serials)
        entry = self.wheel.insert(deadline, serial)
        assert entry.pending and entry.deadline_ms == deadline and entry.payload == serial
        bisect.insort(self.pending, (deadline, serial))
        self.entries[serial] = entry
        return entry

    @rule(entry=handles)
    def cancel(self, entry: Entry[int]) -> None:
        # handles stay in the bundle: double cancels and cancels of fired entries happen
        live = entry.payload in self.entries
        assert self.wheel.cancel(entry) is live
        assert not entry.pending
        if live:
            del self.entries[entry.payload]
            self.pending.remove((entry.deadline_ms, entry.payload))

    @rule(step=st.integers(-2, 30))
    def advance_small(self, step: int) -> None:
        # negative steps: the wheel's clock stays put (advance to the same time, or back, fires only what's due)
        self._advance(self.now + step * self.tick // 3)

    @rule(step=st.integers(0, 100), spans=st.integers(0, 3))
    def advance_large(self, step: int, spans: int) -> None:
        self._advance(self.now + spans * self.span + step * self.span // 100)

    @rule(data=st.data(), ahead=st.integers(0, 2), off=st.sampled_from([-1, 0, 1]))
    def advance_to_boundary(self, data: st.DataObject, ahead: int, off: int) -> None:
        step = data.draw(st.sampled_from(self.level_ticks))
        self._advance((self.now // step + ahead) * step + off)

    @rule()
    def advance_to_earliest_deadline(self) -> None:
        if self.pending:
            self._advance(self.pending[0][0])

    @rule()
    def next_deadline(self) -> None:
        nd = self.wheel.next_deadline()
        if not self.pending:
            assert nd is None
            return
        earliest = self.pending[0][0]
        assert nd is not None and nd <= earliest
        if earliest > self.now:
            assert nd > self.now, "next_deadline <= now with nothing due: the driver would spin"

    @rule()
    def drive(self) -> None:
        """A driver sleeping until next_deadline() and advancing: reaches the earliest firing, never spins."""
        if not self.pending:
            return
        earliest = self.pending[0][0]
        for _ in range(len(self.pending) * (len(self.level_ticks) + 2) + 2):
            nd = self.wheel.next_deadline()
            assert nd is not None and nd <= earliest
            self._advance(nd)
            if not self.pending or self.pending[0][0] > earliest:
                return
        raise AssertionError("the driver never reached the earliest deadline")

    # -- invariants ---------------------------------------------------------------------------------------

    @invariant()
    def counts_agree(self) -> None:
        if not hasattr(self, "wheel"):
            return
        stats = self.wheel.statistics()
        assert len(self.wheel) == stats.entries == len(self.pending)
        assert stats.now_ms == self.now
        assert 0 <= stats.overflow <= stats.entries and stats.buckets_in_use <= stats.entries
        assert all(e.pending for e in self.entries.values())


WheelAgainstModel.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
TestWheelAgainstModel = WheelAgainstModel.TestCase


# -- named cases ---------------------------------------------------------------------------------------------


def test_worked_example() -> None:
    """The module docstring's example, step by step."""
    w: TimingWheel[str] = TimingWheel(0, tick_ms=1, wheel_size=4, levels=3)
    for d in (2, 9, 40, 100):
        w.insert(d, f"at {d}")
    assert w.statistics() == WheelStatistics(entries=4, buckets_in_use=3, overflow=1, now_ms=0, heap_slots=1)
    assert w.next_deadline() == 2
    assert fired(w.advance(9)) == ["at 2", "at 9"]
    assert fired(w.advance(50)) == ["at 40"]
    assert w.statistics() == WheelStatistics(entries=1, buckets_in_use=1, overflow=0, now_ms=50)
    assert w.next_deadline() == 96
    assert w.advance(99) == []
    assert w.next_deadline() == 100
    assert fired(w.advance(100)) == ["at 100"]
    assert w.next_deadline() is None and len(w) == 0


def test_tick_1_fires_at_the_deadline_not_before() -> None:
    w: TimingWheel[str] = TimingWheel(1_000)
    a = w.insert(1_005, "a")
    assert w.next_deadline() == 1_005
    assert w.advance(1_004) == []
    assert a.pending
    assert w.advance(1_005) == [a]
    assert not a.pending and w.next_deadline() is None


def test_tick_10_keeps_millisecond_precision() -> None:
    w: TimingWheel[str] = TimingWheel(100, tick_ms=10)
    w.insert(105, "105")  # in the current tick: waits in the exact-deadline heap
    w.insert(127, "127")  # level-0 bucket [120, 130)
    w.insert(103, "103")
    assert w.next_deadline() == 103
    assert fired(w.advance(104)) == ["103"]
    assert w.next_deadline() == 105
    assert fired(w.advance(119)) == ["105"]
    assert w.next_deadline() == 120  # the bucket's start: one idle wake-up
    assert w.advance(120) == []
    assert w.next_deadline() == 127
    assert w.advance(126) == []
    assert fired(w.advance(127)) == ["127"]


def test_tick_10_bucket_fires_in_deadline_order() -> None:
    w: TimingWheel[int] = TimingWheel(0, tick_ms=10, wheel_size=4, levels=2)
    for d in (39, 31, 30, 35, 150, 41, 149, 140):
        w.insert(d, d)
    assert fired(w.advance(36)) == [30, 31, 35]
    assert fired(w.advance(1_000)) == [39, 41, 140, 149, 150]


@pytest.mark.parametrize("tick", [1, 10])
def test_entries_exactly_at_bucket_and_span_boundaries(tick: int) -> None:
    # wheel_size 4, 2 levels: level 0 spans 4 ticks, level 1 spans 16 ticks; 16 ticks is the first overflow
    w: TimingWheel[int] = TimingWheel(0, tick_ms=tick, wheel_size=4, levels=2)
    deadlines = {tick * n for n in (1, 3, 4, 5, 8, 15, 16, 17, 32)} | {tick * 4 - 1, tick * 16 - 1}
    entries = {d: w.insert(d, d) for d in deadlines}
    assert w.statistics().overflow == 3  # 16, 17 and 32 ticks
    for d in sorted(deadlines):
        assert w.advance(d - 1) == [], d
        assert w.advance(d) == [entries[d]], d
    assert len(w) == 0 and w.next_deadline() is None


def test_cascade_into_a_tick_finishes_before_the_tick_fires() -> None:
    w: TimingWheel[int] = TimingWheel(0, tick_ms=10, wheel_size=4, levels=2)  # level 0 spans 40 ms
    w.insert(41, 41)  # beyond level 0 at time 0: level 1's bucket [40, 80)
    w.advance(10)
    w.insert(45, 45)  # now within level 0: its bucket [40, 50), also expiring at 40
    assert fired(w.advance(100)) == [41, 45]


def test_insert_in_the_current_tick_after_landing_on_its_start() -> None:
    w: TimingWheel[str] = TimingWheel(0, tick_ms=10)
    w.advance(10)  # exactly the end of the tick the wheel started in
    a = w.insert(15, "a")
    assert w.next_deadline() == 15  # not 10: that would make the driver spin until 15
    assert w.advance(14) == []
    assert w.advance(15) == [a]


def test_overflow_entry_comes_in_range() -> None:
    w: TimingWheel[str] = TimingWheel(0, wheel_size=4, levels=2)  # spans 16 ms
    e = w.insert(100, "far")
    assert w.statistics().overflow == 1
    assert w.next_deadline() == 100
    # the top level reaches 100 once its clock passes 100 - 16: at 88 (a multiple of its 4 ms tick)
    assert w.advance(87) == [] and w.statistics().overflow == 1
    assert w.advance(88) == [] and w.statistics().overflow == 0
    assert w.statistics().buckets_in_use == 1
    assert w.advance(99) == []
    assert w.advance(100) == [e]


def test_overflow_entry_fires_in_one_jump() -> None:
    w: TimingWheel[str] = TimingWheel(0, wheel_size=4, levels=2)
    w.insert(1_000, "b")
    w.insert(500, "a")
    w.insert(10, "near")
    assert fired(w.advance(10_000)) == ["near", "a", "b"]


def test_cancel_then_reinsert() -> None:
    w: TimingWheel[str] = TimingWheel(0, tick_ms=10, wheel_size=4, levels=2)
    for deadline in (5, 30, 100, 1_000, -5):  # current tick, level 0, level 1, overflow, past
        a = w.insert(deadline, "a")
        assert w.cancel(a) is True
        assert w.cancel(a) is False
        assert len(w) == 0
        b = w.insert(deadline, "a")
        assert len(w) == 1
        assert w.advance(deadline) == [b]  # (the past one: the clock stays at 1000 and it is due)
        assert w.cancel(b) is False  # already fired
        assert len(w) == 0 and w.next_deadline() is None


def test_advance_to_the_same_time_twice() -> None:
    w: TimingWheel[str] = TimingWheel(0)
    a = w.insert(10, "a")
    assert w.advance(10) == [a]
    assert w.advance(10) == []
    late = w.insert(7, "late")  # already due: the next advance returns it, even to the same time
    assert w.next_deadline() == 7
    assert w.advance(10) == [late]
    assert w.advance(10) == [] and w.now_ms == 10


def test_time_never_goes_backwards() -> None:
    w: TimingWheel[str] = TimingWheel(50)
    a = w.insert(60, "a")
    assert w.advance(40) == [] and w.now_ms == 50
    b = w.insert(45, "b")
    assert w.advance(30) == [b]
    assert w.advance(60) == [a]


def test_large_jump_visits_only_non_empty_buckets() -> None:
    # Defaults span 2^32 ms (~49.7 days): these sit on every level and in the overflow. Stepping tick by tick
    # through 90 days would take ~7.8e9 iterations; the heap of non-empty buckets makes it a few hundred.
    w: TimingWheel[int] = TimingWheel(0)
    deadlines = [1, 300, 70_000, 3_600_000, 20_000_000, 30 * DAY_MS, 60 * DAY_MS, 89 * DAY_MS + 1]
    for d in reversed(deadlines):
        w.insert(d, d)
    assert w.statistics().overflow == 2
    assert fired(w.advance(90 * DAY_MS)) == deadlines
    assert w.next_deadline() is None


def test_same_deadline_burst() -> None:
    w: TimingWheel[int] = TimingWheel(0)
    entries = [w.insert(1_000, i) for i in range(1_000)]
    for e in entries[::2]:
        w.cancel(e)
    assert w.next_deadline() == 768  # level-1 bucket [768, 1024) starts there
    got = w.advance(1_000)
    assert sorted(fired(got)) == list(range(1, 1_000, 2))


def test_cancelled_leftovers_are_compacted() -> None:
    """Cancelled entries in the lazily cleaned heaps do not pile up."""
    w: TimingWheel[int] = TimingWheel(1_000, wheel_size=4, levels=2)
    for _ in range(100):
        for d in (0, 10**9):  # already due (the soon heap) and far beyond the span (the overflow heap)
            for e in [w.insert(d, i) for i in range(50)]:
                w.cancel(e)
    assert len(w) == 0 and w.next_deadline() is None
    assert w.statistics().heap_slots <= 2 * (2 * wheel_module._COMPACT_MIN + 2)  # leftovers stay bounded


def test_emptied_bucket_does_not_wake_the_driver() -> None:
    w: TimingWheel[str] = TimingWheel(0)
    a = w.insert(5, "a")
    b = w.insert(9, "b")
    w.cancel(a)
    assert w.next_deadline() == 9
    w.cancel(b)
    assert w.next_deadline() is None
    assert w.advance(100) == []


def test_default_span_boundary() -> None:
    w: TimingWheel[str] = TimingWheel(0)
    w.insert(2**32 - 1, "last in the wheel")
    assert w.statistics().overflow == 0
    w.insert(2**32, "first in the overflow")
    assert w.statistics().overflow == 1


def test_statistics_is_frozen() -> None:
    stats = TimingWheel(7).statistics()
    assert stats == WheelStatistics(entries=0, buckets_in_use=0, overflow=0, now_ms=7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.entries = 1  # type: ignore[misc]


@pytest.mark.parametrize("kwargs", [{"tick_ms": 0}, {"wheel_size": 1}, {"levels": 0}])
def test_rejects_degenerate_shapes(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        TimingWheel(0, **kwargs)


def test_exports() -> None:
    assert sorted(wheel_module.__all__) == ["Entry", "TimingWheel", "WheelStatistics"]
    for name in wheel_module.__all__:
        assert getattr(wheel_module, name).__module__ == "scheduler_node.wheel"
