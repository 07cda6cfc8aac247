"""The control API application: Litestar on asyncio, stateless, several replicas behind a load balancer.

Lifespan (everything the app owns, closed in reverse on shutdown): an asyncpg pool (reads and API keys), the
cluster row (shard count, the egress policy's allowed networks), an etcd coordinator whose watch keeps the
shard-owner map current (``owners.OwnerMap``), and one keep-alive client for the nodes' internal API
(``routing.WriteRouter``). ``/readyz`` is 200 once the owner map is known and PostgreSQL answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, get
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig

from protocol import problems
from protocol.egress import EgressPolicy
from protocol.errors import InfrastructureError
from protocol.sealed import secrets_key
from scheduler_node.coordination import AsyncioCoordinator, EtcdTls, KeyLayout
from scheduler_node.store import read_cluster
from scheduler_node.store.pool import create_pool

from . import paths
from .admin import ClusterController, KeyController
from .alerts import AlertController
from .audit import AuditController
from .auth import KeyAuthentication
from .bulk import BulkController
from .errors import EXCEPTION_HANDLERS, problem_response
from .executions import ExecutionController
from .jobs import JobController
from .limits import JobQuota, RateLimiter
from .metrics import ApiMetrics, RequestMetrics
from .openapi import DocumentedJson, DocumentedSwagger, documented_for
from .owners import OwnerMap
from .routing import WriteRouter
from .schedules import ScheduleController
from .stats import StatsController

__all__ = ["SETTINGS_ENV", "ApiSettings", "app_from_environment", "create_app", "settings_json"]

SETTINGS_ENV = "SHARDWHEEL_API_SETTINGS_JSON"  # how ``shardwheel api --workers N`` hands its settings down


@dataclass(frozen=True)
class ApiSettings:
    dsn: str
    etcd: str
    cluster_secret: str
    etcd_prefix: str = "/shardwheel"
    etcd_tls: EtcdTls | None = None
    dev: bool = False  # loopback targets allowed, as on dev-mode nodes
    route_retry_s: float = 10.0  # how long a write waits for its shard's owner before 503
    rate_limit_per_s: float = 500.0  # per key, unless the key's record says otherwise (limits.py)
    burst: int = 1000
    max_jobs_per_tenant: int | None = None  # a soft quota (limits.py); None: no quota
    secrets_key: str | None = None  # seals target headers (protocol.sealed); required outside dev mode


@get(paths.HEALTHZ, include_in_schema=False)
async def healthz() -> str:
    return "ok\n"


@get(paths.READYZ, include_in_schema=False)
async def readyz(request: Request[Any, Any, Any]) -> Response[Any]:
    state = request.app.state
    if not state.owners.known:
        return problem_response(problems.problem(503, "unavailable", "the shard owners are not known yet"))
    try:
        await state.pool.fetchval("SELECT 1", timeout=2)
    except Exception as e:  # noqa: BLE001 - any failure means not ready
        return problem_response(problems.problem(503, "unavailable", f"PostgreSQL: {type(e).__name__}: {e}"))
    return Response("ready\n", media_type="text/plain")


@get("/metrics", include_in_schema=False, media_type="text/plain; version=0.0.4")
async def metrics(request: Request[Any, Any, Any]) -> str:
    text: str = request.app.state.metrics.render()
    return text


@get("/openapi.json", include_in_schema=False)
async def openapi_json(request: Request[Any, Any, Any]) -> dict[str, Any]:
    return documented_for(request.app)


def create_app(settings: ApiSettings) -> Litestar:
    secrets = secrets_key(settings.secrets_key, dev=settings.dev)  # ValueError naming the option, before serving

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        pool = await create_pool(settings.dsn, min_size=1, max_size=8)
        try:
            cluster = await read_cluster(pool)
            if cluster is None:
                raise InfrastructureError("the database has no cluster row: run `shardwheel migrate` first")
            owners = OwnerMap()
            layout = KeyLayout(cluster.name, settings.etcd_prefix)
            async with AsyncioCoordinator.open(settings.etcd, layout, tls=settings.etcd_tls) as coord:
                follower = asyncio.create_task(owners.follow(coord))
                router = WriteRouter(owners, shard_count=cluster.shard_count, cluster_secret=settings.cluster_secret,
                                     retry_for_s=settings.route_retry_s)  # fmt: skip
                api_metrics = ApiMetrics()
                api_metrics.route_retries.read = lambda: router.retries
                api_metrics.internal_batches.read = lambda: router.batches
                api_metrics.writes_routed.read = lambda: router.writes
                app.state.update(
                    pool=pool, owners=owners, shard_count=cluster.shard_count, key_cache={}, router=router,
                    coord=coord, cluster_name=cluster.name, metrics=api_metrics,
                    limiter=RateLimiter(settings.rate_limit_per_s, settings.burst),
                    quota=JobQuota(settings.max_jobs_per_tenant), secrets=secrets,
                    egress=EgressPolicy.of(cluster.allowed_target_nets, dev=settings.dev),
                )  # fmt: skip
                try:
                    yield
                finally:
                    await router.aclose()
                    follower.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await follower
        finally:
            await pool.close()

    return Litestar(
        route_handlers=[JobController, BulkController, ExecutionController, ScheduleController, AlertController,
                        AuditController, KeyController, ClusterController, StatsController, healthz, readyz, metrics, openapi_json],
        lifespan=[lifespan],
        middleware=[DefineMiddleware(RequestMetrics), DefineMiddleware(KeyAuthentication)],
        exception_handlers=EXCEPTION_HANDLERS,
        openapi_config=OpenAPIConfig(title="Shardwheel control API", version="1", path="/docs",
                                     render_plugins=[DocumentedSwagger(path="/"), DocumentedJson()]),
        request_max_body_size=256 * 1024,
        logging_config=None,  # the process configures logging (`shardwheel api --log-level`), not the framework
    )


def settings_json(settings: ApiSettings) -> str:
    return msgspec.json.encode(settings).decode()


def app_from_environment() -> Litestar:
    """The app of one worker process of ``shardwheel api --workers N`` (a uvicorn factory)."""
    return create_app(msgspec.json.decode(os.environ[SETTINGS_ENV], type=ApiSettings))
