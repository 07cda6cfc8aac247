"""The harness around the system under test, shared by the bench scenarios: a fresh migrated database, jobs
inserted straight into it, and a node process's readiness and resource use.

Example::

    dsn = asyncio.run(prepare_db(admin_dsn, "sw_bench"))
    asyncio.run(insert_jobs(dsn, [spec] * 1000))
    node = subprocess.Popen([sys.executable, "-m", "shardwheel.cli", "node", "--dev", "--dsn", dsn, ...], cwd=ROOT)
    ready_at = wait_ready("http://127.0.0.1:8081", 120)
    print(rss_mb(node.pid), cpu_s(node.pid))
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec

from protocol.ids import new_job_id
from protocol.jobs import JobSpec
from protocol.shards import HASH_NAME, shard_of
from shardwheel.embedded import dsn_with_database

__all__ = ["ROOT", "cpu_s", "fill_history", "insert_jobs", "prepare_db", "profile_window", "profiled", "rss_mb",
           "tree_cpu_s", "wait_ready"]

ROOT = Path(__file__).resolve().parent.parent  # the checkout: the cwd of the processes the bench starts


async def prepare_db(admin_dsn: str, name: str) -> str:
    """A fresh database ``name`` on the server of ``admin_dsn`` (dropped first if it exists), migrated, with a
    cluster of 256 shards; returns its DSN."""
    from scheduler_node.store.migrate import ensure_cluster, migrate

    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {name}")
    finally:
        await conn.close()
    dsn = dsn_with_database(admin_dsn, name)
    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        await ensure_cluster(conn, name="bench", shard_count=256, hash_name=HASH_NAME)
    finally:
        await conn.close()
    return dsn


async def insert_jobs(
    dsn: str, specs: list[JobSpec], next_fire_at: Any = None, chunk: int = 50_000
) -> list[uuid.UUID]:
    """Jobs straight into the table, one statement per chunk (the API path is benchmarked elsewhere)."""
    ids = [new_job_id() for _ in specs]
    conn = await asyncpg.connect(dsn)
    try:
        for i in range(0, len(specs), chunk):
            part = specs[i : i + chunk]
            part_ids = ids[i : i + chunk]
            await conn.execute(
                "INSERT INTO jobs (shard, id, tenant, name, spec, state, semantics, next_fire_at)"
                " SELECT s, id, 'bench', n, sp::jsonb, 'active', sem, coalesce($6, now())"
                " FROM unnest($1::int[], $2::uuid[], $3::text[], $4::text[], $5::text[]) AS t(s, id, n, sp, sem)",
                [shard_of(j) for j in part_ids], part_ids, [s.name for s in part],
                [msgspec.json.encode(s).decode() for s in part], [s.semantics.value for s in part],
                next_fire_at,
            )  # fmt: skip
    finally:
        await conn.close()
    return ids


async def fill_history(dsn: str, jobs: list[uuid.UUID], days: int, rows: int, until: datetime,
                       today_rows: int = 0) -> int:  # fmt: skip
    """About ``rows`` executions of ``jobs`` over the ``days`` UTC days before ``until``'s, and ``today_rows``
    more in ``until``'s day before ``until``, each succeeded at its first attempt as the firing path leaves it
    (the attempt in the execution's row, no attempt row), in slot order, then vacuumed and analysed: the history
    a long-running cluster has, for a soak to run on. Straight into the partitions (one INSERT ... SELECT per
    day, no node). The rows written."""
    from scheduler_node.store.partitions import ensure_partitions

    today = until.date()
    midnight = datetime(today.year, today.month, today.day, tzinfo=UTC)
    spans = [(midnight - timedelta(days=d), timedelta(days=1), rows // days) for d in range(days, 0, -1) if rows]
    if today_rows:
        if until - midnight < timedelta(minutes=1):
            raise ValueError("history of today needs the run to start a minute or more after 00:00 UTC")
        spans.append((midnight, until - midnight, today_rows))
    shards = [shard_of(j) for j in jobs]
    conn = await asyncpg.connect(dsn)
    written = 0
    try:
        await ensure_partitions(conn, today - timedelta(days=days), days + 1)
        for start, length, n in spans:
            per_job = max(1, n // len(jobs))
            # Slot order across jobs, as the node writes them: the slots outside, the jobs inside.
            status = await conn.execute(
                "INSERT INTO executions (shard, job_id, scheduled_at, origin, epoch, node, status, attempt,"
                " claimed_at, sent_at, finished_at, http_status, duration_ms, dispatch_lag_ms)"
                " SELECT j.shard, j.id, t, 'scheduled', 1, 'history', 'succeeded', 1, t, t + interval '50 ms',"
                " t + interval '55 ms', 200, 5, 50"
                " FROM generate_series(0, $4::int - 1) AS k, unnest($1::int[], $2::uuid[]) AS j(shard, id),"
                " LATERAL (SELECT $3::timestamptz + $5::interval * k AS t) AS s ORDER BY k",
                shards, jobs, start, per_job, length / per_job,
            )  # fmt: skip
            written += int(status.split()[-1])
        # As a cluster's history is by then: vacuumed (visibility map set) and analysed, so no first vacuum of
        # millions of rows lands inside the window measured.
        await conn.execute("VACUUM (ANALYZE) executions")
    finally:
        await conn.close()
    return written


def wait_ready(url: str, timeout: float) -> float:
    """Poll ``url``/readyz until it answers 200 (every owned shard loaded); returns that wall-clock time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return time.time()
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"node at {url} not ready within {timeout}s")


