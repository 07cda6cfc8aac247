"""``GET /v1/audit``: who changed what, newest first. A key reads its tenant's log; an admin key reads every
tenant's (``tenant`` narrows it). ``job_id`` narrows to one job's changes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import msgspec
from litestar import Controller, Request, get
from litestar.datastructures import State
from litestar.params import FromQuery

from protocol.errors import SpecError
from protocol.ids import parse_job_id
from protocol.shards import shard_of
from scheduler_node.store import ApiKey, AuditEntry, Role, list_audit

from . import paths
from .auth import READER
from .cursors import decode_cursor, encode_cursor

__all__ = ["AuditController", "AuditList"]


class AuditList(msgspec.Struct, frozen=True):
    items: list[AuditEntry]
    next_cursor: str | None = None


class AuditController(Controller):
    path = paths.AUDIT
    tags = ["audit"]

    @get("/", opt=READER, operation_id="listAudit", summary="Who changed what, newest first")
    async def index(self, request: Request[ApiKey, Any, State], job_id: FromQuery[str | None] = None,
                    tenant: FromQuery[str | None] = None, cursor: FromQuery[str | None] = None,
                    limit: FromQuery[int] = 100) -> AuditList:  # fmt: skip
        key: ApiKey = request.user
        if not 1 <= limit <= 1000:
            raise SpecError("limit", "must be 1-1000")
        if key.role is not Role.ADMIN:
            if tenant is not None and tenant != key.tenant:
                raise SpecError("tenant", "only an admin key reads another tenant's log")
            tenant = key.tenant
        jid = None if job_id is None else parse_job_id(job_id, "job_id")
        after = None if cursor is None else decode_cursor(cursor, tuple[datetime, uuid.UUID])
        state = request.app.state
        items = await list_audit(state.pool, tenant=tenant, job_id=jid, limit=limit, after=after,
                                 shard=None if jid is None else shard_of(jid, state.shard_count))  # fmt: skip
        return AuditList(items, encode_cursor(items[-1].at, items[-1].id) if len(items) == limit else None)
