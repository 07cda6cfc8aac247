"""TLS to PostgreSQL and to etcd, with certificates from trustme: a node in cluster mode whose every
connection to both is encrypted and verified fires a job; with the wrong CA or no client certificate the
connection is refused.

etcd is the embedded one started with ``--client-cert-auth``. The embedded PostgreSQL (pgserver) is built
without SSL, so PostgreSQL is reached through a TLS-terminating proxy that speaks the protocol's SSLRequest
(answers ``S``, then TLS with the server certificate, then relays to the server): what is tested is the node's
side — ``sslmode=verify-full`` and ``sslrootcert`` in the DSN are honoured, the certificate is verified.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import struct
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
import trio
import trustme

from protocol.errors import InfrastructureError
from protocol.jobs import JobSpec, Target
from protocol.schedules import At
from scheduler_node.coordination import EtcdCoordinator, EtcdTls, KeyLayout
from shardwheel.embedded import EmbeddedEtcd, ServerTls

from .harness import create, executions, node_running, target_running, wait_for

SSL_REQUEST = 80877103  # the PostgreSQL protocol's SSLRequest code


@dataclass
class Pki:
    ca: Path
    other_ca: Path  # signed nothing of ours
    server: ServerTls
    client_cert: Path
    client_key: Path
    server_context: ssl.SSLContext


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca, other = trustme.CA(), trustme.CA()
    server, client = ca.issue_cert("127.0.0.1", "localhost"), ca.issue_cert("shardwheel-node")
    paths = {name: root / name for name in ("ca.pem", "other.pem", "server.pem", "server.key", "client.pem",
                                             "client.key")}  # fmt: skip
    ca.cert_pem.write_to_path(str(paths["ca.pem"]))
    other.cert_pem.write_to_path(str(paths["other.pem"]))
    server.cert_chain_pems[0].write_to_path(str(paths["server.pem"]))
    server.private_key_pem.write_to_path(str(paths["server.key"]))
    client.cert_chain_pems[0].write_to_path(str(paths["client.pem"]))
    client.private_key_pem.write_to_path(str(paths["client.key"]))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.configure_cert(context)
    return Pki(paths["ca.pem"], paths["other.pem"], ServerTls(paths["server.pem"], paths["server.key"],
               paths["ca.pem"]), paths["client.pem"], paths["client.key"], context)  # fmt: skip


@pytest.fixture(scope="module")
def tls_etcd(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedEtcd]:
    etcd = EmbeddedEtcd(tmp_path_factory.mktemp("etcd"), durable=False, tls=pki.server)
    etcd.client_tls = (pki.client_cert, pki.client_key)
    with etcd:
        yield etcd


@asynccontextmanager
async def pg_over_tls(dsn: str, context: ssl.SSLContext, ca: Path) -> AsyncIterator[tuple[str, list[str]]]:
    """A TLS-terminating PostgreSQL proxy in front of ``dsn``'s server; yields its verify-full DSN and a log of
    what each connection did (``tls``, or ``refused`` for a client that did not ask for TLS)."""
    host_port = dsn.split("@", 1)[1].split("/", 1)[0]
    backend_port = int(host_port.rsplit(":", 1)[1])
    log: list[str] = []

    async def relay(src: trio.abc.Stream, dst: trio.abc.Stream) -> None:
        try:
            while data := await src.receive_some(65536):
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            with trio.CancelScope(shield=True):
                await dst.aclose()

    async def handle(client: trio.SocketStream) -> None:
        async with client:
            head = b""
            while len(head) < 8:
                if not (chunk := await client.receive_some(8 - len(head))):
                    return
                head += chunk
            if struct.unpack("!II", head) != (8, SSL_REQUEST):
                log.append("refused")  # a plaintext startup: this server requires TLS
                return
            await client.send_all(b"S")
            tls = trio.SSLStream(client, context, server_side=True)
            try:
                await tls.do_handshake()
            except trio.BrokenResourceError:
                log.append("handshake failed")
                return
            log.append("tls")
            backend = await trio.open_tcp_stream("127.0.0.1", backend_port)
            async with trio.open_nursery() as n:
                n.start_soon(relay, tls, backend)
                n.start_soon(relay, backend, tls)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        database = dsn.rsplit("/", 1)[1].split("?")[0]
        yield f"postgresql://postgres@127.0.0.1:{port}/{database}?sslmode=verify-full&sslrootcert={ca}", log
        nursery.cancel_scope.cancel()


async def _connect_and_close(dsn: str) -> None:
    def run() -> None:
        async def go() -> None:
            conn = await asyncpg.connect(dsn, timeout=10)
            await conn.close()

        asyncio.run(go())

    await trio.to_thread.run_sync(run)


async def test_a_node_fires_over_tls_to_postgresql_and_etcd(db_dsn: str, pki: Pki, tls_etcd: EmbeddedEtcd) -> None:
    assert tls_etcd.endpoint.startswith("https://")
    etcd_tls = EtcdTls(str(pki.ca), str(pki.client_cert), str(pki.client_key))
    async with pg_over_tls(db_dsn, pki.server_context, pki.ca) as (tls_dsn, log):
        over_tls = {"etcd": tls_etcd.endpoint, "etcd_tls": etcd_tls, "lease_ttl_s": 3}
        async with target_running() as target, node_running(tls_dsn, **over_tls) as node:
            at = datetime.now(UTC) + timedelta(seconds=1)
            job = await create(node, JobSpec(name="tls", schedule=At(at), target=Target(url=target.url("/tls"))))

            async def fired() -> bool:
                return [r["status"] for r in await executions(db_dsn, job)] == ["succeeded"]

            await wait_for(fired, timeout=15)
        assert log and set(log) == {"tls"}  # every connection of the node's pool: TLS, verified
        # A client that does not ask for TLS, or trusts another CA, gets nowhere.
        with pytest.raises(Exception):  # noqa: B017 - asyncpg's error for a dropped startup varies
            await _connect_and_close(tls_dsn.replace("sslmode=verify-full", "sslmode=disable"))
        assert log[-1] == "refused"
        with pytest.raises(ssl.SSLCertVerificationError):
            await _connect_and_close(tls_dsn.replace(str(pki.ca), str(pki.other_ca)))


def test_etcd_refuses_a_client_without_its_certificate_or_trusting_another_ca(
    pki: Pki, tls_etcd: EmbeddedEtcd
) -> None:
    layout = KeyLayout("default", "/shardwheel")
    with EtcdCoordinator(tls_etcd.endpoint, layout, timeout=3, tls=EtcdTls(str(pki.ca))) as no_client_cert:
        with pytest.raises(InfrastructureError):
            no_client_cert.grant_lease(5)
    untrusting = EtcdTls(str(pki.other_ca), str(pki.client_cert), str(pki.client_key))
    with EtcdCoordinator(tls_etcd.endpoint, layout, timeout=3, tls=untrusting) as wrong:
        with pytest.raises(InfrastructureError):
            wrong.grant_lease(5)
    trusted = EtcdTls(str(pki.ca), str(pki.client_cert), str(pki.client_key))
    with EtcdCoordinator(tls_etcd.endpoint, layout, timeout=5, tls=trusted) as right:
        assert right.grant_lease(5).lease_id
    with pytest.raises(ValueError, match="https needs --etcd-ca"):
        EtcdCoordinator(tls_etcd.endpoint, layout)
