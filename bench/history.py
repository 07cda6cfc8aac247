"""History bench: PostgreSQL's cost per firing as the day's executions partition grows, without a node.

The firing path's two statements, as the node runs them (``store.claim_slots`` then ``store.write_results``
of a first attempt that succeeded), for ``--jobs`` jobs every second of slots, paced at ``--rate`` batches a
second, all in one day's partition. Every ``--every`` batches: PostgreSQL's CPU per firing since the last line
(autovacuum included: the postmaster's whole process tree), its WAL bytes per firing, the share of the result
writes that were HOT updates, autovacuum passes of the partition so far, and its size. What the 30-minute soak shows in half an hour with a
node, a sink and their noise, this shows in minutes (issue 16, part 4; docs/capacity.md).

Results go in statements of ``--chunk`` (the node's writer sends a batch every few milliseconds; one statement
for a whole second of slots leaves no committed versions to prune and understates HOT). ``--explain FILE``
appends both statements' plans at each line's size (EXPLAIN ANALYZE, rolled back): where a window's cost
jumps, the plan that changed.

Example::

    python -m bench.history --jobs 3000 --batches 960 --rate 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from protocol.executions import ExecutionStatus, Origin
from protocol.jobs import JobSpec, Target
from protocol.schedules import Every
from protocol.shards import shard_of
from scheduler_node.store import ClaimRow, ResultRow, bump_epoch, claim_slots, write_results
from scheduler_node.store.partitions import ensure_partitions, partition_name
from scheduler_node.store.pool import create_pool
from shardwheel.embedded import EmbeddedPostgres

from .harness import insert_jobs, prepare_db, stop_on_sigterm, tree_cpu_s

__all__ = ["main", "run_history"]


class _Explained:
    """An executor for ``claim_slots`` / ``write_results`` that runs each statement under ``EXPLAIN (ANALYZE,
    BUFFERS)`` in a transaction it rolls back, keeps the plans and answers no rows (nothing is written)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.plans: list[str] = []

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        async with self.pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            try:
                lines = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", *args)
            finally:
                await tx.rollback()
        self.plans.append("\n".join(r[0] for r in lines))
        return []


async def _run(dsn: str, postmaster: int, jobs: int, batches: int, rate: float, every: int,
               settings: dict[str, str], chunk: int, explain: Path | None) -> list[dict[str, Any]]:  # fmt: skip
    ids = await insert_jobs(dsn, [JobSpec(name="h", schedule=Every("1s"), target=Target(url="https://h.example/"))]
                            * jobs)  # fmt: skip
    pool = await create_pool(dsn, min_size=2, max_size=4)
    try:
        today = datetime.now(UTC).date()
        await ensure_partitions(pool, today, 1)
        part = partition_name("executions", today)
        if settings:  # an experiment: the partition's storage parameters (fillfactor, autovacuum_*, vacuum_*)
            await pool.execute(f"ALTER TABLE {part} SET ({', '.join(f'{k} = {v}' for k, v in settings.items())})")
        epochs = {s: await bump_epoch(pool, s, "history") for s in {shard_of(j) for j in ids}}
        first_slot = int(datetime(today.year, today.month, today.day, tzinfo=UTC).timestamp() * 1000)
        lines: list[dict[str, Any]] = []
        started = time.monotonic()
        wal_sql = "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8"
        cpu_mark, batch_mark, wal_mark = tree_cpu_s(postmaster), 0, await pool.fetchval(wal_sql)
        for b in range(batches):
            slot = first_slot + b * 1000
            claims = [ClaimRow(shard_of(j), epochs[shard_of(j)], j, slot) for j in ids]
            results = [_succeeded(c.shard, c.epoch, c.job_id, slot) for c in claims]
            if explain is not None and (b + 1) % every == 0:  # the plans at this size, before the batch itself
                shown = _Explained(pool)
                await claim_slots(shown, "history", claims)
                await claim_slots(pool, "history", claims)
                await write_results(shown, results[:chunk], report=False)
                with explain.open("a") as f:
                    f.write(f"--- {(b + 1) * jobs} rows: claim of {len(claims)}, result write of {chunk}\n")
                    f.write("\n\n".join(shown.plans) + "\n\n")
            else:
                await claim_slots(pool, "history", claims)
            for i in range(0, len(results), chunk):  # as the node's writer sends them: a statement per batch
                await write_results(pool, results[i : i + chunk], report=False)
            ahead = started + (b + 1) / rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
            if (b + 1) % every == 0:
                cpu, wal = tree_cpu_s(postmaster), await pool.fetchval(wal_sql)
                stats = await pool.fetchrow(
                    "SELECT n_tup_upd, n_tup_hot_upd, autovacuum_count, pg_total_relation_size(relid) AS size"
                    " FROM pg_stat_user_tables WHERE relname = $1", part,
                )  # fmt: skip
                assert stats is not None
                lines.append({
                    "rows": (b + 1) * jobs,
                    "pg_cpu_us_per_firing": round((cpu - cpu_mark) / ((b + 1 - batch_mark) * jobs) * 1e6, 1),
                    "wal_bytes_per_firing": round((wal - wal_mark) / ((b + 1 - batch_mark) * jobs)),
                    "hot_pct": round(100 * stats["n_tup_hot_upd"] / max(1, stats["n_tup_upd"]), 1),
                    "autovacuums": stats["autovacuum_count"], "partition_mib": stats["size"] // 2**20,
                    "behind_s": round(max(0.0, -ahead), 1),
                })  # fmt: skip
                print(json.dumps(lines[-1]), flush=True)
                cpu_mark, batch_mark, wal_mark = cpu, b + 1, wal
        return lines
    finally:
        await pool.close()


