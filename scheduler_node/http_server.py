"""The node's HTTP/1.1 server: a small trio server for its ASGI app (``http_api.NodeHttpApp``), one write per answer.

Why not Hypercorn, which served the node's port until session 9: profiled under routed single creates (the
control API's ``create500`` bench), answering an internal write cost about twice the write itself; Hypercorn
sends the status line and headers, the body and the end of the message as separate socket writes, each through
its stream machinery. The node's port needs little of a general server: requests with a body of known length,
small answers, keep-alive, no TLS (the port sits on the cluster's network; its internal routes need the cluster
secret), no streaming, no upgrades. So this parses requests with httptools (the dispatcher's parser), hands the
app an ASGI ``http`` scope with the whole body, buffers the answer and writes it with one ``send``.

Rules:
- HTTP/1.1 keep-alive; ``Connection: close`` and HTTP/1.0 close after the answer; pipelined requests are
  answered in order; ``Expect: 100-continue`` is answered at once; a HEAD answer carries no body. A connection idle for ``idle_timeout_s`` (5 s, Hypercorn's default) is closed.
- A request head over ``MAX_HEAD`` bytes or a body over ``MAX_BODY`` (the largest the app accepts, 32 MiB, plus
  room) is answered 413/431 and the connection closed, before the app sees it; a request that does not parse is
  answered 400 and closed.
- An app that fails before answering gets a 500 written for it; the app answers its own errors otherwise.
- ``serve`` reports the bound addresses (``http://host:port``) through ``task_status`` and serves until
  cancelled; cancelling closes every connection (a write whose answer is lost is re-sent by the API with its
  request id and applied once).

Example::

    addresses = await nursery.start(serve, app, "127.0.0.1", 0)   # ["http://127.0.0.1:40123"]
"""

from __future__ import annotations

import http
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import httptools
import trio

__all__ = ["MAX_BODY", "MAX_HEAD", "serve"]

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024
MAX_BODY = 33 * 1024 * 1024  # http_api.MAX_BATCH_BODY (32 MiB) and room: the app gives the precise 413
_READ = 64 * 1024


@dataclass(slots=True)
class _Request:
    method: bytes = b""
    url: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: list[bytes] = field(default_factory=list)
    keep_alive: bool = True
    http_version: str = "1.1"


