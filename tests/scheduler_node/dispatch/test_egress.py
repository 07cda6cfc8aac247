"""The egress policy at firing time: names are resolved by the dispatcher, every address checked, and the
connection made to a checked address. A stub resolver (trio's custom hostname resolver) plays DNS, so a name can
point at any address without touching the machine's resolver."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio

from protocol.egress import EgressPolicy
from protocol.jobs import RetryPolicy, Semantics, Success
from scheduler_node.attempts import attempt_result
from scheduler_node.dispatch import Dispatcher, OutcomeKind
from scheduler_node.retry import decide

from .server import TestServer
from .test_dispatcher import send, template


class StubResolver(trio.abc.HostnameResolver):
    def __init__(self, names: dict[str, list[str]]) -> None:
        self.names = names
        self.asked: list[str] = []

    async def getaddrinfo(self, host: bytes | str | None, port: Any, family: int = 0, type: int = 0,
                          proto: int = 0, flags: int = 0) -> list[Any]:  # fmt: skip
        name = host.decode() if isinstance(host, bytes) else str(host)
        self.asked.append(name)
        if name not in self.names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out = []
        for address in self.names[name]:
            fam = socket.AF_INET6 if ":" in address else socket.AF_INET
            sockaddr = (address, int(port), 0, 0) if fam == socket.AF_INET6 else (address, int(port))
            out.append((fam, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr))
        return out

    async def getnameinfo(self, sockaddr: Any, flags: int) -> tuple[str, str]:
        # The abstract method must exist; nothing here resolves addresses back to names.
        raise socket.gaierror(socket.EAI_NONAME, "the stub resolver answers forward lookups only")


@contextmanager
def resolving(names: dict[str, list[str]]) -> Iterator[StubResolver]:
    stub = StubResolver(names)
    previous = trio.socket.set_custom_hostname_resolver(stub)
    try:
        yield stub
    finally:
        trio.socket.set_custom_hostname_resolver(previous)


async def test_a_name_is_checked_after_resolution_and_connected_to_the_checked_address(server: TestServer) -> None:
    # The test server listens on 127.0.0.1; the policy allows only that address of the loopback network.
    policy = EgressPolicy.of(["127.0.0.1/32"])
    names = {
        "allowed.example": ["127.0.0.1"],
        "metadata.example": ["169.254.169.254"],
        "rebinding.example": ["127.0.0.1", "127.0.0.2"],  # one refused address among allowed ones: refused
        "decimal.example": ["10.0.0.8"],
    }
    with resolving(names) as dns:
        async with Dispatcher() as d:
            d.egress = policy
            ok = await send(d, template(f"http://allowed.example:{server.port}/ok"))
            assert ok.kind is OutcomeKind.RESPONSE and ok.http_status == 200
            (received,) = server.requests
            assert received.header("Host") == f"allowed.example:{server.port}"
            for name, refused in (("metadata.example", "link-local address 169.254.169.254"),
                                  ("rebinding.example", "loopback address 127.0.0.2"),
                                  ("decimal.example", "private address 10.0.0.8")):  # fmt: skip
                o = await send(d, template(f"http://{name}:{server.port}/"))
                assert o.kind is OutcomeKind.EGRESS_DENIED and not o.bytes_written
                assert o.error == f"egress denied: {name} is a {refused}"
            # A literal address is not resolved, only checked.
            o = await send(d, template(f"http://127.0.0.3:{server.port}/"))
            assert o.kind is OutcomeKind.EGRESS_DENIED and "loopback address 127.0.0.3" in (o.error or "")
            # The allow-list can change at run time (the node follows the cluster's setting).
            d.egress = EgressPolicy.of(["127.0.0.0/8"])
            o = await send(d, template(f"http://rebinding.example:{server.port}/"))
            assert o.kind in (OutcomeKind.RESPONSE, OutcomeKind.CONNECT_ERROR)  # 127.0.0.2 may not listen
        assert dns.asked.count("allowed.example") == 1  # resolved once, then the kept-alive connection
    assert len(server.requests) <= 2


async def test_an_egress_denial_is_never_retried() -> None:
    """Whatever the semantics and attempts left: failed at once (and so an execution_failed alert)."""
    from scheduler_node.dispatch import Outcome

    denied = Outcome(kind=OutcomeKind.EGRESS_DENIED, bytes_written=False, started_at=0.0, duration_s=0.0,
                     error="egress denied: x is a private address 10.0.0.1")  # fmt: skip
    for semantics in Semantics:
        d = decide(semantics=semantics, success=Success(), policy=RetryPolicy(max_attempts=5), attempt=1,
                   result=attempt_result(denied), unit_random=0.5)  # fmt: skip
        assert d.terminal is not None and d.terminal.value == "failed" and d.retry_in_ms is None
