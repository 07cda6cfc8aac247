"""Which database errors are PostgreSQL's weather and which are our bugs: one classification for both services.

Rules (DESIGN.md §4, "PostgreSQL outage"):
- **Transient**, to be ridden out (retry with backoff, never end the process): the server unreachable or going
  away, or a statement the server gave up on that would succeed when tried again —
  ``OSError`` (refused, reset, unreachable, broken pipe), timeouts, asyncpg's "connection is closed" and
  "pool is closing" ``InterfaceError``, its "cannot switch to state" ``InternalClientError`` (a pooled
  connection that received the server's shutdown notice between two statements), and the SQLSTATEs of
  class 08 (connection exception), 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now,
  53300 too_many_connections, 40001 serialization_failure, 40P01 deadlock_detected, 55P03
  lock_not_available, 57014 query_canceled (a statement timeout).
- Everything else is a **bug** (a constraint we broke, bad SQL, a type we passed wrong): retrying cannot help,
  so it is raised as it is, for the caller to log with context.
- ``is_transient`` is pure and asyncio-free: the control API (asyncio) uses it as it is, the node applies it at
  its one bridge to the store (``scheduler_node/trio_store.py``), which raises ``DatabaseUnavailable`` for a
  transient error.

Example::

    try:
        await store.claim_slots(pool, node, rows)
    except Exception as e:
        if not is_transient(e):
            raise
        ...  # back off and try again
"""

from __future__ import annotations

import asyncpg

__all__ = ["TRANSIENT_SQLSTATES", "describe", "is_transient"]

TRANSIENT_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300", "40001", "40P01", "55P03", "57014"})
_CLOSED = ("connection is closed", "pool is closing", "pool is closed")


def is_transient(exc: BaseException) -> bool:
    """True if ``exc`` says PostgreSQL is (for now) unreachable or unwilling, not that our request is wrong."""
    if isinstance(
        exc, OSError | TimeoutError
    ):  # ConnectionError is an OSError; asyncio's timeout is TimeoutError
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or ""
        return state.startswith("08") or state in TRANSIENT_SQLSTATES
    if isinstance(exc, asyncpg.InterfaceError):
        return any(text in str(exc) for text in _CLOSED)
    if isinstance(exc, asyncpg.InternalClientError):
        return str(exc).startswith("cannot switch to state")
    return False


def describe(exc: BaseException) -> str:
    """One line for logs and status: the error's type and message (and SQLSTATE when the server sent one)."""
    state = getattr(exc, "sqlstate", None)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    kind = type(exc).__name__ + (f" {state}" if state else "")
    return f"{kind}: {text}" if text else kind
