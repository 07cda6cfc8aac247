"""Run handling: what a slot does at its second, with each attempt's outcome and when its run ends. Pure.

A run is a slot between its first send and its terminal state. The engine (the trio shell) asks these
functions and applies their answers; they read nothing but their arguments, so they are tested against
reference models without a clock, a store or a dispatcher (tests/scheduler_node/test_run_rules.py).

Rules:
- At its second (``fire_step``): a scheduled slot of a paused or auto-paused job is skipped
  (``skipped_paused``); a manual trigger or a backfill of it still fires. Otherwise the job's concurrency
  policy decides from its runs in flight and its buffered slot:

  | policy     | nothing in flight | in flight, nothing buffered | in flight, one buffered |
  |------------|-------------------|-----------------------------|-------------------------|
  | ALLOW      | send              | send                        | send                    |
  | FORBID     | send              | skip (skipped_overlap)      | skip                    |
  | BUFFER_ONE | send              | buffer (sent when it ends)  | skip (skipped_overlap)  |
  | REPLACE    | send              | cancel the runs, send       | cancel the runs, send   |

  A FORBID job every second whose target takes 2.5 s sends at :00, skips :01 and :02, and sends at :03.
- With an attempt's outcome (``outcome_step``): ``not_sent`` (the lease's validity passed while it waited) is
  no attempt: HOLD the slot until sends may resume, a first attempt starting its run afresh then.
  ``cancelled`` (replaced by a newer slot) ends the run ``cancelled``. Any other outcome is an attempt: the
  retry policy (``scheduler_node.retry``) says RETRY, due ``retry_in_ms`` after the attempt finished, or END
  with a terminal status.
- When a run ends (``finish_step``): ``succeeded`` ends the job's failure streak; ``failed`` or ``timed_out``
  extends it and raises an ``execution_failed`` alert; the streak reaching ``pause_after_failures`` pauses an
  active job (AUTO_PAUSED) with a ``job_auto_paused`` alert — once, as the job is then no longer active. Other
  terminal states (cancels, skips, ``lost``) leave the streak as it is. Resuming a job starts a new streak.
- Once a run has ended (``completes``): a buffered slot fires when no run is left (the engine fires it before
  asking); a job whose schedule has no slot left completes when it is active and has no run, no claimed slot
  waiting for its second and nothing buffered.

Example: ``pause_after_failures`` 2, statuses failed, cancelled, failed → streaks 1, 1, 2: two alerts, and
the second failure pauses the job.
"""

from __future__ import annotations

import enum

from protocol.executions import FAILURES, ExecutionStatus, Origin
from protocol.jobs import Concurrency, JobSpec, JobState

from . import retry
from .retry import AttemptResult

__all__ = [
    "AfterAttempt",
    "FireStep",
    "Finish",
    "NotAnAttempt",
    "OutcomeStep",
    "completes",
    "finish_step",
    "fire_step",
    "outcome_step",
]

S = ExecutionStatus
PAUSED = frozenset({JobState.PAUSED, JobState.AUTO_PAUSED})


class FireStep(enum.Enum):
    SEND = "send"
    SKIP_PAUSED = "skip_paused"  # record skipped_paused
    SKIP_OVERLAP = "skip_overlap"  # record skipped_overlap
    BUFFER = "buffer"  # keep it; it fires when the runs in flight end
    REPLACE = "replace"  # cancel the runs in flight, then send


_SEND, _SKIP, _BUFFER, _REPLACE = FireStep.SEND, FireStep.SKIP_OVERLAP, FireStep.BUFFER, FireStep.REPLACE
_CONCURRENCY: dict[Concurrency, tuple[FireStep, FireStep, FireStep]] = {
    Concurrency.ALLOW: (_SEND, _SEND, _SEND),
    Concurrency.FORBID: (_SEND, _SKIP, _SKIP),
    Concurrency.BUFFER_ONE: (_SEND, _BUFFER, _SKIP),
    Concurrency.REPLACE: (_SEND, _REPLACE, _REPLACE),
}


def fire_step(
    state: JobState, origin: Origin, policy: Concurrency, in_flight: int, buffered: bool
) -> FireStep:
    """What a slot's first attempt does at its second."""
    if origin is Origin.SCHEDULED and state in PAUSED:
        return FireStep.SKIP_PAUSED
    return _CONCURRENCY[policy][0 if in_flight == 0 else (2 if buffered else 1)]


class NotAnAttempt(enum.Enum):
    """Outcomes that judge no attempt (``scheduler_node.attempts`` maps the dispatcher's onto these)."""

    NOT_SENT = "not_sent"
    CANCELLED = "cancelled"


class OutcomeStep(enum.Enum):
    HOLD = "hold"
    CANCELLED = "cancelled"
    RETRY = "retry"
    END = "end"


# Plain tuples, not named ones: these answer once per firing, and a NamedTuple costs ~0.3 µs to build.
AfterAttempt = tuple[OutcomeStep, ExecutionStatus | None, int | None]
"""(step, status, retry_in_ms): ``status`` is set for CANCELLED and END, ``retry_in_ms`` for RETRY."""
Finish = tuple[int, bool, bool]
"""(failures, alert_failed, auto_pause): the job's failure streak after the run; whether to raise
``execution_failed``; whether to pause the job (AUTO_PAUSED) and raise ``job_auto_paused``."""

_HOLD: AfterAttempt = (OutcomeStep.HOLD, None, None)
_CANCELLED: AfterAttempt = (OutcomeStep.CANCELLED, S.CANCELLED, None)
_END: dict[ExecutionStatus, AfterAttempt] = {s: (OutcomeStep.END, s, None) for s in ExecutionStatus}
_STREAK_ENDED: Finish = (0, False, False)


def outcome_step(
    spec: JobSpec, attempt: int, result: AttemptResult | NotAnAttempt, unit_random: float
) -> AfterAttempt:
    """What attempt number ``attempt`` (1 = the first send) of a slot leads to; ``unit_random`` in [0, 1)
    draws the backoff's jitter."""
    if result is NotAnAttempt.NOT_SENT:
        return _HOLD
    if result is NotAnAttempt.CANCELLED:
        return _CANCELLED
    decision = retry.decide(
        semantics=spec.semantics,
        success=spec.success,
        policy=spec.retry,
        attempt=attempt,
        result=result,
        unit_random=unit_random,
    )
    if decision.terminal is None:
        return OutcomeStep.RETRY, None, decision.retry_in_ms
    return _END[decision.terminal]


def finish_step(status: ExecutionStatus, failures: int, pause_after: int | None, state: JobState) -> Finish:
    """A run ended ``status`` with the job's streak at ``failures`` and the job in ``state``."""
    if status is S.SUCCEEDED:
        return _STREAK_ENDED
    if status not in FAILURES:
        return failures, False, False
    failures += 1
    return failures, True, pause_after is not None and failures >= pause_after and state is JobState.ACTIVE


def completes(state: JobState, exhausted: bool, runs: int, unsent: int, buffered: bool) -> bool:
    """Whether a job whose schedule may be exhausted is done for good."""
    return exhausted and state is JobState.ACTIVE and not runs and not unsent and not buffered
