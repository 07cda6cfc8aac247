from __future__ import annotations

import bisect
from collections.abc import Iterator

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.jobs import Misfire, MisfirePolicy
from scheduler_node.slot_plan import plan_slots


def every(period: int, first: int, count: int = 3000) -> list[int]:
    return [first + k * period for k in range(count)]


def after(slots: list[int]):  # type: ignore[no-untyped-def]
    def slots_after(ms: int) -> Iterator[int]:
        return iter(slots[bisect.bisect_right(slots, ms) :])

    return slots_after


def test_worked_example() -> None:
    slots = every(1000, 0)
    plan = plan_slots(after(slots), 0, 5_500, Misfire(MisfirePolicy.FIRE_ONCE, grace_ms=2_000), 300)
    assert (plan.send, plan.skip, plan.next_slot, plan.last) == ([1000, 4000, 5000], [2000, 3000], 6000, 5000)


@settings(max_examples=500, deadline=None)
@given(
    st.integers(1, 5000),  # period
    st.integers(0, 5000),  # first slot
    st.integers(-1, 100_000),  # cursor
    st.integers(0, 200_000),  # now
    st.integers(0, 20_000),  # grace
    st.integers(0, 1_000),  # lookahead
    st.sampled_from(MisfirePolicy),
    st.integers(1, 30),  # max_catchup
)
def test_against_a_model(
    period: int, first: int, cursor: int, now: int, grace: int, lookahead: int, kind: MisfirePolicy, catchup: int
) -> None:
    slots = every(period, first)
    misfire = Misfire(kind, grace_ms=grace, max_catchup=catchup)
    plan = plan_slots(after(slots), cursor, now, misfire, lookahead)
    cutoff, limit = now - grace, now + lookahead
    candidates = [s for s in slots if s > cursor]
    missed = [s for s in candidates if s < cutoff]
    # Missed slots: only those, each at most once, the policy's share sent and the rest (bounded) skipped.
    sent_missed = [s for s in plan.send if s < cutoff]
    assert set(sent_missed) | set(plan.skip) <= set(missed[: 2 * catchup + 1])
    assert set(sent_missed).isdisjoint(plan.skip) and len(plan.skip) <= catchup
    assert plan.missed == min(len(missed), 2 * catchup + 1) and plan.missed_sent == len(sent_missed)
    if kind is MisfirePolicy.SKIP:
        assert sent_missed == []
    elif missed:
        assert sent_missed[:1] == missed[:1]  # FIRE_ONCE and FIRE_ALL send the first missed slot
    # Then the slots from the first within grace, in order, up to now + lookahead, at most max_catchup.
    on_time = [s for s in slots if s >= cutoff and s > cursor]
    due = [s for s in on_time if s <= limit][:catchup]
    assert [s for s in plan.send if s >= cutoff] == due
    assert plan.send == sorted(plan.send) and len(set(plan.send)) == len(plan.send)
    rest = on_time[len(due) :]
    assert plan.next_slot == (rest[0] if rest else None)
    planned = plan.send + plan.skip
    assert plan.last == (max(planned) if planned else None)
