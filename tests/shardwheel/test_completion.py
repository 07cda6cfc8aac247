"""`shardwheel completion bash`: valid bash that completes subcommands, options and choices."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _complete(script: Path, *words: str) -> list[str]:
    """What pressing Tab after ``words`` (the last one being completed) offers."""
    line = " ".join(f"'{w}'" for w in words)
    out = subprocess.run(["bash", "-c", f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
                          "_shardwheel; printf '%s\\n' \"${COMPREPLY[@]}\""],
                         capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
    return sorted(w for w in out.stdout.splitlines() if w)


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = subprocess.run([sys.executable, "-m", "shardwheel.cli", "completion", "bash"], capture_output=True,
                         text=True, cwd=ROOT, timeout=60, check=True)  # fmt: skip
    path = tmp_path_factory.mktemp("completion") / "shardwheel.bash"
    path.write_text(out.stdout)
    subprocess.run(["bash", "-n", str(path)], check=True, timeout=30)  # valid syntax
    return path


def test_subcommands_options_and_choices_complete(bash_script: Path) -> None:
    assert "jobs" in _complete(bash_script, "shardwheel", "")
    assert _complete(bash_script, "shardwheel", "jobs", "cr") == ["create"]
    assert "--every" in _complete(bash_script, "shardwheel", "jobs", "create", "--")
    assert _complete(bash_script, "shardwheel", "jobs", "list", "--state", "a") == ["active", "auto_paused"]
    assert _complete(bash_script, "shardwheel", "cluster", "dr") == ["drain"]
    assert "--api-url" in _complete(bash_script, "shardwheel", "jobs", "runs", "hello", "--")
