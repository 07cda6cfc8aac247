"""``python -m bench``: drive a Shardwheel cluster from outside, through its public API and a sink, and say how it
behaved.

The cluster is either a local one this starts (``--dev``: ``shardwheel dev`` in a temporary directory, with
``--nodes``) or a running one (``--url`` and ``--key``, an admin key for the cluster figures; the sink must then
be reachable from the nodes: ``--sink-host 0.0.0.0 --sink-port P --sink-url http://<this host>:P``, and the cluster's
egress policy must allow that address). Jobs are created through ``POST /v1/jobs:batch`` with the tag of the run
and, on a running cluster, removed with ``jobs:bulk-delete`` at the end (a ``--dev`` cluster goes with them). The load shape of the older benches stays: N jobs firing every
second (``* * * * * *``), so all fire on the whole second.

Scenarios:
- ``steady``: ``--jobs`` firings a second for ``--duration`` seconds.
- ``ramp``: the rate raised by ``--step`` every ``--step-duration`` seconds until a step's drift p99 passes
  ``--p99-bound-ms`` or a firing is lost; reports the highest rate sustained.
- ``failover`` (``--dev`` only): steady load, half the jobs AT_MOST_ONCE and half AT_LEAST_ONCE (FIRE_ALL), one
  node killed with SIGKILL ``--kill-at`` seconds in: the silence of its jobs, the worst lateness, lost and
  duplicate firings per semantics, and the time until every shard has an owner again.
- ``cluster``: the same steady load on a local cluster of 1 node and one of 3.
- ``overload``: twice ``--capacity`` offered for ``--duration`` seconds, then half of it as long (the jobs
  ``FIRE_ONCE`` with ``--grace-ms``): delivered and skipped per second in each phase, lateness, and how long the
  lateness took to come back under a second once the load dropped.
- ``herd``: ``--jobs`` one-shot jobs due in the same second (with ``--jitter``, spread by it) beside
  ``--background`` jobs firing every second: the herd's drain time and rate, its slots missing or doubled, and
  the background group's lateness meanwhile.
- ``soak``: ``--jobs`` firings a second for ``--duration`` seconds (30 minutes and more), sampled every
  ``--sample`` seconds: drift p50/p99, node and PostgreSQL CPU per firing, WAL per firing, the nodes' resident
  memory, the executions table's size and the disk's write stalls, each against its first window (flat: none
  more than 20 % above it; grows: the last third's median more than 20 % above the first third's).
  With ``--history-rows``, the jobs' history of the ``--history-days`` before today is written first (straight
  into PostgreSQL), and halfway through, the oldest day is dropped as a node's retention drops it; with
  ``--today-rows``, today's partition holds that many rows before the run (a cluster measured past midnight).
- ``api``: the control-API bench (``bench.api``: request rates, latency and CPU per request by kind).
- ``scale``: ``bench.scale`` (1,000,000 registered jobs: time to ready, memory).

Each run writes ``<out>/<scenario>.json`` (parameters, commit, machine, figures, the per-second timeline),
``<out>/<scenario>.md`` (a table) and, when matplotlib is installed (``pip install 'shardwheel[bench]'``),
``<out>/<scenario>.png``: firings/s and drift p50/p99 per second, the kill marked. A progress line shows the
run while it goes.

    python -m bench steady --dev --jobs 1000 --duration 30
    python -m bench failover --dev --jobs 300 --duration 30 --kill-at 10
    python -m bench steady --url http://api:8080 --key "$KEY" --sink-host 0.0.0.0 --sink-port 9000 \\
        --sink-url http://bench:9000
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import msgspec

from protocol.jitter import parse_jitter
from shardwheel.api_client import ApiClient
from shardwheel.embedded import _process_tree, free_port

from .disk import DiskWatch
from .harness import cpu_s, rss_mb, stop_on_sigterm, tree_cpu_s
from .results import ROOT, drift_summary, read_sink, start_sink, stop_sink
from .timeline import delivery, drain, flatness, recovery_s, silence_ms, sustained, timeline, windows

__all__ = ["main"]

_BATCH = 1000


class Cluster:
    """The cluster under load: its API (with a key) and, for ``--dev``, the ``shardwheel dev`` process."""

    def __init__(self, url: str, key: str, dev: subprocess.Popen[bytes] | None = None, pg_dsn: str | None = None,
                 etcd_url: str | None = None, pg_data: Path | None = None) -> None:  # fmt: skip
        self.url, self.key, self.dev = url, key, dev
        self.pg_dsn, self.etcd_url, self.pg_data = pg_dsn, etcd_url, pg_data
        self.api = ApiClient(url, key, timeout=120)

    def _node_pids(self, node: str | None = None) -> list[int]:
        """The dev cluster's node processes (``node``: that one only), from their command lines."""
        assert self.dev is not None
        pids = []
        for pid in _process_tree(self.dev.pid):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"node" in cmdline and any(a == node.encode() if node else a.startswith(b"dev-node-") for a in cmdline):
                pids.append(pid)
        return pids

    def costs(self) -> dict[str, float] | None:
        """Cumulative counters to difference over a window (local clusters only): the nodes' and PostgreSQL's CPU
        seconds, PostgreSQL's WAL position in bytes, etcd's client gRPC bytes."""
        if self.dev is None or self.pg_dsn is None or self.pg_data is None:
            return None
        postmaster = int((self.pg_data / "postmaster.pid").read_text().split()[0])
        etcd_bytes = float("nan")
        if self.etcd_url:
            text = httpx.get(f"{self.etcd_url}/metrics", timeout=5).text
            etcd_bytes = sum(float(v) for v in re.findall(
                r"^etcd_network_client_grpc_(?:received|sent)_bytes_total(?:\{[^}]*\})? (\S+)$", text, re.M))  # fmt: skip
        wal = float(self._fetch("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn AS b")[0]["b"])
        return {"nodes_cpu_s": sum(cpu_s(p) for p in self._node_pids()), "pg_cpu_s": tree_cpu_s(postmaster),
                "wal_bytes": wal, "etcd_bytes": etcd_bytes, "nodes": len(self._node_pids())}  # fmt: skip

    def memory(self) -> dict[str, float]:
        """The nodes' resident memory and the executions table's size, both in MiB (local clusters only)."""
        size = self._fetch("SELECT coalesce(sum(pg_total_relation_size(inhrelid)), 0) AS b FROM pg_inherits"
                           " WHERE inhparent = 'executions'::regclass")[0]["b"]  # fmt: skip
        return {"nodes_rss_mb": round(sum(rss_mb(p, now=True) for p in self._node_pids()), 1),
                "executions_mb": round(int(size) / 2**20, 1)}

    def fill_history(self, jobs: list[str], days: int, rows: int, until: datetime, today_rows: int) -> int:
        """``bench.harness.fill_history`` on the local cluster's PostgreSQL: the execution rows written."""
        import asyncio

        from .harness import fill_history

        assert self.pg_dsn is not None
        return asyncio.run(fill_history(self.pg_dsn, [uuid.UUID(j) for j in jobs], days, rows, until, today_rows))

    def drop_days_before(self, day: date) -> dict[str, Any]:
        """Retention now, by the nodes' own ``drop_partitions_before``: the partitions dropped, those busy, and
        how long it took."""
        from scheduler_node.store.partitions import drop_partitions_before

        took = time.monotonic()
        done = self._on_db(lambda conn: drop_partitions_before(conn, day))
        return {"dropped": done.dropped, "busy": done.busy, "took_ms": round((time.monotonic() - took) * 1000, 1)}

    def _on_db(self, work: Callable[[Any], Awaitable[Any]]) -> Any:
        """``work(connection)`` on the local cluster's PostgreSQL, on a connection of its own."""
        import asyncio

        import asyncpg

        async def run() -> Any:
            conn = await asyncpg.connect(self.pg_dsn)
            try:
                return await work(conn)
            finally:
                await conn.close()

        return asyncio.run(run())

    def _fetch(self, sql: str, *args: Any) -> list[Any]:
        """One query on the local cluster's PostgreSQL."""
        return list(self._on_db(lambda conn: conn.fetch(sql, *args)))

    def rows(self, t0: int, t1: int) -> dict[str, int]:
        """Execution and attempt rows of the slots in [t0, t1) (local clusters only)."""
        lo, hi = _utc(t0), _utc(t1)
        sql = "SELECT count(*) AS n FROM {} WHERE scheduled_at >= $1 AND scheduled_at < $2"
        return {table: int(self._fetch(sql.format(table), lo, hi)[0]["n"])
                for table in ("executions", "execution_attempts")}  # fmt: skip

    def create_every_second(self, n: int, sink_url: str, tag: str, semantics: Callable[[int], str],
                            start: int = 0, **fields: Any) -> dict[str, str]:  # fmt: skip
        """``n`` jobs firing every second at the sink; their ids and semantics. ``fields``: more of each spec
        (by default every missed slot fires: FIRE_ALL within a minute)."""
        made: dict[str, str] = {}
        for first in range(start, start + n, _BATCH):
            chunk = range(first, min(start + n, first + _BATCH))
            specs = [{"name": f"{tag}-{i}", "schedule": {"kind": "cron", "cron": "* * * * * *"},
                      "target": {"url": f"{sink_url}/b/{i}"}, "tags": [tag], "semantics": semantics(i),
                      "misfire": {"policy": "FIRE_ALL", "grace_ms": 60_000, "max_catchup": 1000}} | fields
                     for i in chunk]  # fmt: skip
            answer = self.api.json("POST", "/v1/jobs:batch", json={"jobs": specs},
                                   headers={"idempotency-key": f"{tag}-{first}"})  # fmt: skip
            for item, i in zip(answer["items"], chunk, strict=True):
                if item.get("problem"):
                    raise RuntimeError(f"creating job {i}: {item['problem'].get('detail')}")
                made[item["id"]] = semantics(i)
        return made

    def slot_statuses(self, t0: int, t1: int) -> dict[int, dict[str, int]]:
        """Execution rows of the slots in [t0, t1) by second and status (local clusters only)."""
        out: dict[int, dict[str, int]] = {}
        for r in self._fetch(
            "SELECT extract(epoch FROM date_trunc('second', scheduled_at))::int8 AS t, status, count(*) AS n"
            " FROM executions WHERE scheduled_at >= $1 AND scheduled_at < $2 GROUP BY 1, 2", _utc(t0), _utc(t1),
        ):  # fmt: skip
            out.setdefault(int(r["t"]), {})[r["status"]] = int(r["n"])
        return out

    def delete_tag(self, tag: str) -> None:
        if self.dev is not None:
            return  # a throwaway cluster, gone with its directory (deleting a 100,000-job herd took minutes)
        for _ in range(20):  # a bulk operation by tag takes at most 10,000 jobs a call
            answer = self.api.json("POST", "/v1/jobs:bulk-delete", json={"tag": tag})
            if not answer["items"]:
                return

    def status(self) -> dict[str, Any]:
        return self.api.json("GET", "/v1/cluster")  # type: ignore[no-any-return]

    def kill_node(self, node: str) -> None:
        pids = self._node_pids(node)
        if not pids:
            raise RuntimeError(f"no process of node {node}")
        os.kill(pids[0], signal.SIGKILL)


