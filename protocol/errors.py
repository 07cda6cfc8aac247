"""The error tree shared by every part of Shardwheel.

    ShardwheelError                 base; carries ``status_hint`` (the HTTP status a server should answer)
    ├── CallerError                 the caller's fault (4xx)
    │   ├── SpecError               a field of a request is invalid: ``field`` names it (``schedule.cron``), 422
    │   ├── NotFound                404
    │   ├── VersionMismatch         If-Match / expected_version does not match the stored version, 412
    │   ├── Conflict                the request conflicts with stored state (a deleted job's id...), 409
    │   ├── KeyReused               an Idempotency-Key already used with another request, 422
    │   └── QuotaExceeded           the tenant's job quota would be passed, 403
    ├── NotOwnerError               this node does not own the job's shard (``shard``, ``owner_hint``), 409;
    │                               answered as ``protocol.internal.NotOwner``: the control API re-routes
    ├── TargetError                 a job's HTTP target misbehaved (connection refused, bad response...); recorded
    │                               on the execution, never raised to API callers
    └── InternalError               ours: a bug or an infrastructure failure (5xx)
        ├── Fenced                  a write carried an epoch older than the shard's current one
        └── InfrastructureError     PostgreSQL or etcd could not be reached or could not start
            └── DatabaseUnavailable PostgreSQL is unreachable or unwilling for now (a transient error,
                                    ``scheduler_node/store/errors.py``): ride it out, retry later

Messages are one line and say what is wrong and, for ``SpecError``, where: ``str(err)`` is
``"<field>: <problem>"`` so a 422 body, a CLI error and a log line read the same.
"""

from __future__ import annotations

__all__ = [
    "CallerError",
    "Conflict",
    "DatabaseUnavailable",
    "Fenced",
    "InfrastructureError",
    "InternalError",
    "KeyReused",
    "NotFound",
    "NotOwnerError",
    "QuotaExceeded",
    "ShardwheelError",
    "SpecError",
    "TargetError",
    "VersionMismatch",
]


class ShardwheelError(Exception):
    status_hint: int = 500


class CallerError(ShardwheelError):
    status_hint = 400


class SpecError(CallerError):
    """An invalid field. ``field`` is a dotted path without the leading ``$.`` (``target.headers.X-Foo``)."""

    status_hint = 422

    def __init__(self, field: str, problem: str) -> None:
        # One line whatever the input echoed in it (a tag with a line break): control characters escaped.
        self.field = _one_line(field)
        self.problem = problem = _one_line(problem)
        super().__init__(f"{self.field}: {problem}" if field else problem)

    def within(self, prefix: str) -> SpecError:
        """The same error seen from an enclosing object (``cron`` inside ``schedule``)."""
        return SpecError(f"{prefix}.{self.field}" if self.field else prefix, self.problem)


def _one_line(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class NotFound(CallerError):
    status_hint = 404


class VersionMismatch(CallerError):
    status_hint = 412

    def __init__(self, expected: int, actual: int) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(f"version mismatch: expected {expected}, stored version is {actual}")


class Conflict(CallerError):
    status_hint = 409


class KeyReused(CallerError):
    """The IETF Idempotency-Key draft's answer to a key sent again with another request."""

    status_hint = 422


class QuotaExceeded(CallerError):
    status_hint = 403


class NotOwnerError(ShardwheelError):
    """Neither the caller's fault nor ours: ownership moved (or the caller's owner cache is stale)."""

    status_hint = 409

    def __init__(self, shard: int, owner_hint: str | None) -> None:
        self.shard = shard
        self.owner_hint = owner_hint
        super().__init__(f"shard {shard} is not owned by this node")


class TargetError(ShardwheelError):
    status_hint = 502


class InternalError(ShardwheelError):
    status_hint = 500


class Fenced(InternalError):
    status_hint = 409

    def __init__(self, shards: list[int] | set[int] | frozenset[int]) -> None:
        self.shards = frozenset(shards)
        super().__init__(f"fenced: a newer owner holds shard(s) {sorted(self.shards)}")


class InfrastructureError(InternalError):
    status_hint = 503


class DatabaseUnavailable(InfrastructureError):
    """PostgreSQL is unreachable or refused a statement for now; the same call may succeed later."""
