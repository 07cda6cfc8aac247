"""The README's first screen is what a new user runs: its two commands, and a first job whose commands exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from shardwheel.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


def _blocks(text: str) -> list[list[str]]:
    return [[line for line in b.splitlines() if line.strip()] for b in re.findall(r"```sh\n(.*?)```", text, re.S)]


def test_the_two_set_up_commands_and_the_first_job_are_on_the_first_screen() -> None:
    readme = (ROOT / "README.md").read_text()
    first_screen = "\n".join(readme.splitlines()[:40])
    setup, first_job = _blocks(first_screen)[:2]
    assert [line.split("#")[0].strip() for line in setup] == ["python3 bootstrap.py dev", "python3 bootstrap.py test"]
    assert "python3 bootstrap.py test" in (ROOT / ".ci" / "run").read_text()
    parser = build_parser()
    commands = [shlex.split(line.split("  #")[0]) for line in first_job if line.startswith(".venv/bin/shardwheel")]
    assert [c[1:3] for c in commands] == [["jobs", "create"], ["jobs", "runs"], ["cluster", "status"]]
    for command in commands:
        parser.parse_args(command[1:])  # exits 2 on an unknown command or option


def test_every_command_s_help_shows_an_example() -> None:
    import argparse

    def walk(parser: argparse.ArgumentParser, path: str) -> list[tuple[str, argparse.ArgumentParser]]:
        found = [(path, parser)]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found += walk(sub, f"{path} {name}")
        return found

    commands = walk(build_parser(), "shardwheel")[1:]
    assert len(commands) > 25
    missing = [path for path, p in commands if "example:" not in p.format_help()]
    assert not missing, missing


def test_the_configuration_reference_is_what_the_code_says() -> None:
    """docs/operations.md's reference is generated (python -m shardwheel.config_reference): an option added,
    renamed or changed without regenerating it fails here; so does an environment variable the command reads
    that no document names."""
    from shardwheel import config_reference

    doc = (ROOT / "docs" / "operations.md").read_text()
    current = doc[doc.index(config_reference.BEGIN) : doc.index(config_reference.END) + len(config_reference.END)]
    assert current == config_reference.render(), "run: python -m shardwheel.config_reference"
    metrics = doc[doc.index(config_reference.METRICS_BEGIN) : doc.index(config_reference.METRICS_END)
                  + len(config_reference.METRICS_END)]  # fmt: skip
    assert metrics == config_reference.render_metrics(), "run: python -m shardwheel.config_reference"
    documented = doc + (ROOT / "README.md").read_text()
    read = set()
    for path in (ROOT / "shardwheel").glob("*.py"):
        read |= set(re.findall(r"\"(SHARDWHEEL_[A-Z_]+)\"", path.read_text()))
    assert read and not [v for v in sorted(read) if v not in documented]
