"""Steady-load bench: N jobs ``* * * * * *`` on one node for D seconds, measured at a sink in its own process.

What it does, in order:
1. PostgreSQL: the one named by ``SHARDWHEEL_PG_DSN``, else an embedded one (durable: default fsync settings)
   in a temporary directory; a fresh database, migrated, cluster of 256 shards.
2. The sink (``bench.sink``, asyncio + uvloop + httptools) in its own process.
3. N jobs inserted straight into ``jobs`` (one statement; ids spread over all shards), all firing every second.
4. One node process (``shardwheel node --shards 0-255``), started after the jobs exist; the measured window
   opens ``--warmup`` seconds after the node is ready and lasts D seconds.
5. SIGTERM to the node (graceful release), SIGTERM to the sink (it writes what it received).
6. The bare dispatcher: the same N pre-encoded requests fired at every whole second for D seconds against a
   fresh sink, no database, no wheel: the floor the node's figures should be compared to.

Reported for the window, per run: firings/s achieved, drift (sink receive time - scheduled second)
p50/p99/p99.9/max, lost slots (expected (job, second) pairs never received), duplicates, and, from
PostgreSQL, slots without exactly one terminal execution row. JSON and a markdown table.

Example::

    python -m bench.steady --jobs 1000 --duration 30
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import trio

from protocol.jobs import JobSpec, Target
from protocol.schedules import Cron
from shardwheel.embedded import EmbeddedPostgres, free_port

from .harness import ROOT, cpu_s, insert_jobs, prepare_db, profile_window, rss_mb, stop_on_sigterm, wait_ready
from .results import read_sink, start_sink, stop_sink, window_figures

__all__ = ["main", "run_steady"]

async def _slot_states(dsn: str, t0: int, t1: int) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT status, count(*) AS n FROM executions WHERE scheduled_at >= to_timestamp($1)"
            " AND scheduled_at < to_timestamp($2) GROUP BY status", t0, t1,
        )  # fmt: skip
    finally:
        await conn.close()
    return {r["status"]: r["n"] for r in rows}


def run_steady(
    jobs: int, duration: int, *, warmup: int = 3, start_delay: int = 15, pg_dsn: str | None = None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sw-bench-") as tmp_s:
        tmp = Path(tmp_s)
        pg = EmbeddedPostgres.from_env(tmp / "pg") if pg_dsn is None else None
        if pg is not None:
            pg.start()
        try:
            admin = pg_dsn or (pg.dsn if pg else "")
            dsn = asyncio.run(prepare_db(admin, f"sw_bench_{os.getpid()}"))
            sink, port = start_sink(str(tmp / "sink.jsonl"))
            try:
                # The jobs start firing a little after the node will be ready, so the measured seconds are
                # not polluted by the catch-up of slots between insertion and node start.
                start = datetime.fromtimestamp(math.ceil(time.time()) + start_delay, UTC)
                spec = JobSpec(name="bench", schedule=Cron("* * * * * *"), start_at=start,
                               target=Target(url=f"http://127.0.0.1:{port}/fire"))  # fmt: skip
                asyncio.run(insert_jobs(dsn, [spec] * jobs))
                node_port = free_port()
                env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDWHEEL_")}
                node = subprocess.Popen(
                    [sys.executable, "-m", "shardwheel.cli", "node", "--dsn", dsn, "--port", str(node_port),
                     "--node-id", "bench-node", "--log-level", "warning", "--dev"],
                    cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                )  # fmt: skip
                started = time.time()
                try:
                    ready_at = wait_ready(f"http://127.0.0.1:{node_port}", 120)
                    t0 = max(math.ceil(ready_at), round(start.timestamp())) + warmup
                    t1 = t0 + duration
                    time.sleep(max(0.0, t0 - time.time()))
                    cpu0 = cpu_s(node.pid)
                    spy = profile_window(node.pid, duration)
                    time.sleep(max(0.0, t1 - time.time()))
                    if spy is not None:
                        spy.wait(30)
                    cpu = cpu_s(node.pid) - cpu0
                    time.sleep(max(0.0, t1 + 1.5 - time.time()))
                    rss = rss_mb(node.pid)
                    metrics = httpx.get(f"http://127.0.0.1:{node_port}/metrics", timeout=5).text
                finally:
                    node.send_signal(signal.SIGTERM)
                    node.wait(60)
            finally:
                stop_sink(sink)
            records = read_sink(str(tmp / "sink.jsonl"))
            states = asyncio.run(_slot_states(dsn, t0, t1))
        finally:
            if pg is not None:
                pg.stop()
    figures, _ = window_figures(records, t0, t1, jobs)
    terminal = sum(n for s, n in states.items() if s not in ("claimed", "retry_wait"))
    return {
        "scenario": "steady",
        **figures,
        "db_rows_terminal": terminal,
        "db_rows_not_terminal": sum(n for s, n in states.items() if s in ("claimed", "retry_wait")),
        "db_statuses": states,
        "node_start_to_ready_s": round(ready_at - started, 2),
        "node_peak_rss_mb": round(rss, 1),
        # CPU the node used per second of the window, and per firing: the figure that noise moves least.
        "node_cpu_per_s_ms": round(cpu / duration * 1000, 1),
        "node_cpu_per_firing_us": round(cpu / max(1.0, figures["firings_per_s"] * duration) * 1e6, 1),
        "node_dispatch_lag_p99_ms": _metric(metrics, 'shardwheel_dispatch_lag{quantile="0.99"}'),
    }


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def run_bare(jobs: int, duration: int, *, connections: int = 256) -> dict[str, Any]:
    """The same N requests at every whole second straight through the dispatcher: the baseline."""
    from .bare import fire_every_second

    with tempfile.TemporaryDirectory(prefix="sw-bench-") as tmp:
        out = os.path.join(tmp, "sink.jsonl")
        sink, port = start_sink(out)
        try:
            t0, t1, cpu = trio.run(fire_every_second, port, jobs, duration, connections)
        finally:
            stop_sink(sink)
        records = read_sink(out)
    figures, _ = window_figures(records, t0, t1, jobs)
    return {
        "scenario": "bare_dispatcher",
        **figures,
        "node_cpu_per_firing_us": round(cpu / max(1.0, figures["firings_per_s"] * duration) * 1e6, 1),
    }


def markdown(results: list[dict[str, Any]]) -> str:
    head = ("| scenario | jobs | s | firings/s | p50 ms | p99 ms | p99.9 ms | max ms | p99 handled ms | lost | dup"
            " | not terminal | node CPU µs/firing |")  # fmt: skip
    lines = [head, "|" + "---|" * 13]
    for r in results:
        d = r["drift_ms"]
        lines.append(
            f"| {r['scenario']} | {r['jobs']} | {r['duration_s']} | {r['firings_per_s']} | {d['p50']} | {d['p99']} |"
            f" {d['p99.9']} | {d['max']} | {r['drift_handled_ms'].get('p99', '-')} | {r['lost']} | {r['duplicates']} |"
            f" {r.get('db_rows_not_terminal', '-')} | {r.get('node_cpu_per_firing_us', '-')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    p = argparse.ArgumentParser(prog="python -m bench.steady", description=__doc__.splitlines()[0])
    p.add_argument(
        "--jobs", type=int, nargs="+", default=[100, 1000], help="N values to run, e.g. 100 1000 5000"
    )
    p.add_argument("--duration", type=int, default=30, help="measured seconds per run")
    p.add_argument("--warmup", type=int, default=3, help="seconds after the node is ready before measuring")
    p.add_argument("--no-bare", action="store_true", help="skip the bare-dispatcher baseline")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    results: list[dict[str, Any]] = []
    for n in args.jobs:
        results.append(
            run_steady(n, args.duration, warmup=args.warmup, pg_dsn=os.environ.get("SHARDWHEEL_PG_DSN"))
        )
        if not args.no_bare:
            results.append(run_bare(n, args.duration))
        print(
            msgspec.json.format(
                msgspec.json.encode(results[-2:] if not args.no_bare else results[-1:])
            ).decode(),
            flush=True,
        )
    print(markdown(results))
    if args.json:
        Path(args.json).write_bytes(msgspec.json.format(msgspec.json.encode(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
