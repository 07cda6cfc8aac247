"""The `shardwheel` command: one entry point, a subcommand per tool.

Errors are one readable line on stderr (``shardwheel: error: ...``) with exit code 2 for bad usage and 1 for a
failure at run time; nothing already stored is touched by a command that fails validation. Options are
checked before anything starts (ranges, DSN form, the node's secret); an error at run time comes out of
trio's exception groups as its first real cause, in one line. ``--debug`` adds the traceback.
Configuration comes from flags, else from the environment (``SHARDWHEEL_PG_DSN``, ``SHARDWHEEL_ETCD``,
``SHARDWHEEL_CLUSTER``, ``SHARDWHEEL_SHARDS``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

from protocol.errors import ShardwheelError
from protocol.shards import DEFAULT_SHARD_COUNT, HASH_NAME
from shardwheel import logs
from shardwheel.client_commands import example as _example

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"shardwheel: error: {message}\n")  # the same prefix after a subcommand


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"shardwheel: error: {name}={raw!r} is not an integer") from None


def _ranged(kind: type[int] | type[float], low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a number of ``kind`` within [low, high], else a one-line usage error."""

    def parse(value: str) -> float:
        try:
            n = kind(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{value}' is not a number") from None
        if not low <= n <= high:
            raise argparse.ArgumentTypeError(f"{n} is out of range {low:g}-{high:g}")
        return n

    return parse


_shard_count = _ranged(int, 1, 65_536)


def _dsn(value: str) -> str:
    if not value.startswith(("postgresql://", "postgres://")):
        raise argparse.ArgumentTypeError("must be a postgresql://user@host:port/database URL")
    return value


def _shard_ranges(value: str) -> str:
    from scheduler_node.ownership import parse_shard_ranges

    try:
        parse_shard_ranges(value, 65_536)  # the cluster's own count is checked again at start
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


async def _migrate(
    dsn: str, cluster: str, shards: int, allow_target_nets: list[str] | None = None
) -> tuple[list[str], object]:
    import msgspec

    from protocol.egress import EgressPolicy
    from scheduler_node.store import ensure_partitions, set_allowed_target_nets
    from scheduler_node.store.migrate import ensure_cluster, migrate
    from scheduler_node.store.pool import connect

    conn = await connect(dsn)
    try:
        applied = await migrate(conn)
        info = await ensure_cluster(conn, name=cluster, shard_count=shards, hash_name=HASH_NAME)
        if allow_target_nets is not None:
            try:
                EgressPolicy.of(allow_target_nets)
            except ValueError as e:
                raise ShardwheelError(f"--allow-target-net: {e}") from None
            nets = await set_allowed_target_nets(conn, allow_target_nets)
            info = msgspec.structs.replace(info, allowed_target_nets=nets)
        await ensure_partitions(conn, datetime.now(UTC).date() - timedelta(days=1), 8)
    finally:
        await conn.close()
    return applied, info


def cmd_migrate(args: argparse.Namespace) -> int:
    if not args.dsn:
        raise ShardwheelError("no database: pass --dsn or set SHARDWHEEL_PG_DSN")
    applied, info = asyncio.run(_migrate(args.dsn, args.cluster, args.shards, args.allow_target_net))
    print(f"migrations applied: {', '.join(applied) if applied else 'none (up to date)'}")
    print(f"cluster: {info}")
    nets = getattr(info, "allowed_target_nets", ())
    print(f"allowed target networks: {', '.join(nets) if nets else 'none (public addresses only)'}")
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from shardwheel.dev import DevOptions, run_dev

    return run_dev(DevOptions(data_dir=Path(args.data_dir), nodes=args.nodes, shards=args.shards,
                              api_port=args.api_port, target_port=args.target_port, cluster=args.cluster,
                              fresh=args.fresh, smoke=args.no_wait, keep_going=args.keep_going,
                              log_level=args.log_level,
                              log_format=args.log_format))  # fmt: skip


def cmd_completion(args: argparse.Namespace) -> int:
    from shardwheel.completion import script

    sys.stdout.write(script(build_parser(), args.shell))
    return 0


def cmd_demo_target(args: argparse.Namespace) -> int:
    from shardwheel.demo_target import serve

    serve(args.port, args.host, args.keep)
    return 0


def _etcd_tls(args: argparse.Namespace) -> Any:
    """``--etcd-ca`` (and a client certificate) as the coordinator's TLS settings, or None: plain gRPC."""
    from scheduler_node.coordination import EtcdTls

    if args.etcd_ca is None:
        if args.etcd_cert or args.etcd_key:
            raise ShardwheelError("--etcd-cert and --etcd-key need --etcd-ca")
        return None
    return EtcdTls(args.etcd_ca, args.etcd_cert, args.etcd_key)


def _given(**flags: Any) -> dict[str, Any]:
    """The flags given on the command line; the others keep the defaults their config class defines."""
    return {k: v for k, v in flags.items() if v is not None}


def cmd_node(args: argparse.Namespace) -> int:

    import trio

    from scheduler_node.engine import EngineTuning
    from scheduler_node.node import NodeConfig, run_node

    if not args.dsn:
        raise ShardwheelError("no database: pass --dsn or set SHARDWHEEL_PG_DSN")
    try:
        config = NodeConfig(
            dsn=args.dsn, shards=args.shards_owned, host=args.host, port=args.port,
            cluster_secret=args.cluster_secret or "", signing_secret=args.signing_secret,
            secrets_key=args.secrets_key,
            previous_signing_secret=args.previous_signing_secret,
            engine=EngineTuning(**_given(horizon_ms=args.horizon_ms, lookahead_ms=args.lookahead_ms,
                                         release_timeout_s=args.release_timeout)),
            clock_offset_ms=args.clock_offset_ms, alert_webhook=args.alert_webhook, etcd=args.etcd,
            etcd_prefix=args.etcd_prefix, etcd_tls=_etcd_tls(args), lease_ttl_s=args.lease_ttl,
            advertise_host=args.advertise_host,
            clock_limit_ms=args.clock_limit_ms, etcd_join_timeout_s=args.etcd_join_timeout, dev=args.dev,
            retention_days=args.retention_days,
            **_given(store_outage_limit_s=args.store_outage_limit),
            **({"node_id": args.node_id} if args.node_id else {}),
        ).checked()
    except ValueError as e:
        raise ShardwheelError(str(e)) from None
    logs.configure(args.log_level, args.log_format, node=config.node_id)
    trio.run(run_node, config)
    return 0


def cmd_api(args: argparse.Namespace) -> int:

    import uvicorn

    from control_api.app import SETTINGS_ENV, ApiSettings, create_app, settings_json
    from protocol.internal import cluster_secret

    if not args.dsn:
        raise ShardwheelError("no database: pass --dsn or set SHARDWHEEL_PG_DSN")
    if not args.etcd:
        raise ShardwheelError("no etcd: pass --etcd or set SHARDWHEEL_ETCD (the API routes writes by its owner map)")
    try:
        secret = cluster_secret(args.cluster_secret, dev=args.dev)
    except ValueError as e:
        raise ShardwheelError(str(e)) from None
    logs.configure(args.log_level, args.log_format)
    settings = ApiSettings(dsn=args.dsn, etcd=args.etcd, cluster_secret=secret, etcd_prefix=args.etcd_prefix,
                           etcd_tls=_etcd_tls(args), dev=args.dev, rate_limit_per_s=args.rate_limit,
                           burst=args.burst, max_jobs_per_tenant=args.max_jobs_per_tenant,
                           secrets_key=args.secrets_key)  # fmt: skip
    try:
        app = create_app(settings)
    except ValueError as e:
        raise ShardwheelError(str(e)) from None
    if args.workers == 1:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                    lifespan="on", log_config=None)  # fmt: skip
        return 0
    # Worker processes on one port (the API is stateless): each builds its app from the settings handed down
    # in its environment (a child's, never a command line).
    os.environ[SETTINGS_ENV] = settings_json(settings)
    os.environ["SHARDWHEEL_LOG_LEVEL"], os.environ["SHARDWHEEL_LOG_FORMAT"] = args.log_level, args.log_format
    uvicorn.run("shardwheel.cli:api_worker_app", factory=True, workers=args.workers, host=args.host,
                port=args.port, log_level=args.log_level, access_log=False, lifespan="on",
                log_config=None)  # fmt: skip
    return 0


