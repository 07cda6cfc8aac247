"""Micro-benchmark of the dispatcher's burst: N requests due at the same whole second, drift seen by a sink.

Rules:
- The sink (``bench.sink``: uvloop + httptools) runs in a subprocess, so the figure is the dispatcher's, not a
  shared event loop's; it records the receive time of every request. Drift = sink receive time − scheduled
  time (the ``X-Shardwheel-Scheduled-At`` header), i.e. what a target sees (DESIGN.md §3 and §8).
- Before the second: templates are built, ``--connections`` connections are prewarmed (per-host cap = that
  number, so the burst runs over exactly those), and a warm-up round of one request per connection runs (a
  node in steady state has warm connections and code paths; warm-up requests are left out of the figures).
- The slot is the next whole second at least ``--lead`` s away. ``--mode submit`` (default, what the node does)
  wakes once at the second and hands all N to ``Dispatcher.submit`` in one loop; outcomes come back through
  ``on_done`` from the dispatcher's reactor. ``--mode ahead`` starts one task per firing before the second, each
  sleeping until it and awaiting ``Dispatcher.send``; ``--mode spawn``
  starts them all at the second from one loop (adds the spawn cost to the burst).
- Every send passes a ``may_send`` lease check, like the node's.
- Output: drift p50/p90/p99/max (HdrHistogram, µs resolution), losses, duplicates, the client-side dispatch lag
  (sent_at − slot) and outcome counts; ``--json`` prints one JSON object instead.

- The setup heap is ``gc.freeze()``-ed before the second (what a node should do once its jobs are loaded;
  ``--no-gc-freeze`` to compare): without it ~30 % of the burst's client CPU went to collections.

Example (2-CPU shared dev machine, sink on the other core; figures vary with load)::

    .venv/bin/python -m bench.dispatch_burst --n 5000 --connections 100
    # burst N=5000 over 100 connections (prewarmed 100, opened 100; mode=submit, unsigned, gc frozen) at ...
    #   drift ms (sink receive - scheduled): p50 287.2  p90 375.8  p99 394.5  max 397.3   received 5000  lost 0 ...
    #   dispatch lag ms (sent_at - scheduled): p50 286.0  p99 394.5  max 397.3
    #   outcomes {'response': 5000}  statuses {'200': 5000}  client done at +398.5 ms (cpu 228.5 ms) ...
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import tempfile
import time
from collections import Counter
from typing import Any

import httpx
import msgspec
import trio
from hdrh.histogram import HdrHistogram

from protocol.jobs import Target
from scheduler_node.dispatch import (
    Dispatcher,
    Exchange,
    Outcome,
    RequestTemplate,
    SendRequest,
    format_scheduled_at,
)

from .bare import first_attempt
from .results import drift_summary, read_sink, start_sink, stop_sink

__all__ = ["main", "run"]

_QUANTILES = (50.0, 90.0, 99.0)


async def _burst(
    port: int, n: int, connections: int, mode: str, signed: bool, lead_s: float, gc_freeze: bool
) -> dict[str, Any]:
    url = f"http://127.0.0.1:{port}/fire"
    secret = b"bench-secret" if signed else None
    templates = [
        RequestTemplate.build(
            f"bench-{i:06d}", Target(url=url, body={"i": i}), node_id="bench", signing_secret=secret
        )
        for i in range(n)
    ]
    warmups = [
        RequestTemplate.build(
            f"warmup-{i:06d}", Target(url=url, body={"i": i}), node_id="bench", signing_secret=secret
        )
        for i in range(connections)
    ]
    outcomes: list[Outcome | None] = [None] * n
    valid_until = trio.current_time() + 3600.0  # the lease check a node makes; always true here

    def may_send() -> bool:
        return trio.current_time() < valid_until

    async with Dispatcher(per_host_limit=connections, node_limit=max(10_000, n)) as d:
        opened = await d.prewarm(templates[0].http_origin, connections)
        if gc_freeze:
            # What a node does once its jobs are loaded: move the long-lived heap out of the collector's way
            # (measured here: ~30 % of the burst's client CPU went to collections without it).
            gc.collect()
            gc.freeze()
        warm_ms = int(time.time() * 1000)

        async def warm(t: RequestTemplate) -> None:
            await d.send(
                SendRequest(template=t, scheduled_at_ms=warm_ms, attempt=1, origin="manual", timeout_s=10)
            )

        async with trio.open_nursery() as nursery:
            for t in warmups:
                nursery.start_soon(warm, t)

        slot_s = math.ceil(time.time() + lead_s)
        slot_ms = slot_s * 1000
        deadline = trio.current_time() + (slot_s - time.time())  # the slot on trio's clock
        requests = [first_attempt(t, slot_ms, may_send) for t in templates]

        async def fire(i: int, sleep_first: bool) -> None:
            if sleep_first:
                await trio.sleep_until(deadline)
            outcomes[i] = await d.send(requests[i])

        cpu0 = 0.0

        async def mark_cpu() -> None:
            nonlocal cpu0
            await trio.sleep_until(deadline)
            cpu0 = time.process_time()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(mark_cpu)
            if mode == "submit":
                await trio.sleep_until(deadline)

                def record(ex: Exchange) -> None:
                    outcomes[ex.context] = ex.outcome

                for i in range(n):  # a request made per submit, as the node's engine does per attempt
                    d.submit(first_attempt(templates[i], slot_ms, may_send, record), context=i)
                while d.statistics().in_flight or d.statistics().waiting:
                    await trio.sleep(0.001)
            elif mode == "ahead":
                for i in range(n):
                    nursery.start_soon(fire, i, True)
            else:
                await trio.sleep_until(deadline)
                for i in range(n):
                    nursery.start_soon(fire, i, False)
        finished = trio.current_time() - deadline
        cpu = time.process_time() - cpu0  # CPU the client used from the slot on: ~finished unless starved
        stats = d.statistics()

    done = [o for o in outcomes if o is not None]
    lag = HdrHistogram(1, 60_000_000, 3)
    for o in done:
        if o.sent_at is not None:
            lag.record_value(max(1, round((o.sent_at * 1000 - slot_ms) * 1000)))
    return {
        "slot_ms": slot_ms,
        "prewarmed": opened,
        "connections_opened": stats.connections_opened,
        "outcomes": dict(Counter(str(o.kind) for o in done)),
        "statuses": dict(Counter(str(o.http_status) for o in done)),
        "client_finished_ms": round(finished * 1000, 1),
        "client_cpu_ms": round(cpu * 1000, 1),
        "dispatch_lag_ms": _summary(lag),
    }


def _summary(h: HdrHistogram) -> dict[str, float]:
    out = {f"p{q:g}": round(h.get_value_at_percentile(q) / 1000, 1) for q in _QUANTILES}
    out["max"] = round(h.get_max_value() / 1000, 1)
    return out


def _drift(out: str, n: int) -> dict[str, Any]:
    burst = [r for r in read_sink(out) if r.job is not None and r.job.startswith("bench-") and r.scheduled_ms]
    seen = Counter(r.job for r in burst)  # warm-up requests and /stats are left out above
    span_s = (max(r.recv_ns for r in burst) - min(r.recv_ns for r in burst)) / 1e9 if burst else 0.0
    drift = drift_summary(burst)
    return {
        "received": len(burst),
        "lost": len({f"bench-{i:06d}" for i in range(n)} - seen.keys()),
        "duplicates": sum(c - 1 for c in seen.values() if c > 1),
        "early": drift.pop("early", 0),
        "drift_ms": drift,
        "drain_rate_per_s": round(len(burst) / span_s) if span_s > 0 else None,
    }


def run(
    n: int,
    connections: int,
    mode: str = "submit",
    signed: bool = False,
    lead_s: float = 1.0,
    gc_freeze: bool = True,
) -> dict[str, Any]:
    """One burst against a fresh sink subprocess; returns the figures."""
    with tempfile.TemporaryDirectory(prefix="sw-bench-") as tmp:
        out = os.path.join(tmp, "sink.jsonl")
        proc, port = start_sink(out)
        try:
            client = trio.run(_burst, port, n, connections, mode, signed, lead_s, gc_freeze)
            sink_stats = httpx.get(f"http://127.0.0.1:{port}/stats", timeout=10).json()
        finally:
            stop_sink(proc)
        drift = _drift(out, n)
    return {
        "n": n,
        "connections": connections,
        "mode": mode,
        "signed": signed,
        "gc_freeze": gc_freeze,
        "slot": format_scheduled_at(client["slot_ms"]),
        "sink": sink_stats,
        **drift,
        **{k: v for k, v in client.items() if k != "slot_ms"},
    }


def _print(r: dict[str, Any]) -> None:
    d, lag = r["drift_ms"], r["dispatch_lag_ms"]
    print(
        f"burst N={r['n']} over {r['connections']} connections (prewarmed {r['prewarmed']}, opened "
        f"{r['connections_opened']}; mode={r['mode']}, {'signed' if r['signed'] else 'unsigned'}, "
        f"gc {'frozen' if r['gc_freeze'] else 'not frozen'}) at {r['slot']}"
    )
    print(
        f"  drift ms (sink receive - scheduled): p50 {d['p50']}  p90 {d['p90']}  p99 {d['p99']}  max {d['max']}"
        f"   received {r['received']}  lost {r['lost']}  dup {r['duplicates']}  early {r['early']}"
    )
    print(f"  dispatch lag ms (sent_at - scheduled): p50 {lag['p50']}  p99 {lag['p99']}  max {lag['max']}")
    print(
        f"  outcomes {r['outcomes']}  statuses {r['statuses']}  client done at +{r['client_finished_ms']} ms"
        f" (cpu {r['client_cpu_ms']} ms)"
        f"  sink drain {r['drain_rate_per_s']} req/s"
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.dispatch_burst", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=5000, help="requests in the burst (default 5000)")
    p.add_argument("--connections", type=int, default=100, help="kept-alive connections = per-host cap (100)")
    p.add_argument("--mode", choices=("submit", "ahead", "spawn"), default="submit")
    p.add_argument("--signed", action="store_true", help="sign every request (HMAC-SHA256)")
    p.add_argument("--lead", type=float, default=1.0, help="slot = next whole second at least this far (s)")
    p.add_argument("--no-gc-freeze", action="store_true", help="leave the setup heap to the collector")
    p.add_argument("--repeat", type=int, default=1, help="bursts to run (each against a fresh sink)")
    p.add_argument("--json", action="store_true", help="print JSON lines instead of text")
    args = p.parse_args(argv)
    for _ in range(args.repeat):
        result = run(args.n, args.connections, args.mode, args.signed, args.lead, not args.no_gc_freeze)
        if args.json:
            print(msgspec.json.encode(result).decode(), flush=True)
        else:
            _print(result)


if __name__ == "__main__":
    main()
