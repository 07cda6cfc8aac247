from __future__ import annotations

import ssl

import pytest
import trio
import trustme

from .server import TestServer


@pytest.fixture
async def server(nursery: trio.Nursery) -> TestServer:
    """A plain-HTTP test server answering 200 "ok"; tests replace ``server.handler`` to script it."""
    s = TestServer()
    await nursery.start(s.run)
    return s


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    return ctx


@pytest.fixture
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx
