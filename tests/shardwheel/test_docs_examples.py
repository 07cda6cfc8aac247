"""docs/api.md's examples are what the API accepts: every job spec in it decodes with the API's validation."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec

from protocol.jobs import decode_job_spec
from protocol.problems import Problem

ROOT = Path(__file__).resolve().parents[2]


def test_every_job_in_docs_api_is_valid_and_the_problem_example_has_the_real_shape() -> None:
    blocks = re.findall(r"```json\n(.*?)```", (ROOT / "docs" / "api.md").read_text(), re.S)
    jobs = [b for b in blocks if '"schedule"' in b]
    kinds = {msgspec.json.decode(b)["schedule"]["kind"] for b in jobs}
    assert kinds == {"cron", "every", "at"} and len(jobs) >= 4
    for block in jobs:
        decode_job_spec(block)  # raises SpecError naming the field
    problem = msgspec.json.decode(next(b for b in blocks if '"errors"' in b), type=Problem)
    assert problem.status == 422 and problem.errors[0].field == "schedule.cron"


def test_every_test_docs_semantics_cites_exists() -> None:
    """semantics.md links each promise to a test: each must exist (a renamed test would leave a dead proof)."""
    text = (ROOT / "docs" / "semantics.md").read_text()
    cited = re.findall(r"`((?:tests/[\w/]+\.py)|(?:test_\w+\.py))?::(test_\w+)`", text)
    files = {p.name: p for p in (ROOT / "tests").rglob("test_*.py")}
    assert len(cited) >= 20
    last_file: Path | None = None
    for file, test in cited:
        if file:
            last_file = ROOT / file if file.startswith("tests/") else files[file]
        assert last_file is not None and re.search(rf"^(async )?def {test}\(", last_file.read_text(), re.M), \
            (file or last_file, test)  # fmt: skip
