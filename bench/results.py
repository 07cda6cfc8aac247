"""Shared by the bench scenarios: the sink process, its records, and drift percentiles (HdrHistogram).

Drift is what a target sees: sink receive time (the kernel's arrival timestamp, see ``bench.sink``) minus the
scheduled time carried in ``X-Shardwheel-Scheduled-At``. ``drift_handled_ms`` is the same against the time the
sink parsed the request, which adds the sink's own queue. It is recorded in microseconds and reported in milliseconds; a request that
arrives before its slot (a skewed clock) counts as 0 drift and is counted in ``early``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
from hdrh.histogram import HdrHistogram

from .sink import Record

__all__ = ["SinkRecord", "drift_summary", "read_sink", "start_sink", "stop_sink", "window_figures"]

ROOT = Path(__file__).resolve().parent.parent
QUANTILES = (50.0, 90.0, 99.0, 99.9)


class SinkRecord(Record, gc=False):
    """A sink record as read back, with its slot in unix ms (filled by ``read_sink``)."""

    scheduled_ms: int | None = None


def start_sink(out: str, host: str = "127.0.0.1", port: int = 0) -> tuple[subprocess.Popen[str], int]:
    """``bench.sink`` in its own process, recording to ``out``; returns it and its port (``port`` 0: a free one)."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.sink", "--host", host, "--port", str(port), "--out", out],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "READY <port>"; empty if the sink died
    if not line.startswith("READY "):
        proc.kill()
        raise RuntimeError(f"sink did not start: {line!r}")
    return proc, int(line.split()[1])


def stop_sink(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def read_sink(path: str) -> list[SinkRecord]:
    dec = msgspec.json.Decoder(SinkRecord)
    slot_ms: dict[str, int] = {}
    out: list[SinkRecord] = []
    if not os.path.exists(path):
        return out
    with open(path, "rb") as f:
        for line in f:
            r = dec.decode(line)
            if r.scheduled_at is not None:
                ms = slot_ms.get(r.scheduled_at)
                if ms is None:
                    ms = slot_ms[r.scheduled_at] = round(
                        datetime.fromisoformat(r.scheduled_at).timestamp() * 1000
                    )
                r.scheduled_ms = ms
            out.append(r)
    return out


def drift_summary(records: Iterable[SinkRecord], *, handled: bool = False) -> dict[str, float]:
    """Drift percentiles in ms; ``handled``: against when the sink parsed each request, not its arrival."""
    hist = HdrHistogram(1, 3_600_000_000, 3)
    early = 0
    for r in records:
        assert r.scheduled_ms is not None
        ns = r.handled_ns if handled and r.handled_ns is not None else r.recv_ns
        us = (ns - r.scheduled_ms * 1_000_000) // 1000
        if us < 0:
            early += 1
        hist.record_value(max(1, us))
    if hist.get_total_count() == 0:
        return {"count": 0}
    out = {f"p{q:g}": round(hist.get_value_at_percentile(q) / 1000, 1) for q in QUANTILES}
    out["max"] = round(hist.get_max_value() / 1000, 1)
    out["count"] = hist.get_total_count()
    out["early"] = early
    return out


def window_figures(
    records: Iterable[SinkRecord], t0: int, t1: int, jobs: int
) -> tuple[dict[str, Any], Counter[tuple[str | None, int | None]]]:
    """Figures for the slots of seconds [t0, t1) when ``jobs`` jobs fire every second: firings/s, drift, lost
    (expected (job, second) pairs never received) and duplicates; plus the per-(job, slot) receive counts."""
    window = [r for r in records if r.scheduled_ms is not None and t0 * 1000 <= r.scheduled_ms < t1 * 1000]
    seen = Counter((r.job, r.scheduled_ms) for r in window)
    duration = t1 - t0
    return {
        "jobs": jobs,
        "duration_s": duration,
        "firings_per_s": round(len(seen) / duration, 1),
        "drift_ms": drift_summary(window),
        "drift_handled_ms": drift_summary(window, handled=True),
        "lost": jobs * duration - len(seen),
        "duplicates": sum(c - 1 for c in seen.values()),
    }, seen
