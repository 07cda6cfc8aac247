"""The OpenAPI 3.1 document, completed from our own types: what Litestar cannot see by itself.

Handlers read their bodies themselves (strict decoding with errors naming fields, sealing, the egress policy),
so Litestar sees no body type. ``documented`` adds, from the msgspec types the handlers decode with:
- each body (``BODIES``: its type's JSON Schema and an example that decodes, a test checks it);
- the job answers that are built by hand (``Response[bytes]`` with an ``ETag``) as ``Job``;
- every error an operation can answer, as RFC 9457 problem details (``application/problem+json``):
  401, 403, 422, 429 and 503 everywhere; 404, 409, 412, 413 and 428 where they apply. Litestar's own 400
  (its validation shape) is replaced: a parameter of the wrong type is our 422.
The render plugins serve the same completed document to ``/docs``.
"""

from __future__ import annotations

import copy
from typing import Any

import msgspec
from litestar import Litestar, Request
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin

from protocol.jobs import Job, JobSpec
from protocol.problems import TITLES, Problem
from protocol.slots.backfill import BackfillRange

from .admin import KeyRequest, MoveRequest
from .bulk import JobBatchDoc, Selection
from .jobs import JobView
from .schedules import PreviewRequest

__all__ = ["BODIES", "DocumentedJson", "DocumentedSwagger", "documented", "documented_for"]

JOB_EXAMPLE: dict[str, Any] = {
    "name": "nightly-report",
    "description": "builds yesterday's report",
    "schedule": {"kind": "cron", "cron": "0 0 2 * * *"},
    "timezone": "Europe/London",
    "target": {"url": "https://reports.example.com/run", "method": "POST",
               "headers": {"Authorization": "Bearer <token>"}, "body": {"report": "daily"}},
    "retry": {"max_attempts": 3, "initial_backoff_ms": 2000},
    "tags": ["reports"],
}  # fmt: skip
EVERY_EXAMPLE: dict[str, Any] = {"name": "heartbeat", "schedule": {"kind": "every", "every": "30s"},
                                 "target": {"url": "https://status.example.com/ping"}}  # fmt: skip

# operationId -> (the type the handler decodes, an example); None: a JSON object (a merge patch)
BODIES: dict[str, tuple[Any, Any]] = {
    "createJob": (JobSpec, JOB_EXAMPLE),
    "replaceJob": (JobSpec, JOB_EXAMPLE),
    "patchJob": (None, {"description": "weekly now", "schedule": {"kind": "cron", "cron": "0 0 2 * * MON"},
                        "retry": {"max_attempts": 5}}),
    "createJobs": (JobBatchDoc, {"jobs": [JOB_EXAMPLE, EVERY_EXAMPLE]}),
    "bulkPauseJobs": (Selection, {"tag": "reports"}),
    "bulkResumeJobs": (Selection, {"tag": "reports"}),
    "bulkDeleteJobs": (Selection, {"ids": ["0196a5f0-3c1e-7d2a-9b4f-5e6d7c8b9a01"]}),
    "bulkTriggerJobs": (Selection, {"ids": ["0196a5f0-3c1e-7d2a-9b4f-5e6d7c8b9a01"]}),
    "backfillJob": (BackfillRange, {"from": "2026-11-01T00:00:00Z", "to": "2026-11-02T00:00:00Z"}),
    "previewSchedule": (PreviewRequest, {"schedule": {"kind": "cron", "cron": "0 30 1 * * *"},
                                         "timezone": "Europe/London", "n": 5}),
    "createKey": (KeyRequest, {"role": "writer", "tenant": "acme", "name": "ci"}),
    "moveShard": (MoveRequest, {"node": "node-2"}),
}
_JOB_ANSWERS = {"createJob": ("201", "Job"), "getJob": ("200", "JobView"), "replaceJob": ("200", "Job"),
                "patchJob": ("200", "Job")}
_PATCH_DOC = ("A JSON merge patch (RFC 7396) of the job's spec: objects merge key by key, null removes a key, "
              "anything else replaces; a schedule of another kind replaces the schedule.")  # fmt: skip


def _problem(status: int, kind: str, retry_after: bool = False) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": TITLES[kind],
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    if retry_after:
        answer["headers"] = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
    return answer


def _errors(method: str, path: str, op_id: str) -> dict[str, dict[str, Any]]:
    errors = {
        "401": _problem(401, "unauthorized"), "403": _problem(403, "forbidden"),
        "422": _problem(422, "invalid-field"), "429": _problem(429, "rate-limited", True),
        "503": _problem(503, "unavailable", True),
    }  # fmt: skip
    if "{" in path:
        errors["404"] = _problem(404, "not-found")
    if op_id in BODIES:
        errors["413"] = _problem(413, "too-large")
    if method in ("post", "put", "patch", "delete") and path.startswith("/v1/jobs"):
        errors["409"] = _problem(409, "conflict")
        if "{" in path:
            errors["412"] = _problem(412, "version-mismatch")
    if op_id in ("replaceJob", "patchJob"):
        errors["428"] = _problem(428, "precondition-required")
    return errors


def documented(schema: dict[str, Any]) -> dict[str, Any]:
    """Litestar's document completed (a copy; see the module rules)."""
    doc = copy.deepcopy(schema)
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    types = [t for t, _ in BODIES.values() if t is not None]
    _, defs = msgspec.json.schema_components([*types, Job, JobView, Problem],
                                             ref_template="#/components/schemas/{name}")  # fmt: skip
    for name, definition in defs.items():
        components.setdefault(name, definition)
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            op_id = op.get("operationId", "")
            responses = op.setdefault("responses", {})
            responses.pop("400", None)
            responses.update(_errors(method, path, op_id))
            if op_id in BODIES:
                kind, example = BODIES[op_id]
                body_schema: dict[str, Any] = (
                    {"type": "object", "description": _PATCH_DOC} if kind is None
                    else {"$ref": f"#/components/schemas/{kind.__name__}"}
                )  # fmt: skip
                media = "application/merge-patch+json" if kind is None else "application/json"
                op["requestBody"] = {"required": True, "content": {media: {"schema": body_schema,
                                                                          "example": example}}}
                if kind is None:  # a merge patch is also accepted as plain JSON
                    op["requestBody"]["content"]["application/json"] = op["requestBody"]["content"][media]
            if op_id in _JOB_ANSWERS:
                status, answer = _JOB_ANSWERS[op_id]
                responses[status] = {
                    "description": "the job, as stored (target header values redacted)",
                    "headers": {"ETag": {"description": "the job's version, for If-Match",
                                         "schema": {"type": "string"}}},
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{answer}"}}},
                }  # fmt: skip
    return doc


def documented_for(app: Litestar) -> dict[str, Any]:
    """The app's completed document, made once."""
    doc: dict[str, Any] | None = getattr(app.state, "openapi_document", None)
    if doc is None:
        doc = app.state.openapi_document = documented(app.openapi_schema.to_schema())
    return doc


class DocumentedJson(JsonRenderPlugin):
    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return super().render(request, documented_for(request.app))


class DocumentedSwagger(SwaggerRenderPlugin):
    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        return super().render(request, documented_for(request.app))
