"""The `shardwheel` command end to end, as a user runs it (a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from shardwheel.embedded import EmbeddedPostgres

SHARDWHEEL = [sys.executable, "-m", "shardwheel.cli"]


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SHARDWHEEL_")}
    return subprocess.run([*SHARDWHEEL, *args], capture_output=True, text=True, timeout=timeout,
                          env={**base, **(env or {})}, stdin=subprocess.DEVNULL)


def test_dev_starts_migrates_prints_urls_and_stops(tmp_path: Path) -> None:
    data = Path(f"/tmp/sw-dev-{os.getpid()}")
    try:
        first = run("dev", "--data-dir", str(data), "--no-wait")
        assert first.returncode == 0, first.stderr
        assert "PostgreSQL  postgresql://postgres@127.0.0.1:" in first.stdout
        assert "etcd        http://127.0.0.1:" in first.stdout
        assert "0001" in first.stdout  # the first run applies the migrations
        second = run("dev", "--data-dir", str(data), "--no-wait")  # data kept; nothing to migrate again
        assert second.returncode == 0, second.stderr
        assert "migrations  up to date" in second.stdout
    finally:
        subprocess.run(["rm", "-rf", str(data)], check=False)


def test_migrate_is_idempotent_and_checks_the_shard_count(pg_server: EmbeddedPostgres, empty_db_dsn: str) -> None:
    first = run("migrate", "--dsn", empty_db_dsn, "--cluster", "c1", "--shards", "64")
    assert first.returncode == 0, first.stderr
    again = run("migrate", "--dsn", empty_db_dsn, "--cluster", "c1", "--shards", "64")
    assert again.returncode == 0 and "none (up to date)" in again.stdout
    wrong = run("migrate", "--dsn", empty_db_dsn, "--cluster", "c1", "--shards", "128")
    assert wrong.returncode == 1
    assert len(wrong.stderr.strip().splitlines()) == 1 and "64" in wrong.stderr and "128" in wrong.stderr


def test_errors_are_one_readable_line() -> None:
    missing = run("migrate")
    assert missing.returncode == 1
    assert missing.stderr.strip() == "shardwheel: error: no database: pass --dsn or set SHARDWHEEL_PG_DSN"
    unreachable = run("migrate", "--dsn", "postgresql://postgres@127.0.0.1:1/x")
    assert unreachable.returncode == 1 and len(unreachable.stderr.strip().splitlines()) == 1
    assert "cannot connect to PostgreSQL" in unreachable.stderr
    bad_usage = run("migrate", "--shards", "0")
    assert bad_usage.returncode == 2 and len(bad_usage.stderr.strip().splitlines()) == 1
    assert "shard count must be 1-65536" in bad_usage.stderr
    bad_env = run("migrate", env={"SHARDWHEEL_SHARDS": "lots"})
    assert bad_env.returncode != 0 and "SHARDWHEEL_SHARDS='lots' is not an integer" in bad_env.stderr