def _succeeded(shard: int, epoch: int, job_id: uuid.UUID, slot: int) -> ResultRow:
    sent = slot + 50
    return ResultRow(shard, epoch, job_id, slot, Origin.SCHEDULED, ExecutionStatus.SUCCEEDED, 1, sent_ms=sent,
                     finished_ms=sent + 5, http_status=200, duration_ms=5, dispatch_lag_ms=1,
                     attempt_started_ms=sent, attempt_finished_ms=sent + 5)  # fmt: skip


def run_history(jobs: int, batches: int, rate: float, every: int, settings: dict[str, str] | None = None,
                chunk: int = 500, explain: Path | None = None) -> list[dict[str, Any]]:  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="sw-history-") as tmp_s:
        tmp = Path(tmp_s)
        with EmbeddedPostgres(tmp / "pg", durable=True) as pg:
            postmaster = int((tmp / "pg" / "data" / "postmaster.pid").read_text().split()[0])
            dsn = asyncio.run(prepare_db(pg.dsn, "sw_history"))
            return asyncio.run(_run(dsn, postmaster, jobs, batches, rate, every, settings or {}, chunk,
                                    explain))


_SETTING = re.compile(r"(?P<key>[a-z_]+)=(?P<value>[a-z0-9_.]+)")


def _setting(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` of a storage parameter; both plain words, so they go into the ALTER TABLE as they are."""
    m = _SETTING.fullmatch(text)
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE of lowercase words or numbers")
    return m["key"], m["value"]


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    p = argparse.ArgumentParser(prog="python -m bench.history", description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=3000, help="jobs, each with a slot every second")
    p.add_argument("--batches", type=int, default=960, help="seconds of slots to claim and finish")
    p.add_argument("--rate", type=float, default=2.0, help="batches a second (firings/s = jobs x rate)")
    p.add_argument("--every", type=int, default=120, help="batches per printed line")
    p.add_argument("--set", type=_setting, action="append", default=[], metavar="KEY=VALUE", dest="settings",
                   help="a storage parameter of the day's partition, e.g. fillfactor=70 or vacuum_index_cleanup=off"
                        " (repeatable; default: the schema's)")
    p.add_argument("--chunk", type=int, default=500, help="results per result write (the node's writer batches)")
    p.add_argument("--explain", type=Path, help="append both statements' plans (EXPLAIN ANALYZE) at each line here")
    args = p.parse_args(argv)
    run_history(args.jobs, args.batches, args.rate, args.every, dict(args.settings), args.chunk, args.explain)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
