"""Alert delivery: POST each stored alert of the node's shards to its webhook, with retries, off the firing path.

Rules:
- Alerts are stored first (by the engine, fenced, with the result that raised them); this loop only delivers.
  So an alert survives a crash or a takeover: the shard's next owner delivers what is still pending.
- The loop polls ``pending_deliveries`` for the owned shards every ``interval_s``; each alert is one POST
  (httpx, JSON body: the alert), 2xx counts as delivered. Failures back off exponentially (2 s doubling to
  10 min) for ``max_attempts`` tries, then the alert stays stored and listed, undelivered.
- Deliveries run concurrently (bounded) and time out, so one dead webhook never holds back the others.
- The egress policy (``protocol.egress``) applies as to targets: the webhook's name is resolved and every
  address checked before the POST; a refused one ends the alert's delivery at once (``egress denied``, no
  retry). httpx resolves the name again to connect, so unlike a firing a re-resolution between the two is not
  excluded: webhooks are operators' and users' own endpoints, checked at validation too.

Example body::

    {"id": "...", "kind": "execution_failed", "job_id": "...", "tenant": "acme",
     "scheduled_at": "2026-11-23T10:00:00Z", "message": "job 'x' slot ... ended failed after 3 attempt(s): HTTP 500",
     "payload": {"status": "failed", "http_status": 500, "error": null, "attempt": 3}}
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import timedelta

import httpx
import msgspec
import trio

from protocol.egress import EgressPolicy
from protocol.errors import DatabaseUnavailable
from protocol.targets import parse_target_url

from . import store
from .clock import Clock, ms_to_datetime
from .dispatch import ConnectError, checked_addresses
from .metrics import Metrics
from .store import Alert
from .store_health import StoreHealth
from .trio_store import TrioStore

__all__ = ["AlertDelivery"]

log = logging.getLogger(__name__)


class AlertDelivery:
    def __init__(self, db: TrioStore, shards: Callable[[], Iterable[int]], *, metrics: Metrics, clock: Clock,
                 health: StoreHealth | None = None, interval_s: float = 1.0, timeout_s: float = 10.0,
                 max_attempts: int = 8, concurrency: int = 16,
                 egress: Callable[[], EgressPolicy | None] = lambda: None) -> None:  # fmt: skip
        self.db = db
        self.health = health or StoreHealth(metrics)
        self.shards = shards
        self.metrics = metrics
        self.clock = clock
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self._limiter = trio.CapacityLimiter(concurrency)
        self._egress = egress

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False) as client:
            task_status.started()
            while True:
                try:
                    await self.deliver_due(client)
                except DatabaseUnavailable as e:
                    await self.health.pause("alert delivery", e)  # the due alerts are read again after it
                    continue
                self.health.ok("alert delivery")
                await trio.sleep(self.interval_s)

    async def deliver_due(self, client: httpx.AsyncClient) -> None:
        shards = sorted(self.shards())
        if not shards:
            return
        due = await self.db.call(store.pending_deliveries, shards, ms_to_datetime(self.clock.now_ms()))
        async with trio.open_nursery() as n:
            for alert in due:
                n.start_soon(self._deliver, client, alert)

    async def _deliver(self, client: httpx.AsyncClient, alert: Alert) -> None:
        assert alert.webhook is not None
        async with self._limiter:
            body = msgspec.json.encode({
                "id": alert.id, "kind": alert.kind, "job_id": alert.job_id, "tenant": alert.tenant,
                "scheduled_at": alert.scheduled_at, "origin": alert.origin, "message": alert.message,
                "payload": alert.payload, "created_at": alert.created_at,
            })  # fmt: skip
            denied = await self._denied(alert.webhook)
            error: str | None
            try:
                if denied is not None:
                    error = denied
                else:
                    r = await client.post(
                        alert.webhook, content=body, headers={"content-type": "application/json"}
                    )
                    error = None if 200 <= r.status_code < 300 else f"HTTP {r.status_code}"
            except httpx.HTTPError as e:
                error = f"{type(e).__name__}: {e}"
        if error is None:
            self.metrics.alert_deliveries.inc(outcome="delivered")
            await self.health.retry(
                "alert delivery", self.db.call, store.mark_delivered, alert.shard, alert.id
            )
            return
        self.metrics.alert_deliveries.inc(outcome="failed")
        tries = alert.delivery_attempts + 1
        retry_at = None
        if tries < self.max_attempts and denied is None:
            retry_at = ms_to_datetime(self.clock.now_ms()) + timedelta(seconds=min(600, 2 * 2 ** (tries - 1)))
        log.warning(
            "alert %s to %s failed (%s); %s",
            alert.id,
            alert.webhook,
            error,
            f"retry at {retry_at}" if retry_at else "giving up",
        )
        await self.health.retry(
            "alert delivery",
            self.db.call,
            store.record_delivery_failure,
            alert.shard,
            alert.id,
            error,
            retry_at,
        )

    async def _denied(self, webhook: str) -> str | None:
        """Why the webhook must not be posted to, ever (``egress denied: ...``), or None."""
        policy = self._egress()
        if policy is None:
            return None
        try:
            await checked_addresses(parse_target_url(webhook).origin, policy)
        except ConnectError as e:
            return str(e) if e.denied else None  # not resolvable now: the POST will say so
        except ValueError as e:
            return f"webhook URL cannot be sent to: {e}"
        return None
