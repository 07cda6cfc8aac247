"""Metrics in the Prometheus text format, for the nodes and the control API: counters, gauges, and latency
summaries from HdrHistogram.

Rules:
- Recording is a dict lookup and an add (or a list append): cheap enough for the firing path.
- Latency histograms are HdrHistogram (1 ms .. 1 h, 3 significant digits) exposed as Prometheus summaries with
  quantiles 0.5, 0.9, 0.99, 0.999 and max, since the tail is what a scheduler is judged by.
- A summary covers the process's whole life (monotonic ``_count``/``_sum``); its quantiles cover a sliding
  window: the histogram is swapped out every ``window_s`` seconds (the previous window is kept for reading), so
  a bad minute an hour ago does not hide today's tail. ``LatencySummaries`` keeps one per label set (the API's
  routes).
- ``render(obj)``: every metric among ``obj``'s attributes, as one exposition.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

__all__ = ["Counter", "Gauge", "LatencySummaries", "LatencySummary", "render"]

_QUANTILES = (0.5, 0.9, 0.99, 0.999)
_SETTLE_EVERY = 4096  # values a summary keeps before putting them into its histogram


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


@dataclass
class Counter:
    name: str
    help: str
    values: dict[tuple[tuple[str, str], ...], float] = field(default_factory=dict)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items())) if len(labels) > 1 else tuple(labels.items())
        self.values[key] = self.values.get(key, 0.0) + amount

    def get(self, **labels: str) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        for key, v in sorted(self.values.items()) or [((), 0.0)]:
            out.append(f"{self.name}{_labels(dict(key))} {v:g}")
        return out


@dataclass
class Gauge:
    name: str
    help: str
    read: Callable[[], float] | None = None  # sampled at render time (wheel size, in flight...)
    value: float = 0.0
    kind: str = "gauge"  # "counter" for a total read from elsewhere (connections opened)

    def set(self, v: float) -> None:
        self.value = v

    def render(self) -> list[str]:
        v = self.read() if self.read is not None else self.value
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}", f"{self.name} {v:g}"]


class LatencySummary:
    """Milliseconds. Negative values (a send before its slot, from clock offset) are recorded as 0 and counted.

    Values are kept in a list and put into the histogram in bulk (each distinct whole millisecond once, with its
    count) before it is read, when the window turns, or every ``_SETTLE_EVERY`` values: hdrh's ``record_value``
    is Python, ~1 µs a call, and the firing path records two values per firing (a second's lags fall on a few
    hundred distinct milliseconds).
    """

    def __init__(self, name: str, help: str, *, window_s: float = 60.0, highest_ms: int = 3_600_000) -> None:
        self.name = name
        self.help = help
        self.window_s = window_s
        self._highest = highest_ms
        self._current = HdrHistogram(1, highest_ms, 3)
        self._previous: HdrHistogram | None = None
        self._window_started = time.monotonic()
        self._unsettled: list[float] = []
        self.count = 0
        self.sum_ms = 0.0
        self.early = 0

    def record(self, ms: float) -> None:
        now = time.monotonic()
        if now - self._window_started >= self.window_s:
            self._settle()
            self._previous, self._current = self._current, HdrHistogram(1, self._highest, 3)
            self._window_started = now
        self.count += 1
        self.sum_ms += ms
        if ms < 0:
            self.early += 1
            ms = 0
        unsettled = self._unsettled
        unsettled.append(ms)
        if len(unsettled) >= _SETTLE_EVERY:
            self._settle()

    def _settle(self) -> None:
        if not self._unsettled:
            return
        counts = collections.Counter(map(int, self._unsettled))
        self._unsettled = []
        for ms, n in counts.items():
            self._current.record_value(min(ms, self._highest), n)

    def _view(self) -> HdrHistogram:
        self._settle()
        if self._previous is None or self._current.get_total_count() >= self._previous.get_total_count():
            return self._current
        return self._previous

    def quantile(self, q: float) -> float:
        h = self._view()
        return float(h.get_value_at_percentile(q * 100)) if h.get_total_count() else 0.0

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help} (ms)", f"# TYPE {self.name} summary", *self.samples({})]

    def samples(self, labels: dict[str, str]) -> list[str]:
        h = self._view()
        out = []
        for q in _QUANTILES:
            v = h.get_value_at_percentile(q * 100) if h.get_total_count() else 0
            out.append(f"{self.name}{_labels({**labels, 'quantile': str(q)})} {v}")
        out.append(f"{self.name}_max{_labels(labels)} {h.get_max_value() if h.get_total_count() else 0}")
        out.append(f"{self.name}_sum{_labels(labels)} {self.sum_ms:g}")
        out.append(f"{self.name}_count{_labels(labels)} {self.count}")
        return out


class LatencySummaries:
    """One ``LatencySummary`` per label set, rendered as one metric."""

    def __init__(self, name: str, help: str, *, window_s: float = 60.0) -> None:
        self.name = name
        self.help = help
        self.window_s = window_s
        self.by_labels: dict[tuple[tuple[str, str], ...], LatencySummary] = {}

    def record(self, ms: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        summary = self.by_labels.get(key)
        if summary is None:
            summary = self.by_labels[key] = LatencySummary(self.name, self.help, window_s=self.window_s)
        summary.record(ms)

    def render(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help} (ms)", f"# TYPE {self.name} summary"]
        for key, summary in sorted(self.by_labels.items()):
            out += summary.samples(dict(key))
        return out


def render(obj: Any) -> str:
    lines: list[str] = []
    for item in vars(obj).values():
        if isinstance(item, Counter | Gauge | LatencySummary | LatencySummaries):
            lines += item.render()
    return "\n".join(lines) + "\n"
