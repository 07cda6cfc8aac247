"""Schedule math: when a job fires. Pure (no I/O, no clock reads: ``after`` and ``created_at`` are arguments).

Shared: the node compiles a rule per job to fill its wheel, the control API computes next fire times and
previews with the same code, so both always agree on a job's slots.

- ``rules``: ``compile_schedule(spec, created_at) -> SlotRule``; ``SlotRule.next_after / iter_after / iter_ms
  / preview``; ``preview(spec, after, n)``; ``FirstSlots``, first slots remembered per schedule. Bounds
  ``start_at``/``end_at`` inclusive; ``every`` slots are ``anchor + k * period``; ``at`` fires once.
- ``cron_slots``: ``CronSlots``, the kept iterator of a cron schedule (croniter walking naive wall-clock
  time).
- ``instants``: ``preview_instants``, the preview as the API shows it (UTC, local, DST notes).
- ``dst``: how a wall-clock time becomes instants. The DST rule (DESIGN.md §3): a cron schedule whose hour
  field lists single hours (``0 30 2 * * *``) follows the job's policy (gap skip | shift, repeat first |
  second | both); any other cron schedule (``* * * * * *``, ``0 */15 * * * *``) follows absolute time, which
  is the policy (skip, both): every real instant whose local reading matches fires exactly once.

Example, ``0 30 2 * * *`` in America/New_York with the default policy (gap=shift, repeat=first):
2025-03-09 02:30 does not exist, so it fires at 07:00Z (03:00 EDT, the end of the gap); 2025-11-02 02:30 is
after the overlap (01:00-02:00 repeats) and fires once at 07:30Z (EST).
"""

from .cron_slots import CronSlots
from .dst import ABSOLUTE, effective_policy, zone
from .rules import AtRule, CronRule, EveryRule, EverySlots, FirstSlots, SlotRule, compile_schedule, preview

__all__ = [
    "ABSOLUTE",
    "AtRule",
    "CronRule",
    "CronSlots",
    "EveryRule",
    "EverySlots",
    "FirstSlots",
    "SlotRule",
    "compile_schedule",
    "effective_policy",
    "preview",
    "zone",
]
