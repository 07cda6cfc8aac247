from __future__ import annotations

import trio
import trio.testing

from protocol.errors import DatabaseUnavailable
from scheduler_node.writer import Writer


async def test_batches_flush_and_fenced(autojump_clock: trio.testing.MockClock) -> None:
    batches: list[list[int]] = []
    fenced: list[tuple[int, int]] = []

    async def write(batch: list[int]) -> set[tuple[int, int]]:
        batches.append(list(batch))
        await trio.sleep(0.001)
        return {(7, 1)} if 7 in batch else set()

    w: Writer[int] = Writer(write, on_fenced=fenced.append, max_batch=100, max_delay_s=0.005)
    async with trio.open_nursery() as n:
        await n.start(w.run)
        for i in range(250):
            await w.put(i)
        await w.flush()
        assert sum(len(b) for b in batches) == 250 and max(len(b) for b in batches) <= 100
        assert [x for b in batches for x in b] == list(range(250))
        assert fenced == [(7, 1)] and w.pending() == 0
        await w.put(1000)  # a lone item waits at most max_delay_s
        t0 = trio.current_time()
        await w.flush()
        assert trio.current_time() - t0 <= 0.01
        await w.drain_and_close()
    assert batches[-1] == [1000]


async def test_back_pressure_and_retry(autojump_clock: trio.testing.MockClock) -> None:
    failures = 3
    written: list[int] = []
    gate = trio.Event()

    async def write(batch: list[int]) -> set[int]:
        nonlocal failures
        await gate.wait()
        if failures:
            failures -= 1
            raise DatabaseUnavailable("database away")
        written.extend(batch)
        return set()

    w: Writer[int] = Writer(write, on_fenced=lambda s: None, max_batch=10, max_pending=20)
    async with trio.open_nursery() as n:
        await n.start(w.run)
        for i in range(20):  # 10 in the stuck batch, 10 queued: max_pending reached
            await w.put(i)
        with trio.move_on_after(1) as cs:
            await w.put(99)
        assert cs.cancelled_caught  # put blocks while max_pending items wait
        w.put_nowait(20)  # never blocks: its caller bounds the backlog by waiting for room()
        with trio.move_on_after(1) as cs:
            await w.room()
        assert cs.cancelled_caught
        gate.set()
        assert await w.room()  # it had to wait for the stuck batch
        await w.flush()
        assert not await w.room()
        await w.drain_and_close()
    assert written == list(range(21))  # nothing lost across three failed attempts, order kept


async def test_flush_waits_for_a_put_still_waiting_for_room(autojump_clock: trio.testing.MockClock) -> None:
    gate = trio.Event()
    written: list[int] = []

    async def write(batch: list[int]) -> set[int]:
        await gate.wait()
        written.extend(batch)
        return set()

    w: Writer[int] = Writer(write, on_fenced=lambda s: None, max_batch=2, max_pending=2)
    async with trio.open_nursery() as n:
        await n.start(w.run)
        await w.put(1)
        await w.put(2)
        n.start_soon(w.put, 3)  # waits for room
        await trio.sleep(0.1)
        flushed = trio.Event()

        async def flush() -> None:
            await w.flush()
            flushed.set()

        n.start_soon(flush)
        await trio.sleep(0.1)
        gate.set()
        await flushed.wait()
        assert written == [1, 2, 3]  # the shutdown's flush did not return with the waiting put unwritten
        await w.drain_and_close()


async def test_quiet_period_writes_after_a_burst_not_during_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    written_at: list[tuple[float, int]] = []

    async def write(batch: list[int]) -> set[int]:
        written_at.append((trio.current_time(), len(batch)))
        return set()

    w: Writer[int] = Writer(write, on_fenced=lambda s: None, max_batch=1000, max_delay_s=0.5, quiet_s=0.02)
    async with trio.open_nursery() as n:
        await n.start(w.run)
        t0 = trio.current_time()
        for i in range(100):  # a burst: one result every 5 ms for 0.5 s
            w.put_nowait(i)
            await trio.sleep(0.005)
        for i in range(100, 110):  # then a slow trickle: one every 50 ms
            w.put_nowait(i)
            await trio.sleep(0.05)
        await w.flush()
        await w.drain_and_close()
    (first_at, first_n), *rest = written_at
    assert first_n == 100 and abs(first_at - t0 - 0.5) < 0.01  # the burst went out in one batch, at max_delay
    assert [n for _, n in rest] == [1] * 10  # each trickled item after 20 quiet ms
