"""``/v1/alerts``: a tenant's alerts, newest first, and their acknowledgement.

An alert is raised by a node (a slot that ended failed, a job auto-paused or broken), stored first and then
delivered to its webhook; acknowledging it only marks it for people's lists (delivery goes on).
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery

from protocol.errors import SpecError
from protocol.ids import parse_job_id
from scheduler_node.store import Alert, ApiKey, ack_alert, list_alerts

from . import paths
from .auth import READER, WRITER

__all__ = ["AlertController", "AlertList"]


class AlertList(msgspec.Struct, frozen=True):
    items: list[Alert]
    next_before: uuid.UUID | None = None  # pass as ``before`` for the next (older) page


class AlertController(Controller):
    path = paths.ALERTS
    tags = ["alerts"]

    @get("/", opt=READER, operation_id="listAlerts", summary="The tenant's alerts, newest first")
    async def index(self, request: Request[ApiKey, Any, State], unacked: FromQuery[bool] = False,
                    undelivered: FromQuery[bool] = False, before: FromQuery[str | None] = None,
                    limit: FromQuery[int] = 100) -> AlertList:  # fmt: skip
        if not 1 <= limit <= 1000:
            raise SpecError("limit", "must be 1-1000")
        items = await list_alerts(request.app.state.pool, tenant=request.user.tenant, unacked=unacked,
                                  undelivered=undelivered, limit=limit,
                                  before=None if before is None else parse_job_id(before, "before"))  # fmt: skip
        return AlertList(items, items[-1].id if len(items) == limit else None)

    @post("/{alert_id:str}/ack", opt=WRITER, operation_id="ackAlert", status_code=200,
          summary="Acknowledge an alert (idempotent)")  # fmt: skip
    async def ack(self, request: Request[ApiKey, Any, State], alert_id: FromPath[str]) -> Alert:
        return await ack_alert(request.app.state.pool, request.user.tenant, parse_job_id(alert_id, "id"),
                               f"key:{request.user.prefix}")  # fmt: skip
