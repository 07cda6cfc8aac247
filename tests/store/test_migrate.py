"""Migrations apply once, in order, safely under concurrency; the cluster row refuses a mismatched node."""

from __future__ import annotations

import asyncpg
import pytest
import trio

from protocol.errors import InfrastructureError
from protocol.shards import HASH_NAME
from scheduler_node.store.migrate import ClusterInfo, ClusterMismatch, ensure_cluster, migrate, migrations
from scheduler_node.trio_store import TrioStore

ALL = [m.name for m in migrations()]


async def _migrate_on_own_connection(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        return await migrate(conn)
    finally:
        await conn.close()


async def _ensure_on_own_connection(dsn: str, shards: int) -> ClusterInfo:
    conn = await asyncpg.connect(dsn)
    try:
        return await ensure_cluster(conn, name="c1", shard_count=shards, hash_name=HASH_NAME)
    finally:
        await conn.close()


def test_migration_files_are_numbered_in_order() -> None:
    assert ALL[0] == "0001_initial.sql"
    assert ALL == sorted(ALL)


async def test_second_run_applies_nothing(empty_db_dsn: str) -> None:
    async with TrioStore.open(empty_db_dsn) as s:
        assert await s.run(_migrate_on_own_connection, empty_db_dsn) == ALL
        assert await s.run(_migrate_on_own_connection, empty_db_dsn) == []
        recorded = await s.run(s.pool.fetch, "SELECT name FROM schema_migrations ORDER BY name")
        assert [r["name"] for r in recorded] == ALL


async def test_concurrent_migrators_apply_each_file_once(empty_db_dsn: str) -> None:
    # Without the advisory lock the losers fail (concurrent CREATE TABLE of the same names) instead of
    # finding the work done.
    results: list[list[str]] = []
    async with TrioStore.open(empty_db_dsn) as s:

        async def one() -> None:
            results.append(await s.run(_migrate_on_own_connection, empty_db_dsn))

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(one)
    # Serialised per file: migrators may share the work (one applies the first files while another waits, then
    # takes the rest), but every file is applied exactly once, each migrator's share in order.
    assert sorted(name for share in results for name in share) == ALL
    assert all(share == sorted(share) for share in results) and len(results) == 4


async def test_an_edited_migration_is_refused(empty_db_dsn: str) -> None:
    async with TrioStore.open(empty_db_dsn) as s:
        await s.run(_migrate_on_own_connection, empty_db_dsn)
        await s.run(s.pool.execute, "UPDATE schema_migrations SET checksum = 'x' WHERE name = $1", ALL[0])
        with pytest.raises(InfrastructureError, match="changed after it was applied"):
            await s.run(_migrate_on_own_connection, empty_db_dsn)


async def test_ensure_cluster_creates_once_then_checks(empty_db_dsn: str) -> None:
    async with TrioStore.open(empty_db_dsn) as s:
        await s.run(_migrate_on_own_connection, empty_db_dsn)
        first = await s.call(ensure_cluster, name="c1", shard_count=64, hash_name=HASH_NAME)
        assert first.created and (first.name, first.shard_count, first.hash_name) == ("c1", 64, HASH_NAME)
        again = await s.call(ensure_cluster, name="c1", shard_count=64, hash_name=HASH_NAME)
        assert not again.created and again.created_at == first.created_at
        epochs = await s.run(s.pool.fetch, "SELECT shard, epoch FROM shard_epochs ORDER BY shard")
        assert [(r["shard"], r["epoch"]) for r in epochs] == [(i, 0) for i in range(64)]
        assert str(first).startswith("'c1': 64 shards, blake2b-64/uuid-bytes")

        with pytest.raises(ClusterMismatch) as err:
            await s.call(ensure_cluster, name="c1", shard_count=128, hash_name=HASH_NAME)
        assert str(err.value) == (
            "cluster 'c1' was created with 64 shards and blake2b-64/uuid-bytes; "
            "this node is configured with 128 shards and blake2b-64/uuid-bytes"
        )
        assert isinstance(err.value, InfrastructureError)
        with pytest.raises(
            ClusterMismatch, match="created with 64 shards and blake2b-64/uuid-bytes; .* sha1"
        ):
            await s.call(ensure_cluster, name="c1", shard_count=64, hash_name="sha1")
        with pytest.raises(
            ClusterMismatch, match="holds cluster 'c1'; this node is configured for cluster 'c2'"
        ):
            await s.call(ensure_cluster, name="c2", shard_count=64, hash_name=HASH_NAME)
        # Nothing changed by the refused calls.
        assert await s.run(s.pool.fetchval, "SELECT count(*) FROM shard_epochs") == 64


async def test_concurrent_first_ensure_cluster_creates_one_cluster(empty_db_dsn: str) -> None:
    infos: list[ClusterInfo] = []
    async with TrioStore.open(empty_db_dsn) as s:
        await s.run(_migrate_on_own_connection, empty_db_dsn)

        async def one() -> None:
            infos.append(await s.run(_ensure_on_own_connection, empty_db_dsn, 32))

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(one)
        assert sum(i.created for i in infos) == 1
        assert await s.run(s.pool.fetchval, "SELECT count(*) FROM shard_epochs") == 32
