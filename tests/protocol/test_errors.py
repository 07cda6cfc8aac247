"""protocol.errors: the documented tree is the real one, and the errors carry what their handlers read."""

from __future__ import annotations

import re

from protocol import errors
from protocol.errors import CallerError, NotOwnerError, ShardwheelError

_TREE_LINE = re.compile(r"^(?P<indent>[ │├└─]*?)(?P<name>[A-Z]\w+)\s")


def _documented_parents() -> dict[str, str | None]:
    """``{class: parent}`` read from the tree drawn at the top of errors.py (4 columns per level)."""
    assert errors.__doc__ is not None
    parents: dict[str, str | None] = {}
    stack: list[str] = []
    for line in errors.__doc__.splitlines():
        m = _TREE_LINE.match(line.removeprefix("    "))
        if m is None or m["name"] not in errors.__all__:
            continue
        depth = len(m["indent"]) // 4
        del stack[depth:]
        parents[m["name"]] = stack[-1] if stack else None
        stack.append(m["name"])
    return parents


def test_docstring_tree_matches_the_classes() -> None:
    documented = _documented_parents()
    assert set(documented) == set(errors.__all__)
    for name, parent in documented.items():
        base = getattr(errors, name).__bases__[0]
        assert (base.__name__ if parent is not None else None) == parent, name


def test_not_owner_error() -> None:
    e = NotOwnerError(7, "http://n2:8081")
    assert (e.shard, e.owner_hint, e.status_hint) == (7, "http://n2:8081", 409)
    assert str(e) == "shard 7 is not owned by this node"
    assert isinstance(e, ShardwheelError) and not isinstance(e, CallerError)


def test_every_error_answers_as_rfc_9457_problem_details() -> None:
    import msgspec

    from protocol.errors import (
        Conflict,
        DatabaseUnavailable,
        Fenced,
        InternalError,
        NotFound,
        NotOwnerError,
        SpecError,
        VersionMismatch,
    )
    from protocol.internal import NotOwner, VersionConflict
    from protocol.problems import from_error

    invalid = from_error(SpecError("schedule.cron", "minute field '61' out of range 0-59"))
    assert msgspec.to_builtins(invalid) == {
        "type": "urn:shardwheel:problem:invalid-field", "title": "A field of the request is invalid",
        "status": 422, "detail": "schedule.cron: minute field '61' out of range 0-59",
        "errors": [{"field": "schedule.cron", "message": "minute field '61' out of range 0-59"}],
    }  # fmt: skip
    # The 409 and 412 bodies still decode as the internal API's NotOwner and VersionConflict.
    not_owner = msgspec.json.encode(from_error(NotOwnerError(7, "http://n2:8081")))
    assert msgspec.json.decode(not_owner, type=NotOwner) == NotOwner(7, "http://n2:8081")
    stale = msgspec.json.encode(from_error(VersionMismatch(3, 4)))
    assert msgspec.json.decode(stale, type=VersionConflict) == VersionConflict(3, 4)
    assert "shard" not in msgspec.json.decode(stale)  # absent members are left out, never null
    kinds = {type(e).__name__: (p.status, p.kind) for e in (NotFound("x"), Conflict("y"), DatabaseUnavailable("z"),
             Fenced([1])) if (p := from_error(e))}  # fmt: skip
    assert kinds == {"NotFound": (404, "not-found"), "Conflict": (409, "conflict"),
                     "DatabaseUnavailable": (503, "unavailable"), "Fenced": (409, "conflict")}  # fmt: skip
    bug = from_error(InternalError("KeyError: 'secret detail'"))
    assert (bug.status, bug.kind, bug.detail) == (500, "internal", "internal error; the node's log has the details")
