"""The node's HTTP server (scheduler_node.http_server) with a small ASGI app, over real sockets."""

from __future__ import annotations

from typing import Any

import trio

from scheduler_node.http_server import MAX_BODY, MAX_HEAD, serve


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["path"] == "/boom":
        raise RuntimeError("boom")
    body = (await receive())["body"]
    text = f"{scope['method']} {scope['path']} q={scope['query_string'].decode()} n={len(body)}".encode()
    auth = dict(scope["headers"]).get(b"authorization", b"-")
    await send({"type": "http.response.start", "status": 201,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(text)).encode()),
                            (b"x-auth", auth)]})  # fmt: skip
    await send({"type": "http.response.body", "body": text})


async def _read_answers(stream: trio.SocketStream, n: int) -> list[bytes]:
    """``n`` answers (head + body by content-length) from the stream."""
    buf, answers = b"", []
    while len(answers) < n:
        while b"\r\n\r\n" not in buf:
            chunk = await stream.receive_some(65536)
            assert chunk, f"closed after {answers}"
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        while len(rest) < length:
            rest += await stream.receive_some(65536)
        answers.append(head + b"\r\n\r\n" + rest[:length])
        buf = rest[length:]
    return answers


async def _closed(stream: trio.SocketStream) -> bool:
    with trio.fail_after(10):
        while True:
            try:
                if not await stream.receive_some(65536):
                    return True
            except trio.BrokenResourceError:
                return True


async def test_keep_alive_pipelining_and_one_write_per_answer() -> None:
    async with trio.open_nursery() as nursery:
        (address,) = await nursery.start(serve, _app, "127.0.0.1", 0)
        port = int(address.rsplit(":", 1)[1])
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"POST /a?x=1 HTTP/1.1\r\nHost: n\r\nAuthorization: Bearer s\r\nContent-Length: 3\r\n\r\nabc"
                              b"GET /b HTTP/1.1\r\nHost: n\r\n\r\n")  # two requests in one write
        first, second = await _read_answers(stream, 2)
        assert first.startswith(b"HTTP/1.1 201 Created\r\n") and b"x-auth: Bearer s" in first
        assert first.endswith(b"POST /a q=x=1 n=3") and second.endswith(b"GET /b q= n=0")
        await stream.send_all(b"GET /c HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n")
        (third,) = await _read_answers(stream, 1)
        assert b"connection: close" in third and await _closed(stream)
        nursery.cancel_scope.cancel()


async def test_errors_and_limits_answer_and_close() -> None:
    async with trio.open_nursery() as nursery:
        (address,) = await nursery.start(serve, _app, "127.0.0.1", 0)
        port = int(address.rsplit(":", 1)[1])
        cases = [
            (b"GET /boom HTTP/1.1\r\nHost: n\r\n\r\n", b"HTTP/1.1 500 "),
            (b"NOT HTTP AT ALL\r\n\r\n", b"HTTP/1.1 400 "),
            (b"GET /" + b"x" * (MAX_HEAD + 10) + b" HTTP/1.1\r\n\r\n", b"HTTP/1.1 431 "),
            (b"POST /big HTTP/1.1\r\nHost: n\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1) + b"y" * (MAX_BODY + 1),
             b"HTTP/1.1 413 "),
        ]  # fmt: skip
        for request, status in cases:
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            try:
                await stream.send_all(request)
            except trio.BrokenResourceError:
                pass  # the server answered and closed before reading it all
            (answer,) = await _read_answers(stream, 1)
            assert answer.startswith(status), (request[:40], answer[:80])
            assert b"connection: close" in answer and await _closed(stream)
            await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_an_idle_connection_is_closed() -> None:
    async with trio.open_nursery() as nursery:
        (address,) = await nursery.start(lambda task_status: serve(_app, "127.0.0.1", 0, idle_timeout_s=0.2,
                                                                   task_status=task_status))  # fmt: skip
        stream = await trio.open_tcp_stream("127.0.0.1", int(address.rsplit(":", 1)[1]))
        assert await _closed(stream)
        nursery.cancel_scope.cancel()


async def test_expect_continue_and_head() -> None:
    async with trio.open_nursery() as nursery:
        (address,) = await nursery.start(serve, _app, "127.0.0.1", 0)
        stream = await trio.open_tcp_stream("127.0.0.1", int(address.rsplit(":", 1)[1]))
        await stream.send_all(b"POST /e HTTP/1.1\r\nHost: n\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
        with trio.fail_after(10):
            got = b""
            while b"\r\n\r\n" not in got:
                got += await stream.receive_some(65536)
        assert got == b"HTTP/1.1 100 Continue\r\n\r\n"
        await stream.send_all(b"ok")
        (answer,) = await _read_answers(stream, 1)
        assert answer.endswith(b"POST /e q= n=2")
        await stream.send_all(b"HEAD /h HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n")
        with trio.fail_after(10):
            rest = b""
            while chunk := await stream.receive_some(65536):
                rest += chunk
        assert rest.startswith(b"HTTP/1.1 201 ") and rest.endswith(b"\r\n\r\n")  # headers, no body
        nursery.cancel_scope.cancel()
