"""Node metrics in the Prometheus text format: counters, gauges, and latency summaries from HdrHistogram.

Rules:
- Recording is a dict lookup and an add (or one ``record_value``): cheap enough for the firing path.
- Latency histograms are HdrHistogram (1 ms .. 1 h, 3 significant digits) exposed as Prometheus summaries with
  quantiles 0.5, 0.9, 0.99, 0.999 and max, since the tail is what a scheduler is judged by.
- A summary covers the node's whole life (monotonic ``_count``/``_sum``); its quantiles cover a sliding window:
  the histogram is swapped out every ``window_s`` seconds (the previous window is kept for reading), so a bad
  minute an hour ago does not hide today's tail.

Example::

    m = Metrics()
    m.firings.inc()
    m.dispatch_lag.record(12)          # ms
    text = m.render()                  # "# TYPE shardwheel_firings_total counter\\nshardwheel_firings_total 1\\n..."
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from hdrh.histogram import HdrHistogram

__all__ = ["Counter", "Gauge", "LatencySummary", "Metrics"]

_QUANTILES = (0.5, 0.9, 0.99, 0.999)


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
    """Milliseconds. Negative values (a send before its slot, from clock offset) are recorded as 0 and counted."""

    def __init__(self, name: str, help: str, *, window_s: float = 60.0, highest_ms: int = 3_600_000) -> None:
        self.name = name
        self.help = help
        self.window_s = window_s
        self._highest = highest_ms
        self._current = HdrHistogram(1, highest_ms, 3)
        self._previous: HdrHistogram | None = None
        self._window_started = time.monotonic()
        self.count = 0
        self.sum_ms = 0.0
        self.early = 0

    def record(self, ms: float) -> None:
        now = time.monotonic()
        if now - self._window_started >= self.window_s:
            self._previous, self._current = self._current, HdrHistogram(1, self._highest, 3)
            self._window_started = now
        self.count += 1
        self.sum_ms += ms
        if ms < 0:
            self.early += 1
            ms = 0
        self._current.record_value(min(int(ms), self._highest))

    def _view(self) -> HdrHistogram:
        if self._previous is None or self._current.get_total_count() >= self._previous.get_total_count():
            return self._current
        return self._previous

    def quantile(self, q: float) -> float:
        h = self._view()
        return float(h.get_value_at_percentile(q * 100)) if h.get_total_count() else 0.0

    def render(self) -> list[str]:
        h = self._view()
        out = [f"# HELP {self.name} {self.help} (ms)", f"# TYPE {self.name} summary"]
        for q in _QUANTILES:
            v = h.get_value_at_percentile(q * 100) if h.get_total_count() else 0
            out.append(f'{self.name}{{quantile="{q}"}} {v}')
        out.append(f"{self.name}_max {h.get_max_value() if h.get_total_count() else 0}")
        out.append(f"{self.name}_sum {self.sum_ms:g}")
        out.append(f"{self.name}_count {self.count}")
        return out


class Metrics:
    """Everything a node exposes on ``/metrics``."""

    def __init__(self) -> None:
        p = "shardwheel_"
        self.firings = Counter(p + "firings_total", "slots sent for the first time")
        self.results = Counter(p + "results_total", "terminal results by status")
        self.retries = Counter(p + "retries_total", "attempts scheduled again after a retryable failure")
        self.skips = Counter(p + "skips_total", "slots skipped without sending, by kind")
        self.fenced = Counter(
            p + "fenced_writes_total", "writes refused because a newer epoch owns the shard"
        )
        self.not_sent = Counter(
            p + "not_sent_total", "sends withheld because the lease validity had passed (held, sent later)"
        )
        self.alerts = Counter(p + "alerts_total", "alerts raised")
        self.broken = Counter(p + "jobs_broken_total", "jobs found unable to run at load and marked broken")
        self.alert_deliveries = Counter(p + "alert_deliveries_total", "alert webhook deliveries by outcome")
        self.store_unavailable = Counter(
            p + "store_unavailable_total", "store calls that found PostgreSQL unavailable, by loop"
        )
        self.in_flight = Gauge(p + "in_flight", "requests in flight")
        self.wheel_size = Gauge(p + "wheel_entries", "entries in the timing wheel")
        self.shards = Gauge(p + "shards_owned", "shards this node owns")
        self.connections_open = Gauge(
            p + "connections_open", "connections to targets, busy, idle or connecting"
        )
        self.connections_opened = Gauge(
            p + "connections_opened_total", "connections to targets opened", kind="counter"
        )
        self.writes_pending = Gauge(
            p + "writes_pending", "results and alerts accepted, not yet written (claims wait past the bound)"
        )
        self.sends_waiting = Gauge(
            p + "sends_waiting", "sends queued for a connection (per-host or node cap)"
        )
        self.claim_batch = LatencySummary(p + "claim_batch_size", "rows per claim statement")
        self.claim_latency = LatencySummary(p + "claim_latency", "claim statement latency")
        self.write_batch = LatencySummary(p + "write_batch_size", "rows per result write statement")
        self.write_latency = LatencySummary(p + "write_latency", "result write statement latency")
        self.dispatch_lag = LatencySummary(p + "dispatch_lag", "send start minus scheduled time")
        self.http_latency = LatencySummary(p + "http_latency", "HTTP request duration")

    def render(self) -> str:
        lines: list[str] = []
        for item in vars(self).values():
            if isinstance(item, Counter | Gauge | LatencySummary):
                lines += item.render()
        return "\n".join(lines) + "\n"
