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


def test_migrate_is_idempotent_and_checks_the_shard_count(pg_server: EmbeddedPostgres, empty_db_dsn: str) -> None:
    first = run("migrate", "--dsn", empty_db_dsn, "--cluster", "c1", "--shards", "64")
    assert first.returncode == 0, first.stderr
    again = run("migrate", "--dsn", empty_db_dsn, "--cluster", "c1", "--shards", "64")
    assert again.returncode == 0 and "none (up to date)" in again.stdout
    nets = run("migrate", "--dsn", empty_db_dsn, "--cluster", "c1", "--shards", "64",
               "--allow-target-net", "10.1.0.0/16", "fd00::/8")  # fmt: skip
    assert nets.returncode == 0 and "allowed target networks: 10.1.0.0/16, fd00::/8" in nets.stdout, nets.stderr
    bad_net = run("migrate", "--dsn", empty_db_dsn, "--cluster", "c1", "--shards", "64", "--allow-target-net", "x")
    assert bad_net.returncode == 1 and "--allow-target-net: 'x' is not a network" in bad_net.stderr
    cleared = run("migrate", "--dsn", empty_db_dsn, "--cluster", "c1", "--shards", "64", "--allow-target-net")
    assert "allowed target networks: none (public addresses only)" in cleared.stdout
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
    assert "0 is out of range 1-65536" in bad_usage.stderr
    bad_env = run("migrate", env={"SHARDWHEEL_SHARDS": "lots"})
    assert bad_env.returncode != 0 and "SHARDWHEEL_SHARDS='lots' is not an integer" in bad_env.stderr


SECRET = "a-cluster-secret-of-at-least-32-bytes!"
SECRETS_KEY = "k1=MDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDAwMDA="  # 32 bytes of "0"


def test_every_command_error_is_one_line_naming_the_problem(db_dsn: str, tmp_path: Path) -> None:
    """What printed 19-101 lines of (ExceptionGroup) traceback before issue 12: one line, exit != 0, and with
    --debug the traceback as well."""
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port_in_use = str(busy.getsockname()[1])
    node = ("node", "--cluster-secret", SECRET, "--secrets-key", SECRETS_KEY, "--log-level", "error")
    cases: list[tuple[tuple[str, ...], int, str]] = [
        ((*node, "--dsn", "postgresql://nope"), 1, "cannot connect to PostgreSQL"),
        ((*node, "--dsn", db_dsn, "--shards", "300-400"), 1, "--shards: '300-400' is outside 0-255"),
        ((*node, "--dsn", db_dsn, "--shards", "abc"), 2, "'abc' is not a shard or a range"),
        ((*node, "--dsn", db_dsn, "--port", "99999"), 2, "99999 is out of range 0-65535"),
        ((*node, "--dsn", db_dsn, "--port", port_in_use), 1, f"cannot listen on 127.0.0.1:{port_in_use}"),
        ((*node, "--dsn", db_dsn, "--lease-ttl", "0"), 2, "--lease-ttl: 0 is out of range"),
        ((*node, "--dsn", db_dsn, "--horizon-ms", "-5"), 2, "--horizon-ms: -5 is out of range"),
        ((*node, "--dsn", db_dsn, "--retention-days", "0"), 2, "--retention-days: 0 is out of range"),
        (("node", "--dsn", db_dsn), 1, "--cluster-secret is empty; it must be at least 32 bytes"),
        (("node", "--dsn", db_dsn, "--cluster-secret", "short"), 1, "--cluster-secret is 5 bytes"),
        ((*node, "--dsn", db_dsn, "--previous-signing-secret", "x"), 1, "needs --signing-secret"),
        (("node", "--dsn", db_dsn, "--cluster-secret", SECRET), 1, "--secrets-key is required outside dev mode"),
        ((*node, "--dsn", db_dsn, "--secrets-key", "k1=c2hvcnQ="), 1, "key 'k1' is 5 bytes; AES-256 needs 32"),
        (("api", "--dsn", db_dsn, "--etcd", "http://127.0.0.1:1", "--cluster-secret", SECRET), 1,
         "--secrets-key is required outside dev mode"),
        ((*node, "--dsn", db_dsn, "--etcd", "http://127.0.0.1:1", "--etcd-join-timeout", "1"), 1,
         "etcd did not answer for 1 s"),
        (("migrate", "--dsn", "garbage"), 2, "--dsn: must be a postgresql://"),
        (("cluster", "status", "--dsn", "garbage", "--etcd", "http://127.0.0.1:1"), 2, "--dsn: must be a"),
        (("dev", "--data-dir", "/proc/x", "--no-wait"), 1, "/proc/x"),
    ]
    try:
        for args, code, says in cases:
            out = run(*args, timeout=60)
            lines = out.stderr.strip().splitlines()
            # The node may log before it fails (--log-level error: what went wrong, as it happened); the
            # command's own answer is its last line, and no traceback.
            assert out.returncode == code and "Traceback" not in out.stderr, (args, out.returncode, out.stderr[-2000:])
            assert says in lines[-1] and lines[-1].startswith("shardwheel: error:"), (args, lines[-1])
            assert len(lines) == 1 or args[0] == "node", (args, lines)
        bad_env = run(*node, "--dsn", db_dsn, env={"SHARDWHEEL_RETENTION_DAYS": "0"}, timeout=60)
        assert bad_env.returncode == 1 and "--retention-days 0 is out of range" in bad_env.stderr
        debug = run("--debug", *node, "--dsn", "postgresql://nope", timeout=60)
        assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
        assert debug.stderr.strip().splitlines()[-1].startswith("shardwheel: error: cannot connect")
    finally:
        busy.close()
