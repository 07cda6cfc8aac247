"""The A/B tool's readers (``bench/compare.py``): figures taken from real output shapes."""

from __future__ import annotations

from bench.compare import burst_figures, steady_figures

BURST_OUTPUT = """\
sink: wrote 5100 records to /tmp/sw-bench-x/sink.jsonl; cpu 0.241 s
burst N=5000 over 100 connections (prewarmed 100, opened 100; mode=submit, unsigned, gc frozen) at 2026-11-28T00:17:26.000Z
  drift ms (sink receive - scheduled): p50 91.4  p90 138.2  p99 148.7  max 149.8   received 5000  lost 0  dup 0  early 0
  dispatch lag ms (sent_at - scheduled): p50 91.4  p99 148.7  max 149.8
  outcomes {'response': 5000}  statuses {'200': 5000}  client done at +152.5 ms (cpu 126.2 ms)  sink drain 33974 req/s
burst N=5000 over 100 connections (prewarmed 100, opened 100; mode=submit, unsigned, gc frozen) at 2026-11-28T00:17:28.000Z
  drift ms (sink receive - scheduled): p50 82.2  p90 148.4  p99 163.7  max 165.1   received 4998  lost 2  dup 1  early 0
  dispatch lag ms (sent_at - scheduled): p50 82.2  p99 163.7  max 165.1
  outcomes {'response': 5000}  statuses {'200': 5000}  client done at +168.0 ms (cpu 163.0 ms)  sink drain 30700 req/s
"""


def test_burst_figures_read_each_burst() -> None:
    assert burst_figures(BURST_OUTPUT) == [
        {"p99": 148.7, "lost": 0, "duplicates": 0, "cpu_ms": 126.2},
        {"p99": 163.7, "lost": 2, "duplicates": 1, "cpu_ms": 163.0},
    ]


def test_steady_figures_pair_the_node_with_the_bare_dispatcher() -> None:
    def run(scenario: str, jobs: int, p99: float, **extra: object) -> dict[str, object]:
        return {
            "scenario": scenario,
            "jobs": jobs,
            "drift_ms": {"p99": p99},
            "lost": 0,
            "duplicates": 0,
            **extra,
        }

    results = [
        run("steady", 1000, 77.4, node_cpu_per_firing_us=123.3, db_rows_not_terminal=0),
        run("bare_dispatcher", 1000, 64.9),
        run("steady", 5000, 439.3, node_cpu_per_firing_us=133.3, db_rows_not_terminal=3),
        run("bare_dispatcher", 5000, 254.1),
    ]
    figures = steady_figures(results)
    assert figures[1000]["added_p99"] == 12.5 and figures[1000]["cpu_us_per_firing"] == 123.3
    assert figures[5000]["added_p99"] == 185.2 and figures[5000]["not_terminal"] == 3
