"""`shardwheel dev` and the CLI over the API, as a new user runs them: the dev cluster as a subprocess, the CLI
as subprocesses against it.

One cluster start and one restart (each ~20-40 s here) cover: the banner, a job created with the CLI firing at
the demo target, `cluster status` (3 nodes, every shard owned), `cluster drain`, `jobs import` of 10,000 jobs,
the CLI's one-line errors, a second `dev` on the same data directory refused, Ctrl-C leaving no process, the
job still there and firing after a restart, and a child's death reported with its log and the rest stopped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shardwheel.embedded import _process_tree, free_port

pytestmark = pytest.mark.slow

SHARDWHEEL = [sys.executable, "-m", "shardwheel.cli"]
_START_S = 240.0  # a cold start on a busy 2-core machine: PostgreSQL, etcd, 3 nodes, the API


def _env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SHARDWHEEL_")}
    return {**base, **extra}


class Dev:
    """A running `shardwheel dev`: its process, its output file and how to reach it."""

    def __init__(self, data: Path, api_port: int, target_port: int) -> None:
        self.data, self.api, self.target = data, f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{target_port}"
        self.out_path = data.with_name(data.name + f"-{time.monotonic_ns()}.out")
        self.out = open(self.out_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([*SHARDWHEEL, "dev", "--data-dir", str(data), "--api-port", str(api_port),
                                      "--target-port", str(target_port)], stdout=self.out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=_env(), start_new_session=True)  # fmt: skip

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def wait_banner(self) -> str:
        deadline = time.monotonic() + _START_S
        while "Ctrl-C stops everything." not in (text := self.output()):
            assert self.proc.poll() is None, f"dev exited {self.proc.returncode}:\n{text[-3000:]}"
            assert time.monotonic() < deadline, f"no banner within {_START_S}s:\n{text[-3000:]}"
            time.sleep(0.2)
        return text

    @property
    def key(self) -> str:
        return (self.data / "admin-key").read_text().strip()

    def cli(self, *args: str, key: str | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        env = _env(SHARDWHEEL_URL=self.api, SHARDWHEEL_API_KEY=key or self.key, COLUMNS="80")
        return subprocess.run([*SHARDWHEEL, *args], capture_output=True, text=True, timeout=120, env=env,
                              input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL)  # fmt: skip

    def stop(self, sig: int = signal.SIGINT, timeout: float = 90) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.out.close()


def _until(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        if value := check():
            return value
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.2)


def _firings(dev: Dev, job_id: str) -> list[dict[str, Any]]:
    try:
        listing = httpx.get(f"{dev.target}/", timeout=5).json()
    except httpx.HTTPError:
        return []
    return [f for f in listing["firings"] if f["job"] == job_id]


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            alive.append(pid)
    return alive


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    # PostgreSQL's socket path has a length limit: a short directory
    data = Path(f"/tmp/sw-dev-test-{os.getpid()}")
    yield data
    subprocess.run(["rm", "-rf", str(data)], check=False)


def test_dev_cluster_and_the_cli_end_to_end(data_dir: Path) -> None:
    api_port, target_port = free_port(), free_port()
    dev = Dev(data_dir, api_port, target_port)
    try:
        banner = dev.wait_banner()
        assert f"API          {dev.api}" in banner and f"{dev.api}/docs" in banner
        assert f"export SHARDWHEEL_URL={dev.api} SHARDWHEEL_API_KEY={dev.key}" in banner
        assert f"jobs create --name hello --every 5s --url {dev.target}/hello" in banner

        second = subprocess.run([*SHARDWHEEL, "dev", "--data-dir", str(data_dir), "--api-port", str(free_port())],
                                capture_output=True, text=True, timeout=60, env=_env(),
                                stdin=subprocess.DEVNULL)  # fmt: skip
        assert second.returncode == 1 and "already running" in second.stderr, second.stderr

        created = dev.cli("jobs", "create", "--name", "hello", "--every", "1s", "--url", f"{dev.target}/hello",
                          "--json")  # fmt: skip
        assert created.returncode == 0, created.stderr
        job_id = json.loads(created.stdout)["id"]
        fired = _until("the job fires at the demo target", lambda: _firings(dev, job_id), 30)
        assert fired[0]["path"] == "/hello" and fired[0]["drift_ms"] is not None
        assert f"job {job_id}" in dev.output()  # the demo target printed it

        runs = _until("the runs are recorded", lambda: (r := dev.cli("jobs", "runs", "hello")).returncode == 0
                      and "succeeded" in r.stdout and r, 30)  # fmt: skip
        assert "200" in runs.stdout
        assert max(len(line) for line in runs.stdout.splitlines()) <= 80

        status = json.loads(dev.cli("cluster", "status", "--json").stdout)
        assert len(status["members"]) == 3 and status["unowned_shards"] == []
        table = dev.cli("cluster", "status")
        assert table.returncode == 0 and "dev-node-1" in table.stdout and "shard map" in table.stdout
        assert max(len(line) for line in table.stdout.splitlines()) <= 80, table.stdout

        drained = dev.cli("cluster", "drain", "dev-node-1")
        assert drained.returncode == 0, drained.stderr

        def moved() -> bool:
            s = json.loads(dev.cli("cluster", "status", "--json").stdout)
            node1 = next(m for m in s["members"] if m["node"] == "dev-node-1")
            return node1["shards"] == 0 and not s["unowned_shards"] and not s["moving"]

        _until("dev-node-1's shards moved away", moved, 90)
        assert dev.cli("cluster", "undrain", "dev-node-1").returncode == 0

        specs = "\n".join(json.dumps({"name": f"imp-{i}", "schedule": {"kind": "cron", "cron": f"{i % 60} 0 * * * *"},
                                      "target": {"url": f"{dev.target}/imp"}, "tags": ["imported"]})
                          for i in range(10_000))  # fmt: skip
        imported = dev.cli("jobs", "import", "-", "--json", stdin=specs + '\n{"name": "x"}\n')
        assert imported.returncode == 1  # one bad line: reported, the rest created
        result = json.loads(imported.stdout)
        assert result["created"] == 10_000
        assert [f["index"] for f in result["failed"]] == [10_000] and "schedule" in result["failed"][0]["error"]
        listed = json.loads(dev.cli("jobs", "list", "--tag", "imported", "--limit", "0", "--json").stdout)
        assert len(listed) == 10_000 and len({j["id"] for j in listed}) == 10_000

        bad_key = dev.cli("jobs", "list", key="sw_not-a-key")
        assert bad_key.returncode == 1 and bad_key.stderr.strip() == \
            "shardwheel: error: unknown or revoked API key (HTTP 401)"  # fmt: skip
        unknown = dev.cli("jobs", "get", "no-such-job")
        assert unknown.returncode == 1 and "no job is named 'no-such-job'" in unknown.stderr
        unknown_id = dev.cli("jobs", "get", "01a22311-5bf1-71c1-a74d-380b9cd825b0")
        assert unknown_id.returncode == 1 and "not found (HTTP 404)" in unknown_id.stderr
        bad_cron = dev.cli("jobs", "create", "--name", "bad", "--cron", "61 * * * * *", "--url", f"{dev.target}/x")
        assert bad_cron.returncode == 1 and len(bad_cron.stderr.strip().splitlines()) == 1
        assert bad_cron.stderr.startswith("shardwheel: error: schedule.cron:") and "(HTTP 422)" in bad_cron.stderr

        tree = _process_tree(dev.proc.pid)
        assert len(tree) >= 6  # PostgreSQL, etcd, 3 nodes, the API, the demo target (and their children)
    finally:
        code = dev.stop(signal.SIGINT)
    assert code == 0, dev.output()[-3000:]
    assert _until("no process of the cluster left", lambda: not _alive(tree), 30)
    assert "dev cluster stopped" in dev.output()

    # Again on the same data directory: the job is there and fires; a node killed is reported and stops all.
    dev = Dev(data_dir, api_port, target_port)
    try:
        dev.wait_banner()
        again = dev.cli("jobs", "get", "hello", "--json")
        assert again.returncode == 0 and json.loads(again.stdout)["id"] == job_id
        restarted_at = time.time()
        _until("the job fires again after the restart", lambda: [
            f for f in _firings(dev, job_id) if f["received_at"] > _iso(restarted_at)], 60)  # fmt: skip
        tree = _process_tree(dev.proc.pid)
        node = next(p for p in tree if b"dev-node-2" in Path(f"/proc/{p}/cmdline").read_bytes())
        os.kill(node, signal.SIGKILL)
        assert dev.proc.wait(120) == 1
    finally:
        dev.stop(signal.SIGINT)
    out = dev.output()
    assert "node-2 exited with code -9; the last lines of its log" in out, out[-3000:]
    assert _until("no process of the cluster left", lambda: not _alive(tree), 30)

    # --fresh starts from nothing (a new database, so a new key); --no-wait starts, prints, stops.
    old_key = dev.key
    fresh = subprocess.run([*SHARDWHEEL, "dev", "--data-dir", str(data_dir), "--api-port", str(api_port),
                            "--target-port", str(target_port), "--fresh", "--no-wait"], capture_output=True, text=True,
                           timeout=_START_S, env=_env(), stdin=subprocess.DEVNULL)  # fmt: skip
    assert fresh.returncode == 0 and "Ctrl-C stops everything." in fresh.stdout, fresh.stdout[-3000:]
    assert dev.key != old_key


def _iso(t: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")
