"""What the CLI prints for people: rich tables that fit an 80-column terminal (``--json`` prints the API's JSON).

Times are shown in UTC to the second (slots to the millisecond), long ids shortened to their first 8 characters
where a table would wrap (the full ids are in ``--json``), errors cut to one line.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from scheduler_node.ownership import format_shards

__all__ = ["console", "format_time", "print_cluster", "print_executions", "print_job", "print_jobs", "show", "table"]

console = Console(highlight=False, soft_wrap=False)


def format_time(value: str | None, ms: bool = False, year: bool = True) -> str:
    if not value:
        return "-"
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return t.strftime("%Y-%m-%d %H:%M:%S" if year else "%m-%d %H:%M:%S") + (f".{t.microsecond // 1000:03d}" if ms else "")


def table(*columns: str, right: tuple[str, ...] = (), widths: Mapping[str, int] | None = None) -> Table:
    """A borderless table, one space between columns (80 columns hold more), no cell wrapped: a cell wider than
    its ``widths`` entry ends in an ellipsis. Print it with ``show``."""
    t = Table(box=None, pad_edge=False, collapse_padding=True, padding=(0, 1))
    for col in columns:
        width = (widths or {}).get(col)
        t.add_column(col, justify="right" if col in right else "left", no_wrap=True, overflow="ellipsis",
                     max_width=width)  # fmt: skip
    return t


def show(t: Table, flexible: tuple[str, ...] = ()) -> None:
    """Print ``t``; when it is too wide only the ``flexible`` columns give way (the others keep their widest
    cell), so a long error is cut instead of every figure."""
    for column in t.columns:
        if column.header not in flexible:
            widest = max((len(str(c)) for c in column.cells), default=0)
            column.min_width = min(max(widest, len(str(column.header))), column.max_width or 1_000)
    console.print(t)


def schedule_text(schedule: Mapping[str, Any], tz: str = "UTC") -> str:
    kind = schedule.get("kind")
    text = f"{kind} {schedule.get(kind, '')}" if kind else str(schedule)
    return text if tz == "UTC" or kind == "at" else f"{text} {tz}"


def _cut(text: str | None, width: int) -> str:
    if not text:
        return "-"
    line = text.splitlines()[0] if text.strip() else text
    return line if len(line) <= width else line[: width - 1] + "…"


def print_jobs(jobs: Iterable[Mapping[str, Any]]) -> None:
    t = table("id", "name", "state", "schedule", "tags", widths={"name": 20, "schedule": 24, "tags": 12})
    for j in jobs:
        spec = j["spec"]
        t.add_row(j["id"], spec["name"], j["state"], schedule_text(spec["schedule"], spec.get("timezone", "UTC")),
                  ",".join(spec.get("tags") or []))  # fmt: skip
    show(t, flexible=("name", "schedule", "tags"))


def print_job(job: Mapping[str, Any]) -> None:
    spec = job["spec"]
    target = spec["target"]
    last = job.get("last_result") or {}
    rows = [
        ("id", job["id"]), ("name", spec["name"]), ("state", job["state"] + (f" ({job['state_reason']})"
                                                                              if job.get("state_reason") else "")),
        ("schedule", schedule_text(spec["schedule"], spec.get("timezone", "UTC"))),
        ("next firing", format_time(job.get("next_fire_at"), ms=True)),
        ("target", f"{target.get('method', 'POST')} {target['url']}"),
        ("semantics", spec.get("semantics", "")), ("tags", ", ".join(spec.get("tags") or []) or "-"),
        ("version", str(job["version"])), ("created", format_time(job.get("created_at"))),
        ("last result", f"{last.get('status')} {last.get('http_status') or ''} at "
                        f"{format_time(last.get('scheduled_at'), ms=True)}" if last else "-"),
    ]  # fmt: skip
    t = Table(box=None, show_header=False, pad_edge=False)
    t.add_column(style="bold")
    t.add_column(overflow="fold")
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)


_ORIGIN = {"scheduled": "sched"}


def print_executions(items: Iterable[Mapping[str, Any]], with_job: bool = False) -> None:
    """Newest first; ``drift`` is the dispatch lag (send start - slot), ``ms`` the request's duration."""
    cols = (["job"] if with_job else []) + ["slot (UTC)", "origin", "status", "try", "http", "drift", "ms", "error"]
    t = table(*cols, right=("try", "http", "drift", "ms"), widths={"job": 8, "error": 30 if with_job else 40})
    for e in items:
        lag, took = e.get("dispatch_lag_ms"), e.get("duration_ms")
        row = [str(e["job_id"])[:8]] if with_job else []
        row += [format_time(e["scheduled_at"], ms=True, year=False), _ORIGIN.get(e["origin"], e["origin"]), e["status"],
                str(e.get("attempt") or 0), str(e.get("http_status") or "-"), "-" if lag is None else str(lag),
                "-" if took is None else str(took), _cut(e.get("error"), 200)]  # fmt: skip
        t.add_row(*row)
    show(t, flexible=("error",))


