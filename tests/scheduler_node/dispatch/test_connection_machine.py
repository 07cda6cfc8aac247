"""The connection's state machine against a model, under any sequence of server behaviours.

``Connection`` (``scheduler_node/dispatch/connection.py``) runs over a real TCP pair on 127.0.0.1 whose server
end this test plays by hand: it answers in pieces or all at once, keeps alive or asks to close, closes (FIN),
resets (RST), sends garbage, reads a large request slowly, or does nothing until the client gives up (a
timeout). After each step the connection's state, its error and its reuse decision must be what the model
says, and the state must have moved only along ``CONNECTION_TRANSITIONS``. The client side does what the
dispatcher's reactor does: read when readable, ``finish()`` when a read says the exchange is over, close on an
error or a timeout, and run the idle check (``looks_stale``) before reusing a kept-alive connection.
"""

from __future__ import annotations

import select
import socket
import struct
from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from scheduler_node.dispatch import CONNECTION_TRANSITIONS, Connection, ConnState, ExchangeError, HttpOrigin

SMALL = b"POST /run HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}"
BIG_BODY = 1 << 18  # far beyond both socket buffers (set small below): the request stays SENDING
BIG = b"POST /run HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % BIG_BODY + b"x" * BIG_BODY
WAIT_S = 2.0  # bound on waiting for loopback bytes that were already sent


def response(body: bytes, keep_alive: bool) -> bytes:
    close = b"" if keep_alive else b"Connection: close\r\n"
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), close, body)


@dataclass
class Model:
    state: ConnState = ConnState.IDLE
    exchanges: int = 0  # completed ones
    response: bytes = b""  # what the server will answer the current request with
    answered: int = 0  # bytes of it the server sent
    keep_alive: bool = True
    request_out: bool = False  # the whole request went out
    peer_closed: bool = False  # the server closed (FIN) or reset the connection

    def must_close_now(self) -> bool:
        """The dispatcher closes it: the exchange is over, or the idle check saw the server close it."""
        return self.state is ConnState.MUST_CLOSE or (self.state is ConnState.IDLE and self.peer_closed)


class ConnectionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._listener = socket.socket()
        # Small buffers (the server's before the handshake, so the window it offers is small from the start).
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen()
        self._open_pair()

    def _open_pair(self) -> None:
        port = self._listener.getsockname()[1]
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.connect(("127.0.0.1", port))
        client.setblocking(False)
        server, _ = self._listener.accept()
        server.settimeout(WAIT_S)
        self.server = server
        self.conn: Connection[object] = Connection(HttpOrigin("http", "127.0.0.1", port), client)
        self.sock = client
        self.m = Model()
        self.seen = ConnState.IDLE

    def teardown(self) -> None:
        self.conn.close()
        self.server.close()
        self._listener.close()

    # -- the client side, as the reactor does it -----------------------------------------------------------

    def _wait_readable(self) -> None:
        select.select([self.sock], [], [], WAIT_S)

    def _read(self) -> bool | ExchangeError:
        """One readiness event: read and parse; what ``readable()`` returned, or the error it raised."""
        self._wait_readable()
        try:
            return self.conn.readable()
        except ExchangeError as e:
            return e

    def _fails(self, result: bool | ExchangeError, *, response_started: bool) -> None:
        assert isinstance(result, ExchangeError), result
        assert result.response_started is response_started and result.request_written
        self.m.state = ConnState.MUST_CLOSE

    def _server_recv(self) -> int:
        n = len(self.server.recv(1 << 16))
        assert n, "the client closed the connection"
        return n

    def _server_read_request(self) -> None:
        """The server reads the small request (it is all there: the client's write took it at once)."""
        got = b""
        while len(got) < len(SMALL):
            data = self.server.recv(1 << 16)
            assert data, "the client closed the connection"
            got += data
        assert got == SMALL

    # -- rules -----------------------------------------------------------------------------------------

    @precondition(lambda self: self.m.state is ConnState.IDLE and not self.m.peer_closed)
    @rule(body=st.binary(max_size=100), keep_alive=st.booleans(), big=st.booleans())
    def begin(self, body: bytes, keep_alive: bool, big: bool) -> None:
        assert not self.conn.looks_stale()  # the idle check before reuse
        all_out = self.conn.begin(BIG if big else SMALL, needle=None, max_body=1 << 20)
        assert all_out is not big
        self.m.state = ConnState.SENDING if big else ConnState.RECEIVING
        self.m.request_out = not big
        self.m.response = response(body, keep_alive)
        self.m.answered = 0
        self.m.keep_alive = keep_alive
        if not big:
            self._server_read_request()

    @precondition(lambda self: self.m.state is ConnState.SENDING and not self.m.peer_closed)
    @rule()
    def server_reads_the_large_request(self) -> None:
        # The server drains while the client flushes, as the reactor does on EPOLLOUT.
        got = 0
        while not self.conn.flush():
            readable, _, _ = select.select([self.server], [self.sock], [], WAIT_S)
            if readable:
                got += self._server_recv()
        while got < len(BIG):
            got += self._server_recv()
        assert got == len(BIG)
        self.m.state = ConnState.RECEIVING
        self.m.request_out = True

    @precondition(
        lambda self: (
            self.m.state in (ConnState.SENDING, ConnState.RECEIVING)
            and not self.m.peer_closed
            and self.m.answered < len(self.m.response)
        )
    )
    @rule(data=st.data(), rest=st.booleans())
    def server_answers(self, data: st.DataObject, rest: bool) -> None:
        left = len(self.m.response) - self.m.answered
        n = left if rest else data.draw(st.integers(1, left), label="bytes")
        part = self.m.response[self.m.answered : self.m.answered + n]
        self.server.sendall(part)
        self.m.answered += n
        result = self._read()
        if self.m.answered < len(self.m.response):
            assert result is False
            return
        assert result is True  # complete
        self.conn.finish()
        self.m.exchanges += 1
        reusable = self.m.keep_alive and self.m.request_out
        self.m.state = ConnState.IDLE if reusable else ConnState.MUST_CLOSE

    @precondition(lambda self: self.m.state is not ConnState.CLOSED and not self.m.peer_closed)
    @rule(reset=st.booleans())
    def server_closes(self, reset: bool) -> None:
        if reset:
            self.server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.server.close()
        self.m.peer_closed = True
        if self.m.state is ConnState.IDLE:
            self._wait_readable()
            assert self.conn.looks_stale()  # never reused: the dispatcher closes it
            return
        if self.m.state in (ConnState.SENDING, ConnState.RECEIVING):
            result = self._read()
            if self.m.state is ConnState.SENDING and isinstance(result, bool):
                # A reset can overtake our reading; a flush then meets it. Either way the exchange fails.
                try:
                    while not self.conn.flush():
                        select.select([], [self.sock], [], WAIT_S)
                    result = self._read()
                except ExchangeError as e:
                    result = e
            # Every byte the server sent was read when it was sent, so "started" is what the model says.
            self._fails(result, response_started=self.m.answered > 0)

    @precondition(lambda self: self.m.state is ConnState.IDLE and self.m.peer_closed)
    @rule()
    def client_writes_on_the_dead_connection(self) -> None:
        # The stale race: the idle check was skipped or came too early, and the request goes out anyway.
        try:
            self.conn.begin(SMALL, needle=None, max_body=1 << 20)
        except ExchangeError as e:
            assert not e.response_started
            self.m.state = ConnState.MUST_CLOSE
            return
        self._fails(self._read(), response_started=False)

    @precondition(
        lambda self: self.m.state is ConnState.RECEIVING and not self.m.peer_closed and not self.m.answered
    )
    @rule()
    def server_sends_garbage(self) -> None:
        self.server.sendall(b"SMTP ready\r\n\r\n")
        self._fails(self._read(), response_started=True)

    @precondition(lambda self: self.m.state in (ConnState.SENDING, ConnState.RECEIVING))
    @rule()
    def client_times_out(self) -> None:
        self.conn.close()  # what the dispatcher does at the exchange's deadline
        self.m.state = ConnState.CLOSED

    @precondition(lambda self: self.m.must_close_now())
    @rule()
    def dispatcher_drops_it(self) -> None:
        self.conn.close()
        self.m.state = ConnState.CLOSED

    @precondition(lambda self: self.m.state is ConnState.CLOSED)
    @rule()
    def next_connection(self) -> None:
        self.server.close()
        self._open_pair()

    # -- invariants ------------------------------------------------------------------------------------

    @invariant()
    def state_is_the_models(self) -> None:
        assert self.conn.state is self.m.state
        assert self.conn.closed is (self.m.state is ConnState.CLOSED)
        assert self.conn.exchanges == self.m.exchanges

    @invariant()
    def moved_only_along_the_table(self) -> None:
        now = self.conn.state
        if now is not self.seen:
            # One rule may pass through an intermediate state (BEGIN then WRITTEN): reachable in the table.
            assert now in _reachable(self.seen), (self.seen, now)
        self.seen = now

    @invariant()
    def nothing_left_to_write_once_idle_or_receiving(self) -> None:
        if self.conn.state in (ConnState.IDLE, ConnState.RECEIVING):
            assert not self.conn.writing


def _reachable(start: ConnState) -> set[ConnState]:
    seen, todo = set(), [start]
    while todo:
        for nxt in CONNECTION_TRANSITIONS[todo.pop()].values():
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


TestConnectionMachine = ConnectionMachine.TestCase
TestConnectionMachine.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)


def test_every_state_has_a_way_out_and_close_is_total() -> None:
    for state, moves in CONNECTION_TRANSITIONS.items():
        assert moves, state
        assert moves[next(e for e in moves if e.name == "CLOSE")] is ConnState.CLOSED
    assert _reachable(ConnState.IDLE) == set(ConnState)
