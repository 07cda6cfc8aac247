"""One HTTP/1.1 client connection: pre-encoded request bytes out, httptools parsing the reply, no task of its own.

Rules:
- One exchange at a time (no pipelining). The I/O is synchronous on a non-blocking socket and driven by the
  dispatcher's reactor (``dispatcher.py``): ``begin(request)`` resets the parse state and writes what the
  socket takes at once (``True`` when all of it went); ``flush()`` writes the rest once the socket is writable;
  ``readable()`` reads what arrived and feeds the parser (``True`` when the response is complete or reading
  should stop). No await and no task per exchange: a burst costs one ``send`` and one ``recv`` per request
  (a 5,000-request burst over 100 connections: p99 408 ms with a task per send, 88–150 ms so; docs/bench.md).
- The connection is the parser's protocol object: httptools calls ``on_header``/``on_body``/... with what it
  parsed; they only copy the few things the node needs (status, ``Retry-After``, the first 1 KiB of body, a
  body-substring check), so a response costs no per-header objects beyond httptools' own.
- With an egress policy (``protocol.egress``) the name is resolved first, every address checked, and the
  socket connected to a checked address; a refused one is a ``ConnectError`` with ``denied`` set.
- Plain TCP is connected with ``trio.open_tcp_stream`` (happy eyeballs, TCP_NODELAY) and the socket is taken
  out of the stream. TLS runs on the same bare socket through ``ssl.SSLObject`` and memory BIOs (what
  ``trio.SSLStream`` does inside): verifying context, SNI = host, handshake done in ``open`` so that a TLS or
  certificate failure is a ``ConnectError`` with no request byte written. An EOF without ``close_notify`` is
  an ordinary EOF (as with ``https_compatible``).
- Framing is httptools' (Content-Length, chunked, no-body statuses). A body delimited by EOF (no length, not
  chunked) is complete at EOF; such a connection is never reused.
- ``keep_alive`` after an exchange is True only if the response was read completely, httptools says the
  connection persists (HTTP/1.1 without ``Connection: close``), nothing followed the response, and the body
  stayed within ``max_body`` (beyond it we stop reading, so the rest may still be on the wire; the body check
  covers the first ``max_body`` bytes only).
- Failures are ``ConnectError`` (nothing of the request was written: refused, DNS, TLS handshake or
  certificate verification) or ``ExchangeError`` (after the write began); ``response_started`` tells whether
  any response byte had arrived and ``request_written`` whether any request byte may have left (plain TCP
  knows exactly; through TLS a failed write counts as written), which is what the stale kept-alive rule in
  ``dispatcher.py`` needs.
- States and their transitions are one table, ``CONNECTION_TRANSITIONS`` (h11's ``_state.py`` is the model);
  every state change goes through it, so an impossible one is a loud ``InvalidTransition``, never a silent
  flag. The life of a connection::

      IDLE --BEGIN--> SENDING --WRITTEN--> RECEIVING --REUSABLE--> IDLE        (kept alive: next exchange)
                         |                     |
                         +--FINAL / FAILED-----+--> MUST_CLOSE --CLOSE--> CLOSED (any state may CLOSE)

  ``finish()`` chooses REUSABLE or FINAL from what the response said; a failed write or read (an
  ``ExchangeError``) is FAILED. A response may complete while the request is still SENDING (a server may
  answer before reading a large body): that is FINAL, since the rest of the request would follow it.
- ``looks_stale()`` is the idle check before reuse: one ``poll(0)`` syscall. A kept-alive socket that is
  readable or hung up while idle was closed by the server (or holds bytes nobody asked for). Exception: a TLS
  connection that never carried an exchange may hold unread TLS 1.3 session tickets, so only a hang-up
  (POLLRDHUP/POLLHUP) counts there.

Example::

    conn = await Connection.open(HttpOrigin("http", "127.0.0.1", 8080), ssl_context=None)
    if not conn.begin(template.render(slot_ms, 1, "scheduled", now_s), needle=None, max_body=1 << 20):
        ...                                 # wait writable, then conn.flush() until it returns True
    while not conn.readable():              # after each wait_readable(conn.sock)
        await trio.lowlevel.wait_readable(conn.sock)
    conn.finish()
    conn.status, conn.excerpt, conn.keep_alive     # 200, b'ok', True
"""

