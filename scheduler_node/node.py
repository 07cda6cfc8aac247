"""One scheduler node process: wires the store, ownership, dispatcher, engine and HTTP port together.

Rules:
- Everything runs in one trio nursery owned by ``run_node``; the asyncio store lives inside it through
  ``TrioStore`` (trio-asyncio), so the pool closes before the loop and nothing outlives the node.
- At start the node reads the cluster row and refuses to run when its shard count differs from the one the
  cluster was created with (moving to another S is a re-shard, not a restart).
- SIGINT or SIGTERM is the graceful release of DESIGN.md §4 for every owned shard: stop claiming, delete the
  claimed rows not yet sent, let requests in flight finish (bounded), flush the writers, then exit 0.
  A second signal exits at once.
- No open door: outside dev mode the node refuses to start without a cluster secret of at least 32 bytes (the
  bearer token of its internal API). Dev mode (``--dev``, ``SHARDWHEEL_DEV=1``: the local cluster, tests,
  benches) says so in the log and falls back to a built-in secret when none is given.

Example::

    shardwheel node --dsn postgresql://... --shards 0-255 --port 8081
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
import signal
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import msgspec
import trio

from protocol.egress import EgressPolicy
from protocol.errors import InfrastructureError
from protocol.internal import DEV_CLUSTER_SECRET, cluster_secret
from protocol.sealed import secrets_key

from .clock import Clock
from .clock_check import ClockCheck
from .coordination import EtcdTls, KeyLayout
from .coordination.trio_adapter import TrioCoordinator
from .dispatch import Dispatcher, DispatcherConfig
from .engine import Engine, EngineConfig, EngineTuning
from .etcd_ownership import EtcdOwnership
from .gc_guard import node_thresholds
from .http_api import NodeHttpApp
from .http_server import serve
from .metrics import Metrics
from .ownership import StaticOwnership, parse_shard_ranges
from .store import bump_epoch, drop_partitions_before, ensure_partitions, read_cluster, read_epochs
from .store_health import StoreHealth
from .trio_store import TrioStore

__all__ = ["Node", "NodeConfig", "run_node"]

log = logging.getLogger(__name__)



@dataclass
class NodeConfig:
    dsn: str
    shards: str  # "0-255" — static ownership; the etcd cluster mode replaces this
    node_id: str = field(default_factory=lambda: f"{socket.gethostname()}-{secrets.token_hex(3)}")
    host: str = "127.0.0.1"
    port: int = 8081
    cluster_secret: str = ""  # required outside dev mode (protocol.internal.cluster_secret)
    secrets_key: str | None = None  # opens target headers sealed at rest; required outside dev mode (sealed.py)
    signing_secret: str | None = None
    previous_signing_secret: str | None = None  # also signed with while targets move to the new one
    engine: EngineTuning = field(default_factory=EngineTuning)
    dispatcher: DispatcherConfig = field(default_factory=DispatcherConfig)
    clock_offset_ms: int = 0
    alert_webhook: str | None = None
    pool_size: int = 8
    retention_days: int = 30  # executions of days older than this are dropped, a day partition at a time
    etcd: str | None = None  # etcd endpoint(s): cluster mode (leases, rebalancing); None: static --shards
    etcd_prefix: str = "/shardwheel"
    etcd_tls: EtcdTls | None = None  # https to etcd: its CA, and a client certificate for --client-cert-auth
    lease_ttl_s: int = 5
    advertise_host: str | None = None  # how other processes reach this node's HTTP port (default: host)
    clock_limit_ms: float = 50.0
    # A PostgreSQL outage longer than this ends the node (exit 1, one line), for its supervisor to restart it;
    # shorter ones are ridden out (store_health.py).
    store_outage_limit_s: float = 300.0
    static_check_interval_s: float = 5.0  # static shards: how often their stored epochs are compared
    egress_refresh_s: float = 5.0  # how often the cluster's allowed target networks are read again
    etcd_join_timeout_s: float = 60.0  # at start: how long an etcd that does not answer is retried
    dev: bool = False  # a built-in cluster secret if none is given; loopback targets allowed

    def checked(self) -> NodeConfig:
        """This config, or ``ValueError`` naming the option that cannot work (checked before anything
        starts)."""
        secret = cluster_secret(self.cluster_secret, dev=self.dev)
        secrets_key(self.secrets_key, dev=self.dev)
        for name, value, low, high in (("--port", self.port, 0, 65_535), ("--lease-ttl", self.lease_ttl_s, 1, 3_600),
                                       ("--retention-days", self.retention_days, 1, 36_500)):
            if not low <= value <= high:
                raise ValueError(f"{name} {value} is out of range")
        if self.engine.horizon_ms <= self.engine.lookahead_ms or self.engine.lookahead_ms < 0:
            raise ValueError("--horizon-ms must be larger than --lookahead-ms, which must not be negative")
        if self.engine.release_timeout_s < 0 or self.store_outage_limit_s <= 0 or self.clock_limit_ms <= 0:
            raise ValueError("--release-timeout, --store-outage-limit and --clock-limit-ms must be positive")
        if self.previous_signing_secret and not self.signing_secret:
            raise ValueError("--previous-signing-secret needs --signing-secret (the new one)")
        return self if secret == self.cluster_secret else dataclasses.replace(self, cluster_secret=secret)


async def _partition_maintenance(db: TrioStore, health: StoreHealth, retention_days: int, *,
                                 task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:  # fmt: skip
    """Day partitions a week ahead, and retention, at start and hourly (every node may: it is serialised).
    A partition a long reader kept from being dropped is tried again a minute later."""
    while True:
        today = datetime.now(UTC).date()
        created = await health.retry("partitions", db.call, ensure_partitions, today - timedelta(days=1), 8)
        cutoff = today - timedelta(days=retention_days)
        retention = await health.retry("partitions", db.call, drop_partitions_before, cutoff)
        if created or retention.dropped:
            log.info("partitions: created %s, dropped %s", created, retention.dropped)
        if retention.busy:
            log.warning("partitions: %s not dropped (a long query held executions; lock_timeout): again in 60 s",
                        retention.busy)  # fmt: skip
        task_status.started()
        task_status = trio.TASK_STATUS_IGNORED
        await trio.sleep(60 if retention.busy else 3600)


async def _publish_status(engine: Engine, ownership: EtcdOwnership, clock_check: ClockCheck,
                          interval_s: float = 2.0) -> None:  # fmt: skip
    """This node's figures in etcd (bound to its lease), for `shardwheel cluster status` and the API."""
    last_firings, last_t = engine.metrics.firings.get(), trio.current_time()
    while True:
        await trio.sleep(interval_s)
        firings, now = engine.metrics.firings.get(), trio.current_time()
        status = {
            **engine.summary(),
            "firings_per_s": round((firings - last_firings) / (now - last_t), 1),
            "clock_offset_ms": None if clock_check.offset_ms is None else round(clock_check.offset_ms, 1),
            "refusing": ownership.refusing,
            "valid_for_s": round(ownership.valid_until() - now, 2),
        }
        last_firings, last_t = firings, now
        if clock_check.offset_ms is not None:
            engine.metrics.clock_offset.set(round(clock_check.offset_ms, 1))
        engine.metrics.refusing.set(1 if ownership.refusing else 0)
        try:
            await ownership.publish_status(msgspec.json.encode(status))
        except InfrastructureError as e:
            log.warning("publishing status failed: %s", e)


