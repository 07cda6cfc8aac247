"""The bare dispatcher: N pre-encoded requests fired at every whole second, no database, no wheel.

It does what the node's firing path does at the second (hand each request to ``Dispatcher.submit`` in one
loop, yielding every 128 as the node's driver does; the dispatcher checks the lease validity and renders the
slot headers) and nothing before it, so the node's drift minus this drift is what the scheduler itself adds.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable

import trio

from protocol.jobs import Target
from scheduler_node.dispatch import Dispatcher, Exchange, RequestTemplate, SendRequest

__all__ = ["fire_every_second", "first_attempt"]


def first_attempt(
    template: RequestTemplate,
    slot_ms: int,
    may_send: Callable[[], bool],
    on_done: Callable[[Exchange], object] | None = None,
) -> SendRequest:
    """What the node's engine hands the dispatcher for a slot's first attempt (10 s timeout)."""
    return SendRequest(
        template=template,
        scheduled_at_ms=slot_ms,
        attempt=1,
        origin="scheduled",
        timeout_s=10.0,
        may_send=may_send,
        on_done=on_done,
    )


async def fire_every_second(port: int, jobs: int, duration: int, connections: int = 256,
                            warmup: int = 2) -> tuple[int, int, float]:  # fmt: skip
    """Fire for ``warmup + duration`` seconds; returns the measured window [t0, t1) in unix seconds and the CPU
    seconds this process used in it (the floor of the node's CPU per firing)."""
    url = f"http://127.0.0.1:{port}/fire"
    templates = [RequestTemplate.build(f"bare-{i:07d}", Target(url=url), node_id="bare") for i in range(jobs)]
    valid_until = trio.current_time() + 3600.0

    def may_send() -> bool:
        return trio.current_time() < valid_until

    async with Dispatcher(per_host_limit=connections, node_limit=max(10_000, jobs)) as d:
        await d.prewarm(templates[0].http_origin, min(connections, jobs))
        gc.collect()
        gc.freeze()  # what the node does once its shards are loaded
        first = math.ceil(time.time() + 0.5)
        t0, t1 = first + warmup, first + warmup + duration
        cpu0 = cpu1 = 0.0
        for second in range(first, t1 + 1):
            await trio.sleep(max(0.0, second - time.time()))
            if second == t0:
                cpu0 = time.process_time()
            elif second == t1:
                cpu1 = time.process_time()
                break
            slot_ms = second * 1000
            for i, t in enumerate(templates):
                d.submit(first_attempt(t, slot_ms, may_send))
                if i % 128 == 127:
                    await trio.lowlevel.checkpoint()  # as the node's driver does: first sends out early
        while d.statistics().in_flight or d.statistics().waiting:
            await trio.sleep(0.01)
    return t0, t1, cpu1 - cpu0
