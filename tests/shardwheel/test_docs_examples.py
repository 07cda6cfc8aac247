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