def api_worker_app() -> Any:
    """The app of one ``shardwheel api --workers N`` process (a uvicorn factory): its logging as the parent's."""
    from control_api.app import app_from_environment

    logs.configure()
    return app_from_environment()


def cmd_keys(args: argparse.Namespace) -> int:
    """Keys through the API (admin); ``keys create --dsn`` is the offline bootstrap of a tenant's first key."""
    if args.admin:
        args.role = "admin"
    if args.dsn is None:
        from shardwheel.client_commands import keys_via_api

        return keys_via_api(args)
    if args.op != "create":
        raise ShardwheelError(f"keys {args.op} goes through the API: drop --dsn")
    tenant = args.tenant or "default"
    from scheduler_node.store import Role, create_api_key
    from scheduler_node.store.pool import connect

    async def create() -> str:
        conn = await connect(args.dsn)
        try:
            secret, key = await create_api_key(conn, tenant=tenant, role=Role(args.role), name=args.name,
                                               actor="cli", rate_limit_per_s=args.rate_limit,
                                               burst=args.burst)  # fmt: skip
        finally:
            await conn.close()
        return f"{secret}\n# key {key.prefix}... for tenant {key.tenant}, role {key.role.value}: shown once, store it"

    print(asyncio.run(create()))
    return 0


def _tenant(value: str) -> str:
    import re

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", value):
        raise argparse.ArgumentTypeError("a tenant is 1-64 letters, digits, '_', '.' or '-', starting alphanumeric")
    return value


