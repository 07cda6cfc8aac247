"""The API's client for the nodes: keep-alive reuse, a closed idle connection replaced, every failure one
``NodeUnreachable`` (never a hang, never another exception)."""

from __future__ import annotations

import asyncio

import pytest

from control_api.node_client import NodeClient, NodeUnreachable
from shardwheel.embedded import free_port


async def _serve(behaviour: str, port: int, accepted: list[int]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                body = await reader.readexactly(length)
                if behaviour == "cut":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
                    await writer.drain()
                    break
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
                if behaviour == "close-after-one":
                    break
        except asyncio.IncompleteReadError:
            pass
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", port)


def test_keep_alive_reuse_and_a_closed_idle_connection_replaced() -> None:
    async def main() -> None:
        for behaviour, connections in (("keep", 1), ("close-after-one", 3)):
            port, accepted = free_port(), []
            server = await _serve(behaviour, port, accepted)
            client = NodeClient("secret")
            for i in range(3):
                status, body = await client.post(f"http://127.0.0.1:{port}", "/x", b'{"n": %d}' % i)
                assert (status, body) == (200, b'{"n": %d}' % i)
            assert len(accepted) == connections
            await client.aclose()
            server.close()

    asyncio.run(main())


@pytest.mark.parametrize("behaviour", ["refused", "cut", "silent"])
def test_every_failure_is_node_unreachable(behaviour: str) -> None:
    async def main() -> None:
        port, accepted = free_port(), []
        server = None
        if behaviour == "cut":
            server = await _serve("cut", port, accepted)
        elif behaviour == "silent":
            server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", port)
        client = NodeClient("secret", timeout_s=0.5)
        with pytest.raises(NodeUnreachable):
            await client.post(f"http://127.0.0.1:{port}", "/x", b"{}")
        if server is not None:
            server.close()

    asyncio.run(main())