def _num(value: Any, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_GRID_MAX = 1024  # shards drawn one character each up to this count; beyond, the owners' counts only


def _print_shard_map(status: Mapping[str, Any]) -> None:
    """One character per shard, 64 a row: the owner's letter, ``.`` unowned, ``*`` moving. Shards are spread
    over the nodes by hash, so a list of ranges per node would be long; a grid reads at a glance."""
    shards = status.get("shards") or {}
    members = sorted({s["owner"] for s in shards.values() if s.get("owner")} | {m["node"] for m in status["members"]})
    letter = {node: _LETTERS[i] if i < len(_LETTERS) else "?" for i, node in enumerate(members)}
    counts = {node: 0 for node in members}
    for s in shards.values():
        if s.get("owner"):
            counts[s["owner"]] += 1
    legend = "  ".join(f"{letter[n]} {_cut(n, 20)} ({counts[n]})" for n in members)
    console.print(f"shard map: {legend}  . unowned  * moving", overflow="fold")
    count = int(status["shard_count"])
    if count > _GRID_MAX:
        return
    moving = {int(m["shard"]) for m in status.get("moving") or []}
    cells = []
    for shard in range(count):
        owner = (shards.get(str(shard)) or {}).get("owner")
        cells.append("*" if shard in moving else letter.get(owner, ".") if owner else ".")
    for row in range(0, count, 64):
        console.print(f"  {row:>4} {''.join(cells[row : row + 64])}")


def print_cluster(status: Mapping[str, Any]) -> None:
    """Members with their figures, then the shard map: which node owns which ranges, what moves."""
    paused = " — rebalancing PAUSED" if status.get("rebalancing_paused") else ""
    console.print(f"cluster [bold]{status['cluster']}[/bold] — {status['shard_count']} shards{paused}")
    t = table("node", "shards", "fired/s", "lag p99", "clock", "state",
              right=("shards", "fired/s", "lag p99", "clock"), widths={"node": 24, "state": 22})
    for m in status["members"]:
        state = ("drained" if m.get("drained") else f"refusing: {m['refusing']}" if m.get("refusing")
                 else f"degraded: {m['degraded']}" if m.get("degraded") else "overloaded" if m.get("overloaded")
                 else "ok")  # fmt: skip
        t.add_row(m["node"], str(m["shards"]), _num(m.get("firings_per_s"), 1),
                      "-" if m.get("dispatch_lag_p99_ms") is None else f"{m['dispatch_lag_p99_ms']:,.0f} ms",
                  "-" if m.get("clock_offset_ms") is None else f"{m['clock_offset_ms']:+.1f} ms", state)  # fmt: skip
    show(t, flexible=("node", "state"))
    _print_shard_map(status)
    if status.get("moving"):
        moves = ", ".join(f"{m['shard']} {m['owner']}→{m.get('to') or 'plan'}" for m in status["moving"])
        console.print(f"moving: {moves}", overflow="fold")
    if status.get("pins"):
        console.print("pins: " + ", ".join(f"{s}→{n}" for s, n in sorted(status["pins"].items())), overflow="fold")
    if status.get("unowned_shards"):
        console.print(f"unowned: {format_shards(status['unowned_shards'])}", overflow="fold")
