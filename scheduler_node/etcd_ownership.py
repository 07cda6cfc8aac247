"""Shard ownership on etcd: a lease per node, a key per owned shard, the planner deciding who holds what.

Rules (DESIGN.md §4):
- The node holds one lease (TTL default 5 s) renewed every TTL/3 but at least every second, a failed keepalive
  retried after 0.1 s doubling up to 1 s, so an etcd stall up to TTL - 1.5 s moves nothing. ``valid_until`` =
  the trio time at which the last acknowledged keepalive was *sent* + TTL - margin. Past it, the engine sends
  nothing, for every shard (it holds what falls due and claims nothing until the lease proves alive).
- Owning shard s = the key ``shards/<s>`` bound to our lease, created only if absent; then the epoch is bumped
  in PostgreSQL (never taken from etcd) and ``Acquired(s, epoch)`` is emitted.
- Every node plans from one snapshot with the pure planner: live nodes are those registered with a lease,
  minus those announcing they refuse shards (a bad clock); drained nodes and pins come from the admin keys.
  Shards to take are taken only when free; shards to give away get ``RevokeRequested``, and the key is
  deleted after the engine's graceful release (``released``). While rebalancing is paused, nothing is given
  away, but free shards are still taken, so a dead node's shards never stay orphaned.
- A held shard whose key is gone or belongs to someone else is ``Lost`` at once, as is any shard whose write
  was fenced. When the lease itself is gone (an etcd outage longer than the TTL), every shard is lost and the
  node joins again with a new lease; if the lease survived the outage, it carries on.
- Clock discipline: ``clock_ok()`` false makes the node announce ``refusing`` in its registration, so every
  node's plan leaves it out and it gives all its shards away gracefully.

Example: three nodes start; each snapshot shows three live nodes, each plan targets 85 or 86 shards, each node
takes its free ones: 85/85/86. A fourth joins: the others release 64 shards in all, the newcomer takes them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping

import trio

from protocol.errors import InfrastructureError
from protocol.planner import plan_for

from .coordination import ClusterView, LeaseAck, LeaseNotFound, NodeInfo
from .coordination.trio_adapter import TrioCoordinator
from .ownership import Acquired, Grant, Lost, OwnershipEvent, RevokeRequested, Validity
from .store_health import backoff_s

__all__ = ["EtcdOwnership"]

log = logging.getLogger(__name__)


class EtcdOwnership:
    def __init__(
        self,
        coord: TrioCoordinator,
        *,
        node_id: str,
        address: str,
        shard_count: int,
        bump_epoch: Callable[[int], Awaitable[int]],
        ttl_s: int = 5,
        margin_s: float = 1.0,
        release_timeout_s: float = 30.0,
        take_per_round: int = 64,
        reconcile_interval_s: float = 1.0,
        clock_ok: Callable[[], str | None] = lambda: None,
        join_timeout_s: float | None = None,
    ) -> None:
        self.coord = coord
        self.node_id = node_id
        self.address = address
        self.shard_count = shard_count
        self._bump = bump_epoch
        self.ttl_s = ttl_s
        self.join_timeout_s = join_timeout_s  # the first join only: a lease lost later is retried for good
        self.margin_s = margin_s
        self.release_timeout_s = release_timeout_s
        self.take_per_round = take_per_round
        self.reconcile_interval_s = reconcile_interval_s
        self._clock_problem = clock_ok
        self._grants: dict[int, Grant] = {}
        self._releasing: set[int] = set()
        self._lease: LeaseAck | None = None
        self._validity = Validity()
        self._refusing: str | None = None
        self._leaving = False  # the node drains: it takes no more shards (``stop_taking``)
        self._kick = trio.Event()
        self._rejoining = trio.Lock()
        self._send, self.events = trio.open_memory_channel[OwnershipEvent](math.inf)
        self.view: ClusterView | None = None

    # ---- the Ownership interface -------------------------------------------------------------------------

    def grants(self) -> Mapping[int, Grant]:
        return self._grants

    def valid_until(self) -> float:
        return self._validity.until

    async def wait_valid(self) -> None:
        await self._validity.wait()

    async def released(self, shard: int) -> None:
        self._grants.pop(shard, None)
        self._releasing.discard(shard)
        try:
            await self.coord.release_shard(shard, self.node_id)
        except InfrastructureError as e:  # the key dies with our lease anyway; the next owner waits for that
            log.warning("releasing shard %d in etcd failed: %s", shard, e, extra={"shard": shard})
        self._kick.set()

    def problem(self) -> str | None:
        return None  # shards come and go with the cluster's plan; losing one is no fault of this node

    def stop_taking(self) -> None:
        self._leaving = True

    def lost(self, shard: int) -> None:
        if self._grants.pop(shard, None) is not None:
            self._releasing.discard(shard)
            self._send.send_nowait(Lost(shard))

    @property
    def refusing(self) -> str | None:
        return self._refusing

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._join(self.join_timeout_s)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._keepalive_loop)
            nursery.start_soon(self._watch_loop)
            task_status.started()
            while True:
                try:
                    await self._reconcile()
                except LeaseNotFound:
                    await self._rejoin(self._lease)
                except InfrastructureError as e:
                    log.warning("reconcile failed: %s", e)
                with trio.move_on_after(self.reconcile_interval_s):
                    await self._kick.wait()
                self._kick = trio.Event()

    # ---- lease -------------------------------------------------------------------------------------------

    async def _join(self, timeout_s: float | None = None) -> None:
        """A new lease and registration, retried until etcd answers or, given ``timeout_s``, until that has
        passed (``InfrastructureError``: a node started against a wrong or dead address says so and exits)."""
        pause = 0.2
        give_up_at = None if timeout_s is None else trio.current_time() + timeout_s
        while True:
            try:
                ack = await self.coord.grant_lease(self.ttl_s)
                self._lease = ack
                self._validity.set(ack.valid_until(self.margin_s))
                await self._register()
                log.info("node %s joined with lease %x (ttl %ds)", self.node_id, ack.lease_id, ack.ttl)
                return
            except InfrastructureError as e:
                if give_up_at is not None and trio.current_time() + pause > give_up_at:
                    raise InfrastructureError(f"etcd did not answer for {timeout_s:g} s: {e}") from None
                log.warning("joining the cluster failed (%s); retrying", e)
                await trio.sleep(pause)
                pause = min(2 * pause, 2.0)

    async def _register(self) -> None:
        assert self._lease is not None
        info = NodeInfo(self.node_id, self.address, time.time(), refusing=self._refusing)
        await self.coord.register_node(info, self._lease.lease_id)

    async def _keepalive_loop(self) -> None:
        failures = 0
        while True:
            await trio.sleep(self._keepalive_interval_s() if failures == 0 else min(backoff_s(failures), 1.0))
            assert self._lease is not None
            try:
                ack = await self.coord.keepalive(self._lease.lease_id)
            except InfrastructureError as e:
                failures += 1
                if failures == 1:
                    log.warning("keepalive failed (%s); retrying, sending stops at valid_until", e)
                continue
            if failures:
                log.warning("keepalive answered again after %d failures", failures)
                failures = 0
            if ack is not None:
                self._lease = ack
                self._validity.set(ack.valid_until(self.margin_s))
                continue
            await self._rejoin(self._lease)

    def _keepalive_interval_s(self) -> float:
        """TTL/3, at most 1 s: a stall of etcd up to TTL - 1.5 s then never outlives the lease (the last
        keepalive answered before it is at most 1 s old; the one in flight, or its retry, is answered when it
        ends)."""
        ttl = self.ttl_s if self._lease is None else self._lease.ttl
        return min(max(ttl / 3, 0.2), 1.0)

    async def _rejoin(self, dead: LeaseAck | None) -> None:
        """The lease is gone, and every key bound to it: nothing is ours any more. Join with a new one."""
        async with self._rejoining:
            if self._lease is not dead:
                return  # the other caller (keepalive or reconcile) already did it
            log.warning("lease expired: dropping %d shards and joining again", len(self._grants))
            self._validity.set(-math.inf)
            for shard in list(self._grants):
                self.lost(shard)
            await self._join()
            self._kick.set()

    async def _watch_loop(self) -> None:
        while True:
            try:
                async with self.coord.changes() as changes:
                    async for _ in changes:
                        self._kick.set()
            except InfrastructureError as e:
                log.warning("watch failed (%s); retrying", e)
                await trio.sleep(1)

    # ---- planning ----------------------------------------------------------------------------------------

    async def _reconcile(self) -> None:
        problem = self._clock_problem()
        if problem != self._refusing:
            self._refusing = problem
            if problem:
                log.error("node %s refuses shards: %s", self.node_id, problem)
            await self._register()
        view = self.view = await self.coord.snapshot()
        lease = self._lease
        if lease is None or view.node_leases.get(self.node_id) != lease.lease_id:
            return  # not registered under our lease yet (or any more): the keepalive loop sorts it out
        current = view.live_owners()
        # Held shards whose key is no longer ours are gone.
        for shard in list(self._grants):
            owner = view.owners.get(shard)
            if owner is None or owner.node_id != self.node_id or owner.lease_id != lease.lease_id:
                log.warning("shard %d: our key is gone; dropping it", shard, extra={"shard": shard})
                self.lost(shard)
        live = [n for n, info in view.nodes.items() if not info.refusing]
        plan = plan_for(self.node_id, self.shard_count, live, drained=view.drained, pins=view.pins,
                        current=current)  # fmt: skip
        if self._refusing or self.node_id not in live:
            release, take = set(self._grants), set()
        else:
            release, take = set(plan.release) if not view.paused else set(), set(plan.take)
        deadline = trio.current_time() + self.release_timeout_s
        for shard in sorted(release & set(self._grants) - self._releasing):
            self._releasing.add(shard)
            self._send.send_nowait(RevokeRequested(shard, deadline))
        if trio.current_time() >= self._validity.until or self._leaving:
            return  # no taking while our own lease may be dead, nor while the node drains to leave
        # Keys of ours that we do not hold (a fenced write dropped the shard while the key stayed): take them
        # again with a fresh epoch, or nobody would (the key says we own it).
        ours_unheld = (
            {s for s, n in current.items() if n == self.node_id} - set(self._grants) - self._releasing
        )
        for shard in sorted((take | (ours_unheld & set(plan.keep))) - set(self._grants))[
            : self.take_per_round
        ]:
            if shard not in ours_unheld and not await self.coord.try_acquire_shard(
                shard, self.node_id, lease.lease_id
            ):
                continue
            epoch = await self._bump(shard)
            await self.coord.set_shard_epoch(shard, self.node_id, epoch, lease.lease_id)
            self._grants[shard] = Grant(epoch, self._validity.until)
            self._send.send_nowait(Acquired(shard, epoch))
        if len(take - set(self._grants)) > 0:
            self._kick.set()  # more to take next round

    async def publish_status(self, blob: bytes) -> None:
        if self._lease is not None:
            try:
                await self.coord.publish_status(self.node_id, blob, self._lease.lease_id)
            except LeaseNotFound:
                pass  # the keepalive loop notices too and joins again; the next status goes under the new lease

    async def leave(self) -> None:
        """After a graceful drain: revoke the lease, so nothing of ours lingers for a TTL."""
        if self._lease is not None:
            try:
                await self.coord.revoke(self._lease.lease_id)
            except InfrastructureError:
                pass