async def _follow_egress(db: TrioStore, health: StoreHealth, engine: Engine, dispatcher: Dispatcher,
                         policy: EgressPolicy, dev: bool, interval_s: float = 5.0) -> None:  # fmt: skip
    """The cluster's allowed target networks, read again every few seconds: a change applies to new writes and
    new connections on every node (a connection already open stays until it is closed)."""
    while True:
        await trio.sleep(interval_s)
        cluster = await health.retry("egress", db.call, read_cluster)
        if cluster is None:
            continue
        latest = EgressPolicy.of(cluster.allowed_target_nets, dev=dev)
        if latest != policy:
            log.info("egress: allowed target networks now %s", [str(n) for n in latest.allowed])
            policy = engine.egress = dispatcher.egress = latest


class Node:
    """A running node; ``engine`` is set once ``run`` has started."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config.checked()
        self.engine: Engine | None = None
        self.addresses: list[str] = []
        self._stop = trio.Event()
        self.failure: InfrastructureError | None = None  # why the node ended on its own

    def stop(self) -> None:
        """Ask for the graceful shutdown (what SIGTERM does)."""
        self._stop.set()

    async def run(self, *, handle_signals: bool = True,
                  task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:  # fmt: skip
        config = self.config
        if config.dev:
            log.warning("dev mode: %s; not for production",
                        "the built-in cluster secret" if config.cluster_secret == DEV_CLUSTER_SECRET
                        else "the given cluster secret")  # fmt: skip
        async with contextlib.AsyncExitStack() as stack:
            db = await stack.enter_async_context(TrioStore.open(config.dsn, max_size=config.pool_size))
            cluster = await db.call(read_cluster)
            if cluster is None:
                raise InfrastructureError("the database has no cluster row: run `shardwheel migrate` first")
            clock = Clock(config.clock_offset_ms)
            metrics = Metrics()
            # One view of PostgreSQL for every loop: /readyz and status read it.
            health = StoreHealth(metrics, stalled_for_s=db.stalled_for_s)
            clock_check = ClockCheck(db, clock, limit_ms=config.clock_limit_ms, health=health)
            await clock_check.measure()

            async def bump(shard: int) -> int:
                return await db.call(bump_epoch, shard, config.node_id)

            ownership: StaticOwnership | EtcdOwnership
            if config.etcd:
                layout = KeyLayout(cluster.name, config.etcd_prefix)
                opened = TrioCoordinator.open(config.etcd, layout, tls=config.etcd_tls)
                coord = await stack.enter_async_context(opened)
                ownership = EtcdOwnership(
                    coord, node_id=config.node_id, address="", shard_count=cluster.shard_count, bump_epoch=bump,
                    ttl_s=config.lease_ttl_s, release_timeout_s=config.engine.release_timeout_s,
                    clock_ok=clock_check.problem, join_timeout_s=config.etcd_join_timeout_s,
                )  # fmt: skip
            else:
                if clock_check.problem():
                    raise InfrastructureError(f"refusing to own shards: {clock_check.problem()}")
                async def epochs_of(shards: list[int]) -> dict[int, int]:
                    return {s: e.epoch for s, e in (await db.call(read_epochs, shards)).items()}

                try:
                    shards = parse_shard_ranges(config.shards, cluster.shard_count)
                except ValueError as e:
                    raise InfrastructureError(f"--shards: {e}") from None
                ownership = StaticOwnership(shards, bump, epochs_of, config.static_check_interval_s)
            egress = EgressPolicy.of(cluster.allowed_target_nets, dev=config.dev)
            dispatcher = await stack.enter_async_context(Dispatcher(config.dispatcher))
            dispatcher.egress = egress
            engine = self.engine = Engine(
                EngineConfig(
                    node_id=config.node_id, shard_count=cluster.shard_count, tuning=config.engine,
                    signing_secrets=tuple(
                        s.encode() for s in (config.signing_secret, config.previous_signing_secret) if s
                    ),
                    alert_webhook=config.alert_webhook, egress=egress,
                    secrets=secrets_key(config.secrets_key, dev=config.dev),
                ),
                db=db, ownership=ownership, dispatcher=dispatcher, metrics=metrics, clock=clock, health=health,
            )  # fmt: skip
            async with trio.open_nursery() as nursery:
                if handle_signals:
                    nursery.start_soon(self._watch_signals, nursery)
                nursery.start_soon(self._watch_store, health, nursery)
                nursery.start_soon(_follow_egress, db, health, engine, dispatcher, egress, config.dev,
                                   config.egress_refresh_s)  # fmt: skip
                await nursery.start(_partition_maintenance, db, health, config.retention_days)
                await nursery.start(clock_check.run)
                try:
                    app = NodeHttpApp(engine, config.cluster_secret)
                    self.addresses = await nursery.start(serve, app, config.host, config.port)
                except* OSError as group:
                    first = group.exceptions[0]
                    where = f"{config.host}:{config.port}"
                    reason = first.strerror if isinstance(first, OSError) and first.strerror else str(first)
                    raise InfrastructureError(f"cannot listen on {where}: {reason}") from None
                port = self.addresses[0].rsplit(":", 1)[1]
                if isinstance(ownership, EtcdOwnership):
                    ownership.address = f"http://{config.advertise_host or config.host}:{port}"
                    nursery.start_soon(_publish_status, engine, ownership, clock_check)
                await nursery.start(engine.run)
                log.info("node %s serving on %s", config.node_id, self.addresses)
                task_status.started(self.addresses)
                await self._stop.wait()
                log.info("node %s: releasing shards", config.node_id)
                await engine.drain()
                if isinstance(ownership, EtcdOwnership):
                    await ownership.leave()
                nursery.cancel_scope.cancel()
            # After an outage past the limit, what can be released without the database: the lease, so that
            # other nodes take over.
            if self.failure is not None and isinstance(ownership, EtcdOwnership):
                with trio.move_on_after(2, shield=True):
                    await ownership.leave()
        if self.failure is not None:
            raise self.failure  # out here, not through the nurseries above: one error, not a group of them

    async def _watch_store(self, health: StoreHealth, nursery: trio.Nursery) -> None:
        """End the node once PostgreSQL has been unavailable for longer than ``store_outage_limit_s``."""
        limit = self.config.store_outage_limit_s
        while health.unavailable_for_s() <= limit:
            await trio.sleep(min(1.0, limit / 4))
        self.failure = InfrastructureError(
            f"PostgreSQL unavailable for more than {limit:g} s, exiting: {health.problem()}"
        )
        log.error("%s", self.failure)
        nursery.cancel_scope.cancel()

    async def _watch_signals(self, nursery: trio.Nursery) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                if self._stop.is_set():
                    nursery.cancel_scope.cancel()  # a second signal: stop now
                    return
                self.stop()


async def run_node(config: NodeConfig) -> None:
    with node_thresholds():
        await Node(config).run()
