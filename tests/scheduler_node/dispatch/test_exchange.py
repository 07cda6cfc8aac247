"""The exchange's state table (``scheduler_node/dispatch/exchange.py``) and its one outcome builder."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from protocol.jobs import Target
from scheduler_node.dispatch import (
    EXCHANGE_TRANSITIONS,
    Exchange,
    ExchangeEvent,
    ExchangeState,
    InvalidTransition,
    OriginPool,
    OutcomeKind,
    RequestTemplate,
    SendRequest,
)

Q, C, A, D = ExchangeState
TAKE, OPEN, END = ExchangeEvent


def exchange() -> Exchange:
    t = RequestTemplate.build("job-1", Target(url="http://127.0.0.1:9/"), node_id="n")
    request = SendRequest(template=t, scheduled_at_ms=1_000, attempt=1, origin="scheduled", timeout_s=2.0)
    return Exchange(request, OriginPool(t.http_origin, 4, lambda conn: None), None)


def test_the_table_as_written() -> None:
    assert EXCHANGE_TRANSITIONS == {
        Q: {TAKE: A, OPEN: C, END: D},
        C: {TAKE: A, END: D},
        A: {OPEN: C, END: D},
        D: {},
    }


async def test_every_live_state_can_end_and_done_is_final() -> None:
    for path in ([], [TAKE], [OPEN], [OPEN, TAKE], [TAKE, OPEN]):
        ex = exchange()
        for event in path:
            ex.advance(event)
        assert ex.advance(END) is not D and ex.state is D
        for event in ExchangeEvent:
            with pytest.raises(InvalidTransition, match="exchange: no transition from DONE"):
                ex.advance(event)


async def test_connecting_cannot_open_again() -> None:
    ex = exchange()
    ex.advance(OPEN)
    with pytest.raises(InvalidTransition):
        ex.advance(OPEN)


async def test_a_failed_write_that_sent_nothing_restores_written() -> None:
    ex = exchange()
    ex.writing(100.0)
    assert ex.written and ex.sent_at == 100.0
    ex.unwritten()
    assert not ex.written and ex.sent_at is None
    # A resend keeps the first send time; a failed resend that sent nothing leaves the first write standing.
    ex.writing(100.0)
    ex.writing(105.0)
    assert ex.sent_at == 100.0
    ex.unwritten()
    assert ex.written and ex.sent_at == 100.0


async def test_one_builder_for_outcomes_without_a_response(autojump_clock: trio.testing.MockClock) -> None:
    ex = exchange()
    ex.writing(100.0)
    ex.reused = True
    ex.error = "connection closed by the server before any response byte"
    await trio.sleep(0.01)
    failed = ex.failed()
    assert failed.kind is OutcomeKind.CONNECTION_ERROR and failed.error == ex.error
    assert failed.bytes_written and failed.reused_connection and failed.sent_at == 100.0
    assert failed.duration_s == pytest.approx(0.01)
    timeout = ex.ended(OutcomeKind.TIMEOUT, "no complete response within 2 s")
    assert (timeout.kind, timeout.error, timeout.bytes_written) == (OutcomeKind.TIMEOUT, timeout.error, True)