def cmd_cluster(args: argparse.Namespace) -> int:
    """Through the API's admin endpoints; with ``--etcd``, straight to etcd and PostgreSQL (the API down)."""
    if not args.etcd:
        from shardwheel.client_commands import cluster_via_api

        return cluster_via_api(args)
    from shardwheel.cluster import apply_operation, cluster_status
    from shardwheel.tables import print_cluster

    if not args.dsn:
        raise ShardwheelError("cluster --etcd needs the database too: pass --dsn or set SHARDWHEEL_PG_DSN")
    tls = _etcd_tls(args)
    if args.op == "status":
        import msgspec

        status = cluster_status(args.dsn, args.etcd, args.etcd_prefix, tls)
        if args.json:
            print(msgspec.json.encode(status).decode())
        else:
            print_cluster(msgspec.to_builtins(status))
        return 0
    print(apply_operation(args.dsn, args.etcd, args.etcd_prefix, args.op, *args.args, tls=tls))
    return 0


_CLUSTER_ARGS = {"status": 0, "rebalance": 0, "pause": 0, "resume": 0, "drain": 1, "undrain": 1, "move": 2,
                 "unpin": 1}


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="shardwheel", description="A distributed, sharded job scheduler.")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    debug = _Parser(add_help=False)  # --debug after the subcommand too (SUPPRESS keeps the top level's value)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    common = _Parser(add_help=False, parents=[debug])
    pg = _Parser(add_help=False)
    pg.add_argument("--dsn", type=_dsn, default=os.environ.get("SHARDWHEEL_PG_DSN"),
                    help="PostgreSQL DSN (env SHARDWHEEL_PG_DSN)")
    dev_mode = _Parser(add_help=False)
    dev_mode.add_argument("--dev", action="store_true",
                          default=os.environ.get("SHARDWHEEL_DEV", "") in ("1", "true"),
                          help="dev mode: the built-in cluster secret if none is given, loopback targets "
                               "allowed (env SHARDWHEEL_DEV=1; never in production)")
    sealing = _Parser(add_help=False)
    sealing.add_argument("--secrets-key", default=os.environ.get("SHARDWHEEL_SECRETS_KEY"), metavar="ID=KEY,...",
                         help="seals and opens target headers at rest: <id>=<base64 of 32 bytes>, the first "
                              "seals, every one opens (rotation); the same on API and nodes; required outside "
                              "dev mode (env SHARDWHEEL_SECRETS_KEY)")
    def etcd_parent(env_default: bool) -> _Parser:  # --etcd, its prefix and its TLS
        parent = _Parser(add_help=False)
        parent.add_argument("--etcd", default=os.environ.get("SHARDWHEEL_ETCD") if env_default else None,
                            help="etcd endpoint(s), comma-separated (env SHARDWHEEL_ETCD); a node with it "
                                 "runs in cluster mode and ignores --shards" if env_default else
                                 "go straight to etcd (and --dsn) instead of the API: for when the API is down")
        parent.add_argument("--etcd-prefix", default=os.environ.get("SHARDWHEEL_ETCD_PREFIX", "/shardwheel"),
                            help="key prefix in etcd (env SHARDWHEEL_ETCD_PREFIX)")
        parent.add_argument("--etcd-ca", default=os.environ.get("SHARDWHEEL_ETCD_CA"),
                            help="TLS to etcd (https endpoints): the CA file (env SHARDWHEEL_ETCD_CA)")
        parent.add_argument("--etcd-cert", default=os.environ.get("SHARDWHEEL_ETCD_CERT"),
                            help="client certificate for etcd's --client-cert-auth (env SHARDWHEEL_ETCD_CERT)")
        parent.add_argument("--etcd-key", default=os.environ.get("SHARDWHEEL_ETCD_KEY"),
                            help="its key (env SHARDWHEEL_ETCD_KEY)")
        return parent

    etcd_tls = etcd_parent(env_default=True)
    common.add_argument("--cluster", default=os.environ.get("SHARDWHEEL_CLUSTER", "default"),
                        help="cluster name (env SHARDWHEEL_CLUSTER)")
    common.add_argument("--shards", type=_shard_count, default=_env_int("SHARDWHEEL_SHARDS", DEFAULT_SHARD_COUNT),
                        help="shard count S, fixed when the cluster is created (env SHARDWHEEL_SHARDS)")

    m = sub.add_parser("migrate", parents=[common, pg],
                       help="apply database migrations and create the cluster row")
    m.add_argument("--allow-target-net", nargs="*", action="extend", metavar="CIDR",
                   help="networks targets may reach although private or loopback (replaces the stored list; "
                        "given alone: none)")
    _example(m, "shardwheel migrate --dsn postgresql://postgres@127.0.0.1:5432/postgres --cluster prod --shards 256")
    m.set_defaults(func=cmd_migrate)

    n = sub.add_parser("node", parents=[debug, pg, etcd_tls, dev_mode, sealing], help="run a scheduler node")
    n.add_argument("--shards", dest="shards_owned", type=_shard_ranges, default="0-255",
                   help="shards this node owns, e.g. 0-127,200 (static ownership)")
    n.add_argument("--node-id", default=os.environ.get("SHARDWHEEL_NODE_ID"),
                   help="the node's name in the cluster (env SHARDWHEEL_NODE_ID; default: host and random)")
    n.add_argument("--host", default="127.0.0.1", help="address of the node's HTTP port")
    n.add_argument("--port", type=_ranged(int, 0, 65_535), default=_env_int("SHARDWHEEL_NODE_PORT", 8081),
                   help="the node's HTTP port; 0 picks a free one (env SHARDWHEEL_NODE_PORT; default 8081)")
    n.add_argument("--cluster-secret", default=os.environ.get("SHARDWHEEL_CLUSTER_SECRET"),
                   help="shared secret of the internal API, at least 32 bytes (env SHARDWHEEL_CLUSTER_SECRET)")
    n.add_argument("--signing-secret", default=os.environ.get("SHARDWHEEL_SIGNING_SECRET"),
                   help="sign requests with X-Shardwheel-Signature (env SHARDWHEEL_SIGNING_SECRET)")
    n.add_argument("--previous-signing-secret", default=os.environ.get("SHARDWHEEL_PREVIOUS_SIGNING_SECRET"),
                   help="while rotating: also sign with this one (env SHARDWHEEL_PREVIOUS_SIGNING_SECRET)")
    n.add_argument("--alert-webhook", default=os.environ.get("SHARDWHEEL_ALERT_WEBHOOK"),
                   help="the cluster's alert webhook, for jobs without their own (env SHARDWHEEL_ALERT_WEBHOOK)")
    n.add_argument("--horizon-ms", type=_ranged(int, 1, 86_400_000),
                   help="how far ahead jobs are held in the wheel")
    n.add_argument("--lookahead-ms", type=_ranged(int, 0, 60_000),
                   help="how long before its slot a firing is claimed")
    n.add_argument("--release-timeout", type=_ranged(float, 0, 3600),
                   help="seconds in-flight requests get to finish at shutdown")
    n.add_argument("--lease-ttl", type=_ranged(int, 2, 3600), default=5,
                   help="seconds; a dead node's shards move after about this")
    n.add_argument("--etcd-join-timeout", type=_ranged(float, 0, 86_400), default=60.0,
                   help="seconds an etcd that does not answer is retried at start before the node exits")
    n.add_argument("--advertise-host", default=os.environ.get("SHARDWHEEL_ADVERTISE_HOST"),
                   help="host other processes use to reach this node (env SHARDWHEEL_ADVERTISE_HOST; "
                        "default: --host)")
    n.add_argument("--retention-days", type=_ranged(int, 1, 36_500), default=_env_int("SHARDWHEEL_RETENTION_DAYS", 30),
                   help="days of execution history kept; older day partitions are dropped hourly "
                        "(env SHARDWHEEL_RETENTION_DAYS; default 30)")
    n.add_argument("--clock-limit-ms", type=_ranged(float, 0.001, 60_000), default=50.0,
                   help="largest clock offset from PostgreSQL at which the node still owns shards")
    n.add_argument("--store-outage-limit", type=_ranged(float, 0.001, 86_400),
                   help="seconds of PostgreSQL outage after which the node exits 1 for its supervisor (300)")
    n.add_argument("--clock-offset-ms", type=int, default=0, help=argparse.SUPPRESS)  # tests: a skewed clock
    n.add_argument("--log-level", default=logs.default_level(), choices=logs.LEVELS,
                   help="(env SHARDWHEEL_LOG_LEVEL; default info)")
    n.add_argument("--log-format", default=logs.default_format(), choices=logs.FORMATS,
                   help="text for people, json for machines: one event per line (env SHARDWHEEL_LOG_FORMAT)")
    _example(n, "shardwheel node --dsn postgresql://... --etcd 10.0.0.5:2379 --cluster-secret \"$SECRET\" \\\n"
                "    --secrets-key \"k1=$KEY\" --port 8081 --advertise-host 10.0.0.11")
    n.set_defaults(func=cmd_node)

    a = sub.add_parser("api", parents=[debug, pg, etcd_tls, dev_mode, sealing],
                       help="run the control API (the public HTTP API, /v1)")
    a.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    a.add_argument("--port", type=_ranged(int, 0, 65_535), default=_env_int("SHARDWHEEL_API_PORT", 8080),
                   help="(env SHARDWHEEL_API_PORT; default 8080)")
    a.add_argument("--cluster-secret", default=os.environ.get("SHARDWHEEL_CLUSTER_SECRET"),
                   help="the nodes' cluster secret, to reach their internal API (env SHARDWHEEL_CLUSTER_SECRET)")
    a.add_argument("--log-level", default=logs.default_level(), choices=logs.LEVELS,
                   help="(env SHARDWHEEL_LOG_LEVEL; default info)")
    a.add_argument("--log-format", default=logs.default_format(), choices=logs.FORMATS,
                   help="text for people, json for machines: one event per line (env SHARDWHEEL_LOG_FORMAT)")
    a.add_argument("--workers", type=_ranged(int, 1, 64), default=1,
                   help="API processes on the port (default 1; each uses up to a core)")
    a.add_argument("--rate-limit", type=_ranged(float, 0.001, 1e6), default=500.0, metavar="PER_S",
                   help="requests a second per API key, per replica, unless the key has its own (default 500)")
    a.add_argument("--burst", type=_ranged(int, 1, 1_000_000), default=1000,
                   help="requests a key may send at once before its rate applies (default 1000)")
    a.add_argument("--max-jobs-per-tenant", type=_ranged(int, 1, 10**12), default=None, metavar="N",
                   help="a soft quota of undeleted jobs per tenant (default: none)")
    _example(a, "shardwheel api --dsn postgresql://... --etcd 10.0.0.5:2379 --cluster-secret \"$SECRET\" \\\n"
                "    --secrets-key \"k1=$KEY\" --host 0.0.0.0 --port 8080 --workers 2")
    a.set_defaults(func=cmd_api)

    from shardwheel.client_commands import add_client_commands, client_settings

    add_client_commands(sub, [debug], _Parser)
    api_client = client_settings(_Parser)
    k = sub.add_parser("keys", parents=[debug, api_client], formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="API keys: create, list, revoke (through the API; create --dsn works offline)",
                       epilog="example:\n  shardwheel keys create --role writer --name ci\n"
                              "  shardwheel keys revoke 0196d1c2-...\n"
                              "  shardwheel keys create --admin --tenant acme --dsn postgresql://...   # offline")
    k.add_argument("op", choices=["create", "list", "revoke"])
    k.add_argument("key_id", nargs="?", help="revoke: the key's id")
    k.add_argument("--dsn", type=_dsn, default=None,
                   help="create the key straight in PostgreSQL (the bootstrap of a tenant's first key)")
    k.add_argument("--tenant", type=_tenant,
                   help="the key's tenant (default: your own through the API, 'default' with --dsn)")
    k.add_argument("--role", choices=["admin", "writer", "reader"], default="writer")
    k.add_argument("--admin", action="store_true", help="the same as --role admin")
    k.add_argument("--name", default="", help="to tell keys apart in lists")
    k.add_argument("--rate-limit", type=_ranged(float, 0.001, 1e6), default=None, metavar="PER_S",
                   help="this key's requests a second per API replica (default: the API's --rate-limit)")
    k.add_argument("--burst", type=_ranged(int, 1, 1_000_000), default=None, help="this key's burst")
    k.set_defaults(func=cmd_keys)

    c = sub.add_parser("cluster", parents=[debug, api_client, pg, etcd_parent(env_default=False)],
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="cluster status and admin operations (drain, move, pause, rebalance)",
                       epilog="example:\n  shardwheel cluster status\n  shardwheel cluster drain dev-node-2\n"
                              "  shardwheel cluster status --etcd 127.0.0.1:2379 --dsn postgresql://...  "
                              "# the API down")  # fmt: skip
    c.add_argument("op", choices=sorted(_CLUSTER_ARGS), help="status | rebalance | pause | resume | drain NODE | "
                   "undrain NODE | move SHARD NODE | unpin SHARD")
    c.add_argument("args", nargs="*", help="the operation's arguments")
    c.set_defaults(func=cmd_cluster)

    d = sub.add_parser("dev", parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="run a whole local cluster: PostgreSQL, etcd, nodes, the API and a demo target",
                       description="Runs embedded PostgreSQL and etcd, the migrations, --nodes scheduler nodes, "
                                   "the control API and a demo target as child processes, creates an admin key "
                                   "and prints how to use them. Ctrl-C stops everything.",
                       epilog="example:\n  shardwheel dev --nodes 3 --api-port 8080\n"
                              "  shardwheel dev --fresh          # start again from an empty data directory")
    d.add_argument("--data-dir", default=".shardwheel/dev", help="where the cluster keeps its data and logs")
    d.add_argument("--fresh", action="store_true", help="wipe the data directory first")
    d.add_argument("--nodes", type=_ranged(int, 1, 16), default=3, help="scheduler nodes (default 3)")
    d.add_argument("--api-port", type=_ranged(int, 1, 65_535), default=8080, help="the control API's port")
    d.add_argument("--target-port", type=_ranged(int, 1, 65_535), default=8099, help="the demo target's port")
    d.add_argument("--log-level", default=logs.default_level(), choices=logs.LEVELS,
                   help="the children's (env SHARDWHEEL_LOG_LEVEL)")
    d.add_argument("--log-format", default=logs.default_format(), choices=logs.FORMATS,
                   help="the children's (env SHARDWHEEL_LOG_FORMAT)")
    d.add_argument("--keep-going", action="store_true",
                   help="a node that dies is reported and the others take its shards (default: stop everything)")
    d.add_argument("--no-wait", action="store_true",
                   help="start everything, print how to use it, stop and exit (a smoke check)")
    d.set_defaults(func=cmd_dev, cluster=os.environ.get("SHARDWHEEL_CLUSTER", "dev"))

    sh = sub.add_parser("completion", parents=[debug], help="print a shell completion script (bash or zsh)",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="example:\n  shardwheel completion bash > ~/.local/share/bash-completion/completions/shardwheel")
    sh.add_argument("shell", choices=["bash", "zsh"])
    sh.set_defaults(func=cmd_completion)

    t = sub.add_parser("demo-target", parents=[debug], help="an HTTP endpoint printing each firing with its drift",
                       epilog="example: shardwheel demo-target --port 8099   (GET / lists the last firings)")
    t.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    t.add_argument("--port", type=_ranged(int, 0, 65_535), default=8099, help="0 picks a free port")
    t.add_argument("--keep", type=_ranged(int, 1, 100_000), default=200, help="firings kept for GET /")
    t.set_defaults(func=cmd_demo_target)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "cluster" and len(args.args) != _CLUSTER_ARGS[args.op]:
        parser.exit(2, f"shardwheel: error: cluster {args.op} takes {_CLUSTER_ARGS[args.op]} argument(s), "
                       f"got {len(args.args)}\n")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # every failure, ours or a library's: one line, the traceback only with --debug
        if args.debug:
            traceback.print_exc()
        print(f"shardwheel: error: {one_line(e)}", file=sys.stderr)
        return 1


def one_line(error: BaseException) -> str:
    """What went wrong, in one line: the first real cause inside trio's exception groups, our errors as they
    read, an OS error with its file or address, anything else prefixed by its type."""
    while isinstance(error, BaseExceptionGroup):
        real = [e for e in error.exceptions if not isinstance(e, (KeyboardInterrupt, GeneratorExit))]
        error = (real or list(error.exceptions))[0]
    if isinstance(error, ShardwheelError):
        text = str(error)
    elif isinstance(error, OSError) and error.strerror:
        where = error.filename or ""
        text = f"{error.strerror}{f': {where}' if where else ''}"
    else:
        text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
