"""The trio-asyncio bridge and the store package's surface."""

from __future__ import annotations

import subprocess
import sys

import trio

import scheduler_node.store as store_pkg
from scheduler_node.store import current_epoch, read_cluster
from scheduler_node.trio_store import TrioStore


async def test_calls_run_on_the_asyncio_side_with_the_pool(store: TrioStore) -> None:
    info = await store.call(read_cluster)
    assert info is not None and info.name == "test" and info.shard_count == 256
    assert await store.call(current_epoch, 3) == 0
    assert await store.run(store.pool.fetchval, "SELECT 41 + 1") == 42


async def test_trio_cancellation_cancels_the_query(store: TrioStore) -> None:
    with trio.move_on_after(0.2) as scope:
        await store.run(store.pool.execute, "SELECT pg_sleep(30)")
    assert scope.cancelled_caught
    # The pool is still usable: the cancelled query did not leave a connection stuck.
    assert await store.run(store.pool.fetchval, "SELECT 1") == 1


async def test_open_closes_the_pool(db_dsn: str) -> None:
    async with TrioStore.open(db_dsn) as s:
        pool = s.pool
        assert await s.run(pool.fetchval, "SELECT 1") == 1
    assert pool.is_closing()


def test_store_imports_no_trio() -> None:
    code = "import sys, scheduler_node.store; assert 'trio' not in sys.modules, 'store imported trio'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_all_names_exist() -> None:
    for name in store_pkg.__all__:
        assert hasattr(store_pkg, name), name
    assert "claim_slots" in store_pkg.__all__ and "migrate" in store_pkg.__all__
