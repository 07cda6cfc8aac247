"""Which of a job's slots to claim now: the misfire policy for the missed ones, then those due soon. Pure.

A job is planned from a cursor (``after_ms``: the newest slot already claimed, or just before the first one to
consider) up to ``now_ms + lookahead_ms``:
- slots older than ``now - grace`` are missed and follow the misfire policy (``misfire.plan_missed``: fire some,
  record some ``skipped_misfire``, bounded by ``max_catchup``); when more were missed than it looked at, planning
  resumes at the first slot within the grace;
- the following slots up to ``now + lookahead`` are claimed to be sent (late within the grace, or due within
  the lookahead), at most ``max_catchup`` of them, so one call stays bounded; the rest come with the next claim;
- ``next_slot`` is the first slot not planned (the job's next claim; None: the schedule has no slot left), and
  ``last`` the newest slot planned (the job's new cursor; None when nothing was).

Example: an every-second job, cursor 10:00:00, now 10:00:05.5, grace 2 s, lookahead 300 ms, FIRE_ONCE ->
missed :01 :02 :03 (fire :01, skip :02 :03), claim :04 :05 (late within grace), next slot :06, last :05.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from protocol.jobs import Misfire

from .misfire import plan_missed

__all__ = ["SlotPlan", "plan_slots"]


@dataclass(slots=True)
class SlotPlan:
    send: list[int] = field(default_factory=list)  # slots to claim and send, ascending
    skip: list[int] = field(default_factory=list)  # missed slots to record skipped_misfire
    next_slot: int | None = None  # the first slot not planned (None: no slot left)
    last: int | None = None  # the newest slot planned
    missed: int = 0  # missed slots looked at
    missed_sent: int = 0  # of them, those in ``send`` (the policy fires them)


def plan_slots(
    slots_after: Callable[[int], Iterator[int]], after_ms: int, now_ms: int, misfire: Misfire, lookahead_ms: int
) -> SlotPlan:
    slots = slots_after(after_ms)
    missed = plan_missed(slots, now_ms, misfire)
    plan = SlotPlan(send=list(missed.fire), skip=list(missed.skip), missed=missed.missed,
                    missed_sent=len(missed.fire))  # fmt: skip
    if missed.truncated:  # more were missed than planned for: resume at the first slot within grace
        slots = slots_after(now_ms - misfire.grace_ms - 1)
        next_slot = next(slots, None)
    else:
        next_slot = missed.next_slot
    if missed.missed:
        plan.last = max(plan.send + plan.skip)
    limit, room = now_ms + lookahead_ms, misfire.max_catchup
    while next_slot is not None and next_slot <= limit and room:
        plan.send.append(next_slot)
        plan.last, room = next_slot, room - 1
        next_slot = next(slots, None)
    plan.next_slot = next_slot
    return plan
