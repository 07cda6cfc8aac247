"""deploy/compose/ checked against the code (docker does not run here): every Shardwheel command is a real
subcommand with real options, every variable it sets is one the code reads, ports, addresses and health checks
agree between services, secrets come from the environment, and the image installs the runtime lockfile, whose
pins are the main lockfile's."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from control_api import paths
from shardwheel.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose"
_VAR = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::?[?-][^}]*)?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())


def _ours(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if s.get("image") == "shardwheel:local"}


def _filled(value: str) -> str:
    """``${VAR:?message}`` replaced by a plausible value, as docker compose would from .env."""
    return _VAR.sub(lambda m: "x" * 40 if "SECRET" in m[1] else "k1=" + "A" * 43 + "=" if "KEY" in m[1] else "pw", value)


def _option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_every_command_is_a_real_subcommand_with_real_options(compose: dict[str, Any]) -> None:
    from bench.tool import build_parser as bench_parser

    ours = _ours(compose)
    assert {"migrate", "admin-key", "node1", "node2", "node3", "api1", "api2", "demo-target", "bench"} <= set(ours)
    for name, service in ours.items():
        command = [_filled(str(c)) for c in service["command"]]
        entrypoint = service.get("entrypoint", ["shardwheel"])
        assert entrypoint in (["shardwheel"], ["python", "-m", "bench"]), name
        parser = build_parser() if entrypoint == ["shardwheel"] else bench_parser()
        try:
            parser.parse_args(command)
        except SystemExit as e:
            pytest.fail(f"{name}: `{' '.join(entrypoint)} {' '.join(command)}` does not parse ({e})")


def test_every_variable_set_is_read_by_the_code_and_every_secret_comes_from_env(compose: dict[str, Any]) -> None:
    source = "\n".join(p.read_text() for d in ("shardwheel", "scheduler_node", "control_api")
                       for p in (ROOT / d).rglob("*.py"))  # fmt: skip
    example = (COMPOSE / ".env.example").read_text()
    for name, service in _ours(compose).items():
        for var, value in service["environment"].items():
            if name == "bench" and var == "SHARDWHEEL_API_KEY":
                assert '"SHARDWHEEL_API_KEY"' in (ROOT / "bench" / "tool.py").read_text()
                continue
            assert var.startswith("SHARDWHEEL_") and f'"{var}"' in source, f"{name}: {var} is read nowhere"
            if "SECRET" in var or var.endswith("_KEY"):
                assert _VAR.fullmatch(value), f"{name}: {var} must come from the environment, not the file"
    used = set(_VAR.findall((COMPOSE / "docker-compose.yml").read_text()))
    assert used == {"POSTGRES_PASSWORD", "SHARDWHEEL_CLUSTER_SECRET", "SHARDWHEEL_SECRETS_KEY", "SHARDWHEEL_API_KEY"}
    assert all(re.search(rf"^{v}=$", example, re.M) for v in used), "every variable has an empty line in .env.example"


def test_addresses_ports_and_health_checks_agree(compose: dict[str, Any]) -> None:
    services = compose["services"]
    env = compose["x-shardwheel"]["environment"]
    etcd_members = {n: s for n, s in services.items() if n.startswith("etcd")}
    advertised = {_option(s["command"], "--advertise-client-urls").removeprefix("http://") for s in etcd_members.values()}
    assert set(env["SHARDWHEEL_ETCD"].split(",")) == advertised and len(advertised) == 3
    initial = {_option(s["command"], "--initial-cluster") for s in etcd_members.values()}
    assert initial == {",".join(f"{n}=http://{n}:2380" for n in sorted(etcd_members))}
    dsn = re.fullmatch(r"postgresql://(\w+):\$\{POSTGRES_PASSWORD[^}]*\}@(\w+):5432/(\w+)", env["SHARDWHEEL_PG_DSN"])
    assert dsn is not None and dsn[2] == "postgres"
    pg_env = services["postgres"]["environment"]
    assert (dsn[1], dsn[3]) == (pg_env["POSTGRES_USER"], pg_env["POSTGRES_DB"])

    ready = {paths.READYZ, paths.HEALTHZ}
    node_api = (ROOT / "scheduler_node" / "http_api.py").read_text()
    assert all(f'path == "{p}"' in node_api for p in ready)  # the node serves both
    for name, service in _ours(compose).items():
        command = service["command"]
        if command[0] == "steady":  # the bench: its sink is where it tells the nodes to send
            port = _option(command, "--sink-port")
            assert _option(command, "--sink-url") == f"http://{name}:{port}" and _option(command, "--sink-host") == "0.0.0.0"
            api = re.fullmatch(r"http://(\w+):(\d+)", _option(command, "--url"))
            assert api is not None and _option(compose["services"][api[1]]["command"], "--port") == api[2]
            continue
        if command[0] in ("node", "api"):
            port = _option(command, "--port")
            url = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", " ".join(service["healthcheck"]["test"]))
            assert url is not None and url[1] == port and url[2] in ready, name
            assert _option(command, "--host") == "0.0.0.0", f"{name} must listen beyond the container"
        if command[0] == "node":
            assert _option(command, "--advertise-host") == name == _option(command, "--node-id")
        for mapping in service.get("ports", []):
            assert mapping.split(":")[1] == _option(command, "--port"), name
    subnet = ipaddress.ip_network(compose["networks"]["default"]["ipam"]["config"][0]["subnet"])
    allowed = ipaddress.ip_network(_option(services["migrate"]["command"], "--allow-target-net"))
    assert subnet.subnet_of(allowed), "the nodes may call the demo target on the compose network"


def test_the_image_installs_the_runtime_lockfile_pinned_as_the_main_one() -> None:
    dockerfile = (COMPOSE / "Dockerfile").read_text()
    assert "--require-hashes -r requirements.runtime.lock" in dockerfile and "USER shardwheel" in dockerfile
    assert re.search(r"^ENTRYPOINT \[\"shardwheel\"\]", dockerfile, re.M)
    for copied in re.findall(r"^COPY (\w+) /src/\1$", dockerfile, re.M):
        assert (ROOT / copied).is_dir(), copied

    def pins(path: Path) -> dict[str, str]:
        return dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", path.read_text(), re.M))

    runtime, main = pins(COMPOSE / "requirements.runtime.lock"), pins(ROOT / "requirements.lock")
    assert runtime and {k: v for k, v in runtime.items() if main.get(k) != v} == {}
    assert "pgserver" not in runtime and "pytest" not in runtime  # embedded servers and tests stay out
