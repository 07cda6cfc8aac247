"""Concurrency policy: what a slot does when its job still has a run in flight. Pure: a table lookup.

| policy     | nothing in flight | in flight, nothing buffered | in flight, one buffered |
|------------|-------------------|-----------------------------|-------------------------|
| ALLOW      | send              | send                        | send                    |
| FORBID     | send              | skip (skipped_overlap)      | skip                    |
| BUFFER_ONE | send              | buffer (sent when it ends)  | skip (skipped_overlap)  |
| REPLACE    | send              | cancel the run, send        | cancel the run, send    |

A cancelled run is recorded ``cancelled``. Example: a FORBID job every second whose target takes 2.5 s
sends at :00, skips :01 and :02, and sends at :03.
"""

from __future__ import annotations

import enum

from protocol.jobs import Concurrency

__all__ = ["Action", "decide"]


class Action(enum.Enum):
    SEND = "send"
    SKIP = "skip"
    BUFFER = "buffer"
    REPLACE = "replace"


_TABLE: dict[Concurrency, tuple[Action, Action, Action]] = {
    Concurrency.ALLOW: (Action.SEND, Action.SEND, Action.SEND),
    Concurrency.FORBID: (Action.SEND, Action.SKIP, Action.SKIP),
    Concurrency.BUFFER_ONE: (Action.SEND, Action.BUFFER, Action.SKIP),
    Concurrency.REPLACE: (Action.SEND, Action.REPLACE, Action.REPLACE),
}


def decide(policy: Concurrency, in_flight: int, buffered: bool) -> Action:
    column = 0 if in_flight == 0 else (2 if buffered else 1)
    return _TABLE[policy][column]
