"""``EtcdCoordinator``: the synchronous etcd core of coordination (membership, shard keys, admin marks, watches).

Everything a node or the control API asks of etcd goes through this class; the trio and asyncio adapters only
move its calls onto threads. It owns one pyetcd client (thread-safe: gRPC stubs may be shared by threads).

Rules:
- Every call has a deadline (``timeout``, default 2 s) and raises ``InfrastructureError`` with a one-line
  message when etcd cannot be reached or answers with an error. A lease that no longer exists is not an outage:
  ``keepalive``/``lease_ttl`` return ``None`` and writes bound to it raise ``LeaseNotFound``.
- Ownership of shard s is the key ``shards/<s>`` bound to the owner's lease, created only if absent
  (``create_revision == 0``); a node only ever deletes or rewrites a shard key that is still its own (compare on
  mod_revision after checking the owner, or on the key's lease), so it can never remove another node's claim.
- Epochs come from PostgreSQL, never from etcd revisions; ``set_shard_epoch`` only copies the bumped epoch into
  the key for people and routing hints.
- ``snapshot()`` is one range read of the whole root: a consistent ``ClusterView`` at one revision.
- ``watch(callback)`` watches the whole root from a revision and survives stream loss: a keeper thread
  re-subscribes (from the revision after the last event seen, so nothing is missed unless etcd compacted it)
  and says so with ``WatchLost`` / ``WatchResumed``. Callbacks run on pyetcd's watch thread (or the keeper
  thread): they must not block; the adapters hand them to their event loop.

``valid_until`` (DESIGN.md §4): etcd restarts a lease's TTL when it *receives* a keepalive, so a lease renewed
by a keepalive sent at local monotonic time ``t0`` cannot expire before ``t0 + ttl`` (ttl = what the ack says):
the request reached etcd at or after ``t0``. The caller therefore reads its clock BEFORE calling
``keepalive`` and, only if the call returns a TTL (acknowledged), sets ``valid_until = t0 + ttl - margin``.
A failed, unanswered or abandoned keepalive leaves ``valid_until`` where it was, even if etcd did get it
(that only makes the bound more conservative); ``None`` (the lease is gone: expired, or revoked by someone)
means stop at once and join again with a new lease. The margin (default 1 s) absorbs clock-rate differences
between node and etcd leader and the gap between checking ``valid_until`` and writing the request; a leader
change only ever extends leases. The adapters do exactly this and return a ``LeaseAck``
(``trio.current_time()`` / ``loop.time()``): ``ack.valid_until(margin)``. With keepalives every TTL/3
(TTL 5 s, margin 1 s) ``valid_until`` stays 2.3–4 s ahead while etcd answers, and sending stops at most
TTL − margin after the last acknowledged keepalive was sent.
Measured against etcd 3.5 here (tests and a 200-call loop): the bound key disappeared 0.38–0.51 s after
``t0 + ttl`` (the leader revokes expired leases every 500 ms), never before; a keepalive round trip on
loopback is 2 ms p50, 5.5 ms p99 (pyetcd opens a gRPC stream per call); a snapshot of a small cluster 0.4 ms;
``LeaseTimeToLive`` reports whole seconds rounded down, so use keepalive acks, not it, for ``valid_until``.

pyetcd facts this module works around (etcd-sdk-python 0.0.x, the python-etcd3 API):
- A failed call marks the endpoint "failed" for ``time_retry`` = 300 s and every later call raises
  ``ValueError('Trying to use a failed node')`` without trying: one etcd blip would brick the client for five
  minutes. We build the endpoints ourselves with ``time_retry`` = -inf (one endpoint: never locked out) or 1 s
  (several: fail over, retry the failed one soon). With several endpoints the call that meets a dead one
  fails (``InfrastructureError``) and the next goes to another: callers retry, as the lease loop does anyway.
- gRPC's reconnect backoff grows to 120 s by default, so after a long outage calls would keep failing long
  after etcd is back; the channel caps it at 1 s.
- A watch is not resumed by pyetcd: its stream dies with the connection and the callback receives the raw
  ``grpc.RpcError`` (or ``None`` when the stream just ends). Any unary call failing with UNAVAILABLE or
  DEADLINE_EXCEEDED also makes pyetcd drop its watcher object (the stream keeps running, orphaned, so
  ``client.cancel_watch(id)`` no longer reaches it); we therefore cancel through the watcher object the watch
  was created on.
- A missing lease comes back as a raw ``grpc.RpcError`` NOT_FOUND ("requested lease not found"), not a pyetcd
  exception; a keepalive for it answers TTL 0 and ``LeaseTimeToLive`` answers TTL -1.
- etcd grants at least ~2 s whatever is asked (its minimum TTL is 1.5 × the election timeout, rounded up):
  ``grant_lease`` returns the granted TTL, use that one.

Example::

    coord = EtcdCoordinator("http://127.0.0.1:2379", KeyLayout("prod"))
    lease = coord.grant_lease(5)
    coord.register_node(NodeInfo("n1", "http://10.0.0.5:8081", time.time()), lease.lease_id)
    if coord.try_acquire_shard(7, "n1", lease.lease_id):
        epoch = bump_epoch_in_postgres(7)          # the fencing epoch
        coord.set_shard_epoch(7, "n1", epoch, lease.lease_id)
    t0 = time.monotonic(); ttl = coord.keepalive(lease.lease_id)
    valid_until = t0 + ttl - 1.0 if ttl is not None else valid_until
    view = coord.snapshot()                        # view.owners[7] == ShardOwner("n1", epoch, lease_id, ...)
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, Self, TypeVar

import grpc
import pyetcd.exceptions as etcd_exc
from pyetcd import transactions as etcd_tx
from pyetcd import utils as etcd_utils
from pyetcd.client import Endpoint, MultiEndpointEtcd3Client
from pyetcd.etcdrpc import Compare
from pyetcd.watch import WatchResponse

from protocol.errors import InfrastructureError, InternalError

from .keys import KeyKind, KeyLayout, check_node_id
from .records import AdminMark, NodeInfo, ShardRecord, decode_shard, encode
from .view import KV, ClusterView, build_view

__all__ = [
    "Changed",
    "EtcdCoordinator",
    "EtcdTls",
    "GrantedLease",
    "LeaseAck",
    "LeaseNotFound",
    "WatchHandle",
    "WatchLost",
    "WatchNotice",
    "WatchResumed",
    "parse_endpoints",
]

T = TypeVar("T")

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 2.0
# gRPC channel options: reconnect quickly once etcd is back (default backoff grows to 120 s), and ping idle
# connections so a watch on a silently dead TCP connection fails within ~15 s. etcd refuses pings more often
# than every 5 s (--grpc-keepalive-min-time), hence 10 s.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
]
_WATCH_BACKOFF_S = (0.1, 2.0)  # first and largest pause between re-subscription attempts


class LeaseNotFound(InternalError):
    """A write was bound to a lease etcd no longer has (it expired or was revoked): join again with a new one."""

    status_hint = 503


class GrantedLease(NamedTuple):
    lease_id: int
    ttl: int  # as granted: may exceed the request (etcd's minimum is ~2 s)


@dataclass(frozen=True, slots=True)
class LeaseAck:
    """An acknowledged grant or keepalive. ``sent_at`` is the caller's clock read BEFORE the request went out."""

    lease_id: int
    ttl: int
    sent_at: float

    def valid_until(self, margin: float = 1.0) -> float:
        """Until when the lease is certainly alive, minus ``margin`` (DESIGN.md §4; see the module docstring)."""
        return self.sent_at + self.ttl - margin


