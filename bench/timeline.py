"""What a bench run saw, second by second, from the sink's records. Pure: records and expectations in, figures out.

- ``timeline``: for each second of a window, the firings of its slot received (``fired``) with their drift
  p50/p99 (ms), and the firings that arrived during it, whatever their slot (``arrived``: a gap shows here).
- ``delivery``: per semantics, expected (job, second) pairs never received (lost) and received more than once
  (duplicates), over a window; the jobs are those the run created, with the semantics each was given.
- ``silence``: the longest stretch, in ms, in which a set of jobs received no firing at all (a failover's gap).
- ``sustained``: the highest rate of a ramp whose step kept p99 within the bound and lost nothing.
- ``recovery_s``: after a load drop, how long until every later second's slots arrived within a bound.
- ``drain``: a herd of one-shot jobs due at one instant: received, missing, doubled, and when the last arrived.
- ``windows``: the firings and drift p50/p99 of each window of ``width`` seconds (a soak's minutes).
- ``flatness``: a series against its first value: the largest ratio, and whether all stay within a bound.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .results import SinkRecord

__all__ = ["delivery", "drain", "flatness", "recovery_s", "silence_ms", "sustained", "timeline", "windows"]


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[k]


def timeline(records: Sequence[SinkRecord], t0: int, t1: int) -> list[dict[str, Any]]:
    """One entry per second in [t0, t1): ``{"t", "fired", "p50_ms", "p99_ms", "arrived"}`` (``windows`` of one
    second, NaN drift for a slot second that received nothing, and the firings that arrived in it)."""
    arrived = Counter(r.recv_ns // 1_000_000_000 for r in records)
    return [{**w, "arrived": arrived.get(w["t"], 0)} for w in windows(records, t0, t1, 1)]


def delivery(records: Iterable[SinkRecord], jobs: Mapping[str, str], t0: int, t1: int) -> dict[str, dict[str, int]]:
    """``{semantics: {"expected", "lost", "duplicates"}}`` for jobs firing every second over slots [t0, t1)."""
    seen = Counter((r.job, r.scheduled_ms // 1000) for r in records
                   if r.scheduled_ms is not None and r.job in jobs and t0 * 1000 <= r.scheduled_ms < t1 * 1000)  # fmt: skip
    out: dict[str, dict[str, int]] = {}
    for job, semantics in jobs.items():
        figures = out.setdefault(semantics, {"expected": 0, "lost": 0, "duplicates": 0})
        for second in range(t0, t1):
            n = seen.get((job, second), 0)
            figures["expected"] += 1
            figures["lost"] += n == 0
            figures["duplicates"] += max(0, n - 1)
    return out


def silence_ms(records: Iterable[SinkRecord], jobs: set[str], t0: int, t1: int) -> float:
    """The longest time between two consecutive arrivals of any firing of ``jobs`` for slots in [t0, t1)."""
    arrivals = sorted(r.recv_ns for r in records
                      if r.job in jobs and r.scheduled_ms is not None and t0 * 1000 <= r.scheduled_ms < t1 * 1000)  # fmt: skip
    if len(arrivals) < 2:
        return float("nan")
    return round(max(b - a for a, b in zip(arrivals, arrivals[1:], strict=False)) / 1e6, 1)


def sustained(steps: Sequence[Mapping[str, Any]], p99_bound_ms: float) -> float | None:
    """The highest offered rate among the steps before the first that lost a firing or passed the bound."""
    best = None
    for step in steps:
        if step["lost"] > 0 or not step["p99_ms"] <= p99_bound_ms:
            break
        best = step["rate"]
    return best


def recovery_s(line: Sequence[Mapping[str, Any]], since: int, bound_ms: float = 1000.0) -> int | None:
    """Seconds from ``since`` until the timeline's seconds all kept their p99 drift within ``bound_ms`` (a second
    whose slot got nothing counts as late); None if its last second still did not."""
    after = [p for p in line if p["t"] >= since]
    late = [p["t"] for p in after if not p["p99_ms"] <= bound_ms]  # NaN: nothing arrived for the slot
    if not late:
        return 0
    return None if late[-1] == after[-1]["t"] else late[-1] + 1 - since


def drain(records: Iterable[SinkRecord], jobs: Iterable[str], due_ms: int) -> dict[str, Any]:
    """A herd of one-shot ``jobs`` due at ``due_ms``: ``{"jobs", "received", "missing", "duplicates", "drain_s",
    "per_s"}``; ``drain_s``: from the due instant to the last arrival; ``per_s``: firings per second over it."""
    herd = set(jobs)
    seen = Counter(r.job for r in records if r.job in herd)
    last_ns = max((r.recv_ns for r in records if r.job in herd), default=None)
    drain_s = None if last_ns is None else max(0.001, (last_ns - due_ms * 1_000_000) / 1e9)
    received = sum(seen.values())
    return {"jobs": len(herd), "received": received, "missing": len(herd) - len(seen),
            "duplicates": received - len(seen), "drain_s": None if drain_s is None else round(drain_s, 3),
            "per_s": None if drain_s is None else round(received / drain_s, 1)}  # fmt: skip


def windows(records: Iterable[SinkRecord], t0: int, t1: int, width: int) -> list[dict[str, Any]]:
    """One entry per ``width`` seconds of slots in [t0, t1) (the last may be shorter): ``{"t", "fired", "p50_ms",
    "p99_ms"}``, in one pass over the records (a 30-minute soak has millions)."""
    drifts: dict[int, list[float]] = defaultdict(list)
    for r in records:
        if r.scheduled_ms is not None and t0 * 1000 <= r.scheduled_ms < t1 * 1000:
            drifts[(r.scheduled_ms // 1000 - t0) // width].append(max(0.0, r.recv_ns / 1e6 - r.scheduled_ms))
    out = []
    for k in range(math.ceil((t1 - t0) / width)):
        values = sorted(drifts.get(k, []))
        out.append({"t": t0 + k * width, "fired": len(values),
                    "p50_ms": round(_percentile(values, 50), 1), "p99_ms": round(_percentile(values, 99), 1)})  # fmt: skip
    return out


def flatness(series: Sequence[float], within: float = 0.2) -> dict[str, Any]:
    """``series`` (a figure per window) against its first value: ``{"first", "last", "max", "max_ratio", "flat",
    "trend", "grows"}``. ``flat`` when no later value is more than ``within`` above the first (less is fine:
    cheaper is not growth); NaN values (a window that measured nothing) make it not flat. ``trend``: the median
    of the last third of the windows over that of the first third, and ``grows`` when it is more than ``within``
    above 1: growth with time, where ``flat`` also counts one window's spike (a checkpoint, a disk stall)."""
    first = series[0] if series else float("nan")
    ratios = [v / first if first > 0 else float("nan") for v in series[1:]]
    top = max(series, default=float("nan"))
    third = max(1, len(series) // 3)
    early, late = statistics.median(series[:third] or [math.nan]), statistics.median(series[-third:] or [math.nan])
    trend = late / early if early > 0 else float("nan")
    return {"first": first, "last": series[-1] if series else float("nan"), "max": top,
            "max_ratio": round(max(ratios, default=1.0), 3),
            "flat": bool(series) and all(r <= 1 + within for r in ratios),
            "trend": round(trend, 3), "grows": not trend <= 1 + within}  # fmt: skip
