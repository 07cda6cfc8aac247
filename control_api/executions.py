"""``GET /v1/executions``: a tenant's executions across its jobs, newest slot first, in a time window.

Rules:
- The window is ``[since, until)`` on the slot time; ``until`` defaults to now, ``since`` to an hour before
  it; at most ``MAX_WINDOW`` (7 days) wide: the window bounds what PostgreSQL scans (a BRIN range on the
  slot time), so a tenant's history never costs a scan of everyone's.
- ``status`` (repeatable) filters: ``status=failed&status=timed_out`` lists what went wrong.
- Pages: ``next_cursor`` (opaque) continues after the last row of a full page, in the same order.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from litestar import Controller, Request, get
from litestar.datastructures import State
from litestar.params import FromQuery

from protocol.errors import SpecError
from protocol.executions import Execution, ExecutionStatus
from scheduler_node.store import ApiKey, list_tenant_executions

from . import paths
from .auth import READER
from .cursors import decode_cursor, encode_cursor

__all__ = ["ExecutionController", "TenantExecutions", "check_statuses"]

MAX_WINDOW = timedelta(days=7)


class TenantExecutions(msgspec.Struct, frozen=True):
    items: list[Execution]
    next_cursor: str | None = None


def check_statuses(given: list[str] | None) -> list[ExecutionStatus] | None:
    known = {s.value for s in ExecutionStatus}
    if bad := [s for s in given or [] if s not in known]:
        raise SpecError("status", f"'{bad[0][:40]}' is not an execution status ({', '.join(sorted(known))})")
    return [ExecutionStatus(s) for s in given or []] or None


def _aware(value: datetime | None, field: str) -> datetime | None:
    if value is not None and value.tzinfo is None:
        raise SpecError(field, "needs a UTC offset or Z")
    return value


class ExecutionController(Controller):
    path = paths.EXECUTIONS
    tags = ["executions"]

    @get("/", opt=READER, operation_id="listExecutions",
         summary="The tenant's executions across its jobs, newest slot first, in a time window")  # fmt: skip
    async def index(self, request: Request[ApiKey, Any, State], status: FromQuery[list[str] | None] = None,
                    since: FromQuery[datetime | None] = None, until: FromQuery[datetime | None] = None,
                    cursor: FromQuery[str | None] = None,
                    limit: FromQuery[int] = 50) -> TenantExecutions:  # fmt: skip
        if not 1 <= limit <= 500:
            raise SpecError("limit", "must be 1-500")
        end = _aware(until, "until") or datetime.now(UTC)
        start = _aware(since, "since") or end - timedelta(hours=1)
        if start >= end:
            raise SpecError("since", "must be before until")
        if end - start > MAX_WINDOW:
            raise SpecError("since", f"the window is at most {MAX_WINDOW.days} days: page through older ones")
        items = await list_tenant_executions(
            request.app.state.pool, tenant=request.user.tenant, since=start, until=end,
            statuses=check_statuses(status), limit=limit,
            after=None if cursor is None else decode_cursor(cursor, tuple[datetime, uuid.UUID, str]),
        )  # fmt: skip
        if len(items) < limit:
            return TenantExecutions(items)
        last = items[-1]
        return TenantExecutions(items, encode_cursor(last.scheduled_at, last.job_id, last.origin))