@dataclass(frozen=True, slots=True)
class Changed:
    """Keys under the root changed (one etcd watch response)."""

    revision: int  # the highest mod_revision among the events
    kinds: frozenset[KeyKind]
    keys: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class WatchLost:
    """The watch stream broke; the keeper is re-subscribing. Changes may be late until ``WatchResumed``."""

    reason: str


@dataclass(frozen=True, slots=True)
class WatchResumed:
    """Re-subscribed. ``gapless``: replayed from the revision after the last event seen, so nothing was missed;
    otherwise (no event seen yet, or that revision was compacted) re-read a snapshot."""

    gapless: bool


WatchNotice = Changed | WatchLost | WatchResumed


@dataclass(frozen=True)
class EtcdTls:
    """TLS to etcd: the CA that signed the server's certificate and, for ``--client-cert-auth``, this client's
    certificate and key (PEM files). Read once, when the coordinator is made."""

    ca_file: str
    cert_file: str | None = None
    key_file: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str | None) -> bytes | None:
            if path is None:
                return None
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError as e:
                raise InfrastructureError(f"etcd TLS: cannot read {path}: {e.strerror or e}") from None

        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("etcd TLS: a client certificate needs its key, and a key its certificate")
        return grpc.ssl_channel_credentials(read(self.ca_file), read(self.key_file), read(self.cert_file))


