"""The embedded servers: they answer on 127.0.0.1, refuse clearly, and honour the env vars."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import asyncpg
import pyetcd
import pytest

from protocol.errors import InfrastructureError
from shardwheel.embedded import EmbeddedEtcd, EmbeddedPostgres, dsn_with_database, free_port


def test_postgres_answers_on_loopback(pg_server: EmbeddedPostgres) -> None:
    assert "@127.0.0.1:" in pg_server.dsn or pg_server.external

    async def check() -> str:
        conn = await asyncpg.connect(pg_server.dsn)
        try:
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()

    assert asyncio.run(check()).split(".")[0] >= "14"


def test_etcd_answers_with_leases(etcd_server: EmbeddedEtcd, etcd_prefix: str) -> None:
    host, port = etcd_server.endpoint.removeprefix("http://").rsplit(":", 1)
    client = pyetcd.client(host=host, port=int(port))
    try:
        lease = client.lease(10)
        assert client.put_if_not_exists(f"{etcd_prefix}/k", "v1", lease=lease)
        assert not client.put_if_not_exists(f"{etcd_prefix}/k", "v2", lease=lease)
        value, _meta = client.get(f"{etcd_prefix}/k")
        assert value == b"v1"
        lease.revoke()
        assert client.get(f"{etcd_prefix}/k")[0] is None
    finally:
        client.close()


def test_free_ports_are_never_ones_the_kernel_gives_outgoing_connections() -> None:
    # A port from bind(0) is in the ephemeral range, where a client's connection could take it before the
    # server binds it (seen once in CI: PostgreSQL "Address already in use" on its freshly picked port).
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50 and all(1024 <= p < low for p in ports), (low, high, ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[0]))  # free indeed


def test_postgres_port_taken_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        pg = EmbeddedPostgres(Path(f"/tmp/sw-e-{port}"), port=port, durable=False)
        try:
            with pytest.raises(InfrastructureError, match="PostgreSQL"):
                pg.start()
        finally:
            pg.stop()


def test_etcd_port_taken_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        etcd = EmbeddedEtcd(tmp_path / "etcd", client_port=s.getsockname()[1], durable=False)
        with pytest.raises(InfrastructureError, match="etcd exited"):
            etcd.start()
        etcd.stop()


def test_env_vars_name_existing_servers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                        pg_server: EmbeddedPostgres, etcd_server: EmbeddedEtcd) -> None:
    monkeypatch.setenv("SHARDWHEEL_PG_DSN", pg_server.dsn)
    monkeypatch.setenv("SHARDWHEEL_ETCD", etcd_server.endpoint.removeprefix("http://"))
    with EmbeddedPostgres.from_env(tmp_path / "pg") as pg, EmbeddedEtcd.from_env(tmp_path / "etcd") as etcd:
        assert pg.external and pg.dsn == pg_server.dsn
        assert etcd.external and etcd.endpoint == etcd_server.endpoint
    assert not (tmp_path / "pg").exists()  # nothing was started


def test_dsn_with_database() -> None:
    assert dsn_with_database("postgresql://u@h:5/postgres?sslmode=off", "x") == "postgresql://u@h:5/x?sslmode=off"
