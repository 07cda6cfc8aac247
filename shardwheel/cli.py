"""The `shardwheel` command: one entry point, a subcommand per tool.

Errors are one readable line on stderr (``shardwheel: error: ...``) with exit code 2 for bad usage and 1 for a
failure at run time; nothing already stored is touched by a command that fails validation.
Configuration comes from flags, else from the environment (``SHARDWHEEL_PG_DSN``, ``SHARDWHEEL_ETCD``,
``SHARDWHEEL_CLUSTER``, ``SHARDWHEEL_SHARDS``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NoReturn

from protocol.errors import ShardwheelError
from protocol.shards import DEFAULT_SHARD_COUNT, HASH_NAME

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"shardwheel: error: {name}={raw!r} is not an integer") from None


def _shard_count(value: str) -> int:
    n = int(value)
    if not 1 <= n <= 65_536:
        raise argparse.ArgumentTypeError(f"shard count must be 1-65536, got {n}")
    return n


async def _migrate(dsn: str, cluster: str, shards: int) -> tuple[list[str], object]:
    import asyncpg

    from scheduler_node.store import ensure_partitions
    from scheduler_node.store.migrate import ensure_cluster, migrate

    try:
        conn = await asyncpg.connect(dsn, timeout=10)
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError) as e:
        raise ShardwheelError(f"cannot connect to PostgreSQL at {dsn}: {e}") from None
    try:
        applied = await migrate(conn)
        info = await ensure_cluster(conn, name=cluster, shard_count=shards, hash_name=HASH_NAME)
        await ensure_partitions(conn, datetime.now(UTC).date() - timedelta(days=1), 8)
    finally:
        await conn.close()
    return applied, info


def cmd_migrate(args: argparse.Namespace) -> int:
    if not args.dsn:
        raise ShardwheelError("no database: pass --dsn or set SHARDWHEEL_PG_DSN")
    applied, info = asyncio.run(_migrate(args.dsn, args.cluster, args.shards))
    print(f"migrations applied: {', '.join(applied) if applied else 'none (up to date)'}")
    print(f"cluster: {info}")
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from shardwheel.embedded import EmbeddedEtcd, EmbeddedPostgres

    data = Path(args.data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with EmbeddedPostgres.from_env(data / "pg") as pg, EmbeddedEtcd.from_env(data / "etcd") as etcd:
        applied, info = asyncio.run(_migrate(pg.dsn, args.cluster, args.shards))
        print(f"PostgreSQL  {pg.dsn}")
        print(f"etcd        {etcd.endpoint}")
        print(f"cluster     {info}")
        print(f"migrations  {', '.join(applied) if applied else 'up to date'}")
        print(f"data        {data}")
        print(f"export SHARDWHEEL_PG_DSN={pg.dsn} SHARDWHEEL_ETCD={etcd.endpoint}", flush=True)
        if args.no_wait:
            return 0
        print("dev cluster running; Ctrl-C stops it", flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        print("stopping", flush=True)
    return 0


def _given(**flags: object) -> dict[str, object]:
    """The flags given on the command line; the others keep the defaults their config class defines."""
    return {k: v for k, v in flags.items() if v is not None}


def cmd_node(args: argparse.Namespace) -> int:
    import logging

    import trio

    from scheduler_node.engine import EngineTuning
    from scheduler_node.node import NodeConfig, run_node

    if not args.dsn:
        raise ShardwheelError("no database: pass --dsn or set SHARDWHEEL_PG_DSN")
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = NodeConfig(
        dsn=args.dsn, shards=args.shards_owned, host=args.host, port=args.port,
        cluster_secret=args.cluster_secret, signing_secret=args.signing_secret,
        engine=EngineTuning(**_given(horizon_ms=args.horizon_ms, lookahead_ms=args.lookahead_ms,
                                     release_timeout_s=args.release_timeout)),
        clock_offset_ms=args.clock_offset_ms, alert_webhook=args.alert_webhook, etcd=args.etcd,
        etcd_prefix=args.etcd_prefix, lease_ttl_s=args.lease_ttl, advertise_host=args.advertise_host,
        clock_limit_ms=args.clock_limit_ms, **_given(store_outage_limit_s=args.store_outage_limit),
        **({"node_id": args.node_id} if args.node_id else {}),
    )  # fmt: skip
    try:
        trio.run(run_node, config)
    except ValueError as e:  # a bad --shards range
        raise ShardwheelError(f"--shards: {e}") from None
    return 0


def cmd_cluster(args: argparse.Namespace) -> int:
    from shardwheel.cluster import apply_operation, cluster_status, render_status

    if not args.dsn:
        raise ShardwheelError("no database: pass --dsn or set SHARDWHEEL_PG_DSN")
    if not args.etcd:
        raise ShardwheelError("no etcd: pass --etcd or set SHARDWHEEL_ETCD")
    if args.op == "status":
        status = cluster_status(args.dsn, args.etcd, args.etcd_prefix)
        if args.json:
            import msgspec

            print(msgspec.json.encode(status).decode())
        else:
            render_status(status)
        return 0
    print(apply_operation(args.dsn, args.etcd, args.etcd_prefix, args.op, *args.args))
    return 0


_CLUSTER_ARGS = {"status": 0, "rebalance": 0, "pause": 0, "resume": 0, "drain": 1, "undrain": 1, "move": 2,
                 "unpin": 1}


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="shardwheel", description="A distributed, sharded job scheduler.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    common = _Parser(add_help=False)
    common.add_argument("--cluster", default=os.environ.get("SHARDWHEEL_CLUSTER", "default"),
                        help="cluster name (env SHARDWHEEL_CLUSTER)")
    common.add_argument("--shards", type=_shard_count, default=_env_int("SHARDWHEEL_SHARDS", DEFAULT_SHARD_COUNT),
                        help="shard count S, fixed when the cluster is created (env SHARDWHEEL_SHARDS)")

    m = sub.add_parser("migrate", parents=[common], help="apply database migrations and create the cluster row")
    m.add_argument("--dsn", default=os.environ.get("SHARDWHEEL_PG_DSN"), help="PostgreSQL DSN (env SHARDWHEEL_PG_DSN)")
    m.set_defaults(func=cmd_migrate)

    n = sub.add_parser("node", help="run a scheduler node")
    n.add_argument("--dsn", default=os.environ.get("SHARDWHEEL_PG_DSN"), help="PostgreSQL DSN (env SHARDWHEEL_PG_DSN)")
    n.add_argument("--shards", dest="shards_owned", default="0-255",
                   help="shards this node owns, e.g. 0-127,200 (static ownership)")
    n.add_argument("--node-id", default=os.environ.get("SHARDWHEEL_NODE_ID"), help="defaults to host-random")
    n.add_argument("--host", default="127.0.0.1", help="address of the node's HTTP port")
    n.add_argument("--port", type=int, default=_env_int("SHARDWHEEL_NODE_PORT", 8081), help="0 picks a free port")
    n.add_argument("--cluster-secret", default=os.environ.get("SHARDWHEEL_CLUSTER_SECRET", "dev-cluster-secret"),
                   help="shared secret of the internal API (env SHARDWHEEL_CLUSTER_SECRET)")
    n.add_argument("--signing-secret", default=os.environ.get("SHARDWHEEL_SIGNING_SECRET"),
                   help="sign requests with X-Shardwheel-Signature (env SHARDWHEEL_SIGNING_SECRET)")
    n.add_argument("--alert-webhook", default=os.environ.get("SHARDWHEEL_ALERT_WEBHOOK"),
                   help="the cluster's alert webhook, for jobs without their own")
    n.add_argument("--horizon-ms", type=int, help="how far ahead jobs are held in the wheel")
    n.add_argument("--lookahead-ms", type=int, help="how long before its slot a firing is claimed")
    n.add_argument("--release-timeout", type=float, help="seconds in-flight requests get to finish at shutdown")
    n.add_argument("--etcd", default=os.environ.get("SHARDWHEEL_ETCD"),
                   help="etcd endpoint(s), comma-separated: cluster mode, --shards is then ignored (env SHARDWHEEL_ETCD)")
    n.add_argument("--etcd-prefix", default=os.environ.get("SHARDWHEEL_ETCD_PREFIX", "/shardwheel"),
                   help="key prefix in etcd (env SHARDWHEEL_ETCD_PREFIX)")
    n.add_argument("--lease-ttl", type=int, default=5, help="seconds; a dead node's shards move after about this")
    n.add_argument("--advertise-host", default=os.environ.get("SHARDWHEEL_ADVERTISE_HOST"),
                   help="host other processes use to reach this node (default: --host)")
    n.add_argument("--clock-limit-ms", type=float, default=50.0,
                   help="largest clock offset from PostgreSQL at which the node still owns shards")
    n.add_argument("--store-outage-limit", type=float,
                   help="seconds of PostgreSQL outage after which the node exits 1 for its supervisor (300)")
    n.add_argument("--clock-offset-ms", type=int, default=0, help=argparse.SUPPRESS)  # tests: a skewed clock
    n.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    n.set_defaults(func=cmd_node)

    c = sub.add_parser("cluster", help="cluster status and admin operations (drain, move, pause, rebalance)")
    c.add_argument("op", choices=sorted(_CLUSTER_ARGS), help="status | rebalance | pause | resume | drain NODE | "
                   "undrain NODE | move SHARD NODE | unpin SHARD")
    c.add_argument("args", nargs="*", help="the operation's arguments")
    c.add_argument("--dsn", default=os.environ.get("SHARDWHEEL_PG_DSN"), help="PostgreSQL DSN (env SHARDWHEEL_PG_DSN)")
    c.add_argument("--etcd", default=os.environ.get("SHARDWHEEL_ETCD"), help="etcd endpoint(s) (env SHARDWHEEL_ETCD)")
    c.add_argument("--etcd-prefix", default=os.environ.get("SHARDWHEEL_ETCD_PREFIX", "/shardwheel"))
    c.add_argument("--json", action="store_true", help="machine-readable output")
    c.set_defaults(func=cmd_cluster)

    d = sub.add_parser("dev", parents=[common], help="run an embedded local cluster (PostgreSQL + etcd)")
    d.add_argument("--data-dir", default=".shardwheel/dev", help="where the embedded servers keep their data")
    d.add_argument("--no-wait", action="store_true", help="start, print the URLs, stop and exit (a smoke check)")
    d.set_defaults(func=cmd_dev, cluster=os.environ.get("SHARDWHEEL_CLUSTER", "dev"))
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "cluster" and len(args.args) != _CLUSTER_ARGS[args.op]:
        parser.exit(2, f"shardwheel: error: cluster {args.op} takes {_CLUSTER_ARGS[args.op]} argument(s), "
                       f"got {len(args.args)}\n")
    try:
        return int(args.func(args))
    except ShardwheelError as e:
        print(f"shardwheel: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
