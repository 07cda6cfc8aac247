"""The demo target of ``shardwheel dev``: an HTTP endpoint that prints each firing it receives with its drift.

Rules:
- Any method on any path is a firing: answered ``200`` with ``{"ok": true}``, printed as one line (job id,
  slot, drift = arrival - ``X-Shardwheel-Scheduled-At``, attempt, node, method and path) and kept (the last
  ``keep``, 200 by default).
- ``GET /`` (no ``X-Shardwheel-Job`` header) is not a firing: it answers the kept firings, newest first, as JSON
  (``{"received": n, "firings": [...]}``), for the README's example and for tests.
- The stdlib's threading server: a demo sees a few firings a second, and HTTP/1.1 keep-alive (what the nodes
  use) works per connection. It listens on 127.0.0.1 only.

Example::

    shardwheel demo-target --port 8099
    # 2026-11-28T17:00:05.004Z  job 0196...  slot 17:00:05.000  drift +4 ms  attempt 1  node dev-node-2  POST /demo
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgspec

__all__ = ["DemoTarget", "serve"]

_MAX_BODY = 64 * 1024


class Firing(msgspec.Struct, frozen=True):
    received_at: datetime
    job: str
    scheduled_at: str | None
    drift_ms: float | None
    attempt: str | None
    node: str | None
    method: str
    path: str


def _drift_ms(scheduled_at: str | None, received_ns: int) -> float | None:
    if not scheduled_at:
        return None
    try:
        slot = datetime.fromisoformat(scheduled_at.replace("Z", "+00:00"))
    except ValueError:
        return None
    return round(received_ns / 1e6 - slot.timestamp() * 1000, 1)


class DemoTarget:
    """The kept firings and the line printed for each."""

    def __init__(self, keep: int = 200, out: Any = None) -> None:
        self.firings: collections.deque[Firing] = collections.deque(maxlen=keep)
        self.received = 0
        self._lock = threading.Lock()
        self._out = out or sys.stdout

    def record(self, method: str, path: str, headers: Any, received_ns: int) -> Firing:
        scheduled = headers.get("X-Shardwheel-Scheduled-At")
        firing = Firing(datetime.fromtimestamp(received_ns / 1e9, UTC), headers.get("X-Shardwheel-Job", "?"),
                        scheduled, _drift_ms(scheduled, received_ns), headers.get("X-Shardwheel-Attempt"),
                        headers.get("X-Shardwheel-Node"), method, path)  # fmt: skip
        with self._lock:
            self.received += 1
            self.firings.append(firing)
        drift = "drift ?" if firing.drift_ms is None else f"drift {firing.drift_ms:+.0f} ms"
        slot = (scheduled or "?")[11:23]
        print(f"{firing.received_at.isoformat(timespec='milliseconds')[:-6]}Z  job {firing.job}  slot {slot}  "
              f"{drift}  attempt {firing.attempt or '?'}  node {firing.node or '?'}  {method} {path}",
              file=self._out, flush=True)  # fmt: skip
        return firing

    def listing(self) -> bytes:
        with self._lock:
            return msgspec.json.encode({"received": self.received, "firings": list(reversed(self.firings))})


def _handler(target: DemoTarget) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the nodes send

        def _handle(self) -> None:
            received_ns = time.time_ns()
            length = int(self.headers.get("Content-Length") or 0)
            if length > _MAX_BODY:
                self._answer(413, b'{"ok": false, "error": "body too large"}')
                self.close_connection = True
                return
            if length:
                self.rfile.read(length)
            if self.command == "GET" and self.path == "/" and "X-Shardwheel-Job" not in self.headers:
                self._answer(200, target.listing())
                return
            target.record(self.command, self.path, self.headers, received_ns)
            self._answer(200, b'{"ok": true}')

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
            pass  # one line per firing is printed by record()

    return Handler


def serve(port: int, host: str = "127.0.0.1", keep: int = 200, ready: threading.Event | None = None) -> None:
    """Serve until interrupted; prints ``demo target listening on http://host:port`` once listening."""
    target = DemoTarget(keep)
    with ThreadingHTTPServer((host, port), _handler(target)) as server:
        server.daemon_threads = True
        print(f"demo target listening on http://{host}:{server.server_address[1]}", flush=True)
        if ready is not None:
            ready.set()
        try:
            server.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            pass
