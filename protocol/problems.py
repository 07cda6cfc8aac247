"""Error bodies: RFC 9457 problem details, the one shape of every 4xx/5xx answer (the node's port, the API).

Rules:
- ``Content-Type: application/problem+json``; members ``type`` (a URN naming the kind of problem: clients
  branch on it, not on the wording), ``title`` (the kind in words, the same for every instance), ``status``,
  ``detail`` (this instance, one line) and, for invalid input, ``errors``: one ``{"field", "message"}`` per
  bad field, ``field`` a dotted path as ``SpecError`` names it (``schedule.cron``, ``target.headers.X-A``).
- Extension members carry what a caller acts on: ``shard`` and ``owner_hint`` (not-owner, so the body also
  decodes as ``protocol.internal.NotOwner``), ``expected`` and ``actual`` (version-mismatch, also a
  ``VersionConflict``). Absent members are left out, never null.
- Never a stack trace: an unexpected error is ``internal`` with a detail that says nothing of the code.

Example (422)::

    {"type": "urn:shardwheel:problem:invalid-field", "title": "A field of the request is invalid",
     "status": 422, "detail": "schedule.cron: minute field '61' out of range 0-59",
     "errors": [{"field": "schedule.cron", "message": "minute field '61' out of range 0-59"}]}
"""

from __future__ import annotations

import msgspec

from .errors import (
    Conflict,
    InfrastructureError,
    KeyReused,
    NotFound,
    NotOwnerError,
    QuotaExceeded,
    ShardwheelError,
    SpecError,
    VersionMismatch,
)

__all__ = ["CONTENT_TYPE", "FieldProblem", "Problem", "from_error", "problem"]

CONTENT_TYPE = "application/problem+json"

# kind -> title; the type URN is urn:shardwheel:problem:<kind>
TITLES = {
    "malformed": "The request could not be read",
    "invalid-field": "A field of the request is invalid",
    "unauthorized": "Missing or wrong credentials",
    "forbidden": "The credentials do not allow this",
    "rate-limited": "Too many requests; retry later",
    "not-found": "No such resource",
    "method-not-allowed": "Method not allowed here",
    "conflict": "The request conflicts with what is stored",
    "idempotency-key-reused": "The Idempotency-Key was used with another request",
    "quota-exceeded": "The tenant's job quota would be passed",
    "not-owner": "This node does not own the job's shard",
    "version-mismatch": "The stored version is not the expected one",
    "precondition-required": "This request needs If-Match with the version it changes",
    "too-large": "The request body is too large",
    "unavailable": "A dependency is unavailable; retry later",
    "internal": "Internal error",
}


class FieldProblem(msgspec.Struct, frozen=True):
    field: str
    message: str


class Problem(msgspec.Struct, frozen=True, omit_defaults=True):
    type: str
    title: str
    status: int
    detail: str
    errors: list[FieldProblem] = msgspec.field(default_factory=list)
    shard: int | None = None
    owner_hint: str | None = None
    expected: int | None = None
    actual: int | None = None

    @property
    def kind(self) -> str:
        return self.type.rpartition(":")[2]


def problem(status: int, kind: str, detail: str, errors: list[FieldProblem] | None = None) -> Problem:
    return Problem(f"urn:shardwheel:problem:{kind}", TITLES[kind], status, detail, errors or [])


def from_error(err: ShardwheelError) -> Problem:
    """The problem a ``ShardwheelError`` answers as; an error outside the tree is ``internal``."""
    match err:
        case SpecError():
            return problem(422, "invalid-field", str(err), [FieldProblem(err.field, err.problem)])
        case NotOwnerError():
            p = problem(409, "not-owner", str(err))
            return msgspec.structs.replace(p, shard=err.shard, owner_hint=err.owner_hint)
        case VersionMismatch():
            p = problem(412, "version-mismatch", str(err))
            return msgspec.structs.replace(p, expected=err.expected, actual=err.actual)
        case NotFound():
            return problem(404, "not-found", str(err))
        case Conflict():
            return problem(409, "conflict", str(err))
        case KeyReused():
            return problem(422, "idempotency-key-reused", str(err))
        case QuotaExceeded():
            return problem(403, "quota-exceeded", str(err))
        case InfrastructureError():
            return problem(503, "unavailable", str(err))
    if err.status_hint == 428:
        return problem(428, "precondition-required", str(err))
    if 400 <= err.status_hint < 500:
        return problem(err.status_hint, "malformed" if err.status_hint == 400 else "conflict", str(err))
    return problem(500, "internal", "internal error; the node's log has the details")
