"""``shardwheel dev``: a whole local cluster as child processes, started with one command and stopped with Ctrl-C.

What runs, each the command production runs: embedded PostgreSQL and etcd (``shardwheel.embedded``),
``shardwheel migrate``, ``--nodes`` scheduler nodes in etcd mode, ``shardwheel api`` and ``shardwheel
demo-target`` (every part in dev mode, so the demo target on 127.0.0.1 is an allowed target).

Rules:
- One per data directory: ``dev.lock`` is held (``flock``) while it runs; a second ``dev`` on the same directory
  says which process has it and exits 1. ``--fresh`` wipes the directory first (only when none runs).
- Data lives in the directory: jobs, history and the dev tenant's admin key (``admin-key``, mode 0600) survive a
  restart; the API and demo target ports are flags (8080, 8099) so jobs pointing at the demo target keep working.
- Every child's output goes to ``logs/<name>.log`` and, prefixed with its name, to the console.
- A child that exits (PostgreSQL and etcd included) is reported with the last lines of its log, and the rest
  are stopped: the command then exits 1. With ``--keep-going`` a node that exits is reported and the others
  carry on (they take its shards): for failover demos and ``python -m bench failover``. Ctrl-C (or SIGTERM) stops everything in order: the API and the demo
  target, then the nodes with SIGTERM (they hand back their claims, flush their writers and release their
  shards), then etcd and PostgreSQL. Children run in their own sessions, so the terminal's Ctrl-C reaches only
  this supervisor, and they get SIGTERM if it dies (``PR_SET_PDEATHSIG``): no process is left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from protocol.errors import ShardwheelError

from .embedded import EmbeddedEtcd, EmbeddedPostgres, free_port

__all__ = ["DevOptions", "run_dev"]

DEV_TENANT = "dev"
_NODE_STOP_S = 40.0  # a node's graceful release: claims back, in-flight requests (up to its release timeout)


@dataclass(frozen=True)
class DevOptions:
    data_dir: Path
    nodes: int = 3
    shards: int = 256
    api_port: int = 8080
    target_port: int = 8099
    cluster: str = "dev"
    fresh: bool = False
    smoke: bool = False  # start, print, stop (--no-wait)
    keep_going: bool = False  # a node that dies is reported, the rest carry on (failover demos and benches)
    log_level: str = "info"
    log_format: str = "text"
    ready_timeout_s: float = 120.0


try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)  # loaded here: never in a forked child
except OSError:
    _LIBC = None


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the supervisor dies, however it dies (Linux). Nothing that could
    wait on a lock another thread held at fork time (no import, no dlopen): one libc call."""
    if _LIBC is not None:
        with contextlib.suppress(AttributeError):
            _LIBC.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class _Child:
    """A child process whose output is copied, line by line, to its log file and to the console."""

    def __init__(self, name: str, args: list[str], log_dir: Path, width: int) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=_die_with_parent)  # fmt: skip
        self._prefix = f"{name:<{width}} | "
        self._copier = threading.Thread(target=self._copy, name=f"log-{name}", daemon=True)
        self._copier.start()

    def _copy(self) -> None:
        assert self.proc.stdout is not None
        with open(self.log_path, "ab") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                sys.stdout.write(self._prefix + line.decode(errors="replace"))
                sys.stdout.flush()

    def stop(self, timeout: float) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"{self.name} did not stop within {timeout:g}s: killed", flush=True)
                self.proc.kill()
                self.proc.wait(5)
        self._copier.join(5)

    def tail(self, lines: int = 15) -> str:
        self._copier.join(2)  # its last lines written
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "    (no log)"
        return "\n".join(f"    {line}" for line in text)


@contextlib.contextmanager
def _lock(data: Path) -> Iterator[None]:
    path = data / "dev.lock"
    handle: IO[str] = open(path, "a+")  # noqa: SIM115 - held for the life of the cluster
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            pid = handle.read().strip() or "?"
            raise ShardwheelError(f"a dev cluster is already running on {data} (pid {pid}); stop it first, or "
                                  "use another --data-dir") from None  # fmt: skip
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()


