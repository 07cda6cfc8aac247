"""The firing path's statements all carry the shard: what distributing the schema on ``shard`` with an existing
distributed PostgreSQL (Citus) needs (docs/capacity.md), checked on the SQL text itself.

Each statement (every SQL string a firing-path function of the store runs, with the module constants it names)
is cut into its parts (CTEs, UNION branches); every part that reads or writes a shard-keyed table must name the
``shard`` column, so that each part can be routed to, or joined within, one shard's placement.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from types import ModuleType

import pytest

SHARD_KEYED = ("jobs", "job_cursor", "executions", "execution_attempts", "shard_epochs", "alerts", "audit_log")
FIRING_PATH = {
    "scheduler_node.store.executions": ["claim_rows", "own_unsent_claims", "write_results", "delete_unsent_claims",
                                        "take_over_shard", "job_cursors", "unsent_fired_claims"],
    "scheduler_node.store.jobs": ["due_jobs", "jobs_by_id", "raise_next_fire_at", "create_jobs",
                                 "_set_state"],
    "scheduler_node.store.epochs": ["lock_fence"],
}  # fmt: skip
_TABLE = re.compile(rf"\b(?:FROM|JOIN|INTO|UPDATE)\s+({'|'.join(SHARD_KEYED)})\b", re.I)
_PART = re.compile(r"\),\s*\w+\s+AS\s+\(|\bUNION\s+ALL\b|\bWITH\b", re.I)


def _statements(module: ModuleType, function: str) -> list[str]:
    """The SQL a function runs: its string literals (f-strings with their constant parts) and the module's
    string constants it names."""
    tree = ast.parse(inspect.getsource(getattr(module, function)))
    sql = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE)\b")

    def text(node: ast.expr) -> str:  # an f-string's parts, a named module constant as its value
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.FormattedValue) and isinstance(node.value, ast.Name):
            value = getattr(module, node.value.id, None)
            return value if isinstance(value, str) else " {} "
        return " {} "

    inside_fstrings = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            found.append("".join(text(v) for v in node.values))
        elif isinstance(node, ast.Constant) and id(node) not in inside_fstrings and isinstance(node.value, str):
            found.append(node.value)
        elif isinstance(node, ast.Name) and isinstance(value := getattr(module, node.id, None), str):
            found.append(value)
    return [s for s in found if sql.search(s)]


def _unkeyed_parts(sql: str) -> list[str]:
    return [part.strip()[:120] for part in _PART.split(sql) if _TABLE.search(part) and not re.search(r"\bshard\b", part)]


@pytest.mark.parametrize(("module_name", "function"),
                         [(m, f) for m, fs in FIRING_PATH.items() for f in fs])  # fmt: skip
def test_every_firing_path_statement_names_the_shard(module_name: str, function: str) -> None:
    module = importlib.import_module(module_name)
    statements = _statements(module, function)
    assert statements, f"{function}: no SQL found (a statement built another way would escape this check)"
    for sql in statements:
        assert _unkeyed_parts(sql) == [], (function, sql[:300])


def test_the_check_catches_a_statement_without_the_shard() -> None:
    assert _unkeyed_parts("SELECT job_id FROM executions WHERE job_id = $1")
    assert _unkeyed_parts("WITH a AS (SELECT 1 FROM jobs WHERE shard = $1), b AS (UPDATE job_cursor SET x = 1) SELECT 1")
    assert not _unkeyed_parts("SELECT job_id FROM executions WHERE shard = $1 AND job_id = $2")
