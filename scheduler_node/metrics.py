"""Node metrics in the Prometheus text format (the primitives are ``protocol.prometheus``'s).

Example::

    m = Metrics()
    m.firings.inc()
    m.dispatch_lag.record(12)          # ms
    text = m.render()                  # "# TYPE shardwheel_firings_total counter\\nshardwheel_firings_total 1\\n..."
"""

from __future__ import annotations

from protocol.prometheus import Counter, Gauge, LatencySummary, render

__all__ = ["Counter", "Gauge", "LatencySummary", "Metrics"]


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
        self.overloaded = Gauge(p + "overloaded", "1 while slots come past their misfire grace (more work offered "
                                "than the node does on time; they follow their misfire policy), else 0")
        self.clock_offset = Gauge(p + "clock_offset_ms", "this node's clock offset from PostgreSQL's (measured, "
                                  "round-trip corrected; past --clock-limit-ms the node refuses shards)")
        self.refusing = Gauge(p + "refusing_shards", "1 while the node refuses shards (its clock offset is past "
                              "the limit), else 0")
        self.claim_batch = LatencySummary(p + "claim_batch_size", "rows per claim statement")
        self.claim_latency = LatencySummary(p + "claim_latency", "claim statement latency")
        self.write_batch = LatencySummary(p + "write_batch_size", "rows per result write statement")
        self.write_latency = LatencySummary(p + "write_latency", "result write statement latency")
        self.dispatch_lag = LatencySummary(p + "dispatch_lag", "send start minus scheduled time")
        self.http_latency = LatencySummary(p + "http_latency", "HTTP request duration")

    def render(self) -> str:
        return render(self)