@contextmanager
def dev_cluster(nodes: int, log: Path) -> Iterator[Cluster]:
    """``shardwheel dev`` in a temporary directory: its API and its admin key."""
    with tempfile.TemporaryDirectory(prefix="sw-bench-dev-", dir="/tmp") as tmp:
        data = Path(tmp) / "dev"
        api_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHARDWHEEL_")}
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "shardwheel.cli", "dev", "--data-dir", str(data),
                                     "--nodes", str(nodes), "--api-port", str(api_port),
                                     "--target-port", str(free_port()), "--log-level", "warning", "--keep-going"],
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    cwd=ROOT, start_new_session=True)  # fmt: skip
            try:
                deadline = time.monotonic() + 300
                while "Ctrl-C stops everything." not in log.read_text(errors="replace"):
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"shardwheel dev did not start; its output is in {log}")
                    time.sleep(0.2)
                banner = log.read_text(errors="replace")
                pg = re.search(r"^  PostgreSQL   (\S+)$", banner, re.M)
                etcd = re.search(r"^  etcd         (\S+)$", banner, re.M)
                yield Cluster(f"http://127.0.0.1:{api_port}", (data / "admin-key").read_text().strip(), proc,
                              pg_dsn=pg[1] if pg else None, etcd_url=etcd[1] if etcd else None,
                              pg_data=data / "pg" / "data")  # fmt: skip
            finally:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(120)
                except subprocess.TimeoutExpired:
                    proc.kill()


