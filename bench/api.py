"""The control API under load: request rates and latency by kind, and the CPU each process spends per request.

What it starts: embedded PostgreSQL and etcd, one node in cluster mode, ``shardwheel api``, and a key with no
practical rate limit; ``--jobs`` jobs inserted for the reads. The load comes from ``--procs`` generator
processes (one Python client would be the bottleneck), each with its own connections and a raw HTTP/1.1
client (keep-alive, pre-built requests), so the API, not the generator, is what is measured.

Scenarios (``--scenarios``, each ``--duration`` seconds, one after the other):
- ``get``: ``GET /v1/jobs/{id}`` of random stored jobs, closed loop (each connection sends its next request
  when the last is answered): the highest rate.
- ``create``: single ``POST /v1/jobs``, closed loop: jobs/s through routing, the node's batches and PostgreSQL.
- ``create500``: the same at an offered 500/s, open loop (latency from the intended send time, so a stall
  is not hidden by sending less): p99.
- ``mixed``: 200 req/s offered, open loop: 60 % get, 10 % list, 20 % create, 10 % pause or resume.
- ``batch``: ``POST /v1/jobs:batch`` of 1,000 jobs, closed loop: jobs/s.
Every answer's status is counted: a scenario with any answer other than the expected one says so.

CPU per request: user+system seconds of the API, the node, PostgreSQL (its server processes) and the
generators over the scenario, divided by the requests answered.

    .venv/bin/python -m bench.api --procs 4 --duration 20 --scenarios get create create500 mixed batch
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import resource
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from protocol.jobs import JobSpec, Target
from protocol.schedules import At
from shardwheel.embedded import EmbeddedEtcd, EmbeddedPostgres, free_port

from .disk import DiskWatch
from .harness import ROOT, insert_jobs, prepare_db, profiled, stop_on_sigterm, tree_cpu_s, wait_ready

__all__ = ["run_api_bench"]

_LATER = "2099-01-01T00:00:00Z"  # the jobs never fire: the API is measured, not the targets


def _job_body(i: int) -> bytes:
    return msgspec.json.encode({"name": f"api-bench-{i}", "schedule": {"kind": "at", "at": _LATER},
                                "target": {"url": "https://bench.example/hook"}, "tags": ["bench"]})  # fmt: skip


def _request(method: str, path: str, key: str, body: bytes | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: api\r\nAuthorization: Bearer {key}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + (body or b"")


class _Requests:
    """The next request of a scenario (bytes) and the status it must answer."""

    def __init__(self, scenario: str, key: str, ids: list[str], seed: int) -> None:
        self.scenario, self.key, self.ids = scenario, key, ids
        self.rng = random.Random(seed)
        self.n = seed * 10_000_000

    def next(self) -> tuple[bytes, int]:
        self.n += 1
        kind = self.scenario
        if kind == "mixed":
            r = self.rng.random()
            kind = "get" if r < 0.6 else "list" if r < 0.7 else "create" if r < 0.9 else "state"
        if kind == "get":
            return _request("GET", f"/v1/jobs/{self.rng.choice(self.ids)}", self.key), 200
        if kind == "healthz":  # the framework's floor: no authentication, no database
            return _request("GET", "/healthz", self.key), 200
        if kind == "list":
            return _request("GET", "/v1/jobs?limit=20", self.key), 200
        if kind in ("create", "create500"):
            return _request("POST", "/v1/jobs", self.key, _job_body(self.n)), 201
        if kind == "state":
            op = self.rng.choice(("pause", "resume"))
            return _request("POST", f"/v1/jobs/{self.rng.choice(self.ids)}/{op}", self.key), 200
        if kind == "batch":
            body = b'{"jobs":[' + b",".join(_job_body(self.n * 1000 + i) for i in range(1000)) + b"]}"
            return _request("POST", "/v1/jobs:batch", self.key, body), 200
        raise ValueError(kind)


async def _answer(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


async def _generate(port: int, scenario: str, key: str, ids: list[str], seed: int, conns: int,
                    rate: float | None, duration: float) -> dict[str, Any]:  # fmt: skip
    """One generator process: closed loop over ``conns`` connections, or open loop at ``rate`` req/s."""
    requests = _Requests(scenario, key, ids, seed)
    latencies: list[float] = []
    sent_at: list[float] = []  # each request's intended send, wall clock: where a tail came from
    statuses: dict[str, int] = {}
    unexpected: list[int] = []
    idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    opened = []
    for _ in range(conns):
        pair = await asyncio.open_connection("127.0.0.1", port)
        opened.append(pair)
        idle.put_nowait(pair)
    # The schedule starts once the connections are open: an open loop's first requests would otherwise carry
    # the connections' setup as latency (the first second of create500 was its worst in most runs).
    start = time.perf_counter()
    wall = time.time() - start  # perf_counter -> wall clock, to line a stall up with other processes' logs
    stop = start + duration

    async def one(intended: float) -> None:
        reader, writer = await idle.get()
        data, want = requests.next()
        writer.write(data)
        status = await _answer(reader)
        latencies.append(time.perf_counter() - intended)
        sent_at.append(wall + intended)
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        if status != want and len(unexpected) < 5:
            unexpected.append(status)
        idle.put_nowait((reader, writer))

    if rate is None:
        async def loop() -> None:
            while time.perf_counter() < stop:
                await one(time.perf_counter())

        await asyncio.gather(*(loop() for _ in range(conns)))
    else:
        tasks = set()
        interval, k = 1 / rate, 0
        while (intended := start + k * interval) < stop:
            await asyncio.sleep(max(0.0, intended - time.perf_counter()))
            task = asyncio.create_task(one(intended))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            k += 1
        await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    for _, writer in opened:
        writer.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"latencies": latencies, "sent_at": sent_at, "statuses": statuses, "unexpected": unexpected,
            "elapsed": elapsed, "cpu_s": usage.ru_utime + usage.ru_stime}  # fmt: skip


def _worker(out: Any, *args: Any) -> None:
    out.send(asyncio.run(_generate(*args)))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


def run_scenario(port: int, key: str, ids: list[str], scenario: str, procs: int, duration: float,
                 pids: dict[str, int], pg_data: Path) -> dict[str, Any]:  # fmt: skip
    rate = {"create500": 500.0, "mixed": 200.0}.get(scenario)
    conns = {"batch": 2, "create500": 32, "mixed": 16}.get(scenario, 8)
    cpu0 = {name: tree_cpu_s(pid) for name, pid in pids.items()}
    pg_pid = _postmaster_pid(pg_data)
    pg0 = tree_cpu_s(pg_pid) if pg_pid else None
    pipes, workers = [], []
    with DiskWatch(pg_data) as disk:
        for i in range(procs):
            parent, child = multiprocessing.Pipe(duplex=False)
            w = multiprocessing.Process(target=_worker, args=(child, port, scenario, key, ids, i + 1, conns,
                                                              None if rate is None else rate / procs, duration))  # fmt: skip
            w.start()
            pipes.append(parent)
            workers.append(w)
        results = [p.recv() for p in pipes]
    for w in workers:
        w.join()
    cpu = {name: tree_cpu_s(pid) - cpu0[name] for name, pid in pids.items()}
    if pg0 is not None and pg_pid:
        cpu["postgres"] = tree_cpu_s(pg_pid) - pg0
    cpu["generators"] = sum(r["cpu_s"] for r in results)
    latencies = [x for r in results for x in r["latencies"]]
    by_second: dict[int, list[float]] = {}
    for r in results:
        for at, latency in zip(r["sent_at"], r["latencies"], strict=True):
            by_second.setdefault(int(at), []).append(latency)
    p99_by_second = {s: _percentile(v, 0.99) for s, v in sorted(by_second.items())}
    statuses: dict[str, int] = {}
    for r in results:
        for s, n in r["statuses"].items():
            statuses[s] = statuses.get(s, 0) + n
    answered = len(latencies)
    elapsed = max(r["elapsed"] for r in results)
    per = 1000 if scenario == "batch" else 1
    return {
        "scenario": scenario, "offered_per_s": rate, "procs": procs, "connections": conns * procs,
        "answered": answered, "per_s": round(answered / elapsed, 1),
        "jobs_per_s": round(answered * per / elapsed, 1) if scenario in ("create", "create500", "batch") else None,
        "p50_ms": round(_percentile(latencies, 0.5), 2), "p99_ms": round(_percentile(latencies, 0.99), 2),
        "max_ms": round(_percentile(latencies, 1.0), 2), "statuses": statuses,
        # a p99 set by one stall shows as one bad second; a slow path as many
        "seconds_p99_over_100ms": sum(v > 100 for v in p99_by_second.values()),
        "worst_second_p99_ms": round(max(p99_by_second.values(), default=float("nan")), 1),
        "unexpected": sorted({u for r in results for u in r["unexpected"]}),
        "p99_ms_by_second": {s: round(v, 1) for s, v in p99_by_second.items()},  # unix second -> p99
        "disk_stalls_ms": [[round(at, 2), round(s * 1000)] for at, s in disk.stalls(0.1)],
        "cpu_us_per_request": {k: round(v / max(1, answered) * 1e6, 1) for k, v in cpu.items()},
    }  # fmt: skip


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


async def _make_key(dsn: str) -> str:
    from scheduler_node.store import Role, create_api_key
    from scheduler_node.store.pool import connect

    conn = await connect(dsn)
    try:
        secret, _ = await create_api_key(conn, tenant="bench", role=Role.WRITER, name="bench",
                                         rate_limit_per_s=1e6, burst=1_000_000)  # fmt: skip
    finally:
        await conn.close()
    return secret


def run_api_bench(scenarios: list[str], *, jobs: int, procs: int, duration: float, warmup: float = 10.0,
                  durable: bool = True, api_workers: int = 1) -> list[dict[str, Any]]:  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="sw-api-bench-") as tmp_s:
        tmp = Path(tmp_s)
        pg = EmbeddedPostgres.from_env(tmp / "pg", durable=durable)
        etcd = EmbeddedEtcd.from_env(tmp / "etcd")
        pg.start()
        etcd.start()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDWHEEL_")}
        started: list[subprocess.Popen[bytes]] = []
        try:
            dsn = asyncio.run(prepare_db(pg.dsn, f"sw_api_bench_{os.getpid()}"))
            spec = JobSpec(name="read-me", schedule=At(datetime(2099, 1, 1, tzinfo=UTC)), target=Target(url="https://bench.example/r"),
                           tags=["bench"])  # fmt: skip
            ids = [str(i) for i in asyncio.run(insert_jobs(dsn, [spec] * jobs))]
            key = asyncio.run(_make_key(dsn))
            common = ["--dsn", dsn, "--etcd", etcd.endpoint, "--etcd-prefix", f"/bench{os.getpid()}", "--dev",
                      "--log-level", "warning"]  # fmt: skip
            node_port, api_port = free_port(), free_port()
            started.append(subprocess.Popen([*profiled("NODE"), sys.executable, "-m", "shardwheel.cli", "node",
                                             *common, "--port", str(node_port), "--node-id", "bench-node"],
                                            cwd=ROOT, env=env, stdin=subprocess.DEVNULL))  # fmt: skip
            wait_ready(f"http://127.0.0.1:{node_port}", 120)
            started.append(subprocess.Popen([*profiled("API"), sys.executable, "-m", "shardwheel.cli", "api",
                                             *common, "--port", str(api_port), "--workers", str(api_workers)],
                                            cwd=ROOT, env=env, stdin=subprocess.DEVNULL))  # fmt: skip
            wait_ready(f"http://127.0.0.1:{api_port}", 60)
            pids = {"api": started[1].pid, "node": started[0].pid}  # the API's workers are its children
            pg_data = tmp / "pg" / "data"
            # Warm up (connections, caches) while the node settles the jobs inserted for the reads.
            run_scenario(api_port, key, ids, "get", procs, warmup, pids, pg_data)
            return [run_scenario(api_port, key, ids, s, procs, duration, pids, pg_data) for s in scenarios]
        finally:
            for p in started:
                # py-spy writes its profile on SIGINT and passes it on to the profiled process
                p.send_signal(signal.SIGINT if isinstance(p.args, list) and p.args[0] == "py-spy" else signal.SIGTERM)
            for p in started:
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
            etcd.stop()
            pg.stop()


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| scenario | offered/s | answered/s | jobs/s | p50 ms | p99 ms | worst second's p99 ms (seconds over "
             "100 ms) | disk stalls ≥ 100 ms (longest ms) | µs CPU per request (API / node / PostgreSQL / generators) "
             "| statuses |",
             "|---|--:|--:|--:|--:|--:|--:|--:|---|---|"]  # fmt: skip
    for r in results:
        c = r["cpu_us_per_request"]
        stalls = r["disk_stalls_ms"]
        cpu = " / ".join(str(c.get(k, "-")) for k in ("api", "node", "postgres", "generators"))
        lines.append(f"| {r['scenario']} | {r['offered_per_s'] or 'max'} | {r['per_s']} | {r['jobs_per_s'] or '-'} |"
                     f" {r['p50_ms']} | {r['p99_ms']} | {r['worst_second_p99_ms']} ({r['seconds_p99_over_100ms']}) |"
                     f" {len(stalls)} ({max((ms for _, ms in stalls), default=0)}) | {cpu} | {r['statuses']} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    p = argparse.ArgumentParser(prog="python -m bench.api", description=__doc__.split("\n\n")[0])
    p.add_argument("--scenarios", nargs="+", default=["get", "create", "create500", "mixed", "batch"],
                   choices=["healthz", "get", "create", "create500", "mixed", "batch"])
    p.add_argument("--jobs", type=int, default=10_000, help="jobs stored for the reads")
    p.add_argument("--procs", type=int, default=4, help="generator processes")
    p.add_argument("--duration", type=float, default=20.0, help="seconds per scenario")
    p.add_argument("--json", type=Path, help="write the results here too")
    p.add_argument("--api-workers", type=int, default=1, help="shardwheel api --workers")
    p.add_argument("--no-fsync", action="store_true",
                   help="PostgreSQL without fsync (a diagnosis: how much of a tail is the disk's)")
    args = p.parse_args(argv)
    results = run_api_bench(args.scenarios, jobs=args.jobs, procs=args.procs, duration=args.duration,
                            durable=not args.no_fsync, api_workers=args.api_workers)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
