"""The layering rules (DESIGN.md §1, §5b; docs/architecture.md "Layout"), read from every module's imports.

Two services on shared layers: ``protocol`` (pure, the shared language) at the bottom;
``scheduler_node.store`` and ``scheduler_node.coordination`` shared by the trio node and the asyncio control
API; the node and the API above them, neither importing the other. The rules, one row each in ``RULES``:

- a: ``protocol`` imports no other project package and no I/O library (trio, asyncio, asyncpg, grpc, ...).
- b: ``control_api`` imports from ``scheduler_node`` only ``store`` and ``coordination``; and b-trio:
  nothing that ``control_api``, ``scheduler_node.store`` or ``scheduler_node.coordination`` loads imports
  trio (checked on the import graph, and once at run time in a subprocess, which also sees third parties).
- c: nothing in ``scheduler_node`` reaches ``control_api``.
- d: the pure cores (wheel, planner, schedule math, retry, misfire, run rules) reach no trio,
  asyncpg, grpc or etcd client.
- e: the engine does not reach its HTTP edge (``scheduler_node.http_api``).
- f: the dispatcher does not reach the retry policy: it reports what happened, the engine decides.
- g: bench modules take no underscore-prefixed name from one another.

How imports are read: every ``import`` and ``from ... import`` anywhere in a module (top level, in
functions, under ``if TYPE_CHECKING``), relative ones resolved to absolute names; ``from pkg import sub``
imports the submodule ``pkg.sub`` when it is one. "Reaches" is everything importing the module runs: its
enclosing packages' ``__init__`` first (importing ``a.b.c`` runs ``a`` and ``a.b``), then its imports,
transitively.
"""

from __future__ import annotations

import ast
import enum
import json
import os
import subprocess
import sys
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("protocol", "scheduler_node", "control_api", "bench", "shardwheel")

# Patterns name modules: "pkg.*" is the package and everything in it, "*" every module, anything else exactly
# that module. Third-party and stdlib modules are matched the same way ("trio.*" also matches trio.lowlevel).
TRIO = ("trio.*", "trio_asyncio.*")
NO_IO = (*TRIO, "asyncio.*", "asyncpg.*", "grpc.*", "pyetcd.*", "httpx.*", "httptools.*", "socket", "ssl",
         "select")  # fmt: skip
PURE_CORES = (
    "scheduler_node.wheel",
    "protocol.planner",
    "protocol.slots.*",
    "scheduler_node.retry",
    "scheduler_node.misfire",
    "scheduler_node.run_rules",
)


class Scope(enum.Enum):
    IMPORTS = "the module's own import statements"
    REACH = "everything importing the module runs"
    PRIVATE_NAMES = "underscore-prefixed names the module takes from another module"


@dataclass(frozen=True)
class Rule:
    id: str
    says: str
    scope: Scope
    sources: tuple[str, ...]  # the importing modules the rule applies to
    forbidden: tuple[str, ...]  # what they must not import / reach / take private names from
    allowed: tuple[str, ...] = ()  # exceptions carved out of ``forbidden``


RULES = (
    Rule("a", "protocol imports nothing of the project and no I/O library", Scope.IMPORTS,
         ("protocol.*",), (*(f"{p}.*" for p in PACKAGES if p != "protocol"), *NO_IO)),
    Rule("b", "control_api imports from scheduler_node only store and coordination", Scope.IMPORTS,
         ("control_api.*",), ("scheduler_node.*",),
         ("scheduler_node.store.*", "scheduler_node.coordination.*")),
    Rule("b-trio", "control_api, scheduler_node.store and scheduler_node.coordination load no trio",
         Scope.REACH, ("control_api.*", "scheduler_node.store", "scheduler_node.coordination"), TRIO),
    Rule("c", "scheduler_node never imports control_api", Scope.REACH,
         ("scheduler_node.*",), ("control_api.*",)),
    Rule("d", "the pure cores reach no trio, asyncpg, grpc or etcd client", Scope.REACH,
         PURE_CORES, (*TRIO, "asyncpg.*", "grpc.*", "pyetcd.*")),
    Rule("e", "the engine does not import its HTTP edge", Scope.REACH,
         ("scheduler_node.engine",), ("scheduler_node.http_api",)),
    Rule("f", "the dispatcher does not import the retry policy (it reports, the engine decides)", Scope.REACH,
         ("scheduler_node.dispatch.*",), ("scheduler_node.retry",)),
    Rule("g", "bench modules use each other's public names only", Scope.PRIVATE_NAMES,
         ("*",), ("bench.*",)),
)  # fmt: skip


