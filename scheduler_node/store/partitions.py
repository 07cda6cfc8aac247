"""Daily partitions of ``executions`` and ``execution_attempts``: created ahead, dropped for retention.

Rules:
- One partition per UTC day per table, named ``<table>_pYYYYMMDD``, bounds ``[day 00:00Z, day+1 00:00Z)``.
  Each table also has a DEFAULT partition (created by the migration) that catches rows of days without a
  partition, so a missing partition never stops a claim.
- ``ensure_partitions(start_day, days)`` is idempotent (an existing name is skipped) and safe to run from
  every node at once (a transaction-scoped advisory lock serialises it). Run it at start and daily, ahead.
- PostgreSQL refuses to add a partition for a range the DEFAULT partition already holds rows of. We move
  them: create the day's table standalone, move the day's rows out of DEFAULT into it (one DELETE ...
  RETURNING feeding an INSERT), then ``ATTACH PARTITION``, all in one transaction. ATTACH takes only a
  SHARE UPDATE EXCLUSIVE lock on the parent, so claims into other days go on; the DEFAULT partition is locked
  ACCESS EXCLUSIVE first (it must not receive a row of that day between the move and the attach), which
  briefly holds up statements that touch DEFAULT. DEFAULT is normally (near) empty, so this is short.
- ``drop_partitions_before(day)`` drops the day partitions wholly before ``day`` and deletes DEFAULT's rows
  before ``day``: retention is a cheap DROP, never a big DELETE. Dropping a partition takes an ACCESS EXCLUSIVE
  lock on the parent, and while it waits for one every claim and result write queues behind it: so each drop
  waits at most ``lock_timeout_ms`` (a long reader of ``executions`` holding it off), and a partition it could
  not lock is reported ``busy`` and left for the next run, not waited for.

Example: ``await ensure_partitions(pool, date.today() - timedelta(days=1), 8)`` -> yesterday to a week ahead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

import asyncpg

from .pool import Connection, Executor, transaction

__all__ = ["PARTITIONED_TABLES", "Retention", "drop_partitions_before", "ensure_partitions", "partition_name"]

PARTITIONED_TABLES = ("executions", "execution_attempts")
# pg_advisory_xact_lock key: "shardwheel partitions".
PARTITION_LOCK_KEY = 0x5357_7061_7274_6E73


def partition_name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def _bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(), UTC)
    return start, start + timedelta(days=1)


def _literal(ts: datetime) -> str:
    # Partition bounds must be literals; this is our own formatting of a datetime, never user text.
    return f"'{ts.isoformat()}'"


async def _columns(conn: Connection, table: str) -> str:
    names = await conn.fetch(
        "SELECT quote_ident(attname) AS name FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0"
        " AND NOT attisdropped ORDER BY attnum",
        table,
    )
    return ", ".join(r["name"] for r in names)


async def _create_day(conn: Connection, table: str, day: date) -> bool:
    name = partition_name(table, day)
    if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name):
        return False
    start, end = _bounds(day)
    default = f"{table}_default"
    await conn.execute(f"LOCK TABLE {table} IN SHARE UPDATE EXCLUSIVE MODE")
    await conn.execute(f"LOCK TABLE {default} IN ACCESS EXCLUSIVE MODE")
    await conn.execute(f"CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    cols = await _columns(conn, table)
    await conn.execute(
        f"WITH moved AS (DELETE FROM {default} WHERE scheduled_at >= $1 AND scheduled_at < $2 RETURNING {cols})"
        f" INSERT INTO {name} ({cols}) SELECT {cols} FROM moved",
        start, end,
    )  # fmt: skip
    await conn.execute(
        f"ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES FROM ({_literal(start)}) TO ({_literal(end)})"
    )
    return True


async def ensure_partitions(db: Executor, start_day: date, days: int) -> list[str]:
    """Create the day partitions of ``days`` days from ``start_day`` that do not exist yet; their names."""
    created: list[str] = []
    for i in range(days):
        day = start_day + timedelta(days=i)
        for table in PARTITIONED_TABLES:
            # One transaction per partition: a day with many rows to move never holds locks for the whole run.
            async with transaction(db) as conn:
                await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK_KEY)
                if await _create_day(conn, table, day):
                    created.append(partition_name(table, day))
    return created


_DAY_PARTITION = re.compile(r"(?P<table>[a-z_]+)_p(?P<day>\d{8})")


@dataclass
class Retention:
    """What one retention run did: the partitions dropped, and those it could not lock in time."""

    dropped: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)  # not locked within the timeout: for the next run


async def drop_partitions_before(db: Executor, day: date, *, lock_timeout_ms: int = 200) -> Retention:
    """Drop the day partitions that end on or before ``day`` 00:00Z and DEFAULT's rows before it."""
    done = Retention()
    cutoff, _ = _bounds(day)
    for table in PARTITIONED_TABLES:
        rows = await db.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = $1::regclass ORDER BY c.relname",
            table,
        )
        for r in rows:
            m = _DAY_PARTITION.fullmatch(r["relname"])
            if m is None or m["table"] != table or datetime.strptime(m["day"], "%Y%m%d").date() >= day:
                continue
            # One transaction per partition, so the parent's lock is held for one DROP at a time.
            try:
                async with transaction(db) as conn:
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", PARTITION_LOCK_KEY)
                    await conn.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
                    if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", r["relname"]):
                        await conn.execute(f"DROP TABLE {r['relname']}")
                        done.dropped.append(r["relname"])
            except asyncpg.LockNotAvailableError:
                done.busy.append(r["relname"])
        try:
            async with transaction(db) as conn:  # DEFAULT alone: the parent is not locked by it
                await conn.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
                await conn.execute(f"DELETE FROM {table}_default WHERE scheduled_at < $1", cutoff)
        except asyncpg.LockNotAvailableError:
            done.busy.append(f"{table}_default")
    return done
