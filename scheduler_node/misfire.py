"""Misfire planning: what to do with slots nobody fired in time. Pure: slots and ``now`` are arguments.

A slot is *missed* when it is older than ``now - grace_ms`` and was never claimed (it lies after the job's
cursor, ``job_cursor.last_slot``). A slot late by at most ``grace_ms`` is not missed: it fires normally, late.
This is applied when a node loads a shard (start, takeover) and when a claim comes too late (a stall).
A slot claimed in time whose second comes while the node is too far behind to send it within its grace (more
work offered than the node can do) is missed too, one at a time: ``send_late`` decides it.

Policies (``protocol.jobs.MisfirePolicy``):
- ``FIRE_ONCE``: the whole run of missed slots fires once, recorded under the first missed slot;
  the others are recorded ``skipped_misfire``.
- ``SKIP``: every missed slot is recorded ``skipped_misfire``.
- ``FIRE_ALL``: the missed slots fire, oldest first, at most ``max_catchup`` of them; the rest are skipped.

Bounds: at most ``2 * max_catchup + 1`` missed slots are looked at and at most ``max_catchup`` are recorded
as skipped, so a job down for a week costs the same as one down for a minute. ``truncated`` tells the caller
there were more; it resumes from the first slot at or after ``now - grace_ms`` itself.

Example: an every-second job, grace 2 s, cursor at 10:00:00, now 10:00:05.5 -> slots :01 :02 :03 are missed
(older than :03.5); :04 and :05 are late but within grace. FIRE_ONCE fires :01 and skips :02 :03.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from protocol.jobs import Misfire, MisfirePolicy

__all__ = ["MissedPlan", "plan_missed", "send_late"]


@dataclass(slots=True)
class MissedPlan:
    fire: list[int] = field(default_factory=list)  # slot ms to claim and send now
    skip: list[int] = field(default_factory=list)  # slot ms to record skipped_misfire
    next_slot: int | None = None  # the first slot not missed, if the iteration reached it
    truncated: bool = False  # more missed slots existed than were looked at
    missed: int = 0  # missed slots looked at


def plan_missed(slots: Iterable[int], now_ms: int, policy: Misfire) -> MissedPlan:
    """``slots``: the job's slots after its cursor, ascending (an iterator is consumed only as far as needed)."""
    limit = 2 * policy.max_catchup + 1
    cutoff = now_ms - policy.grace_ms
    missed: list[int] = []
    plan = MissedPlan()
    for slot in slots:
        if slot >= cutoff:
            plan.next_slot = slot
            break
        if len(missed) == limit:
            plan.truncated = True
            break
        missed.append(slot)
    plan.missed = len(missed)
    if not missed:
        return plan
    match policy.policy:
        case MisfirePolicy.FIRE_ONCE:
            plan.fire, rest = missed[:1], missed[1:]
        case MisfirePolicy.SKIP:
            rest = missed
        case MisfirePolicy.FIRE_ALL:
            plan.fire, rest = missed[: policy.max_catchup], missed[policy.max_catchup :]
    plan.skip = rest[-policy.max_catchup :]
    return plan


def send_late(policy: MisfirePolicy, in_late_run: bool) -> bool:
    """A claimed slot found past its grace at its send (the node behind): send it anyway? ``in_late_run``: the
    job's previous slot was late too. The policies as for missed slots: FIRE_ALL sends it, SKIP does not,
    FIRE_ONCE sends the first of a run of late slots and skips the rest, so an overloaded node spends its
    capacity on slots still within their grace instead of on ever later ones."""
    match policy:
        case MisfirePolicy.FIRE_ALL:
            return True
        case MisfirePolicy.SKIP:
            return False
        case MisfirePolicy.FIRE_ONCE:
            return not in_late_run
