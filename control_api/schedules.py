"""``POST /v1/schedules/preview``: the next instants of a schedule not yet a job (what the CLI's
``jobs preview --cron ... --tz ...`` shows), with the same math, validation and DST notes as a job's preview.

Body: ``{"schedule": {...}, "timezone": "Europe/London", "dst": {...}, "start_at": ..., "end_at": ..., "n": 10}``
(everything but ``schedule`` optional; unknown fields refused). ``n`` 1-100.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Controller, Request, post

from protocol.errors import SpecError
from protocol.jobs import DstPolicy, decode_job_spec
from protocol.schedules import Schedule
from protocol.slots.instants import PreviewInstant, preview_instants

from . import paths
from .auth import READER
from .bodies import json_object

__all__ = ["Preview", "PreviewRequest", "ScheduleController", "check_n"]

MAX_PREVIEW = 100


class PreviewRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The body, as the OpenAPI document shows it (decoded through ``decode_job_spec``, which names fields)."""

    schedule: Schedule
    timezone: str = "UTC"
    dst: DstPolicy = msgspec.field(default_factory=DstPolicy)
    start_at: datetime | None = None
    end_at: datetime | None = None
    n: int = 10


_FIELDS = frozenset(PreviewRequest.__struct_fields__)


class Preview(msgspec.Struct, frozen=True):
    instants: list[PreviewInstant]


def check_n(n: int) -> int:
    if not 1 <= n <= MAX_PREVIEW:
        raise SpecError("n", f"must be 1-{MAX_PREVIEW}")
    return n


class ScheduleController(Controller):
    path = paths.SCHEDULES
    tags = ["schedules"]

    @post("/preview", opt=READER, operation_id="previewSchedule", status_code=200,
          summary="The next instants of a schedule (UTC and local, DST notes), without creating a job")  # fmt: skip
    async def preview(self, request: Request[Any, Any, Any]) -> Preview:
        doc = await json_object(request, "a JSON object with a schedule")
        if unknown := sorted(set(doc) - _FIELDS):
            raise SpecError(unknown[0], "unknown field")
        n = doc.pop("n", 10)
        if not isinstance(n, int) or isinstance(n, bool):
            raise SpecError("n", "must be an integer")
        spec = decode_job_spec(msgspec.json.encode(
            {**doc, "name": "preview", "target": {"url": "https://preview.example/"}}
        ))  # fmt: skip
        return Preview(preview_instants(spec, datetime.now(UTC), check_n(n)))
