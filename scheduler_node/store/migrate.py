"""Schema migrations: numbered SQL files applied in order, each once, each in its own transaction.

Rules:
- Files live in ``scheduler_node/store/migrations/`` and are named ``NNNN_words.sql``; they apply in NNNN order.
  A file is never edited after release: a change is a new file. The SHA-256 of every applied file is recorded
  in ``schema_migrations`` and an applied file whose text changed is refused with ``InfrastructureError``
  (an edited migration would otherwise silently leave existing databases different from new ones).
- Each file runs in one transaction together with its ``schema_migrations`` row, so a failed migration leaves
  nothing behind and is retried whole by the next run.
- Concurrent migrators (several nodes starting at once) are serialised by ``pg_advisory_xact_lock``, taken
  before anything else, including creating ``schema_migrations`` (a concurrent ``CREATE TABLE IF NOT EXISTS``
  can fail on the catalog's unique index), one file at a time: a migrator that waited sees the file applied
  and goes on to the next, so several migrators may share the work, each file applied exactly once.
- ``migrate`` returns the names it applied: ``[]`` when the schema was already up to date.

Example: on an empty database ``await migrate(conn)`` returns ``["0001_initial.sql"]``; again, ``[]``.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import re

import asyncpg

from protocol.errors import InfrastructureError

from .cluster import ClusterInfo, ClusterMismatch, ensure_cluster

__all__ = ["ClusterInfo", "ClusterMismatch", "Migration", "ensure_cluster", "migrate", "migrations"]

# pg_advisory_xact_lock key: "shardwheel migrate".
MIGRATE_LOCK_KEY = 0x5357_6D69_6772_6174
_NAME = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")


class Migration:
    __slots__ = ("name", "sql", "checksum")

    def __init__(self, name: str, sql: str) -> None:
        self.name = name
        self.sql = sql
        self.checksum = hashlib.sha256(sql.encode()).hexdigest()


def migrations() -> list[Migration]:
    """The packaged migration files, in order."""
    folder = importlib.resources.files("scheduler_node.store").joinpath("migrations")
    found = [
        Migration(f.name, f.read_text(encoding="utf-8")) for f in folder.iterdir() if _NAME.fullmatch(f.name)
    ]
    found.sort(key=lambda m: m.name)
    numbers = [m.name[:4] for m in found]
    if len(set(numbers)) != len(numbers):
        raise InfrastructureError(f"two migrations share a number: {numbers}")
    return found


async def migrate(conn: asyncpg.Connection) -> list[str]:
    applied: list[str] = []
    for m in migrations():
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK_KEY)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            stored = await conn.fetchval("SELECT checksum FROM schema_migrations WHERE name = $1", m.name)
            if stored is not None:
                if stored != m.checksum:
                    raise InfrastructureError(
                        f"migration {m.name} was changed after it was applied to this database "
                        "(write a new numbered migration instead)"
                    )
                continue
            await conn.execute(m.sql)  # no arguments: the simple protocol, so a file may hold many statements
            await conn.execute(
                "INSERT INTO schema_migrations (name, checksum) VALUES ($1, $2)", m.name, m.checksum
            )
        applied.append(m.name)
    return applied
