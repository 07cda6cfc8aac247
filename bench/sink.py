"""A fast HTTP sink for the bench: records when each firing arrived, so drift is measured from outside.

Rules:
- asyncio + uvloop + httptools, one process (DESIGN.md §8: ~100k req/s measured here, vs ~11k for trio + h11),
  so the sink never bounds a dispatcher figure. Every request is answered ``200 ok`` from pre-built bytes.
- Per request it records the receive time and the ``X-Shardwheel-Job``, ``X-Shardwheel-Scheduled-At`` and
  ``X-Shardwheel-Node`` headers, in parallel lists (no per-request objects beyond the header bytes). The
  receive time (``recv_ns``) is the kernel's arrival timestamp of the request's first bytes
  (``SO_TIMESTAMPNS`` on ``recvmsg``): a single-threaded sink answering a burst on 256 connections reads the
  last of them several ms after they arrived (measured: N=100 p99 9.3 ms with a time taken when the sink
  read the bytes), and that queue is the sink's, not the scheduler's. ``handled_ns`` (when the sink parsed
  the request) is kept too, and the bench reports drift on it as well.
- Sockets are read with ``recvmsg`` from uvloop reader callbacks (``add_reader``), responses written with
  ``send`` (buffered with ``add_writer`` when the socket is full).
- ``GET /stats`` answers ``{"requests": n, "connections": c, "open": o}`` and is not recorded.
- On SIGTERM or SIGINT it writes its records to ``--out`` as JSON lines
  ``{"recv_ns": ..., "job": ..., "scheduled_at": ..., "node": ..., "handled_ns": ...}`` and exits 0.
- On start it prints ``READY <port>`` (flushed) once listening, so a parent can use ``--port 0``.

Example::

    python -m bench.sink --port 0 --out /tmp/sink.jsonl     # prints "READY 40123"
    curl -s localhost:40123/stats                            # {"requests":0,"connections":0,"open":0}
    kill -TERM <pid>                                         # writes /tmp/sink.jsonl
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import struct
import sys
import time

import httptools
import msgspec

__all__ = ["Sink", "main"]

_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
_OK_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nok"
_BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
RECEIVE_BYTES = 65_536
# Linux's SO_TIMESTAMPNS (not in Python's socket module): each read carries the time the kernel received the
# bytes, as a struct timespec.
SO_TIMESTAMPNS = 35
_TIMESPEC = struct.Struct("qq")
_ANC_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)


class Record(msgspec.Struct, gc=False):
    recv_ns: int
    job: str | None
    scheduled_at: str | None
    node: str | None
    handled_ns: int | None = None


class Sink:
    """The recorded state, shared by all connections."""

    def __init__(self) -> None:
        self.recv_ns: list[int] = []
        self.handled_ns: list[int] = []
        self.job: list[bytes | None] = []
        self.scheduled_at: list[bytes | None] = []
        self.node: list[bytes | None] = []
        self.connections = 0
        self.open = 0

    def stats(self) -> bytes:
        return msgspec.json.encode(
            {"requests": len(self.recv_ns), "connections": self.connections, "open": self.open}
        )

    def write(self, path: str) -> int:
        enc = msgspec.json.Encoder()
        with open(path, "wb") as f:
            for ns, handled, job, sched, node in zip(
                self.recv_ns, self.handled_ns, self.job, self.scheduled_at, self.node, strict=True
            ):
                rec = Record(
                    ns,
                    job.decode() if job is not None else None,
                    sched.decode() if sched is not None else None,
                    node.decode() if node is not None else None,
                    handled,
                )
                f.write(enc.encode(rec) + b"\n")
        return len(self.recv_ns)


class _Connection:
    """One accepted connection, read with ``recvmsg`` for the kernel's arrival timestamp."""

    __slots__ = (
        "_closing",
        "_job",
        "_loop",
        "_node",
        "_out",
        "_parser",
        "_sched",
        "_sink",
        "_sock",
        "_start_ns",
        "_ts",
        "_url",
    )

    def __init__(self, sink: Sink, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self._sink = sink
        self._sock = sock
        self._loop = loop
        self._parser = httptools.HttpRequestParser(self)
        self._ts = 0  # arrival time of the bytes being parsed
        self._start_ns = 0  # arrival time of the current request's first bytes
        self._url = b""
        self._job: bytes | None = None
        self._sched: bytes | None = None
        self._node: bytes | None = None
        self._out = bytearray()  # response bytes the socket did not take yet
        self._closing = False  # close once _out is written (a Connection: close request)
        sink.connections += 1
        sink.open += 1
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            data, anc, _, _ = self._sock.recvmsg(RECEIVE_BYTES, _ANC_SPACE)
        except BlockingIOError:
            return
        except OSError:
            data, anc = b"", []
        if not data:
            self._close()
            return
        ts = 0
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
                sec, nsec = _TIMESPEC.unpack_from(payload)
                ts = sec * 1_000_000_000 + nsec
        self._ts = ts or time.time_ns()  # no timestamp (not Linux): when we read it
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._send(_BAD)
            self._close()

    def _send(self, data: bytes) -> None:
        if self._out:
            self._out += data
            return
        try:
            n = self._sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError:
            self._close()
            return
        if n < len(data):
            self._out += data[n:]
            self._loop.add_writer(self._sock.fileno(), self._writable)

    def _writable(self) -> None:
        try:
            n = self._sock.send(self._out)
        except BlockingIOError:
            return
        except OSError:
            self._close()
            return
        del self._out[:n]
        if not self._out:
            self._loop.remove_writer(self._sock.fileno())
            if self._closing:
                self._close()

    def _close(self) -> None:
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            if self._out:
                self._loop.remove_writer(self._sock.fileno())
            self._sock.close()
            self._sink.open -= 1

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._start_ns = self._ts
        self._url = b""
        self._job = self._sched = self._node = None

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        n = len(name)
        if n == 16 or n == 17 or n == 25:  # the three x-shardwheel-* headers we record
            low = name.lower()
            if low == b"x-shardwheel-job":
                self._job = value
            elif low == b"x-shardwheel-node":
                self._node = value
            elif low == b"x-shardwheel-scheduled-at":
                self._sched = value

    def on_message_complete(self) -> None:
        keep = self._parser.should_keep_alive()
        if self._url == b"/stats":
            body = self._sink.stats()
            self._send(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )
        else:
            sink = self._sink
            sink.recv_ns.append(self._start_ns)
            sink.handled_ns.append(time.time_ns())
            sink.job.append(self._job)
            sink.scheduled_at.append(self._sched)
            sink.node.append(self._node)
            self._send(_OK if keep else _OK_CLOSE)
        if not keep:
            if self._out:
                self._closing = True  # after the rest of the response
            else:
                self._close()


async def serve(host: str, port: int, out: str) -> None:
    loop = asyncio.get_running_loop()
    sink = Sink()
    listener = socket.create_server((host, port), backlog=4096, reuse_port=False)
    listener.setblocking(False)

    def accept() -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                # Out of descriptors: the listener stays readable, so pause accepting rather than spin.
                loop.remove_reader(listener.fileno())
                loop.call_later(0.1, loop.add_reader, listener.fileno(), accept)
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            except OSError:
                pass  # not Linux: arrival = when the sink read it
            _Connection(sink, sock, loop)  # kept alive by its reader callback until it closes

    loop.add_reader(listener.fileno(), accept)
    bound = listener.getsockname()[1]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {bound}", flush=True)
    await stop.wait()
    loop.remove_reader(listener.fileno())
    listener.close()
    n = sink.write(out)
    print(f"sink: wrote {n} records to {out}; cpu {time.process_time():.3f} s", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.sink", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed as READY <port>)")
    p.add_argument("--out", required=True, help="JSON-lines file written on SIGTERM/SIGINT")
    args = p.parse_args(argv)
    try:
        import uvloop
    except ImportError:  # the figure is then asyncio's, not the sink's best
        asyncio.run(serve(args.host, args.port, args.out))
    else:
        uvloop.run(serve(args.host, args.port, args.out))


if __name__ == "__main__":
    main()