# --- reading the imports ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Import:
    line: int
    target: str  # absolute module name
    name: str | None = None  # the name taken from ``target`` (``from m import name``, ``m.name``), if any


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    imports: tuple[Import, ...]  # every import statement, in line order
    attributes: tuple[Import, ...]  # ``alias.attr`` where ``alias`` is bound to an imported project module


def matches(name: str, patterns: Iterable[str]) -> bool:
    for p in patterns:
        if p == "*" or name == p or (p.endswith(".*") and (name == p[:-2] or name.startswith(p[:-1]))):
            return True
    return False


def load(root: Path) -> dict[str, Module]:
    """Every module of the project packages under ``root``, by dotted name."""
    paths: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return {name: _parse(name, path, set(paths)) for name, path in paths.items()}


def _parse(name: str, path: Path, project: set[str]) -> Module:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    imports: list[Import] = []
    aliases: dict[str, str] = {}  # local name -> the project module bound to it
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                imports.append(Import(node.lineno, a.name))
                if a.asname and a.name in project:
                    aliases[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(package, node.level, node.module)
            for a in node.names:
                if f"{base}.{a.name}" in project:  # ``from pkg import submodule``
                    imports.append(Import(node.lineno, f"{base}.{a.name}"))
                    aliases[a.asname or a.name] = f"{base}.{a.name}"
                else:
                    imports.append(Import(node.lineno, base, a.name))
    attributes = [
        Import(node.lineno, aliases[node.value.id], node.attr)
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
    ]
    return Module(name, path, tuple(sorted(imports, key=_by_line)), tuple(sorted(attributes, key=_by_line)))


def _by_line(i: Import) -> tuple[int, str, str]:
    return i.line, i.target, i.name or ""


def _absolute(package: str, level: int, module: str | None) -> str:
    """``from ..x import y`` in package ``a.b.c`` -> ``a.b.x``."""
    if level == 0:
        assert module is not None
        return module
    parts = package.split(".")
    base = ".".join(parts[: len(parts) - level + 1])
    return f"{base}.{module}" if module else base


def runs(target: str, modules: Mapping[str, Module]) -> list[str]:
    """The project modules that importing ``target`` runs: its packages' ``__init__`` first, then itself."""
    parts = target.split(".")
    return [m for m in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if m in modules]


@dataclass(frozen=True)
class Hop:
    module: str
    line: int
    target: str
    ran: str  # the module this hop leads to: ``target`` or one of its enclosing packages

    def __str__(self) -> str:
        runs = "" if self.ran == self.target else f" (which runs {self.ran})"
        return f"{self.module}:{self.line} imports {self.target}{runs}"


def reach(source: str, modules: Mapping[str, Module]) -> dict[str, list[Hop]]:
    """Every module (project or not) that importing ``source`` runs, each with a shortest chain of imports."""
    found: dict[str, list[Hop]] = {}
    first = runs(source, modules)  # its packages' __init__, then itself
    queue: deque[tuple[str, list[Hop]]] = deque((m, []) for m in first)
    seen = set(first)
    while queue:
        name, chain = queue.popleft()
        for imp in modules[name].imports:
            for m in runs(imp.target, modules) or [imp.target]:  # nothing ran: not a project module
                path = [*chain, Hop(name, imp.line, imp.target, m)]
                found.setdefault(m, path)
                if m in modules and m not in seen:
                    seen.add(m)
                    queue.append((m, path))
    return found


# --- checking -----------------------------------------------------------------------------------------------


def check(root: Path, rules: Iterable[Rule] = RULES) -> list[str]:
    """One line per broken rule: the importing module, the line, the forbidden import and the rule."""
    modules = load(root)
    problems: list[str] = []
    for rule in rules:
        for pattern in rule.sources:  # a rule about a module that moved away would pass for ever
            if not any(matches(m, [pattern]) for m in modules):
                problems.append(f"rule {rule.id}: no module matches {pattern!r}: update RULES")
        for m in sorted(m for m in modules if matches(m, rule.sources)):
            problems.extend(f"{p} -- rule {rule.id}: {rule.says}" for p in _broken(rule, modules[m], modules))
    return problems


def _forbidden(rule: Rule, target: str) -> bool:
    return matches(target, rule.forbidden) and not matches(target, rule.allowed)


def _broken(rule: Rule, module: Module, modules: Mapping[str, Module]) -> list[str]:
    match rule.scope:
        case Scope.IMPORTS:
            bad = [i for i in module.imports if _forbidden(rule, i.target)]
            return [f"{module.name}:{i.line} imports {i.target}" for i in bad]
        case Scope.REACH:
            reached = reach(module.name, modules)
            return [
                f"{module.name} reaches {target}: " + " -> ".join(map(str, chain))
                for target, chain in sorted(reached.items())
                if _forbidden(rule, target)
            ]
        case Scope.PRIVATE_NAMES:
            return [
                f"{module.name}:{i.line} takes {i.name} from {i.target}"
                for i in (*module.imports, *module.attributes)
                if i.name is not None
                and i.name.startswith("_")
                and not i.name.endswith("__")
                and i.target != module.name
                and _forbidden(rule, i.target)
            ]


# --- the tests ----------------------------------------------------------------------------------------------


def test_the_project_keeps_the_rules() -> None:
    problems = check(ROOT)
    assert not problems, "layering rules broken:\n" + "\n".join(problems)


def test_store_and_coordination_load_no_trio_at_run_time() -> None:
    """What the control API imports, imported for real in a fresh interpreter: trio must stay out."""
    code = (
        "import json, sys, scheduler_node.store, scheduler_node.coordination\n"
        "print(json.dumps({'trio': sorted(m for m in ('trio', 'trio_asyncio') if m in sys.modules),"
        " 'files': [scheduler_node.store.__file__, scheduler_node.coordination.__file__]}))"
    )
    # This checkout first: the venv's editable install may point at another one.
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": path},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(out.stdout)
    assert all(Path(f).is_relative_to(ROOT) for f in result["files"]), result["files"]  # this checkout's code
    assert result["trio"] == []


# A tree that breaks every rule once, in every way an import can hide: relative at two levels, inside a
# function, under TYPE_CHECKING, two hops away, through a package's __init__, as an attribute of a module.
BROKEN_TREE = {
    "protocol/__init__.py": "from .jobs import Job\n",
    "protocol/jobs.py": "import socket\nfrom scheduler_node import wheel\n",  # a: I/O; a: the node
    "protocol/planner.py": "",
    "protocol/slots/__init__.py": "import grpc\n",  # a; and d for every module in it: its package runs first
    "protocol/slots/rules.py": "",
    "scheduler_node/__init__.py": "",
    "scheduler_node/engine.py": "def later():\n    from .http_api import NotOwnerError\n",  # e: in a function
    "scheduler_node/http_api.py": "",
    "scheduler_node/node.py": "import control_api.app\n",  # c
    "scheduler_node/wheel.py": (  # d: two hops away, under TYPE_CHECKING
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .helpers import Helper\n"
    ),
    "scheduler_node/helpers.py": "from asyncpg import Pool\n",
    "scheduler_node/retry.py": "",
    "scheduler_node/misfire.py": "",
    "scheduler_node/run_rules.py": "",
    "scheduler_node/trio_store.py": "import trio\n",
    "scheduler_node/store/__init__.py": "from .jobs import get_job\n",
    "scheduler_node/store/jobs.py": "from ..trio_store import TrioStore\n",  # b-trio: store loads trio
    "scheduler_node/coordination/__init__.py": "from .trio_adapter import TrioCoordinator\n",
    "scheduler_node/coordination/trio_adapter.py": "import trio\n",
    "scheduler_node/coordination/view.py": "",
    "scheduler_node/dispatch/__init__.py": "",
    "scheduler_node/dispatch/outcome.py": "from ..retry import AttemptResult\n",  # f: relative, two levels
    "control_api/__init__.py": "",
    "control_api/app.py": (  # b: the engine; b-trio: through the package __init__ the view's import runs
        "from scheduler_node import engine\nfrom scheduler_node.coordination.view import ClusterView\n"
        "from scheduler_node.store import jobs\n"
    ),
    "bench/__init__.py": "",
    "bench/steady.py": "def _prepare_db() -> None: ...\n",
    "bench/scale.py": "from .steady import _prepare_db\n",  # g
    "bench/failover.py": "from . import steady\n\nsteady._prepare_db()\n",  # g: as an attribute
}


def test_the_checker_finds_each_broken_rule(tmp_path: Path) -> None:
    for name, text in BROKEN_TREE.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    problems = check(tmp_path)
    broken = {p.split(" -- rule ")[1].split(":")[0] for p in problems}
    assert broken == {r.id for r in RULES}, "\n".join(problems)
    expected = [
        "protocol.jobs:1 imports socket -- rule a",
        "protocol.jobs:2 imports scheduler_node.wheel -- rule a",
        "control_api.app:1 imports scheduler_node.engine -- rule b:",
        "scheduler_node.store reaches trio: scheduler_node.store:1 imports scheduler_node.store.jobs"
        " -> scheduler_node.store.jobs:1 imports scheduler_node.trio_store -> scheduler_node.trio_store:1"
        " imports trio -- rule b-trio",
        "control_api.app reaches trio: control_api.app:2 imports scheduler_node.coordination.view"
        " (which runs scheduler_node.coordination) -> scheduler_node.coordination:1 imports"
        " scheduler_node.coordination.trio_adapter -> scheduler_node.coordination.trio_adapter:1"
        " imports trio",
        "scheduler_node.node reaches control_api: scheduler_node.node:1 imports control_api.app (which runs"
        " control_api) -- rule c",
        "scheduler_node.wheel reaches asyncpg: scheduler_node.wheel:3 imports scheduler_node.helpers"
        " -> scheduler_node.helpers:1 imports asyncpg -- rule d",
        "protocol.slots:1 imports grpc -- rule a",
        "protocol.slots.rules reaches grpc: protocol.slots:1 imports grpc -- rule d",
        "scheduler_node.engine reaches scheduler_node.http_api: scheduler_node.engine:2 imports"
        " scheduler_node.http_api -- rule e",
        "scheduler_node.dispatch.outcome reaches scheduler_node.retry: scheduler_node.dispatch.outcome:1"
        " imports scheduler_node.retry -- rule f",
        "bench.scale:1 takes _prepare_db from bench.steady -- rule g",
        "bench.failover:3 takes _prepare_db from bench.steady -- rule g",
    ]
    for line in expected:
        assert any(p.startswith(line) for p in problems), f"{line!r} not in\n" + "\n".join(problems)
    # Allowed imports are not reported: control_api may import the store and coordination (rule b), only not
    # load trio through them (b-trio).
    assert not any(p.startswith(("control_api.app:2", "control_api.app:3")) for p in problems)


def test_the_checker_reports_a_rule_whose_modules_are_gone(tmp_path: Path) -> None:
    (tmp_path / "protocol").mkdir()
    (tmp_path / "protocol" / "__init__.py").write_text("")
    gone = Rule("x", "about a module that moved", Scope.IMPORTS, ("scheduler_node.planner",), ("trio.*",))
    assert check(tmp_path, [gone]) == ["rule x: no module matches 'scheduler_node.planner': update RULES"]


def test_relative_imports_resolve() -> None:
    assert _absolute("a.b", 1, "c") == "a.b.c"
    assert _absolute("a.b", 2, "c") == "a.c"
    assert _absolute("a.b", 2, None) == "a"
    assert _absolute("a.b", 0, "x.y") == "x.y"


@pytest.mark.parametrize(
    ("name", "pattern", "expected"),
    [
        ("trio", "trio.*", True),
        ("trio.lowlevel", "trio.*", True),
        ("trio_asyncio", "trio.*", False),
        ("scheduler_node.store", "scheduler_node.store", True),
        ("scheduler_node.store.jobs", "scheduler_node.store", False),
        ("anything", "*", True),
    ],
)
def test_patterns(name: str, pattern: str, expected: bool) -> None:
    assert matches(name, [pattern]) is expected


def import_cycle(modules: Mapping[str, Module], package: str) -> list[str]:
    """A cycle of direct imports (``TYPE_CHECKING`` ones included) among ``package``'s modules, or []."""
    inside = {m for m in modules if m.startswith(f"{package}.")}
    edges = {m: sorted({i.target for i in modules[m].imports if i.target in inside}) for m in inside}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str]:
        state[m] = 1
        path.append(m)
        for n in edges[m]:
            if state.get(n) == 1:
                return [*path[path.index(n) :], n]
            if n not in state and (found := visit(n)):
                return found
        path.pop()
        state[m] = 2
        return []

    for m in sorted(inside):
        if m not in state and (found := visit(m)):
            return found
    return []


def test_the_dispatcher_modules_import_each_other_without_a_cycle() -> None:
    # request, outcome -> connection -> pool -> exchange -> stale, reactor -> dispatcher (docs/architecture.md)
    cycle = import_cycle(load(ROOT), "scheduler_node.dispatch")
    assert not cycle, " -> ".join(cycle)


def test_the_cycle_finder_finds_one_hidden_behind_type_checking(tmp_path: Path) -> None:
    files = {
        "scheduler_node/__init__.py": "",
        "scheduler_node/dispatch/__init__.py": "from .dispatcher import Dispatcher\n",
        "scheduler_node/dispatch/dispatcher.py": "from .pool import OriginPool\n",
        "scheduler_node/dispatch/pool.py": (
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .dispatcher import Exchange\n"
        ),
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert import_cycle(load(tmp_path), "scheduler_node.dispatch") == [
        "scheduler_node.dispatch.dispatcher",
        "scheduler_node.dispatch.pool",
        "scheduler_node.dispatch.dispatcher",
    ]