from __future__ import annotations

import enum
import ipaddress
import select
import socket
import ssl
from typing import Generic, TypeVar

import httptools
import trio

from protocol.egress import EgressPolicy

from .request import HttpOrigin

__all__ = [
    "CONNECTION_TRANSITIONS",
    "EXCERPT_BYTES",
    "ConnEvent",
    "ConnState",
    "ConnectError",
    "Connection",
    "checked_addresses",
    "ExchangeError",
    "InvalidTransition",
    "default_ssl_context",
]

EXCERPT_BYTES = 1024
RECEIVE_BYTES = 65_536
# Linux tells a peer's FIN apart from readable data with POLLRDHUP; elsewhere POLLIN alone is checked.
_POLLRDHUP = getattr(select, "POLLRDHUP", 0)
_HANGUP = select.POLLHUP | select.POLLERR | select.POLLNVAL | _POLLRDHUP


class ConnState(enum.IntEnum):
    IDLE = 0  # no exchange on it: fresh, or kept alive after a complete response
    SENDING = 1  # an exchange's request is partly with the socket
    RECEIVING = 2  # the request is out; the response is being read
    MUST_CLOSE = 3  # the exchange is over (or failed) and the connection cannot carry another
    CLOSED = 4


class ConnEvent(enum.IntEnum):
    BEGIN = 0  # begin(request)
    WRITTEN = 1  # the socket took the request's last byte
    REUSABLE = 2  # finish(): a complete keep-alive response with nothing after it
    FINAL = 3  # finish(): the response ended the connection's use (close, EOF body, oversize, leftovers)
    FAILED = 4  # a write or a read failed, or the response was invalid
    CLOSE = 5


_S, _E = ConnState, ConnEvent
CONNECTION_TRANSITIONS: dict[ConnState, dict[ConnEvent, ConnState]] = {
    _S.IDLE: {_E.BEGIN: _S.SENDING, _E.CLOSE: _S.CLOSED},
    _S.SENDING: {
        _E.WRITTEN: _S.RECEIVING,
        _E.FINAL: _S.MUST_CLOSE,
        _E.FAILED: _S.MUST_CLOSE,
        _E.CLOSE: _S.CLOSED,
    },
    _S.RECEIVING: {
        _E.REUSABLE: _S.IDLE,
        _E.FINAL: _S.MUST_CLOSE,
        _E.FAILED: _S.MUST_CLOSE,
        _E.CLOSE: _S.CLOSED,
    },
    _S.MUST_CLOSE: {_E.CLOSE: _S.CLOSED},
    _S.CLOSED: {_E.CLOSE: _S.CLOSED},
}
_IDLE, _SENDING, _CLOSED = ConnState.IDLE, ConnState.SENDING, ConnState.CLOSED
_BEGIN, _WRITTEN, _REUSABLE, _FINAL, _FAILED, _CLOSE = ConnEvent


class InvalidTransition(RuntimeError):
    """A state machine was asked for a transition its table does not have: a bug in the dispatcher."""

    def __init__(self, machine: str, state: enum.Enum, event: enum.Enum) -> None:
        super().__init__(f"{machine}: no transition from {state.name} on {event.name}")