@contextmanager
def sink_running(out: Path, host: str, port: int = 0) -> Iterator[int]:
    proc, bound = start_sink(str(out), host, port)
    try:
        yield bound
    finally:
        stop_sink(proc)


def _sink_count(port: int) -> int:
    try:
        return int(httpx.get(f"http://127.0.0.1:{port}/stats", timeout=2).json()["requests"])
    except (httpx.HTTPError, ValueError, KeyError):
        return -1


def _progress(scenario: str, until: float, port: int, note: Callable[[], str] = lambda: "") -> None:
    """One line, rewritten each second, until ``until`` (wall clock)."""
    last = _sink_count(port)
    while (left := until - time.time()) > 0:
        time.sleep(min(1.0, left))
        count = _sink_count(port)
        rate = count - last if last >= 0 and count >= 0 else 0
        last = count
        sys.stderr.write(f"\r{scenario}: {max(0.0, until - time.time()):5.0f} s left, {count:,} firings received, "
                         f"{rate:,}/s {note()}   ")  # fmt: skip
        sys.stderr.flush()
    sys.stderr.write("\n")


def _whole_second(after_s: float) -> int:
    return math.ceil(time.time() + after_s)


# ---- scenarios -------------------------------------------------------------------------------------------------


def steady(cluster: Cluster, args: argparse.Namespace, work: Path, name: str = "steady") -> dict[str, Any]:
    tag = f"bench-{uuid.uuid4().hex[:8]}"
    with sink_running(work / f"{name}-sink.jsonl", args.sink_host, args.sink_port) as port:
        sink_url = args.sink_url or f"http://127.0.0.1:{port}"
        jobs = cluster.create_every_second(args.jobs, sink_url, tag, lambda i: "AT_LEAST_ONCE")
        t0 = _whole_second(args.warmup)
        t1 = t0 + args.duration
        _progress(name, t0, port)
        before = cluster.costs()
        _progress(name, t1, port)
        after = cluster.costs()
        _progress(name, t1 + 3, port)  # the last second's firings arrive and are recorded
        rows = cluster.rows(t0, t1) if before is not None else None
        cluster.delete_tag(tag)
    records = read_sink(str(work / f"{name}-sink.jsonl"))
    line = timeline(records, t0, t1)
    fired = sum(s["fired"] for s in line)
    summary = _drift(records, t0, t1)
    result = {"jobs": args.jobs, "duration_s": args.duration, "firings_per_s": round(fired / args.duration, 1),
              "drift_ms": summary, "delivery": delivery(records, jobs, t0, t1), "timeline": line}  # fmt: skip
    if before is not None and after is not None and rows is not None and fired:
        result["per_firing"] = {
            "nodes_cpu_us": round((after["nodes_cpu_s"] - before["nodes_cpu_s"]) / fired * 1e6, 1),
            "postgres_cpu_us": round((after["pg_cpu_s"] - before["pg_cpu_s"]) / fired * 1e6, 1),
            "wal_bytes": round((after["wal_bytes"] - before["wal_bytes"]) / fired, 1),
            "execution_rows": round(rows["executions"] / fired, 3),
            "attempt_rows": round(rows["execution_attempts"] / fired, 3),
        }
        result["etcd_bytes_per_s_per_node"] = round(
            (after["etcd_bytes"] - before["etcd_bytes"]) / args.duration / max(1, int(after["nodes"])), 1)
    return result


