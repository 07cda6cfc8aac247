"""bench.timeline against simple reference counts, and ``python -m bench`` end to end on a small dev cluster."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.results import SinkRecord
from bench.timeline import delivery, drain, flatness, recovery_s, silence_ms, sustained, timeline, windows

ROOT = Path(__file__).resolve().parents[2]


def _record(job: str, slot_s: int, late_ms: float) -> SinkRecord:
    return SinkRecord(recv_ns=int((slot_s * 1000 + late_ms) * 1e6), job=job, scheduled_at=None, node="n",
                      handled_ns=None, scheduled_ms=slot_s * 1000)  # fmt: skip


arrivals = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(100, 109), st.floats(0, 3000)),
                    max_size=60)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(arrivals)
def test_delivery_and_timeline_count_what_arrived(got: list[tuple[str, int, float]]) -> None:
    records = [_record(j, s, late) for j, s, late in got]
    jobs = {"a": "AT_LEAST_ONCE", "b": "AT_MOST_ONCE"}  # "c" is not the run's: ignored
    figures = delivery(records, jobs, 101, 108)
    for job, semantics in jobs.items():
        per_second = [sum(1 for j, s, _ in got if j == job and s == second) for second in range(101, 108)]
        assert figures[semantics] == {"expected": 7, "lost": per_second.count(0),
                                      "duplicates": sum(max(0, n - 1) for n in per_second)}  # fmt: skip
    line = timeline(records, 101, 108)
    assert [p["fired"] for p in line] == [sum(1 for _, s, _ in got if s == t) for t in range(101, 108)]
    for p in line:
        lates = sorted(late for _, s, late in got if s == p["t"])
        assert math.isnan(p["p99_ms"]) if not lates else lates[0] - 0.1 <= p["p50_ms"] <= lates[-1] + 0.1


def test_silence_and_the_sustained_rate() -> None:
    records = [_record("a", 100, 5), _record("a", 101, 5), _record("a", 106, 900), _record("b", 103, 0)]
    assert silence_ms(records, {"a"}, 100, 110) == 5_895.0
    steps = [{"rate": 500, "p99_ms": 20, "lost": 0}, {"rate": 1000, "p99_ms": 900, "lost": 0},
             {"rate": 1500, "p99_ms": 1200, "lost": 0}, {"rate": 2000, "p99_ms": 10, "lost": 0}]  # fmt: skip
    assert sustained(steps, 1000) == 1000
    assert sustained([{"rate": 500, "p99_ms": 20, "lost": 1}], 1000) is None
    assert sustained([{"rate": 500, "p99_ms": float("nan"), "lost": 0}], 1000) is None


def test_recovery_after_a_load_drop() -> None:
    def line(p99s: list[float]) -> list[dict[str, float]]:
        return [{"t": 100 + i, "p99_ms": v} for i, v in enumerate(p99s)]

    nan = float("nan")
    assert recovery_s(line([5000, 3000, 900, 80, 50]), 100) == 2  # within the bound from 102 on
    assert recovery_s(line([5000, 80, nan, 80, 50]), 100) == 3  # a second with nothing for its slot is late
    assert recovery_s(line([9000, 80, 50]), 101) == 0
    assert recovery_s(line([80, 50, 4000]), 100) is None  # still late at the end


@pytest.mark.slow
def test_python_m_bench_steady_on_a_dev_cluster(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "bench", "steady", "--dev", "--nodes", "2", "--jobs", "30",
                          "--duration", "3", "--warmup", "3", "--out", str(tmp_path)], capture_output=True, text=True,
                         cwd=ROOT, timeout=400, stdin=subprocess.DEVNULL)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "steady.json").read_text())
    assert result["delivery"]["AT_LEAST_ONCE"] == {"expected": 90, "lost": 0, "duplicates": 0}
    assert [p["fired"] for p in result["timeline"]] == [30, 30, 30] and result["machine"]["commit"]
    assert "| delivery AT_LEAST_ONCE lost | 0 |" in (tmp_path / "steady.md").read_text()


@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "x"]), st.floats(0, 5000)), max_size=30))
def test_drain_against_counting(arrivals: list[tuple[str, float]]) -> None:
    records = [_record(job, 100, late) for job, late in arrivals]
    got = drain(records, ["a", "b", "c"], 100_000)
    herd = [(job, late) for job, late in arrivals if job != "x"]
    assert got["received"] == len(herd) and got["missing"] == len({"a", "b", "c"} - {j for j, _ in herd})
    assert got["duplicates"] == len(herd) - len({j for j, _ in herd})
    if herd:
        last = max(late for _, late in herd) / 1000
        assert got["drain_s"] == pytest.approx(max(0.001, last), abs=1e-3)
    else:
        assert got["drain_s"] is None and got["per_s"] is None


@settings(max_examples=200, deadline=None)
@given(arrivals, st.integers(1, 4))
def test_windows_hold_each_slot_in_its_window(got: list[tuple[str, int, float]], width: int) -> None:
    records = [_record(j, s, late) for j, s, late in got]
    out = windows(records, 101, 108, width)
    assert [w["t"] for w in out] == list(range(101, 108, width))
    for w in out:
        lates = sorted(late for _, s, late in got if w["t"] <= s < min(108, w["t"] + width))
        assert w["fired"] == len(lates)
        assert math.isnan(w["p99_ms"]) if not lates else lates[0] - 0.1 <= w["p50_ms"] <= w["p99_ms"] <= lates[-1] + 0.1


def test_flatness_is_growth_past_the_first_value() -> None:
    assert flatness([100, 110, 119.9, 80])["flat"]
    # One window's spike is not flat, but not growth either; a rise that stays is both.
    spike = flatness([100, 90, 110, 100, 180, 95, 100, 95, 105])
    assert not spike["flat"] and spike["trend"] == 1.0 and not spike["grows"]
    rise = flatness([100, 100, 100, 125, 125, 125, 130, 130, 130])
    assert not rise["flat"] and rise["trend"] == 1.3 and rise["grows"]
    got = flatness([100, 110, 130, 90])
    assert not got["flat"] and got["max_ratio"] == 1.3 and (got["first"], got["last"], got["max"]) == (100, 90, 130)
    assert not flatness([100, float("nan"), 100])["flat"]  # a window that measured nothing
    assert not flatness([])["flat"] and flatness([5])["flat"]