class ConnectError(Exception):
    """The connection could not be opened; no byte of any request was written on it. ``denied``: the egress
    policy refused the target's address (no retry can change that)."""

    def __init__(self, message: str, *, timed_out: bool = False, denied: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out
        self.denied = denied


async def checked_addresses(origin: HttpOrigin, egress: EgressPolicy) -> list[str]:
    """The origin's addresses once the policy passed every one of them; ``ConnectError(denied=True)`` if it
    refused any (a name with one internal address among public ones is refused whatever the order)."""
    try:
        ip = ipaddress.ip_address(origin.host)
    except ValueError:
        try:
            infos = await trio.socket.getaddrinfo(origin.host, origin.port, type=socket.SOCK_STREAM)
        except OSError as e:
            raise ConnectError(f"connect to {origin} failed: {_describe(e)}") from None
        ips = list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in infos))
    else:
        ips = [ip]
    for ip in ips:
        if (refused := egress.refused_address(ip)) is not None:
            raise ConnectError(f"egress denied: {origin.host} is a {refused}", denied=True)
    return [str(ip) for ip in ips]


class ExchangeError(Exception):
    """The connection failed after the request write began.

    ``request_written`` is False only when it is certain that no byte went out (a plain-TCP write that failed
    on its first byte); through TLS it is always True.
    """

    def __init__(self, message: str, *, response_started: bool, request_written: bool = True) -> None:
        super().__init__(message)
        self.response_started = response_started
        self.request_written = request_written


async def _connect_any(addresses: list[str], port: int) -> trio.SocketStream:
    """The first of ``addresses`` (literal IPs: no resolution) that accepts, in order; the last error else."""
    error: OSError | None = None
    for address in addresses:
        try:
            return await trio.open_tcp_stream(address, port)
        except OSError as e:
            error = e
    raise error or OSError("no address to connect to")


