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
