"""Latency summaries: values kept and put into the histogram in bulk read as values recorded one by one."""

from __future__ import annotations

from hdrh.histogram import HdrHistogram
from hypothesis import given
from hypothesis import strategies as st

from protocol import prometheus
from protocol.prometheus import LatencySummary

values = st.lists(
    st.one_of(st.floats(-50, 5_000_000, allow_nan=False), st.integers(-5, 4_000_000)), max_size=300
)


@given(first=values, second=values)
def test_a_summary_reads_as_a_histogram_recorded_one_by_one(first: list[float], second: list[float]) -> None:
    summary = LatencySummary("lag", "help", highest_ms=3_600_000)
    reference = HdrHistogram(1, 3_600_000, 3)
    for ms in first:
        summary.record(ms)
        reference.record_value(min(int(max(ms, 0)), 3_600_000))
    for q in (0.5, 0.99):  # a read between records settles what was kept so far
        assert summary.quantile(q) == (reference.get_value_at_percentile(q * 100) if first else 0)
    for ms in second:
        summary.record(ms)
        reference.record_value(min(int(max(ms, 0)), 3_600_000))
    shown = "\n".join(summary.samples({}))
    for q in (0.5, 0.9, 0.99, 0.999):
        want = reference.get_value_at_percentile(q * 100) if first or second else 0
        assert summary.quantile(q) == want and f'lag{{quantile="{q}"}} {want}' in shown
    assert summary.count == len(first) + len(second)
    assert summary.early == sum(1 for v in first + second if v < 0)


def test_values_are_settled_in_bulk_and_the_window_turns_with_them(monkeypatch: object) -> None:
    clock = [1000.0]
    monkeypatch.setattr(prometheus.time, "monotonic", lambda: clock[0])  # type: ignore[attr-defined]
    summary = LatencySummary("lag", "help", window_s=60.0)
    for _ in range(prometheus._SETTLE_EVERY - 1):
        summary.record(7.9)
    assert summary._current.get_total_count() == 0  # kept, not yet in the histogram
    summary.record(7.0)
    assert summary._current.get_total_count() == prometheus._SETTLE_EVERY  # settled: one bulk record
    summary.record(500)
    clock[0] += 60.0
    summary.record(3)  # the window turns: the 500 belongs to the old one, the 3 to the new
    assert summary._previous is not None and summary._previous.get_max_value() == 500
    assert summary._previous.get_total_count() == prometheus._SETTLE_EVERY + 1
    assert summary.quantile(0.5) == 7  # the previous window has more values: it is the one read
