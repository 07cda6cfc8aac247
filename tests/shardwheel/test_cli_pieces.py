"""The CLI's pure pieces: a spec from flags, API errors as one line, the tables' width, log lines."""

from __future__ import annotations

import argparse
import io
import json
import logging
import re
from typing import Any

import pytest
from rich.console import Console

from protocol.errors import ShardwheelError
from shardwheel import logs, tables
from shardwheel.api_client import ApiError, spec_from_flags
from shardwheel.logs import JsonFormatter, TextFormatter


def _flags(**given: Any) -> argparse.Namespace:
    names = ("name", "cron", "every", "at", "tz", "url", "method", "header", "body", "tag", "description",
             "semantics", "jitter")  # fmt: skip
    return argparse.Namespace(**{n: given.get(n) for n in names})


def test_spec_from_flags_and_over_a_file() -> None:
    spec = spec_from_flags(_flags(name="r", cron="0 30 2 * * *", tz="Europe/London", url="https://x.example/a",
                                  method="put", header=["Authorization: Bearer a:b", "X-A:1"], body='{"k": [1]}',
                                  tag=["a", "b"]))  # fmt: skip
    assert spec == {"name": "r", "schedule": {"kind": "cron", "cron": "0 30 2 * * *"}, "timezone": "Europe/London",
                    "tags": ["a", "b"], "target": {"url": "https://x.example/a", "method": "PUT",
                                                   "headers": {"Authorization": "Bearer a:b", "X-A": "1"},
                                                   "body": {"k": [1]}}}  # fmt: skip
    base = {"name": "file", "schedule": {"kind": "every", "every": "1m"}, "target": {"url": "https://f.example/"}}
    over = spec_from_flags(_flags(every="5s", body="plain text", jitter="2s"), base)
    assert over["schedule"] == {"kind": "every", "every": "5s"} and over["name"] == "file" and over["jitter"] == "2s"
    assert over["target"] == {"url": "https://f.example/", "body": "plain text"}


@pytest.mark.parametrize(("flags", "says"), [
    ({"name": "x", "cron": "* * * * * *", "every": "1s", "url": "https://a.example/"}, "give one schedule"),
    ({"name": "x", "url": "https://a.example/"}, "a job needs schedule"),
    ({"cron": "* * * * * *", "url": "https://a.example/"}, "a job needs name"),
    ({"name": "x", "every": "1s"}, "a job needs target: give --url"),
    ({"name": "x", "every": "1s", "url": "https://a.example/", "header": ["no colon"]}, "'no colon' is not 'Name: value'"),
])  # fmt: skip
def test_spec_from_flags_refuses_what_cannot_be_a_job(flags: dict[str, Any], says: str) -> None:
    with pytest.raises(ShardwheelError, match=re.escape(says)):
        spec_from_flags(_flags(**flags))


def test_api_errors_read_as_one_line_naming_the_field() -> None:
    field = ApiError(422, {"detail": "invalid", "errors": [{"field": "schedule.cron", "message": "bad\nthing"}]})
    assert str(field) == "schedule.cron: bad\nthing (HTTP 422)"
    assert str(ApiError(404, {"detail": "job x not found"})) == "job x not found (HTTP 404)"
    assert str(ApiError(502, {})) == "no detail (HTTP 502)"


def _rendered(print_: Any, *args: Any, **kwargs: Any) -> str:
    out = io.StringIO()
    saved = tables.console
    tables.console = Console(file=out, width=80, highlight=False, soft_wrap=False)
    try:
        print_(*args, **kwargs)
    finally:
        tables.console = saved
    return out.getvalue()


def test_cluster_status_fits_80_columns_with_a_shard_grid() -> None:
    long = "a-node-name-much-longer-than-any-column-should-show-0123456789"
    owners = ["n1", long, None]
    status = {"cluster": "c", "shard_count": 256, "rebalancing_paused": True,
              "members": [{"node": n, "address": "10.0.0.1:8081", "shards": 85, "drained": n == "n1",
                           "firings_per_s": 1234.5, "dispatch_lag_p99_ms": 12.0, "clock_offset_ms": -0.4}
                          for n in ("n1", long)],
              "shards": {str(s): {"owner": owners[s % 3], "epoch": 1} for s in range(256)},
              "moving": [{"shard": 1, "owner": long, "to": "n1"}], "pins": {"1": "n1"}, "unowned_shards": [2, 5],
              "drained": ["n1"]}  # fmt: skip
    text = _rendered(tables.print_cluster, status)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80, text
    assert "rebalancing PAUSED" in lines[0] and "drained" in text and "1,234.5" in text
    grid = [line for line in lines if re.fullmatch(r"\s+\d+ [A-Z.*]{64}", line)]
    assert len(grid) == 4 and grid[0].split()[1].startswith("B*.B")  # letters in name order; 1 moving, 2 unowned


def test_executions_table_fits_80_columns() -> None:
    runs = [{"job_id": "01a22311-5bf1-71c1-a74d-380b9cd825b0", "scheduled_at": "2026-11-28T16:51:16.488Z",
             "origin": "scheduled", "status": "skipped_misfire", "attempt": 10, "http_status": 503,
             "dispatch_lag_ms": 123456, "duration_ms": 10000, "error": "a long error " * 20}]  # fmt: skip
    for with_job in (False, True):
        text = _rendered(tables.print_executions, runs, with_job=with_job)
        assert max(len(line) for line in text.splitlines()) <= 80, text
        assert "skipped_misfire" in text and "11-28 16:51:16.488" in text and "123456" in text


def _record(msg: str, *, shard: int | None = None, exc: bool = False) -> logging.LogRecord:
    record = logging.LogRecord("scheduler_node.engine", logging.WARNING, __file__, 1, msg, None, None)
    if shard is not None:
        record.shard = shard
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            import sys

            record.exc_info = sys.exc_info()
    return record


def test_log_lines_are_one_event_each() -> None:
    text = TextFormatter({"node": "n1"}).format(_record("two\nlines", shard=7, exc=True))
    assert "\n" not in text
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z WARNING engine node=n1 shard=7 two\\nlines\\nTraceback", text)
    event = json.loads(JsonFormatter({"node": "n1"}).format(_record("hi", exc=True)))
    assert event["level"] == "WARNING" and event["logger"] == "scheduler_node.engine" and event["node"] == "n1"
    assert event["msg"] == "hi" and "ValueError: boom" in event["exc"] and "shard" not in event


def test_log_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHARDWHEEL_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("SHARDWHEEL_LOG_FORMAT", "json")
    assert (logs.default_level(), logs.default_format()) == ("warning", "json")
    monkeypatch.setenv("SHARDWHEEL_LOG_FORMAT", "xml")
    assert logs.default_format() == "text"
