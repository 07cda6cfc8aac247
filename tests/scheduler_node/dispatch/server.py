"""A tiny trio + h11 test server: real sockets on 127.0.0.1, scripted replies, everything recorded.

h11 on this side on purpose: the dispatcher writes pre-encoded bytes and parses with httptools, so every
request it sends is checked by an independent parser (as h11's own tests cross-check the stdlib).

Each request is answered by ``handler(received) -> Reply``. A ``Reply`` can delay, stream chunks, ask to
close, close the idle connection soon after answering (a keep-alive timeout), drop the connection without
answering, or write raw bytes and close (a broken server).
"""

from __future__ import annotations

import itertools
import socket
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import h11
import trio


@dataclass
class Reply:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b"ok"
    chunks: list[bytes] | None = None  # send chunked, one Data event per item
    delay_s: float = 0.0  # before answering
    close: bool = False  # answer with Connection: close
    close_idle_after_s: float | None = None  # answer normally, then close the idle connection after this
    reset_idle_after_s: float | None = None  # the same, but abortively (RST, SO_LINGER 0)
    drop: bool = False  # close without answering
    raw: bytes | None = None  # write these bytes instead of a response, then close


@dataclass
class Received:
    conn_id: int
    index_in_conn: int  # 0 for the first request on its connection
    method: str
    target: str
    headers: list[tuple[str, str]]  # original case, in order
    body: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def header_dict(self) -> dict[str, str]:
        return dict(self.headers)


class TestServer:
    __test__ = False  # not a test class for pytest

    def __init__(self, handler: Callable[[Received], Reply] | None = None) -> None:
        self.handler: Callable[[Received], Reply] = handler or (lambda r: Reply())
        self.requests: list[Received] = []
        self.raw: dict[int, bytearray] = {}  # every byte received, per connection
        self.closed: set[int] = set()  # connections that ended (either side)
        self.connections = 0
        self.current = 0
        self.max_concurrent = 0
        self.port = 0
        self.server_names: list[str | None] = []  # SNI seen (TLS)
        self._ids = itertools.count()

    async def run(
        self,
        *,
        tls: ssl.SSLContext | None = None,
        task_status: trio.TaskStatus[TestServer] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        served: list[trio.abc.Listener[trio.abc.Stream]] = list(listeners)
        if tls is not None:
            tls.sni_callback = lambda sock, name, ctx: self.server_names.append(name)
            served = [trio.SSLListener(lst, tls, https_compatible=True) for lst in listeners]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle, served)
            task_status.started(self)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        conn_id = next(self._ids)
        self.connections += 1
        raw = self.raw.setdefault(conn_id, bytearray())
        h = h11.Connection(h11.SERVER)
        try:
            for index in itertools.count():
                request: h11.Request | None = None
                body = bytearray()
                while True:
                    event = h.next_event()
                    if event is h11.NEED_DATA:
                        try:
                            data = await stream.receive_some(65_536)
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            return
                        raw += data
                        h.receive_data(bytes(data))
                    elif isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:  # ConnectionClosed
                        return
                assert request is not None
                received = Received(
                    conn_id=conn_id,
                    index_in_conn=index,
                    method=request.method.decode(),
                    target=request.target.decode(),
                    headers=[(k.decode(), v.decode()) for k, v in request.headers.raw_items()],
                    body=bytes(body),
                )
                self.requests.append(received)
                self.current += 1
                self.max_concurrent = max(self.max_concurrent, self.current)
                try:
                    reply = self.handler(received)
                    if reply.delay_s:
                        await trio.sleep(reply.delay_s)
                    if reply.drop:
                        return
                    if reply.raw is not None:
                        await stream.send_all(reply.raw)
                        return
                    await stream.send_all(self._encode(h, reply))
                finally:
                    self.current -= 1
                if reply.close_idle_after_s is not None:
                    await trio.sleep(reply.close_idle_after_s)
                    return
                if reply.reset_idle_after_s is not None:
                    await trio.sleep(reply.reset_idle_after_s)
                    if isinstance(stream, trio.SocketStream):
                        stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if h.our_state is h11.MUST_CLOSE:
                    return
                h.start_next_cycle()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            self.closed.add(conn_id)
            await trio.aclose_forcefully(stream)

    @staticmethod
    def _encode(h: h11.Connection, reply: Reply) -> bytes:
        headers = list(reply.headers)
        if reply.close:
            headers.append(("Connection", "close"))
        if reply.chunks is not None:
            headers.append(("Transfer-Encoding", "chunked"))
        else:
            headers.append(("Content-Length", str(len(reply.body))))
        out = [h.send(h11.Response(status_code=reply.status, headers=headers))]
        for chunk in reply.chunks if reply.chunks is not None else [reply.body]:
            if chunk:
                out.append(h.send(h11.Data(data=chunk)))
        out.append(h.send(h11.EndOfMessage()))
        return b"".join(x for x in out if x)

    def url(self, path: str = "/hook", *, scheme: str = "http", host: str = "127.0.0.1") -> str:
        return f"{scheme}://{host}:{self.port}{path}"