def _describe(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text if isinstance(e, ssl.SSLError | OSError) else f"{type(e).__name__}: {text}"


X = TypeVar("X")  # the dispatcher's exchange type; the connection only keeps a reference to it


class Connection(Generic[X]):
    """One kept-alive HTTP/1.1 connection; not safe for two concurrent exchanges (the dispatcher ensures one)."""

    __slots__ = (
        "_framed",
        "_headers_done",
        "_in",
        "_informational",
        "_max_body",
        "_needle",
        "_out",
        "_parser",
        "_pending",
        "_poller",
        "_sent",
        "_tail",
        "_tls",
        "body_bytes",
        "complete",
        "excerpt",
        "exchange",
        "exchanges",
        "extra",
        "fd",
        "idle_since",
        "keep_alive",
        "matched",
        "origin",
        "registered",
        "response_started",
        "retry_after",
        "sock",
        "state",
        "status",
    )

    def __init__(
        self,
        origin: HttpOrigin,
        sock: socket.socket,
        tls: ssl.SSLObject | None = None,
        bios: tuple[ssl.MemoryBIO, ssl.MemoryBIO] | None = None,
    ) -> None:
        """``sock``: a connected non-blocking socket we own; ``tls``/``bios``: its completed TLS session."""
        fd = sock.fileno()
        if fd < 0:
            raise ValueError("a Connection needs an open socket")
        self.origin = origin
        self.sock = sock
        self.fd = fd
        self._tls = tls
        self._in: ssl.MemoryBIO | None = bios[0] if bios is not None else None
        self._out: ssl.MemoryBIO | None = bios[1] if bios is not None else None
        self._parser: httptools.HttpResponseParser | None = httptools.HttpResponseParser(self)
        self._poller = select.poll()
        self._poller.register(fd, select.POLLIN | _POLLRDHUP)
        self._pending: memoryview | None = None  # bytes of the request the socket has not taken yet
        self._sent = 0  # bytes of the current request the socket took
        self.state = _IDLE
        self.exchanges = 0  # completed exchanges; > 0 means a reuse is a kept-alive reuse
        self.idle_since = 0.0  # trio time, set by the dispatcher when the connection goes idle
        self.registered = 0  # the events the dispatcher's epoll set watches on it (0: not in the set)
        self.exchange: X | None = None  # the dispatcher's record of the exchange on this connection
        self._reset(None, 0)

    @classmethod
    async def open(
        cls, origin: HttpOrigin, *, ssl_context: ssl.SSLContext | None, egress: EgressPolicy | None = None
    ) -> Connection[X]:
        """Connect (and for https handshake, verifying the certificate with SNI = host); ``ConnectError`` else.

        With ``egress``, the name is resolved here, every address checked, and the connection made to a checked
        address (never a second resolution that could answer something else)."""
        try:
            if egress is None:
                tcp = await trio.open_tcp_stream(origin.host, origin.port)
            else:
                tcp = await _connect_any(await checked_addresses(origin, egress), origin.port)
        except OSError as e:
            raise ConnectError(f"connect to {origin} failed: {_describe(e)}") from None
        # Take the socket out of trio's SocketStream (TCP_NODELAY is already set on it). No checkpoint between
        # detach and wrap, so no leak.
        tsock = tcp.socket
        sock = socket.socket(tsock.family, tsock.type, tsock.proto, fileno=tsock.detach())
        sock.setblocking(False)
        if not origin.tls:
            return cls(origin, sock)
        bios = ssl.MemoryBIO(), ssl.MemoryBIO()
        try:
            tls = (ssl_context or default_ssl_context()).wrap_bio(*bios, server_hostname=origin.host)
            await _handshake(sock, tls, *bios)
        except (ssl.SSLError, OSError, ValueError) as e:
            sock.close()
            raise ConnectError(f"TLS handshake with {origin} failed: {_describe(e)}") from None
        except BaseException:
            sock.close()
            raise
        return cls(origin, sock, tls, bios)

    def _to(self, event: ConnEvent) -> None:
        try:
            self.state = CONNECTION_TRANSITIONS[self.state][event]
        except KeyError:
            raise InvalidTransition("connection", self.state, event) from None

    def _failed(self, error: ExchangeError) -> ExchangeError:
        """``error`` ends the exchange: the connection must close. Returned for the caller to raise."""
        self._to(_FAILED)
        return error

    @property
    def closed(self) -> bool:
        return self.state is _CLOSED

    def _reset(self, needle: bytes | None, max_body: int) -> None:
        self.status = 0
        self.retry_after: bytes | None = None
        self.excerpt = b""
        self.body_bytes = 0
        self.matched = False
        self.complete = False
        self.keep_alive = False
        self.extra = False
        self.response_started = False
        self._needle = needle
        self._tail = b""
        self._max_body = max_body
        self._headers_done = False
        self._framed = False
        self._informational = False

    # -- httptools callbacks ---------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            self.extra = True  # bytes after our response: the connection is not ours to reuse

    def on_header(self, name: bytes, value: bytes) -> None:
        # Length checks first: most headers are none of these, and lower() allocates.
        n = len(name)
        if n == 11:
            if name.lower() == b"retry-after":
                self.retry_after = value
        elif n == 14:
            if name.lower() == b"content-length":
                self._framed = True
        elif n == 17 and name.lower() == b"transfer-encoding" and b"chunked" in value.lower():
            self._framed = True

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        status = self._parser.get_status_code()
        self.status = status
        self._headers_done = True
        self._informational = 100 <= status < 200

    def on_body(self, chunk: bytes) -> None:
        n = self.body_bytes
        self.body_bytes = n + len(chunk)
        if n < EXCERPT_BYTES:
            self.excerpt += chunk[: EXCERPT_BYTES - n]
        needle = self._needle
        if needle is not None and not self.matched and n < self._max_body:
            if n + len(chunk) > self._max_body:
                chunk = chunk[: self._max_body - n]  # the check covers the first max_body bytes, no more
            # Keep len(needle) - 1 bytes of the previous chunk so a match across a chunk boundary is found.
            window = self._tail + chunk if self._tail else chunk
            if needle in window:
                self.matched = True
            elif len(needle) > 1:
                self._tail = window[1 - len(needle) :]

    def on_message_complete(self) -> None:
        if self._informational:
            # 100 Continue / 103 Early Hints: the real response follows on the same connection.
            self._headers_done = False
            self._framed = False
            self._informational = False
            self.retry_after = None
            return
        self.complete = True
        assert self._parser is not None
        # Ask now: llhttp clears the message's flags right after this callback returns.
        self.keep_alive = self._parser.should_keep_alive()

    # -- I/O (synchronous, on the non-blocking socket; the dispatcher waits for readiness) ---------------------

    def begin(self, request: bytes, *, needle: bytes | None, max_body: int) -> bool:
        """Start an exchange: reset the parse state and write ``request``; True if the socket took all of it.

        False: wait until the socket is writable and call ``flush()``. ``ExchangeError`` on failure, with
        ``request_written`` False only if certainly nothing went out.
        """
        if self.state is _CLOSED:
            raise ExchangeError("connection is closed", response_started=False, request_written=False)
        self._to(_BEGIN)
        self._reset(needle, max_body)
        self._sent = 0
        if self._tls is not None:
            assert self._out is not None
            try:
                self._tls.write(request)
            except ssl.SSLError as e:
                raise self._failed(
                    ExchangeError(f"write failed: {_describe(e)}", response_started=False)
                ) from None
            self._pending = memoryview(self._out.read())
        else:
            self._pending = memoryview(request)
        return self.flush()

    def flush(self) -> bool:
        """Write what the socket takes of the pending request; True when nothing is left."""
        pending = self._pending
        if pending is None:
            return True
        try:
            n = self.sock.send(pending)
        except BlockingIOError:
            n = 0
        except OSError as e:
            written = self._sent > 0 or self._tls is not None
            raise self._failed(
                ExchangeError(
                    f"write failed: {_describe(e)}", response_started=False, request_written=written
                )
            ) from None
        self._sent += n
        if n == len(pending):
            self._pending = None
            if self.state is _SENDING:  # TLS records written while RECEIVING do not move the exchange
                self._to(_WRITTEN)
            return True
        self._pending = pending[n:]
        return False

    @property
    def writing(self) -> bool:
        """Part of the request still waits for the socket."""
        return self._pending is not None

    def readable(self) -> bool:
        """Read what arrived and parse it; True when the exchange is over (complete, or past ``max_body``).

        ``ExchangeError`` on a reset, an EOF before the response is complete, or an invalid response.
        """
        try:
            data = self.sock.recv(RECEIVE_BYTES)
        except BlockingIOError:
            return False
        except OSError as e:
            raise self._failed(
                ExchangeError(f"read failed: {_describe(e)}", response_started=self.response_started)
            ) from None
        if self._tls is None:
            return self._received(data)
        return self._received_tls(data)

    def _received_tls(self, data: bytes) -> bool:
        tls, incoming = self._tls, self._in
        assert tls is not None and incoming is not None
        if data:
            incoming.write(data)
        else:
            incoming.write_eof()
        while True:
            try:
                plain = tls.read(RECEIVE_BYTES)
            except ssl.SSLWantReadError:
                self._flush_tls_records()  # key updates and the like
                return False
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                plain = b""  # close_notify, or an EOF without it: an EOF either way
            except ssl.SSLError as e:
                raise self._failed(
                    ExchangeError(f"read failed: {_describe(e)}", response_started=self.response_started)
                ) from None
            if self._received(plain):
                return True

    def _flush_tls_records(self) -> None:
        out = self._out
        assert out is not None
        if out.pending:
            data = out.read()
            self._pending = memoryview(data if self._pending is None else bytes(self._pending) + data)
            self.flush()

    def finish(self) -> None:
        """Settle ``keep_alive`` and count the exchange once ``readable()`` said it is over: IDLE or MUST_CLOSE.

        Not kept alive either when part of the request never went out (a server may answer before reading a
        large body) or when TLS holds bytes beyond the response: the next exchange would inherit them.
        """
        tls_left = self._tls is not None and (
            self._tls.pending() > 0 or (self._in is not None and self._in.pending > 0)
        )
        self.keep_alive = (
            self.keep_alive
            and self.complete
            and not self.extra
            and self.body_bytes <= self._max_body
            and self._pending is None
            and not tls_left
        )
        if self.complete:
            self.exchanges += 1
        self._to(_REUSABLE if self.keep_alive else _FINAL)

    def _received(self, data: bytes | bytearray) -> bool:
        """Feed what was read to the parser; True when reading should stop (complete, or over max_body)."""
        if not data:
            if self._headers_done and not self._framed and not self._informational:
                # Body delimited by EOF: this is its end.
                self.complete = True
                self.keep_alive = False
                return True
            where = "mid-response" if self.response_started else "before any response byte"
            raise self._failed(
                ExchangeError(
                    f"connection closed by the server {where}", response_started=self.response_started
                )
            )
        self.response_started = True
        assert self._parser is not None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as e:
            if not self.complete:
                raise self._failed(
                    ExchangeError(f"invalid HTTP response: {e}", response_started=True)
                ) from None
            self.extra = True  # garbage after a complete response
        # Bounded read: past max_body stop here and let the caller close the connection.
        return self.complete or self.body_bytes > self._max_body

    @property
    def oversize(self) -> bool:
        """The body went past ``max_body``: checked only that far, reading stopped, the connection not reused."""
        return self.body_bytes > self._max_body

    def idle_readable(self) -> bool:
        """An idle connection turned readable: True if it is still good (only TLS session tickets arrived).

        Anything else (an EOF, a reset, bytes nobody asked for) means the server is done with it.
        """
        if self._tls is None or self.exchanges > 0:
            return False
        assert self._in is not None
        try:
            data = self.sock.recv(RECEIVE_BYTES)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        self._in.write(data)
        try:
            self._tls.read(RECEIVE_BYTES)
        except ssl.SSLWantReadError:
            return True  # handshake-layer records only: tickets
        except ssl.SSLError:
            return False
        return False  # application data before any request

    def looks_stale(self) -> bool:
        """True if this idle connection must not be reused (closed by the server, or unexpected bytes)."""
        events = self._poller.poll(0)
        if not events:
            return False
        mask = events[0][1]
        # A never-used TLS connection that is readable but not hung up most likely holds TLS 1.3 tickets.
        return bool(mask & _HANGUP) or self.exchanges > 0 or self._tls is None

    def close(self) -> None:
        if self.state is not _CLOSED:
            self._to(_CLOSE)
            self._parser = None  # break the parser <-> protocol cycle now rather than at the next GC
            self.exchange = None
            try:
                trio.lowlevel.notify_closing(self.sock)
            except RuntimeError:
                pass  # not inside trio (a connection driven by hand): nothing can be waiting on the socket
            self.sock.close()

    def __repr__(self) -> str:
        return f"<Connection {self.origin} {self.state.name} after {self.exchanges} exchanges>"


async def _send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view) :]
        except BlockingIOError:
            pass
        if view:
            await trio.lowlevel.wait_writable(sock)


async def _handshake(
    sock: socket.socket, tls: ssl.SSLObject, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO
) -> None:
    while True:
        try:
            tls.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        if outgoing.pending:
            await _send_all(sock, outgoing.read())
        if done:
            return
        await trio.lowlevel.wait_readable(sock)
        try:
            data = sock.recv(RECEIVE_BYTES)
        except BlockingIOError:
            continue
        if data:
            incoming.write(data)
        else:
            incoming.write_eof()


_default_context: ssl.SSLContext | None = None


def default_ssl_context() -> ssl.SSLContext:
    """Verifying context (system CAs, hostname check), ALPN http/1.1; made once, shared by all connections."""
    global _default_context
    if _default_context is None:
        ctx = ssl.create_default_context()
        ctx.set_alpn_protocols(["http/1.1"])
        _default_context = ctx
    return _default_context
