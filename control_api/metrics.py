"""The control API's ``/metrics`` (Prometheus text): requests by route, method and status, latency by route,
write routing (internal batches, retries), rate-limit and quota refusals.

``RequestMetrics`` is a plain ASGI middleware, outermost, so what the inner ones answer (401, 429) is counted
too; the route is Litestar's path template (``/v1/jobs/{job_id:str}``), never the raw path, so ids do not
multiply the series.
"""

from __future__ import annotations

import time
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from protocol.prometheus import Counter, Gauge, LatencySummaries, render

from .errors import answered_status

__all__ = ["ApiMetrics", "RequestMetrics"]


class ApiMetrics:
    def __init__(self) -> None:
        p = "shardwheel_api_"
        self.requests = Counter(p + "requests_total", "requests answered, by route, method and status")
        self.latency = LatencySummaries(p + "request_latency", "time to answer, by route")
        self.rate_limited = Counter(p + "rate_limited_total", "requests refused by their key's rate limit")
        self.quota_refused = Counter(p + "quota_refused_total", "creates refused by the tenant's job quota")
        self.route_retries = Gauge(p + "route_retries_total", "writes sent again (owner moving or unreachable)",
                                   kind="counter")  # fmt: skip
        self.internal_batches = Gauge(p + "internal_batches_total", "internal write requests sent to nodes",
                                      kind="counter")  # fmt: skip
        self.writes_routed = Gauge(p + "writes_routed_total", "job writes routed to their owners", kind="counter")

    def render(self) -> str:
        return render(self)


class RequestMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500

        async def counting_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception as e:  # answered by the exception handlers around the middleware stack
            status = answered_status(e)
            raise
        finally:
            metrics: ApiMetrics = scope["app"].state.metrics
            route: Any = scope.get("path_template") or "unmatched"
            metrics.requests.inc(route=route, method=str(scope.get("method")), status=str(status))
            metrics.latency.record((time.monotonic() - started) * 1000, route=route)
