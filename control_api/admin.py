"""Admin endpoints: API keys and the cluster (an ``admin`` key; an admin operates the whole cluster).

- ``POST /v1/keys`` makes a key (the secret is in this answer only; stored hashed), for the admin's tenant or
  the ``tenant`` given; ``GET /v1/keys`` lists them (``tenant`` filter, ``include_revoked``); ``DELETE
  /v1/keys/{id}`` revokes one, effective within the 5 s key cache.
- ``GET /v1/cluster``: members and their figures, each shard's owner and epoch, moving and unowned shards
  (``coordination.cluster_status``: what ``shardwheel cluster status`` shows). The operations write the admin
  keys the nodes watch in etcd (``shardwheel cluster`` does the same): ``rebalance``, ``pause``, ``resume``,
  ``shards/{n}/move`` (a pin: the shard moves with a graceful release), ``shards/{n}/unpin``,
  ``nodes/{id}/drain`` and ``undrain``. Every change is in the audit log (shard -1, cluster-wide).
"""

from __future__ import annotations

from typing import Annotated, Any

import asyncpg
import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery

from protocol.errors import NotFound, SpecError
from protocol.ids import parse_job_id
from protocol.internal import Tenant
from protocol.jobs import decode_untrusted
from scheduler_node.coordination import AsyncioCoordinator, ClusterStatus, cluster_status
from scheduler_node.coordination.keys import check_node_id
from scheduler_node.store import (
    CLUSTER_SHARD,
    ApiKey,
    Role,
    create_api_key,
    insert_audit,
    list_api_keys,
    revoke_api_key,
)

from . import paths
from .auth import ADMIN

__all__ = ["ClusterController", "KeyController"]

Name = Annotated[str, msgspec.Meta(max_length=100, pattern=r"^[^\x00-\x1f\x7f]*$")]


class KeyRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    role: Role
    tenant: Tenant | None = None  # default: the admin's own
    name: Name = ""
    rate_limit_per_s: Annotated[float, msgspec.Meta(ge=0.001, le=1_000_000)] | None = None  # stored as real
    burst: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None


class CreatedKey(ApiKey, frozen=True, kw_only=True):
    key: str  # the secret: shown in this answer only


class KeyList(msgspec.Struct, frozen=True):
    items: list[ApiKey]


class MoveRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    node: str


class Done(msgspec.Struct, frozen=True):
    message: str


def _node(node: str, field: str) -> str:
    """A node id as etcd keys can hold it, or ``SpecError`` naming ``field``."""
    try:
        return check_node_id(node)
    except ValueError as e:
        raise SpecError(field, str(e)) from None


def _actor(request: Request[ApiKey, Any, State]) -> str:
    return f"key:{request.user.prefix}"


class KeyController(Controller):
    path = paths.KEYS
    tags = ["keys"]
    opt = ADMIN

    @post("/", operation_id="createKey", status_code=201, summary="Make an API key; its secret is shown once")
    async def create(self, request: Request[ApiKey, Any, State]) -> CreatedKey:
        body: KeyRequest = decode_untrusted(await request.body(), KeyRequest)
        secret, key = await create_api_key(
            request.app.state.pool, tenant=body.tenant or request.user.tenant, role=body.role, name=body.name,
            actor=_actor(request), rate_limit_per_s=body.rate_limit_per_s, burst=body.burst,
        )  # fmt: skip
        return CreatedKey(**msgspec.structs.asdict(key), key=secret)

    @get("/", operation_id="listKeys", summary="API keys (never their secrets)")
    async def index(self, request: Request[ApiKey, Any, State], tenant: FromQuery[str | None] = None,
                    include_revoked: FromQuery[bool] = False) -> KeyList:  # fmt: skip
        return KeyList(await list_api_keys(request.app.state.pool, tenant=tenant, include_revoked=include_revoked))

    @delete("/{key_id:str}", operation_id="revokeKey", status_code=200,
            summary="Revoke an API key (refused within 5 s everywhere)")  # fmt: skip
    async def revoke(self, request: Request[ApiKey, Any, State], key_id: FromPath[str]) -> Done:
        kid = parse_job_id(key_id, "id")
        if not await revoke_api_key(request.app.state.pool, kid, actor=_actor(request)):
            raise NotFound(f"no active key {kid}")
        request.app.state.key_cache.clear()  # this replica at once; the others within their cache time
        return Done(f"revoked key {kid}")