def _shardwheel(*args: str) -> list[str]:
    return [sys.executable, "-m", "shardwheel.cli", *args]


def _run_once(args: list[str], what: str) -> str:
    done = subprocess.run(args, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        raise ShardwheelError(f"{what} failed: {said[-1] if said else f'exit code {done.returncode}'}")
    return done.stdout


def _admin_key(data: Path, dsn: str, api: str) -> str:
    """The dev tenant's admin key: the one kept in the data directory while the API accepts it, else a new one."""
    path = data / "admin-key"
    if path.exists():
        key = path.read_text().strip()
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{api}/v1/keys", headers={"authorization": f"Bearer {key}"}, timeout=5).status_code == 200:
                return key
    out = _run_once(_shardwheel("keys", "create", "--dsn", dsn, "--tenant", DEV_TENANT, "--role", "admin",
                                "--name", "shardwheel dev"), "creating the dev admin key")  # fmt: skip
    key = out.splitlines()[0].strip()
    path.touch(mode=0o600)
    path.write_text(key + "\n")
    return key


def _wait_ready(api: str, key: str | None, nodes: int, children: list[_Child], stop: threading.Event,
                timeout: float) -> None:  # fmt: skip
    """Until the API answers and (with ``key``) every node is a member and every shard has an owner."""
    deadline = time.monotonic() + timeout
    while not stop.is_set():
        for child in children:
            if child.proc.poll() is not None:
                raise _ChildDied(child)
        with contextlib.suppress(httpx.HTTPError):
            if key is None:
                if httpx.get(f"{api}/readyz", timeout=2).status_code == 200:
                    return
            else:
                r = httpx.get(f"{api}/v1/cluster", headers={"authorization": f"Bearer {key}"}, timeout=5)
                status = r.json() if r.status_code == 200 else {}
                if len(status.get("members", [])) >= nodes and status.get("unowned_shards", [None]) == []:
                    return
        if time.monotonic() > deadline:
            raise ShardwheelError(f"the dev cluster was not ready within {timeout:g}s; logs in "
                                  f"{children[0].log_path.parent}")  # fmt: skip
        stop.wait(0.2)


class _ChildDied(Exception):
    def __init__(self, child: _Child) -> None:
        super().__init__(child.name)
        self.child = child


def _command_hint() -> str:
    """How this machine's user types the command: ``shardwheel`` when it is on PATH, else its full path."""
    found = shutil.which("shardwheel")
    venv_script = Path(sys.executable).with_name("shardwheel")
    if found and Path(found).resolve() == venv_script.resolve():
        return "shardwheel"
    return str(venv_script) if venv_script.exists() else f"{sys.executable} -m shardwheel.cli"


def _banner(opts: DevOptions, api: str, target: str, key: str, pg_dsn: str, etcd: str) -> str:
    sw = _command_hint()
    return f"""
Shardwheel dev cluster: {opts.nodes} nodes, {opts.shards} shards, data in {opts.data_dir}
  API          {api}      docs: {api}/docs
  demo target  {target}      prints each firing here; GET {target}/ lists the last ones
  admin key    {key}      (tenant '{DEV_TENANT}'; kept in {opts.data_dir / 'admin-key'})
  PostgreSQL   {pg_dsn}
  etcd         {etcd}

In another terminal:
  export SHARDWHEEL_URL={api} SHARDWHEEL_API_KEY={key}
  {sw} jobs create --name hello --every 5s --url {target}/hello
  {sw} jobs runs hello          # its firings, with drift and HTTP status (a name or an id)
  {sw} cluster status

Ctrl-C stops everything.
""".rstrip("\n")


def run_dev(opts: DevOptions) -> int:
    data = opts.data_dir.resolve()
    data.mkdir(parents=True, exist_ok=True)
    with _lock(data):
        if opts.fresh:
            for entry in data.iterdir():
                if entry.name != "dev.lock":
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        log_dir = data / "logs"
        log_dir.mkdir(exist_ok=True)
        stop = threading.Event()
        previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            return _run(opts, data, log_dir, stop)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def _run(opts: DevOptions, data: Path, log_dir: Path, stop: threading.Event) -> int:
    pg = EmbeddedPostgres.from_env(data / "pg")
    etcd = EmbeddedEtcd.from_env(data / "etcd")
    children: list[_Child] = []
    api = f"http://127.0.0.1:{opts.api_port}"
    target = f"http://127.0.0.1:{opts.target_port}"
    try:
        print(f"starting PostgreSQL and etcd in {data}", flush=True)
        pg.start()
        etcd.start()
        _run_once(_shardwheel("migrate", "--dsn", pg.dsn, "--cluster", opts.cluster, "--shards", str(opts.shards)),
                  "migrate")  # fmt: skip
        common = ["--dsn", pg.dsn, "--etcd", etcd.endpoint, "--dev", "--log-level", opts.log_level,
                  "--log-format", opts.log_format]
        width = max(len("demo-target"), len(f"node-{opts.nodes}"))
        specs = [(f"node-{i}", _shardwheel("node", *common, "--node-id", f"dev-node-{i}", "--port", str(free_port())))
                 for i in range(1, opts.nodes + 1)]  # fmt: skip
        specs.append(("api", _shardwheel("api", *common, "--port", str(opts.api_port))))
        specs.append(("demo-target", _shardwheel("demo-target", "--port", str(opts.target_port))))
        for name, args in specs:
            children.append(_Child(name, args, log_dir, width))
        _wait_ready(api, None, opts.nodes, children, stop, opts.ready_timeout_s)
        if stop.is_set():
            return 0
        key = _admin_key(data, pg.dsn, api)
        _wait_ready(api, key, opts.nodes, children, stop, opts.ready_timeout_s)
        if stop.is_set():
            return 0
        print(_banner(opts, api, target, key, pg.dsn, etcd.endpoint), flush=True)
        reported: set[str] = set()
        while not opts.smoke and not stop.wait(0.2):
            for child in children:
                if child.proc.poll() is None or child.name in reported:
                    continue
                if not (opts.keep_going and child.name.startswith("node-")):
                    raise _ChildDied(child)
                reported.add(child.name)  # --keep-going: the cluster carries on without it
                print(f"\n{child.name} exited with code {child.proc.returncode}; the last lines of its log "
                      f"({child.log_path}):\n{child.tail()}\nthe other nodes take its shards (--keep-going)",
                      file=sys.stderr, flush=True)  # fmt: skip
            for name, server in (("PostgreSQL", pg), ("etcd", etcd)):
                proc = getattr(server, "_proc", None)
                if proc is not None and proc.poll() is not None:
                    log = data / ("pg" if server is pg else "etcd")
                    raise ShardwheelError(f"{name} exited with code {proc.returncode}; its log is in {log}")
        return 0
    except _ChildDied as e:
        print(f"\n{e.child.name} exited with code {e.child.proc.returncode}; the last lines of its log "
              f"({e.child.log_path}):\n{e.child.tail()}\nstopping the others", file=sys.stderr, flush=True)  # fmt: skip
        return 1
    finally:
        print("stopping the dev cluster", flush=True)
        front = [c for c in children if not c.name.startswith("node-")]
        for child in front:
            child.stop(10)
        nodes = [c for c in children if c.name.startswith("node-")]
        for child in nodes:
            if child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)  # all at once: they release their shards together
        for child in nodes:
            child.stop(_NODE_STOP_S)
        etcd.stop()
        pg.stop()
        print("dev cluster stopped", flush=True)