def parse_endpoints(endpoints: str | Sequence[str], *, tls: bool = False) -> list[tuple[str, int]]:
    """``"http://h1:2379,h2:2379"`` or a list of such -> ``[(host, port), ...]``; ``https://`` ones (or bare
    ``host:port``) when ``tls``."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    scheme = "https" if tls else "http"
    out: list[tuple[str, int]] = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        url = urllib.parse.urlsplit(item if "://" in item else f"{scheme}://{item}")
        if url.scheme != scheme:
            raise ValueError(f"etcd endpoint {item!r}: {scheme}:// expected"
                             + ("" if tls else " (https needs --etcd-ca)"))  # fmt: skip
        if not url.hostname:
            raise ValueError(f"etcd endpoint {item!r} has no host")
        out.append((url.hostname, url.port or 2379))
    if not out:
        raise ValueError("no etcd endpoint given")
    return out


class _LeaseCompare(etcd_tx.BaseCompare):  # type: ignore[misc]  # pyetcd is untyped
    """``compare lease(key) == id``: pyetcd has value/version/create/mod compares but not this one."""

    def build_compare(self, compare: Any) -> None:
        compare.target = Compare.LEASE
        compare.lease = int(self.value)


def _rpc_code(err: grpc.RpcError) -> grpc.StatusCode | None:
    code = getattr(err, "code", None)
    return code() if callable(code) else None


def _rpc_details(err: grpc.RpcError) -> str:
    details = getattr(err, "details", None)
    return str(details() if callable(details) else "") or type(err).__name__


class EtcdCoordinator:
    """One cluster's coordination state in etcd. Thread-safe; close it (or use ``with``) to free the channel."""

    def __init__(
        self,
        endpoints: str | Sequence[str],
        layout: KeyLayout,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
        tls: EtcdTls | None = None,
    ) -> None:
        hosts = parse_endpoints(endpoints, tls=tls is not None)
        creds = None if tls is None else tls.credentials()
        self.layout = layout
        self.timeout = timeout
        self.endpoints_text = ",".join(f"{h}:{p}" for h, p in hosts)
        # time_retry: see the module docstring (pyetcd would otherwise refuse to use the endpoint for 300 s).
        time_retry = -math.inf if len(hosts) == 1 else 1.0
        secure = creds is not None
        eps = [Endpoint(h, p, secure=secure, creds=creds, time_retry=time_retry, opts=_CHANNEL_OPTIONS)
               for h, p in hosts]  # fmt: skip
        self._client = MultiEndpointEtcd3Client(endpoints=eps, timeout=timeout, failover=len(eps) > 1)
        self._watch_lock = threading.Lock()  # pyetcd creates its watcher lazily, without a lock
        self._watches: set[_Watch] = set()
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every watch and close the channel. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for w in list(self._watches):
            w.cancel(join=False)
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EtcdCoordinator({self.endpoints_text!r}, {self.layout!r})"

    @contextlib.contextmanager
    def _mapped(self, what: str) -> Iterator[None]:
        """Turn pyetcd/gRPC failures into our error tree, with one-line messages."""
        if self._closed:
            raise InfrastructureError(f"etcd at {self.endpoints_text}: {what}: the coordinator is closed")
        try:
            yield
        except grpc.RpcError as e:
            code, details = _rpc_code(e), _rpc_details(e)
            if code == grpc.StatusCode.NOT_FOUND and "lease not found" in details:
                raise LeaseNotFound(f"etcd: {what}: the lease no longer exists") from e
            name = code.name if code is not None else "error"
            raise InfrastructureError(
                f"etcd at {self.endpoints_text}: {what} failed: {name} {details}"
            ) from e
        except etcd_exc.ConnectionFailedError as e:
            raise InfrastructureError(f"etcd at {self.endpoints_text} is unreachable ({what})") from e
        except etcd_exc.ConnectionTimeoutError as e:
            raise InfrastructureError(
                f"etcd at {self.endpoints_text} did not answer {what} within {self.timeout:g}s"
            ) from e
        except etcd_exc.WatchTimedOut as e:
            raise InfrastructureError(
                f"etcd at {self.endpoints_text} did not create the watch within {self.timeout:g}s"
            ) from e
        except etcd_exc.RevisionCompactedError:
            raise  # the watch keeper handles it
        except etcd_exc.Etcd3Exception as e:
            raise InfrastructureError(
                f"etcd at {self.endpoints_text}: {what} failed: {type(e).__name__} {e}".rstrip()
            ) from e

    # -- leases ----------------------------------------------------------------------------------------------

    def grant_lease(self, ttl_s: int) -> GrantedLease:
        with self._mapped("lease grant"):
            lease = self._client.lease(int(ttl_s))
        return GrantedLease(int(lease.id), int(lease.ttl))

    def keepalive(self, lease_id: int) -> int | None:
        """One LeaseKeepAlive round trip: the TTL the lease was renewed to, or ``None`` if the lease is gone.

        Read your clock before calling; see the module docstring for ``valid_until``."""
        with self._mapped("lease keepalive"):
            responses = list(self._client.refresh_lease(lease_id))
        if not responses:
            raise InfrastructureError(f"etcd at {self.endpoints_text}: lease keepalive got no answer")
        ttl = int(responses[0].TTL)
        return ttl if ttl > 0 else None

    def lease_ttl(self, lease_id: int) -> int | None:
        """LeaseTimeToLive: remaining whole seconds (rounded down), or ``None`` if the lease has expired."""
        with self._mapped("lease time-to-live"):
            info = self._client.get_lease_info(lease_id)
        ttl = int(info.TTL)
        return ttl if ttl >= 0 else None

    def revoke(self, lease_id: int) -> bool:
        """Revoke the lease (its keys vanish at once); ``False`` if it was already gone."""
        try:
            with self._mapped("lease revoke"):
                self._client.revoke_lease(lease_id)
        except LeaseNotFound:
            return False
        return True

    # -- node and shard keys ---------------------------------------------------------------------------------

    def register_node(self, info: NodeInfo, lease_id: int) -> int:
        """Write ``nodes/<id>`` bound to the lease (overwriting an earlier incarnation's); returns the revision."""
        key = self.layout.node(info.node_id)
        with self._mapped("register node"):
            return int(self._client.put(key, encode(info), lease=lease_id).header.revision)

    def publish_status(self, node_id: str, blob: bytes, lease_id: int) -> None:
        """Write ``status/<id>`` (opaque bytes, JSON by convention) bound to the lease."""
        key = self.layout.status(node_id)
        with self._mapped("publish status"):
            self._client.put(key, blob, lease=lease_id)

    def try_acquire_shard(self, shard: int, node_id: str, lease_id: int, epoch: int = 0) -> bool:
        """Create ``shards/<s>`` bound to the lease if no one holds it; ``True`` if it is ours now.

        Idempotent: if the key already exists bound to this very lease (an earlier attempt whose answer was
        lost), that is a win too. Raises ``LeaseNotFound`` if the lease is gone."""
        key = self.layout.shard(shard)
        check_node_id(node_id)
        tx = self._client.transactions
        with self._mapped("acquire shard"):
            won, responses = self._client.transaction(
                compare=[tx.create(key) == 0],
                success=[tx.put(key, encode(ShardRecord(node_id, epoch)), lease=lease_id)],
                failure=[tx.get(key)],
            )
        if won:
            return True
        for value, meta in responses[0] if responses else ():
            if meta.lease_id == lease_id and self._owner(value) == node_id:
                return True
        return False

    def set_shard_epoch(self, shard: int, node_id: str, epoch: int, lease_id: int) -> bool:
        """Rewrite our shard key with the PostgreSQL epoch, keeping it bound to the lease. ``False`` (nothing
        written) unless the key exists and is bound to ``lease_id`` — i.e. still ours."""
        key = self.layout.shard(shard)
        check_node_id(node_id)
        with self._mapped("set shard epoch"):
            ok, _ = self._client.transaction(
                compare=[_LeaseCompare(key) == lease_id],
                success=[
                    self._client.transactions.put(key, encode(ShardRecord(node_id, epoch)), lease=lease_id)
                ],
                failure=[],
            )
        return bool(ok)

    def release_shard(self, shard: int, node_id: str) -> bool:
        """Delete ``shards/<s>`` if ``node_id`` owns it (compare-and-delete on its mod_revision); ``False`` if
        it is absent or someone else's."""
        key = self.layout.shard(shard)
        check_node_id(node_id)
        tx = self._client.transactions
        for _ in range(3):  # retry only if the key changed between the read and the delete
            with self._mapped("release shard"):
                resp = self._client.get_response(key)
                if not resp.kvs:
                    return False
                kv = resp.kvs[0]
                if self._owner(kv.value) != node_id:
                    return False
                deleted, _ = self._client.transaction(
                    compare=[tx.mod(key) == kv.mod_revision], success=[tx.delete(key)], failure=[]
                )
            if deleted:
                return True
        return False

    @staticmethod
    def _owner(raw: bytes) -> str | None:
        try:
            return decode_shard(raw).node_id
        except ValueError:
            return None

    # -- reads -----------------------------------------------------------------------------------------------

    def _failing_over(self, what: str, call: Callable[[], T]) -> T:
        """An idempotent ``call``, tried once more when its endpoint is unreachable and there are others:
        pyetcd fails over only on the next call, so a one-shot caller (the CLI, the API) would otherwise see
        a dead member as the cluster being down."""
        if self._client.failover:
            try:
                with self._mapped(what):
                    return call()
            except InfrastructureError as e:
                if not isinstance(e.__cause__, etcd_exc.ConnectionFailedError):
                    raise
        with self._mapped(what):
            return call()

    def snapshot(self) -> ClusterView:
        """One range read of the whole root, decoded into a view at that read's revision."""
        resp = self._failing_over("snapshot", lambda: self._client.get_prefix_response(self.layout.root))
        kvs = [KV(kv.key, kv.value, kv.lease, kv.mod_revision) for kv in resp.kvs]
        return build_view(self.layout, kvs, int(resp.header.revision))

    # -- admin marks (written by the admin CLI / control API, not bound to leases) ------------------------------

    def _put(self, what: str, key: str, value: bytes) -> int:
        return int(self._failing_over(what, lambda: self._client.put(key, value)).header.revision)

    def _delete(self, what: str, key: str) -> int:
        return int(self._failing_over(what, lambda: self._client.delete(key, return_response=True)).header.revision)

    def drain(self, node_id: str, actor: str = "") -> int:
        return self._put("drain", self.layout.drained(node_id), encode(AdminMark(time.time(), actor)))

    def undrain(self, node_id: str) -> int:
        return self._delete("undrain", self.layout.drained(node_id))

    def pin(self, shard: int, node_id: str) -> int:
        return self._put("pin", self.layout.pin(shard), check_node_id(node_id).encode())

    def unpin(self, shard: int) -> int:
        return self._delete("unpin", self.layout.pin(shard))

    def pause_rebalancing(self, actor: str = "") -> int:
        return self._put("pause rebalancing", self.layout.paused, encode(AdminMark(time.time(), actor)))

    def resume_rebalancing(self) -> int:
        return self._delete("resume rebalancing", self.layout.paused)

    def request_rebalance(self, actor: str = "") -> int:
        """Rewrite ``admin/rebalance``; its new mod_revision (returned) is the request nodes act on."""
        return self._put("request rebalance", self.layout.rebalance, encode(AdminMark(time.time(), actor)))

    # -- watch -----------------------------------------------------------------------------------------------

    def watch(
        self,
        callback: Callable[[WatchNotice], None],
        *,
        start_revision: int | None = None,
        kinds: Collection[KeyKind] | None = None,
    ) -> WatchHandle:
        """Watch the whole root from ``start_revision`` (default: now) until ``handle.cancel()``.

        ``kinds`` filters ``Changed`` notices (``None``: every key). Subscribing raises ``InfrastructureError``
        if etcd is unreachable; later losses are reported as ``WatchLost`` and repaired by a keeper thread."""
        if self._closed:
            raise InfrastructureError("the etcd coordinator is closed")
        w = _Watch(self, callback, start_revision, None if kinds is None else frozenset(kinds))
        w.subscribe()
        self._watches.add(w)
        w.start_keeper()
        return w


