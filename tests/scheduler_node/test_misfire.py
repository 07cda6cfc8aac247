from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.jobs import Misfire, MisfirePolicy
from scheduler_node.misfire import plan_missed, send_late


def test_worked_example() -> None:
    slots = (1000 * s for s in itertools.count(1))
    plan = plan_missed(slots, now_ms=5_500, policy=Misfire(MisfirePolicy.FIRE_ONCE, grace_ms=2_000))
    assert plan.fire == [1000] and plan.skip == [2000, 3000] and plan.next_slot == 4000


@settings(max_examples=400, deadline=None)
@given(
    st.integers(1, 5000),
    st.integers(0, 400),
    st.integers(0, 20_000),
    st.integers(0, 200_000),
    st.sampled_from(MisfirePolicy),
    st.integers(1, 50),
)
def test_against_model(
    period: int, first: int, grace: int, now: int, kind: MisfirePolicy, catchup: int
) -> None:
    policy = Misfire(kind, grace_ms=grace, max_catchup=catchup)
    all_slots = [first + k * period for k in range(2000)]
    plan = plan_missed(iter(all_slots), now, policy)
    missed_all = [s for s in all_slots if s < now - grace]
    seen = missed_all[: 2 * catchup + 1]
    assert plan.truncated == (len(missed_all) > len(seen))
    assert plan.missed == len(seen)
    # nothing fires or is skipped twice; all of it was missed; the recorded part is bounded
    assert set(plan.fire).isdisjoint(plan.skip) and set(plan.fire) | set(plan.skip) <= set(seen)
    assert len(plan.skip) <= catchup and len(plan.fire) <= catchup
    expected_fire = {
        MisfirePolicy.FIRE_ONCE: seen[:1],
        MisfirePolicy.SKIP: [],
        MisfirePolicy.FIRE_ALL: seen[:catchup],
    }[kind]
    assert plan.fire == expected_fire
    if not plan.truncated:
        not_missed = [s for s in all_slots if s >= now - grace]
        assert plan.next_slot == (not_missed[0] if not_missed else None)
        if len(seen) - len(expected_fire) <= catchup:
            assert sorted(plan.fire + plan.skip) == seen


@given(st.lists(st.booleans(), max_size=30), st.sampled_from(list(MisfirePolicy)))
def test_late_slots_at_their_send_follow_the_policy_once_per_run(late: list[bool], policy: MisfirePolicy) -> None:
    """Against the policy's definition: of each run of consecutive late slots, FIRE_ALL sends all, SKIP none,
    FIRE_ONCE the first only; slots within their grace are not send_late's to decide."""
    sent, in_run = [], False
    for i, is_late in enumerate(late):
        if is_late:
            if send_late(policy, in_run):
                sent.append(i)
            in_run = True
        else:
            in_run = False
    runs = [i for i, is_late in enumerate(late) if is_late and (i == 0 or not late[i - 1])]
    every = [i for i, is_late in enumerate(late) if is_late]
    assert sent == {MisfirePolicy.FIRE_ALL: every, MisfirePolicy.SKIP: [], MisfirePolicy.FIRE_ONCE: runs}[policy]
