#!/usr/bin/env python3
"""Bootstrap a virtual environment from the lockfile, then run a Shardwheel command in it.

    python3 bootstrap.py dev      # venv + `shardwheel dev`: PostgreSQL, etcd, 3 nodes, the API, a demo target
    python3 bootstrap.py test     # venv + the whole test suite (what .ci/run runs)

Needs only Python >= 3.11 and access to the package registry. The venv lives in `.venv/` and is rebuilt
when `requirements.lock` or `pyproject.toml` changes (a stamp file holds their hash), so both commands are
safe to repeat. Anything after the command is passed through (`python3 bootstrap.py test -k wheel`).

`test` runs the suite in two worker processes (pytest-xdist): the tests that run real nodes on the wall clock
share one worker, one after another (tests/conftest.py), while the other runs the CPU-bound rest beside them;
`-n 0` after the command runs it all in one process.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
STAMP = VENV / ".shardwheel-lock-hash"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"


def _lock_hash() -> str:
    h = hashlib.sha256()
    for name in ("requirements.lock", "pyproject.toml"):
        h.update((ROOT / name).read_bytes())
    return h.hexdigest()


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, cwd=ROOT)


def ensure_venv() -> None:
    want = _lock_hash()
    if STAMP.exists() and STAMP.read_text().strip() == want and PY.exists():
        return
    if sys.version_info < (3, 11):
        sys.exit("shardwheel needs Python >= 3.11")
    print(f"bootstrap: building {VENV} from requirements.lock", flush=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    pip = [str(PY), "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "install", "--require-hashes", "-r", "requirements.lock"])
    # The project itself is installed editable and without dependencies: the lock already holds them all.
    _run([*pip, "install", "--no-deps", "-e", "."])
    STAMP.write_text(want)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("dev", "test", "shell"):
        print(__doc__)
        return 2
    ensure_venv()
    cmd, rest = argv[0], argv[1:]
    env = dict(os.environ)
    if cmd == "test":
        args = [str(PY), "-m", "pytest", "-n", "2", "--dist", "loadgroup", *rest]
    elif cmd == "dev":
        args = [str(BIN / "shardwheel"), "dev", *rest]
    else:
        args = [str(BIN / "shardwheel"), *rest]
    os.chdir(ROOT)
    os.execve(args[0], args, env)
    return 0  # unreachable: execve replaces this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