class _TooLarge(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _Collector:
    """httptools' callbacks: complete requests in arrival order."""

    def __init__(self) -> None:
        self.done: deque[_Request] = deque()
        self.current = _Request()
        self.head = 0
        self.body = 0
        self.parser: httptools.HttpRequestParser | None = None
        self.expect_continue = False  # a client waits for "100 Continue" before sending its body (curl > 1 MB)

    def on_message_begin(self) -> None:
        self.current, self.head, self.body = _Request(), 0, 0

    def on_url(self, url: bytes) -> None:
        self.current.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current.headers.append((name.lower(), value))
        self._count_head(len(name) + len(value))

    def on_headers_complete(self) -> None:
        if any(n == b"expect" and v.lower() == b"100-continue" for n, v in self.current.headers):
            self.expect_continue = True

    def on_body(self, body: bytes) -> None:
        self.body += len(body)
        if self.body > MAX_BODY:
            raise _TooLarge(413)
        self.current.body.append(body)

    def on_message_complete(self) -> None:
        assert self.parser is not None
        req = self.current
        req.method = self.parser.get_method()
        req.keep_alive = self.parser.should_keep_alive()
        req.http_version = self.parser.get_http_version()
        self.done.append(req)

    def _count_head(self, n: int) -> None:
        self.head += n
        if self.head > MAX_HEAD:
            raise _TooLarge(431)


def _answer(status: int, headers: list[tuple[bytes, bytes]], body: bytes, keep_alive: bool) -> bytes:
    try:
        reason = http.HTTPStatus(status).phrase.encode()
    except ValueError:
        reason = b""
    lines = [b"HTTP/1.1 %d %s" % (status, reason)]
    has_length = False
    for name, value in headers:
        has_length = has_length or name.lower() == b"content-length"
        lines.append(name + b": " + value)
    if not has_length:
        lines.append(b"content-length: %d" % len(body))
    if not keep_alive:
        lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _plain(status: int, text: str) -> bytes:
    return _answer(status, [(b"content-type", b"text/plain")], text.encode() + b"\n", keep_alive=False)


async def _call(app: Any, req: _Request, client: Any, server: Any) -> tuple[bytes, bool]:
    """The answer to ``req`` and whether the connection stays open."""
    url = httptools.parse_url(req.url)
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": req.http_version,
             "method": req.method.decode("latin-1"), "scheme": "http",
             "path": url.path.decode("utf-8", "replace") if url.path else "/", "raw_path": url.path or b"/",
             "query_string": url.query or b"", "root_path": "", "headers": req.headers, "client": client,
             "server": server}  # fmt: skip
    body = b"".join(req.body)
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await trio.sleep_forever()  # the client's disconnect is not watched: answers are short
        raise AssertionError("unreachable")  # pragma: no cover

    status: int | None = None
    headers: list[tuple[bytes, bytes]] = []
    chunks: list[bytes] = []
    finished = False

    async def send(message: dict[str, Any]) -> None:
        nonlocal status, headers, finished
        if message["type"] == "http.response.start":
            status, headers = int(message["status"]), [(bytes(n), bytes(v)) for n, v in message.get("headers", [])]
        elif message["type"] == "http.response.body":
            chunks.append(bytes(message.get("body", b"")))
            finished = not message.get("more_body", False)

    try:
        await app(scope, receive, send)
    except Exception:
        log.exception("node HTTP port: %s %s failed", scope["method"], scope["path"])
        status, finished = None, False
    if status is None or not finished:
        return _plain(500, "internal error; the node's log has it"), False
    body = b"" if req.method == b"HEAD" else b"".join(chunks)  # a HEAD answer has the headers alone
    if req.method == b"HEAD" and not any(n.lower() == b"content-length" for n, _ in headers):
        headers.append((b"content-length", str(sum(map(len, chunks))).encode()))
    return _answer(status, headers, body, req.keep_alive), req.keep_alive


async def _connection(stream: trio.SocketStream, app: Any, idle_timeout_s: float) -> None:
    collector = _Collector()
    parser = collector.parser = httptools.HttpRequestParser(collector)
    try:
        client = stream.socket.getpeername()[:2]
        server = stream.socket.getsockname()[:2]
    except OSError:
        return
    async with stream:
        while True:
            while not collector.done:
                with trio.move_on_after(idle_timeout_s) as idle:
                    try:
                        data = await stream.receive_some(_READ)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return
                if idle.cancelled_caught or not data:
                    return
                try:
                    parser.feed_data(data)
                except httptools.HttpParserError as e:
                    # httptools wraps what a callback raised: ours says what was too large
                    too_large = e.__context__ if isinstance(e.__context__, _TooLarge) else None
                    await _send_quietly(stream, _plain(too_large.status, "request too large") if too_large
                                        else _plain(400, "bad request"))  # fmt: skip
                    return
                if collector.expect_continue:
                    collector.expect_continue = False
                    if not await _send_quietly(stream, b"HTTP/1.1 100 Continue\r\n\r\n"):
                        return
            answer, keep_alive = await _call(app, collector.done.popleft(), client, server)
            if not await _send_quietly(stream, answer) or not keep_alive:
                return


async def _send_quietly(stream: trio.SocketStream, data: bytes) -> bool:
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return False
    return True


async def serve(app: Any, host: str, port: int, *, idle_timeout_s: float = 5.0,
                task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:  # fmt: skip
    """Serve ``app`` on ``host:port`` (0: a free port) until cancelled."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    addresses = []
    for listener in listeners:
        name = listener.socket.getsockname()
        addresses.append(f"http://{f'[{name[0]}]' if ':' in name[0] else name[0]}:{name[1]}")

    async def handler(stream: trio.SocketStream) -> None:
        await _connection(stream, app, idle_timeout_s)

    async with trio.open_nursery() as nursery:
        task_status.started(addresses)
        await trio.serve_listeners(handler, listeners, handler_nursery=nursery)