class WatchHandle(Protocol):
    """What ``watch`` returns. ``cancel()`` (idempotent) stops it: no callback starts after it returns."""

    def cancel(self) -> None: ...

    @property
    def active(self) -> bool:
        """Subscribed and not lost: changes are being delivered."""
        ...


class _Watch:
    def __init__(
        self,
        core: EtcdCoordinator,
        callback: Callable[[WatchNotice], None],
        start_revision: int | None,
        kinds: frozenset[KeyKind] | None,
    ) -> None:
        self._core = core
        self._callback = callback
        self._kinds = kinds
        self._resume_from = start_revision  # the revision to re-subscribe from; None = "now" (gap possible)
        self._lock = threading.RLock()  # guards the subscription fields and serialises callbacks
        self._gen = 0  # bumped per subscription: responses from older subscriptions are ignored
        self._sub: tuple[Any, int] | None = None  # (pyetcd Watcher, watch id)
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None

    @property
    def active(self) -> bool:
        return not self._stop.is_set() and not self._lost.is_set()

    def subscribe(self) -> int | None:
        """Create the etcd watch; the subscription's generation, or ``None`` if cancelled meanwhile."""
        root = self._core.layout.root
        with self._lock:
            self._gen += 1
            gen = self._gen
        with self._core._watch_lock, self._core._mapped("watch"):
            watcher = self._core._client.watcher
            watch_id = watcher.add_callback(
                root,
                functools.partial(self._on_response, gen),
                range_end=etcd_utils.prefix_range_end(root.encode()),
                start_revision=self._resume_from,
            )
        with self._lock:
            if self._gen == gen and not self._stop.is_set():
                self._sub = (watcher, watch_id)
                self._lost.clear()
                return gen
        watcher.cancel(watch_id)  # cancelled while subscribing: undo
        return None

    def start_keeper(self) -> None:
        self._keeper = threading.Thread(
            target=self._keep, name=f"coordination-watch-{id(self):x}", daemon=True
        )
        self._keeper.start()

    def cancel(self, join: bool = True) -> None:
        """``join``: wait (bounded) for the keeper thread; ``False`` from ``close()`` only."""
        with self._lock:
            self._stop.set()
            self._lost.set()  # wakes the keeper, which then sees the stop flag
            self._gen += 1
            sub, self._sub = self._sub, None
        if sub is not None:
            watcher, watch_id = sub
            try:
                watcher.cancel(watch_id)  # on the watcher it was created on (pyetcd may have dropped it)
            except Exception:  # the stream may already be gone; nothing to undo then
                log.debug("coordination: cancelling watch %s failed", watch_id, exc_info=True)
        self._core._watches.discard(self)
        keeper = self._keeper
        if join and keeper is not None and keeper is not threading.current_thread():
            keeper.join(self._core.timeout + 1.0)  # it may be inside a subscribe bounded by the timeout

    def _deliver(self, notice: WatchNotice) -> None:
        try:
            self._callback(notice)
        except Exception:  # a consumer bug must not kill the watch thread
            log.exception("coordination: watch callback failed on %r", notice)

    def _on_response(self, gen: int, response: object) -> None:
        """On pyetcd's watch thread: a WatchResponse, or the stream's end (an exception or None)."""
        with self._lock:
            if gen != self._gen or self._stop.is_set():
                return
            if not isinstance(response, WatchResponse):
                self._sub = None
                self._lost.set()
                if response is None:
                    reason = "stream ended"
                elif isinstance(response, grpc.RpcError):
                    code = _rpc_code(response)
                    reason = f"{code.name if code else 'error'} {_rpc_details(response)}"
                elif isinstance(response, etcd_exc.RevisionCompactedError):
                    reason = f"revision compacted at {response.compacted_revision}"
                    self._resume_from = None
                else:
                    reason = f"{type(response).__name__} {response}"
                self._deliver(WatchLost(reason))
                return
            if not response.events:
                return  # progress notifications
            revision = max(int(ev.mod_revision) for ev in response.events)
            self._resume_from = revision + 1
            keys: list[str] = []
            kinds: set[KeyKind] = set()
            for ev in response.events:
                key = ev.key.decode("utf-8", "replace")
                keys.append(key)
                parsed = self._core.layout.parse(key)
                if parsed is not None:
                    kinds.add(parsed.kind)
            if self._kinds is not None and not (kinds & self._kinds):
                return
            self._deliver(Changed(revision, frozenset(kinds), tuple(keys)))

    def _keep(self) -> None:
        """Keeper thread: wait for a loss, re-subscribe with backoff, until cancelled."""
        first, largest = _WATCH_BACKOFF_S
        while True:
            self._lost.wait()
            delay = first
            while not self._stop.wait(delay):
                gapless = self._resume_from is not None
                try:
                    gen = self.subscribe()
                except etcd_exc.RevisionCompactedError:
                    self._resume_from = None  # start from now; the consumer must re-read
                    continue
                except InfrastructureError as e:
                    log.info("coordination: watch re-subscription failed: %s", e)
                    delay = min(largest, delay * 2)
                    continue
                with self._lock:
                    # Not if the new stream already broke (its WatchLost was delivered) or we were cancelled.
                    if gen is not None and gen == self._gen and not self._lost.is_set():
                        self._deliver(WatchResumed(gapless))
                break
            if self._stop.is_set():
                return
