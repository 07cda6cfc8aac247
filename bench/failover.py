"""Failover bench: 3 nodes (etcd mode) at a steady load, one killed with SIGKILL, measured at the sink.

Half the jobs are AT_MOST_ONCE, half AT_LEAST_ONCE with misfire FIRE_ALL; all fire every second. Reported:
the failover gap (the longest time a due slot waited, i.e. the largest drift in the window), lost and
duplicate slots per semantics, and the time from the kill until the two survivors own all shards.

Example::

    python -m bench.failover --jobs 300 --ttl 5
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from protocol.jobs import JobSpec, Misfire, MisfirePolicy, Semantics, Target
from protocol.schedules import Cron
from scheduler_node.coordination import EtcdCoordinator, KeyLayout
from shardwheel.embedded import EmbeddedEtcd, EmbeddedPostgres, free_port

from .harness import ROOT, insert_jobs, prepare_db, stop_on_sigterm
from .results import read_sink, start_sink, stop_sink, window_figures

__all__ = ["main", "run_failover"]


def _owners(etcd: str) -> Counter[str]:
    with EtcdCoordinator(etcd, KeyLayout("bench")) as c:
        return Counter(c.snapshot().live_owners().values())


def _wait(pred: Any, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(0.05)
    raise RuntimeError("timed out")


def run_failover(jobs: int, ttl: int, before_s: int = 10, after_s: int = 15) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sw-fo-") as tmp_s:
        tmp = Path(tmp_s)
        with EmbeddedPostgres(tmp / "pg") as pg, EmbeddedEtcd(tmp / "etcd", durable=False) as etcd:
            dsn = asyncio.run(prepare_db(pg.dsn, "sw_failover"))
            sink, port = start_sink(str(tmp / "sink.jsonl"))
            nodes: dict[str, subprocess.Popen[bytes]] = {}
            try:
                start = datetime.fromtimestamp(math.ceil(time.time()) + 12, UTC)
                specs = [JobSpec(name=f"j{i}", schedule=Cron("* * * * * *"), start_at=start,
                                 semantics=Semantics.AT_MOST_ONCE if i % 2 else Semantics.AT_LEAST_ONCE,
                                 misfire=Misfire(MisfirePolicy.FIRE_ALL, grace_ms=60_000),
                                 target=Target(url=f"http://127.0.0.1:{port}/fire")) for i in range(jobs)]  # fmt: skip
                ids = asyncio.run(insert_jobs(dsn, specs))
                semantics = {str(j): s.semantics for j, s in zip(ids, specs, strict=True)}
                env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDWHEEL_")}
                for n in ("n1", "n2", "n3"):
                    nodes[n] = subprocess.Popen(
                        [sys.executable, "-m", "shardwheel.cli", "node", "--dsn", dsn, "--etcd", etcd.endpoint,
                         "--lease-ttl", str(ttl), "--node-id", n, "--port", str(free_port()), "--log-level", "error",
                         "--dev"],
                        cwd=ROOT, env=env, stdin=subprocess.DEVNULL)  # fmt: skip
                _wait(lambda: sorted(_owners(etcd.endpoint).values()) == [85, 85, 86], 60)
                time.sleep(max(0.0, start.timestamp() - time.time()) + before_s)
                killed_at = time.time()
                nodes["n2"].send_signal(signal.SIGKILL)
                rebalance_s = _wait(lambda: sorted(_owners(etcd.endpoint).values()) == [128, 128], 10 * ttl)
                time.sleep(after_s)
                end = time.time() - 2
            finally:
                for p in nodes.values():
                    if p.poll() is None:
                        p.send_signal(signal.SIGTERM)
                for p in nodes.values():
                    p.wait(60)
                stop_sink(sink)
            records = read_sink(str(tmp / "sink.jsonl"))
    t0, t1 = math.floor(killed_at) - 5, math.floor(end)
    figures, seen = window_figures(records, t0, t1, jobs)
    out: dict[str, Any] = {"scenario": "failover", "jobs": jobs, "ttl_s": ttl,
                           "rebalance_s": round(rebalance_s, 2), "window_s": t1 - t0}  # fmt: skip
    for sem in Semantics:
        keys = [k for k in seen if semantics.get(k[0] or "") is sem]
        expected = sum(1 for s in semantics.values() if s is sem) * (t1 - t0)
        out[sem.value] = {"lost": expected - len(keys), "duplicates": sum(seen[k] - 1 for k in keys)}
    out["failover_gap_ms"] = round(figures["drift_ms"]["max"])  # the longest a due slot waited
    return out


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    p = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=300)
    p.add_argument("--ttl", type=int, default=5, help="lease TTL in seconds")
    args = p.parse_args(argv)
    result = run_failover(args.jobs, args.ttl)
    print(msgspec.json.format(msgspec.json.encode(result)).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