class ClusterController(Controller):
    path = paths.CLUSTER
    tags = ["cluster"]
    opt = ADMIN

    async def _audit(self, request: Request[ApiKey, Any, State], action: str, **detail: Any) -> None:
        await insert_audit(request.app.state.pool, shard=CLUSTER_SHARD, tenant=request.user.tenant,
                           actor=_actor(request), action=f"cluster.{action}", detail=detail)  # fmt: skip

    def _coord(self, request: Request[ApiKey, Any, State]) -> AsyncioCoordinator:
        coord: AsyncioCoordinator = request.app.state.coord
        return coord

    async def _live(self, request: Request[ApiKey, Any, State], node: str, field: str) -> None:
        if _node(node, field) not in (await self._coord(request).snapshot()).nodes:
            raise SpecError(field, f"'{node[:100]}' is not a live member of the cluster")

    def _shard(self, request: Request[ApiKey, Any, State], shard: int) -> int:
        if not 0 <= shard < request.app.state.shard_count:
            raise SpecError("shard", f"{shard} is outside 0-{request.app.state.shard_count - 1}")
        return shard

    @get("/", operation_id="getCluster", summary="Members, shard owners and epochs, moving and unowned shards")
    async def status(self, request: Request[ApiKey, Any, State]) -> ClusterStatus:
        pool: asyncpg.Pool = request.app.state.pool
        epochs = {r["shard"]: r["epoch"] for r in await pool.fetch("SELECT shard, epoch FROM shard_epochs")}
        return cluster_status(request.app.state.cluster_name, request.app.state.shard_count, epochs,
                              await self._coord(request).snapshot())  # fmt: skip

    @post("/rebalance", operation_id="rebalanceCluster", status_code=200, summary="Every node re-plans now")
    async def rebalance(self, request: Request[ApiKey, Any, State]) -> Done:
        await self._coord(request).request_rebalance(_actor(request))
        await self._audit(request, "rebalance")
        return Done("rebalance requested")

    @post("/pause", operation_id="pauseRebalancing", status_code=200,
          summary="Stop moving shards between live nodes (free shards are still taken)")  # fmt: skip
    async def pause(self, request: Request[ApiKey, Any, State]) -> Done:
        await self._coord(request).pause_rebalancing(_actor(request))
        await self._audit(request, "pause")
        return Done("rebalancing paused")

    @post("/resume", operation_id="resumeRebalancing", status_code=200, summary="Move shards to plan again")
    async def resume(self, request: Request[ApiKey, Any, State]) -> Done:
        await self._coord(request).resume_rebalancing()
        await self._audit(request, "resume")
        return Done("rebalancing resumed")

    @post("/shards/{shard:int}/move", operation_id="moveShard", status_code=200,
          summary="Pin a shard to a node: it moves there with a graceful release")  # fmt: skip
    async def move(self, request: Request[ApiKey, Any, State], shard: FromPath[int]) -> Done:
        body: MoveRequest = decode_untrusted(await request.body(), MoveRequest)
        await self._live(request, body.node, "node")
        await self._coord(request).pin(self._shard(request, shard), body.node)
        await self._audit(request, "move", shard=shard, node=body.node)
        return Done(f"shard {shard} pinned to {body.node}; it moves with a graceful release")

    @post("/shards/{shard:int}/unpin", operation_id="unpinShard", status_code=200,
          summary="Let the plan place a pinned shard again")  # fmt: skip
    async def unpin(self, request: Request[ApiKey, Any, State], shard: FromPath[int]) -> Done:
        await self._coord(request).unpin(self._shard(request, shard))
        await self._audit(request, "unpin", shard=shard)
        return Done(f"unpinned shard {shard}")

    @post("/nodes/{node:str}/drain", operation_id="drainNode", status_code=200,
          summary="Move every shard off a node (for maintenance); it takes none until undrained")  # fmt: skip
    async def drain(self, request: Request[ApiKey, Any, State], node: FromPath[str]) -> Done:
        await self._live(request, node, "node")
        await self._coord(request).drain(node, _actor(request))
        await self._audit(request, "drain", node=node)
        return Done(f"drained {node}")

    @post("/nodes/{node:str}/undrain", operation_id="undrainNode", status_code=200,
          summary="Let a drained node take shards again")  # fmt: skip
    async def undrain(self, request: Request[ApiKey, Any, State], node: FromPath[str]) -> Done:
        await self._coord(request).undrain(_node(node, "node"))
        await self._audit(request, "undrain", node=node)
        return Done(f"undrained {node}")