def rss_mb(pid: int, now: bool = False) -> float:
    """Peak resident memory (``VmHWM``; ``now``: the current, ``VmRSS``) of a process in MiB; NaN when it cannot be
    read (Linux ``/proc``)."""
    field = "VmRSS:" if now else "VmHWM:"
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux ``/proc``)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(root: int) -> float:
    """CPU seconds of a process and all its descendants, living or reaped (a PostgreSQL server: the
    postmaster, its backends and workers)."""
    parents: dict[int, int] = {}
    times: dict[int, tuple[int, int]] = {}  # pid -> (own ticks, reaped children's ticks)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        times[pid] = (int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14]))
    tree = {root}
    grew = True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    ticks = sum(times[p][0] for p in tree if p in times) + times.get(root, (0, 0))[1]
    return ticks / os.sysconf("SC_CLK_TCK")


def stop_on_sigterm() -> None:
    """SIGTERM unwinds the bench like Ctrl-C, so the ``finally`` and ``with`` blocks stop the PostgreSQL, etcd and
    nodes it started (by default Python dies at once on SIGTERM and leaves them running: a PostgreSQL of a
    killed ``bench.history`` kept running and competing for the cores through the next runs)."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def profiled(part: str) -> list[str]:
    """``BENCH_PROFILE_API=<file>`` (or ``_NODE``): that process under py-spy (collapsed stacks), to see where
    its CPU goes; its CPU figure is then py-spy's own."""
    out = os.environ.get(f"BENCH_PROFILE_{part}")
    return ["py-spy", "record", "--format", "raw", "-o", out, "--"] if out else []


def profile_window(pid: int, seconds: float) -> subprocess.Popen[bytes] | None:
    """``BENCH_PROFILE_NODE=<file>``: py-spy attached to ``pid`` for ``seconds`` (a measured window only), at
    ``BENCH_PROFILE_RATE`` samples a second (py-spy's default 100 if unset)."""
    out = os.environ.get("BENCH_PROFILE_NODE")
    if not out:
        return None
    rate = os.environ.get("BENCH_PROFILE_RATE", "100")
    return subprocess.Popen(["py-spy", "record", "--format", "raw", "-o", out, "--pid", str(pid),
                             "--rate", rate, "--duration", str(round(seconds)), "--nonblocking"],
                            stdout=subprocess.DEVNULL)  # fmt: skip