def _drift(records: list[Any], t0: int, t1: int) -> dict[str, float]:
    return drift_summary([r for r in records if r.scheduled_ms is not None and t0 * 1000 <= r.scheduled_ms < t1 * 1000])


def ramp(cluster: Cluster, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    tag = f"bench-{uuid.uuid4().hex[:8]}"
    steps: list[dict[str, Any]] = []
    jobs: dict[str, str] = {}
    with sink_running(work / "ramp-sink.jsonl", args.sink_host, args.sink_port) as port:
        sink_url = args.sink_url or f"http://127.0.0.1:{port}"
        windows: list[tuple[int, int, int]] = []
        rate = args.start
        while rate <= args.max:
            jobs |= cluster.create_every_second(rate - len(jobs), sink_url, tag, lambda i: "AT_LEAST_ONCE",
                                                start=len(jobs))  # fmt: skip
            t0 = _whole_second(2)
            t1 = t0 + args.step_duration
            windows.append((rate, t0, t1))
            _progress(f"ramp {rate}/s", t1 + 2, port)
            # Judged from the sink's live count: the exact figures come from its records at the end.
            rate += args.step
            if _sink_count(port) < 0:
                break
        cluster.delete_tag(tag)
    records = read_sink(str(work / "ramp-sink.jsonl"))
    for rate, t0, t1 in windows:
        d = delivery(records, {j: s for i, (j, s) in enumerate(jobs.items()) if i < rate}, t0, t1)["AT_LEAST_ONCE"]
        steps.append({"rate": rate, "p99_ms": _drift(records, t0, t1).get("p99", float("nan")), "lost": d["lost"],
                      "duplicates": d["duplicates"], "t0": t0, "t1": t1})  # fmt: skip
    return {"steps": steps, "p99_bound_ms": args.p99_bound_ms, "sustained_per_s": sustained(steps, args.p99_bound_ms),
            "timeline": timeline(records, windows[0][1], windows[-1][2]) if windows else []}  # fmt: skip


def soak(cluster: Cluster, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """``--jobs`` jobs every second for ``--duration`` seconds, a sample of the cluster's costs every ``--sample``
    seconds: whether drift, CPU per firing and memory stay flat while the history grows."""
    if cluster.dev is None:
        raise SystemExit("python -m bench: soak reads the nodes' and PostgreSQL's CPU and memory: give --dev")
    tag = f"bench-{uuid.uuid4().hex[:8]}"
    history: dict[str, Any] = {}
    with sink_running(work / "soak-sink.jsonl", args.sink_host, args.sink_port) as port:
        sink_url = args.sink_url or f"http://127.0.0.1:{port}"
        jobs = cluster.create_every_second(args.jobs, sink_url, tag, lambda i: "AT_LEAST_ONCE")
        today = datetime.now(UTC).date()
        if args.history_rows or args.today_rows:
            print(f"soak: writing {args.history_rows:,} rows of history over {args.history_days} days and "
                  f"{args.today_rows:,} of today", file=sys.stderr)  # fmt: skip
            took = time.monotonic()
            # Today's history ends a minute before now: the new jobs' own slots start after it.
            until = datetime.now(UTC) - timedelta(minutes=1)
            history["history_rows"] = cluster.fill_history(list(jobs), args.history_days, args.history_rows, until,
                                                           args.today_rows)  # fmt: skip
            history["history_fill_s"] = round(time.monotonic() - took, 1)
        t0 = _whole_second(args.warmup)
        t1 = t0 + args.duration
        _progress("soak (before)", t0, port)
        samples = [{**(cluster.costs() or {}), **cluster.memory()}]
        assert cluster.pg_data is not None  # --dev
        with DiskWatch(cluster.pg_data) as disk:  # a drift spike beside a stall of the disk is the disk's
            for t in range(t0 + args.sample, t1 + args.sample, args.sample):
                _progress(f"soak (window {len(samples)} of {math.ceil(args.duration / args.sample)})", min(t, t1),
                          port)  # fmt: skip
                samples.append({**(cluster.costs() or {}), **cluster.memory()})
                if args.history_rows and "retention" not in history and t >= t0 + args.duration // 2:
                    # What a node's hourly retention does when the oldest day falls out of the window, mid-run.
                    history["retention"] = {"at_s": round(time.time() - t0, 1), **cluster.drop_days_before(
                        today - timedelta(days=args.history_days - 1))}  # fmt: skip
            _progress("soak", t1 + 3, port)  # the last second's firings arrive and are recorded
        cluster.delete_tag(tag)
    records = read_sink(str(work / "soak-sink.jsonl"))
    line = windows(records, t0, t1, args.sample)
    stalls = disk.stalls(0.1)
    for w, before, after in zip(line, samples[:-1], samples[1:], strict=True):
        mine = [s for at, s in stalls if w["t"] <= at < w["t"] + args.sample]
        w |= {**_per_firing(before, after, w["fired"]),
              "wal_bytes": round((after["wal_bytes"] - before["wal_bytes"]) / max(1, w["fired"]), 1),
              "nodes_rss_mb": after["nodes_rss_mb"], "executions_mb": after["executions_mb"],
              "disk_stalls": len(mine), "disk_stall_max_ms": round(max(mine, default=0) * 1000)}  # fmt: skip
    whole = [w for w in line if w["t"] + args.sample <= t1]  # a shorter last window is shown, not judged
    return {"jobs": args.jobs, "duration_s": args.duration, "sample_s": args.sample, **history,
            "drift_ms": _drift(records, t0, t1), "delivery": delivery(records, jobs, t0, t1),
            "flat": {figure: flatness([w[figure] for w in whole])
                     for figure in ("p99_ms", "nodes_cpu_us", "postgres_cpu_us", "nodes_rss_mb")},
            "windows": line}  # fmt: skip


def overload(cluster: Cluster, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Twice ``--capacity`` offered for ``--duration`` seconds, then half of it for as long: what the cluster
    delivered in each phase (firings arrived per second, whatever their slot), how late, what it skipped, and
    how long after the load dropped the lateness was back under a second."""
    tag = f"bench-{uuid.uuid4().hex[:8]}"
    low, high = args.capacity // 2, 2 * args.capacity
    misfire: dict[str, Any] = {"policy": "FIRE_ONCE", "grace_ms": args.grace_ms}
    with sink_running(work / "overload-sink.jsonl", args.sink_host, args.sink_port) as port:
        sink_url = args.sink_url or f"http://127.0.0.1:{port}"
        jobs = cluster.create_every_second(low, sink_url, tag, lambda i: "AT_LEAST_ONCE", misfire=misfire)
        # The rest only for the overload phase; created at ~5,000 jobs/s, so t0 leaves them that long.
        t0 = _whole_second(args.warmup + (high - low) / 3000)
        t1, t2 = t0 + args.duration, t0 + 2 * args.duration
        window = {"start_at": _iso(t0), "end_at": _iso(t1)}
        # a tag of their own: a bulk delete by tag takes at most 10,000 jobs
        jobs |= cluster.create_every_second(high - low, sink_url, f"{tag}-b", lambda i: "AT_LEAST_ONCE", start=low,
                                            misfire=misfire, **window)  # fmt: skip
        _progress("overload (before)", t0, port)
        before = cluster.costs()
        _progress(f"overload ({high:,}/s offered)", t1, port)
        _progress(f"overload ({low:,}/s offered)", t2, port)
        after = cluster.costs()
        _progress("overload (settling)", t2 + 3, port)
        statuses = cluster.slot_statuses(t0, t2) if before is not None else {}
        cluster.delete_tag(tag)
        cluster.delete_tag(f"{tag}-b")
    records = read_sink(str(work / "overload-sink.jsonl"))
    line = timeline(records, t0, t2)
    for point in line:
        point["skipped"] = statuses.get(point["t"], {}).get("skipped_misfire", 0)

    def phase(a: int, b: int, offered: int) -> dict[str, Any]:
        seconds = [p for p in line if a <= p["t"] < b]
        return {"offered_per_s": offered, "delivered_per_s": round(sum(p["arrived"] for p in seconds) / (b - a), 1),
                "skipped_per_s": round(sum(p["skipped"] for p in seconds) / (b - a), 1),
                "drift_ms": _drift(records, a, b)}  # fmt: skip

    result: dict[str, Any] = {"capacity": args.capacity, "grace_ms": args.grace_ms, "duration_s": args.duration,
                              "overload": phase(t0, t1, high), "after": phase(t1, t2, low),
                              "recovered_after_s": recovery_s(line, t1), "timeline": line}  # fmt: skip
    if before is not None and after is not None:
        result["per_firing"] = _per_firing(before, after, sum(p["arrived"] for p in line))
    return result


def herd(cluster: Cluster, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """``--jobs`` one-shot jobs due at the same second (spread by ``--jitter`` if given) beside ``--background``
    jobs firing every second: how long the herd took to drain and at what rate, that each of its slots ended
    once, and how late the background group was meanwhile."""
    tag = f"bench-{uuid.uuid4().hex[:8]}"
    with sink_running(work / "herd-sink.jsonl", args.sink_host, args.sink_port) as port:
        sink_url = args.sink_url or f"http://127.0.0.1:{port}"
        background = cluster.create_every_second(args.background, sink_url, f"{tag}-bg", lambda i: "AT_LEAST_ONCE")
        due = _whole_second(args.warmup + args.jobs / 2_000)  # creating them at ~5,000 jobs/s, with room
        extra = {"jitter": args.jitter} if args.jitter else {}
        tags = [f"{tag}-{k}" for k in range(math.ceil(args.jobs / 10_000))]  # a bulk delete by tag takes 10,000
        jobs: dict[str, str] = {}
        for k, herd_tag in enumerate(tags):
            jobs |= cluster.create_every_second(min(10_000, args.jobs - 10_000 * k), sink_url, herd_tag,
                                                lambda i: "AT_LEAST_ONCE", start=args.background + 10_000 * k,
                                                schedule={"kind": "at", "at": _iso(due)}, **extra)  # fmt: skip
        if time.time() > due - 1:
            raise RuntimeError("creating the herd took longer than planned: give a larger --warmup")
        _progress("herd (before)", due, port)
        before = cluster.costs()
        spread = parse_jitter(args.jitter) / 1000 if args.jitter else 0
        _progress(f"herd ({args.jobs:,} due)", due + spread + args.duration, port)
        after = cluster.costs()
        statuses = cluster.slot_statuses(due, due + 1) if before is not None else {}
        for herd_tag in [*tags, f"{tag}-bg"]:
            cluster.delete_tag(herd_tag)
    records = read_sink(str(work / "herd-sink.jsonl"))
    result: dict[str, Any] = {"jitter": args.jitter, "background_jobs": args.background,
                              "herd": drain(records, jobs, due * 1000)}  # fmt: skip
    end = due + math.ceil(result["herd"]["drain_s"] or 0) + 1
    bg = [r for r in records if r.job in background]
    result["background_drift_ms"] = _drift(bg, due - 2, end)
    result["herd_drift_ms"] = _drift([r for r in records if r.job in jobs], due, due + 1)
    # slots of the herd's second still unfinished (background ones included): 0 once every slot has ended
    result["unfinished"] = sum(n for s in statuses.values() for st, n in s.items() if st in ("claimed", "retry_wait"))
    result["timeline"] = timeline(records, due - 2, end)
    if before is not None and after is not None:
        result["per_firing"] = _per_firing(before, after, result["herd"]["received"])
    return result


def _per_firing(before: dict[str, float], after: dict[str, float], fired: int) -> dict[str, float]:
    """The nodes' and PostgreSQL's CPU per firing (µs) between two ``Cluster.costs()``."""
    return {part: round((after[f"{key}_cpu_s"] - before[f"{key}_cpu_s"]) / max(1, fired) * 1e6, 1)
            for part, key in (("nodes_cpu_us", "nodes"), ("postgres_cpu_us", "pg"))}  # fmt: skip


def _utc(t: int) -> datetime:
    return datetime.fromtimestamp(t, UTC)


def _iso(t: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def failover(cluster: Cluster, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    tag = f"bench-{uuid.uuid4().hex[:8]}"
    victim = "dev-node-2"
    with sink_running(work / "failover-sink.jsonl", args.sink_host, args.sink_port) as port:
        sink_url = args.sink_url or f"http://127.0.0.1:{port}"
        jobs = cluster.create_every_second(args.jobs, sink_url, tag,
                                           lambda i: "AT_MOST_ONCE" if i % 2 else "AT_LEAST_ONCE")  # fmt: skip
        owners = {int(s): v["owner"] for s, v in cluster.status()["shards"].items()}
        t0 = _whole_second(args.warmup)
        t1 = t0 + args.duration
        kill_at = t0 + args.kill_at
        _progress("failover (before the kill)", kill_at, port)
        cluster.kill_node(victim)
        killed = time.time()
        rebalanced = None
        while rebalanced is None and time.time() < killed + 120:
            s = cluster.status()
            if not s["unowned_shards"] and victim not in {m["node"] for m in s["members"]}:
                rebalanced = time.time() - killed
            else:
                time.sleep(0.2)
        _progress("failover (after the kill)", t1 + 5, port)
        cluster.delete_tag(tag)
    from protocol.shards import shard_of

    victim_jobs = {j for j in jobs if owners.get(shard_of(uuid.UUID(j))) == victim}
    records = read_sink(str(work / "failover-sink.jsonl"))
    lateness = [r.recv_ns / 1e6 - r.scheduled_ms for r in records
                if r.job in victim_jobs and r.scheduled_ms is not None and t0 * 1000 <= r.scheduled_ms < t1 * 1000]  # fmt: skip
    return {"jobs": args.jobs, "duration_s": args.duration, "killed": victim, "kill_at": round(killed, 3),
            "kill_at_utc": time.strftime("%H:%M:%S", time.gmtime(killed)),
            "victim_jobs": len(victim_jobs), "silence_ms": silence_ms(records, victim_jobs, t0, t1),
            "worst_lateness_ms": round(max(lateness, default=float("nan")), 1),
            "rebalanced_after_s": None if rebalanced is None else round(rebalanced, 2),
            "delivery": delivery(records, jobs, t0, t1), "drift_ms": _drift(records, t0, t1),
            "timeline": timeline(records, t0, t1)}  # fmt: skip


# ---- outputs ---------------------------------------------------------------------------------------------------


def _machine() -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT,
                                timeout=10).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {"commit": commit, "cpus": os.cpu_count(), "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}", "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip


def markdown(scenario: str, result: dict[str, Any], nested: bool = False) -> str:
    rows: list[tuple[str, Any]] = []

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                add(f"{prefix}{k} " if not prefix else f"{prefix}{k} ", v)
        elif not isinstance(value, list):
            rows.append((prefix.strip(), value))
        elif all(isinstance(v, str) for v in value):  # names (a soak's dropped partitions)
            rows.append((prefix.strip(), ", ".join(value) or "none"))

    for key, value in result.items():
        if key not in ("timeline", "steps", "params", "machine", "runs", "kill_at"):
            add(f"{key} ", value)
    lines = [f"### `{scenario}`", "", "| figure | value |", "| --- | --: |"]
    lines += [f"| {k} | {v:,} |" if isinstance(v, int | float) and not isinstance(v, bool) else f"| {k} | {v} |"
              for k, v in rows]  # fmt: skip
    if result.get("windows"):
        lines += ["", "| window (s) | fired | drift p50 / p99 ms | node / PostgreSQL CPU per firing µs | WAL per firing B "
                  "| nodes RSS MiB | executions MiB | disk stalls ≥ 100 ms (longest ms) |",
                  "| --: | --: | --: | --: | --: | --: | --: | --: |"]  # fmt: skip
        t0 = result["windows"][0]["t"]
        lines += [f"| {w['t'] - t0:,} | {w['fired']:,} | {w['p50_ms']} / {w['p99_ms']} | {w.get('nodes_cpu_us')} / "
                  f"{w.get('postgres_cpu_us')} | {w.get('wal_bytes')} | {w.get('nodes_rss_mb')} | "
                  f"{w.get('executions_mb')} | {w.get('disk_stalls')} ({w.get('disk_stall_max_ms')}) |"
                  for w in result["windows"]]  # fmt: skip
    if result.get("steps"):
        lines += ["", "| offered/s | drift p99 ms | lost | duplicates |", "| --: | --: | --: | --: |"]
        lines += [f"| {s['rate']:,} | {s['p99_ms']} | {s['lost']} | {s['duplicates']} |" for s in result["steps"]]
    for run in result.get("runs", []):
        lines += ["", markdown(f"{scenario}: {run['nodes']} node(s)", run, nested=True)]
    if result.get("scenarios"):  # the api bench's own table
        from .api import markdown as api_table

        lines += ["", api_table(result["scenarios"])]
    if nested:
        return "\n".join(lines)
    m = result.get("machine", {})
    lines += ["", f"Commit {m.get('commit')}, {m.get('cpus')} CPUs, {m.get('system')}, Python {m.get('python')}, "
                  f"{m.get('at')}; command `{result.get('command', '')}`."]  # fmt: skip
    return "\n".join(lines)


def plot(scenario: str, result: dict[str, Any], path: Path) -> bool:
    """Firings/s and drift p50/p99 per second (the kill marked); False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    if result.get("scenarios"):  # api: latency against the rate answered, one point per kind of request
        fig, ax = plt.subplots(figsize=(10, 5))
        for r in result["scenarios"]:
            ax.scatter([r["per_s"]] * 2, [r["p50_ms"], r["p99_ms"]], label=r["scenario"])
            ax.annotate(f"{r['scenario']} p99", (r["per_s"], r["p99_ms"]))
        ax.set_xlabel("requests answered per second")
        ax.set_ylabel("latency ms (p50, p99)")
        ax.set_yscale("log")
        ax.legend()
        fig.suptitle("shardwheel bench api")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return True
    if result.get("windows"):  # soak: each figure per window, against the first window's
        line = result["windows"]
        xs = [(w["t"] - line[0]["t"]) / 60 for w in line]
        fig, axes = plt.subplots(4, 1, figsize=(10, 10), sharex=True)
        panels = [("drift ms", ["p50_ms", "p99_ms"]), ("CPU per firing µs", ["nodes_cpu_us", "postgres_cpu_us"]),
                  ("resident MiB", ["nodes_rss_mb"]), ("executions MiB", ["executions_mb"])]  # fmt: skip
        for ax, (label, keys) in zip(axes, panels, strict=True):
            for key in keys:
                ax.plot(xs, [w.get(key, float("nan")) for w in line], marker="o", label=key)
            ax.set_ylabel(label)
            ax.set_ylim(bottom=0)
            ax.legend(loc="lower right")
        axes[-1].set_xlabel("minutes into the window")
        fig.suptitle(f"shardwheel bench soak: {result.get('jobs', 0):,} firings/s")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return True
    series = [(f"{r['nodes']} node(s)", r["timeline"]) for r in result.get("runs", [])] or [("", result.get("timeline", []))]
    if not any(line for _, line in series):
        return False
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for label, line in series:
        if not line:
            continue
        t0 = line[0]["t"]
        xs = [p["t"] - t0 for p in line]
        top.plot(xs, [p["fired"] for p in line], label=f"{label} fired for the slot".strip())
        top.plot(xs, [p["arrived"] for p in line], label=f"{label} arrived in the second".strip(), alpha=0.7)
        bottom.plot(xs, [p["p99_ms"] for p in line], label=f"{label} p99".strip())
        bottom.plot(xs, [p["p50_ms"] for p in line], label=f"{label} p50".strip(), linestyle="--")
        if "kill_at" in result:
            for ax in (top, bottom):
                ax.axvline(result["kill_at"] - t0, color="red", linestyle=":", label="kill -9")
    top.set_ylabel("firings per second")
    bottom.set_ylim(bottom=0)
    bottom.set_ylabel("drift ms")
    bottom.set_yscale("symlog", linthresh=10)
    bottom.set_xlabel("seconds into the window")
    top.legend(loc="lower right")
    bottom.legend(loc="upper right")
    fig.suptitle(f"shardwheel bench {scenario}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write(scenario: str, result: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = [out / f"{scenario}.json", out / f"{scenario}.md"]
    written[0].write_bytes(msgspec.json.format(msgspec.json.encode(result), indent=1))
    written[1].write_text(markdown(scenario, result) + "\n")
    if plot(scenario, result, out / f"{scenario}.png"):
        written.append(out / f"{scenario}.png")
    return written


# ---- the command -----------------------------------------------------------------------------------------------


def _run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    scenario = args.scenario
    if scenario == "api":
        from .api import run_api_bench

        return {"scenarios": run_api_bench(args.api_scenarios, jobs=args.jobs, procs=args.procs,
                                           duration=args.duration)}  # fmt: skip
    if scenario == "scale":
        from .scale import run_scale

        return run_scale(args.jobs, args.in_horizon)
    if scenario == "failover" and not args.dev:
        raise SystemExit("python -m bench: failover kills a node of a local cluster: give --dev")
    if scenario == "cluster":  # always local: two dev clusters, 1 node then 3
        runs = []
        for nodes in (1, 3):
            with dev_cluster(nodes, work / f"dev-{nodes}.log") as cluster:
                runs.append({"nodes": nodes, **steady(cluster, args, work, f"cluster-{nodes}")})
        return {"runs": runs}
    run = {"steady": steady, "ramp": ramp, "failover": failover, "overload": overload, "herd": herd,
           "soak": soak}[scenario]  # fmt: skip
    if args.dev:
        with dev_cluster(args.nodes, work / "dev.log") as cluster:
            return run(cluster, args, work)
    if not args.url or not args.key:
        raise SystemExit("python -m bench: give --dev, or --url and --key of a running cluster")
    return run(Cluster(args.url, args.key), args, work)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example:\n  python -m bench steady --dev --jobs 1000 --duration 30")  # fmt: skip
    p.add_argument("scenario",
                   choices=["steady", "ramp", "failover", "cluster", "overload", "herd", "soak", "api", "scale"])
    p.add_argument("--dev", action="store_true", help="start a local cluster (shardwheel dev) for the run")
    p.add_argument("--nodes", type=int, default=3, help="--dev: scheduler nodes (default 3)")
    p.add_argument("--url", default=os.environ.get("SHARDWHEEL_URL"), help="a running cluster's API (env SHARDWHEEL_URL)")
    p.add_argument("--key", default=os.environ.get("SHARDWHEEL_API_KEY"), help="an admin key (env SHARDWHEEL_API_KEY)")
    p.add_argument("--sink-host", default="127.0.0.1", help="where the sink listens (0.0.0.0 for a remote cluster)")
    p.add_argument("--sink-port", type=int, default=0, help="the sink's port (default: a free one)")
    p.add_argument("--sink-url", help="the sink as the nodes reach it (default http://127.0.0.1:<port>)")
    p.add_argument("--jobs", type=int, default=1000, help="jobs firing every second (steady, failover, cluster); "
                   "jobs stored (api); registered jobs (scale)")
    p.add_argument("--duration", type=int, default=30, help="seconds measured")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds between creating the jobs and the window")
    p.add_argument("--kill-at", type=int, default=10, help="failover: seconds into the window")
    p.add_argument("--start", type=int, default=500, help="ramp: the first rate")
    p.add_argument("--step", type=int, default=500, help="ramp: added each step")
    p.add_argument("--max", type=int, default=20_000, help="ramp: the last rate tried")
    p.add_argument("--step-duration", type=int, default=15, help="ramp: seconds per step")
    p.add_argument("--p99-bound-ms", type=float, default=1000.0, help="ramp: a step passing this p99 ends the ramp")
    p.add_argument("--capacity", type=int, default=6000, help="overload: the rate the cluster holds; twice it is "
                   "offered, then half")
    p.add_argument("--grace-ms", type=int, default=5000, help="overload: the jobs' misfire grace (FIRE_ONCE)")
    p.add_argument("--jitter", help="herd: the herd's jobs' jitter (e.g. 30s; default none: all in one second)")
    p.add_argument("--background", type=int, default=100, help="herd: jobs firing every second beside the herd")
    p.add_argument("--sample", type=int, default=60, help="soak: seconds per window (each sampled and judged)")
    p.add_argument("--history-rows", type=int, default=0, help="soak: execution rows of the jobs written over the "
                   "--history-days before today first; the oldest day is dropped by retention halfway (default 0)")
    p.add_argument("--history-days", type=int, choices=range(1, 31), metavar="1-30", default=7,
                   help="soak: days the history spans (default 7)")
    p.add_argument("--today-rows", type=int, default=0, help="soak: execution rows of the jobs written into today's "
                   "partition before the run (a cluster measured past midnight; default 0: today's starts empty)")
    p.add_argument("--procs", type=int, default=2, help="api: generator processes")
    p.add_argument("--api-scenarios", nargs="+", default=["get", "create", "create500", "mixed", "batch"],
                   help="api: which kinds of requests")
    p.add_argument("--in-horizon", type=int, default=100_000, help="scale: jobs firing within the horizon")
    p.add_argument("--out", type=Path, default=ROOT / "bench-results", help="where the JSON, markdown and PNG go")
    return p


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    args = build_parser().parse_args(argv)
    command = "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="sw-bench-") as tmp:
        result = _run(args, Path(tmp))
    result = {"scenario": args.scenario, "command": command, "machine": _machine(),
              "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "key"},
              **result}  # fmt: skip
    for path in write(args.scenario, result, args.out):
        print(path)
    print(markdown(args.scenario, result))
    return 0

