"""Every 4xx/5xx of the control API as RFC 9457 problem details (``protocol.problems``), never a trace.

Our errors answer as ``problems.from_error`` says (the node's port answers the same way); Litestar's own
(no route, wrong method, 401/403 from authentication, a body it could not read) keep their status with our
shape; ``Unavailable`` adds ``Retry-After``; anything else is logged with its traceback and answered 500.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from protocol import problems
from protocol.errors import ShardwheelError

from .routing import Unavailable

__all__ = ["EXCEPTION_HANDLERS", "answered_status", "problem_response"]

log = logging.getLogger(__name__)

_KINDS = {400: "malformed", 401: "unauthorized", 403: "forbidden", 404: "not-found", 405: "method-not-allowed",
          409: "conflict", 413: "too-large", 429: "rate-limited", 503: "unavailable"}  # fmt: skip


def problem_response(problem: problems.Problem, headers: dict[str, str] | None = None) -> Response[bytes]:
    return Response(msgspec.json.encode(problem), status_code=problem.status, media_type=problems.CONTENT_TYPE,
                    headers=headers)  # fmt: skip


def _ours(_: Request[Any, Any, Any], exc: ShardwheelError) -> Response[bytes]:
    headers = {"retry-after": str(exc.retry_after_s)} if isinstance(exc, Unavailable) else None
    problem = problems.from_error(exc)
    if problem.status >= 500:
        log.error("%s", exc)
    return problem_response(problem, headers)


def _field_problems(exc: HTTPException) -> list[problems.FieldProblem]:
    """A query or path parameter of the wrong type, named as our own field errors are."""
    if not isinstance(exc, ValidationException) or not isinstance(exc.extra, list):
        return []
    return [problems.FieldProblem(str(e.get("key", "")), str(e.get("message", "invalid")))
            for e in exc.extra if isinstance(e, dict)]  # fmt: skip


def _litestar(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    if fields := _field_problems(exc):
        detail = "; ".join(f"{f.field}: {f.message}" for f in fields)
        return problem_response(problems.problem(422, "invalid-field", detail, fields))
    kind = _KINDS.get(status, "internal" if status >= 500 else "malformed")
    return problem_response(problems.problem(status, kind, exc.detail or kind), exc.headers)


def answered_status(exc: Exception) -> int:
    """The status the handlers here answer ``exc`` with."""
    if isinstance(exc, ShardwheelError):
        return problems.from_error(exc).status
    if isinstance(exc, HTTPException):
        return 422 if _field_problems(exc) else exc.status_code
    return 500


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.exception("control API: %s %s failed", request.method, request.url.path)
    return problem_response(problems.problem(500, "internal", "internal error; the API's log has the details"))


EXCEPTION_HANDLERS: dict[int | type[Exception], Any] = {
    ShardwheelError: _ours,
    HTTPException: _litestar,
    Exception: _unexpected,
}
