"""The bench sink on 127.0.0.1: what it records per request, its arrival timestamps, /stats, SIGTERM output."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from bench.results import read_sink, start_sink, stop_sink


def test_sink_records_arrival_and_handling_times_and_headers(tmp_path: Path) -> None:
    out = tmp_path / "sink.jsonl"
    proc, port = start_sink(str(out))
    try:
        before = time.time_ns()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for i in range(5):  # kept alive: five requests on one connection
                r = client.post("/fire", content=b'{"i": %d}' % i, headers={
                    "X-Shardwheel-Job": f"job-{i}", "X-Shardwheel-Scheduled-At": "2026-11-23T10:00:00.000Z",
                    "X-Shardwheel-Node": "node-t"})  # fmt: skip
                assert (r.status_code, r.text) == (200, "ok")
            closing = client.get("/plain", headers={"Connection": "close"})
            assert closing.status_code == 200 and closing.headers["connection"] == "close"
            stats = client.get("/stats").json()
        after = time.time_ns()
        assert stats == {"requests": 6, "connections": 2, "open": 1}  # /stats itself is not recorded
    finally:
        stop_sink(proc)
    records = read_sink(str(out))
    assert [r.job for r in records] == [f"job-{i}" for i in range(5)] + [None]
    assert records[0].node == "node-t" and records[0].scheduled_ms == 1_795_428_000_000
    for r in records:
        assert r.handled_ns is not None
        assert before <= r.recv_ns <= r.handled_ns <= after  # the kernel's arrival comes before the parse
    assert [r.recv_ns for r in records] == sorted(r.recv_ns for r in records)
