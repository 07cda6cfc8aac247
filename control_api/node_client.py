"""The API's client for the nodes' internal API: HTTP/1.1 with keep-alive, a few connections per node.

Every write goes through here, so it is kept small: pre-built request heads, one read of the head and one of
the body (nodes always send ``Content-Length``). httpx cost the API about a third of a create's CPU.

Rules:
- A connection is reused while the node keeps it open; one that fails is closed and never reused.
- A request on a reused connection that fails before any answer byte is sent again once on a new
  connection (the node may have closed an idle keep-alive connection); every write carries a request id, so
  a second send is never applied twice.
- Any failure is ``NodeUnreachable`` (the router tries another view of the owners); the whole exchange is
  bounded by ``timeout_s``.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

__all__ = ["NodeClient", "NodeUnreachable"]


class NodeUnreachable(Exception):
    """The node could not be asked or did not answer (connection refused, reset, timed out)."""


_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]
# what a broken exchange raises: the socket's errors, a body cut short, a head that is not HTTP
_FAILED = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError)


class NodeClient:
    def __init__(self, cluster_secret: str, *, timeout_s: float = 10.0, idle_per_node: int = 16) -> None:
        self._auth = f"Authorization: Bearer {cluster_secret}\r\n".encode()
        self.timeout_s = timeout_s
        self.idle_per_node = idle_per_node
        self._idle: dict[str, list[_Conn]] = {}

    async def post(self, address: str, path: str, body: bytes) -> tuple[int, bytes]:
        """``(status, body)`` of ``POST address + path``; ``NodeUnreachable`` if there is none."""
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._post(address, path, body)
        except TimeoutError:
            raise NodeUnreachable(f"{address} did not answer within {self.timeout_s:g} s") from None

    async def _post(self, address: str, path: str, body: bytes) -> tuple[int, bytes]:
        parts = urlsplit(address)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        request = b"".join((b"POST ", path.encode(), b" HTTP/1.1\r\nHost: ", f"{host}:{port}".encode(), b"\r\n",
                            self._auth, b"Content-Type: application/json\r\nContent-Length: ",
                            str(len(body)).encode(), b"\r\n\r\n", body))  # fmt: skip
        idle = self._idle.setdefault(address, [])
        while idle:  # a kept connection first; if it was closed meanwhile, a new one
            conn = idle.pop()
            try:
                answer = await self._exchange(conn, request)
            except _NoAnswer:
                continue
            except _FAILED as e:
                raise NodeUnreachable(f"{address}: {type(e).__name__}: {e}") from None
            self._keep(address, conn)
            return answer
        try:
            conn = await asyncio.open_connection(host, port)
        except OSError as e:
            raise NodeUnreachable(f"{address}: {type(e).__name__}: {e}") from None
        try:
            answer = await self._exchange(conn, request)
        except _FAILED as e:
            raise NodeUnreachable(f"{address}: {type(e).__name__}: {e}") from None
        self._keep(address, conn)
        return answer

    async def _exchange(self, conn: _Conn, request: bytes) -> tuple[int, bytes]:
        reader, writer = conn
        try:
            writer.write(request)
            await writer.drain()
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as e:
                if not e.partial:
                    raise _NoAnswer from None
                raise
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            return status, await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise

    def _keep(self, address: str, conn: _Conn) -> None:
        idle = self._idle.setdefault(address, [])
        if len(idle) < self.idle_per_node and not conn[1].is_closing():
            idle.append(conn)
        else:
            conn[1].close()

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for _, writer in conns:
                writer.close()
        self._idle.clear()


class _NoAnswer(OSError):
    """A reused connection the node had closed: not a byte of answer (the request is sent again)."""
