"""A fast HTTP sink for the bench: records when each firing arrived, so drift is measured from outside.

Rules:
- asyncio + uvloop + httptools, one process (DESIGN.md §8: ~100k req/s measured here, vs ~11k for trio + h11),
  so the sink never bounds a dispatcher figure. Every request is answered ``200 ok`` from pre-built bytes.
- Per request it records the receive time (``time.time_ns()`` taken once per ``data_received``, i.e. when the
  bytes reached the process) and the ``X-Shardwheel-Job``, ``X-Shardwheel-Scheduled-At`` and
  ``X-Shardwheel-Node`` headers, in parallel lists (no per-request objects beyond the header bytes).
- ``GET /stats`` answers ``{"requests": n, "connections": c, "open": o}`` and is not recorded.
- On SIGTERM or SIGINT it writes its records to ``--out`` as JSON lines
  ``{"recv_ns": ..., "job": ..., "scheduled_at": ..., "node": ...}`` and exits 0.
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
import sys
import time
from typing import cast

import httptools
import msgspec

__all__ = ["Sink", "main"]

_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
_OK_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nok"
_BAD = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class Record(msgspec.Struct, gc=False):
    recv_ns: int
    job: str | None
    scheduled_at: str | None
    node: str | None


class Sink:
    """The recorded state, shared by all connections."""

    def __init__(self) -> None:
        self.recv_ns: list[int] = []
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
            for ns, job, sched, node in zip(
                self.recv_ns, self.job, self.scheduled_at, self.node, strict=True
            ):
                rec = Record(
                    ns,
                    job.decode() if job is not None else None,
                    sched.decode() if sched is not None else None,
                    node.decode() if node is not None else None,
                )
                f.write(enc.encode(rec) + b"\n")
        return len(self.recv_ns)


class _Protocol(asyncio.Protocol):
    __slots__ = ("_job", "_node", "_now", "_parser", "_sched", "_sink", "_transport", "_url")

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._now = 0
        self._url = b""
        self._job: bytes | None = None
        self._sched: bytes | None = None
        self._node: bytes | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self._sink.connections += 1
        self._sink.open += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._sink.open -= 1

    def data_received(self, data: bytes) -> None:
        self._now = time.time_ns()  # once per read: the moment these bytes reached us
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            assert self._transport is not None
            self._transport.write(_BAD)
            self._transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
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
        transport = self._transport
        assert transport is not None
        keep = self._parser.should_keep_alive()
        if self._url == b"/stats":
            body = self._sink.stats()
            transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )
        else:
            sink = self._sink
            sink.recv_ns.append(self._now)
            sink.job.append(self._job)
            sink.scheduled_at.append(self._sched)
            sink.node.append(self._node)
            transport.write(_OK if keep else _OK_CLOSE)
        if not keep:
            transport.close()


async def serve(host: str, port: int, out: str) -> None:
    loop = asyncio.get_running_loop()
    sink = Sink()
    server = await loop.create_server(lambda: _Protocol(sink), host, port, backlog=4096, reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {bound}", flush=True)
    async with server:
        await stop.wait()
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
