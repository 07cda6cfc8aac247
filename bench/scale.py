"""Scale bench: 1,000,000 registered jobs, 100,000 of them firing within the node's 60 s horizon.

900,000 jobs are daily (`0 0 3 * * *`, next firing hours away: PostgreSQL only); 100,000 fire every 60 s with
their anchors spread over 45 s (~2,200 firings/s for 45 s of each minute) at the sink, so the measurement is
the node's own under that load: start to ready (every shard loaded, every in-horizon job in the wheel) and
resident memory (peak) once it has run a while.

Example::

    python -m bench.scale --jobs 1000000 --in-horizon 100000
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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from protocol.internal import DEV_CLUSTER_SECRET
from protocol.jobs import JobSpec, RetryPolicy, Target
from protocol.schedules import Cron, Every
from shardwheel.embedded import EmbeddedPostgres, free_port

from .harness import ROOT, insert_jobs, prepare_db, rss_mb, stop_on_sigterm, wait_ready
from .results import start_sink, stop_sink

__all__ = ["main", "run_scale"]


def run_scale(jobs: int, in_horizon: int, run_s: int = 20) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sw-scale-") as tmp_s:
        tmp = Path(tmp_s)
        with EmbeddedPostgres(tmp / "pg", durable=False) as pg:
            dsn = asyncio.run(prepare_db(pg.dsn, "sw_scale"))
            sink, sink_port = start_sink(str(tmp / "sink.jsonl"))
            target = Target(url=f"http://127.0.0.1:{sink_port}/fire")
            far = datetime.now(UTC) + timedelta(hours=2)
            t0 = time.time()
            asyncio.run(insert_jobs(dsn, [JobSpec(name="daily", schedule=Cron("0 0 3 * * *"), target=target,
                                                  retry=RetryPolicy(max_attempts=1))] * (jobs - in_horizon),
                                    next_fire_at=far))  # fmt: skip
            base = math.ceil(time.time()) + 5
            specs = [JobSpec(name="minutely", target=target, retry=RetryPolicy(max_attempts=1), schedule=Every("60s"),
                             start_at=datetime.fromtimestamp(base + (i * 45_000 // in_horizon) / 1000, UTC))
                     for i in range(in_horizon)]  # fmt: skip
            asyncio.run(insert_jobs(dsn, specs))
            insert_s = time.time() - t0
            port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDWHEEL_")}
            started = time.time()
            node = subprocess.Popen(
                [sys.executable, "-m", "shardwheel.cli", "node", "--dsn", dsn, "--port", str(port),
                 "--node-id", "scale", "--log-level", "warning", "--dev"], cwd=ROOT, env=env, stdin=subprocess.DEVNULL)  # fmt: skip
            try:
                ready_at = wait_ready(f"http://127.0.0.1:{port}", 300)
                rss_ready = rss_mb(node.pid)
                time.sleep(run_s)
                rss_peak = rss_mb(node.pid)
                import httpx

                status = httpx.get(
                    f"http://127.0.0.1:{port}/internal/v1/status",
                    headers={"authorization": f"Bearer {DEV_CLUSTER_SECRET}"},
                    timeout=10,
                ).json()
            finally:
                node.send_signal(signal.SIGTERM)
                node.wait(120)
                stop_sink(sink)
    return {
        "scenario": "scale", "jobs": jobs, "in_horizon": in_horizon, "insert_s": round(insert_s, 1),
        "start_to_ready_s": round(ready_at - started, 2), "rss_at_ready_mb": round(rss_ready),
        "peak_rss_mb": round(rss_peak), "jobs_in_memory": status["jobs_in_memory"],
        "wheel_entries": status["wheel"]["entries"],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    p = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=1_000_000)
    p.add_argument("--in-horizon", type=int, default=100_000)
    args = p.parse_args(argv)
    print(msgspec.json.format(msgspec.json.encode(run_scale(args.jobs, args.in_horizon))).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
